"""Asynchronous, loss-free prediction logging.

``submit`` only appends to an in-memory queue (the request path never waits for the database).
One background thread drains the queue in batches into ``store.insert_many``. When the store
fails, batches go to an fsync'd spill file (:mod:`.spill`) and the thread retries with
exponential backoff; once the store answers again it replays the spill file (idempotently)
before writing new batches, so rows keep their submission order.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

from mnistops.errors import NotFoundError, StoreError
from mnistops.service.spill import Item, SpillFile
from mnistops.store.records import PredictionRecord, ShadowRecord

log = logging.getLogger(__name__)


class PredictionSink(Protocol):
    """What the logger needs from a store (:class:`PredictionStore` satisfies it)."""

    def insert_many(
        self, records: Sequence[PredictionRecord], shadows: Sequence[ShadowRecord] = ()
    ) -> int: ...

    def add_feedback(self, prediction_id: str, true_label: int) -> Literal["recorded", "unchanged"]: ...


class PredictionLogger:
    """Batches predictions into the store; never loses a submitted record.

    Args:
        store: the prediction store.
        spill_path: spill file used while the store is down.
        batch_size: max rows per insert.
        flush_seconds: max wait for a batch to fill before writing it.
        min_backoff: first retry delay after a store failure (doubles up to ``max_backoff``).
        max_backoff: longest retry delay.
    """

    def __init__(
        self,
        store: PredictionSink,
        spill_path: Path | str,
        batch_size: int = 256,
        flush_seconds: float = 0.05,
        *,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        self._store = store
        self._spill = SpillFile(Path(spill_path))
        self._batch_size = max(1, batch_size)
        self._flush_seconds = flush_seconds
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._cond = threading.Condition()
        self._queue: deque[Item] = deque()
        self._pending: set[str] = set()  # submitted prediction ids not yet committed to the store
        self._submitted = 0  # items ever submitted
        self._done = 0  # items committed or spilled
        self._flush_waiters = 0  # >0: write immediately instead of waiting for a full batch
        self._closing = False
        self._write_errors = 0
        self._backlog = self._spill.count()  # a previous process may have left rows to replay
        self._healthy = True
        self._backoff = min_backoff
        self._retry_at = 0.0  # monotonic time of the next store attempt while unhealthy
        self._thread = threading.Thread(target=self._run, name="prediction-logger", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # interpreter exit without lifespan shutdown still flushes

    # --- public API ---------------------------------------------------------------------------
    def submit(self, record: PredictionRecord) -> None:
        """Queue a prediction for the store; returns immediately.

        Raises:
            StoreError: the logger was closed.
        """
        self._put(record, record.id)

    def submit_shadow(self, record: ShadowRecord) -> None:
        """Queue a challenger's shadow answer (written in the same batches as predictions)."""
        self._put(record, None)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is committed or spilled.

        Returns:
            False if ``timeout`` (seconds) passed first.
        """
        with self._cond:
            target = self._submitted
            self._flush_waiters += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self._done >= target, timeout)
            finally:
                self._flush_waiters -= 1

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush, try a last spill replay, stop the thread (idempotent; lifespan/SIGTERM hook)."""
        with self._cond:
            if self._closing and not self._thread.is_alive():
                return
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("prediction logger did not stop within %ss (%d queued)", timeout, self.queue_depth)
        atexit.unregister(self.close)

    def add_feedback(
        self, prediction_id: str, true_label: int, timeout: float = 5.0
    ) -> Literal["recorded", "unchanged"]:
        """``store.add_feedback`` that first flushes when the prediction is still queued.

        Raises:
            NotFoundError: unknown id (also after flushing).
            StoreError: the store is down.
        """
        try:
            return self._store.add_feedback(prediction_id, true_label)
        except NotFoundError:
            if not self.is_pending(prediction_id):
                raise
        self.flush(timeout)
        return self._store.add_feedback(prediction_id, true_label)

    def is_pending(self, prediction_id: str) -> bool:
        """True while a submitted prediction is queued or spilled (not yet in the store)."""
        with self._cond:
            return prediction_id in self._pending

    # --- metrics ------------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        """Records waiting in memory."""
        with self._cond:
            return len(self._queue)

    @property
    def write_errors(self) -> int:
        """Failed store writes since start (a counter)."""
        return self._write_errors

    @property
    def spill_backlog(self) -> int:
        """Rows in the spill file waiting for replay."""
        return self._backlog

    @property
    def healthy(self) -> bool:
        """The last store write succeeded and the writer thread is alive."""
        return self._healthy and self._thread.is_alive()

    # --- worker -------------------------------------------------------------------------------
    def _put(self, item: Item, pid: str | None) -> None:
        with self._cond:
            if self._closing:
                raise StoreError("prediction logger is closed")
            self._queue.append(item)
            self._submitted += 1
            if pid is not None:
                self._pending.add(pid)
            if len(self._queue) == 1 or len(self._queue) >= self._batch_size:
                self._cond.notify_all()

    def _replay_due(self) -> bool:
        return self._backlog > 0 and time.monotonic() >= self._retry_at

    def _next_batch(self) -> list[Item] | None:
        """Block until a batch is ready; [] = only a replay is due; None = stop."""
        with self._cond:
            while not self._queue and not self._closing and not self._replay_due():
                wait = max(0.0, self._retry_at - time.monotonic()) if self._backlog else None
                self._cond.wait(wait)
            if not self._queue:
                return None if self._closing else []
            deadline = time.monotonic() + self._flush_seconds
            while len(self._queue) < self._batch_size and not self._closing and not self._flush_waiters:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            n = min(self._batch_size, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                break
            try:
                done = self._write(batch)
            except Exception:  # never let the thread die: the queue would silently grow
                log.exception("prediction logger: unexpected error")
                done = False
            with self._cond:
                if done:
                    self._done += len(batch)
                else:  # neither stored nor spilled: keep in memory, retry after a pause
                    self._queue.extendleft(reversed(batch))
                self._cond.notify_all()
            if not done:
                with self._cond:
                    self._cond.wait(self._backoff)
        if self._backlog:  # shutting down: one last replay if the store came back
            self._try_replay()

    def _write(self, batch: list[Item]) -> bool:
        """Store the batch (after any spill backlog) or spill it. False if both failed."""
        if self._backlog and (self._healthy or self._replay_due()):
            self._try_replay()
        if not batch:
            return True
        if self._backlog == 0 and (self._healthy or time.monotonic() >= self._retry_at):
            preds = [i for i in batch if isinstance(i, PredictionRecord)]
            shadows = [i for i in batch if isinstance(i, ShadowRecord)]
            try:
                self._store.insert_many(preds, shadows)
            except Exception as e:
                self._failed(e)
            else:
                self._succeeded([p.id for p in preds])
                return True
        try:  # store down (or backlog not yet replayed, keeping order): spill
            self._backlog += self._spill.append(batch)
            return True
        except OSError as e:
            self._write_errors += 1
            log.error("prediction logger: spill to %s failed too: %s", self._spill.path, e)
            return False

    def _try_replay(self) -> None:
        try:
            ids, bad = self._spill.replay(lambda p, s: self._store.insert_many(p, s))
        except Exception as e:
            self._failed(e)
            return
        if bad:
            log.error("prediction logger: %d corrupt spill lines skipped", bad)
        log.info("prediction logger: replayed %d spilled predictions", len(ids))
        self._backlog = 0
        self._succeeded(ids)

    def _failed(self, e: Exception) -> None:
        self._write_errors += 1
        if self._healthy:
            log.warning("prediction store unavailable, spilling to %s: %s", self._spill.path, e)
        else:
            self._backoff = min(self._backoff * 2, self._max_backoff)
        self._healthy = False
        self._retry_at = time.monotonic() + self._backoff

    def _succeeded(self, ids: list[str]) -> None:
        if not self._healthy:
            log.info("prediction store is back")
        self._healthy = True
        self._backoff = self._min_backoff
        with self._cond:
            self._pending.difference_update(ids)
