"""A faithful re-implementation of the seed's original training recipe (the baseline).

Per-sample PIL transforms inside a ``torch.utils.data.DataLoader`` (random 22x22 centre crop with
p=0.1 resized to 28x28, random rotation in [-15°, 15°] with fill 0, to-tensor, normalise), batch
64, Adam lr 1e-3, one epoch, a 12,238-parameter 7-conv network (conv bias + batch norm). torchvision
is not used here (it cannot be installed beside this torch build), so its transforms are rewritten
with Pillow calls that match torchvision's defaults (bilinear resize, nearest-neighbour rotation).
"""

from __future__ import annotations

import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

MEAN, STD = 0.1307, 0.3081


class SeedNet(nn.Module):
    """7 conv layers (3x3 and one 1x1), BN, 2 max-pools, GAP, linear: 12,238 parameters."""

    def __init__(self) -> None:
        super().__init__()

        def blk(cin: int, cout: int, k: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU())

        self.net = nn.Sequential(
            blk(1, 8, 3), blk(8, 16, 3), nn.MaxPool2d(2),
            blk(16, 10, 1), blk(10, 14, 3), blk(14, 16, 3), nn.MaxPool2d(2),
            blk(16, 16, 3), blk(16, 32, 3),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


class PilMnist(Dataset[tuple[torch.Tensor, int]]):
    """uint8 arrays → PIL image per sample → seed transforms → normalised tensor."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, train: bool) -> None:
        self.images, self.labels, self.train = images, labels, train

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[i], mode="L")
        if self.train:
            if random.random() < 0.1:  # RandomApply([CenterCrop(22)], p=0.1)
                img = img.crop((3, 3, 25, 25))
            img = img.resize((28, 28), Image.Resampling.BILINEAR)  # Resize((28, 28))
            img = img.rotate(random.uniform(-15, 15), resample=Image.Resampling.NEAREST, fillcolor=0)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).unsqueeze(0)  # ToTensor
        return (x - MEAN) / STD, int(self.labels[i])


def train_seed(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    seed: int = 0,
    workers: int = 0,
) -> dict[str, float]:
    """Run the seed recipe for one epoch; returns wall seconds and test accuracy."""
    torch.manual_seed(seed)
    random.seed(seed)
    model = SeedNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(PilMnist(train_x, train_y, True), batch_size=64, shuffle=True, num_workers=workers)
    t0 = time.perf_counter()
    model.train()
    for xb, yb in loader:
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    seconds = time.perf_counter() - t0
    model.eval()
    correct = 0
    with torch.inference_mode():
        for xb, yb in DataLoader(PilMnist(test_x, test_y, False), batch_size=1000):
            correct += int((model(xb).argmax(1) == yb).sum())
    return {
        "seconds": seconds,
        "test_accuracy": correct / len(test_y),
        "params": sum(p.numel() for p in model.parameters()),
    }
