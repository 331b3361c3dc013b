"""`make bench-serve`: mnistops vs `mlflow models serve` vs a naive FastAPI + PyTorch server, one run.

1. A temporary home with its own MLflow store: train a model (or copy ``--model-dir``), register
   and promote it, exactly as production does.
2. In turn (see :mod:`serve_servers`): ``mnistops serve`` with its prediction log (SQLite WAL) in
   both durability modes (``process``, ``power``) and with 1 and 2 workers; ``naive_server.py``;
   ``mlflow models serve`` on the same registered version. Each gets the same MNIST test digits
   (MLflow in its ``/invocations`` format), a 3 s warm-up at c=8, then each concurrency level, with
   wrk (required: never a silent fallback).
3. The row "retrain running in the worker" (:mod:`serve_retrain`): one mnistops worker at c=8,
   idle and while ``mnistops worker run`` trains a queued job.
4. After each mnistops server stops (SIGTERM), its rows are counted: every 200 must be logged.
5. A table with throughput ratios vs mlflow and naive, the goal verdicts, ``bench/results/serve.md``
   (for the README) and ``serve.json``.

Goals (bench figures, not tests): one API worker, c=8, ``process`` mode: >= 3x the throughput of
``mlflow models serve`` and p99 <= 10 ms; p99 while a job trains in the worker <= 3x idle p99.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from mnistops.settings import Settings
from mnistops.training.data import FILES
from serve_load import LoadResult, load_average, require_wrk, run_wrk, stop
from serve_retrain import retrain_rows
from serve_servers import Payloads, start_mlflow, start_mnistops, start_naive, write_payloads

REPO = Path(__file__).resolve().parents[1]
GOAL_CONC, GOAL_RATIO, GOAL_P99_MS, GOAL_RETRAIN_P99_RATIO = 8, 3.0, 10.0, 3.0
GOAL_ROW = "mnistops w=1 process"
MLFLOW, NAIVE = "mlflow models serve", "naive"


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


class Bench:
    """One bench run: the shared home, payloads, arguments and every row measured so far."""

    def __init__(self, s: Settings, version: str, model_dir: Path, args: argparse.Namespace) -> None:
        self.s, self.version, self.model_dir, self.args = s, version, model_dir, args
        self.tmp = Path(s.home)
        self.payloads: Payloads = write_payloads(s, self.tmp)
        self.rows: list[LoadResult] = []
        self.logged: dict[str, dict[str, int]] = {}
        self.retrain: dict[str, Any] = {"measured": False, "reason": "not run (--no-retrain)"}

    def once(self, name: str, port: int, path: str, bodies: Path, c: int, seconds: float) -> LoadResult:
        r = run_wrk(f"http://127.0.0.1:{port}", path, bodies, c, max(1, round(seconds)), self.tmp, name)
        print(
            f"  {name:42s} c={c:<3d} {r.rps:8.1f} req/s  p50 {r.p50_ms:6.2f}  p95 {r.p95_ms:6.2f}"
            f"  p99 {r.p99_ms:6.2f} ms  errors {r.errors}  (load {load_average()[0]:.1f})",
            flush=True,
        )
        return r

    def drive(self, name: str, port: int, path: str, bodies: Path) -> list[LoadResult]:
        """3 s warm-up at c=8 (discarded), then one run per concurrency level."""
        self.once(f"{name} (warm-up)", port, path, bodies, 8, 3.0)
        return [self.once(name, port, path, bodies, c, self.args.seconds) for c in self.args.levels]

    def mnistops(self, workers: int, durability: str, *, retrain: bool = False) -> None:
        """One ``mnistops serve`` configuration; its log is checked after SIGTERM."""
        name = f"mnistops w={workers} {durability}"
        db = self.tmp / f"predictions-w{workers}-{durability}.db"
        url, port = f"sqlite:///{db}", self.args.port
        print(f"{name}: mnistops serve --workers {workers}, MNISTOPS_DURABILITY={durability} ...", flush=True)
        log = self.tmp / f"serve-{workers}-{durability}.log"
        proc = start_mnistops(self.s, port, workers, durability, url, log)
        try:
            rows = self.drive(name, port, "/v1/predict", self.payloads.pixels)
            if retrain:

                def drive(row: str, c: int, seconds: float) -> LoadResult:
                    return self.once(row, port, "/v1/predict", self.payloads.pixels, c, seconds)

                extra, self.retrain = retrain_rows(self.s, url, name, self.args.seconds, drive, self.tmp)
                rows += extra
                shown = {k: v for k, v in self.retrain.items() if k != "worker_log"}
                print(f"  retrain row: {json.dumps(shown)}", flush=True)
        finally:
            rc = stop(proc)
        self.rows += rows
        logged, ok = _count_logged(url), sum(r.requests - r.errors for r in rows)
        self.logged[name] = {"exit_code": rc, "rows_logged": logged, "ok_responses_measured": ok}
        print(f"  {name}: exit {rc}, {logged} rows logged for {ok} measured 200s (+ warm-up)", flush=True)

    def other(self, name: str) -> None:
        """The naive baseline or mlflow models serve (one worker each)."""
        port = self.args.port + 1
        print(f"{name} ...", flush=True)
        if name == NAIVE:
            proc = start_naive(self.s, port, self.model_dir, self.tmp)
            path, bodies = "/v1/predict", self.payloads.pixels
        else:
            proc = start_mlflow(self.s, port, self.version, self.tmp)
            path, bodies = "/invocations", self.payloads.mlflow
        try:
            self.rows += self.drive(name, port, path, bodies)
        finally:
            stop(proc)


def _count_logged(url: str) -> int:
    from mnistops.store.predictions import PredictionStore

    store = PredictionStore(url)
    try:
        return store.count()
    finally:
        store.close()


def _at(rows: list[LoadResult], name: str, c: int) -> LoadResult | None:
    return next((r for r in rows if r.server == name and r.concurrency == c), None)


def table(rows: list[LoadResult]) -> str:
    """Markdown table of every run, with throughput ratios to mlflow and naive at the same level."""
    lines = [
        "| server | concurrency | req/s | p50 ms | p95 ms | p99 ms | errors | vs mlflow | vs naive |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratios = []
        for ref_name in (MLFLOW, NAIVE):
            ref = _at(rows, ref_name, r.concurrency)
            mine = r.server.startswith("mnistops")
            ratios.append(f"{r.rps / ref.rps:.1f}x" if mine and ref is not None and ref.rps > 0 else "")
        lines.append(
            f"| {r.server} | {r.concurrency} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p95_ms:.2f} | "
            f"{r.p99_ms:.2f} | {r.errors} | {ratios[0]} | {ratios[1]} |"
        )
    return "\n".join(lines)


def verdicts(rows: list[LoadResult], retrain: dict[str, Any]) -> list[str]:
    """The goal lines: mnistops vs mlflow at c=8 (both durability modes), and the retrain row."""
    mark = {True: "PASS", False: "MISS"}
    out = []
    ref = _at(rows, MLFLOW, GOAL_CONC)
    for name in (GOAL_ROW, "mnistops w=1 power"):
        r = _at(rows, name, GOAL_CONC)
        if r is None or ref is None or ref.rps <= 0:
            out.append(f"{name} vs {MLFLOW} at c={GOAL_CONC}: not measured")
            continue
        ratio = r.rps / ref.rps
        goal = " (goal)" if name == GOAL_ROW else ""
        out.append(
            f"{name} at c={GOAL_CONC}{goal}: {r.rps:.0f} req/s = {ratio:.1f}x {MLFLOW} ({ref.rps:.0f} req/s, "
            f"p99 {ref.p99_ms:.1f} ms) (>= {GOAL_RATIO:.0f}x: {mark[ratio >= GOAL_RATIO]}), "
            f"p99 {r.p99_ms:.1f} ms (<= {GOAL_P99_MS:.0f}: {mark[r.p99_ms <= GOAL_P99_MS]})"
        )
    idle = _at(rows, f"{GOAL_ROW}, idle", 8)
    busy = _at(rows, f"{GOAL_ROW}, retrain in the worker", 8)
    if idle is None or busy is None or not retrain.get("measured"):
        out.append(f"retrain running in the worker: not measured ({retrain.get('reason', '?')})")
    else:
        k = busy.p99_ms / idle.p99_ms if idle.p99_ms > 0 else float("inf")
        whole = "" if retrain.get("job_running_whole_measurement") else " [the job ended before the run did]"
        out.append(
            f"retrain running in the worker (w=1, c=8): p99 {busy.p99_ms:.1f} ms = {k:.1f}x idle p99 "
            f"{idle.p99_ms:.1f} ms (<= {GOAL_RETRAIN_P99_RATIO:.0f}x: {mark[k <= GOAL_RETRAIN_P99_RATIO]}); "
            f"{busy.rps:.0f} vs {idle.rps:.0f} req/s idle{whole}"
        )
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, help="trained model folder (default: train one)")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each level")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated levels")
    ap.add_argument("--port", type=int, default=18731)
    ap.add_argument("--no-two-workers", action="store_true", help="skip mnistops w=2")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    ap.add_argument("--no-mlflow", action="store_true", help="skip mlflow models serve")
    ap.add_argument("--no-retrain", action="store_true", help="skip the retrain-in-the-worker row")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    args.levels = [int(c) for c in args.concurrency.split(",")]
    return args


def main() -> None:
    """Run the benchmark (see module docstring)."""
    args = parse_args()
    require_wrk()  # before minutes of training: fail loudly and at once
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as t:
        s, version, model_dir = prepare_home(Path(t), args.model_dir)
        print(f"champion: version {version} of {s.model_name} in {s.tracking}", flush=True)
        bench = Bench(s, version, model_dir, args)
        load_before = load_average()
        bench.mnistops(1, "process", retrain=not args.no_retrain)
        bench.mnistops(1, "power")
        if not args.no_two_workers:
            bench.mnistops(2, "process")
        for name, skip in ((MLFLOW, args.no_mlflow), (NAIVE, args.no_naive)):
            if not skip:
                bench.other(name)
        load_after = load_average()
    write_results(bench, args, load_before, load_after)


def write_results(
    bench: Bench, args: argparse.Namespace, load_before: tuple[float, ...], load_after: tuple[float, ...]
) -> None:
    """Print the table and verdicts; write serve.md and serve.json."""
    md, lines = table(bench.rows), verdicts(bench.rows, bench.retrain)
    print(f"\n{md}\n\n" + "\n".join(lines))
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} CPUs")
    logged = "; ".join(f"{k}: {v['rows_logged']} rows logged for {v['ok_responses_measured']} measured 200s"
                       for k, v in bench.logged.items())  # fmt: skip
    note = (
        "\n\n" + "\n".join(f"- {v}" for v in lines) + "\n\n"
        f"Single-image JSON predictions of real MNIST test digits (mnistops and naive: `POST /v1/predict` "
        f'`{{"pixels": 28x28}}`; mlflow: `POST /invocations` `{{"inputs": [28x28]}}`, same images, same '
        f"registered version), {args.seconds:.0f} s per level after a 3 s warm-up, wrk (1 thread) on "
        f"loopback, {os.cpu_count()} CPUs shared with other jobs: load average {load_before[0]:.1f} before / "
        f"{load_after[0]:.1f} after. `w` = uvicorn workers (mlflow and naive: 1); process / power = "
        f"`MNISTOPS_DURABILITY`. Prediction log checked after SIGTERM ({logged}; the extra rows are the "
        f"warm-up).\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.md").write_text(md + note)
    info = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "tool": "wrk",
        "seconds_per_level": args.seconds,
        "load_avg_before": load_before,
        "load_avg_after": load_after,
        "prediction_log": bench.logged,
        "retrain": bench.retrain,
        "verdicts": lines,
    }
    runs = [r.to_dict() for r in bench.rows]
    (args.out / "serve.json").write_text(json.dumps({"runs": runs, **info}, indent=1))
    print(f"wrote {args.out / 'serve.md'} and serve.json")


if __name__ == "__main__":
    main()
