"""Check ``seed_recipe.py`` against real torchvision: same images bit for bit, and its speed.

torchvision cannot be installed beside this project's torch build, so this runs in a side
environment (README, "Is the baseline faithful?")::

    python -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.14.1 torchvision==0.29.1 pillow rich
    /tmp/tv/bin/python bench/seed_check_torchvision.py --data-dir .mnistops/data

It (1) runs both transform pipelines on the same images from the same torch RNG state and
requires identical tensors, then (2) times the seed's data pipeline alone (DataLoader, batch 64,
shuffle) and (3) the full seed epoch with each, alternating, in this one process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Dataset, Subset

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(
    0, str(Path(__file__).parent.parent / "src")
)  # mnistops.training.data needs only torch + numpy

from mnistops.training.data import split_indices
from seed_recipe import MEAN, STD, SeedMnist, SeedNet


def torchvision_train_set(data_dir: Path) -> Subset:  # type: ignore[type-arg]
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.RandomApply([transforms.CenterCrop(22)], p=0.1),
            transforms.Resize((28, 28)),
            transforms.RandomRotation((-15, 15), fill=0),
            transforms.ToTensor(),
            transforms.Normalize((MEAN,), (STD,)),
        ]
    )
    root = Path(tempfile.mkdtemp()) / "MNIST" / "raw"  # torchvision's expected layout, as links
    root.mkdir(parents=True)
    for kind in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
        (root / f"{kind}-ubyte").symlink_to((data_dir / f"{kind}-ubyte").resolve())
    full = datasets.MNIST(str(root.parent.parent), train=True, download=False, transform=tf)
    train, _ = split_indices(len(full))  # the 55k images bench-train uses
    return Subset(full, train.tolist())


def check_identical(tv: Subset, ours: SeedMnist, n: int) -> None:  # type: ignore[type-arg]
    for i in range(n):
        torch.manual_seed(i)
        a, ya = tv[i]
        torch.manual_seed(i)
        b, yb = ours[i]
        if ya != yb or not torch.equal(a, b):
            diff = float((a - b).abs().max())
            raise SystemExit(f"image {i}: seed_recipe differs from torchvision (max abs diff {diff})")


def data_seconds(ds: Dataset) -> float:  # type: ignore[type-arg]
    t0 = time.perf_counter()
    for _ in DataLoader(ds, batch_size=64, shuffle=True):
        pass
    return time.perf_counter() - t0


def epoch_seconds(ds: Dataset) -> float:  # type: ignore[type-arg]
    torch.manual_seed(0)
    model = SeedNet().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for xb, yb in DataLoader(ds, batch_size=64, shuffle=True):
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=Path(".mnistops/data"))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--check", type=int, default=2000, help="images compared bit for bit")
    args = p.parse_args()
    tv = torchvision_train_set(args.data_dir)
    full = tv.dataset
    idx = torch.tensor(tv.indices)
    ours = SeedMnist(full.data[idx], full.targets[idx], train=True)
    check_identical(tv, ours, args.check)
    console = Console()
    console.print(f"{args.check} augmented images: identical to torchvision's")
    t = Table(title=f"seed pipeline, torchvision vs seed_recipe.py (torch {torch.__version__})")
    for col in ("measure", "torchvision s", "seed_recipe s", "seed_recipe / torchvision"):
        t.add_column(col, justify="right")
    for name, fn in (("data only", data_seconds), ("full epoch", epoch_seconds)):
        a, b = [], []
        for _ in range(args.repeats):
            a.append(fn(tv))
            b.append(fn(ours))
        ma, mb = statistics.median(a), statistics.median(b)
        t.add_row(name, f"{ma:.1f}", f"{mb:.1f}", f"{mb / ma:.2f}")
    console.print(t)


if __name__ == "__main__":
    main()
