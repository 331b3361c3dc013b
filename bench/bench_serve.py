"""`make bench-serve`: the real service vs a naive FastAPI + PyTorch baseline, in one run.

1. A temporary home with its own MLflow store: train a model (or copy ``--model-dir``), register
   and promote it, exactly as production does.
2. Start ``python -m mnistops serve`` (prediction log ON, SQLite WAL under the temp home) and
   ``bench/naive_server.py`` (eager torch, one synchronous SQLite insert + commit per request) in
   turn, and drive each with single-image JSON predictions of real MNIST test digits at several
   concurrency levels (wrk on loopback; a multiprocess httpx client if wrk is missing).
3. After the service stops (SIGTERM), count its logged rows: every 200 must be in the store.
4. Print a table and write ``bench/results/serve.md`` (for the README) and ``serve.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from mnistops.settings import Settings
from mnistops.training.data import FILES, load_mnist
from serve_load import LoadResult, have_wrk, load_average, run_httpx, run_wrk, start, stop

REPO = Path(__file__).resolve().parents[1]
TARGET_RPS, TARGET_P99_MS, TARGET_CONC, TARGET_RATIO = 800.0, 25.0, 8, 3.0


def prepare_home(tmp: Path, model_dir: Path | None) -> tuple[Settings, str, Path]:
    """Temp home + MLflow store with a registered, promoted champion; returns (settings, version, dir)."""
    from mnistops.registry.core import Registry

    data = tmp / "data"
    data.mkdir()
    src = Path(os.environ.get("MNISTOPS_DATA_DIR", REPO / ".mnistops" / "data"))
    for name in FILES:  # same verified idx files; MLflow artifacts stay in the temp home
        (data / name).symlink_to((src / name).resolve())
    s = Settings(home=tmp, data_dir=data, tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    s.ensure_dirs()
    dest = tmp / "models" / "bench"
    if model_dir is None:
        from mnistops.training.train import TrainConfig, run_training

        print("training a model (one epoch) ...", flush=True)
        run_training(TrainConfig(seed=0), s, out_dir=dest, track=True, progress=False)
    else:
        shutil.copytree(model_dir, dest)
        metrics = json.loads((dest / "metrics.json").read_text())
        metrics.pop("run_id", None)  # its run lives in another store: registration makes a new one
        (dest / "metrics.json").write_text(json.dumps(metrics))
    reg = Registry(s)
    version = reg.register(dest, profile=False)
    reg.promote(version, actor="bench", reason="bench-serve", force=True)
    return s, version, dest


def write_bodies(settings: Settings, path: Path, n: int = 1000) -> None:
    """JSON lines of ``{"pixels": 28x28}`` for the first ``n`` MNIST test digits."""
    x = load_mnist(settings.data_path).test_images[:n].numpy()
    path.write_text("".join(json.dumps({"pixels": img.tolist()}, separators=(",", ":")) + "\n" for img in x))


def service_env(s: Settings) -> dict[str, str]:
    """Environment for ``mnistops serve`` pointing at the temp home (no stray MNISTOPS_* vars)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNISTOPS_")}
    env.update(
        MNISTOPS_HOME=str(s.home),
        MNISTOPS_DATA_DIR=str(s.data_path),
        MNISTOPS_TRACKING_URI=str(s.tracking),
        PYTHONPATH=str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def drive(
    name: str, base: str, bodies: Path, levels: list[int], seconds: float, tmp: Path
) -> list[LoadResult]:
    """A 3-second warm-up at concurrency 8 (discarded), then one run per concurrency level."""

    def once(c: int, dur: float) -> LoadResult:
        if have_wrk():
            return run_wrk(base, "/v1/predict", bodies, c, max(1, round(dur)), tmp, name)
        return run_httpx(base, "/v1/predict", bodies, c, dur, name)

    once(8, 3.0)
    out: list[LoadResult] = []
    for c in levels:
        r = once(c, seconds)
        out.append(r)
        print(
            f"  {name:8s} c={c:<3d} {r.rps:8.1f} req/s  p50 {r.p50_ms:6.2f}  p95 {r.p95_ms:6.2f}"
            f"  p99 {r.p99_ms:6.2f} ms  errors {r.errors}  (load {load_average()[0]:.1f})",
            flush=True,
        )
    return out


def table(rows: list[LoadResult], naive: dict[int, LoadResult]) -> str:
    """Markdown table of every run, with the throughput ratio to the naive server."""
    lines = [
        "| server | concurrency | req/s | p50 ms | p95 ms | p99 ms | errors | vs naive |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = ""
        if r.server.startswith("mnistops") and r.concurrency in naive and naive[r.concurrency].rps > 0:
            ratio = f"{r.rps / naive[r.concurrency].rps:.1f}x"
        lines.append(
            f"| {r.server} | {r.concurrency} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p95_ms:.2f} | "
            f"{r.p99_ms:.2f} | {r.errors} | {ratio} |"
        )
    return "\n".join(lines)


def run_service(
    s: Settings, workers: int, args: argparse.Namespace, bodies: Path, tmp: Path
) -> list[LoadResult]:
    """Start ``mnistops serve`` on a fresh prediction log, drive it, SIGTERM it, check the log."""
    db = tmp / f"predictions-w{workers}.db"
    env = {**service_env(s), "MNISTOPS_DATABASE_URL": f"sqlite:///{db}"}
    name = f"mnistops w={workers}"
    base = f"http://127.0.0.1:{args.port}"
    print(f"{name}: mnistops serve --workers {workers}, prediction log {db.name} ...", flush=True)
    cmd = [sys.executable, "-m", "mnistops", "serve", "--port", str(args.port), "--workers", str(workers)]
    proc = start(cmd, env, base + "/readyz", tmp / f"serve-w{workers}.log")
    rows = drive(name, base, bodies, args.levels, args.seconds, tmp)
    rc = stop(proc)
    logged = _count_logged(f"sqlite:///{db}")
    ok = sum(r.requests - r.errors for r in rows)
    LOGGED[name] = {"exit_code": rc, "rows_logged": logged, "ok_responses_measured": ok}
    print(f"  {name}: exit {rc}, {logged} rows logged for {ok} measured 200s (+ warm-up)", flush=True)
    return rows


LOGGED: dict[str, dict[str, int]] = {}


def main() -> None:
    """Run the benchmark (see module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, help="trained model folder (default: train one)")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each level")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated levels")
    ap.add_argument("--workers", default="1,2", help="comma-separated uvicorn worker counts to measure")
    ap.add_argument("--port", type=int, default=18731)
    ap.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    args.levels = [int(c) for c in args.concurrency.split(",")]
    worker_counts = [int(w) for w in args.workers.split(",")]
    load_before = load_average()
    rows: list[LoadResult] = []
    naive: dict[int, LoadResult] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as t:
        tmp = Path(t)
        s, version, model_dir = prepare_home(tmp, args.model_dir)
        print(f"champion: version {version} of {s.model_name} in {s.tracking}", flush=True)
        bodies = tmp / "bodies.jsonl"
        write_bodies(s, bodies)
        load_before = load_average()
        for w in worker_counts:
            rows += run_service(s, w, args, bodies, tmp)
        if not args.no_naive:
            print("naive baseline (eager torch + sqlite commit per request, 1 worker) ...", flush=True)
            port = args.port + 1
            ncmd = [
                sys.executable,
                str(REPO / "bench" / "naive_server.py"),
                "--model",
                str(model_dir / "model.pt"),
            ]
            ncmd += ["--db", str(tmp / "naive.db"), "--port", str(port)]
            nproc = start(ncmd, service_env(s), f"http://127.0.0.1:{port}/readyz", tmp / "naive.log")
            nrows = drive("naive", f"http://127.0.0.1:{port}", bodies, args.levels, args.seconds, tmp)
            stop(nproc)
            naive = {r.concurrency: r for r in nrows}
            rows += nrows
    load_after = load_average()
    md = table(rows, naive)
    verdicts = [
        _verdict(name, next((r for r in rows if r.server == name and r.concurrency == TARGET_CONC), None),
                 naive.get(TARGET_CONC))
        for name in LOGGED
    ]  # fmt: skip
    tool = rows[0].tool if rows else None
    info = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "tool": tool,
        "seconds_per_level": args.seconds,
        "load_avg_before": load_before,
        "load_avg_after": load_after,
        "prediction_log": LOGGED,
        "verdicts": verdicts,
    }
    print()
    print(md)
    print()
    print("\n".join(verdicts))
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} CPUs")
    args.out.mkdir(parents=True, exist_ok=True)
    logged = "; ".join(f"{k}: {v['rows_logged']} rows logged for {v['ok_responses_measured']} measured 200s"
                       for k, v in LOGGED.items())  # fmt: skip
    note = (
        "\n\n" + "\n".join(f"- {v}" for v in verdicts) + "\n\n"
        f"Single-image JSON `POST /v1/predict` (real MNIST test digits), prediction log ON (SQLite WAL), "
        f"{args.seconds:.0f} s per level after a 3 s warm-up, {tool} (1 thread) on loopback, "
        f"{os.cpu_count()} CPUs shared with other jobs: load average {load_before[0]:.1f} before / "
        f"{load_after[0]:.1f} after. `w` = uvicorn workers; the naive server runs 1 worker. "
        f"Prediction log checked after SIGTERM ({logged}; the extra rows are the warm-up).\n"
    )
    (args.out / "serve.md").write_text(md + note)
    (args.out / "serve.json").write_text(json.dumps({"runs": [r.to_dict() for r in rows], **info}, indent=1))
    print(f"wrote {args.out / 'serve.md'} and serve.json")


def _count_logged(url: str) -> int:
    from mnistops.store.predictions import PredictionStore

    store = PredictionStore(url)
    try:
        return store.count()
    finally:
        store.close()


def _verdict(name: str, target: LoadResult | None, naive: LoadResult | None) -> str:
    if target is None:
        return f"{name}: target not measured (no run at concurrency {TARGET_CONC})"
    ok_rps, ok_p99 = target.rps >= TARGET_RPS, target.p99_ms < TARGET_P99_MS
    ratio = target.rps / naive.rps if naive and naive.rps > 0 else float("nan")
    ok_ratio = ratio >= TARGET_RATIO
    mark = {True: "PASS", False: "MISS"}
    return (
        f"{name} at c={TARGET_CONC}: {target.rps:.0f} req/s (>= {TARGET_RPS:.0f}: {mark[ok_rps]}), "
        f"p99 {target.p99_ms:.1f} ms (< {TARGET_P99_MS:.0f}: {mark[ok_p99]}), "
        f"{ratio:.1f}x naive (>= {TARGET_RATIO:.0f}x: {mark[ok_ratio]})"
    )


if __name__ == "__main__":
    main()
