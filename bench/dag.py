"""The workflow's scale (``bench/run.py --only dag``): ``snakemake -n`` on large grids against a floor of
do-nothing rules with the workflow's own DAG shape and directives (and a bare shell-rule floor for context),
and what a finished workflow plans when one grid point is added."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import common
import pandas as pd
import yaml
from common import ROOT


def _config(points: int) -> dict:
    lrs = [round(0.001 * (i + 1), 6) for i in range(10)]
    seeds = list(range(points // 10))
    return {"data": {"name": "fashion_mnist", "root": common.FASHION, "pretrain_fraction": 0.3}, "model": {"name": "test_resnet"},
            "finetune": {"epochs": 1}, "pretrain": {"epochs": 1},
            "grid": {"lr": lrs, "seed": seeds}, "soups": [{"recipe": "uniform"}, {"recipe": "greedy"}]}


def _snakemake(work: Path, config: dict, *args: str) -> tuple[float, str]:
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile", str(path),
                          "--directory", str(work), "--cores", "1", *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return time.perf_counter() - start, out.stdout + out.stderr


def _job_count(output: str, rule: str) -> int:
    import re

    match = re.search(rf"^{rule}\s+(\d+)$", output.split("Job stats:", 1)[-1], re.M)
    return int(match.group(1)) if match else 0


def touch_finished(work: Path, config: dict) -> None:
    """Make ``work`` a finished workflow as Snakemake itself sees one, without running a job: every output of
    the default target that ``snakemake --summary`` lists is created empty, then ``snakemake --touch --forceall``
    stamps them in the DAG's order and writes its own records of each job (the runs table's set of inputs
    among them, which is how a new grid point is noticed)."""
    _, listing = _snakemake(work, config, "--summary")
    rows = [line.split("\t") for line in listing.splitlines()]
    header = next(index for index, row in enumerate(rows) if row[:1] == ["output_file"])
    for row in rows[header + 1:]:
        if len(row) > 2:  # output_file, date, rule, ...
            path = work / row[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    _snakemake(work, config, "--touch", "--forceall", "--quiet")


FLOOR_SNAKEFILE = """
RUNS = [f"run-{{i:010x}}" for i in range({points})]
SOUPS = ["uniform", "greedy"]
R = "results/runs/{{run_id}}"
S = "results/soups/{{s}}"
CHECKPOINTS = ["results/init/model.safetensors", *expand(R + "/model.safetensors", run_id=RUNS, allow_missing=True),
               *expand(S + "/model.safetensors", s=SOUPS)]
PLOTS = {plots}
rule all:
    input: "results/summary.txt", "results/plots/learning_curves.png", "results/metrics/timm_configs.txt",
           "results/config.yaml", expand("results/plots/{{p}}.png", p=PLOTS)
rule resolved_config:
    output: "results/config.yaml"
    {action}
rule prepare_data:
    output: "results/data/dataset.safetensors", "results/data/splits.json"
    {action}
rule init:
    input: "results/data/dataset.safetensors"
    output: "results/init/model.safetensors"
    {action}
rule finetune:
    input: "results/data/dataset.safetensors", "results/init/model.safetensors"
    output: R + "/model.safetensors", R + "/outputs.safetensors", R + "/history.parquet", R + "/metrics.parquet", R + "/config.yaml"
    log: R + "/train.log"
    {action}
rule run_table:
    input: expand(R + "/{{f}}", run_id=RUNS, f=["metrics.parquet", "model.safetensors", "outputs.safetensors"])
    output: "results/metrics/runs.parquet"
    {action}
rule learning_curves:
    input: expand(R + "/history.parquet", run_id=RUNS)
    output: "results/plots/learning_curves.png"
    {action}
rule soups:
    input: "results/data/dataset.safetensors", "results/metrics/runs.parquet"
    output: expand(S + "/{{f}}", s=SOUPS, f=["model.safetensors", "metrics.parquet", "trace.parquet", "outputs.safetensors"])
    {action}
rule soups_table:
    input: "results/metrics/runs.parquet", expand(S + "/metrics.parquet", s=SOUPS)
    output: "results/metrics/soups.parquet"
    {action}
rule trace_table:
    input: expand(S + "/trace.parquet", s=SOUPS)
    output: "results/metrics/soup_trace.parquet"
    {action}
rule timm_configs:
    input: "results/data/dataset.safetensors", CHECKPOINTS
    output: "results/metrics/timm_configs.txt", [path.rsplit("/", 1)[0] + "/config.json" for path in CHECKPOINTS]
    {action}
rule plots:
    input: "results/metrics/runs.parquet", "results/metrics/soups.parquet", "results/metrics/soup_trace.parquet"
    output: expand("results/plots/{{p}}.png", p=PLOTS)
    {action}
rule summary:
    input: "results/metrics/runs.parquet", "results/metrics/soups.parquet"
    output: "results/summary.txt", "results/summary.csv"
    {action}
