"""Alert rules (YAML validation) and the alert engine on a real SQLite prediction store."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from mnistops.errors import ConfigError, StoreError
from mnistops.monitor.alerts.engine import AlertEngine, AlertRule, load_alert_rules, parse_alert_rules
from mnistops.monitor.alerts.notify import LogNotifier, Notification
from mnistops.monitor.alerts.webhook import WebhookNotifier
from mnistops.settings import Settings
from mnistops.store.predictions import PredictionStore
from mnistops.store.records import AlertEvent


class Recorder:
    """A notifier that keeps every batch it receives."""

    def __init__(self) -> None:
        self.batches: list[list[Notification]] = []
        self.closed = False

    def notify(self, notifications: Sequence[Notification]) -> None:
        self.batches.append(list(notifications))

    def close(self, timeout: float = 5.0) -> None:
        self.closed = True

    @property
    def all(self) -> list[Notification]:
        return [n for b in self.batches for n in b]


def rule(name: str = "AccLow", for_: int = 1, **kw: Any) -> AlertRule:
    raw: dict[str, Any] = {
        "name": name,
        "metric": "estimated_accuracy",
        "comparator": "<",
        "threshold": 0.95,
        "for": for_,
        "severity": "warning",
        "summary": "acc {value:.2f} < {threshold} in window {window} (model {model_version})",
        **kw,
    }
    return AlertRule.model_validate(raw)


@pytest.fixture
def store(tmp_path: Path) -> PredictionStore:
    return PredictionStore(f"sqlite:///{tmp_path / 'mon.db'}")


def run(engine: AlertEngine, values: list[float | None], start: int = 0) -> list[list[AlertEvent]]:
    return [
        engine.evaluate(start + i, {"estimated_accuracy": v}, "1", now=1000.0 + start + i)
        for i, v in enumerate(values)
    ]


# --- rules and loader -------------------------------------------------------------------------
def test_packaged_defaults_load() -> None:
    rules = {r.name: r for r in load_alert_rules()}
    assert rules["DataDrift"].metric == "drift.combined.drifted"
    assert (rules["DataDrift"].for_, rules["DataDrift"].severity) == (1, "warning")
    assert (rules["DataDriftSustained"].for_, rules["DataDriftSustained"].severity) == (2, "critical")
    assert rules["DataDrift"].threshold is True
    assert rules["EstimatedAccuracyLow"].breached(0.9) and not rules["EstimatedAccuracyLow"].breached(0.99)
    assert rules["RealizedAccuracyLow"].breached(None) is None
    assert rules["OODRateHigh"].breached(0.06)


GOOD = {"name": "R", "metric": "ood_rate", "comparator": ">", "threshold": 0.1, "severity": "warning"}


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        ({"colour": "red"}, ["'R'", "field 'colour'", "Extra inputs"]),
        ({"comparator": "=>"}, ["'R'", "field 'comparator'"]),
        ({"severity": "page"}, ["'R'", "field 'severity'"]),
        ({"for": 0}, ["'R'", "field 'for'"]),
        ({"threshold": None}, ["'R'", "field 'threshold': Input should be a valid boolean or"]),
        ({"threshold": "yes"}, ["'R'", "field 'threshold'"]),
        ({"labels": {"team": 3}}, ["'R'", "field 'labels.team'"]),
        ({"name": "has space"}, ["field 'name'"]),
        ({"summary": "bad {nope}"}, ["'R'", "field 'summary'", "nope"]),
        ({"summary": "bad {value:.2q}"}, ["'R'", "field 'summary'"]),
        ({"summary": "bad {value"}, ["'R'", "field 'summary'"]),
    ],
)
def test_invalid_rule_names_rule_and_field(change: dict[str, Any], fragments: list[str]) -> None:
    raw = {**GOOD, "summary": "x {value}", **change}
    with pytest.raises(ConfigError) as exc:
        parse_alert_rules({"rules": [raw]}, "test.yaml")
    for f in fragments:
        assert f in exc.value.message


def test_missing_field_and_nameless_rule() -> None:
    with pytest.raises(ConfigError, match=r"rule 'R' \(#0\): field 'summary': Field required"):
        parse_alert_rules({"rules": [GOOD]})
    with pytest.raises(ConfigError, match=r"rule #1: field 'name': Field required"):
        parse_alert_rules(
            {"rules": [{**GOOD, "summary": "s"}, {k: v for k, v in GOOD.items() if k != "name"}]}
        )


def test_duplicate_names_and_bad_top_level() -> None:
    r = {**GOOD, "summary": "s"}
    with pytest.raises(ConfigError, match="duplicate"):
        parse_alert_rules({"rules": [r, r]})
    with pytest.raises(ConfigError, match="'rules'"):
        parse_alert_rules([r])
    with pytest.raises(ConfigError, match="'rules'"):
        parse_alert_rules({"rules": [r], "extra": 1})


def test_alerts_file_overrides_packaged(tmp_path: Path, store: PredictionStore) -> None:
    f = tmp_path / "alerts.yaml"
    f.write_text(
        "rules:\n  - {name: OnlyOne, metric: ood_rate, comparator: '>=', threshold: 0.2, for: 3,"
        " severity: critical, summary: 'ood {value}', labels: {team: ml}}\n"
    )
    engine = AlertEngine.from_settings(Settings(alerts_file=f, webhook_urls=["http://127.0.0.1:9/x"]), store)
    try:
        assert [r.name for r in engine.rules] == ["OnlyOne"]
        assert engine.rules[0].labels == {"team": "ml"} and engine.rules[0].for_ == 3
        assert [type(n) for n in engine.notifiers] == [LogNotifier, WebhookNotifier]
    finally:
        engine.close(0)
    (tmp_path / "bad.yaml").write_text("rules: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_alert_rules(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_alert_rules(tmp_path / "missing.yaml")


# --- engine -----------------------------------------------------------------------------------
def test_for_fires_on_nth_consecutive_breach_and_resets(store: PredictionStore) -> None:
    engine = AlertEngine([rule(for_=3)], store)
    out = run(engine, [0.9, 0.9, 0.99, 0.9, 0.9])  # the clean window resets the streak
    assert out == [[]] * 5 and engine.firing() == []
    assert engine.streaks() == {"AccLow": 2}
    (fired,) = run(engine, [0.9], start=5)  # third consecutive breach
    assert [(e.rule, e.state) for e in fired] == [("AccLow", "firing")]
    assert fired[0].summary == "acc 0.90 < 0.95 in window 5 (model 1)"
    assert engine.firing_gauge() == {("AccLow", "warning"): 1}


def test_dedup_while_firing_and_resolve_lifecycle(store: PredictionStore) -> None:
    rec = Recorder()
    engine = AlertEngine([rule()], store, [rec])
    out = run(engine, [0.9, 0.8, 0.7])
    assert [len(o) for o in out] == [1, 0, 0]  # one firing event, no duplicates
    assert len(store.list_alerts()) == 1
    first = out[0][0]

    (resolved,) = run(engine, [0.99], start=3)[0]
    assert resolved.id == first.id and resolved.state == "resolved" and resolved.resolved_at == 1003.0
    assert store.list_alerts(state="firing") == [] and engine.firing() == []
    assert engine.firing_gauge() == {("AccLow", "warning"): 0}
    assert run(engine, [0.99], start=4) == [[]]  # clean again: nothing to resolve

    (again,) = run(engine, [0.5], start=5)[0]  # a new incident is a new event
    assert again.id != first.id and again.state == "firing"
    assert [(n.status, n.window, n.value) for n in rec.all] == [
        ("firing", 0, 0.9),
        ("resolved", 3, 0.99),
        ("firing", 5, 0.5),
    ]
    note = rec.all[1]
    assert (note.event_id, note.ended_at, note.metric, note.threshold) == (
        first.id,
        1003.0,
        "estimated_accuracy",
        0.95,
    )
    assert note.labels["model_version"] == "1"


def test_missing_metric_skips_rule(store: PredictionStore) -> None:
    engine = AlertEngine([rule("Real", metric="realized_accuracy", for_=2)], store)
    assert engine.evaluate(0, {"realized_accuracy": None}, "1") == []
    assert engine.evaluate(1, {}, "1") == []
    assert engine.evaluate(2, {"realized_accuracy": float("nan")}, "1") == []
    assert engine.streaks() == {"Real": 0}
    engine.evaluate(3, {"realized_accuracy": 0.5}, "1")
    engine.evaluate(4, {}, "1")  # no labels in this window: the streak is kept, not reset
    assert [e.state for e in engine.evaluate(5, {"realized_accuracy": 0.5}, "1")] == ["firing"]
    assert engine.evaluate(6, {"realized_accuracy": None}, "1") == []  # still firing
    assert len(engine.firing()) == 1


def test_bool_metric_and_numpy_values(store: PredictionStore) -> None:
    np = pytest.importorskip("numpy")
    rules = {r.name: r for r in load_alert_rules()}
    engine = AlertEngine([rules["DataDrift"], rules["DataDriftSustained"]], store)
    assert [e.rule for e in engine.evaluate(0, {"drift.combined.drifted": np.bool_(True)}, "2")] == [
        "DataDrift"
    ]
    assert [e.rule for e in engine.evaluate(1, {"drift.combined.drifted": True}, "2")] == [
        "DataDriftSustained"
    ]
    assert engine.firing_gauge() == {("DataDrift", "warning"): 1, ("DataDriftSustained", "critical"): 1}
    resolved = engine.evaluate(2, {"drift.combined.drifted": False}, "2")
    assert sorted(e.rule for e in resolved) == ["DataDrift", "DataDriftSustained"]
    assert all(e.state == "resolved" for e in resolved)


def test_restart_reloads_firing_events(store: PredictionStore) -> None:
    first = AlertEngine([rule(labels={"team": "ml"})], store)
    (fired,) = run(first, [0.9])[0]
    # a new process on the same database: it knows the alert without firing it again
    rec = Recorder()
    second = AlertEngine([rule(labels={"team": "ml"})], store, [rec])
    assert [e.id for e in second.firing()] == [fired.id]
    assert run(second, [0.8], start=1) == [[]] and rec.all == []
    assert len(store.list_alerts()) == 1
    (resolved,) = run(second, [0.99], start=2)[0]
    assert resolved.id == fired.id and resolved.state == "resolved"
    assert [n.status for n in rec.all] == ["resolved"]
    # an engine whose rule has other labels has another fingerprint: not its alert
    assert AlertEngine([rule()], store).firing() == []


def test_failing_notifier_and_store_do_not_break_evaluate(store: PredictionStore) -> None:
    class Broken(Recorder):
        def notify(self, notifications: Sequence[Notification]) -> None:
            raise RuntimeError("boom")

    class FlakyStore:
        def __init__(self, inner: PredictionStore) -> None:
            self.inner, self.fail = inner, True

        def open_alert(self, *a: Any, **kw: Any) -> tuple[AlertEvent, bool]:
            if self.fail:
                self.fail = False
                raise StoreError("down")
            return self.inner.open_alert(*a, **kw)

        def resolve_alert(self, *a: Any, **kw: Any) -> AlertEvent | None:
            return self.inner.resolve_alert(*a, **kw)

        def list_alerts(self, *a: Any, **kw: Any) -> list[AlertEvent]:
            return self.inner.list_alerts(*a, **kw)

    rec = Recorder()
    engine = AlertEngine([rule()], FlakyStore(store), [Broken(), rec])
    assert run(engine, [0.9]) == [[]]  # store down: logged, retried next window
    (fired,) = run(engine, [0.9], start=1)[0]
    assert fired.state == "firing" and [n.status for n in rec.all] == ["firing"]
    engine.close()
    assert rec.closed


def test_duplicate_rule_names_rejected(store: PredictionStore) -> None:
    with pytest.raises(ConfigError, match="duplicate"):
        AlertEngine([rule(), rule()], store)
