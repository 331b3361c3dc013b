"""Parquet archive of pruned prediction-log rows: one file per retention batch.

A batch of predictions (with their shadow answers nested as a list column) is written to
``<dir>/predictions-<first seq>-<last seq>.parquet`` through a temporary file that is fsynced,
renamed into place, and the directory fsynced, all BEFORE the batch's delete commits, so a row is
never deleted unarchived. Names are deterministic by seq range: a prune interrupted between the
archive and the delete writes the same file again (its rows are all still in the database, so
replacing it loses nothing). A file is only replaced when every row it holds is in the new batch;
otherwise the new batch gets the next free ``.<k>`` suffix. So the archive may hold a row twice
(an interrupted prune with different settings, or a label that arrived during a prune):
:func:`read_archive` keeps the copy archived last.

Schema (``ARCHIVE_SCHEMA``): the ``predictions`` columns (``image`` as 784 raw bytes, ``probs`` as
10 float32), ``shadows`` (list of the ``shadow_predictions`` columns) and ``archived_at``.
Readable by any Parquet reader (pyarrow, pandas, DuckDB, Spark).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mnistops.errors import StoreError
from mnistops.store.records import IMAGE_BYTES, N_CLASSES, PredictionRecord, ShadowRecord

ARCHIVE_FORMAT = "1"
PROBS = pa.list_(pa.float32(), N_CLASSES)
SHADOW_TYPE = pa.struct(
    [
        ("model_version", pa.string()),
        ("ts", pa.float64()),
        ("probs", PROBS),
        ("label", pa.int16()),
        ("confidence", pa.float64()),
        ("latency_ms", pa.float64()),
    ]
)
ARCHIVE_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("id", pa.string()),
        ("ts", pa.float64()),
        ("model_version", pa.string()),
        ("image", pa.binary(IMAGE_BYTES)),
        ("probs", PROBS),
        ("label", pa.int16()),
        ("confidence", pa.float64()),
        ("latency_ms", pa.float64()),
        ("client", pa.string()),
        ("served_by", pa.string()),
        ("true_label", pa.int16()),
        ("feedback_ts", pa.float64()),
        ("shadows", pa.list_(SHADOW_TYPE)),
        ("archived_at", pa.float64()),
    ],
    metadata={b"mnistops.archive_format": ARCHIVE_FORMAT.encode()},
)
_ROW_COLUMNS = tuple(ARCHIVE_SCHEMA.names[:-2])  # the predictions columns (then shadows, archived_at)
_FILE = re.compile(r"^predictions-(\d+)-(\d+)(?:\.(\d+))?\.parquet$")
_TMP_MAX_AGE_S = 3600.0  # temporary files older than this are leftovers of a crashed prune


def _probs(blobs: Sequence[bytes]) -> pa.FixedSizeListArray:
    flat = np.frombuffer(b"".join(blobs), dtype="<f4") if blobs else np.zeros(0, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), N_CLASSES)


def batch_table(
    rows: Sequence[Mapping[str, Any]], shadows: Mapping[str, Sequence[Mapping[str, Any]]], archived_at: float
) -> pa.Table:
    """Arrow table of prediction rows (``predictions`` mappings, probs as blobs) and their shadows.

    Args:
        rows: prediction rows as read from the store, ordered by seq.
        shadows: prediction id -> its ``shadow_predictions`` rows.
        archived_at: epoch seconds stamped on every row (the newest copy wins on read).
    """
    col = {name: [r[name] for r in rows] for name in _ROW_COLUMNS}
    nested = [
        [
            {
                "model_version": s["model_version"],
                "ts": s["ts"],
                "probs": np.frombuffer(s["probs"], dtype="<f4").tolist(),
                "label": s["label"],
                "confidence": s["confidence"],
                "latency_ms": s["latency_ms"],
            }
            for s in shadows.get(r["id"], ())
        ]
        for r in rows
    ]
    arrays = [
        _probs(col[f.name]) if f.name == "probs" else pa.array(col[f.name], f.type)
        for f in ARCHIVE_SCHEMA
        if f.name in col
    ]
    arrays += [pa.array(nested, ARCHIVE_SCHEMA.field("shadows").type), pa.array([archived_at] * len(rows))]
    return pa.Table.from_arrays(arrays, schema=ARCHIVE_SCHEMA)


def _seqs_of(path: Path) -> set[int] | None:
    try:
        return set(pq.read_table(path, columns=["seq"]).column("seq").to_pylist())
    except (OSError, pa.ArrowException):
        return None  # unreadable: never replace it


def target_path(directory: Path, first_seq: int, last_seq: int, seqs: Sequence[int]) -> Path:
    """Where a batch goes: its seq-range name, unless that file holds rows the batch does not."""
    base = f"predictions-{first_seq:012d}-{last_seq:012d}"
    batch = set(seqs)
    for k in range(10_000):
        path = directory / (f"{base}.parquet" if k == 0 else f"{base}.{k}.parquet")
        if not path.exists():
            return path
        held = _seqs_of(path)
        if held is not None and held <= batch:  # an interrupted prune's file: all its rows still stored
            return path
    raise StoreError(f"archive: no free file name for {base} in {directory}")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_batch(directory: Path, table: pa.Table) -> Path:
    """Write one batch durably (temp file, fsync, rename, fsync of the directory); returns its path.

    Raises:
        StoreError: the directory is not writable or the disk failed (nothing may be deleted then).
    """
    seqs = table.column("seq").to_pylist()
    if not seqs:
        raise StoreError("archive: empty batch")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path = target_path(directory, seqs[0], seqs[-1], seqs)
        tmp = directory / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
        with tmp.open("wb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    except OSError as e:
        raise StoreError(f"archive: cannot write to {directory}: {e}") from e
    return path


def remove_stale_temp_files(directory: Path, *, now: float | None = None) -> int:
    """Delete temporary files a crashed prune left behind (older than an hour); returns how many."""
    now = time.time() if now is None else now
    removed = 0
    for p in directory.glob(".predictions-*.tmp") if directory.is_dir() else ():
        if now - p.stat().st_mtime > _TMP_MAX_AGE_S:
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def archive_files(directory: Path) -> list[Path]:
    """The archive's batch files, ordered by first seq."""
    keyed = []
    for p in directory.glob("predictions-*.parquet"):
        m = _FILE.match(p.name)
        if m is not None:
            keyed.append(((int(m[1]), int(m[2]), int(m[3] or 0)), p))
    return [p for _, p in sorted(keyed)]


def read_archive(directory: Path) -> pa.Table:
    """Every archived row once (the copy archived last wins), ordered by seq."""
    files = archive_files(directory)
    if not files:
        return ARCHIVE_SCHEMA.empty_table()
    table = pa.concat_tables([pq.read_table(p, schema=ARCHIVE_SCHEMA) for p in files])
    table = table.sort_by([("seq", "ascending"), ("archived_at", "descending")])
    seqs = table.column("seq").to_numpy()
    first = np.ones(len(seqs), dtype=bool)
    first[1:] = seqs[1:] != seqs[:-1]
    return table.filter(pa.array(first))


def iter_records(table: pa.Table) -> Iterator[tuple[PredictionRecord, list[ShadowRecord]]]:
    """The archived rows as store records (a record equals the one originally inserted)."""
    for row in table.to_pylist():
        shadows = [ShadowRecord(prediction_id=row["id"], **s) for s in row.pop("shadows") or ()]
        row.pop("archived_at")
        yield PredictionRecord(**row), shadows
