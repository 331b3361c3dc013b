"""A faithful re-implementation of the seed's original training recipe (the baseline).

torchvision's ``MNIST`` dataset with per-sample PIL transforms inside a ``torch.utils.data.DataLoader``
(``RandomApply([CenterCrop(22)], p=0.1)``, ``Resize((28, 28))``, ``RandomRotation((-15, 15), fill=0)``,
``ToTensor()``, ``Normalize((0.1307,), (0.3081,))``), batch 64, Adam lr 1e-3, one epoch, a
12,238-parameter 7-conv network (conv bias + batch norm).

torchvision cannot be installed beside this torch build, so each transform is written out here
as the Pillow and tensor calls torchvision 0.29 makes per sample, with the same random draws
from torch's global generator. ``bench/seed_check_torchvision.py``, run where torchvision is
installed, checks that the images match torchvision's bit for bit and times both pipelines. What
is left out is torchvision's own Python around those calls (module dispatch, API-usage logging,
argument checks), so this baseline is, if anything, faster than the real seed (README).
"""

from __future__ import annotations

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


class SeedTransform:
    """The seed's transform pipeline as torchvision runs it on one PIL image (train or test)."""

    def __init__(self, train: bool) -> None:
        self.train = train

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if self.train:
            if torch.rand(1) <= 0.1:  # RandomApply(p=0.1): skips when p < rand, drawn first
                top = left = round((28 - 22) / 2.0)  # CenterCrop(22)
                img = img.crop((left, top, left + 22, top + 22))
            img = img.resize((28, 28), Image.Resampling.BILINEAR)  # Resize((28, 28)); a copy at 28x28
            angle = float(torch.empty(1).uniform_(-15.0, 15.0).item())  # RandomRotation((-15, 15))
            img = img.rotate(angle, Image.Resampling.NEAREST, expand=False, center=None, fillcolor=0)
        # ToTensor: copy out of PIL, HWC → CHW, uint8 → float in [0, 1]
        x = torch.from_numpy(np.array(img, np.uint8, copy=True))
        x = x.view(img.size[1], img.size[0], 1).permute((2, 0, 1)).contiguous()
        x = x.to(dtype=torch.float32).div(255)
        # Normalize((0.1307,), (0.3081,)): out of place, per-channel mean/std tensors
        x = x.clone()
        mean = torch.as_tensor((MEAN,), dtype=x.dtype)
        std = torch.as_tensor((STD,), dtype=x.dtype)
        if (std == 0).any():
            raise ValueError("std is zero")
        return x.sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))


class SeedMnist(Dataset[tuple[torch.Tensor, int]]):
    """torchvision's ``MNIST.__getitem__``: index the uint8 tensor, wrap it as a PIL "L" image, transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, train: bool) -> None:
        self.data, self.targets, self.transform = images, labels, SeedTransform(train)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img, target = self.data[i], int(self.targets[i])
        return self.transform(Image.fromarray(img.numpy())), target


def train_seed(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    seed: int = 0,
    workers: int = 0,
) -> dict[str, float]:
    """Run the seed recipe for one epoch on uint8 [N,28,28] images; returns wall seconds and test accuracy."""
    torch.manual_seed(seed)
    model = SeedNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(SeedMnist(train_x, train_y, True), batch_size=64, shuffle=True, num_workers=workers)
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
        for xb, yb in DataLoader(SeedMnist(test_x, test_y, False), batch_size=1000):
            correct += int((model(xb).argmax(1) == yb).sum())
    return {
        "seconds": seconds,
        "test_accuracy": correct / len(test_y),
        "params": sum(p.numel() for p in model.parameters()),
    }
