"""`make demo`: the whole life of the model on one machine, end to end.

Part 1 (the project's registry under MNISTOPS_HOME): fetch, train one epoch, evaluate, register,
gate, promote if the gates pass, print the registry. Running it twice leaves two versions.

Part 2 (a fresh scratch home, so every run replays the same story): the service runs in the
background with the monitor and the closed loop; the demo replays production traffic over HTTP —
phase 1 clean digits; phase 2 a harmful shift (rotated, thicker, noisier digits) with delayed
feedback for a share; the monitor detects it, alerts, a retrain runs, the challenger shadows, is
gated and promoted, accuracy recovers; phase 3 a deliberately broken model is forced in and rolled
back automatically. Prints a timeline, writes ``demo_report.html`` and leaves the dashboard up.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console

from mnistops.demo.scenarios import DEMO_SHIFT
from mnistops.demo.stream import Served, StreamClient, accuracy
from mnistops.settings import Settings
from mnistops.training.data import Mnist, load_mnist

console = Console()


@dataclass
class DemoResult:
    """What the acceptance criteria look at."""

    timeline: list[dict[str, Any]] = field(default_factory=list)
    shift_start: int = 0
    drift_window_lag: int | None = None  # shifted windows until the first drift alert (1 = first)
    acc_before: float | None = None  # champion accuracy on the shifted stream before the retrain
    acc_after: float | None = None  # new champion accuracy on the shifted stream
    promoted_version: str | None = None
    broken_version: str | None = None
    rollback_windows: int | None = None  # watched windows of the broken champion before its rollback
    seconds: float = 0.0
    requests: int = 0
    errors: int = 0


@dataclass(frozen=True)
class LoopDemoConfig:
    """Sizes and time limits of the closed-loop scenario (the e2e test uses a smaller one)."""

    window: int = 250  # monitoring window (predictions)
    clean_windows: int = 3  # phase 1 length
    retrain_epoch: int = 20000  # images per retraining epoch (MNIST + production share)
    shift_timeout: float = 240.0  # seconds for detection → retrain → shadow → promotion
    rollback_timeout: float = 120.0  # seconds for the watch to roll the broken model back
    label_share: float = 0.5  # share of predictions that get (delayed) feedback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- part 1 ---------------------------------------------------------------------------------
def train_and_promote(settings: Settings, mnist: Mnist, seed: int = 0) -> tuple[Path, str, bool]:
    """Train, register, gate and (if passed) promote in the project registry; print the table.

    Returns:
        (model folder, registered version, promoted?)
    """
    from mnistops.cli import _print_metrics, print_models
    from mnistops.registry.core import Registry, configure
    from mnistops.training.train import TrainConfig, run_training

    settings.ensure_dirs()
    res = run_training(TrainConfig(seed=seed), settings, mnist=mnist)
    _print_metrics({k: v for k, v in res.metrics.items() if k != "cpu"}, f"model written to {res.out_dir}")
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
    print_models(reg)
    return res.out_dir, version, promoted


# --- part 2 ---------------------------------------------------------------------------------
def loop_settings(base: Settings, home: Path, port: int, cfg: LoopDemoConfig) -> dict[str, str]:
    """Environment of the demo's service (its own registry, store and prediction log)."""
    env = {
        "MNISTOPS_HOME": str(home),
        "MNISTOPS_DATA_DIR": str(base.data_path.resolve()),
        "MNISTOPS_TRACKING_URI": f"sqlite:///{(home / 'mlflow.db').resolve()}",
        "MNISTOPS_PORT": str(port),
        "MNISTOPS_LOOP_IN_SERVE": "true",
        "MNISTOPS_WINDOW_SIZE": str(cfg.window),
        "MNISTOPS_MONITOR_INTERVAL_SECONDS": "0.5",
        "MNISTOPS_MODEL_POLL_SECONDS": "1",
        "MNISTOPS_SHADOW_REQUESTS": "400",
        "MNISTOPS_SHADOW_MIN_LABELLED": "40",
        "MNISTOPS_RETRAIN_MIN_LABELLED": "150",
        "MNISTOPS_RETRAIN_COOLDOWN_SECONDS": "60",
        "MNISTOPS_RETRAIN_PRODUCTION_SHARE": "0.3",
        "MNISTOPS_RETRAIN_EPOCH_SIZE": str(cfg.retrain_epoch),
        "MNISTOPS_WATCH_WINDOWS": "2",
        "MNISTOPS_ROLLBACK_TOLERANCE": "0.05",
        "MNISTOPS_ADMIN_TOKEN": secrets.token_hex(8),
        "MNISTOPS_GATES_FILE": str(home / "gates.yaml"),
    }
    # The loop's gate profile: a challenger adapted to a shifted population may give up a little
    # clean accuracy (the production gate's 0.5-point tolerance), so the clean-test checks against
    # the champion use that tolerance and a stricter McNemar level instead of the release defaults.
    (home / "gates.yaml").write_text(
        "min_test_accuracy: 0.985\nmax_accuracy_drop: 0.005\nmcnemar_alpha: 0.001\n"
    )
    return env


