"""Append-only JSON-lines spill file used by the prediction logger while the store is down.

Each line is one prediction (``"kind": "prediction"``, image base64) or one shadow answer
(``"kind": "shadow"``). Appends are fsync'd; a cross-process file lock guards append and
replay+truncate, so several service workers can share one spill file. Replay is idempotent
because the store skips ids it already has; the file is truncated only after every line was
committed.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock

from mnistops.store.records import PredictionRecord, ShadowRecord

log = logging.getLogger(__name__)

Item = PredictionRecord | ShadowRecord
Sink = Callable[[Sequence[PredictionRecord], Sequence[ShadowRecord]], Any]


def encode(item: Item) -> str:
    """One JSON line (without newline) for a record."""
    if isinstance(item, PredictionRecord):
        d: dict[str, Any] = {
            "kind": "prediction",
            "id": item.id,
            "ts": item.ts,
            "model_version": item.model_version,
            "image": base64.b64encode(item.image).decode("ascii"),
            "probs": list(item.probs),  # float32 values are exact as JSON doubles
            "label": item.label,
            "confidence": item.confidence,
            "latency_ms": item.latency_ms,
            "client": item.client,
            "served_by": item.served_by,
            "true_label": item.true_label,
            "feedback_ts": item.feedback_ts,
        }
    else:
        d = {
            "kind": "shadow",
            "prediction_id": item.prediction_id,
            "model_version": item.model_version,
            "probs": list(item.probs),
            "label": item.label,
            "confidence": item.confidence,
            "ts": item.ts,
            "latency_ms": item.latency_ms,
        }
    return json.dumps(d, separators=(",", ":"))


def decode(line: str) -> Item:
    """Inverse of :func:`encode` (raises ValueError/KeyError/TypeError on a corrupt line)."""
    d = json.loads(line)
    kind = d.pop("kind")
    if kind == "prediction":
        d["image"] = base64.b64decode(d["image"], validate=True)
        return PredictionRecord(**d)
    if kind == "shadow":
        return ShadowRecord(**d)
    raise ValueError(f"unknown spill record kind {kind!r}")


class SpillFile:
    """The spill file at ``path`` (created on first append; lock file ``<path>.lock``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = FileLock(str(self.path) + ".lock")

    def count(self) -> int:
        """Lines currently in the file (0 if missing)."""
        try:
            with self.path.open("rb") as f:
                return sum(1 for line in f if line.strip())
        except FileNotFoundError:
            return 0

    def append(self, items: Iterable[Item]) -> int:
        """Append records durably (fsync); returns the number of lines written.

        Raises:
            OSError: the disk refused the write (nothing is considered spilled then).
        """
        data = "".join(encode(i) + "\n" for i in items).encode()
        if not data:
            return 0
        created = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, self.path.open("ab+") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                # a crash mid-append can leave a torn last line: never glue a record onto it
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if created:
            self._fsync_dir()
        return data.count(b"\n")

    def replay(self, sink: Sink, chunk: int = 1000) -> tuple[list[str], int]:
        """Feed every record to ``sink(predictions, shadows)`` in chunks, then truncate the file.

        If ``sink`` raises, the exception propagates and the file is left intact (a later
        replay re-sends rows; the store skips those already committed).

        Returns:
            (ids of the replayed predictions, number of corrupt lines skipped).
        """
        if not self.path.exists():
            return [], 0
        ids: list[str] = []
        bad = 0
        with self._lock:
            preds: list[PredictionRecord] = []
            shadows: list[ShadowRecord] = []
            with self.path.open("r", encoding="utf-8", errors="replace") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        item = decode(line)
                    except Exception as e:  # torn or corrupt line: keep going, report it
                        bad += 1
                        log.error("spill %s line %d unreadable, skipped: %s", self.path, lineno, e)
                        continue
                    if isinstance(item, PredictionRecord):
                        preds.append(item)
                        ids.append(item.id)
                    else:
                        shadows.append(item)
                    if len(preds) + len(shadows) >= chunk:
                        sink(preds, shadows)
                        preds, shadows = [], []
            if preds or shadows:
                sink(preds, shadows)
            with self.path.open("r+b") as f:
                f.truncate(0)
                f.flush()
                os.fsync(f.fileno())
        return ids, bad

    def _fsync_dir(self) -> None:
        try:
            fd = os.open(self.path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
