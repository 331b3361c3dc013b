"""On-disk format of the prediction journal: CRC-framed binary records.

A segment file is a sequence of frames::

    frame   = magic u32 | length u32 | crc32(payload) u32 | payload      (little endian)
    payload = kind u8 | fields of that kind (below)

A crash can cut the last frame short (a torn write), and a bad sector can garble one in the
middle: :func:`read_frames` drops any frame whose header, length or CRC does not check out and
resynchronises on the next magic, so every intact record around it is still recovered.

Payloads (``str`` = u16 byte length + UTF-8; u16 0xFFFF = None; ``f32x10`` = the probabilities):

* prediction: ts f64, latency_ms f64, confidence f64, label u8, served_by u8 (0 champion,
  1 canary), true_label i8 (-1 = None), feedback_ts f64 (NaN = None), f32x10, image 784 u8,
  id str, model_version str, client str
* shadow: ts f64, confidence f64, latency_ms f64 (NaN = None), label u8, f32x10,
  prediction_id str, model_version str
* feedback: true_label u8, ts f64, prediction_id str
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator

from mnistops.errors import InputError
from mnistops.store.records import IMAGE_BYTES, FeedbackRecord, PredictionRecord, ShadowRecord

JournalItem = PredictionRecord | ShadowRecord | FeedbackRecord

MAGIC = 0x4C4E524A  # b"JRNL" read as little-endian u32
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<III")
FRAME_OVERHEAD = _FRAME.size
MAX_PAYLOAD = 1 << 20  # far above any record: a larger length field is garbage
_PRED, _SHADOW, _FEEDBACK = 1, 2, 3
_SERVED_BY = ("champion", "canary")
_PRED_HEAD = struct.Struct("<BdddBBbd10f")
_SHADOW_HEAD = struct.Struct("<BdddB10f")
_FEEDBACK_HEAD = struct.Struct("<BBd")
_LEN = struct.Struct("<H")
_NONE_LEN = 0xFFFF


def _str(s: str | None) -> bytes:
    if s is None:
        return _LEN.pack(_NONE_LEN)
    b = s.encode()
    if len(b) >= _NONE_LEN:
        raise ValueError(f"string field of {len(b)} bytes is too long for the journal")
    return _LEN.pack(len(b)) + b


def _read_str(buf: bytes, pos: int) -> tuple[str | None, int]:
    (n,) = _LEN.unpack_from(buf, pos)
    pos += _LEN.size
    if n == _NONE_LEN:
        return None, pos
    return buf[pos : pos + n].decode(), pos + n


def _nan_if_none(x: float | None) -> float:
    return math.nan if x is None else x


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else x


def encode(item: JournalItem) -> bytes:
    """The payload of one record (without the frame)."""
    if isinstance(item, PredictionRecord):
        head = _PRED_HEAD.pack(
            _PRED,
            item.ts,
            item.latency_ms,
            item.confidence,
            item.label,
            _SERVED_BY.index(item.served_by),
            -1 if item.true_label is None else item.true_label,
            _nan_if_none(item.feedback_ts),
            *item.probs,
        )
        return b"".join((head, item.image, _str(item.id), _str(item.model_version), _str(item.client)))
    if isinstance(item, ShadowRecord):
        head = _SHADOW_HEAD.pack(
            _SHADOW, item.ts, item.confidence, _nan_if_none(item.latency_ms), item.label, *item.probs
        )
        return head + _str(item.prediction_id) + _str(item.model_version)
    return _FEEDBACK_HEAD.pack(_FEEDBACK, item.true_label, item.ts) + _str(item.prediction_id)


def decode(payload: bytes) -> JournalItem:
    """Inverse of :func:`encode` (raises ValueError, IndexError, struct.error or InputError on garbage)."""
    kind = payload[0]
    if kind == _PRED:
        _, ts, lat, conf, label, served, true, fb_ts, *probs = _PRED_HEAD.unpack_from(payload)
        pos = _PRED_HEAD.size + IMAGE_BYTES
        image = payload[_PRED_HEAD.size : pos]
        pid, pos = _read_str(payload, pos)
        version, pos = _read_str(payload, pos)
        client, _ = _read_str(payload, pos)
        if pid is None or version is None:
            raise ValueError("prediction record without id or model version")
        return PredictionRecord(
            id=pid,
            ts=ts,
            model_version=version,
            image=image,
            probs=tuple(probs),
            label=label,
            confidence=conf,
            latency_ms=lat,
            client=client,
            served_by=_SERVED_BY[served],
            true_label=None if true < 0 else true,
            feedback_ts=_none_if_nan(fb_ts),
        )
    if kind == _SHADOW:
        _, ts, conf, lat, label, *probs = _SHADOW_HEAD.unpack_from(payload)
        pid, pos = _read_str(payload, _SHADOW_HEAD.size)
        version, _ = _read_str(payload, pos)
        if pid is None or version is None:
            raise ValueError("shadow record without prediction id or model version")
        return ShadowRecord(pid, version, tuple(probs), label, conf, ts, _none_if_nan(lat))
    if kind == _FEEDBACK:
        _, true, ts = _FEEDBACK_HEAD.unpack_from(payload)
        pid, _ = _read_str(payload, _FEEDBACK_HEAD.size)
        if pid is None:
            raise ValueError("feedback record without prediction id")
        return FeedbackRecord(pid, true, ts)
    raise ValueError(f"unknown journal record kind {kind}")


def frame(payload: bytes) -> bytes:
    """Header + payload, ready to append."""
    return _FRAME.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def encode_framed(items: list[JournalItem]) -> bytes:
    """The frames of several records, concatenated (one write)."""
    return b"".join(frame(encode(i)) for i in items)


class FrameScan:
    """Counters of one :func:`read_frames` pass (filled while iterating)."""

    def __init__(self) -> None:
        self.frames = 0
        self.bad = 0  # torn or corrupt regions skipped (a torn tail counts as one)


def read_frames(buf: bytes, start: int, scan: FrameScan) -> Iterator[tuple[int, JournalItem]]:
    """Yield ``(end_offset, record)`` for every intact frame of ``buf`` from ``start``."""
    pos, n = start, len(buf)
    while pos + FRAME_OVERHEAD <= n:
        magic, length, crc = _FRAME.unpack_from(buf, pos)
        end = pos + FRAME_OVERHEAD + length
        if magic == MAGIC and length <= MAX_PAYLOAD and end <= n:
            payload = buf[pos + FRAME_OVERHEAD : end]
            if zlib.crc32(payload) == crc:
                try:
                    item = decode(payload)
                except (ValueError, IndexError, KeyError, struct.error, InputError):
                    pass  # CRC matched but the payload is not ours: treat as corrupt
                else:
                    scan.frames += 1
                    yield end, item
                    pos = end
                    continue
        scan.bad += 1
        nxt = buf.find(_MAGIC_BYTES, pos + 1)
        if nxt < 0:
            return
        pos = nxt
    if pos < n:
        scan.bad += 1  # a tail shorter than a frame header
