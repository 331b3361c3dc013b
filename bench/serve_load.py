"""Load-generation helpers for `make bench-serve`: server subprocesses and the wrk driver.

wrk (C, one thread) is the only client: it shares the cores with the server, so a slower Python
client would under-state every server differently. Without wrk the bench stops (``require_wrk``);
``make bench-serve`` installs it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

WRK_LUA = r"""
local bodies, idx, path = {}, 0, "/v1/predict"
init = function(args)
  path = args[2] or path
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  idx = math.random(#bodies)
end
request = function()
  idx = idx % #bodies + 1
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, bodies[idx])
end
done = function(s, lat, req)
  local e = s.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_s":%f,"errors":%d,"p50_ms":%f,"p95_ms":%f,"p99_ms":%f,"max_ms":%f}\n',
    s.requests, s.duration / 1e6, e.connect + e.read + e.write + e.status + e.timeout,
    lat:percentile(50) / 1e3, lat:percentile(95) / 1e3, lat:percentile(99) / 1e3, lat.max / 1e3))
end
"""


@dataclass
class LoadResult:
    """One load level against one server."""

    server: str
    concurrency: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    tool: str

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict."""
        return asdict(self)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    """Poll ``url`` until it answers 200 (or the process dies / time runs out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before becoming ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


def start(cmd: Sequence[str], env: dict[str, str], ready_url: str, log: Path) -> subprocess.Popen[bytes]:
    """Start a server subprocess (output to ``log``) and wait for its readiness URL."""
    fh = log.open("wb")
    proc = subprocess.Popen(list(cmd), env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_ready(ready_url, proc)
    except Exception:
        stop(proc)
        sys.stderr.write(log.read_text(errors="replace")[-3000:])
        raise
    return proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM (graceful: the service flushes its log), then SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def run_wrk(
    base: str, path: str, bodies: Path, concurrency: int, seconds: float, workdir: Path, server: str
) -> LoadResult:
    """One closed-loop wrk run (1 client thread: the client must leave CPU to the server)."""
    script = workdir / "post.lua"
    script.write_text(WRK_LUA)
    cmd = [require_wrk(), "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script)]
    out = subprocess.run([*cmd, base, "--", str(bodies), path], capture_output=True, text=True, check=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary:\n{out.stdout}\n{out.stderr}")
    d = json.loads(line[len("WRKJSON ") :])
    ok = d["requests"] - d["errors"]
    return LoadResult(
        server,
        concurrency,
        d["requests"],
        d["duration_s"],
        ok / d["duration_s"],
        d["p50_ms"],
        d["p95_ms"],
        d["p99_ms"],
        d["max_ms"],
        d["errors"],
        "wrk",
    )


def require_wrk() -> str:
    """Path of the wrk binary; exits with a readable error when it is missing (never falls back)."""
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(
            "bench-serve needs wrk: `apt-get install -y wrk` (Debian; `make bench-serve` installs it as root)"
        )
    return path


def load_average() -> tuple[float, float, float]:
    """1/5/15-minute load averages."""
    return os.getloadavg()
