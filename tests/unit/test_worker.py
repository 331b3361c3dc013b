"""The worker loop and `mnistops retrain` in-process, with the fake trainer and registry."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers.retrain import FakeRegistry, FakeTrainer, Rig, make_rig, tiny_mnist
from mnistops.cli import app
from mnistops.settings import get_settings
from mnistops.store.jobs import JobQueue
from mnistops.store.predictions import PredictionStore
from mnistops.worker.role import Worker, retrain_now


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    store = PredictionStore(f"sqlite:///{tmp_path / 'predictions.db'}")
    # worker_nice=0: these run in the pytest process, which must keep its priority
    yield make_rig(tmp_path, store, tiny_mnist(), FakeTrainer(), FakeRegistry(None),
                   worker_nice=0, worker_poll_seconds=0.05)  # fmt: skip
    store.close()


def test_worker_runs_queued_jobs_and_counts_them(rig: Rig) -> None:
    ids = [rig.queue.submit(f"job{i}", unique=False).id for i in range(2)]
    worker = Worker(rig.settings, rig.runner)
    assert worker.run(threading.Event(), once=True) is not None  # once: one job, then return
    stop = threading.Event()
    loop = threading.Thread(target=worker.run, args=(stop,))
    loop.start()
    while rig.queue.counts_by_state()["succeeded"] < 2:
        assert loop.is_alive()
        stop.wait(0.05)
    stop.set()
    loop.join(10)
    assert not loop.is_alive()
    assert [rig.queue.get(i).state for i in ids] == ["succeeded", "succeeded"]
    assert {rig.queue.get(i).lease_owner for i in ids} == {worker.owner}
    m = worker.metrics
    assert m.jobs.labels("succeeded")._value.get() == 2 and m.jobs.labels("failed")._value.get() == 0
    assert m.busy._value.get() == 0 and m.job_seconds._sum.get() > 0
    h = worker.health()
    assert h["ok"] and h["job"] is None and h["owner"] == worker.owner
    assert worker.run(threading.Event(), once=True) is None  # nothing queued: returns at once


def test_a_failed_job_is_counted_as_failed(tmp_path: Path) -> None:
    store = PredictionStore(f"sqlite:///{tmp_path / 'predictions.db'}")
    rig = make_rig(tmp_path, store, tiny_mnist(), FakeTrainer(fail=True), FakeRegistry(None), worker_nice=0)
    rig.queue.submit("drift")
    worker = Worker(rig.settings, rig.runner)
    done = worker.run(threading.Event(), once=True)
    assert done is not None and done.state == "failed"
    assert worker.metrics.jobs.labels("failed")._value.get() == 1


def test_retrain_now_runs_the_job_here_and_restores_signal_handlers(rig: Rig) -> None:
    before = signal.getsignal(signal.SIGTERM)
    job = retrain_now(rig.settings, "cli", runner=rig.runner)
    assert job.state == "succeeded" and job.attempts == 1 and job.version == "2"
    assert signal.getsignal(signal.SIGTERM) is before


def test_retrain_now_follows_a_job_another_worker_runs(rig: Rig) -> None:
    running = rig.queue.submit("drift")
    assert rig.queue.claim("elsewhere", 30) is not None

    def finish_elsewhere() -> None:
        threading.Event().wait(0.3)
        assert rig.queue.finish(running.id, "elsewhere", "succeeded", version="9")

    threading.Thread(target=finish_elsewhere).start()
    job = retrain_now(rig.settings, "cli", runner=rig.runner)
    assert job.id == running.id and job.state == "succeeded" and job.version == "9"
    assert rig.trainer.calls == []  # not run twice


def test_cli_retrain_queue_only_prints_the_job_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNISTOPS_HOME", str(tmp_path))
    get_settings.cache_clear()
    try:
        first = CliRunner().invoke(app, ["retrain", "--queue-only", "--trigger", "ops"])
        again = CliRunner().invoke(app, ["retrain", "--queue-only"])
    finally:
        get_settings.cache_clear()
    assert first.exit_code == 0 and again.exit_code == 0, first.output
    queue = JobQueue(PredictionStore(f"sqlite:///{tmp_path / 'predictions.db'}"))
    (job,) = queue.list()
    assert first.output.strip() == again.output.strip() == str(job.id)  # one active job, not two
    assert job.state == "queued" and job.trigger == "ops"
