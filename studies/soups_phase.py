"""The soups phase of a finished workflow, cooked twice side by side: by soupflow as it was before the soups
job (``BEFORE``, the commit issue 26 measured as "today": one process per soup entry, two at a time, as
`snakemake --cores 2` ran its soup jobs with one thread each: each starts Python, imports torch and timm, opens
the data, reads every run's cached logits and scores the sets it tries, BatchNorm as separate layers), and by
the soups job of this checkout (one process, two torch threads, one pantry, one memo of scored ingredient
sets, BatchNorm folded into the convolutions). The old code comes from ``git archive BEFORE src``.
Both cook every entry of the folder's resolved config from its runs table; the soups must come out the same.

    .venv/bin/python studies/soups_phase.py results    # after `snakemake --cores 2`
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]

#: the last commit with one soup job per entry (issue 26's "today")
BEFORE = "d5d528c"

CHILD = """
import json, sys
sys.path.insert(0, {src!r})
from soupflow.jobs.soup import SoupPaths, make_soup
args = json.loads(sys.argv[1])
make_soup(args["config"], args["name"], args["entry"], SoupPaths(**args["paths"]), threads=1)
"""


def _before_source(work: Path) -> Path:
    """soupflow's ``src`` at ``BEFORE``, unpacked under ``work`` (from this clone's history)."""
    folder = work / f"src-{BEFORE}"
    if not (folder / "src" / "soupflow").exists():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE, "src"], capture_output=True)
        if archive.returncode:
            raise SystemExit(f"this study runs soupflow at {BEFORE} beside this checkout; this clone lacks it "
                             f"(a shallow clone?): {archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder / "src"


def _paths(results: Path, out: Path, entries: dict, name: str) -> dict:
    from soupflow.plan import layout
    from soupflow.plan.params import soup_base

    base = soup_base(entries[name])
    return {"data": layout.data_files(f"{results}/data")["data"], "runs": layout.runs_table(f"{results}/metrics"),
            "init": layout.init_file(f"{results}/init"),
            "base": layout.soup_files(f"{out}/{base}")["model"] if base else None,
            **layout.soup_files(f"{out}/{name}")}


def _one_process_per_soup(config: dict, entries: dict, results: Path, out: Path) -> float:
    """Each entry in a fresh process of the code at ``BEFORE``, two at a time; soups with a base after the
    others (as the DAG orders). Its soup jobs wrote no test outputs file."""
    from soupflow.jobs.soup import cooking_order
    from soupflow.plan.params import soup_base

    source = _before_source(out.parent)

    def run(name: str) -> None:
        paths = {k: v for k, v in _paths(results, out, entries, name).items() if k != "outputs"}
        args = {"config": config, "name": name, "entry": entries[name], "paths": paths}
        done = subprocess.run([sys.executable, "-c", CHILD.format(src=str(source)), json.dumps(args)],
                              capture_output=True, text=True, cwd=results.parent)
        if done.returncode:
            raise SystemExit(f"soup {name} failed:\n{done.stderr[-3000:]}")

    order = cooking_order(entries)
    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(run, [n for n in order if soup_base(entries[n]) is None]))
        list(pool.map(run, [n for n in order if soup_base(entries[n]) is not None]))
    return time.perf_counter() - start


def _one_job(config: dict, entries: dict, results: Path, out: Path) -> float:
    from soupflow.jobs.soup import SoupPaths

    paths = {name: SoupPaths(**_paths(results, out, entries, name)) for name in entries}
    code = ("import json, sys; sys.path.insert(0, {src!r}); from soupflow.jobs.soup import SoupPaths, make_soups; "
            "a = json.loads(sys.argv[1]); make_soups(a['config'], a['entries'], "
            "{{n: SoupPaths(**p) for n, p in a['paths'].items()}}, threads=2)").format(src=str(ROOT / "src"))
    args = {"config": config, "entries": entries, "paths": {n: p.__dict__ for n, p in paths.items()}}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True,
                          cwd=results.parent)
    if done.returncode:
        raise SystemExit(f"the soups job failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def bench_soups_phase(work: Path, results: Path) -> pd.DataFrame:
    from soupflow.plan.params import soup_specs

    if not (results / "metrics" / "runs.parquet").exists():
        raise SystemExit(f"this study needs a finished workflow: no {results}/metrics/runs.parquet")
    config = yaml.safe_load((results / "config.yaml").read_text())  # the resolved config its jobs were given
    entries = soup_specs(config)
    rows = []
    for way, cook in ((f"one process per soup ({BEFORE})", _one_process_per_soup), ("one soups job", _one_job)):
        seconds = cook(config, entries, results, work / "phase" / way.split(" (")[0].replace(" ", "_"))
        rows.append({"way": way, "seconds": seconds, "soups": len(entries)})
    table = pd.DataFrame(rows)
    before, after = table.seconds
    differences = {name: _difference(work / "phase", name) for name in entries}
    same = all(chosen for chosen, _ in differences.values())
    for name, (chosen, largest) in differences.items():
        if not chosen or largest > 1e-4:
            print(f"  {name}: {'same' if chosen else 'OTHER'} ingredients, largest weight difference {largest:.2g}")
    print(f"\nsoups phase: {len(entries)} soups of {results} (the default's runs), wall seconds on 2 cores")
    print(f"  one soups job {after:.1f} s vs one process per soup at {BEFORE}, two at a time {before:.1f} s -> ratio "
          f"{after / before:.3f} (goal <= 0.5); {'the same ingredients in every soup' if same else 'DIFFERENT INGREDIENTS'}, largest weight "
          f"difference {max(d for _, d in differences.values()):.2g}")
    table["ratio"] = after / before
    table["same_soups"] = same
    return table


def _difference(folder: Path, name: str) -> tuple[bool, float]:
    """Whether the two ways chose the same ingredients, and the largest weight difference: torch's threads
    (one per process before, two in the soups job) sum in another order, so BatchNorm re-estimation and the
    learned soup's fit agree to float rounding, not bit for bit."""
    files = [folder / way / name / "model.safetensors" for way in ("one_process_per_soup", "one_soups_job")]
    with safe_open(str(files[0]), framework="pt") as a, safe_open(str(files[1]), framework="pt") as b:
        same = a.metadata().get("ingredients") == b.metadata().get("ingredients")
    x, y = (load_file(str(f)) for f in files)
    return same, max(float((x[k].double() - y[k].double()).abs().max()) for k in x if x[k].is_floating_point())


if __name__ == "__main__":
    import tempfile

    sys.path.insert(0, str(ROOT / "src"))
    with tempfile.TemporaryDirectory(prefix="soupflow-phase-") as scratch:
        print(bench_soups_phase(Path(scratch), Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "results")).to_string())
