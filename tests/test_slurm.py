"""The workflow on a real one-node SLURM (munged, slurmctld, slurmd from Debian's packages) through
snakemake-executor-plugin-slurm and profiles/slurm.

Needs root and `slurm-wlm` + `munge`; skipped with the reason otherwise, unless SOUPFLOW_REQUIRE_SLURM=1
(set by .ci/run), which turns the skip into a failure so that CI can never silently not run it.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import ROOT, SMOKE, snakemake
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # runs the workflow (or trains) in subprocesses: the slow tier

CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"

# This machine's size for every job, so that two jobs run side by side on 2 CPUs. Thread counts match
# the local run's (init: 2 of --cores 2, the rest 1) so that the weights can be compared bit for bit.
SMALL_JOBS = [
    "--slurm-status-command", "squeue",  # accounting is off in the test cluster: sacct cannot answer
    "--slurm-init-seconds-before-status-checks", "1",
    "--seconds-between-status-checks", "3",
    "--set-threads", "init=2", "finetune=1", "soups=2",
    # one --set-resources list (a second flag would replace it): the test cluster has no GPU
    "--set-resources", "init:gpu=0", "finetune:gpu=0", "soups:gpu=0",
    "init:cpus_per_task=2", "finetune:cpus_per_task=1", "soups:cpus_per_task=2",
    "init:mem_mb=2000", "finetune:mem_mb=2000", "soups:mem_mb=2000", "plots:mem_mb=2000",
]
PROFILE = ("--profile", str(ROOT / "profiles" / "slurm"))


def missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "starting munged, slurmctld and slurmd needs root"
    absent = [tool for tool in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "srun") if not shutil.which(tool)]
    if absent:
        return f"not installed: {', '.join(absent)} (apt-get install slurm-wlm munge)"
    if subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True).returncode == 0:
        return "a slurmctld already runs on this machine"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running one-node SLURM; yields the environment that points sbatch/squeue at it."""
    reason = missing_requirements()
    if reason:
        if os.environ.get("SOUPFLOW_REQUIRE_SLURM") == "1":
            pytest.fail(f"SOUPFLOW_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(CLUSTER), "start", str(state)], capture_output=True, text=True)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        env = dict(os.environ, SLURM_CONF=str(state / "slurm.conf"))
        env.pop("SLURM_JOB_ID", None)
        yield env
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(state)], check=False)


def slurm_jobs(env) -> pd.DataFrame:
    """SLURM's own records of every job it knows (MinJobAge keeps finished ones): id, name, state."""
    out = subprocess.run(["squeue", "-t", "all", "-h", "-o", "%i|%j|%T|%l"], env=env, capture_output=True,
                         text=True, check=True).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return pd.DataFrame(rows, columns=["job_id", "name", "state", "time_limit"])


def submitted(log: str) -> dict[str, list[str]]:
    """{rule: [SLURM job ids]} from the plugin's 'submitted with SLURM jobid N (log: .../rule_R/...)' lines."""
    jobs: dict[str, list[str]] = {}
    for job_id, rule in re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", log):
        jobs.setdefault(rule, []).append(job_id)
    return jobs


