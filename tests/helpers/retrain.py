"""Fakes for retraining tests: a tiny model, labelled production rows, a registry and a trainer.

``Rig`` is a :class:`~mnistops.worker.jobs.RetrainJobRunner` over a real job queue (SQLite) with
these fakes; :meth:`Rig.run` queues, claims and runs one job as a worker does.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from mnistops.settings import Settings
from mnistops.store.jobs import JobQueue
from mnistops.store.predictions import PredictionRecord, PredictionStore
from mnistops.training.data import Mnist, Split
from mnistops.training.model import MnistNet, ModelConfig, save_model
from mnistops.worker.execute import run_claimed
from mnistops.worker.jobs import RetrainJobRunner
from mnistops.worker.steps import ProductionGateConfig, RetrainRecipe

TINY = ModelConfig(c1=2, c2=2, c3=2, c4=2, c5=2, c6=2, c7=4)


def model_dir(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    save_model(MnistNet(TINY), path / "model.pt")
    (path / "metrics.json").write_text(json.dumps({"test_accuracy": 0.1}))
    return path


def tiny_mnist() -> Mnist:
    """5,200 blank training images (200 after the 5k validation split) and 50 test images."""
    g = torch.Generator().manual_seed(0)
    return Mnist(
        train_images=torch.zeros(5200, 28, 28, dtype=torch.uint8),
        train_labels=torch.randint(0, 10, (5200,), generator=g),
        test_images=torch.randint(0, 256, (50, 28, 28), generator=g).to(torch.uint8),
        test_labels=torch.randint(0, 10, (50,), generator=g),
        md5="tiny",
    )


def production_image(i: int) -> np.ndarray:
    """A distinctive non-blank image whose first two pixels encode ``i``."""
    img = np.full((28, 28), 255, np.uint8)
    img[0, 0], img[0, 1] = i // 256, i % 256
    return img


def fill_store(store: PredictionStore, n: int) -> list[str]:
    probs = np.full(10, 0.1, np.float32)
    recs = [PredictionRecord.create(production_image(i), probs, "1", 1.0, ts=1000.0 + i) for i in range(n)]
    store.insert_many(recs)
    for i, r in enumerate(recs):
        store.add_feedback(r.id, i % 10)
    return [r.id for r in recs]


@dataclass
class FakeRegistry:
    """Registry stand-in: version "1" is the champion (if any); registered versions keep their tags."""

    champion_dir: Path | None
    gate_passes: bool = True
    registered: list[Path] = field(default_factory=list)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)
    gate_calls: int = 0
    challengers: list[str] = field(default_factory=list)

    def alias_version(self, alias: str) -> str | None:
        return "1" if alias == "champion" and self.champion_dir is not None else None

    def download(self, version: str) -> Path:
        if version == "1" and self.champion_dir is not None:
            return self.champion_dir
        return self.registered[int(version) - 2]

    def search_versions(self, extra_filter: str = "") -> list[SimpleNamespace]:
        key, value = re.fullmatch(r"tags\.`(.+)` = '(.*)'", extra_filter).groups()  # type: ignore[union-attr]
        hits = [v for v, t in self.tags.items() if t.get(key) == value]
        return [SimpleNamespace(version=v, run_id=f"run-{v}") for v in hits]

    def register(self, model_dir: Path, run_id: Any = None, mnist: Any = None, profile: bool = True,
                 tags: dict[str, str] | None = None) -> str:  # fmt: skip
        if run_id is not None and run_id.startswith("run-"):  # re-registering a version: idempotent
            return run_id[4:]
        self.registered.append(model_dir)
        version = str(1 + len(self.registered))
        self.tags[version] = dict(tags or {})
        return version

    def gate(self, version: str, mnist: Any = None) -> Any:
        self.gate_calls += 1
        failed = [] if self.gate_passes else ["test_accuracy"]
        return SimpleNamespace(passed=self.gate_passes, failed_checks=failed, champion=None, checks=[])

    def set_challenger(self, version: str) -> None:
        self.challengers.append(version)


class FakeTrainer:
    """Stands in for run_training: records its inputs, writes a tiny model folder, may block or fail."""

    def __init__(self, fail: bool = False, block: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail, self.started, self.release = fail, threading.Event(), threading.Event()
        if not block:
            self.release.set()

    def __call__(self, cfg: Any, settings: Any, out_dir: Path, split: Split, **kw: Any) -> Any:
        self.calls.append({"cfg": cfg, "split": split, "out_dir": out_dir, **kw})
        self.started.set()
        assert self.release.wait(30)
        if self.fail:
            raise RuntimeError("loss is NaN")
        model_dir(out_dir, seed=1)
        return SimpleNamespace(out_dir=out_dir, metrics={"run_id": "r1", "test_accuracy": 0.1})


@dataclass
class Rig:
    """A runner over a real job queue, with its fakes."""

    settings: Settings
    queue: JobQueue
    runner: RetrainJobRunner
    trainer: FakeTrainer
    reg: FakeRegistry

    def run(self, trigger: str = "manual", owner: str = "w1", **kw: Any) -> Any:
        """Queue (or reuse the active job), claim as ``owner`` and run it; the finished job or None."""
        job = self.queue.submit(trigger)
        claimed = self.queue.claim(owner, self.settings.job_lease_seconds, job_id=job.id)
        assert claimed is not None
        return run_claimed(self.queue, self.runner, claimed, owner, self.settings, **kw)


def make_rig(tmp_path: Path, store: PredictionStore, mnist: Mnist, trainer: FakeTrainer, reg: FakeRegistry,
         **settings: Any) -> Rig:  # fmt: skip
    s = Settings(home=tmp_path / "home", retrain_production_share=0.3, **settings)
    recipe = RetrainRecipe(epoch_size=100, gate=ProductionGateConfig(min_rows=5))
    fake: Any = reg  # duck-typed stand-in for mnistops.registry.core.Registry
    runner = RetrainJobRunner(s, store, fake, recipe=recipe, mnist=mnist, train_fn=trainer)
    return Rig(s, JobQueue(store), runner, trainer, reg)
