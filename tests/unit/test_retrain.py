"""Retraining jobs with a fake trainer and registry on a real job queue: steps, records, re-runs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.retrain import (
    TINY,
    FakeRegistry,
    FakeTrainer,
    fill_store,
    make_rig,
    model_dir,
    production_image,
    tiny_mnist,
)
from mnistops.gates.report import CheckResult, GateReport
from mnistops.store.predictions import PredictionStore
from mnistops.training.data import Mnist
from mnistops.worker import jobs as retrain
from mnistops.worker.seams import JOB_KEY_TAG, JOB_TAG, job_key
from mnistops.worker.steps import (
    FINETUNE_MAX_LR,
    ProductionGateConfig,
    ProductionGateResult,
    clean_accuracies,
    holdout_mask,
    mix_training_set,
    production_gate,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PredictionStore]:
    s = PredictionStore(f"sqlite:///{tmp_path / 'predictions.db'}")
    yield s
    s.close()


@pytest.fixture(name="tiny_mnist")
def tiny_mnist_fixture() -> Mnist:
    """5,200 blank training images (200 after the 5k validation split) and 50 test images."""
    return tiny_mnist()


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
    champ, chal = model_dir(tmp_path / "a", seed=0), model_dir(tmp_path / "b", seed=0)
    images = np.stack([production_image(i) for i in range(40)])
    cfg = ProductionGateConfig(min_rows=10)
    r = production_gate(chal, champ, images, np.arange(40) % 10, tiny_mnist, cfg)
    assert not r.passed and (r.b, r.c) == (0, 0) and r.clean_drop == 0.0 and r.n == 40
    alone = production_gate(chal, None, images, np.arange(40) % 10, tiny_mnist, cfg)
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


# --- one job, start to finish ----------------------------------------------------------------------
def test_job_succeeds_and_records_everything(
    tmp_path: Path, store: PredictionStore, tiny_mnist: Mnist
) -> None:
    ids = fill_store(store, 100)
    rig = make_rig(tmp_path, store, tiny_mnist, FakeTrainer(), FakeRegistry(model_dir(tmp_path / "champ")))
    job = rig.run()
    assert job is not None and job.state == "succeeded", job and job.error
    assert job.attempts == 1 and job.finished_at is not None and job.finished_at >= (job.started_at or 0)
    assert job.version == "2" and job.details["version"] == "2"
    assert job.details["gate"]["passed"] is True and job.details["gate"]["failed_checks"] == []
    pg = job.details["production_gate"]
    assert pg["n"] == int(holdout_mask(ids).sum()) and pg["passed"] is False  # random weights: no improvement
    assert job.details["challenger"] is False and rig.reg.challengers == []
    assert job.details["data"]["production_in_epoch"] == 30 and job.details["data"]["epoch_size"] == 100
    assert "started (trigger manual" in job.log and "registered version 2" in job.log
    # fine-tuned from the champion's weights with the lower learning rate; run and version tagged
    call = rig.trainer.calls[0]
    assert call["init"] is not None and call["cfg"].max_lr == FINETUNE_MAX_LR and call["cfg"].model == TINY
    assert call["tags"][JOB_TAG] == str(job.id) and rig.reg.tags["2"][JOB_TAG] == str(job.id)
    assert rig.reg.tags["2"][JOB_KEY_TAG] == job_key(job)


def test_held_out_rows_never_trained_on(tmp_path: Path, store: PredictionStore, tiny_mnist: Mnist) -> None:
    ids = fill_store(store, 100)
    rig = make_rig(tmp_path, store, tiny_mnist, FakeTrainer(), FakeRegistry(None))
    assert rig.run().state == "succeeded"
    x: torch.Tensor = rig.trainer.calls[0]["split"].train_x
    prod = x[x.flatten(1).amax(1) == 255]  # production images are the only non-blank ones
    assert len(prod) == 30  # share 0.3 of the 100-image epoch
    seen = {int(a) * 256 + int(b) for a, b in prod[:, 0, :2].tolist()}
    held = {i for i, h in enumerate(holdout_mask(ids)) if h}
    assert held and seen and not seen & held


def test_passing_gates_set_the_challenger(
    tmp_path: Path, store: PredictionStore, tiny_mnist: Mnist, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill_store(store, 50)
    ok = ProductionGateResult(True, "significantly better", 10, 0.5, 0.9, 0.001)
    monkeypatch.setattr(retrain, "production_gate", lambda *a, **k: ok)
    rig = make_rig(tmp_path, store, tiny_mnist, FakeTrainer(), FakeRegistry(model_dir(tmp_path / "champ")))
    job = rig.run("drift")
    assert job.details["challenger"] is True and job.details["outcome"] == "challenger"
    assert rig.reg.challengers == ["2"]
    rig.reg.gate_passes = False  # a registry gate failure alone keeps it out
    job2 = rig.run("drift")
    assert job2.details["challenger"] is False and rig.reg.challengers == ["2"]
    assert "test_accuracy" in job2.details["summary"]


def test_scratch_mode_trains_from_scratch(tmp_path: Path, store: PredictionStore, tiny_mnist: Mnist) -> None:
    reg = FakeRegistry(model_dir(tmp_path / "champ"))
    rig = make_rig(tmp_path, store, tiny_mnist, FakeTrainer(), reg, retrain_mode="scratch")
    job = rig.run("schedule")
    assert job.state == "succeeded" and job.details["mode"] == "scratch"
    assert rig.trainer.calls[0]["init"] is None and rig.trainer.calls[0]["cfg"].max_lr != FINETUNE_MAX_LR
    assert job.details["data"]["production_in_epoch"] == 0  # no feedback yet


def test_failed_job_records_error_and_log(tmp_path: Path, store: PredictionStore, tiny_mnist: Mnist) -> None:
    rig = make_rig(tmp_path, store, tiny_mnist, FakeTrainer(fail=True), FakeRegistry(None))
    job = rig.run()
    assert job.state == "failed" and job.error == "RuntimeError: loss is NaN"
    assert "Traceback" in job.log and "loss is NaN" in job.log and job.finished_at is not None
    assert rig.queue.submit("manual").id != job.id  # a failed job does not block the next one


# --- re-runs -----------------------------------------------------------------------------------------
def test_rerun_finds_the_jobs_version_instead_of_training_again(
    tmp_path: Path, store: PredictionStore, tiny_mnist: Mnist, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill_store(store, 50)
    ok = ProductionGateResult(True, "significantly better", 10, 0.5, 0.9, 0.001)
    monkeypatch.setattr(retrain, "production_gate", lambda *a, **k: ok)
    rig = make_rig(tmp_path, store, tiny_mnist, FakeTrainer(), FakeRegistry(model_dir(tmp_path / "champ")))
    job = rig.queue.submit("drift")
    # an earlier attempt registered version 2 for this job, then its worker died (lease expired)
    rig.reg.register(model_dir(tmp_path / "other-store"), tags={JOB_TAG: str(job.id), JOB_KEY_TAG: "1-0"})
    rig.reg.register(model_dir(tmp_path / "earlier"), tags={JOB_TAG: str(job.id), JOB_KEY_TAG: job_key(job)})
    assert rig.queue.claim("dead", 0.05) is not None
    threading.Event().wait(0.2)
    done = rig.run("drift", owner="w2")
    # version 2 has the same job id from another store sharing the registry: not this job's
    assert done.state == "succeeded" and done.attempts == 2 and done.version == "3"
    assert rig.trainer.calls == [] and len(rig.reg.registered) == 2  # not trained, not registered again
    assert rig.reg.challengers == ["3"] and "registered for this job by an earlier attempt" in done.log


def test_rerun_reuses_recorded_gate_verdicts(
    tmp_path: Path, store: PredictionStore, tiny_mnist: Mnist
) -> None:
    rig = make_rig(tmp_path, store, tiny_mnist, FakeTrainer(), FakeRegistry(model_dir(tmp_path / "champ")))
    job = rig.queue.submit("drift")
    rig.reg.register(model_dir(tmp_path / "earlier"), tags={JOB_KEY_TAG: job_key(job)})
    gate = {"version": "2", "passed": True, "failed_checks": [], "champion": "1", "clean_accs": None}
    pg = {"version": "2", "champion": "1", "passed": True, "reason": "significantly better (recorded)"}
    rig.queue.update(job.id, details={"gate": gate, "production_gate": pg})  # recorded, then the worker died
    done = rig.run("drift")
    assert done.state == "succeeded" and done.details["challenger"] is True
    assert rig.reg.gate_calls == 0 and rig.reg.challengers == ["2"]  # verdicts reused, not recomputed
    assert "(recorded)" in done.details["summary"]


# --- losing the lease, stopping ------------------------------------------------------------------------
def test_lease_lost_while_training_abandons_without_writing(
    tmp_path: Path, store: PredictionStore, tiny_mnist: Mnist
) -> None:
    trainer = FakeTrainer(block=True)
    # a long heartbeat interval: the loss is noticed at the next write (the registration)
    rig = make_rig(tmp_path, store, tiny_mnist, trainer, FakeRegistry(None),
               job_lease_seconds=0.3, job_heartbeat_seconds=30)  # fmt: skip

    def steal() -> None:
        assert trainer.started.wait(30)
        threading.Event().wait(0.5)  # the lease expires
        assert rig.queue.claim("thief", 30) is not None
        trainer.release.set()

    thief = threading.Thread(target=steal)
    thief.start()
    assert rig.run() is None
    thief.join()
    job = rig.queue.list()[0]
    assert job.state == "running" and job.lease_owner == "thief" and job.attempts == 2
    assert rig.reg.registered == [] and "registered version" not in job.log


def test_lease_lost_interrupts_training(tmp_path: Path, store: PredictionStore, tiny_mnist: Mnist) -> None:
    trainer = FakeTrainer(block=True)  # would block for 30 s
    rig = make_rig(tmp_path, store, tiny_mnist, trainer, FakeRegistry(None), job_heartbeat_seconds=0.05)

    def steal() -> None:
        assert trainer.started.wait(30)
        with store._tx(write=True) as conn:  # another worker took the job over
            from sqlalchemy import text

            conn.execute(text("UPDATE retrain_jobs SET lease_owner = 'thief'"))

    threading.Thread(target=steal).start()
    assert rig.run() is None  # interrupted mid-"training", well before the trainer's 30 s
    assert not trainer.release.is_set() and rig.reg.registered == []
    assert rig.queue.list()[0].lease_owner == "thief"


def test_stop_hands_a_running_job_back_after_the_grace(
    tmp_path: Path, store: PredictionStore, tiny_mnist: Mnist
) -> None:
    trainer = FakeTrainer(block=True)
    rig = make_rig(tmp_path, store, tiny_mnist, trainer, FakeRegistry(None), job_heartbeat_seconds=0.05)
    stop = threading.Event()
    threading.Thread(target=lambda: trainer.started.wait(30) and stop.set()).start()
    assert rig.run(stop=stop, grace=0.2) is None
    job = rig.queue.list()[0]
    assert job.state == "queued" and job.attempts == 0 and job.lease_owner is None
    assert "grace period" in job.log and rig.reg.registered == []


def test_stop_lets_a_job_finish_within_the_grace(
    tmp_path: Path, store: PredictionStore, tiny_mnist: Mnist
) -> None:
    trainer = FakeTrainer(block=True)
    rig = make_rig(tmp_path, store, tiny_mnist, trainer, FakeRegistry(None), job_heartbeat_seconds=0.05)
    stop = threading.Event()

    def stop_then_finish() -> None:
        assert trainer.started.wait(30)
        stop.set()
        threading.Event().wait(0.3)
        trainer.release.set()

    threading.Thread(target=stop_then_finish).start()
    job = rig.run(stop=stop, grace=30)
    assert job is not None and job.state == "succeeded" and job.version == "2"
