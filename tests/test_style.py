"""The workflow stays as Snakemake's catalog asks: `snakemake --lint` and `snakefmt` clean."""

import os
import re
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


def test_the_rules_that_take_a_gpu_get_threads_and_gpus_from_both_profiles():
    """A rule's ``resources: gpu=`` is the one place that says it runs a model; each profile must give every
    such rule its threads and (but for the training rules, which ask for ``devices_per_run`` themselves) a
    GPU, and no other rule one."""
    import yaml

    gpu_rules = {rule for rule, body in _rule_bodies().items() if re.search(r"\bgpu=(GPU_JOB|gpus_per_run)\b", body)}
    assert {"init", "finetune", "soups"} <= gpu_rules
    for name in ("local", "slurm"):
        profile = yaml.safe_load((ROOT / "profiles" / name / "config.yaml").read_text())
        named = {rule: (resources or {}).get("gpu") for rule, resources in profile["set-resources"].items()}
        asked = {rule for rule, gpus in named.items() if gpus is not None}  # a GPU, or 0 on purpose (CPU nodes)
        assert {rule for rule, gpus in named.items() if gpus} <= gpu_rules, name
        assert gpu_rules - {"init", "finetune"} <= asked and gpu_rules <= set(profile["set-threads"]), name
        assert not {"init", "finetune"} & asked, name  # they ask for training.devices_per_run GPUs themselves


def test_ruff_finds_nothing():
    """pyflakes and import order over the package, the scripts, the benchmarks, the studies and the tests (pyproject.toml)."""
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    result = subprocess.run([ruff, "check", "src", "workflow", "bench", "studies", "tests"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]


def _rule_bodies() -> dict[str, str]:
    """Each rule's text, by name, from workflow/rules/*.smk."""
    import re

    bodies = {}
    for path in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        parts = re.split(r"^rule (\w+):\n", path.read_text(), flags=re.M)
        bodies.update(dict(zip(parts[1::2], parts[2::2])))
    return bodies


FILE_NAME = r"/([a-z_]+\.(?:safetensors|parquet|yaml|json|txt|csv|png))\""
LAYOUT = ROOT / "src" / "soupflow" / "plan" / "layout.py"


def _names_of(body: str) -> set[str]:
    """The file names a rule writes: spelt in its text, or by the ``layout`` functions its text calls."""
    import inspect
    import re

    from soupflow.plan import layout

    names = set(re.findall(FILE_NAME, body))
    for function in re.findall(r"layout\.(\w+)\(", body):
        names.update(re.findall(FILE_NAME, inspect.getsource(getattr(layout, function))))
        if len(inspect.signature(getattr(layout, function)).parameters) == 1:  # a folder's files, spelt by fields
            made = getattr(layout, function)("folder")
            paths = made.values() if isinstance(made, dict) else [made]
            names.update(re.findall(FILE_NAME, " ".join(f'"{path}"' for path in paths)))
    return names


def test_no_module_under_src_but_the_layout_spells_an_output_file_name():
    """The rules own every path (in their own text, or through ``plan/layout.py``, which the rules, bench and
    tests share): a job gets paths as arguments, so a file name written in another module would break at run
    time when the rule renames that output."""
    names = set().union(*map(_names_of, _rule_bodies().values()))
    assert {"model.safetensors", "outputs.safetensors", "metrics.parquet", "runs.parquet", "pairs.parquet"} <= names
    for module in sorted((ROOT / "src" / "soupflow").rglob("*.py")):
        if module == LAYOUT:
            continue
        text = module.read_text()
        spelt = sorted(name for name in names if f'"{name}"' in text or f"'{name}'" in text or f'/{name}"' in text)
        assert not spelt, f"{module.name} spells {spelt}: take the path from the rule"


def test_the_results_page_names_the_rule_that_writes_each_result_file():
    """docs/results.md's table: each row's rule exists and its text holds the row's file names, so that
    `grep -n <file name> workflow/rules` lands in that rule."""
    import re

    page = (ROOT / "docs" / "results.md").read_text()
    table = page[page.index("| path | rule | what |"):].split("\n\n", 1)[0]
    bodies = _rule_bodies()
    rows = [line.split(" | ") for line in table.splitlines()[2:]]
    assert len(rows) >= 10
    for row in rows:
        rules = re.findall(r"`(\w+)`", row[1])
        if not rules:
            continue  # report.html: written by `snakemake --report`, not by a rule
        assert all(rule in bodies for rule in rules), row[1]
        for name in re.findall(r"([a-z_]+\.(?:safetensors|parquet|yaml|json|txt|csv|png))`", row[0]):
            assert any(name in _names_of(bodies[rule]) for rule in rules), f"{name}: not written by {rules}"


def test_the_layers_import_only_downward():
    """import-linter's contracts (pyproject.toml): jobs → report → core → store → plan, and plan imports
    neither torch, numpy, pandas nor timm (a bare Snakemake parses the workflow with it); no layer's modules
    import each other in a cycle."""
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}  # this checkout's package, installed or not
    result = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken" in result.stdout, result.stdout[-2000:]
