"""A promotion during a load run: no failed request, v1 → v2 and never back, every answer versioned.

Two registered versions in a private MLflow store; the service (a real subprocess) follows the
``champion`` alias every 0.5 s. The test promotes version 2 through :meth:`Registry.promote`
while client threads keep predicting, then checks the answers.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from live_server import LiveServer, make_registry, post_json

from mnistops.registry.core import Registry

pytestmark = pytest.mark.slow

THREADS = 4


@dataclass(frozen=True)
class Answer:
    """One request as the client saw it."""

    thread: int
    sent: float  # monotonic time the request was sent
    received: float  # monotonic time the response was read
    status: int
    version: str | None


def test_promotion_during_load_switches_versions_without_errors(
    tmp_path: Path,
    cached_data_dir: Path,
    trained_model_dir: Path,
    mnist_test_data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    reg_home = make_registry(tmp_path / "registry", cached_data_dir, trained_model_dir, 2)
    v1, v2 = reg_home.versions
    x, _ = mnist_test_data
    bodies = [json.dumps({"pixels": x[i].tolist()}).encode() for i in range(32)]
    home = tmp_path / "home"
    server = LiveServer(reg_home.env(home, model_poll_seconds="0.5"), home)
    answers: list[Answer] = []
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[str] = []

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        i = 0
        try:
            while not stop.is_set():
                t0 = time.monotonic()
                status, body = post_json(conn, "/v1/predict", bodies[(k + i) % len(bodies)])
                with lock:
                    answers.append(Answer(k, t0, time.monotonic(), status, body.get("model_version")))
                i += 1
                time.sleep(0.01)  # a steady stream, not a CPU hog on a shared machine
        except Exception as exc:  # a transport error is a failed request too
            errors.append(repr(exc))
        finally:
            conn.close()

    def count(version: str) -> int:
        with lock:
            return sum(a.version == version for a in answers)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(THREADS)]
    try:
        server.wait_ready()
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while count(v1) < 40 and time.monotonic() < deadline:
            time.sleep(0.1)
        promote_started = time.monotonic()
        Registry(reg_home.settings(tmp_path / "promoter")).promote(
            v2, actor="test", reason="hot swap", force=True
        )
        promoted = time.monotonic()
        while count(v2) < 80 and time.monotonic() < deadline + 30:
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        server.terminate()

    assert not errors, errors
    assert [a for a in answers if a.status != 200] == []
    assert {a.version for a in answers} == {v1, v2}  # every response names its version
    # per client, the versions go v1...v1 v2...v2: never back to v1
    for k in range(THREADS):
        seq = [a.version for a in sorted(answers, key=lambda a: a.sent) if a.thread == k]
        assert seq == sorted(seq, key=lambda v: v == v2), f"client {k} went back to v1: {seq}"
    # once any client got a v2 answer, every request sent after that is answered by v2
    first_v2 = min(a.received for a in answers if a.version == v2)
    assert all(a.version == v2 for a in answers if a.sent > first_v2)
    assert first_v2 > promote_started  # v2 only after the promotion
    print(f"switch seen {first_v2 - promoted:.2f} s after promote() returned; {len(answers)} requests")
