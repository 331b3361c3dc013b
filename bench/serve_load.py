"""Load-generation helpers for `make bench-serve`: server subprocesses and the wrk / httpx drivers.

wrk (C, one thread) is preferred because the client shares the 2 cores with the server; without
it a multiprocess httpx client is used (slower, so its numbers under-state the server).
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
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script)]
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


def _httpx_worker(args: tuple[str, list[str], int, float]) -> tuple[list[float], int]:
    import asyncio

    import httpx

    url, bodies, conc, seconds = args

    async def main() -> tuple[list[float], int]:
        lat: list[float] = []
        errors = 0
        end = time.perf_counter() + seconds
        limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
        async with httpx.AsyncClient(limits=limits, timeout=10) as client:

            async def one(k: int) -> None:
                nonlocal errors
                i = k
                while time.perf_counter() < end:
                    t0 = time.perf_counter()
                    try:
                        r = await client.post(url, content=bodies[i % len(bodies)], headers=_JSON)
                        ok = r.status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    lat.append(time.perf_counter() - t0)
                    errors += not ok
                    i += 7

            await asyncio.gather(*(one(k) for k in range(conc)))
        return lat, errors

    return asyncio.run(main())


_JSON = {"content-type": "application/json"}


def run_httpx(
    base: str, path: str, bodies: Path, concurrency: int, seconds: float, server: str, procs: int = 2
) -> LoadResult:
    """Fallback load generator: ``procs`` processes of asyncio httpx clients."""
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np

    lines = bodies.read_text().splitlines()
    procs = max(1, min(procs, concurrency))
    shares = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(procs) as ex:
        parts = list(ex.map(_httpx_worker, [(base + path, lines, c, seconds) for c in shares]))
    wall = time.perf_counter() - t0
    lat = np.array([x for p in parts for x in p[0]]) * 1000
    errors = sum(p[1] for p in parts)
    n = len(lat)
    p50, p95, p99 = (float(np.percentile(lat, q)) for q in (50, 95, 99))
    return LoadResult(
        server, concurrency, n, min(wall, seconds), (n - errors) / seconds, p50, p95, p99, float(lat.max()),
        errors, "httpx",
    )  # fmt: skip


def have_wrk() -> bool:
    """True if the wrk binary is on PATH."""
    return shutil.which("wrk") is not None


def load_average() -> tuple[float, float, float]:
    """1/5/15-minute load averages."""
    return os.getloadavg()