"""


def _job_stats(output: str) -> dict[str, int]:
    """The ``Job stats`` table of a ``snakemake -n`` output: {rule: jobs}."""
    table = output.split("Job stats:", 1)[-1].split("\n\n", 1)[0]
    return {name: int(count) for name, count in re.findall(r"^(\w+)\s+(\d+)$", table, re.M) if name != "total"}


# What each of the floor's rules runs. "rules": the workflow's own directives (every rule of the workflow is a
# `script:` rule with a `conda:` env, and Snakemake reads both for every job: the script's source and the env's
# spec), so the floor is the engine's cost of the workflow's rules and the ratio is soupflow's own per-job work.
# "shell": the bare engine, a shell command per job, as context (the floor this benchmark had before 2026-12-06).
FLOOR_ACTIONS = {
    "rules": f'conda: "{ROOT / "envs" / "soupflow.yaml"}"\n    script: "touch.py"',
    "shell": 'shell: "touch {output} {log}"',
}
TOUCH_SCRIPT = "from pathlib import Path\n\nfor path in [*snakemake.output, *snakemake.log]:\n    Path(path).touch()\n"


def _floor(work: Path, points: int, kind: str) -> tuple[float, str]:
    """``snakemake -n`` on rules of the workflow's DAG shape that do nothing (the same rules, jobs and outputs
    per job: data, config → init → N fine-tunes with five outputs and a log → runs table, learning curves → one
    soups job → tables, plots, summary; one timm_configs job with a config.json per checkpoint), each running
    ``FLOOR_ACTIONS[kind]``: the engine's own cost, with no config validation, grid expansion, params, input
    functions or wildcards but the run's. ``bench_dag`` checks that its job stats are the workflow's."""
    folder = work / f"floor{points}-{kind}"
    folder.mkdir(parents=True, exist_ok=True)
    from soupflow.plan.layout import PLOTS

    snakefile = FLOOR_SNAKEFILE.format(points=points, plots=list(PLOTS.values()), action=FLOOR_ACTIONS[kind])
    (folder / "Snakefile").write_text(snakefile)
    (folder / "touch.py").write_text(TOUCH_SCRIPT)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(folder / "Snakefile"), "--directory",
                          str(folder), "--cores", "1", "-n", "--quiet", "rules"], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return time.perf_counter() - start, out.stdout + out.stderr


def _median(timings: list[tuple[float, str]]) -> tuple[float, str]:
    return sorted(timings)[len(timings) // 2]


def _scale_row(work: Path, points: int) -> dict:
    """The workflow's ``snakemake -n`` and both floors at ``points`` grid points, three times each in turns (a
    slower minute of the machine hits all alike), medians."""
    folder = work / f"dag{points}"
    folder.mkdir(parents=True, exist_ok=True)
    timings = {"ours": [], **{kind: [] for kind in FLOOR_ACTIONS}}
    for _ in range(3):
        timings["ours"].append(_snakemake(folder, _config(points), "-n", "--quiet", "rules"))
        for kind in FLOOR_ACTIONS:
            timings[kind].append(_floor(work, points, kind))
    (seconds, output), floors = _median(timings["ours"]), {kind: _median(timings[kind]) for kind in FLOOR_ACTIONS}
    for kind, (_, floor_output) in floors.items():
        if _job_stats(output) != _job_stats(floor_output):
            raise RuntimeError(f"the {kind} floor's DAG is not the workflow's: {_job_stats(floor_output)} vs "
                               f"{_job_stats(output)}")
    return {"check": f"snakemake -n, {points} grid points (median of 3)", "seconds": seconds,
            "goal_seconds": 10 if points == 1000 else 60, "finetune_jobs": _job_count(output, "finetune"),
            "floor_seconds": floors["rules"][0], "shell_floor_seconds": floors["shell"][0]}


def bench_dag(work: Path) -> pd.DataFrame:
    rows = [_scale_row(work, points) for points in (1000, 10000)]
    folder = work / "dag1000"
    config = _config(1000)
    touch_finished(folder, config)
    _, output = _snakemake(folder, config, "-n", "--quiet", "rules")
    finished = _job_count(output, "finetune")
    grown = json.loads(json.dumps(config))
    grown["runs"] = [{"lr": 0.123, "seed": 0}]  # exactly one new grid point
    seconds, output = _snakemake(folder, grown, "-n", "--quiet", "rules")
    rows.append({"check": "finished 1000 points, nothing changed", "seconds": float("nan"), "goal_seconds": float("nan"),
                 "finetune_jobs": finished, "floor_seconds": float("nan"), "shell_floor_seconds": float("nan")})
    rows.append({"check": "finished 1000 points + 1 point", "seconds": seconds, "goal_seconds": 10,
                 "finetune_jobs": _job_count(output, "finetune"), "floor_seconds": float("nan"),
                 "shell_floor_seconds": float("nan")})
    table = pd.DataFrame(rows)
    print("\nworkflow scale (snakemake -n, this machine)")
    for row in table.itertuples():
        goal = f" (goal < {row.goal_seconds:.0f} s)" if row.goal_seconds == row.goal_seconds else ""
        timing = f"{row.seconds:.1f} s{goal}, " if row.seconds == row.seconds else ""
        floor = row.floor_seconds
        versus = (f"; floor of the same DAG (same rules, jobs, outputs, directives) {floor:.1f} s -> ratio "
                  f"{row.seconds / floor:.2f} (goal <= 1.2); shell-rule floor {row.shell_floor_seconds:.1f} s -> "
                  f"{row.seconds / row.shell_floor_seconds:.2f}" if floor == floor else "")
        print(f"  {row.check}: {timing}{row.finetune_jobs} fine-tunes scheduled{versus}")
    return table
