"""The controller's durable promises with real processes and SIGKILL.

``python -m mnistops controller run`` runs against a private MLflow store (three registered copies
of the session model, version 1 champion) and a SQLite operational database into which the test
writes the facts the other roles would (monitor windows, labelled and shadowed predictions). The
controller is killed at the moments that matter and restarted; what it did is read back from the
timeline, the rollouts and the registry's audit trail.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_server import RegistryHome, free_port, make_registry

from helpers.control import ControllerProcess, add_traffic, add_window, wait_for
from mnistops.registry.core import CHALLENGER, CHAMPION, PREVIOUS, Registry
from mnistops.settings import Settings
from mnistops.store.predictions import PredictionStore
from mnistops.store.rollouts import Rollouts
from mnistops.store.timeline import Timeline, TimelineEvent

pytestmark = pytest.mark.slow

TICK = "0.2"


@pytest.fixture(scope="module")
def registry_home(
    tmp_path_factory: pytest.TempPathFactory, cached_data_dir: Path, trained_model_dir: Path
) -> RegistryHome:
    """One MLflow store with versions 1-3 (identical weights); tests reset the aliases."""
    return make_registry(tmp_path_factory.mktemp("controller"), cached_data_dir, trained_model_dir, 3)


class Plant:
    """One test's world: the database, the registry as the test sees it, controller processes."""

    def __init__(self, registry_home: RegistryHome, tmp_path: Path) -> None:
        self.home = tmp_path / "home"
        self.db = f"sqlite:///{tmp_path / 'ops.db'}"
        self.settings = Settings(
            home=self.home,
            data_dir=registry_home.data_dir,
            tracking_uri=registry_home.tracking_uri,
            database_url=self.db,
        )
        self.reg = Registry(self.settings)
        self.store = PredictionStore(self.db)
        self.store.migrate()
        self.registry_home = registry_home
        self.procs: list[ControllerProcess] = []
        client = self.reg.client
        client.set_registered_model_alias(self.reg.name, CHAMPION, "1")
        for alias in (CHALLENGER, PREVIOUS):
            with contextlib.suppress(Exception):  # not set
                client.delete_registered_model_alias(self.reg.name, alias)

    def start(self, name: str = "controller") -> ControllerProcess:
        env = self.registry_home.env(
            self.home,
            database_url=self.db,
            controller_port=str(free_port()),
            controller_tick_seconds=TICK,
            watch_windows="3",
            rollback_tolerance="0.02",
            shadow_requests="40",
            shadow_min_labelled="20",
        )
        proc = ControllerProcess(env, self.home, name)
        self.procs.append(proc)
        return proc

    def started(self, proc: ControllerProcess) -> ControllerProcess:
        """Wait until ``proc`` leads and has written its cursors."""
        wait_for(
            lambda: proc.healthz().get("leader"), 90, lambda: f"{proc.log_path.name} to lead:\n{proc.log()}"
        )
        wait_for(lambda: Rollouts(self.store).get_state("controller"), 30, "the cursors")
        return proc

    def events(self, kind: str) -> list[TimelineEvent]:
        return [e for e in Timeline(self.store).list() if e.kind == kind]

    def event(self, kind: str, timeout: float = 60, poll: float = 0.05, **match: Any) -> TimelineEvent:
        """Wait for the first event of ``kind`` whose data contains ``match``."""

        def found() -> TimelineEvent | None:
            return next((e for e in self.events(kind) if match.items() <= e.data.items()), None)

        def what() -> str:
            return f"a {kind} event {match}; logs:\n" + "\n".join(p.log() for p in self.procs)

        event: TimelineEvent = wait_for(found, timeout, what, poll=poll)
        return event

    def close(self) -> None:
        for p in self.procs:
            p.stop()
        self.store.close()


@pytest.fixture
def plant(registry_home: RegistryHome, tmp_path: Path) -> Iterator[Plant]:
    p = Plant(registry_home, tmp_path)
    yield p
    p.close()


