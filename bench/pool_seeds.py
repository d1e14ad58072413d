"""Pool finished workflow runs of the same experiment under several top-level seeds: for every soup, its
difference to that seed's best individual, per seed and pooled over the seeds (the mean per-image difference,
with a paired bootstrap interval over the shared test images; stats.pooled_compare).

    python bench/pool_seeds.py results /tmp/seed1/results /tmp/seed2/results

Each folder is a finished ``results/`` (``snakemake --cores N --config seed=S`` in its own ``--directory``).
Soups are re-evaluated from their checkpoints (one test pass each); the best individual's test logits are the
cached ones. Random-order recipes are skipped (their checkpoint is one repeat of several). Pooling is over the
test images every folder has: with ``data.test_fraction`` each seed adds its own training images to the
official test images, and only the official ones are shared (per-seed intervals use all of each folder's).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pandas as pd  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from soupflow.core.evaluate import Evaluator  # noqa: E402
from soupflow.core.models import create_model, pick_device  # noqa: E402
from soupflow.core.stats import compare, format_p, pooled_compare  # noqa: E402
from soupflow.plan import layout  # noqa: E402
from soupflow.store.datasets import open_data  # noqa: E402
from soupflow.store.prepared import test_rows  # noqa: E402
from soupflow.store.tables import best_run  # noqa: E402


def test_images(results: Path) -> list[tuple[str, int]]:
    """Which image each test row of a results folder is (``data.test_rows`` of its written-down split)."""
    return test_rows(json.loads(Path(layout.data_files(f"{results}/data")["splits"]).read_text()))


def shared(folders: list[tuple], keys: list[list[tuple[str, int]]]) -> list[tuple]:
    """Each folder's logits and labels restricted to the test images all folders have, in one order."""
    common = set.intersection(*map(set, keys))
    if not common:
        raise SystemExit("the folders share no test image; pooling needs the same test images")
    out = []
    for (soups, reference, labels), order in zip(folders, keys):
        rows = [row for row, key in enumerate(order) if key in common]
        rows.sort(key=lambda row: order[row])
        out.append(({name: logits[rows] for name, logits in soups.items()}, reference[rows], labels[rows]))
    return out


def soup_logits(results: Path) -> tuple[dict[str, object], object, object]:
    """{soup: test logits} of one results folder, the best individual's test logits, and the test labels."""
    data = open_data(layout.data_files(f"{results}/data")["data"])
    soups = pd.read_parquet(results / "metrics" / "soups.parquet")
    best = best_run(pd.read_parquet(layout.runs_table(f"{results}/metrics")))
    reference = load_file(layout.run_files(f"{results}/runs/{best.run_id}")["outputs"])["test_logits"]
    out, evaluator = {}, None
    for name, group in soups.groupby("soup", sort=False):
        if len(group) > 1 or group.recipe.iloc[0] == "untrained":
            continue
        path = results / "soups" / name / "model.safetensors"
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata()
        if evaluator is None:
            model_config = {"name": meta["model"], "kwargs": json.loads(meta["kwargs"])}
            model = create_model(model_config, int(meta["num_classes"]), int(meta["in_chans"]))
            evaluator = Evaluator(model, data, "test", pick_device())
        out[name] = evaluator.logits(load_file(str(path)))
    return out, reference, evaluator.labels


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", nargs="+")
    args = parser.parse_args()
    own = [soup_logits(Path(folder)) for folder in args.results]
    folders = shared(own, [test_images(Path(folder)) for folder in args.results])
    labels = folders[0][2]
    if any(not (f[2] == labels).all() for f in folders):
        raise SystemExit("the folders' labels of the same test images differ; are they the same data set?")
    rows = []
    for name in folders[0][0]:
        seeds = [compare(soups[name], reference, labels).accuracy_pt
                 for soups, reference, labels in own if name in soups]
        pairs = [(soups[name], reference) for soups, reference, _ in folders if name in soups]
        pooled = pooled_compare(pairs, labels)
        a = pooled.accuracy_pt
        rows.append({"soup": name,
                     "per seed": "  ".join(f"{i.diff:+.2f} [{i.low:+.2f}, {i.high:+.2f}]" for i in seeds),
                     "pooled": f"{a.diff:+.2f} pt [{a.low:+.2f}, {a.high:+.2f}], {format_p(pooled.mcnemar_p)}"
                               + (" WINS" if pooled.wins else "")})
    print(f"vs best individual by val, test accuracy points, {len(folders)} seeds")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
