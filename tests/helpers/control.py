"""Synthetic facts for the controller: monitor windows, shadow traffic, job outcomes, an in-memory
registry, and ``python -m mnistops controller run`` as a subprocess.

The controller reads only durable facts, so its tests write those facts straight into the store
instead of running serve, monitor and worker: a window is one ``monitor_windows`` row, shadow
traffic is labelled predictions plus ``shadow_predictions`` rows, a finished retrain is a job row
moved to ``succeeded`` with the challenger alias set, as the worker would.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import update

from helpers.processes import stop_process
from mnistops.errors import PromotionRefusedError, RollbackError, StoreError
from mnistops.settings import Settings
from mnistops.store import audit
from mnistops.store.jobs import JobQueue
from mnistops.store.predictions import MonitorWindow, PredictionRecord, PredictionStore, ShadowRecord
from mnistops.store.records import RetrainJob
from mnistops.store.schema import retrain_jobs

_IMAGE = np.zeros(784, np.uint8)


def _onehot(label: int) -> np.ndarray:
    p = np.full(10, 0.001, np.float32)
    p[label] = 0.991
    return p


# --- facts ---------------------------------------------------------------------------------------
def add_window(
    store: PredictionStore,
    version: str,
    *,
    estimated: float | None = 0.98,
    realized: float | None = None,
    realized_n: int | None = None,
    drifted: bool = False,
    n: int = 100,
) -> MonitorWindow:
    """Append the next monitor window of ``version`` (over the newest ``n`` logged predictions)."""
    last = store.last_window()
    end_seq = store.max_seq()
    details: dict[str, Any] = {"start_seq": max(0, end_seq - n + 1)}
    if realized_n is not None:
        details["realized_n"] = realized_n
    return store.insert_window(
        MonitorWindow(
            window=0 if last is None else last.window + 1,
            end_seq=end_seq,
            end_ts=time.time(),
            n=n,
            model_version=version,
            results={"combined": {"details": details}},
            drifted=drifted,
            estimated_accuracy=estimated,
            realized_accuracy=realized,
        )
    )


def add_traffic(
    store: PredictionStore,
    champion: str,
    n: int,
    *,
    champion_acc: float,
    challenger: str | None = None,
    challenger_acc: float = 1.0,
    labelled: bool = True,
) -> None:
    """``n`` served predictions of ``champion`` (with true labels), shadowed by ``challenger`` if given.

    The first ``round(acc * n)`` rows of each model are answered right, the rest wrong.
    """
    records, shadows = [], []
    for i in range(n):
        y = i % 10
        champ = y if i < round(champion_acc * n) else (y + 1) % 10
        rec = PredictionRecord.create(_IMAGE, _onehot(champ), champion, 1.0, client="controller-test")
        if labelled:
            rec.true_label, rec.feedback_ts = y, time.time()
        records.append(rec)
        if challenger is not None:
            chal = y if i < round(challenger_acc * n) else (y + 2) % 10
            shadows.append(ShadowRecord.create(rec.id, challenger, _onehot(chal)))
    store.insert_many(records, shadows)


def set_job(store: PredictionStore, job_id: int, **values: Any) -> RetrainJob:
    """Write job columns as a worker would (straight SQL: whichever queue version is installed)."""
    with store._tx(write=True) as conn:
        conn.execute(update(retrain_jobs).where(retrain_jobs.c.id == job_id).values(**values))
    return JobQueue(store).get(job_id)


def finish_job(store: PredictionStore, job_id: int, version: str | None, challenger: bool) -> RetrainJob:
    """Run a queued job to its end the way the worker does (version registered, outcome in details)."""
    now = time.time()
    verdict = "challenger" if challenger else "rejected"
    summary = f"version {version} {verdict}: registry gate passed; production gate: test"
    details = {"summary": summary, "version": version, "challenger": challenger}
    return set_job(
        store, job_id, state="succeeded", started_at=now, finished_at=now, version=version, details=details
    )


# --- an in-memory registry -----------------------------------------------------------------------
class FakeRegistry:
    """Aliases in memory, the audit trail in the real ``promotion_events`` table of ``settings.database``,
    with the semantics of ``registry.promote`` / ``rollback``.

    ``refuse`` holds versions whose promotion is refused without ``force`` (a stale gate);
    ``calls`` counts the effects, which is what "never twice" tests look at; ``die_before_audit``
    makes the next effect move the aliases and raise before writing its row (a kill half-way);
    ``down`` makes it answer like an unreachable registry.
    """

    def __init__(self, settings: Settings, champion: str = "1") -> None:
        self.settings = settings
        self.alias: dict[str, str] = {"champion": champion}
        self.refuse: set[str] = set()
        self.calls: Counter[str] = Counter()
        self.die_before_audit = False
        self.down = False  # answer like an unreachable MLflow: no aliases

    def aliases(self) -> dict[str, str]:
        """Current aliases ({} while ``down``, as ``Registry.aliases`` answers then)."""
        return {} if self.down else dict(self.alias)

    def set_challenger(self, version: str) -> None:
        """Point ``challenger`` at ``version``."""
        self.alias["challenger"] = version

    def _audit(
        self, action: str, frm: str | None, to: str, actor: str | None, reason: str, forced: bool
    ) -> audit.AuditEvent:
        if self.die_before_audit:
            self.die_before_audit = False
            raise StoreError(f"killed after moving the aliases, before auditing {action} {frm} -> {to}")
        ev = audit.AuditEvent(audit.now(), action, frm, to, reason, actor or "test", forced)
        return audit.record(self.settings.database, self.settings.model_name, ev)

    def promote(
        self, version: str, actor: str | None = None, reason: str = "", force: bool = False
    ) -> audit.AuditEvent:
        """Make ``version`` champion (refused if already champion, or in ``refuse`` without force)."""
        self.calls["promote"] += 1
        cur = self.alias.get("champion")
        if version == cur:
            raise PromotionRefusedError(f"version {version} is already champion")
        if version in self.refuse and not force:
            raise PromotionRefusedError(f"version {version} was gated against another champion")
        if cur is not None:
            self.alias["previous-champion"] = cur
        self.alias["champion"] = version
        if self.alias.get("challenger") == version:
            del self.alias["challenger"]
        return self._audit("promote", cur, version, actor, reason, force)

    def rollback(self, actor: str | None = None, reason: str = "", auto: bool = False) -> tuple[str, str]:
        """Restore ``previous-champion``."""
        self.calls["rollback"] += 1
        cur, prev = self.alias["champion"], self.alias.get("previous-champion")
        if prev is None:
            raise RollbackError(f"no previous champion before version {cur}")
        self.alias["champion"] = prev
        del self.alias["previous-champion"]
        self._audit("auto-rollback" if auto else "rollback", cur, prev, actor, reason, False)
        return cur, prev

    def history(self, limit: int | None = None) -> list[audit.AuditEvent]:
        """Audit events, oldest first (the last ``limit``)."""
        return audit.history(self.settings.database, self.settings.model_name, limit)


# --- the controller as a process -----------------------------------------------------------------
def wait_for(
    cond: Callable[[], Any], timeout: float, what: str | Callable[[], str], poll: float = 0.1
) -> Any:
    """Poll ``cond`` until it returns something truthy (returned); AssertionError after ``timeout``.

    ``what`` names the wait in the error (a callable is evaluated then, e.g. to attach logs).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what() if callable(what) else what}")


class ControllerProcess:
    """``python -m mnistops controller run`` with a private log (``<home>/controller-<n>.log``)."""

    def __init__(self, env: dict[str, str], home: Path, name: str = "controller") -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.log_path = home / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.port = int(env["MNISTOPS_CONTROLLER_PORT"])
        cmd = [sys.executable, "-m", "mnistops", "controller", "run"]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=home)

    def metrics(self) -> dict[str, float]:
        """The ``/metrics`` samples without labels ({} while the endpoint is not up yet)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def healthz(self) -> dict[str, Any]:
        """The ``/healthz`` body ({} while not up)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return dict(json.loads(r.read()))
        except OSError:
            return {}

    def kill(self) -> None:
        """SIGKILL, no chance to clean up."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (SIGKILL only if it hangs); the exit code."""
        return stop_process(self.proc, self._log, signal.SIGTERM, timeout)

    def log(self) -> str:
        """The tail of its output."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]
