"""The journal's frames: every record round-trips; torn and corrupt frames lose only themselves."""

from __future__ import annotations

import numpy as np
import pytest

from mnistops.service.journal_format import FrameScan, encode_framed, read_frames
from mnistops.store.records import FeedbackRecord, PredictionRecord, ShadowRecord


def sample() -> list[PredictionRecord | ShadowRecord | FeedbackRecord]:
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(10)).astype(np.float32)
    plain = PredictionRecord.create(img, probs, "12", 0.5)
    full = PredictionRecord.create(
        img, probs, "3", 1.25, client="kiosk-ü", served_by="canary", id="custom", ts=5.5
    )
    full.true_label, full.feedback_ts = 7, 6.5
    return [
        plain,
        full,
        ShadowRecord.create(plain.id, "13", probs[::-1], latency_ms=2.0),
        ShadowRecord.create(plain.id, "14", probs),  # latency None
        FeedbackRecord(plain.id, 9, 123.25),
    ]


def read(buf: bytes) -> tuple[list[object], FrameScan]:
    scan = FrameScan()
    return [item for _, item in read_frames(buf, 0, scan)], scan


def test_every_kind_round_trips_exactly() -> None:
    items = sample()
    got, scan = read(encode_framed(items))
    assert got == items and scan.frames == len(items) and scan.bad == 0


def test_offsets_are_frame_ends() -> None:
    items = sample()
    buf = encode_framed(items)
    ends = [end for end, _ in read_frames(buf, 0, FrameScan())]
    assert ends[-1] == len(buf) and ends == sorted(ends)
    assert [i for _, i in read_frames(buf, ends[1], FrameScan())] == items[2:]  # resume mid-file


def test_a_torn_final_write_loses_only_the_torn_record() -> None:
    items = sample()
    whole = encode_framed(items)
    last_start = len(encode_framed(items[:-1]))
    for cut in range(last_start + 1, len(whole)):  # every possible tear inside the last frame
        got, scan = read(whole[:cut])
        assert got == items[:-1] and scan.bad == 1, cut


@pytest.mark.parametrize("where", ["header", "payload"])
def test_a_corrupt_frame_in_the_middle_is_skipped_and_the_rest_recovered(where: str) -> None:
    items = sample()
    buf = bytearray(encode_framed(items))
    start = len(encode_framed(items[:1]))
    buf[start + (5 if where == "header" else 40)] ^= 0xFF  # length field / image byte of record 2
    got, scan = read(bytes(buf))
    assert got == [items[0], *items[2:]] and scan.bad == 1


def test_garbage_only_yields_nothing() -> None:
    got, scan = read(b"\x00" * 100 + b"JRNL" + b"\xff" * 50)
    assert got == [] and scan.bad >= 1
