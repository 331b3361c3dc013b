"""`mnistops up` with the real Procfile: every role comes up healthy, the pages answer, SIGTERM stops all."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers.processes import pid_alive, wait_until
from mnistops.demo.topology import (
    LoopDemoConfig,
    Ports,
    health_urls,
    loop_env,
    seed_registry,
    start_up,
    stop_up,
)
from mnistops.settings import Settings
from mnistops.training.data import Mnist

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def roles(
    settings: Settings, mnist: Mnist, trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str], Path]]:
    home = tmp_path_factory.mktemp("up-home")
    env = loop_env(settings, home, Ports.pick(settings, standard=False), LoopDemoConfig())
    seed_registry(env, trained_model_dir, mnist)
    log = home / "up.log"
    proc = start_up(env, log)  # returns once serve's /readyz and every role's /healthz answer 200
    yield proc, env, log
    stop_up(proc)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_every_role_is_healthy_and_the_pages_answer(
    roles: tuple[subprocess.Popen[bytes], dict[str, str], Path],
) -> None:
    proc, env, log = roles
    assert all(httpx.get(u, timeout=5).status_code == 200 for u in health_urls(env))
    base = f"http://127.0.0.1:{env['MNISTOPS_PORT']}"
    for page in ("/", "/dashboard", "/docs"):
        assert httpx.get(base + page, timeout=10).status_code == 200, page
    text = log.read_text()
    for role in ("serve", "monitor", "controller", "worker"):
        assert re.search(rf"^\d\d:\d\d:\d\d up +\| {role} started \(pid", text, re.M), text
        assert f"{role} exited" not in text, text  # nothing crashed on the way up
    assert re.search(rf"\| dashboard +{base}/dashboard$", text, re.M), text
    assert len(_children(proc.pid)) == 4


def test_sigterm_to_up_stops_every_role_cleanly(
    roles: tuple[subprocess.Popen[bytes], dict[str, str], Path],
) -> None:
    proc, _, log = roles
    kids = _children(proc.pid)
    stop_up(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert wait_until(lambda: not any(pid_alive(p) for p in kids), 10)
    assert "still running: SIGKILL" not in log.read_text()  # every role stopped within the grace
