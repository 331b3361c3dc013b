"""Real-process helpers: is a pid still running, wait for a condition, pids written by test children."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    return True


def wait_until(cond: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll ``cond`` until true or ``timeout`` seconds passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


def read_pids(path: Path) -> list[int]:
    """Pids a test child appended to ``path``, one per line."""
    if not path.exists():
        return []
    return [int(x) for x in path.read_text().split()]


def stop_process(
    proc: subprocess.Popen[bytes], log: object, sig: int = signal.SIGTERM, timeout: float = 60.0
) -> int:
    """Send ``sig``, wait (SIGKILL only if it hangs past ``timeout``), close its log; the exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    close = getattr(log, "close", None)
    if close is not None:
        close()
    return int(proc.returncode)
