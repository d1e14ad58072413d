"""README is the front door (short, the two commands, a link to every page); docs/ builds as a strict mkdocs site."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

README = (ROOT / "README.md").read_text()
PAGES = sorted(path.name for path in (ROOT / "docs").glob("*.md"))


def _nav_pages(nav) -> list[str]:
    """Every page file a mkdocs nav lists, however nested."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in _nav_pages(value)]
    return [page for item in nav for page in _nav_pages(item)]


def _mkdocs_config() -> dict:
    class Loader(yaml.SafeLoader):  # mkdocs.yml may hold !ENV / !relative tags: read them as plain text
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)


def test_the_readme_is_at_most_200_lines():
    assert len(README.splitlines()) <= 200


def test_the_readme_keeps_the_two_commands_ci_runs():
    assert "./setup.sh && .venv/bin/snakemake --cores 2 && .venv/bin/snakemake --report results/report.html" in README
    assert "./setup.sh && .venv/bin/python -m pytest -q -p no:cacheprovider tests" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./setup.sh && .venv/bin/python -m pytest -q -p no:cacheprovider tests" in ci


def test_every_docs_page_is_in_the_nav_and_linked_from_the_readme():
    nav = _nav_pages(_mkdocs_config()["nav"])
    assert sorted(nav) == PAGES, "mkdocs.yml's nav lists exactly the pages under docs/"
    linked = set(re.findall(r"\]\(docs/([\w.-]+\.md)(?:#[\w-]+)?\)", README))
    assert set(PAGES) - {"index.md"} <= linked, f"README links none of {sorted(set(PAGES) - {'index.md'} - linked)}"


def test_the_key_reference_is_the_one_the_schema_and_defaults_generate():
    """docs/keys.md is generated (`python -m soupflow.plan.keys`): a key added, renamed or re-defaulted without
    regenerating it fails here, and every key carries a meaning."""
    from soupflow.plan.keys import key_rows, markdown

    assert (ROOT / "docs" / "keys.md").read_text() == markdown(), "run: python -m soupflow.plan.keys > docs/keys.md"
    rows = key_rows()
    assert {"finetune.lr", "training.workers", "evaluation.memory_mb", "soups[].bn"} <= {row.key for row in rows}
    assert not [row.key for row in rows if not row.meaning], "every key has a description in the schema"


def test_every_relative_link_of_the_readme_and_the_pages_names_a_file_that_exists():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" in target:
                continue
            assert (path.parent / target).exists(), f"{path.name} links {target}, which does not exist"


def test_the_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`: a broken link, a page outside the nav or a missing included file fails it."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).with_name("mkdocs"))
    result = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Calibrating the embedded default" in (tmp_path / "site" / "calibration" / "index.html").read_text()
    assert "bench/run.py" in (tmp_path / "site" / "benchmarks" / "index.html").read_text()
