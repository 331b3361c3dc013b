"""MonitorRunner on a real SQLite prediction store with a quickly fitted model and a fake registry."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry
from rich.console import Console

from mnistops.errors import ModelNotFoundError, NotFoundError
from mnistops.monitor.alerts.engine import AlertEngine, AlertRule, load_alert_rules
from mnistops.monitor.metrics import MonitorMetrics
from mnistops.monitor.runner import MonitorRunner, WindowReport, render_check
from mnistops.registry.profile import build_profile
from mnistops.settings import Settings
from mnistops.store.predictions import PredictionStore
from mnistops.store.records import AlertEvent, PredictionRecord, PredictionWindow, ServedBy
from mnistops.training.data import Mnist, normalize, split_train_val
from mnistops.training.evaluate import predict_logits, rotate
from mnistops.training.model import MnistNet, save_model

N_REF = 1000  # validation images in the reference profile; the rest is clean held-out traffic
Split4 = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def split(mnist: Mnist) -> Split4:
    """(val_x, val_y, test_x, test_y) as uint8/int64 tensors."""
    s = split_train_val(mnist)
    return s.val_x, s.val_y, mnist.test_images, mnist.test_labels


@pytest.fixture(scope="module")
def model_dir(
    tmp_path_factory: pytest.TempPathFactory, mnist: Mnist, split: tuple[torch.Tensor, ...]
) -> Path:
    """A model fitted in seconds (random conv body, BN stats from data, logistic-regression head)."""
    torch.manual_seed(0)
    net = MnistNet()
    s = split_train_val(mnist)
    x, y = normalize(s.train_x[:2000]), s.train_y[:2000]
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = 1.0  # one train-mode pass sets the running stats to this batch's
    with torch.no_grad():
        net.train()
        net.features(x[:500])
        net.eval()
        feats = net.features(x)  # [2000, D]
    head = net.head[1]
    opt = torch.optim.LBFGS(head.parameters(), max_iter=100)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(feats), y)
        loss.backward()
        return loss

    opt.step(closure)
    d = tmp_path_factory.mktemp("model")
    save_model(net.eval(), d / "model.pt")
    val_x, val_y = split[0], split[1]
    build_profile(net, val_x[:N_REF], val_y[:N_REF], version="1").save(d / "profile")
    return d


class FakeRegistry:
    """Every known version is the same model folder and profile."""

    def __init__(self, model_dir: Path, versions: tuple[str, ...] = ("1", "2")) -> None:
        self.dir, self.versions = model_dir, versions
        self.downloads: list[str] = []

    def download(self, version: str) -> Path:
        if version not in self.versions:
            raise ModelNotFoundError(f"no version {version}")
        self.downloads.append(version)
        return self.dir

    def download_profile(self, version: str) -> Path:
        if version not in self.versions:
            raise ModelNotFoundError(f"no version {version}")
        return self.dir / "profile"


@pytest.fixture
def store(tmp_path: Path) -> PredictionStore:
    s = PredictionStore(f"sqlite:///{tmp_path / 'p.db'}")
    s.migrate()
    return s


def make_settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(home=tmp_path, window_size=100, webhook_urls=[], **kw)  # type: ignore[arg-type]


def relative_rules() -> list[AlertRule]:
    """Default rules minus the absolute accuracy floors (this quick model is ~60 % accurate)."""
    return [r for r in load_alert_rules() if r.name not in ("EstimatedAccuracyLow", "RealizedAccuracyLow")]


def make_runner(
    tmp_path: Path,
    store: PredictionStore,
    model_dir: Path,
    metrics: MonitorMetrics | None = None,
    **kw: object,
) -> MonitorRunner:
    settings_kw = {k: kw.pop(k) for k in list(kw) if k in ("window_size", "window_step")}
    settings = make_settings(tmp_path, **settings_kw)
    engine = AlertEngine(relative_rules(), store)
    return MonitorRunner(settings, store, FakeRegistry(model_dir), engine=engine, metrics=metrics, **kw)  # type: ignore[arg-type]


def log_rows(
    store: PredictionStore,
    model_dir: Path,
    images: torch.Tensor,
    version: str = "1",
    *,
    served_by: ServedBy = "champion",
    client: str | None = None,
    ts0: float | None = None,
    dt: float = 0.01,
) -> list[PredictionRecord]:
    """Log predictions as the service would (probs from the model itself)."""
    from mnistops.training.model import load_model

    probs = torch.softmax(predict_logits(load_model(model_dir), images), dim=1).numpy()
    t0 = time.time() if ts0 is None else ts0
    recs = [
        PredictionRecord.create(
            images[i].numpy(),
            probs[i],
            version,
            1.0,
            client=client,
            served_by=served_by,
            ts=t0 + i * dt,
        )
        for i in range(len(images))
    ]
    store.insert_many(recs)
    return recs


def test_clean_windows_do_not_alert(
    tmp_path: Path, store: PredictionStore, model_dir: Path, split: Split4
) -> None:
    val_x = split[0]
    metrics = MonitorMetrics(CollectorRegistry())
    runner = make_runner(tmp_path, store, model_dir, metrics)
    log_rows(store, model_dir, val_x[N_REF : N_REF + 300])
    reports = runner.process()
    assert [r.window.window for r in reports] == [0, 1, 2]
    assert not any(r.drifted for r in reports)
    assert not any(r.fired for r in reports) and store.list_alerts() == []
    stored = store.latest_windows(10)
    assert [w.n for w in stored] == [100, 100, 100]
    detectors = {"bbsd", "mmd", "prior", "inputs", "ood", "combined"}
    assert set(stored[0].results) == detectors | {"metrics", "reference"}
    m = reports[0].metrics
    # what readers of the store (dashboard, controller) get without monitor code: the flat metrics
    # the alert rules read, as plain JSON, and the version's reference class shares
    persisted = stored[0].results["metrics"]
    assert persisted["drift.combined.drifted"] is False and persisted["n"] == 100
    assert persisted["ood_rate"] == m["ood_rate"] and persisted["concept.n_labelled"] == 0
    ref = stored[0].results["reference"]
    assert len(ref["class_freq"]) == 10 and abs(sum(ref["class_freq"]) - 1) < 1e-6
    assert ref["accuracy"] == runner.context(stored[0].model_version).reference_accuracy
    assert m["drift.combined.drifted"] is False and 0 < m["drift.mmd.p_value"] <= 1
    assert abs(m["accuracy_drop_vs_reference"]) < 0.1  # CBPE on calibrated probs tracks the reference
    assert m["realized_accuracy"] is None and m["ood_rate"] <= 0.05
    reg = metrics.registry
    assert reg.get_sample_value("mnistops_monitor_windows_total") == 3
    assert reg.get_sample_value("mnistops_drift_detected", {"detector": "combined"}) == 0
    assert reg.get_sample_value("mnistops_alerts_firing", {"rule": "DataDrift", "severity": "warning"}) == 0
    assert runner.process() == []  # nothing new


def test_drifted_stream_fires_and_persists_alert(
    tmp_path: Path, store: PredictionStore, model_dir: Path, split: Split4
) -> None:
    val_x, test_x = split[0], split[2]
    metrics = MonitorMetrics(CollectorRegistry())
    runner = make_runner(tmp_path, store, model_dir, metrics)
    seen: list[WindowReport] = []
    alerts: list[list[AlertEvent]] = []
    runner.on_window.append(seen.append)
    runner.on_alerts.append(alerts.append)
    log_rows(store, model_dir, val_x[N_REF : N_REF + 200])
    perm = torch.randperm(len(test_x), generator=torch.Generator().manual_seed(1))[:200]
    log_rows(store, model_dir, rotate(test_x[perm], max_deg=40.0, seed=0))
    reports = runner.process()
    assert seen == reports and len(reports) == 4
    assert [r.drifted for r in reports[:2]] == [False, False]
    first = next(i for i, r in enumerate(reports) if r.drifted)
    assert first <= 3  # within 2 windows of the shift (window 2 is the first rotated one)
    fired = [e.rule for r in reports for e in r.fired]
    assert "DataDrift" in fired and "DataDriftSustained" in fired
    assert {e.rule for batch in alerts for e in batch} >= {"DataDrift", "DataDriftSustained"}
    firing = {a.rule: a for a in store.list_alerts(state="firing")}
    assert "DataDrift" in firing and firing["DataDrift"].labels["model_version"] == "1"
    assert store.latest_windows(10)[-1].drifted
    reg = metrics.registry
    assert reg.get_sample_value("mnistops_alerts_firing", {"rule": "DataDrift", "severity": "warning"}) == 1
    assert reg.get_sample_value("mnistops_drift_detected", {"detector": "combined"}) == 1
    score = reg.get_sample_value("mnistops_drift_score", {"detector": "combined"})
    thr = reg.get_sample_value("mnistops_drift_threshold", {"detector": "combined"})
    assert score is not None and thr is not None and score >= thr
    # a restarted monitor reloads the firing alert and resolves it on the first clean window
    runner2 = make_runner(tmp_path, store, model_dir)
    log_rows(store, model_dir, val_x[N_REF + 200 : N_REF + 300])
    (clean,) = runner2.process()
    assert clean.window.window == 4 and not clean.drifted
    assert "DataDrift" in [e.rule for e in clean.resolved]
    assert "DataDrift" not in {a.rule for a in store.list_alerts(state="firing")}


def test_resume_sliding_windows_and_version_change(
    tmp_path: Path, store: PredictionStore, model_dir: Path, split: Split4
) -> None:
    val_x = split[0]
    clean = val_x[N_REF:]
    runner = make_runner(tmp_path, store, model_dir, window_step=50)
    log_rows(store, model_dir, clean[:230])
    assert store.max_seq() == 230  # seqs 1..230 in logging order
    reports = runner.process()
    assert [(r.start_seq, r.window.end_seq) for r in reports] == [(1, 100), (51, 150), (101, 200)]
    # restart: the next window starts at seq 151 (sliding overlap is rebuilt from the log)
    runner = make_runner(tmp_path, store, model_dir, window_step=50)
    assert runner.process() == []
    log_rows(store, model_dir, clean[230:250])
    log_rows(store, model_dir, clean[250:260], served_by="canary")  # never monitored
    (nxt,) = runner.process()
    assert (nxt.start_seq, nxt.window.end_seq, nxt.window.window) == (151, 250, 3)
    # a new version starts fresh: its windows never contain version-1 rows
    log_rows(store, model_dir, clean[260:300], version="2")
    log_rows(store, model_dir, clean[300:360], version="2")
    (v2,) = runner.process()
    assert v2.window.model_version == "2" and v2.start_seq == 261 and v2.window.n == 100
    rows = store.window(v2.start_seq, v2.window.end_seq)
    assert set(rows.model_versions.tolist()) == {"2"}
    # an unknown version (no profile) is skipped, not retried forever
    log_rows(store, model_dir, clean[360:460], version="9")
    assert runner.process() == []
    assert runner.registry.downloads.count("1") == 1  # type: ignore[attr-defined]  # cached


def test_draft_predictions_are_excluded(
    tmp_path: Path, store: PredictionStore, model_dir: Path, split: Split4
) -> None:
    if "clients" not in PredictionWindow.__dataclass_fields__:
        pytest.skip("PredictionStore does not return the client column yet")
    clean = split[0][N_REF:]
    runner = make_runner(tmp_path, store, model_dir)
    log_rows(store, model_dir, clean[:60])
    log_rows(store, model_dir, clean[60:120], client="web-draft")
    log_rows(store, model_dir, clean[120:160], client="web")
    (r,) = runner.process()
    rows = store.window(r.start_seq, r.window.end_seq)
    assert r.window.n == 100 and len(rows) == 160


def test_realized_accuracy_and_concept_report(
    tmp_path: Path, store: PredictionStore, model_dir: Path, split: Split4
) -> None:
    val_x, val_y = split[0], split[1]
    runner = make_runner(tmp_path, store, model_dir)
    recs = log_rows(store, model_dir, val_x[N_REF : N_REF + 200])
    truth = val_y[N_REF : N_REF + 200].tolist()
    for i in range(40):  # window 0: 40 labels
        store.add_feedback(recs[i].id, truth[i])
    for i in range(100, 110):  # window 1: too few labels
        store.add_feedback(recs[i].id, truth[i])
    w0, w1 = runner.process()
    expected = float(np.mean([recs[i].label == truth[i] for i in range(40)]))
    assert w0.realized is not None and w0.realized.n == 40
    assert w0.window.realized_accuracy == pytest.approx(expected)
    assert w0.metrics["estimation_gap"] == pytest.approx(w0.estimate.value - expected)
    assert w1.realized is None and w1.window.realized_accuracy is None
    rep = runner.concept_report(window=10)
    assert rep.n_labelled == 50 and len(rep.windows) == 5
    assert rep.accuracy == pytest.approx(
        np.mean([recs[i].label == truth[i] for i in [*range(40), *range(100, 110)]])
    )
    assert w1.metrics["concept.n_labelled"] == 50


def test_check_last_and_render(
    tmp_path: Path, store: PredictionStore, model_dir: Path, split: Split4
) -> None:
    runner = make_runner(tmp_path, store, model_dir)
    with pytest.raises(NotFoundError):
        runner.check_last(100)
    test_x = split[2]
    log_rows(store, model_dir, split[0][N_REF : N_REF + 100])
    log_rows(store, model_dir, rotate(test_x[:150], max_deg=40.0, seed=0))
    report = runner.check_last(150)
    assert report.n == 150 and report.drifted and report.start_seq == 101
    console = Console(record=True, width=160)
    console.print(render_check(report))
    text = console.export_text()
    assert "DRIFT" in text and "mmd" in text and "estimated accuracy" in text
    assert store.latest_windows(5) == []  # one-shot: nothing persisted


def test_time_windows(tmp_path: Path, store: PredictionStore, model_dir: Path, split: Split4) -> None:
    clean = split[0][N_REF:]
    t0 = 1_000_000.0
    now = [t0 + 15.0]
    runner = make_runner(
        tmp_path, store, model_dir, time_window_seconds=10.0, min_window_rows=30, clock=lambda: now[0]
    )
    log_rows(store, model_dir, clean[:60], ts0=t0, dt=0.1)  # period 1: 60 rows
    log_rows(store, model_dir, clean[60:70], ts0=t0 + 10, dt=0.1)  # period 2: too few, merged forward
    log_rows(store, model_dir, clean[70:110], ts0=t0 + 20, dt=0.1)
    (first,) = runner.process()
    assert first.window.n == 60
    now[0] = t0 + 40.0
    (second,) = runner.process()
    assert second.window.n == 50 and second.start_seq == 61
