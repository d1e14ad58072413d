import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

SMOKE = yaml.safe_load((ROOT / "tests" / "smoke.yaml").read_text())


def snakemake(work, config, *args, env=None, cores=("--cores", "2")):
    """Run the workflow on `config` in folder `work` (a subprocess, as a user would)."""
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile", str(path),
               "--directory", str(work), *cores, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env)


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """The smoke workflow run locally once per test session: (folder, CompletedProcess)."""
    work = tmp_path_factory.mktemp("smoke")
    result = snakemake(work, SMOKE)
    assert result.returncode == 0, result.stderr[-4000:]
    return work, result


def finetune_in(config, run_id, hp, data, init, folder, threads=1):
    """``finetune_job.finetune`` of one run into ``folder`` (the tests' shorthand for a Start and RunPaths)."""
    from calibrate_default import run_paths  # the benchmark harness' layout of a run folder

    from soupflow.finetune_job import Start, finetune

    return finetune(config, Start(str(data), str(init), run_id, hp), run_paths(folder), threads)
