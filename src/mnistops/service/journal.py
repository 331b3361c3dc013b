"""The replica's append-only prediction journal: segment files under ``<home>/journal/<slot>/``.

Every served prediction (and accepted feedback, and shadow answer) is appended here before the
response leaves. The store writer (:mod:`.logger`) commits the rows to the database afterwards;
a closed segment is deleted once every row in it is committed (:meth:`Journal.release`).

* Slots: each serving process (``mnistops serve --workers K``) locks its own slot directory
  (``flock``, which the kernel drops when the process dies, SIGKILL included). At start a
  process takes the lowest free slot and adopts every other unlocked slot: its segments are what
  a crashed predecessor left, and are replayed like its own leftovers.
* Positions: an LSN is ``segment number << 40 | byte offset after a write``. It only grows, so
  "everything up to LSN x is committed" is meaningful across segment boundaries.
* Durability: without ``fsync`` (``process`` mode) a write is done once ``os.write`` returned:
  the bytes are in the OS page cache, which outlives this process. With ``fsync`` (``power``) a
  syncer thread ``fdatasync``s the segment (and the directory after a rotation) and only then runs
  the write's ``on_durable`` callback; every write made while one ``fdatasync`` runs shares the
  next one (group commit).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mnistops.errors import JournalError
from mnistops.service.journal_format import FrameScan, JournalItem, read_frames
from mnistops.service.journal_sync import OnDurable, Syncer, fsync_dir

log = logging.getLogger(__name__)

OFFSET_BITS = 40
MAX_SLOTS = 256
OnWrite = Callable[[int, list[JournalItem]], None]  # (lsn after the write, its records)


def lsn_of(number: int, offset: int) -> int:
    """The LSN of byte ``offset`` of segment ``number``."""
    return (number << OFFSET_BITS) | offset


@dataclass(frozen=True)
class Segment:
    """A closed segment file; ``own``: written by this process, ending at ``end_lsn``."""

    path: Path
    number: int
    own: bool
    end_lsn: int = 0

    def read(self, after_lsn: int = 0) -> tuple[list[tuple[int, JournalItem]], FrameScan]:
        """Every intact record with an LSN above ``after_lsn``, as ``(lsn, record)``."""
        scan = FrameScan()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], scan
        rows = [(lsn_of(self.number, end), item) for end, item in read_frames(data, 0, scan)]
        return [r for r in rows if r[0] > after_lsn], scan


def _number(path: Path) -> int:
    return int(path.stem)


def _segments(slot: Path) -> list[Path]:
    return sorted(slot.glob("*.wal"), key=_number)


def _try_lock(path: Path) -> int | None:
    """An exclusive ``flock`` on ``path`` (created if missing): its fd, or None if held elsewhere.

    Plain ``flock`` on purpose: the kernel drops it when the holder dies, however it dies, which
    is what tells a restarted process that a slot's leftovers are its to replay. (filelock would
    silently fall back to a lock file that a SIGKILL leaves behind on file systems without flock.)
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    return fd


def _unlock(fd: int) -> None:
    os.close(fd)  # closing the only descriptor releases the flock


