"""Notifiers: payload shape, log levels, and webhook delivery to real receivers on loopback."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mnistops.monitor.alerts.engine import AlertEngine, AlertRule
from mnistops.monitor.alerts.notify import LogNotifier, Notification, webhook_payload
from mnistops.monitor.alerts.webhook import WebhookNotifier
from mnistops.store.predictions import PredictionStore


class Receiver:
    """HTTP receiver on 127.0.0.1:<free port> answering the scripted statuses, then 200."""

    def __init__(self, statuses: tuple[int, ...] = (), block: bool = False) -> None:
        self.statuses = list(statuses)
        self.bodies: list[dict[str, Any]] = []
        self.answered = 0
        self.entered = threading.Event()  # a request arrived
        self.release = threading.Event()  # blocked handlers may answer
        if not block:
            self.release.set()
        recv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    recv.bodies.append(body)
                    status = recv.statuses.pop(0) if recv.statuses else 200
                recv.entered.set()
                recv.release.wait(30)
                with lock:  # count before replying: the client may act on the reply at once
                    recv.answered += 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.stop()


def note(window: int = 0, status: str = "firing", severity: str = "critical") -> Notification:
    return Notification(
        status=status,  # type: ignore[arg-type]
        rule="DataDrift",
        severity=severity,
        summary=f"drift in window {window}",
        fingerprint="fp1",
        started_at=0.0,
        ended_at=60.0 if status == "resolved" else None,
        event_id=7,
        window=window,
        model_version="3",
        metric="drift.combined.drifted",
        value=True,
        threshold=True,
        comparator="==",
        labels={"metric": "drift.combined.drifted"},
    )


def dead_url() -> str:
    # a port that was free a moment ago: connections are refused
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def test_payload_is_alertmanager_like() -> None:
    p = webhook_payload([note(1), note(2, status="resolved")])
    assert p["version"] == "4" and p["status"] == "firing"
    a, b = p["alerts"]
    assert a["labels"] == {
        "alertname": "DataDrift",
        "severity": "critical",
        "metric": "drift.combined.drifted",
    }
    assert a["annotations"] == {"summary": "drift in window 1"}
    assert (a["startsAt"], a["endsAt"]) == ("1970-01-01T00:00:00Z", "0001-01-01T00:00:00Z")
    assert (b["status"], b["endsAt"]) == ("resolved", "1970-01-01T00:01:00Z")
    assert (a["event_id"], a["window"], a["model_version"], a["value"]) == (7, 1, "3", True)
    assert p["commonLabels"]["alertname"] == "DataDrift"
    assert webhook_payload([note(status="resolved")])["status"] == "resolved"
    json.dumps(p)  # serializable as is


def test_log_notifier_levels(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mnistops.alerts"):
        LogNotifier().notify([note(), note(severity="warning"), note(status="resolved")])
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.WARNING, logging.INFO]
    assert "DataDrift FIRING" in caplog.records[0].getMessage()


def test_webhook_delivers_to_loopback(receivers: list[Receiver]) -> None:
    receivers += [Receiver(), Receiver()]
    hook = WebhookNotifier([r.url for r in receivers], timeout=5, max_retries=0)
    hook.notify([note(4)])
    hook.close(timeout=10)
    for r in receivers:
        (body,) = r.bodies
        assert body["alerts"][0]["window"] == 4 and body["alerts"][0]["labels"]["alertname"] == "DataDrift"
    assert hook.stats() == {"delivered": 2, "failed": 0, "dropped": 0, "retries": 0}


def test_webhook_retries_5xx_with_backoff(receivers: list[Receiver]) -> None:
    receivers.append(Receiver(statuses=(500, 503)))
    hook = WebhookNotifier([receivers[0].url], timeout=5, max_retries=3, backoff=0.01)
    hook.notify([note(1)])
    hook.close(timeout=10)
    assert len(receivers[0].bodies) == 3  # two failures, then success
    assert receivers[0].bodies[0] == receivers[0].bodies[2]
    assert hook.stats() == {"delivered": 1, "failed": 0, "dropped": 0, "retries": 2}


def test_webhook_gives_up_on_4xx_and_after_max_retries(receivers: list[Receiver]) -> None:
    receivers += [Receiver(statuses=(400,)), Receiver(statuses=(500, 500, 500))]
    hook = WebhookNotifier([r.url for r in receivers], timeout=5, max_retries=1, backoff=0.01)
    hook.notify([note()])
    hook.close(timeout=10)
    assert [len(r.bodies) for r in receivers] == [1, 2]  # 4xx is not retried
    assert hook.stats()["failed"] == 2 and hook.stats()["delivered"] == 0


def test_queue_full_drops_oldest(receivers: list[Receiver], caplog: pytest.LogCaptureFixture) -> None:
    r = Receiver(block=True)
    receivers.append(r)
    hook = WebhookNotifier([r.url], timeout=30, max_retries=0, queue_size=2)
    hook.notify([note(1)])
    assert r.entered.wait(30)  # window 1 is in flight, the queue is empty
    with caplog.at_level(logging.WARNING, logger="mnistops.monitor.alerts.notify"):
        for w in (2, 3, 4):
            hook.notify([note(w)])
    assert hook.pending == 2 and hook.stats()["dropped"] == 1
    assert any("queue full" in rec.getMessage() for rec in caplog.records)
    r.release.set()
    hook.close(timeout=30)
    assert [b["alerts"][0]["window"] for b in r.bodies] == [1, 3, 4]  # window 2 (oldest queued) dropped


def test_stalled_receiver_does_not_block_evaluate(tmp_path: Path, receivers: list[Receiver]) -> None:
    r = Receiver(block=True)
    receivers.append(r)
    hook = WebhookNotifier([r.url], timeout=30, max_retries=0)
    rule = AlertRule.model_validate(
        {"name": "Ood", "metric": "ood_rate", "comparator": ">", "threshold": 0.05, "severity": "warning"}
        | {"summary": "ood {value}"}
    )
    engine = AlertEngine([rule], PredictionStore(f"sqlite:///{tmp_path / 'a.db'}"), [hook])
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(engine.evaluate(0, {"ood_rate": 0.5}, "1")))
    t.start()
    t.join(30)  # generous safety net; evaluate returns while the receiver still holds the request
    assert not t.is_alive() and [e.state for e in result[0]] == ["firing"]
    assert r.entered.wait(30) and r.answered == 0  # delivery is still in flight
    r.release.set()
    engine.close(timeout=30)
    assert r.answered == 1 and hook.stats()["delivered"] == 1


def test_dead_receiver_never_blocks_and_close_gives_up() -> None:
    hook = WebhookNotifier([dead_url()], timeout=5, max_retries=5, backoff=60)
    hook.notify([note(1)])  # returns at once although nobody listens
    hook.notify([note(2)])
    hook.close(timeout=0.2)  # stops the 60 s backoff instead of waiting for it
    stats = hook.stats()
    # window 1 failed (or, on a very slow machine, was still queued and dropped); window 2 dropped
    assert stats["delivered"] == 0 and stats["failed"] + stats["dropped"] == 2 and stats["dropped"] >= 1
    hook.notify([note(3)])  # after close: counted as dropped, not queued
    assert hook.stats()["dropped"] == stats["dropped"] + 1
