"""The prediction log of an API replica: a prediction is answered only once it is journaled.

``await log(records)`` appends the rows to this replica's journal (:mod:`.journal`) and returns
once they are durable for ``MNISTOPS_DURABILITY``; only then does the route answer:

* ``process``: the write reached the OS page cache, so it survives ``kill -9`` of the server;
* ``power``: the write was ``fdatasync``'d, so it also survives power loss.

Group commit: the requests served in one event-loop iteration share one ``os.write`` (made at the
end of that iteration, a few microseconds); in ``power`` mode the writes made while one
``fdatasync`` runs share the next, so a request waits for at most two syncs and the event loop
never waits for one. A writer thread (:mod:`.log_writer`) then commits the rows to the store in
batches, replays what an earlier process left in the journal, and keeps rows on disk only while
the store is down. Feedback and shadow answers go through the same journal.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from mnistops.errors import InputError, JournalError, StoreError
from mnistops.service.journal import Journal
from mnistops.service.journal_format import JournalItem, encode_framed
from mnistops.service.log_writer import PredictionSink, StoreWriter
from mnistops.store.records import N_CLASSES, FeedbackRecord, PredictionRecord, ShadowRecord

log = logging.getLogger(__name__)

Durability = Literal["process", "power"]
FeedbackStatus = Literal["recorded", "unchanged"]
_Group = list[tuple[bytes, Sequence[JournalItem], "asyncio.Future[None]"]]


def _settle(futures: list[asyncio.Future[None]], err: JournalError | None) -> None:
    for f in futures:
        if f.done():  # the request was cancelled meanwhile
            continue
        if err is None:
            f.set_result(None)
        else:
            f.set_exception(JournalError(err.message))


class PredictionLogger:
    """Journal-first prediction log (see module docstring).

    Args:
        store: the prediction store.
        journal_dir: ``<home>/journal`` (each process locks its own slot in it).
        durability: ``process`` or ``power``.
        batch_size: max rows per store transaction.
        flush_seconds: max wait for a batch to fill before committing it.
        min_backoff: first retry delay after a store failure (doubles up to ``max_backoff``).
        max_backoff: longest retry delay.
        segment_bytes: journal segment size (a full segment is closed, then deleted once committed).

    Raises:
        JournalError: the journal directory cannot be locked or written.
    """

    def __init__(
        self,
        store: PredictionSink,
        journal_dir: Path | str,
        *,
        durability: Durability = "process",
        batch_size: int = 256,
        flush_seconds: float = 0.05,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        segment_bytes: int = 8 << 20,
    ) -> None:
        self._store = store
        self.durability = durability
        if durability == "power":  # segments are deleted after commit: commits must be as durable
            store.require_durable_commits()
        self._writer = StoreWriter(store, batch_size, flush_seconds, min_backoff, max_backoff)
        self._journal = Journal(
            Path(journal_dir),
            fsync=durability == "power",
            on_write=self._writer.on_write,
            segment_bytes=segment_bytes,
        )
        self._writer.attach(self._journal, self._journal.open())
        self._writer.start()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._group: _Group = []
        self._closed = False
        self._shadow_errors = 0
        atexit.register(self.close)  # interpreter exit without lifespan shutdown still commits

    # --- the request path ----------------------------------------------------------------------
    async def log(self, records: Sequence[PredictionRecord]) -> None:
        """Journal predictions; returns once they are durable (the route answers after this).

        Raises:
            JournalError: the journal write failed: the request must not be answered 200.
            StoreError: the logger is closed.
        """
        data = encode_framed(list(records))
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:  # another event loop (tests): same guarantee, via a thread
            await asyncio.to_thread(self._append_blocking, data, records)
            return
        fut: asyncio.Future[None] = loop.create_future()
        self._group.append((data, records, fut))
        if len(self._group) == 1:
            loop.call_soon(self._write_group)  # after every request this iteration has resumed
        await fut

    def log_blocking(self, records: Sequence[JournalItem], timeout: float = 30.0) -> None:
        """:meth:`log` for a worker thread (sync routes): blocks until durable."""
        self._append_blocking(encode_framed(list(records)), records, timeout)

    def submit_shadow(self, record: ShadowRecord) -> None:
        """Journal a challenger's shadow answer without waiting (it is never returned to anyone)."""
        try:
            self._check_open()
            self._journal.append(encode_framed([record]), [record])
        except StoreError as e:
            self._shadow_errors += 1
            log.warning("shadow answer for %s dropped: %s", record.prediction_id, e)

    def add_feedback(self, prediction_id: str, true_label: int, timeout: float = 30.0) -> FeedbackStatus:
        """Journal a true label for a served prediction (blocking; the writer applies it in order).

        "unchanged" if that label is already the latest one recorded or journaled (nothing is
        written), else "recorded". The prediction may still be only in this replica's journal.

        Raises:
            InputError: label outside 0..9.
            NotFoundError: neither journaled here nor in the store.
            StoreError: the store is down and the id is not journaled here (cannot be checked).
            JournalError: the journal write failed.
        """
        if isinstance(true_label, bool) or not 0 <= int(true_label) < N_CLASSES:
            raise InputError(f"true_label must be in 0..9, got {true_label!r}")
        label = int(true_label)
        # the writer forgets an id only after committing it: ask it first, then the store
        in_journal, journaled_label = self._writer.pending(prediction_id)
        if journaled_label is not None:
            current: int | None = journaled_label
        elif in_journal:
            current = None
        else:
            current = self._store.feedback_label(prediction_id)
        if current == label:
            return "unchanged"
        self.log_blocking([FeedbackRecord(prediction_id, label, time.time())], timeout)
        return "recorded"

    # --- lifecycle ------------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything journaled so far is in the store; False if ``timeout`` passed first."""
        return self._writer.flush(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Commit what the store takes now, stop the threads, release the journal (idempotent).

        Rows the store did not take stay in the journal and are replayed at the next start.
        """
        if self._closed:
            return
        self._closed = True
        self._writer.stop(timeout)
        self._journal.close(delete_if=self._writer.all_committed)
        atexit.unregister(self.close)

    def is_pending(self, prediction_id: str) -> bool:
        """True while a journaled prediction is not yet committed to the store."""
        return self._writer.pending(prediction_id)[0]

    # --- metrics --------------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        """Journaled rows held in memory for the writer's next batches."""
        return self._writer.queue_depth

    @property
    def spill_backlog(self) -> int:
        """Journaled rows only on disk, waiting for the store (it was down, or a crash left them)."""
        return self._writer.backlog_rows

    @property
    def write_errors(self) -> int:
        """Failed store writes (rows stayed in the journal) and dropped shadow answers."""
        return self._writer.write_errors + self._shadow_errors

    @property
    def healthy(self) -> bool:
        """The last store write succeeded and the writer thread runs."""
        return self._writer.healthy

    # --- internals ------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("prediction log is closed")

    def _write_group(self) -> None:
        """One journal write for every request that joined the group (runs in the event loop)."""
        group, self._group = self._group, []
        futures = [f for _, _, f in group]
        try:
            self._check_open()
            self._journal.append(
                b"".join(d for d, _, _ in group),
                [item for _, items, _ in group for item in items],
                on_durable=self._on_durable(futures),
            )
        except StoreError as e:
            _settle(futures, e if isinstance(e, JournalError) else JournalError(e.message))

    def _on_durable(self, futures: list[asyncio.Future[None]]) -> Callable[[JournalError | None], None]:
        loop = self._loop
        assert loop is not None
        if self.durability == "process":  # called at once, in the event loop
            return lambda err: _settle(futures, err)

        def from_syncer(err: JournalError | None) -> None:
            loop.call_soon_threadsafe(_settle, futures, err)

        return from_syncer

    def _append_blocking(self, data: bytes, items: Sequence[JournalItem], timeout: float = 30.0) -> None:
        self._check_open()
        if self.durability == "process":
            self._journal.append(data, list(items))
            return
        done = threading.Event()
        result: list[JournalError | None] = []

        def on_durable(err: JournalError | None) -> None:
            result.append(err)
            done.set()

        self._journal.append(data, list(items), on_durable=on_durable)
        if not done.wait(timeout):
            raise JournalError(f"prediction journal fsync took longer than {timeout} s")
        if result[0] is not None:
            raise result[0]