class Journal:
    """This process's journal slot (see module docstring).

    Args:
        root: ``<home>/journal``.
        fsync: ``power`` mode (fdatasync before ``on_durable``).
        on_write: called under the journal lock after each successful write, with the write's
            LSN and records (so consumers see writes in LSN order).
        segment_bytes: size at which the active segment is closed and a new one started.
    """

    def __init__(self, root: Path, *, fsync: bool, on_write: OnWrite, segment_bytes: int = 8 << 20) -> None:
        self.root, self.fsync, self.segment_bytes = Path(root), fsync, segment_bytes
        self._on_write = on_write
        self._lock = threading.Lock()
        self._slot_lock: int | None = None  # fd holding the flock of our slot
        self._orphans: dict[Path, tuple[int, set[Path]]] = {}  # adopted slot -> (lock fd, segments left)
        self.slot = Path()
        self._closed: list[Segment] = []  # own closed segments not yet released
        self._number = 0
        self._fd = -1
        self._offset = 0
        self._broken = False  # the last write failed: start a new segment before the next one
        self._closing = False
        self._syncer: Syncer | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def open(self) -> list[Segment]:
        """Lock a slot, adopt unlocked ones, start a fresh segment.

        Returns:
            The leftover segments to replay, oldest first (adopted slots first).

        Raises:
            JournalError: no slot could be locked or the directory is not writable.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for k in range(MAX_SLOTS):
                lock = _try_lock(self.root / f"{k}.lock")
                if lock is None:
                    continue
                self._slot_lock, self.slot = lock, self.root / str(k)
                break
            else:
                raise JournalError(f"all {MAX_SLOTS} journal slots under {self.root} are locked")
            self.slot.mkdir(exist_ok=True)
            leftovers = self._adopt_orphans()
            own = [Segment(p, _number(p), own=False) for p in _segments(self.slot)]
            self._number = max((s.number for s in own), default=0)
            self._start_segment()
        except OSError as e:
            raise JournalError(f"cannot open the prediction journal under {self.root}: {e}") from e
        if self.fsync:
            self._syncer = Syncer(self.slot, self._fd, self._mark_broken).start()
        return leftovers + own

    def _adopt_orphans(self) -> list[Segment]:
        found: list[Segment] = []
        for slot in sorted((p for p in self.root.iterdir() if p.is_dir() and p.name.isdigit()), key=_number):
            segs = _segments(slot)
            if slot == self.slot or not segs:
                continue
            lock = _try_lock(self.root / f"{slot.name}.lock")
            if lock is None:
                continue  # a live process owns it
            self._orphans[slot] = (lock, set(segs))
            found += [Segment(p, _number(p), own=False) for p in segs]
        return found

    def close(self, *, delete_if: Callable[[], bool]) -> None:
        """Stop the syncer and close the segment; delete every own segment if ``delete_if()``.

        ``delete_if`` (everything journaled is committed) is asked under the journal lock, after
        which no write can succeed: no acknowledged row can be deleted by a racing request.
        """
        with self._lock:
            self._closing = True  # from here on append() fails
        if self._syncer is not None:
            self._syncer.stop()  # syncs and answers what was written before
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._number and delete_if():
                for path in [*(seg.path for seg in self._closed), self._path(self._number)]:
                    path.unlink(missing_ok=True)
                self._closed.clear()
        for lock, _ in self._orphans.values():
            _unlock(lock)
        self._orphans.clear()
        if self._slot_lock is not None:
            _unlock(self._slot_lock)
            self._slot_lock = None

    # --- writing -----------------------------------------------------------------------------
    def append(self, data: bytes, items: list[JournalItem], on_durable: OnDurable | None = None) -> int:
        """Write framed records in one ``os.write``; returns the LSN after them.

        ``on_durable`` runs once the write is durable for the mode: at once (in this thread) in
        ``process`` mode, from the syncer thread in ``power`` mode.

        Raises:
            JournalError: the write failed (nothing of it counts as accepted).
        """
        with self._lock:
            if self._closing or self._fd < 0:
                raise JournalError(f"prediction journal {self.slot} is closed")
            try:
                if self._broken or self._offset >= self.segment_bytes:
                    self._rotate_locked()
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError as e:
                self._broken = True
                where = self._path(self._number)
                raise JournalError(f"prediction journal write failed ({where}): {e}") from e
            self._offset += len(data)
            lsn = lsn_of(self._number, self._offset)
            self._on_write(lsn, items)
            if self._syncer is not None and on_durable is not None:
                self._syncer.wait_for(lsn, on_durable)
                on_durable = None
        if on_durable is not None:
            on_durable(None)
        return lsn

    def rotate(self, then: Callable[[], None]) -> list[Segment]:
        """Close the active segment and call ``then()`` before any later write can happen.

        Returns:
            Every own closed segment not yet released, oldest first.
        """
        with self._lock:
            if self._closing:  # no more writes can come: the active segment is complete as it is
                active = Segment(self._path(self._number), self._number, True, self.written_lsn)
                then()
                return [*self._closed, active]
            self._rotate_locked()
            then()
            return list(self._closed)

    def release(self, lsn: int) -> None:
        """Delete own closed segments whose every row is committed (their end LSN <= ``lsn``)."""
        with self._lock:
            done = [s for s in self._closed if s.end_lsn <= lsn]
            self._closed = [s for s in self._closed if s.end_lsn > lsn]
        for seg in done:
            seg.path.unlink(missing_ok=True)

    def discard(self, seg: Segment) -> None:
        """A replayed segment: delete it (and let go of an adopted slot once it is empty)."""
        seg.path.unlink(missing_ok=True)
        with self._lock:
            self._closed = [s for s in self._closed if s.path != seg.path]
            owner = self._orphans.get(seg.path.parent)
            if owner is not None:
                owner[1].discard(seg.path)
                if not owner[1]:
                    _unlock(owner[0])
                    del self._orphans[seg.path.parent]

    @property
    def written_lsn(self) -> int:
        """LSN after the last successful write."""
        return lsn_of(self._number, self._offset)

    # --- internals ---------------------------------------------------------------------------
    def _path(self, number: int) -> Path:
        return self.slot / f"{number:010d}.wal"

    def _mark_broken(self) -> None:
        with self._lock:
            self._broken = True

    def _start_segment(self) -> None:
        self._number += 1
        self._fd = os.open(self._path(self._number), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._offset, self._broken = 0, False
        if self._syncer is not None:
            self._syncer.new_segment(self._fd)
        elif self.fsync:  # the first segment, before the syncer exists
            fsync_dir(self.slot)

    def _rotate_locked(self) -> None:
        old_fd = self._fd
        old = Segment(self._path(self._number), self._number, True, lsn_of(self._number, self._offset))
        self._start_segment()
        self._closed.append(old)
        if self._syncer is None:
            os.close(old_fd)  # process mode: nothing to sync; power mode: the syncer closes it
