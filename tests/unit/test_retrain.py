"""Retraining jobs with a fake trainer and registry: job table, one job at a time, data, production gate."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mnistops.errors import JobError
from mnistops.gates.report import CheckResult, GateReport
from mnistops.settings import Settings
from mnistops.store.lock import locked
from mnistops.store.predictions import PredictionRecord, PredictionStore
from mnistops.training.data import Mnist, Split
from mnistops.training.model import MnistNet, ModelConfig, save_model
from mnistops.worker import jobs as retrain
from mnistops.worker.jobs import (
    FINETUNE_MAX_LR,
    ProductionGateResult,
    RetrainJobRunner,
    holdout_mask,
    mix_training_set,
    production_gate,
)
from mnistops.worker.steps import clean_accuracies

TINY = ModelConfig(c1=2, c2=2, c3=2, c4=2, c5=2, c6=2, c7=4)


def _model_dir(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    save_model(MnistNet(TINY), path / "model.pt")
    (path / "metrics.json").write_text(json.dumps({"test_accuracy": 0.1}))
    return path


@pytest.fixture
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


def _production_image(i: int) -> np.ndarray:
    """A distinctive non-blank image whose first two pixels encode ``i``."""
    img = np.full((28, 28), 255, np.uint8)
    img[0, 0], img[0, 1] = i // 256, i % 256
    return img


def _fill_store(store: PredictionStore, n: int) -> list[str]:
    probs = np.full(10, 0.1, np.float32)
    recs = [PredictionRecord.create(_production_image(i), probs, "1", 1.0, ts=1000.0 + i) for i in range(n)]
    store.insert_many(recs)
    for i, r in enumerate(recs):
        store.add_feedback(r.id, i % 10)
    return [r.id for r in recs]


@dataclass
class FakeRegistry:
    champion_dir: Path | None
    gate_passes: bool = True
    registered: list[Path] = field(default_factory=list)
    challenger: str | None = None

    def alias_version(self, alias: str) -> str | None:
        return "1" if alias == "champion" and self.champion_dir is not None else None

    def download(self, version: str) -> Path:
        assert version == "1" and self.champion_dir is not None
        return self.champion_dir

    def register(self, model_dir: Path, run_id: str | None = None, mnist: Any = None) -> str:
        self.registered.append(model_dir)
        return str(1 + len(self.registered))

    def gate(self, version: str, mnist: Any = None) -> Any:
        failed = [] if self.gate_passes else ["test_accuracy"]
        return type("Report", (), {"passed": self.gate_passes, "failed_checks": failed})()

    def set_challenger(self, version: str) -> None:
        self.challenger = version


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
        _model_dir(out_dir, seed=1)
        return type("Result", (), {"out_dir": out_dir, "metrics": {"run_id": "r1", "test_accuracy": 0.1}})()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PredictionStore]:
    s = PredictionStore(f"sqlite:///{tmp_path / 'predictions.db'}")
    yield s
    s.close()


def _runner(
    tmp_path: Path,
    store: PredictionStore,
    mnist: Mnist,
    trainer: FakeTrainer,
    reg: FakeRegistry,
    **settings: Any,
) -> RetrainJobRunner:
    s = Settings(home=tmp_path / "home", retrain_production_share=0.3, **settings)
    fake: Any = reg  # duck-typed stand-in for mnistops.registry.core.Registry
    return RetrainJobRunner(s, store, fake, mnist=mnist, train_fn=trainer, epoch_size=100, min_holdout=5)


# --- data ------------------------------------------------------------------------------------------
def test_holdout_mask_is_deterministic_and_about_a_fifth() -> None:
    ids = [f"id-{i}" for i in range(5000)]
    m = holdout_mask(ids)
    assert np.array_equal(m, holdout_mask(ids))  # same rows every time
    assert np.array_equal(holdout_mask(ids[100:200]), m[100:200])  # membership is per row
    assert 0.17 < m.mean() < 0.23


def test_mix_training_set_share_and_constant_epoch() -> None:
    base_x = torch.zeros(1000, 28, 28, dtype=torch.uint8)
    prod_x = torch.full((7, 28, 28), 255, dtype=torch.uint8)
    base_y, prod_y = torch.zeros(1000, dtype=torch.int64), torch.full((7,), 3, dtype=torch.int64)
    x, y, n_prod = mix_training_set(base_x, base_y, prod_x, prod_y, share=0.3, seed=1)
    assert len(x) == len(y) == 1000 and n_prod == 300
    is_prod = x.flatten(1).amax(1) == 255
    assert int(is_prod.sum()) == 300 and bool((y[is_prod] == 3).all()) and bool((y[~is_prod] == 0).all())
    x0, _, n0 = mix_training_set(base_x, base_y, prod_x[:0], prod_y[:0], share=0.3)
    assert n0 == 0 and len(x0) == 1000  # no feedback yet: plain MNIST epoch
    _, _, n_half = mix_training_set(base_x, base_y, prod_x, prod_y, share=0.5, epoch_size=200)
    assert n_half == 100


# --- production gate with real (tiny) models -----------------------------------------------------------
def test_production_gate_identical_models_tie_and_fail(tmp_path: Path, tiny_mnist: Mnist) -> None:
    champ, chal = _model_dir(tmp_path / "a", seed=0), _model_dir(tmp_path / "b", seed=0)
    images = np.stack([_production_image(i) for i in range(40)])
    r = production_gate(chal, champ, images, np.arange(40) % 10, tiny_mnist, min_rows=10)
    assert not r.passed and (r.b, r.c) == (0, 0) and r.clean_drop == 0.0 and r.n == 40
    alone = production_gate(chal, None, images, np.arange(40) % 10, tiny_mnist)
    assert alone.passed and alone.reason == "no champion to beat"


def test_clean_accuracies_reused_from_the_registry_gate() -> None:
    checks = [
        CheckResult("test_accuracy", True, 0.990, 0.99, ""),
        CheckResult("accuracy_drop_vs_champion", True, 0.002, 0.003, ""),
    ]
    assert clean_accuracies(GateReport("5", "4", checks), "4") == (0.992, 0.990)
    assert clean_accuracies(GateReport("5", "3", checks), "4") is None  # gated against another champion
    skipped = [checks[0], CheckResult.skip("accuracy_drop_vs_champion", 0.003, "no champion")]
    assert clean_accuracies(GateReport("5", None, skipped), None) is None


# --- the job runner --------------------------------------------------------------------------------
def test_job_succeeds_and_records_everything(
    tmp_path: Path, store: PredictionStore, tiny_mnist: Mnist
) -> None:
    ids = _fill_store(store, 100)
    champ = _model_dir(tmp_path / "champ")
    reg, trainer = FakeRegistry(champ), FakeTrainer()
    runner = _runner(tmp_path, store, tiny_mnist, trainer, reg)
    job_id = runner.submit("manual", {"who": "test"})
    assert store.get_job(job_id).state == "queued"
    job = runner.run_job(job_id)
    assert job.state == "succeeded", job.error
    assert job.started_at is not None and job.finished_at is not None and job.finished_at >= job.started_at
    assert job.version == "2" and job.details["version"] == "2" and job.details["who"] == "test"
    assert job.details["gate"] == {"passed": True, "failed_checks": []}
    pg = job.details["production_gate"]
    assert pg["n"] == int(holdout_mask(ids).sum()) and pg["passed"] is False  # random weights: no improvement
    assert job.details["challenger"] is False and reg.challenger is None
    assert job.details["data"]["production_in_epoch"] == 30 and job.details["data"]["epoch_size"] == 100
    assert "started (trigger manual" in job.log and "registered version 2" in job.log
    # fine-tuned from the champion's weights with the lower learning rate, tagged with the job
    call = trainer.calls[0]
    assert call["init"] is not None and call["cfg"].max_lr == FINETUNE_MAX_LR and call["cfg"].model == TINY
    assert call["tags"]["mnistops.retrain_job"] == str(job_id)
    with pytest.raises(JobError):
        runner.run_job(job_id)  # terminal: cannot run twice


def test_held_out_rows_never_trained_on(tmp_path: Path, store: PredictionStore, tiny_mnist: Mnist) -> None:
    ids = _fill_store(store, 100)
    trainer = FakeTrainer()
    runner = _runner(tmp_path, store, tiny_mnist, trainer, FakeRegistry(None))
    assert runner.run_job(runner.submit("manual")).state == "succeeded"
    x: torch.Tensor = trainer.calls[0]["split"].train_x
    prod = x[x.flatten(1).amax(1) == 255]  # production images are the only non-blank ones
    assert len(prod) == 30  # share 0.3 of the 100-image epoch
    seen = {int(a) * 256 + int(b) for a, b in prod[:, 0, :2].tolist()}
    held = {i for i, h in enumerate(holdout_mask(ids)) if h}
    assert held and seen and not seen & held


def test_passing_gates_set_the_challenger(
    tmp_path: Path, store: PredictionStore, tiny_mnist: Mnist, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill_store(store, 50)
    ok = ProductionGateResult(True, "significantly better", 10, 0.5, 0.9, 0.001)
    monkeypatch.setattr(retrain, "production_gate", lambda *a, **k: ok)
    reg = FakeRegistry(_model_dir(tmp_path / "champ"))
    runner = _runner(tmp_path, store, tiny_mnist, FakeTrainer(), reg)
    job = runner.run_job(runner.submit("drift"))
    assert job.details["challenger"] is True and job.details["outcome"] == "challenger"
    assert reg.challenger == "2"
    assert not runner.retry_due()  # the job produced a challenger: the alert episode is handled
    reg.gate_passes = False  # a registry gate failure alone keeps it out
    job2 = runner.run_job(runner.submit("drift"))
    assert job2.details["challenger"] is False and reg.challenger == "2"
    assert "test_accuracy" in job2.details["summary"] and runner.retry_due()


def test_scratch_mode_trains_from_scratch(tmp_path: Path, store: PredictionStore, tiny_mnist: Mnist) -> None:
    trainer = FakeTrainer()
    reg = FakeRegistry(_model_dir(tmp_path / "champ"))
    runner = _runner(tmp_path, store, tiny_mnist, trainer, reg, retrain_mode="scratch")
    job = runner.run_job(runner.submit("schedule"))
    assert job.state == "succeeded" and job.details["mode"] == "scratch"
    assert trainer.calls[0]["init"] is None and trainer.calls[0]["cfg"].max_lr != FINETUNE_MAX_LR
    assert job.details["data"]["production_in_epoch"] == 0  # no feedback yet


def test_failed_job_records_error_and_log(tmp_path: Path, store: PredictionStore, tiny_mnist: Mnist) -> None:
    runner = _runner(tmp_path, store, tiny_mnist, FakeTrainer(fail=True), FakeRegistry(None))
    job = runner.run_job(runner.submit("manual"))
    assert job.state == "failed" and job.error == "RuntimeError: loss is NaN"
    assert "Traceback" in job.log and "loss is NaN" in job.log and job.finished_at is not None
    assert runner.retry_due()
    assert runner.submit("manual") != job.id  # a failed job does not block the next one


def test_job_fails_when_another_process_holds_the_lock(
    tmp_path: Path, store: PredictionStore, tiny_mnist: Mnist
) -> None:
    trainer = FakeTrainer()
    runner = _runner(tmp_path, store, tiny_mnist, trainer, FakeRegistry(None))
    runner.lock_timeout = 0.2
    job_id = runner.submit("manual")
    with locked(runner.settings, "retrain"):
        job = runner.run_job(job_id)
    assert job.state == "failed" and (job.error or "").startswith("LockTimeoutError")
    assert job.started_at is None and not trainer.calls  # never ran


def test_one_job_at_a_time(tmp_path: Path, store: PredictionStore, tiny_mnist: Mnist) -> None:
    trainer = FakeTrainer(block=True)
    runner = _runner(tmp_path, store, tiny_mnist, trainer, FakeRegistry(None))
    first = runner.start_async("drift")
    assert trainer.started.wait(30)
    assert store.get_job(first).state == "running"
    assert runner.submit("manual") == first  # same job, nothing queued
    assert runner.start_async("drift") == first
    other = _runner(tmp_path, store, tiny_mnist, trainer, FakeRegistry(None))  # e.g. the API process
    assert other.submit("api") == first
    assert len(store.list_jobs()) == 1
    trainer.release.set()
    assert runner.wait(30)
    assert store.get_job(first).state == "succeeded" and len(trainer.calls) == 1
    assert runner.submit("drift") != first


def test_abandoned_running_job_does_not_block_forever(
    tmp_path: Path, store: PredictionStore, tiny_mnist: Mnist
) -> None:
    dead = store.create_job("drift")
    store.update_job(dead.id, state="running")  # its process died: nobody holds the retrain lock
    runner = _runner(tmp_path, store, tiny_mnist, FakeTrainer(), FakeRegistry(None))
    new = runner.submit("drift")
    assert new != dead.id and store.get_job(dead.id).state == "failed"
    assert "abandoned" in (store.get_job(dead.id).error or "")
    assert runner.last_job_time() == pytest.approx(store.get_job(new).created_at)
    assert abs(time.time() - (runner.last_job_time() or 0)) < 60