def _seed_loop_registry(env: dict[str, str], model_dir: Path, mnist: Mnist) -> str:
    from mnistops.registry.core import Registry, configure

    s = Settings(**{k.removeprefix("MNISTOPS_").lower(): v for k, v in env.items()})  # type: ignore[arg-type]
    s.ensure_dirs()
    configure(s)
    reg = Registry(s)
    # this registry is a separate MLflow store: the project run's id gets a local stand-in run
    local = Path(env["MNISTOPS_HOME"]) / "initial-model"
    shutil.copytree(model_dir, local)
    v = reg.register(local, mnist=mnist)
    report = reg.gate(v, mnist=mnist)
    reg.promote(v, reason="demo: initial champion", force=not report.passed)
    return v


def _start_service(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    full = {**os.environ, **env}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mnistops", "serve", "--log-level", "warning"],
            env=full,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{env['MNISTOPS_PORT']}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"service not ready after 120 s; see {log_path}")


def stop_service(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the service flushes its prediction log), then kill after 30 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _events(client: StreamClient) -> list[dict[str, Any]]:
    return list(client.get("/v1/loop/events"))  # type: ignore[call-overload]


def _wait_for(client: StreamClient, kinds: set[str], since: int, timeout: float) -> dict[str, Any] | None:
    end = time.time() + timeout
    while time.time() < end:
        for e in _events(client)[since:]:
            if e["kind"] in kinds:
                return e
        time.sleep(0.5)
    return None


def make_broken(model_dir: Path, out: Path, classes: tuple[int, ...] = (3, 5, 8)) -> Path:
    """A copy of a model whose logits for ``classes`` are suppressed (a deliberately bad release)."""
    import torch

    from mnistops.training.model import load_model, save_model
    from mnistops.training.train import export_onnx

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    m = load_model(model_dir)
    linear = m.head[-1]
    assert isinstance(linear, torch.nn.Linear)
    with torch.no_grad():
        for c in classes:
            linear.bias[c] -= 1e4
    save_model(m, out / "model.pt")
    export_onnx(m, out / "model.onnx")
    metrics = json.loads((model_dir / "metrics.json").read_text())
    metrics.pop("run_id", None)  # a different model from that run's output
    metrics["note"] = f"deliberately broken: classes {list(classes)} suppressed"
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    shutil.copy(model_dir / "config.json", out / "config.json")
    return out


