"""`make demo`: the whole life of the model on one machine, end to end.

Part 1 (the project's registry under MNISTOPS_HOME): fetch, train one epoch, evaluate, register,
gate, promote if the gates pass, print the registry. Running it twice leaves two versions.

Part 2 (:mod:`mnistops.demo.loop`, a fresh scratch home, so every run replays the same story):
``mnistops up`` runs the four roles (serve, monitor, controller, worker) and the demo replays
production traffic over HTTP: clean digits, then a harmful shift that the monitor detects and the
controller answers (retrain in the worker, shadow, gate, promote), then a deliberately broken
model forced in and rolled back by the controller's watch. Prints the timeline, writes
``demo_report.html`` and leaves the roles (and the dashboard) up until Ctrl+C.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from mnistops.demo.loop import DemoResult, run_loop_demo
from mnistops.demo.topology import stop_up
from mnistops.settings import Settings
from mnistops.tables import metrics_table, models_table
from mnistops.training.data import Mnist, load_mnist

console = Console()


# --- part 1 ---------------------------------------------------------------------------------
def train_and_promote(settings: Settings, mnist: Mnist, seed: int = 0) -> tuple[Path, str, bool]:
    """Train, register, gate and (if passed) promote in the project registry; print the table.

    Returns:
        (model folder, registered version, promoted?)
    """
    from mnistops.registry.core import Registry, configure
    from mnistops.training.train import TrainConfig, run_training

    settings.ensure_dirs()
    res = run_training(TrainConfig(seed=seed), settings, mnist=mnist)
    metrics = {k: v for k, v in res.metrics.items() if k != "cpu"}
    console.print(metrics_table(metrics, f"model written to {res.out_dir}"))
    configure(settings)
    reg = Registry(settings)
    version = reg.register(res.out_dir, mnist=mnist)
    report = reg.gate(version, mnist=mnist)
    console.print(report.to_table())
    promoted = False
    if report.passed:
        reg.promote(version, reason="make demo: gates passed")
        promoted = True
    else:
        console.print(f"[yellow]version {version} not promoted: {', '.join(report.failed_checks)}[/]")
    console.print(models_table(reg.name, reg.list_versions()))
    return res.out_dir, version, promoted


# --- part 2 ---------------------------------------------------------------------------------
def print_timeline(res: DemoResult, console: Console = console) -> None:
    """The event table and the acceptance figures."""
    from rich.table import Table

    t0 = res.timeline[0]["ts"] if res.timeline else time.time()
    t = Table(title="closed-loop timeline")
    for col in ("t (s)", "sample", "event", "version", "detail"):
        t.add_column(col)
    for e in res.timeline:
        if e["kind"] == "watch" and e["data"].get("action") == "watch" and "watching" not in e["detail"]:
            continue
        if e["kind"] == "window":
            continue  # per-window lines are in demo_report.html
        t.add_row(f"{e['ts'] - t0:6.1f}", str(e["seq"]), e["kind"], e.get("version") or "", e["detail"][:110])
    console.print(t)
    s = Table(title="demo results")
    s.add_column("figure")
    s.add_column("value", justify="right")
    fmt = lambda v: "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
    for k, v in asdict(res).items():
        if k != "timeline":
            s.add_row(k, fmt(v))
    if res.acc_before is not None and res.acc_after is not None:
        s.add_row("recovery (points)", f"{100 * (res.acc_after - res.acc_before):+.1f}")
    console.print(s)


def run_demo(
    settings: Settings, serve: bool = True, report_path: Path = Path("demo_report.html")
) -> DemoResult:
    """Both parts; keeps the roles up when ``serve`` (Ctrl+C stops them)."""
    from mnistops.demo.report import write_report
    from mnistops.training.data import fetch

    t0 = time.time()
    fetch(settings.data_path)
    mnist = load_mnist(settings.data_path)
    console.rule("[bold]part 1: train, evaluate, register, gate, promote")
    model_dir, _, _ = train_and_promote(settings, mnist)
    res, client, roles = run_loop_demo(settings, mnist, model_dir, serve)

    res.seconds = time.time() - t0
    print_timeline(res)
    write_report(res, client.served, report_path)
    console.print(f"report: {report_path.resolve()}")
    client.close()
    url = f"http://127.0.0.1:{settings.port}"
    if serve:
        console.print(f"[bold green]dashboard: {url}/dashboard[/]  draw a digit: {url}/   (Ctrl+C to stop)")
        with contextlib.suppress(KeyboardInterrupt):
            roles.wait()
    stop_up(roles)
    return res
