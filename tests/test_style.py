"""The workflow stays as Snakemake's catalog asks: `snakemake --lint` and `snakefmt` clean."""

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_snakemake_lint_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--cores", "1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert "Congratulations, your workflow is in a good condition" in result.stdout + result.stderr, (
        result.stdout[-3000:] + result.stderr[-3000:])


def test_snakefmt_leaves_every_rule_file_as_it_is():
    snakefmt = shutil.which("snakefmt") or str(Path(sys.executable).with_name("snakefmt"))
    files = ["Snakefile", *map(str, sorted((ROOT / "workflow" / "rules").glob("*.smk")))]
    result = subprocess.run([snakefmt, "--check", *files], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_both_profiles_give_every_gpu_rule_its_resources():
    import yaml

    gpu_rules = {"init", "finetune", "soup", "pair_soups", "corrupted_outputs", "soup_sanity"}
    for name in ("local", "slurm"):
        profile = yaml.safe_load((ROOT / "profiles" / name / "config.yaml").read_text())
        assert gpu_rules <= set(profile["set-resources"]) and gpu_rules <= set(profile["set-threads"]), name


def test_ruff_finds_nothing():
    """pyflakes and import order over the package, the scripts, the benchmarks and the tests (pyproject.toml)."""
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    result = subprocess.run([ruff, "check", "src", "workflow", "bench", "tests"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
