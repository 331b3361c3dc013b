"""The retrain job queue on SQLite and PostgreSQL: submit, claim, lease, heartbeat, finish, release."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnistops.errors import NotFoundError
from mnistops.store.jobs import JobQueue
from mnistops.store.predictions import PredictionStore

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def queue(store: PredictionStore) -> JobQueue:
    return JobQueue(store)


def test_submit_returns_the_active_job(queue: JobQueue) -> None:
    first = queue.submit("drift", {"window": 3})
    assert first.state == "queued" and first.attempts == 0 and first.details == {"window": 3}
    assert queue.submit("manual").id == first.id  # one retrain at a time
    assert queue.active() is not None and queue.latest() == queue.get(first.id)
    claimed = queue.claim("w1", 30)
    assert claimed is not None and claimed.id == first.id
    assert queue.submit("manual").id == first.id  # running counts as active too
    assert queue.finish(first.id, "w1", "succeeded", version="4")
    second = queue.submit("manual")
    assert second.id != first.id and queue.active() == second
    assert queue.counts_by_state() == {"queued": 1, "running": 0, "succeeded": 1, "failed": 0}
    assert [j.id for j in queue.list()] == [second.id, first.id]
    assert [j.id for j in queue.list(state="succeeded")] == [first.id]


def test_claim_sets_the_lease_and_finish_is_guarded(queue: JobQueue) -> None:
    assert queue.claim("w1", 30) is None  # nothing queued
    job = queue.submit("drift")
    t0 = time.time()
    claimed = queue.claim("w1", 30)
    assert claimed is not None and claimed.state == "running" and claimed.lease_owner == "w1"
    assert claimed.attempts == 1 and claimed.started_at is not None and claimed.heartbeat_at is not None
    assert claimed.lease_until is not None and abs(claimed.lease_until - (t0 + 30)) < 5
    assert "claimed by w1, attempt 1" in claimed.log
    assert queue.claim("w2", 30) is None  # leased: nobody else gets it
    assert not queue.heartbeat(job.id, "w2", 30) and queue.heartbeat(job.id, "w1", 60)
    assert (queue.get(job.id).lease_until or 0) > (claimed.lease_until or 0)
    assert not queue.update(job.id, owner="w2", append_log="intruder\n")
    assert queue.update(job.id, owner="w1", append_log="epoch 1\n", details={"epochs": 1})
    assert queue.update(job.id, details={"note": "x"})  # unguarded (e.g. an operator's note)
    assert not queue.finish(job.id, "w2", "failed", error="not mine")
    assert queue.finish(job.id, "w1", "succeeded", version="7", details={"challenger": True})
    done = queue.get(job.id)
    assert done.state == "succeeded" and done.version == "7" and done.error is None
    assert done.details == {"epochs": 1, "note": "x", "challenger": True}
    assert "intruder" not in done.log and "epoch 1" in done.log and done.finished_at is not None
    assert not queue.heartbeat(job.id, "w1", 30)  # finished: the lease is gone
    assert not queue.finish(job.id, "w1", "failed")  # terminal
    with pytest.raises(ValueError):
        queue.finish(job.id, "w1", "running")
    with pytest.raises(NotFoundError):
        queue.get(999)
    with pytest.raises(NotFoundError):
        queue.update(999, append_log="x")


def test_expired_lease_is_reclaimed_and_the_old_owner_cannot_write(queue: JobQueue) -> None:
    job = queue.submit("drift")
    assert queue.claim("dead", 0.2) is not None
    time.sleep(0.4)
    again = queue.claim("w2", 30)
    assert again is not None and again.id == job.id and again.attempts == 2 and again.lease_owner == "w2"
    assert "lease of dead expired" in again.log
    assert not queue.heartbeat(job.id, "dead", 30)
    assert not queue.finish(job.id, "dead", "succeeded")
    assert queue.finish(job.id, "w2", "succeeded")


def test_job_failed_for_good_after_max_attempts(queue: JobQueue) -> None:
    job = queue.submit("drift")
    for attempt in (1, 2):
        claimed = queue.claim(f"w{attempt}", 0.1, max_attempts=2)
        assert claimed is not None and claimed.attempts == attempt
        time.sleep(0.25)
    assert queue.claim("w3", 30, max_attempts=2) is None
    failed = queue.get(job.id)
    assert failed.state == "failed" and failed.finished_at is not None
    assert "after 2 of 2 attempts" in (failed.error or "") and "w2 expired" in (failed.error or "")
    assert queue.submit("drift").id != job.id  # a failed job does not block the next one


def test_release_requeues_without_counting_the_attempt(queue: JobQueue) -> None:
    job = queue.submit("drift")
    assert queue.claim("w1", 30) is not None
    assert not queue.release(job.id, "w2")
    assert queue.release(job.id, "w1", "SIGTERM")
    back = queue.get(job.id)
    assert back.state == "queued" and back.lease_owner is None and back.attempts == 0
    assert "released by w1: SIGTERM" in back.log
    assert not queue.heartbeat(job.id, "w1", 30)
    again = queue.claim("w2", 30, job_id=job.id)
    assert again is not None and again.attempts == 1


def test_claim_a_given_job(queue: JobQueue) -> None:
    a, b = queue.submit("a", unique=False), queue.submit("b", unique=False)
    got = queue.claim("w1", 30, job_id=b.id)
    assert got is not None and got.id == b.id and queue.get(a.id).state == "queued"
    assert queue.claim("w2", 30, job_id=b.id) is None  # held by w1


_CLAIMER = """
import json, os, sys, time
from mnistops.store.jobs import JobQueue
from mnistops.store.predictions import PredictionStore
url, go, me = sys.argv[1], sys.argv[2], sys.argv[3]
q = JobQueue(PredictionStore(url))
q.get(1)  # connect and migrate before the start signal
while not os.path.exists(go):
    time.sleep(0.005)
got = []
while (job := q.claim(me, 30)) is not None:
    got.append(job.id)
    assert q.finish(job.id, me, "succeeded")
print(json.dumps(got))
"""


def test_two_processes_claim_each_job_exactly_once(store_url: str, tmp_path: Path) -> None:
    queue = JobQueue(PredictionStore(store_url))
    ids = [queue.submit(f"job{i}", unique=False).id for i in range(40)]
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, store_url, str(go), f"p{k}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(2)
    ]
    time.sleep(1.0)  # both have imported and connected (they spin on the start file)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    claimed = [json.loads(out) for out, _ in outs]
    assert sorted(claimed[0] + claimed[1]) == ids  # every job once: no duplicate, none missed
    jobs = queue.list(limit=100)
    assert all(j.state == "succeeded" and j.attempts == 1 for j in jobs)
    owners = {j.lease_owner for j in jobs}
    assert owners <= {"p0", "p1"}
