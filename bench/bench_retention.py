"""Insert latency of the prediction log while retention prunes it (SQLite by default).

A writer PROCESS commits batches of ``--writer-rows`` fresh predictions every ``--writer-period``
seconds (the shape of the API's log flush at ~3k req/s) while this process: waits ``--idle``
seconds (idle baseline), prunes ``--rows`` old predictions with the Parquet archive on, then
waits again. Writer latencies per phase, the prune's speed and its longest delete transaction go
to ``bench/results/retention.{json,md}``.

Usage: ``python bench/bench_retention.py [--rows 100000] [--url sqlite:///...]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "service"))  # the tests' row factory

from store_rows import evaluated_up_to, make_records  # noqa: E402

from mnistops.store.predictions import PredictionStore  # noqa: E402
from mnistops.store.retention import Retention, RetentionPolicy  # noqa: E402


def writer(url: str, rows: int, period: float, stop: Event, out: Connection) -> None:
    """Child process: commit ``rows`` fresh predictions every ``period`` s; send (t0, seconds) pairs."""
    store = PredictionStore(url)
    lat: list[tuple[float, float]] = []
    k = 0
    while not stop.is_set():
        recs = make_records(rows, seed=k % 50, t0=time.time())
        t0 = time.monotonic()
        store.insert_many(recs)
        lat.append((t0, time.monotonic() - t0))
        k += 1
        time.sleep(max(0.0, period - (time.monotonic() - t0)))
    out.send(lat)
    store.close()


def stats(lat: list[float]) -> dict[str, float]:
    a = np.array(lat) * 1000
    if not len(a):
        return {"n": 0}
    return {
        "n": len(a),
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
    }


def fill(store: PredictionStore, n: int) -> None:
    for i in range(0, n, 2000):
        store.insert_many(make_records(min(2000, n - i), seed=i // 2000 % 50, t0=1000.0 + i))
    store.insert_window(evaluated_up_to(store.max_seq()))


def main() -> None:
    """Run the benchmark (see module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="old predictions to prune")
    ap.add_argument("--batch-rows", type=int, default=1000)
    ap.add_argument("--url", help="database URL (default: a SQLite file in a temp dir)")
    ap.add_argument("--writer-rows", type=int, default=64)
    ap.add_argument("--writer-period", type=float, default=0.02)
    ap.add_argument("--idle", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-retention-") as t:
        tmp = Path(t)
        url = args.url or f"sqlite:///{tmp / 'predictions.db'}"
        store = PredictionStore(url)
        print(f"filling {url} with {args.rows} predictions ...", flush=True)
        fill(store, args.rows)
        ctx = mp.get_context("spawn")
        stop, (recv, send) = ctx.Event(), ctx.Pipe(duplex=False)
        proc = ctx.Process(target=writer, args=(url, args.writer_rows, args.writer_period, stop, send))
        proc.start()
        time.sleep(args.idle)
        policy = RetentionPolicy(max_age_seconds=3600.0, batch_rows=args.batch_rows, archive_dir=tmp / "arch")
        start = time.monotonic()
        report = Retention(store, policy).run()
        end = time.monotonic()
        time.sleep(args.idle)
        stop.set()
        lat = recv.recv()
        proc.join(30)
        archive_mb = sum(p.stat().st_size for p in (tmp / "arch").glob("*.parquet")) / 1e6
    idle = [d for t0, d in lat if t0 < start or t0 > end]
    during = [d for t0, d in lat if start <= t0 <= end]
    result = {
        "url": "sqlite (temp file)" if args.url is None else "given",
        "rows_pruned": report.pruned,
        "prune_seconds": end - start,
        "rows_per_second": report.pruned / (end - start),
        "batches": len(report.delete_ms),
        "delete_tx_ms": stats([ms / 1000 for ms in report.delete_ms]),
        "archive_mb": archive_mb,
        "writer": {"rows_per_commit": args.writer_rows, "period_s": args.writer_period},
        "insert_idle": stats(idle),
        "insert_during_prune": stats(during),
        "load_avg": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    md = _markdown(result)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "retention.json").write_text(json.dumps(result, indent=1))
    (args.out / "retention.md").write_text(md + "\n")


def _markdown(r: dict[str, object]) -> str:
    i, d, tx = r["insert_idle"], r["insert_during_prune"], r["delete_tx_ms"]
    assert isinstance(i, dict) and isinstance(d, dict) and isinstance(tx, dict)
    return (
        "| writer commit (64 rows) | commits | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|\n"
        f"| idle | {i['n']} | {i['p50_ms']:.2f} | {i['p99_ms']:.2f} | {i['max_ms']:.2f} |\n"
        f"| during the prune | {d['n']} | {d['p50_ms']:.2f} | {d['p99_ms']:.2f} | {d['max_ms']:.2f} |\n\n"
        f"Pruned {r['rows_pruned']} predictions in {r['prune_seconds']:.1f} s "
        f"({r['rows_per_second']:.0f} rows/s, {r['batches']} batches, Parquet archive "
        f"{r['archive_mb']:.1f} MB); delete tx p50 {tx['p50_ms']:.1f} ms, max {tx['max_ms']:.1f} ms. "
        f"{r['url']}, {r['cpus']} CPUs, load average {r['load_avg'][0]:.1f} at the end."  # type: ignore[index]
    )


if __name__ == "__main__":
    main()
