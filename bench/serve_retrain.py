"""The bench-serve row "retrain running in the worker" (issue 12): serving p99 while a job trains.

Against the already warm ``mnistops serve`` (one worker): c=8 idle, then a retrain job queued in
its prediction log and a ``mnistops worker run --once`` process started; once the job is running
and training, c=8 again for the same duration. Whether the job ran during the whole measurement is
recorded (a job that finished early would make the row look better than it is).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnistops.settings import Settings
from mnistops.store.predictions import PredictionStore
from serve_load import LoadResult, stop
from serve_servers import service_env

Drive = Callable[[str, int, float], LoadResult]  # (row name, concurrency, seconds) -> result
JOB_FINISH_WAIT_S = 120.0


def _wait_training(store: PredictionStore, job_id: int, worker: subprocess.Popen[bytes]) -> str | None:
    """None once the job trains; else why it never got there."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        started = job.started_at or job.heartbeat_at or time.time()
        if job.state == "running" and ("training" in job.log or time.time() - started > 5):
            return None
        if job.state in ("succeeded", "failed"):
            return f"job {job_id} {job.state} before the measurement ({job.error or 'no error'})"
        if worker.poll() is not None:
            return f"worker exited with {worker.returncode} before the job trained"
        time.sleep(0.2)
    return "the job did not start training within 300 s"


def retrain_rows(
    s: Settings, db_url: str, name: str, seconds: float, drive: Drive, tmp: Path
) -> tuple[list[LoadResult], dict[str, Any]]:
    """Idle and during-a-job c=8 rows of the running server whose log is ``db_url``, and what happened."""
    idle = drive(f"{name}, idle", 8, seconds)
    store = PredictionStore(db_url)
    job = store.create_job("bench-serve")
    env = service_env(s, MNISTOPS_DATABASE_URL=db_url, MNISTOPS_WORKER_PORT="0")
    log = tmp / "worker.log"
    with log.open("wb") as fh:
        worker = subprocess.Popen(
            [sys.executable, "-m", "mnistops", "worker", "run", "--once"], env=env, stdout=fh, stderr=fh
        )
    info: dict[str, Any] = {"job": job.id}
    try:
        why = _wait_training(store, job.id, worker)
        if why is not None:
            info.update(measured=False, reason=why, worker_log=log.read_text(errors="replace")[-2000:])
            return [idle], info
        t0 = time.time()
        during = drive(f"{name}, retrain in the worker", 8, seconds)
        t1 = time.time()
        after = store.get_job(job.id)
        covered = after.state == "running" or (after.finished_at or 0) >= t1
        try:  # the row is measured; let a fast job finish (its duration is worth reporting)
            worker.wait(JOB_FINISH_WAIT_S)
        except subprocess.TimeoutExpired:
            stop(worker)
        final = store.get_job(job.id)
        info.update(
            measured=True,
            job_running_whole_measurement=covered,
            measured_from=t0,
            measured_to=t1,
            job_state=final.state,
            job_seconds=None if final.finished_at is None else final.finished_at - (final.started_at or t0),
            worker_exit=worker.returncode,
        )
        return [idle, during], info
    finally:
        if worker.poll() is None:
            stop(worker)
        store.close()
