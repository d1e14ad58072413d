"""The parse of a large grid stays linear: Snakemake's work per job, counted (not timed), is the same at 100
and at 1,000 grid points. Two regressions of issue 36 fail it: a rule with one output per run under a wildcard
(every file of the DAG tested against each such output, 3.7x the engine's own parse at 10,000 points), and a
rule with a list of every run's files beside an input that cites another rule's output (Snakemake hashes the
whole list once per file in it: 27 s of a 10,000-point parse)."""

import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, SMOKE

pytestmark = pytest.mark.slow  # parses the workflow in subprocesses

# Counted in the dry run: the candidates Snakemake's output index yields (which rules may make a file), and the
# files hashed when Snakemake hashes a list of files (a rule's input or output list).
COUNTED_DRY_RUN = """
import atexit, sys
from snakemake.common import prefix_lookup
from snakemake.iocontainers import Namedlist
work = {"CANDIDATES": 0, "HASHED": 0}
lookup = prefix_lookup.PrefixLookup.match_iter
def counted(self, query):
    for candidate in lookup(self, query):
        work["CANDIDATES"] += 1
        yield candidate
prefix_lookup.PrefixLookup.match_iter = counted
list_hash = Namedlist.__hash__
def counted_hash(self):
    work["HASHED"] += len(self)
    return list_hash(self)
Namedlist.__hash__ = counted_hash
atexit.register(lambda: print(*(f"{name} {count}" for name, count in work.items()), file=sys.stderr))
from snakemake.cli import main
sys.argv = ["snakemake", *sys.argv[1:]]
main()
"""
WORK = ("CANDIDATES", "HASHED")


def dry_run_work(tmp_path, points: int, replicates: list[int] | None) -> tuple[int, dict[str, int]]:
    """(jobs, {what: counted work}) of ``snakemake -n`` on a grid of ``points`` runs."""
    config = {**SMOKE, "grid": {"lr": [0.01, 0.02], "seed": list(range(points // 2))}, "replicates": replicates,
              "soups": [{"recipe": "uniform"}, {"recipe": "greedy"}]}
    folder = tmp_path / f"grid{points}"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    out = subprocess.run([sys.executable, "-c", COUNTED_DRY_RUN, "-s", str(ROOT / "Snakefile"), "--configfile",
                          str(folder / "config.yaml"), "--directory", str(folder), "--cores", "1", "-n",
                          "--quiet", "rules"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = int((out.stdout + out.stderr).split("\ntotal", 1)[1].split()[0])
    return jobs, {name: int(out.stderr.rsplit(f"{name} ", 1)[1].split()[0]) for name in WORK}


@pytest.mark.parametrize("replicates", [None, [0, 1]], ids=["one pipeline", "two replicates"])
def test_snakemakes_work_per_job_does_not_grow_with_the_grid(tmp_path, replicates):
    small_jobs, small = dry_run_work(tmp_path, 100, replicates)
    large_jobs, large = dry_run_work(tmp_path, 1000, replicates)
    assert large_jobs > 8 * small_jobs  # the grid did grow tenfold (and the jobs with it)
    for name in WORK:
        per_job_small, per_job_large = small[name] / small_jobs, large[name] / large_jobs
        assert per_job_large <= 1.25 * per_job_small, (name, per_job_small, per_job_large)
