"""A small training job for the resume tests: ``python resume_worker.py STATE OUT [FILES]``.

Trains a conv net with BatchNorm, dropout and flip/shift augmentation (so every kind of state matters:
optimiser momentum, running statistics, the moving average of the weights, the data-order generator and torch's
global RNG), saving its full state every 3 steps to STATE, and writes the final weights and their moving
average (``ema.*``) to OUT. With FILES (a files-format table), the
images are streamed by a DataLoader worker through timm's seeded training transforms instead, with mixup.
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from safetensors.torch import save_file  # noqa: E402

from soupflow.core.resume import Resume  # noqa: E402
from soupflow.core.train import TensorSource, train, train_source  # noqa: E402
from soupflow.store.files import FileData  # noqa: E402


class Data:
    def normalise(self, images):
        return images.float() / 255.0


class SlowNet(torch.nn.Module):
    def __init__(self, channels=1, size=12, classes=4):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Dropout(0.2),
            torch.nn.Flatten(), torch.nn.Linear(8 * size * size, classes))

    def forward(self, x):
        time.sleep(0.01)  # long enough to be killed mid-run
        return self.net(x)


def main(state: str, out: str, files: str | None = None) -> None:
    torch.set_num_threads(1)
    hp = {"lr": 0.05, "weight_decay": 1e-4, "epochs": 4, "batch_size": 16, "optimizer": "sgd", "momentum": 0.9,
          "nesterov": True, "seed": 7, "schedule": "onecycle", "augmentation": "flip_shift", "ema_decay": 0.9}
    if files:
        hp.update(augmentation="flip", crop_scale=0.5, auto_augment="rand-m9-mstd0.5-inc1", mixup=0.4, epochs=2)
        data = FileData.open(files, workers=1)
        source, shape = train_source(data, "train", hp), data.image_shape
    else:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (320, 1, 12, 12), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 4, (320,), generator=g)
        data, source, shape = Data(), TensorSource.of(images, labels, hp), (1, 12, 12)
    torch.manual_seed(123)
    model = SlowNet(shape[0], shape[1], 10 if files else 4)
    result = train(model, source, data, hp, torch.device("cpu"), log_every=10**6,
                   resume=Resume(state, every_steps=3))
    saved = {**model.state_dict(), **{f"ema.{name}": tensor for name, tensor in result.ema.items()}}
    save_file({name: tensor.contiguous() for name, tensor in saved.items()}, out)
    print(f"resumed_from_step={result.resumed_from_step}")


if __name__ == "__main__":
    main(*sys.argv[1:])
