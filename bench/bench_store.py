"""Store plumbing timings: migrations, the re-open check, locks, leader fail-over after SIGKILL.

Runs on SQLite (a temporary file) and, given a PostgreSQL URL, on a scratch schema there (dropped
afterwards). Prints medians; nothing here is a test threshold.

    .venv/bin/python bench/bench_store.py [--postgres postgresql+psycopg://user@host:port/db] [--repeats N]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from mnistops.settings import Settings
from mnistops.store.engine import normalize_url
from mnistops.store.lock import LeaderLease, locked
from mnistops.store.predictions import PredictionStore


def _median_ms(fn: Callable[[], object], n: int) -> float:
    xs = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        xs.append((time.perf_counter() - t0) * 1000)
    return statistics.median(xs)


def _lead(home: str, url: str, ready: Any) -> None:
    lease = LeaderLease(Settings(home=Path(home), database_url=url), "bench")
    assert lease.try_acquire()
    ready.set()
    while True:  # until SIGKILL
        time.sleep(0.2)


def _failover_ms(tmp: Path, url: str) -> float:
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    leader = ctx.Process(target=_lead, args=(str(tmp / "shared"), url, ready))
    leader.start()
    standby = LeaderLease(Settings(home=tmp / "shared", database_url=url), "bench")
    try:
        assert ready.wait(60) and not standby.try_acquire()
        os.kill(leader.pid or 0, signal.SIGKILL)
        t0 = time.perf_counter()
        while not standby.try_acquire():
            time.sleep(0.01)
        return (time.perf_counter() - t0) * 1000
    finally:
        leader.join(30)
        standby.release()


def bench(url: str, tmp: Path, repeats: int) -> dict[str, float]:
    """Timings of one backend (milliseconds)."""
    t0 = time.perf_counter()
    PredictionStore(url).migrate()
    fresh = (time.perf_counter() - t0) * 1000
    settings = Settings(home=tmp / "shared", database_url=url)

    def lock() -> None:
        with locked(settings, "bench"):
            pass

    return {
        "fresh migrate": fresh,
        "re-open check": _median_ms(lambda: PredictionStore(url).migrate(), 20),
        "locked() enter+exit": _median_ms(lock, 50),
        "fail-over after SIGKILL": statistics.median(_failover_ms(tmp, url) for _ in range(repeats)),
    }


def main() -> None:
    """Run on SQLite and optionally PostgreSQL; print a table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--postgres", default=os.environ.get("MNISTOPS_TEST_POSTGRES_URL"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows["sqlite"] = bench(f"sqlite:///{tmp / 'ops.db'}", tmp / "sqlite", args.repeats)
        if args.postgres:
            base = normalize_url(args.postgres)
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(base)
            with admin.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            try:
                url = base.update_query_dict({"options": f"-csearch_path={schema}"})
                rows["postgres"] = bench(url.render_as_string(False), tmp / "pg", args.repeats)
            finally:
                with admin.begin() as conn:
                    conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
                admin.dispose()
    names = list(rows)
    print("| median, ms | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for metric in rows["sqlite"]:
        print(f"| {metric} | " + " | ".join(f"{rows[n][metric]:.1f}" for n in names) + " |")


if __name__ == "__main__":
    main()
