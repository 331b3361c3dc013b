"""`make bench-train`: the seed recipe vs `mnistops train`, back to back in one process.

Prints wall seconds of the training epoch and test accuracy for both and the speed ratio.
Both train on the same 55k training split and are tested on the same 10k test images.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))

from mnistops.data import load_mnist, split_train_val
from mnistops.settings import Settings
from mnistops.train import TrainConfig, run_training
from seed_recipe import train_seed


def main() -> None:
    settings = Settings()
    mnist = load_mnist(settings.data_path)
    split = split_train_val(mnist)
    console = Console()
    console.print("[bold]seed recipe[/] (PIL transforms in a DataLoader, batch 64, Adam 1e-3) ...")
    seed = train_seed(
        split.train_x.numpy(), split.train_y.numpy(), mnist.test_images.numpy(), mnist.test_labels.numpy()
    )
    console.print(f"  {seed['seconds']:.1f} s, accuracy {seed['test_accuracy']:.4f}")
    console.print("[bold]mnistops train[/] ...")
    with tempfile.TemporaryDirectory() as tmp:
        s = Settings(home=Path(tmp), data_dir=settings.data_path, tracking_uri=f"sqlite:///{tmp}/mlflow.db")
        t0 = time.perf_counter()
        res = run_training(TrainConfig(seed=0), s, out_dir=Path(tmp) / "m", mnist=mnist, progress=False)
        total = time.perf_counter() - t0
    ours = res.metrics
    t = Table(title="one epoch on this CPU (same process, same 55k images)")
    for col in ("recipe", "params", "epoch wall s", "test accuracy", "speed-up"):
        t.add_column(col, justify="right")
    t.add_row(
        "seed (PIL + DataLoader)",
        f"{seed['params']:,}",
        f"{seed['seconds']:.1f}",
        f"{seed['test_accuracy']:.4f}",
        "1.0x",
    )
    t.add_row(
        "mnistops train",
        f"{ours['params']:,}",
        f"{ours['train_seconds']:.1f}",
        f"{ours['test_accuracy']:.4f}",
        f"{seed['seconds'] / ours['train_seconds']:.1f}x",
    )
    console.print(t)
    console.print(
        f"mnistops end to end incl. ONNX export, evaluation, plots and MLflow logging: {total:.1f} s "
        f"({seed['seconds'] / total:.1f}x the seed's epoch alone); bf16={ours['bf16']}, cpu={ours['cpu']}"
    )


if __name__ == "__main__":
    main()
