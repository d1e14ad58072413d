"""Why do fine-tunes with ``bn_statistics: frozen`` collapse in few-label transfer (issue 26's probe, issue 11's
Lite0 runs)? Fine-tune one run of a finished transfer workflow from its init, BatchNorm in training mode and
frozen at several learning rates, with the workflow's own ``train``, and print what each run does to the net:

    python studies/frozen_bn.py --results experiments/transfer/results [--epochs 30] [--lrs 0.1,0.01,0.001]

Per setting: val accuracy, the share of val images given the most common class, the share of the last stage's
ReLU channels that are dead on val (zero for every image), the mean |running mean| / running std that each
BatchNorm layer's frozen statistics miss the fine-tuning images' own statistics by at the start, and how far
the weights moved (relative L2 distance of the convolutions from the init).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from soupflow.core.evaluate import Evaluator  # noqa: E402
from soupflow.core.models import load_checkpoint, model_for, set_threads  # noqa: E402
from soupflow.core.train import fine_tuning_source, train  # noqa: E402
from soupflow.plan import layout  # noqa: E402
from soupflow.plan.seeds import pipeline_seed  # noqa: E402
from soupflow.store.datasets import open_data  # noqa: E402


def _batchnorms(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def statistics_gap(model: torch.nn.Module, images: torch.Tensor) -> float:
    """Mean over BatchNorm layers of mean |batch mean − running mean| / running std on ``images``: how far the
    stored statistics (the pretraining classes') are from the fine-tuning images' own at the start."""
    gaps, hooks = [], []
    for bn in _batchnorms(model):
        def hook(module, inputs, _output):
            x = inputs[0].float()
            mean = x.mean(dim=(0, 2, 3))
            gaps.append(float(((mean - module.running_mean).abs() / (module.running_var + module.eps).sqrt()).mean()))
        hooks.append(bn.register_forward_hook(hook))
    model.eval()(images)
    for hook in hooks:
        hook.remove()
    return sum(gaps) / len(gaps)


@torch.no_grad()
def dead_and_majority(model: torch.nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """Share of the last stage's output channels that are zero for every image, and the share of images given
    the most common class."""
    model.eval()
    features = model.forward_features(images)
    dead = float((features.amax(dim=(0, 2, 3)) <= 0).float().mean())
    predicted = model.forward_head(features).argmax(dim=1)
    return dead, float(predicted.bincount().max()) / predicted.numel()


def moved(model: torch.nn.Module, init: dict[str, torch.Tensor]) -> float:
    """Relative L2 distance of the convolution weights from the init."""
    now = model.state_dict()
    keys = [k for k in init if k.endswith("weight") and init[k].dim() == 4]
    num = sum(float((now[k] - init[k]).square().sum()) for k in keys)
    return (num / sum(float(init[k].square().sum()) for k in keys)) ** 0.5


def run(config: dict, data, init: dict, hp: dict, sample: torch.Tensor) -> dict:
    model = model_for(data, config["model"])
    model.load_state_dict(init)
    gap = statistics_gap(model, sample)
    seeded = {**hp, "seed": pipeline_seed(config, hp["seed"])}
    result = train(model, fine_tuning_source(data, seeded), data, seeded, torch.device("cpu"), name="probe", log_every=1000)
    dead, majority = dead_and_majority(model, sample)
    val = Evaluator(model, data, "val", torch.device("cpu")).scores().accuracy
    return {"bn_statistics": hp.get("bn_statistics") or "train mode", "lr": hp["lr"], "status": result.status,
            "train_loss_last_epoch": result.train_loss, "val_accuracy": val, "majority_class_share": majority,
            "dead_last_stage_channels": dead, "start_statistics_gap": gap, "conv_weights_moved": moved(model, init)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", required=True, help="a transfer workflow's pipeline folder with its init")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lrs", default="0.1,0.01,0.001")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    set_threads(args.threads)
    results = Path(args.results)
    config = yaml.safe_load((results / "config.yaml").read_text())
    data = open_data(layout.data_files(f"{results}/data")["data"])
    init = load_checkpoint(layout.init_file(f"{results}/init"))
    images, _ = data.split("val")
    sample = data.normalise(images[:1000])
    base = {**config["finetune"], "epochs": args.epochs, "seed": 0}
    lrs = [float(x) for x in args.lrs.split(",")]
    rows = [run(config, data, init, {**base, "lr": lrs[0]}, sample)]
    rows += [run(config, data, init, {**base, "lr": lr, "bn_statistics": "frozen"}, sample) for lr in lrs]
    pd.set_option("display.width", 200)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