def run_loop_demo(
    settings: Settings,
    mnist: Mnist,
    model_dir: Path,
    serve: bool,
    seed: int = 0,
    cfg: LoopDemoConfig = LoopDemoConfig(),
) -> tuple[DemoResult, StreamClient, subprocess.Popen[bytes]]:
    """Phases 1-3 against a background service; returns the result, the client and the process."""
    from mnistops.registry.core import Registry, configure

    t_start = time.time()
    home = (settings.home / "demo-loop").resolve()
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    port = settings.port if serve else _free_port()
    env = loop_settings(settings, home, port, cfg)
    console.rule("[bold]closed loop: seeding the service's registry")
    _seed_loop_registry(env, model_dir, mnist)
    proc = _start_service(env, home / "service.log")
    try:
        url = f"http://127.0.0.1:{port}"
        console.print(f"service up at {url} (log {home / 'service.log'})")
        client = StreamClient(url, seed=seed, label_share=cfg.label_share)
        rng = np.random.default_rng(seed)
        x_all, y_all = mnist.test_images.numpy(), mnist.test_labels.numpy()
        res = DemoResult()
        window = cfg.window

        def chunk(n: int, shifted: bool, phase: str) -> list[Served]:
            idx = rng.integers(0, len(x_all), n)
            x = x_all[idx]
            if shifted:
                x = DEMO_SHIFT(x, rng)
            return client.send(x, y_all[idx], phase)

        # phase 1: clean traffic
        console.rule("[bold]phase 1: clean digits")
        for _ in range(cfg.clean_windows * window // 50):
            chunk(50, False, "clean")
        console.print(f"clean accuracy {accuracy(client.served):.4f} on {len(client.served)} requests")

        # phase 2: harmful shift until a retrained champion serves it
        console.rule("[bold]phase 2: shifted digits (rotated, thicker, noisier) with delayed labels")
        res.shift_start = len(client.served)
        promoted_ev: dict[str, Any] | None = None
        deadline = time.time() + cfg.shift_timeout
        while time.time() < deadline:
            events = _events(client)  # one GET per round
            kinds = [e["kind"] for e in events]
            promoted_ev = next((e for e in events if e["kind"] == "promoted"), None)
            if promoted_ev is not None:
                break
            job_running = kinds.count("retrain_started") > kinds.count("retrain_finished")
            # while training, traffic continues at a trickle (the CPU is busy training)
            chunk(10 if job_running else 50, True, "shift")
            time.sleep(0.5 if job_running else 0.05)
        if promoted_ev is None:
            console.print("[red]no promotion within the time limit[/]")
        else:
            res.promoted_version = promoted_ev["version"]
            after: list[Served] = []
            while len(after) < 2 * window:
                after += [s for s in chunk(50, True, "shift") if s.version == res.promoted_version]
            first_version = client.served[res.shift_start].version
            res.acc_before = accuracy(
                [s for s in client.served[res.shift_start :] if s.version == first_version]
            )
            res.acc_after = accuracy(after)
            console.print(
                f"shifted-stream accuracy: champion {first_version} {res.acc_before:.4f} → "
                f"retrained {res.promoted_version} {res.acc_after:.4f}"
            )

        # phase 3: a deliberately broken model forced in
        console.rule("[bold]phase 3: a deliberately broken model is forced in")
        s = Settings(**{k.removeprefix("MNISTOPS_").lower(): v for k, v in env.items()})  # type: ignore[arg-type]
        configure(s)
        reg = Registry(s)
        _, champ_dir = reg.resolve_alias("champion")
        broken = make_broken(champ_dir, home / "broken-model")
        res.broken_version = reg.register(broken, mnist=mnist, profile=True)
        n_events = len(_events(client))
        reg.promote(
            res.broken_version, actor="demo", reason="phase 3: deliberately broken release", force=True
        )
        deadline = time.time() + cfg.rollback_timeout
        rolled = None
        while time.time() < deadline and rolled is None:
            chunk(50, True, "broken")
            rolled = next((e for e in _events(client)[n_events:] if e["kind"] == "rollback"), None)
        if rolled is not None:
            # windows of the broken champion the watch judged before rolling back
            res.rollback_windows = int(rolled["data"].get("watched_windows", 0)) or None
        for _ in range(window // 50):
            chunk(50, True, "restored")
        client.flush_labels(all_=True)
        res.timeline = _events(client)
        # windows holding shifted inputs (seq = sample index + 1), in order; lag 1 = the first one
        shifted = [
            e for e in res.timeline if e["kind"] == "window" and e["data"]["end_seq"] > res.shift_start
        ]
        hit = next((i for i, e in enumerate(shifted) if e["data"]["drifted"]), None)
        res.drift_window_lag = None if hit is None else hit + 1
        res.seconds = time.time() - t_start
        res.requests, res.errors = len(client.served), client.errors
    except BaseException:
        stop_service(proc)
        raise
    return res, client, proc


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
    """Both parts; keeps the service up when ``serve`` (Ctrl+C stops it)."""
    from mnistops.demo.report import write_report
    from mnistops.training.data import fetch

    t0 = time.time()
    fetch(settings.data_path)
    mnist = load_mnist(settings.data_path)
    console.rule("[bold]part 1: train, evaluate, register, gate, promote")
    model_dir, _, _ = train_and_promote(settings, mnist)
    res, client, proc = run_loop_demo(settings, mnist, model_dir, serve)
    res.seconds = time.time() - t0
    print_timeline(res)
    write_report(res, client.served, report_path)
    console.print(f"report: {report_path.resolve()}")
    client.close()
    url = f"http://127.0.0.1:{settings.port}"
    if serve:
        console.print(f"[bold green]dashboard: {url}/dashboard[/]  draw a digit: {url}/   (Ctrl+C to stop)")
        with contextlib.suppress(KeyboardInterrupt):
            proc.wait()
    stop_service(proc)
    return res
