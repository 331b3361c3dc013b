"""Browser-test fixtures: the real app behind a real HTTP server, and headless Debian Chromium.

The server is uvicorn in a background thread on a loopback socket we bind ourselves (port 0), so
the port is known before the server starts. It serves the session's trained model through a
fixed resolver and a fake registry (version "1", reference profile from the validation split),
so no MLflow registry is involved. Chromium is Debian's ``/usr/bin/chromium`` driven by the
Playwright python package (``playwright install`` is never run); without it the tests are skipped
with a visible reason.
"""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from helpers.processes import wait_until as wait_for
from mnistops.service.app import create_app
from mnistops.service.state import ServiceState
from mnistops.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI
    from playwright.sync_api import Browser

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class LiveServer:
    """A running app: its base URL, the FastAPI app and (once started) the service state."""

    url: str
    app: FastAPI

    @property
    def state(self) -> ServiceState:
        """The service state built by the app's lifespan."""
        state: ServiceState = self.app.state.service
        return state


@pytest.fixture
def live_server(trained_model_dir: Path, fake_registry: Any) -> Iterator[Callable[..., LiveServer]]:
    """Factory ``start(settings, on_start=None) -> LiveServer``; every server started is stopped."""
    import uvicorn

    running: list[tuple[uvicorn.Server, threading.Thread, socket.socket]] = []

    def start(settings: Settings, on_start: Callable[[ServiceState], None] | None = None) -> LiveServer:
        app = create_app(
            settings,
            resolver=lambda: ("1", trained_model_dir),
            registry_ops=fake_registry,
            on_start=on_start,
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        server = uvicorn.Server(config)
        # signal handlers are only installed in the main thread: this one leaves pytest's alone
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((server, thread, sock))
        if not wait_for(lambda: server.started or not thread.is_alive(), timeout=60):
            pytest.fail("uvicorn did not start within 60 s")
        if not server.started:
            pytest.fail("uvicorn exited during startup (see the captured log)")
        return LiveServer(url=f"http://127.0.0.1:{port}", app=app)

    yield start
    for server, thread, sock in running:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium (skipped with a reason when it or Playwright is missing)."""
    if not CHROMIUM.is_file() and shutil.which("chromium") is None:
        pytest.skip(f"{CHROMIUM} not found: install Debian's `chromium` package to run browser tests")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - playwright is a dev dependency
        pytest.skip(f"playwright python package not installed: {exc}")
    exe = CHROMIUM if CHROMIUM.is_file() else Path(str(shutil.which("chromium")))
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(exe), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def screenshot_path() -> Callable[[str], Path]:
    """``path(name)`` -> artifacts/screenshots/<name> (folder created; artifacts/ is gitignored)."""

    def path(name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS / name

    return path