def test_smoke_workflow_through_sbatch_equals_the_local_run(cluster, finished, tmp_path):
    local, _ = finished
    result = snakemake(tmp_path, SMOKE, *PROFILE, *SMALL_JOBS, env=cluster, cores=())
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]

    jobs = submitted(log)
    assert len(jobs.get("finetune", [])) == len(pd.read_parquet(local / "results/metrics/runs.parquet"))
    assert {"prepare_data", "init", "finetune", "soups", "plots"} <= set(jobs)
    known = slurm_jobs(cluster).set_index("job_id")
    for rule, ids in jobs.items():
        for job_id in ids:
            assert known.loc[job_id, "state"] == "COMPLETED", (rule, job_id)

    for table in ("runs", "soups", "soup_trace"):
        ours = pd.read_parquet(tmp_path / f"results/metrics/{table}.parquet")
        theirs = pd.read_parquet(local / f"results/metrics/{table}.parquet")
        assert list(ours.columns) == list(theirs.columns) and ours.shape == theirs.shape
        measured = [c for c in ours.columns if re.search(r"seconds|per_second|device", c)]  # clocks, not results
        pd.testing.assert_frame_equal(ours.drop(columns=measured), theirs.drop(columns=measured), check_exact=True)

    ids = set(pd.read_parquet(local / "results/metrics/runs.parquet").run_id)

    def checkpoints(work):  # the default target's files (other tests may add `analysis` outputs and runs locally)
        paths = (p.relative_to(work) for p in work.glob("results/**/*.safetensors"))
        return sorted(p for p in paths if "analysis" not in p.parts and not (p.parts[1] == "runs" and p.parts[2] not in ids)
                      and ".cache" not in p.parts)  # the soups job's cache: keyed by the runs table, clocks included

    assert checkpoints(local) == checkpoints(tmp_path)
    for path in checkpoints(local):
        ours, theirs = load_file(tmp_path / path), load_file(local / path)
        assert ours.keys() == theirs.keys(), path
        for name in ours:
            # bit for bit (the diverged run's NaNs included)
            torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=0, equal_nan=True, msg=f"{path}: {name}")


def epochs_lasting(seconds: float, images: int, batch: int = 32) -> int:
    """Epochs of the smoke model over ``images`` that take at least about ``seconds`` on one thread of this
    machine (measured, not assumed: machines here differ by 4x, and a fixed count either finishes inside the
    first 1-minute limit or never finishes). The fastest of five timings counts: a timing slowed by another
    process (a daemon settling, the last test's jobs) would give too few epochs, and a training that ends
    before SLURM's kill leaves nothing to resume."""
    import time

    import timm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = timm.create_model("test_resnet", num_classes=10, in_chans=1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        inputs, labels = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))

        def seconds_per_step(steps: int = 20) -> float:
            start = time.perf_counter()
            for _ in range(steps):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(inputs), labels).backward()
                optimizer.step()
            return (time.perf_counter() - start) / steps

        per_step = min(seconds_per_step() for _ in range(5))
    finally:
        torch.set_num_threads(threads)
    return max(2, min(60, round(seconds / (per_step * images / batch))))


def test_a_fine_tune_past_its_time_limit_is_resubmitted_and_resumes(cluster, tmp_path):
    # One fine-tune of ~2.5 minutes on 1 CPU under a 1-minute limit on its first attempt (2 on the second, 3 on
    # the third): the first attempt must time out (SLURM stops it 60-90 s in) while it trains, not after (a kill
    # once training is done and its state removed leaves a retry nothing to resume), a retry resumes and finishes.
    # The target is a soup: the jobs after the soups add nothing here (the sbatch test above runs them).
    config = {
        **SMOKE,
        "data": {**SMOKE["data"], "max_train": 20000, "pretrain_fraction": 0.1, "val_fraction": 0.1},
        "pretrain": {**SMOKE["pretrain"], "epochs": 1},
        "finetune": {**SMOKE["finetune"], "epochs": epochs_lasting(150, images=16000)},  # train: 80 % of 20,000
        "grid": {"lr": [0.02]},
        "runs": [],
        "soups": [{"recipe": "uniform"}],
        "training": {"checkpoint_every_steps": 50},
    }
    result = snakemake(tmp_path, config, *PROFILE, *SMALL_JOBS, "finetune:runtime=attempt", "--",
                       "results/soups/uniform/model.safetensors", env=cluster, cores=())
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]

    attempts = submitted(log)["finetune"]
    states = slurm_jobs(cluster).set_index("job_id").loc[attempts, "state"].tolist()
    assert len(attempts) >= 2 and states[0] == "TIMEOUT" and states[-1] == "COMPLETED", states
    runs = pd.read_parquet(tmp_path / "results/metrics/runs.parquet")
    assert runs.status.tolist() == ["ok"]
    train_log = next(Path(tmp_path, "results/runs").glob("*/train.log")).read_text()  # earlier attempts' too
    assert runs.resumed_from_step.iloc[0] > 0, train_log[-6000:]  # the retry went on from saved state
    assert (tmp_path / "results/soups/uniform/model.safetensors").exists()
    assert not list(Path(tmp_path, "results/runs").glob("*/resume.pt"))  # training state removed once done
