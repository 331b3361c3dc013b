"""The store writer: commits journaled rows to the prediction store, in journal order.

It receives every journal write (``on_write``, under the journal lock, so in LSN order) and keeps
it in memory until a batch is committed (``insert_many``: idempotent, feedback applied in the same
transaction); then the journal may delete the segments that batch completed. Segments left by an
earlier process are replayed from disk first.

When the store fails the writer switches to *disk mode*: it drops its in-memory copy (every row
is in the journal) and stops queueing new writes. Once the store answers again it closes the
active segment (so each later write is queued again) and replays the closed segments from disk,
skipping what it knows was committed, before it commits anything newer. Rows keep their order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from mnistops.runtime import BackgroundService
from mnistops.service.journal import Journal, Segment
from mnistops.service.journal_format import JournalItem
from mnistops.store.records import FeedbackRecord, PredictionRecord, ShadowRecord

log = logging.getLogger(__name__)


class PredictionSink(Protocol):
    """What the prediction log needs from a store (:class:`PredictionStore` satisfies it)."""

    def insert_many(
        self,
        records: Sequence[PredictionRecord],
        shadows: Sequence[ShadowRecord] = (),
        feedback: Sequence[FeedbackRecord] = (),
    ) -> int: ...

    def feedback_label(self, prediction_id: str) -> int | None: ...

    def ping(self) -> bool: ...

    def require_durable_commits(self) -> None: ...


Write = tuple[int, list[JournalItem]]  # (journal LSN after the write, its records)
# Rows held in memory at most (~1 KB each). A writer this far behind (a long replay at start, a
# slow store) reads the rest back from the journal instead of growing without bound.
MAX_QUEUED_ROWS = 50_000


def _split(
    items: Sequence[JournalItem],
) -> tuple[list[PredictionRecord], list[ShadowRecord], list[FeedbackRecord]]:
    preds = [i for i in items if isinstance(i, PredictionRecord)]
    shadows = [i for i in items if isinstance(i, ShadowRecord)]
    return preds, shadows, [i for i in items if isinstance(i, FeedbackRecord)]


class StoreWriter(BackgroundService):
    """The writer thread and what it knows about uncommitted rows (see module docstring)."""

    def __init__(
        self,
        store: PredictionSink,
        batch_size: int,
        flush_seconds: float,
        min_backoff: float,
        max_backoff: float,
    ) -> None:
        super().__init__("prediction-log-writer", 0.0)
        self._store = store
        self._batch_size, self._flush_seconds = max(1, batch_size), flush_seconds
        self._min_backoff, self._max_backoff, self._backoff = min_backoff, max_backoff, min_backoff
        self._journal: Journal | None = None
        self._cond = threading.Condition()
        self._queue: deque[Write] = deque()
        self._queued_rows = 0
        self._pending: set[str] = set()  # journaled prediction ids not yet committed
        self._pending_labels: dict[str, FeedbackRecord] = {}  # latest journaled, uncommitted feedback
        self._backlog: list[Segment] = []  # closed segments to replay from disk, oldest first
        self.backlog_rows = 0  # rows only on disk (backlog segments, or journaled in disk mode)
        self._disk_mode = False
        self._appended = self._committed = self._committed_lsn = 0
        self._flush_waiters = 0
        self._closing = self._gave_up = False
        self.write_errors = 0
        self._healthy = True

    # --- called by the journal / the logger ----------------------------------------------------
    def attach(self, journal: Journal, leftovers: list[Segment]) -> None:
        """Take the journal and the segments an earlier process left (read once here for their ids)."""
        self._journal = journal
        for seg in leftovers:
            rows, scan = seg.read()
            if scan.bad:
                log.warning("journal %s: %d torn or corrupt regions skipped", seg.path, scan.bad)
            with self._cond:
                for _, item in rows:
                    self._track(item)
                self._appended += len(rows)
                self.backlog_rows += len(rows)
        self._backlog = list(leftovers)
        if self.backlog_rows:
            log.info("prediction journal: %d rows left by an earlier process to replay", self.backlog_rows)

    def on_write(self, lsn: int, items: list[JournalItem]) -> None:
        """A journal write happened (called under the journal lock: writes arrive in LSN order)."""
        with self._cond:
            for item in items:
                self._track(item)
            self._appended += len(items)
            if self._disk_mode:
                self.backlog_rows += len(items)
                return
            self._queue.append((lsn, items))
            self._queued_rows += len(items)
            if self._queued_rows > MAX_QUEUED_ROWS:
                log.warning(
                    "prediction log writer %d rows behind: reading them back from the journal",
                    self._queued_rows,
                )
                self._to_disk_mode()
            if len(self._queue) == 1 or self._queued_rows >= self._batch_size:
                self._cond.notify()

    def pending(self, prediction_id: str) -> tuple[bool, int | None]:
        """(is the prediction journaled but not committed, latest uncommitted feedback label)."""
        with self._cond:
            fb = self._pending_labels.get(prediction_id)
            return prediction_id in self._pending, None if fb is None else fb.true_label

    def flush(self, timeout: float | None) -> bool:
        """Wait until every row journaled so far is committed; False if ``timeout`` passed first."""
        with self._cond:
            target = self._appended
            self._flush_waiters += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self._committed >= target, timeout)
            finally:
                self._flush_waiters -= 1

    def all_committed(self) -> bool:
        """True when nothing journaled is waiting for the store."""
        with self._cond:
            return self._committed >= self._appended and not self._backlog

    def stop(self, timeout: float = 30.0) -> None:
        """Commit what the store takes now (one attempt, no backoff), then stop the thread."""
        with self._cond:
            self._closing = True
            self.stopping.set()
            self._cond.notify_all()
        super().stop(timeout)
        if self.running:
            log.error("prediction log writer did not stop within %ss", timeout)

    @property
    def queue_depth(self) -> int:
        """Rows held in memory for the next batches."""
        return self._queued_rows

    @property
    def healthy(self) -> bool:
        """The last store write succeeded and the thread runs."""
        return self._healthy and self.running

    # --- the thread ------------------------------------------------------------------------------
    def run(self) -> None:
        """Recover, replay, commit batches; until closed and drained (or the store is down at close)."""
        while not self._finished():
            ok = (not self._disk_mode or self._recover()) and (not self._backlog or self._replay())
            if ok:
                batch = self._next_batch()
                ok = not batch or self._commit(batch)
            if not ok:
                self._pause()

    def _finished(self) -> bool:
        with self._cond:
            drained = not self._queue and not self._backlog and not self._disk_mode
            return self._gave_up or (self._closing and drained)

    def _pause(self) -> None:
        with self._cond:
            if self._closing:
                self._gave_up = True  # the rows stay in the journal for the next start
            else:
                self._cond.wait(self._backoff)

    def _next_batch(self) -> list[Write]:
        with self._cond:
            while not self._queue and not self._closing and not self._disk_mode:
                self._cond.wait()
            deadline = time.monotonic() + self._flush_seconds
            while self._queued_rows < self._batch_size and not (
                self._closing or self._flush_waiters or self._disk_mode
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[Write] = []
            rows = 0
            while self._queue and rows < self._batch_size:  # whole writes: committed_lsn stays exact
                batch.append(self._queue.popleft())
                rows += len(batch[-1][1])
            self._queued_rows -= rows
            return batch

    def _commit(self, batch: list[Write]) -> bool:
        items = [item for _, write in batch for item in write]
        try:
            self._store.insert_many(*_split(items))
        except Exception as e:
            self._enter_disk_mode(e, len(items))
            return False
        self._committed_up_to(batch[-1][0], items)
        return True

    def _replay(self) -> bool:
        """Replay the backlog segments from disk, oldest first; False if the store failed."""
        assert self._journal is not None
        while self._backlog:
            seg = self._backlog[0]
            rows, scan = seg.read(self._committed_lsn if seg.own else 0)
            if scan.bad:
                log.warning("journal %s: %d torn or corrupt regions skipped", seg.path, scan.bad)
            chunk = self._batch_size * 4
            for k in range(0, len(rows), chunk):
                part = rows[k : k + chunk]
                items = [item for _, item in part]
                try:
                    self._store.insert_many(*_split(items))
                except Exception as e:
                    self._enter_disk_mode(e, 0)
                    return False
                with self._cond:
                    self.backlog_rows = max(0, self.backlog_rows - len(items))
                self._committed_up_to(part[-1][0] if seg.own else None, items)
            self._journal.discard(seg)
            self._backlog.pop(0)
            log.info("prediction journal: replayed %d rows from %s", len(rows), seg.path)
        return True

    def _recover(self) -> bool:
        """Disk mode: if the store answers, close the active segment and queue its replay."""
        assert self._journal is not None
        if not self._store.ping():
            self._failed(None)
            return False

        def back_to_memory() -> None:  # under the journal lock: later writes are queued again
            with self._cond:
                self._disk_mode = False

        known = {s.path for s in self._backlog}
        self._backlog += [s for s in self._journal.rotate(then=back_to_memory) if s.path not in known]
        return True

    # --- bookkeeping -----------------------------------------------------------------------------
    def _track(self, item: JournalItem) -> None:
        if isinstance(item, PredictionRecord):
            self._pending.add(item.id)
        elif isinstance(item, FeedbackRecord):
            self._pending_labels[item.prediction_id] = item

    def _committed_up_to(self, lsn: int | None, items: list[JournalItem]) -> None:
        with self._cond:
            labels = self._pending_labels
            for item in items:
                if isinstance(item, PredictionRecord):
                    self._pending.discard(item.id)
                elif isinstance(item, FeedbackRecord) and labels.get(item.prediction_id) == item:
                    del labels[item.prediction_id]  # kept if a newer label waits
            self._committed += len(items)
            if lsn is not None:
                self._committed_lsn = max(self._committed_lsn, lsn)
            if not self._healthy:
                log.info("prediction store is back")
            self._healthy, self._backoff = True, self._min_backoff
            self._cond.notify_all()
        if lsn is not None and self._journal is not None:
            self._journal.release(lsn)

    def _enter_disk_mode(self, e: Exception, in_flight: int) -> None:
        """A store write failed: rely on the journal (drop the in-memory copy) until it is back."""
        self._failed(e)
        with self._cond:
            self.backlog_rows += in_flight
            self._to_disk_mode()

    def _to_disk_mode(self) -> None:
        """Drop the in-memory copy, count it as on disk (called under the condition)."""
        if not self._disk_mode:
            self._disk_mode = True
            self.backlog_rows += self._queued_rows
            self._queue.clear()
            self._queued_rows = 0
            self._cond.notify_all()

    def _failed(self, e: Exception | None) -> None:
        if e is not None:
            self.write_errors += 1
        with self._cond:
            if self._healthy:
                log.warning("prediction store unavailable, rows stay in the journal until it is back: %s", e)
            else:
                self._backoff = min(self._backoff * 2, self._max_backoff)
            self._healthy = False
