"""``power`` mode's group commit: one thread fdatasyncs the journal and answers the writes it covered.

The journal registers a callback per write (under its lock, so in LSN order); one round takes
every registered callback, fdatasyncs the segments written since the last round (a rotated one
once more, then closes it; the directory after a rotation), and then calls them all. Writes made
during a round wait for the next: at most two syncs per request, one sync for many requests.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from mnistops.errors import JournalError
from mnistops.runtime import BackgroundService

OnDurable = Callable[[JournalError | None], None]  # None: durable; else why it is not


def fsync_dir(path: Path) -> None:
    """fsync a directory (makes a file created in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Syncer(BackgroundService):
    """``power`` mode: fdatasync what was written, then tell the writes it covered."""

    def __init__(self, slot: Path, fd: int, on_error: Callable[[], None]) -> None:
        super().__init__("journal-sync", 0.0)
        self._slot, self._fd, self._on_error = slot, fd, on_error
        self._cond = threading.Condition()
        self._waiters: deque[tuple[int, OnDurable]] = deque()
        self._retired: list[int] = []  # fds of rotated segments: sync once more, then close
        self._dir_dirty = False

    def wait_for(self, lsn: int, callback: OnDurable) -> None:
        """Call ``callback`` once everything up to ``lsn`` is on disk (called under the journal lock)."""
        with self._cond:
            self._waiters.append((lsn, callback))
            self._cond.notify()

    def new_segment(self, fd: int) -> None:
        """The journal rotated (under its lock): the old fd retires, the directory needs a sync."""
        with self._cond:
            self._retired.append(self._fd)
            self._fd, self._dir_dirty = fd, True
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> None:
        """Sync what is pending, then stop."""
        with self._cond:
            self.stopping.set()
            self._cond.notify()
        super().stop(timeout)

    def run(self) -> None:
        """Rounds until stopped and nothing is pending."""
        while True:
            with self._cond:
                if self.stopping.is_set() and not self._waiters and not self._retired:
                    return
            self.run_step()

    def step(self) -> None:
        """One round: wait for work, fdatasync outside the lock, then answer every covered write.

        A failed fdatasync is not retried (after an error Linux may have dropped the dirty pages and
        report the next attempt as a success): the writes it covered fail, and the journal moves
        to a fresh segment.
        """
        with self._cond:
            while not (self._waiters or self._retired or self.stopping.is_set()):
                self._cond.wait()
            waiters, self._waiters = self._waiters, deque()
            retired, self._retired = self._retired, []
            fd, dir_dirty, self._dir_dirty = self._fd, self._dir_dirty, False
        err: JournalError | None = None
        try:
            for old in retired:
                try:
                    os.fdatasync(old)
                finally:
                    os.close(old)
            if waiters:
                os.fdatasync(fd)
            if dir_dirty:
                fsync_dir(self._slot)
        except OSError as e:
            err = JournalError(f"prediction journal fsync failed in {self._slot}: {e}")
            self._on_error()
        for _, cb in waiters:
            cb(err)
        if err is not None:
            raise err
