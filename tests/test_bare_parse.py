"""`--sdm conda` with a bare Snakemake: the Snakefile parses in an environment that holds only Snakemake (and
what Snakemake itself depends on: PyYAML, jsonschema), without numpy, torch or timm (issue 14, item 2)."""

import importlib.metadata
import os
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, SMOKE

pytestmark = pytest.mark.slow  # runs the workflow (or trains) in subprocesses: the slow tier


@pytest.fixture(scope="module")
def bare_snakemake(tmp_path_factory):
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    version = importlib.metadata.version("snakemake")
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"snakemake=={version}"],
                             capture_output=True, text=True, timeout=600)
    if install.returncode != 0:
        if os.environ.get("SOUPFLOW_REQUIRE_SLURM"):  # CI: the package registry is reachable, so this must run
            pytest.fail(f"could not install snakemake alone: {install.stderr[-2000:]}")
        pytest.skip("no package registry to install a bare snakemake from")
    for absent in ("numpy", "torch", "timm", "pandas"):
        probe = subprocess.run([str(venv / "bin" / "python"), "-c", f"import {absent}"], capture_output=True)
        assert probe.returncode != 0, f"{absent} is installed beside the bare snakemake"
    return venv / "bin" / "snakemake"


@pytest.mark.parametrize("config, target", [("config.yaml", "all"), ("config.yaml", "analysis"), ("smoke", "all")])
def test_the_snakefile_parses_and_plans_with_snakemake_alone(bare_snakemake, tmp_path, config, target):
    path = ROOT / config if config != "smoke" else tmp_path / "smoke.yaml"
    if config == "smoke":
        path.write_text(yaml.safe_dump(SMOKE))
    result = subprocess.run([str(bare_snakemake), "-n", "--cores", "1", "-s", str(ROOT / "Snakefile"), "--configfile",
                             str(path), "--directory", str(tmp_path), target], capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "This was a dry-run" in output and "finetune" in output
    assert "the first job checks model.name" in output  # the one-line note: timm is not there to ask


def test_a_bad_config_is_still_rejected_by_a_bare_snakemake(bare_snakemake, tmp_path):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["grid"]["lr"] = ["fast"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([str(bare_snakemake), "-n", "--cores", "1", "-s", str(ROOT / "Snakefile"), "--configfile",
                             str(path), "--directory", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "grid.lr" in result.stdout + result.stderr