def test_killed_during_the_watch_of_a_forced_broken_release_still_rolls_back(plant: Plant) -> None:
    add_window(plant.store, "1", realized=0.97, realized_n=200)
    first = plant.started(plant.start())
    plant.reg.promote("3", actor="alice", reason="hotfix", force=True)  # skips shadow and gates
    start = plant.event("watch")
    assert start.detail == "watching 3 for 3 windows against 1 (0.9700)"
    add_window(plant.store, "3", realized=0.965, realized_n=200)  # within tolerance
    plant.event("watch", action="watch")
    first.kill()  # mid-watch: one window judged, two to go
    bad = add_window(plant.store, "3", realized=0.40, realized_n=200)  # broken, and nobody watching

    plant.started(plant.start("controller-2"))
    rollback = plant.event("rollback")
    assert rollback.version == "1" and rollback.data == {"from_version": "3", "watched_windows": 2}
    assert [w.model_version for w in plant.store.latest_windows(10)].count("3") == 2  # within 3 windows
    assert plant.reg.aliases()[CHAMPION] == "1"
    autos = [e for e in plant.reg.history() if e.action == "auto-rollback"]
    assert [(e.from_version, e.to_version, e.actor) for e in autos] == [("3", "1", "controller:watch")]
    assert [a.rule for a in plant.store.list_alerts(state="firing")] == ["AutoRollback"]
    assert [e.data["action"] for e in plant.events("watch")[1:]] == ["watch", "rollback"]
    assert plant.events("watch")[-1].data["window"] == bad.window


def test_killed_around_the_promotion_gives_one_verdict_and_one_promotion(plant: Plant) -> None:
    add_window(plant.store, "1", realized=0.8, realized_n=200)
    plant.reg.set_tags("2", {"gate_passed": "true", "gate_champion": "1"})
    plant.reg.set_challenger("2")
    first = plant.started(plant.start())
    plant.event("shadow")
    add_traffic(plant.store, "1", 40, champion_acc=0.8, challenger="2", challenger_acc=0.95)
    plant.event("shadow_passed", poll=0.005)
    first.kill()  # the verdict is recorded; the promotion is about to run, or running

    plant.started(plant.start("controller-2"))
    promoted = plant.event("promoted")
    assert promoted.detail == "champion 1 → 2" and promoted.data == {"forced": False}
    plant.event("watch")
    assert plant.reg.aliases()[CHAMPION] == "2"
    promotes = [e for e in plant.reg.history() if e.action == "promote" and e.to_version == "2"]
    assert len(promotes) == 1 and promotes[0].actor == "controller"
    assert len(plant.events("shadow_passed")) == 1 and len(plant.events("shadow")) == 1
    assert len(plant.events("promoted")) == 1
    assert [r.state for r in Rollouts(plant.store).list()] == ["watching"]


def test_two_controllers_one_leader(plant: Plant) -> None:
    add_window(plant.store, "1", realized=0.97, realized_n=200)
    a, b = plant.start("controller-a"), plant.start("controller-b")
    leader = wait_for(lambda: next((p for p in (a, b) if p.healthz().get("leader")), None), 90, "a leader")
    standby = b if leader is a else a
    plant.started(leader)  # its first tick saw champion 1
    wait_for(lambda: standby.metrics().get("mnistops_controller_leader") == 0.0, 30, "the standby's metrics")
    plant.reg.promote("3", actor="alice", force=True)
    plant.event("watch")
    add_window(plant.store, "3", realized=0.40, realized_n=200)
    plant.event("rollback")
    wait_for(lambda: leader.metrics().get("mnistops_rollbacks_total") == 1.0, 10, "the leader's count")
    m = standby.metrics()
    assert m["mnistops_controller_leader"] == 0.0 and m["mnistops_controller_ticks_total"] == 0.0
    assert m["mnistops_rollbacks_total"] == 0.0
    assert len(plant.events("rollback")) == 1 and len(plant.events("promoted")) == 1

    leader.kill()  # the standby takes over
    wait_for(lambda: standby.healthz().get("leader"), 30, "the standby to lead")
    wait_for(lambda: standby.metrics().get("mnistops_controller_ticks_total", 0) > 0, 10, "its ticks")
    assert len(plant.events("rollback")) == 1
