"""`make bench-train`: the seed recipe vs `mnistops train`, back to back in one process.

Prints wall seconds of the training epoch and test accuracy for both and the speed ratio.
Both train on the same 55k training split and are tested on the same 10k test images.
With ``--repeats N`` the pair runs N times, alternating, and the table adds the median and the
pooled ratio: on a shared machine the seed's epoch swings by ±20% with other tenants' load, so a
single pair can land anywhere in that band.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))

from mnistops.settings import Settings
from mnistops.training.data import Mnist, Split, load_mnist, split_train_val
from mnistops.training.train import TrainConfig, run_training
from seed_recipe import train_seed

Pair = tuple[dict[str, float], dict[str, Any], float]  # seed result, mnistops metrics, mnistops end to end s


def run_pair(mnist: Mnist, split: Split, settings: Settings) -> Pair:
    """One seed-recipe epoch, then one ``mnistops train`` (seed 0) into a scratch home."""
    seed = train_seed(split.train_x, split.train_y, mnist.test_images, mnist.test_labels)
    with tempfile.TemporaryDirectory() as tmp:
        s = Settings(home=Path(tmp), data_dir=settings.data_path, tracking_uri=f"sqlite:///{tmp}/mlflow.db")
        t0 = time.perf_counter()
        res = run_training(TrainConfig(seed=0), s, out_dir=Path(tmp) / "m", mnist=mnist, progress=False)
        total = time.perf_counter() - t0
    return seed, res.metrics, total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=1, help="alternating seed/mnistops pairs (default 1)")
    args = p.parse_args()
    settings = Settings()
    mnist = load_mnist(settings.data_path)
    split = split_train_val(mnist)
    console = Console()
    pairs: list[Pair] = []
    for r in range(args.repeats):
        console.print(f"[bold]pair {r + 1}/{args.repeats}[/]: seed recipe, then mnistops train ...")
        seed, ours, total = run_pair(mnist, split, settings)
        ratio = seed["seconds"] / ours["train_seconds"]
        console.print(f"  seed {seed['seconds']:.1f} s, mnistops {ours['train_seconds']:.1f} s: {ratio:.1f}x")
        pairs.append((seed, ours, total))
    t = Table(title="one epoch on this CPU (same process, same 55k images)")
    for col in ("pair", "seed s", "seed accuracy", "mnistops s", "mnistops accuracy", "speed-up"):
        t.add_column(col, justify="right")
    for i, (seed, ours, _) in enumerate(pairs, 1):
        t.add_row(
            str(i),
            f"{seed['seconds']:.1f}",
            f"{seed['test_accuracy']:.4f}",
            f"{ours['train_seconds']:.1f}",
            f"{ours['test_accuracy']:.4f}",
            f"{seed['seconds'] / ours['train_seconds']:.1f}x",
        )
    ratios = [s["seconds"] / o["train_seconds"] for s, o, _ in pairs]
    if len(pairs) > 1:
        seed_sum = sum(s["seconds"] for s, _, _ in pairs)
        ours_sum = sum(o["train_seconds"] for _, o, _ in pairs)
        t.add_row("median", "", "", "", "", f"{statistics.median(ratios):.1f}x")
        t.add_row("pooled", f"{seed_sum:.1f}", "", f"{ours_sum:.1f}", "", f"{seed_sum / ours_sum:.1f}x")
    console.print(t)
    seed, ours, total = pairs[-1]
    console.print(
        f"params: seed {seed['params']:,}, mnistops {ours['params']:,}; mnistops end to end incl. ONNX "
        f"export, evaluation, plots and MLflow logging: {total:.1f} s; bf16={ours['bf16']}, cpu={ours['cpu']}"
    )


if __name__ == "__main__":
    main()
