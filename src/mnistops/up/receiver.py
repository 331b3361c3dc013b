"""A loopback webhook receiver for the cluster: records every delivery, serves them back as JSON.

Alertmanager (``/hooks/<receiver>``) and the monitor's own notifier (``/alerts``) POST here; the
cluster test reads ``GET /deliveries`` to check what arrived and when. Each delivery is also
appended to a JSONL file, so nothing received is lost when the process restarts.

Run: ``python -m mnistops.up.receiver --port 9195 --out deliveries.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class Deliveries:
    """Received deliveries in memory and in an append-only JSONL file."""

    def __init__(self, out: Path) -> None:
        self.out, self._lock = out, threading.Lock()
        out.parent.mkdir(parents=True, exist_ok=True)
        lines = out.read_text().splitlines() if out.exists() else []
        self.items: list[dict[str, Any]] = [json.loads(line) for line in lines if line.strip()]

    def add(self, path: str, body: bytes) -> None:
        """Record one POST (its body parsed as JSON when it is JSON)."""
        try:
            payload: Any = json.loads(body)
        except ValueError:
            payload = body.decode("utf-8", "replace")
        item = {"received_at": time.time(), "path": path, "payload": payload}
        with self._lock, self.out.open("a") as f:
            f.write(json.dumps(item) + "\n")
            self.items.append(item)


def make_server(port: int, out: Path, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """The HTTP server (not started)."""
    store = Deliveries(out)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            store.add(self.path, self.rfile.read(n))
            self._reply(200, b'{"ok": true}')

        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/deliveries":
                self._reply(200, json.dumps(store.items).encode())
            elif self.path.split("?")[0] in ("/healthz", "/readyz"):
                self._reply(200, b'{"ok": true}')
            else:
                self._reply(404, b'{"error": "not_found"}')

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM/SIGINT."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    server = make_server(args.port, args.out)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
