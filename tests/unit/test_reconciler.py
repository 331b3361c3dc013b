"""The reconciler tick by tick on synthetic facts: timeline events and their fields, the retrain →
shadow → promote → watch path, forced releases rolled back, effects never taken twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helpers.control import FakeRegistry, add_traffic, add_window, finish_job
from mnistops.controller.metrics import ControllerMetrics
from mnistops.controller.reconciler import Reconciler
from mnistops.errors import LeadershipLostError, StoreError
from mnistops.monitor.alerts.engine import AlertEngine
from mnistops.settings import Settings
from mnistops.store.jobs import JobQueue
from mnistops.store.predictions import PredictionStore
from mnistops.store.rollouts import Rollouts
from mnistops.store.timeline import Timeline, TimelineEvent


class Lease:
    def __init__(self) -> None:
        self.ok = True

    def held(self) -> bool:
        return self.ok


class World:
    """A reconciler over a real store and an in-memory registry (champion "1")."""

    def __init__(self, store: PredictionStore, home: Path) -> None:
        self.store, self.lease = store, Lease()
        self.settings = Settings(
            home=home,
            database_url=store.url.render_as_string(hide_password=False),
            watch_windows=3,
            rollback_tolerance=0.02,
            retrain_cooldown_seconds=0,
            retrain_min_labelled=10,
            shadow_requests=40,
            shadow_min_labelled=20,
        )
        self.reg = FakeRegistry(self.settings, "1")
        self.alert_failures = 0  # the next n alert engines raise (a crash right after an effect)
        self.metrics = ControllerMetrics()
        self.rec = Reconciler(
            self.settings, store, self.reg, self.lease, alerts=self._alerts, metrics=self.metrics
        )
        self.rec.tick()  # first start: cursors at "now"

    def _alerts(self) -> AlertEngine:
        if self.alert_failures:
            self.alert_failures -= 1
            raise StoreError("database went away")
        return AlertEngine.from_settings(self.settings, self.store)

    def events(self, kind: str | None = None) -> list[TimelineEvent]:
        return [e for e in Timeline(self.store).list() if kind is None or e.kind == kind]

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events()]

    def states(self) -> list[str]:
        return [r.state for r in reversed(Rollouts(self.store).list())]

    def firing(self) -> list[str]:
        return [a.rule for a in self.store.list_alerts(state="firing")]

    def count(self, name: str) -> float:
        value = self.metrics.registry.get_sample_value(name)
        return 0.0 if value is None else value


@pytest.fixture
def world(store: PredictionStore, tmp_path: Path) -> World:
    return World(store, tmp_path)


def test_first_start_follows_facts_from_now_on(store: PredictionStore, tmp_path: Path) -> None:
    add_window(store, "1", drifted=True)  # history before the first start
    w = World(store, tmp_path)
    assert w.events() == [] and Rollouts(store).get_state("controller") is not None
    add_traffic(store, "1", 30, champion_acc=0.9)
    win = add_window(store, "1", estimated=0.912, realized=0.9, n=30)  # realized n not recorded: counted
    w.rec.tick()
    (ev,) = w.events()
    assert ev.kind == "window" and ev.version == "1" and ev.seq == store.max_seq()
    assert ev.detail == f"window {win.window}: ok, estimated 0.912, realized 0.900 (n=30)"
    assert ev.data == {
        "window": win.window,
        "start_seq": win.end_seq - 29,
        "end_seq": win.end_seq,
        "drifted": False,
    }
    w.rec.tick()
    assert len(w.events()) == 1  # a fact is handled once


def test_alerts_go_on_the_timeline_but_not_the_controllers_own(world: World) -> None:
    world.store.open_alert("DataDrift", "warning", "drift in window 3")
    world.store.open_alert("AutoRollback", "critical", "rolled back")
    world.rec.tick()
    (ev,) = world.events()
    assert (ev.kind, ev.detail, ev.data) == (
        "alert",
        "DataDrift (warning): drift in window 3",
        {"rule": "DataDrift"},
    )
    assert JobQueue(world.store).list() == []  # DataDrift alone does not retrain


def _drift_until_retrain(world: World) -> int:
    add_traffic(world.store, "1", 50, champion_acc=0.9)
    add_window(world.store, "1", realized=0.9, realized_n=50, drifted=True)
    world.store.open_alert("DataDriftSustained", "critical", "drift for 2 windows")
    world.rec.tick()
    (job,) = JobQueue(world.store).list()
    assert job.trigger == "alerts:DataDriftSustained" and job.state == "queued"
    return job.id


def test_retrain_shadow_promote_watch_pass(world: World) -> None:
    job_id = _drift_until_retrain(world)
    world.rec.tick()
    assert len(JobQueue(world.store).list()) == 1 and len(world.events("retrain_started")) == 1
    (started,) = world.events("retrain_started")
    assert started.data == {"job": job_id} and started.detail.startswith(
        f"job {job_id}: DataDriftSustained firing"
    )

    finish_job(world.store, job_id, "2", challenger=True)
    world.reg.set_challenger("2")
    world.rec.tick()
    (fin,) = world.events("retrain_finished")
    assert fin.version == "2" and fin.data == {"challenger": True} and "version 2 challenger" in fin.detail
    assert [e.detail for e in world.events("shadow")] == ["challenger 2 shadows live traffic"]

    add_traffic(world.store, "1", 40, champion_acc=0.8, challenger="2", challenger_acc=0.95)
    world.rec.tick()
    (passed,) = world.events("shadow_passed")
    assert passed.version == "2" and passed.data["agreement"] == pytest.approx(0.8)  # 32 rows both right
    (promoted,) = world.events("promoted")
    assert (promoted.detail, promoted.data) == ("champion 1 → 2", {"forced": False})
    assert world.reg.alias["champion"] == "2" and world.reg.history()[-1].actor == "controller"
    assert world.events("watch")[-1].detail == "watching 2 for 3 windows against 1 (0.9000)"

    for _ in range(3):
        add_window(world.store, "2", realized=0.95, realized_n=100)
        world.rec.tick()
    assert [e.data["action"] for e in world.events("watch")[1:]] == ["watch", "watch", "passed"]
    assert world.states() == ["stable"] and world.reg.calls["promote"] == 1
    assert world.count("mnistops_promotions_total") == 1
    assert (
        world.kinds().index("retrain_finished")
        < world.kinds().index("shadow")
        < world.kinds().index("promoted")
    )


def _forced_bad_release(world: World) -> None:
    add_window(world.store, "1", realized=0.97, realized_n=100)
    world.rec.tick()
    world.reg.promote("3", actor="alice", force=True)
    world.rec.tick()
    assert world.events("promoted")[-1].detail == "champion 1 → 3 (FORCED)"
    add_window(world.store, "3", realized=0.5, realized_n=100)


def test_forced_bad_release_is_rolled_back_once_and_alerted(world: World) -> None:
    _forced_bad_release(world)
    world.rec.tick()
    (rb,) = world.events("rollback")
    assert rb.version == "1" and rb.data == {"from_version": "3", "watched_windows": 1}
    assert rb.detail.startswith("automatic rollback 3 → 1: realized accuracy 0.5000")
    assert world.reg.alias["champion"] == "1" and world.reg.history()[-1].actor == "controller:watch"
    assert world.firing() == ["AutoRollback"] and world.count("mnistops_rollbacks_total") == 1
    world.rec.tick()
    assert world.reg.calls["rollback"] == 1 and len(world.events("rollback")) == 1
    assert len(world.events("promoted")) == 1  # the restored champion is not a promotion
    add_window(world.store, "1")  # the restored champion's next window resolves the alert
    world.rec.tick()
    assert world.firing() == [] and world.states() == ["rolled_back"]


def test_crash_after_the_rollback_does_not_roll_back_twice(world: World) -> None:
    _forced_bad_release(world)
    world.alert_failures = 1  # the effect happened, then the process "died" before recording it
    with pytest.raises(StoreError):
        world.rec.tick()
    assert world.reg.alias["champion"] == "1" and world.events("rollback") == []
    assert world.states() == ["rolling_back"]
    world.rec.tick()
    assert world.reg.calls["rollback"] == 1 and len(world.events("rollback")) == 1
    assert world.firing() == ["AutoRollback"] and world.states() == ["rolled_back"]


def test_crash_after_the_promotion_does_not_promote_twice(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_window(world.store, "1", realized=0.8, realized_n=100)
    world.reg.set_challenger("2")
    world.rec.tick()
    add_traffic(world.store, "1", 40, champion_acc=0.8, challenger="2", challenger_acc=0.95)
    real = world.reg.promote

    def promote_then_die(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise StoreError("killed right after the promotion")

    monkeypatch.setattr(world.reg, "promote", promote_then_die)
    with pytest.raises(StoreError):
        world.rec.tick()
    monkeypatch.setattr(world.reg, "promote", real)
    assert world.states() == ["promoting"] and len(world.events("shadow_passed")) == 1
    world.rec.tick()
    assert world.reg.calls["promote"] == 1 and len(world.events("promoted")) == 1
    assert world.states() == ["watching"] and len(world.events("shadow_passed")) == 1


def _promotes(world: World, version: str) -> list[Any]:
    return [e for e in world.reg.history() if e.action == "promote" and e.to_version == version]


def test_killed_inside_the_promotion_completes_its_audit_row(world: World) -> None:
    add_window(world.store, "1", realized=0.8, realized_n=100)
    world.reg.set_challenger("2")
    world.rec.tick()
    add_traffic(world.store, "1", 40, champion_acc=0.8, challenger="2", challenger_acc=0.95)
    world.reg.die_before_audit = True  # aliases moved, audit row never written
    with pytest.raises(StoreError):
        world.rec.tick()
    assert world.reg.alias["champion"] == "2" and _promotes(world, "2") == []
    world.rec.tick()
    (row,) = _promotes(world, "2")
    assert (row.actor, row.from_version, row.details) == ("controller", "1", {"recovered": True})
    assert world.reg.calls["promote"] == 1 and len(world.events("promoted")) == 1
    assert world.states() == ["watching"]


def test_killed_inside_the_rollback_completes_its_audit_row(world: World) -> None:
    _forced_bad_release(world)
    world.reg.die_before_audit = True
    with pytest.raises(StoreError):
        world.rec.tick()
    assert world.reg.alias["champion"] == "1" and world.events("rollback") == []
    world.rec.tick()  # the champion moved without a row: not mistaken for a promotion of "1"
    assert world.reg.calls["rollback"] == 1 and len(world.events("rollback")) == 1
    assert [e.action for e in world.reg.history()] == ["promote", "auto-rollback"]
    assert len(world.events("promoted")) == 1 and world.firing() == ["AutoRollback"]


def test_refused_promotion_is_final(world: World) -> None:
    world.reg.refuse.add("2")
    world.reg.set_challenger("2")
    add_traffic(world.store, "1", 40, champion_acc=0.8, challenger="2", challenger_acc=0.95)
    world.rec.tick()
    (refused,) = world.events("promotion_refused")
    assert "gated against another champion" in refused.detail and world.states() == ["refused"]
    add_traffic(world.store, "1", 40, champion_acc=0.8, challenger="2", challenger_acc=0.95)
    world.rec.tick()
    assert len(world.events("shadow")) == 1 and len(world.events("shadow_passed")) == 1


def test_worse_challenger_is_rejected_once(world: World) -> None:
    world.reg.set_challenger("2")
    add_traffic(world.store, "1", 60, champion_acc=0.95, challenger="2", challenger_acc=0.5)
    world.rec.tick()
    (rej,) = world.events("shadow_rejected")
    assert "significantly worse" in rej.detail and world.states() == ["rejected"]
    add_traffic(world.store, "1", 60, champion_acc=0.5, challenger="2", challenger_acc=0.95)
    world.rec.tick()
    assert world.events("shadow_passed") == [] and world.reg.calls["promote"] == 0


def test_a_job_queued_by_somebody_else_is_followed(world: World) -> None:
    job = JobQueue(world.store).submit("api:bob", {"reason": "manual retrain"})
    world.rec.tick()
    assert [e.detail for e in world.events("retrain_started")] == [f"job {job.id}: manual retrain"]
    finish_job(world.store, job.id, "2", challenger=False)
    world.rec.tick()
    assert world.states() == ["no_challenger"] and world.events("shadow") == []


def test_a_manual_rollback_ends_the_watch(world: World) -> None:
    _forced_bad_release(world)
    world.reg.rollback(actor="bob", reason="by hand")
    world.rec.tick()
    assert world.states() == ["superseded"] and world.events("rollback") == []
    assert world.reg.calls["rollback"] == 1  # bob's


def test_a_registry_outage_is_not_an_alias_move(world: World) -> None:
    world.reg.set_challenger("2")
    world.rec.tick()
    world.reg.down = True
    add_traffic(world.store, "1", 40, champion_acc=0.8, challenger="2", challenger_acc=0.95)
    add_window(world.store, "1")
    world.rec.tick()
    assert world.states() == ["shadowing"] and world.kinds() == ["shadow", "window"]
    world.reg.down = False
    world.rec.tick()
    assert world.events("shadow_passed") and world.reg.alias["champion"] == "2"


def test_no_lease_no_step(world: World) -> None:
    world.lease.ok = False
    world.store.open_alert("DataDrift", "warning", "drift")
    with pytest.raises(LeadershipLostError):
        world.rec.tick()
    assert world.events() == []
