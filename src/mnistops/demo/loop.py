"""Part 2 of the demo: the closed loop on live traffic, against the roles that ``mnistops up`` runs.

Phase 1 clean digits; phase 2 a harmful shift (rotated, thicker, noisier digits) with delayed
feedback for a share, until the monitor's drift alert has made the controller retrain, shadow,
gate and promote a challenger; phase 3 a deliberately broken model forced in by hand, which the
controller's post-promotion watch rolls back. The demo only sends traffic and reads serve's
``/v1/loop/events`` (the controller's timeline table); every decision is the roles'.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from mnistops.demo.scenarios import DEMO_SHIFT
from mnistops.demo.stream import Served, StreamClient, accuracy
from mnistops.demo.topology import (
    LoopDemoConfig,
    Ports,
    env_settings,
    loop_env,
    seed_registry,
    start_up,
    stop_up,
)
from mnistops.settings import Settings
from mnistops.training.data import Mnist

console = Console()
Event = dict[str, Any]  # one /v1/loop/events item: {id, ts, seq, kind, detail, version, data}
EVENTS_PAGE = 1000  # the endpoint's largest page


@dataclass
class DemoResult:
    """What the acceptance criteria look at."""

    timeline: list[Event] = field(default_factory=list)
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


@dataclass
class Traffic:
    """Test digits, clean or shifted, sent through the client in chunks."""

    client: StreamClient
    mnist: Mnist
    seed: int = 0

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._x, self._y = self.mnist.test_images.numpy(), self.mnist.test_labels.numpy()
        self._events: list[Event] = []

    def send(self, n: int, shifted: bool, phase: str) -> list[Served]:
        """Predict ``n`` random test digits (shifted by the demo's shift if asked)."""
        idx = self._rng.integers(0, len(self._x), n)
        x = DEMO_SHIFT(self._x[idx], self._rng) if shifted else self._x[idx]
        return self.client.send(x, self._y[idx], phase)

    def events(self) -> list[Event]:
        """The controller's timeline so far, oldest first (polled incrementally by event id)."""
        while True:
            since = self._events[-1]["id"] if self._events else 0
            page: list[Event] = self.client.get(  # type: ignore[assignment]
                f"/v1/loop/events?since_id={since}&limit={EVENTS_PAGE}"
            )
            self._events += page
            if len(page) < EVENTS_PAGE:
                return list(self._events)


def _clean_phase(t: Traffic, cfg: LoopDemoConfig) -> None:
    console.rule("[bold]phase 1: clean digits")
    for _ in range(cfg.clean_windows * cfg.window // 50):
        t.send(50, False, "clean")
    console.print(f"clean accuracy {accuracy(t.client.served):.4f} on {len(t.client.served)} requests")


def _shift_phase(t: Traffic, cfg: LoopDemoConfig, res: DemoResult, initial: str) -> None:
    """Shifted traffic until a retrained challenger (not the initial champion) is promoted."""
    console.rule("[bold]phase 2: shifted digits (rotated, thicker, noisier) with delayed labels")
    res.shift_start = len(t.client.served)
    promoted: Event | None = None
    deadline = time.time() + cfg.shift_timeout
    while promoted is None and time.time() < deadline:
        events = t.events()  # one GET per round
        kinds = [e["kind"] for e in events]
        promoted = next((e for e in events if e["kind"] == "promoted" and e["version"] != initial), None)
        job_running = kinds.count("retrain_started") > kinds.count("retrain_finished")
        if promoted is None:
            # while the worker trains, traffic goes on at a trickle (the CPU is busy training)
            t.send(10 if job_running else 50, True, "shift")
            time.sleep(0.5 if job_running else 0.05)
    if promoted is None:
        console.print("[red]no promotion within the time limit[/]")
        return
    res.promoted_version = promoted["version"]
    after: list[Served] = []
    while len(after) < 2 * cfg.window:  # until serve follows the alias, answers may be the old champion's
        after += [s for s in t.send(50, True, "shift") if s.version == res.promoted_version]
    first = t.client.served[res.shift_start].version
    res.acc_before = accuracy([s for s in t.client.served[res.shift_start :] if s.version == first])
    res.acc_after = accuracy(after)
    console.print(
        f"shifted-stream accuracy: champion {first} {res.acc_before:.4f} → "
        f"retrained {res.promoted_version} {res.acc_after:.4f}"
    )


def _broken_phase(t: Traffic, cfg: LoopDemoConfig, res: DemoResult, s: Settings, home: Path) -> None:
    """Force a broken copy of the champion in; traffic until the controller rolls it back."""
    from mnistops.registry.core import Registry, configure

    console.rule("[bold]phase 3: a deliberately broken model is forced in")
    configure(s)
    reg = Registry(s)
    _, champ_dir = reg.resolve_alias("champion")
    broken = make_broken(champ_dir, home / "broken-model")
    res.broken_version = reg.register(broken, mnist=t.mnist, profile=True)
    reg.promote(res.broken_version, actor="demo", reason="phase 3: deliberately broken release", force=True)
    deadline = time.time() + cfg.rollback_timeout
    rolled: Event | None = None
    while rolled is None and time.time() < deadline:
        t.send(50, True, "broken")
        rolled = next(
            (
                e
                for e in t.events()
                if e["kind"] == "rollback" and e["data"].get("from_version") == res.broken_version
            ),
            None,
        )
    if rolled is None:
        console.print("[red]no rollback within the time limit[/]")
    else:  # windows of the broken champion the watch judged before rolling back
        res.rollback_windows = int(rolled["data"].get("watched_windows", 0)) or None
    for _ in range(cfg.window // 50):
        t.send(50, True, "restored")


def drift_lag(timeline: list[Event], shift_start: int) -> int | None:
    """Windows holding shifted inputs (seq = sample index + 1) until the first drifted one (1 = first)."""
    shifted = [e for e in timeline if e["kind"] == "window" and e["data"]["end_seq"] > shift_start]
    hit = next((i for i, e in enumerate(shifted) if e["data"]["drifted"]), None)
    return None if hit is None else hit + 1


def run_loop_demo(
    settings: Settings,
    mnist: Mnist,
    model_dir: Path,
    serve: bool,
    seed: int = 0,
    cfg: LoopDemoConfig = LoopDemoConfig(),
) -> tuple[DemoResult, StreamClient, subprocess.Popen[bytes]]:
    """Phases 1-3 against ``mnistops up``; returns the result, the client and the ``up`` process.

    ``serve``: the roles listen on the settings' ports (the dashboard stays up afterwards);
    otherwise on free ports. The caller stops ``up`` with :func:`mnistops.demo.topology.stop_up`.
    """
    t_start = time.time()
    home = (settings.home / "demo-loop").resolve()
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    env = loop_env(settings, home, Ports.pick(settings, standard=serve), cfg)
    console.rule("[bold]closed loop: seeding the demo's registry, starting the roles")
    initial = seed_registry(env, model_dir, mnist)
    proc = start_up(env, home / "up.log", timeout=cfg.start_timeout)
    try:
        url = f"http://127.0.0.1:{env['MNISTOPS_PORT']}"
        console.print(f"roles up (serve at {url}; merged log {home / 'up.log'})")
        client = StreamClient(url, seed=seed, label_share=cfg.label_share)
        traffic, res = Traffic(client, mnist, seed), DemoResult()
        _clean_phase(traffic, cfg)
        _shift_phase(traffic, cfg, res, initial)
        _broken_phase(traffic, cfg, res, env_settings(env), home)
        client.flush_labels(all_=True)
        res.timeline = traffic.events()
        res.drift_window_lag = drift_lag(res.timeline, res.shift_start)
        res.seconds = time.time() - t_start
        res.requests, res.errors = len(client.served), client.errors
    except BaseException:
        stop_up(proc)
        raise
    return res, client, proc
