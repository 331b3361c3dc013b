"""What every long-running role shares: background services, stop signals, /metrics + /healthz.

:class:`BackgroundService` is the one thread lifecycle of the project (start / stop / health): a
named daemon thread that calls :meth:`BackgroundService.step` every ``interval`` seconds until
stopped; a failing step is logged and counted, never fatal. :class:`RoleEndpoint` serves a role's
Prometheus registry on ``/metrics`` and its health on ``/healthz`` (the monitor, controller and
worker; the API replica has its own routes). :func:`stop_on_signals` turns SIGTERM/SIGINT into an
event so a role finishes its current step and exits cleanly.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Health:
    """A background service's health, as ``/healthz`` reports it."""

    name: str
    alive: bool  # the thread runs
    steps: int  # steps completed without error
    errors: int  # steps that raised
    last_ok: float | None  # epoch seconds of the last good step
    last_error: str | None  # the last step's error, cleared by a good step


class BackgroundService:
    """A daemon thread running :meth:`step` every ``interval`` seconds (override :meth:`step`).

    Args:
        name: thread name and health label.
        interval: seconds between steps (the first step runs at once).
    """

    def __init__(self, name: str, interval: float) -> None:
        self.name, self.interval = name, float(interval)
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._steps = self._errors = 0
        self._last_ok: float | None = None
        self._last_error: str | None = None

    def step(self) -> None:
        """One unit of work (subclasses override); an exception is logged and the loop goes on."""
        raise NotImplementedError

    def run(self) -> None:
        """The thread's body: steps until stopped (override for a different loop shape)."""
        while not self.stopping.is_set():
            self.run_step()
            self.stopping.wait(self.interval)

    def run_step(self) -> bool:
        """Run :meth:`step` once with error accounting; True if it succeeded."""
        try:
            self.step()
        except Exception as exc:
            self._errors += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            log.exception("%s: step failed", self.name)
            return False
        self._steps += 1
        self._last_ok, self._last_error = time.time(), None
        return True

    def start(self) -> Self:
        """Start the thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self.stopping.clear()
            self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop and wait up to ``timeout`` seconds for its current step."""
        self.stopping.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """True while the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def health(self) -> Health:
        """Current health (cheap; safe from any thread)."""
        return Health(self.name, self.running, self._steps, self._errors, self._last_ok, self._last_error)


HealthFn = Callable[[], dict[str, object]]


class RoleEndpoint:
    """``/metrics`` (the role's registry) and ``/healthz`` (JSON, 503 when unhealthy) on one port.

    Args:
        port: TCP port on ``host``; 0 picks a free one (see :attr:`port` after :meth:`start`).
        registry: the role's Prometheus registry.
        health: returns a JSON-ready dict with a boolean ``ok``.
        host: bind address.
    """

    def __init__(
        self, port: int, registry: CollectorRegistry, health: HealthFn, host: str = "127.0.0.1"
    ) -> None:
        self.registry, self.health = registry, health
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/metrics":
                    self._send(200, generate_latest(endpoint.registry), CONTENT_TYPE_LATEST)
                elif self.path.split("?")[0] in ("/healthz", "/readyz"):
                    h = endpoint.health()
                    body = json.dumps(h, default=str).encode()
                    self._send(200 if h.get("ok") else 503, body, "application/json")
                else:
                    self._send(404, b'{"error": "not_found"}', "application/json")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # scrapes every few seconds: keep logs quiet
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="role-http", daemon=True)

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    def start(self) -> Self:
        """Serve in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()


def health_dict(*services: BackgroundService, **extra: object) -> dict[str, object]:
    """``/healthz`` body: ok when every service's thread is alive, with each one's health."""
    hs = [s.health() for s in services]
    return {"ok": all(h.alive for h in hs), "services": [asdict(h) for h in hs], **extra}


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (call from the main thread of a role's process)."""

    def handler(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
