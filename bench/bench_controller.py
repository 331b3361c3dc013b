"""What one reconcile tick costs: idle, with a new window, detecting a promotion, rolling back.

The controller's reaction time to a fact is at most one tick interval plus the tick itself, so the
tick's own cost is the figure that matters. Runs the real :class:`Reconciler` in-process against a
real MLflow registry (SQLite, three registered untrained nets) and a SQLite operational database in
a temporary folder; facts are written straight into the store. Writes bench/results/controller.json
and .md.

    .venv/bin/python bench/bench_controller.py [--idle 200] [--windows 100] [--cycles 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mnistops.controller.reconciler import Reconciler
from mnistops.registry.core import Registry
from mnistops.settings import Settings
from mnistops.store.predictions import MonitorWindow, PredictionStore
from mnistops.training.model import MnistNet, save_model
from mnistops.training.train import export_onnx

RESULTS = Path(__file__).parent / "results"


class Always:
    """A lease that is always held (one process, no contention: not what is measured)."""

    def held(self) -> bool:
        return True


def _register(reg: Registry, root: Path, n: int) -> list[str]:
    torch.manual_seed(0)
    model = MnistNet().eval()
    versions = []
    for i in range(n):
        d = root / f"m{i}"
        d.mkdir(parents=True)
        save_model(model, d / "model.pt")
        export_onnx(model, d / "model.onnx")
        (d / "metrics.json").write_text(json.dumps({"params": 1, "data_md5": "bench", "test_accuracy": 0.99}))
        (d / "config.json").write_text(json.dumps({"seed": i}))
        versions.append(reg.register(d, profile=False))
    return versions


def _window(store: PredictionStore, version: str, realized: float) -> None:
    last = store.last_window()
    store.insert_window(
        MonitorWindow(
            window=0 if last is None else last.window + 1,
            end_seq=0,
            end_ts=time.time(),
            n=500,
            model_version=version,
            results={"combined": {"details": {"start_seq": 0, "realized_n": 500}}},
            estimated_accuracy=realized,
            realized_accuracy=realized,
        )
    )


def _timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def _stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {
        "n": len(xs),
        "p50_ms": round(statistics.median(xs), 2),
        "p95_ms": round(xs[min(len(xs) - 1, int(0.95 * len(xs)))], 2),
        "max_ms": round(xs[-1], 2),
    }


def run(idle: int, windows: int, cycles: int, root: Path) -> dict[str, dict[str, float]]:
    """Tick timings by kind (see module docstring)."""
    settings = Settings(
        home=root / "home", data_dir=root / "data", database_url=f"sqlite:///{root / 'ops.db'}"
    )
    reg = Registry(settings)
    v1, _, v3 = _register(reg, root / "models", 3)
    reg.promote(v1, actor="bench", force=True)
    store = PredictionStore(settings.database)
    rec = Reconciler(settings, store, reg, Always())
    rec.tick()  # first start
    out: dict[str, list[float]] = {"idle": [], "window": [], "promotion seen": [], "watch + rollback": []}
    for _ in range(idle):
        out["idle"].append(_timed(rec.tick))
    for _ in range(windows):
        _window(store, v1, 0.97)
        out["window"].append(_timed(rec.tick))
    for _ in range(cycles):
        reg.promote(v3, actor="bench", force=True)
        out["promotion seen"].append(_timed(rec.tick))
        _window(store, v3, 0.40)
        out["watch + rollback"].append(_timed(rec.tick))
        assert reg.aliases()["champion"] == v1, "the broken release was not rolled back"
    return {k: _stats(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    """Run, print and save the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--idle", type=int, default=200, help="idle ticks")
    p.add_argument("--windows", type=int, default=100, help="ticks that each handle one new window")
    p.add_argument("--cycles", type=int, default=5, help="forced bad release -> rollback cycles")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        res = run(args.idle, args.windows, args.cycles, Path(tmp))
    lines = ["| tick | n | p50 ms | p95 ms | max ms |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['n']} | {v['p50_ms']} | {v['p95_ms']} | {v['max_ms']} |" for k, v in res.items()]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "controller.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / "controller.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
