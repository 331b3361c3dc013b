"""The controller's durable state on SQLite and PostgreSQL: timeline keys, rollout compare-and-set,
one transaction per step, cursor feeds, the single-active-job queue."""

from __future__ import annotations

import threading

import pytest

from helpers.control import set_job
from mnistops.errors import ConflictError, NotFoundError
from mnistops.store.feed import Feed
from mnistops.store.jobs import JobQueue
from mnistops.store.predictions import MonitorWindow, PredictionStore
from mnistops.store.rollouts import Rollouts
from mnistops.store.timeline import Timeline


def test_timeline_key_makes_a_step_idempotent(store: PredictionStore) -> None:
    tl = Timeline(store)
    first = tl.record("shadow_passed", "at least as good", "2", {"agreement": 0.9}, key="rollout:1:passed")
    assert first is not None and first.seq == 0  # no predictions yet
    assert tl.record("shadow_passed", "again", "2", key="rollout:1:passed") is None
    tl.record("window", "window 0: ok", "1", {"window": 0})
    tl.record("window", "window 1: ok", "1", {"window": 1})  # no key: never deduplicated
    events = tl.list()
    assert [e.kind for e in events] == ["shadow_passed", "window", "window"]
    assert events[0].to_dict() == {
        "id": first.id,
        "ts": first.ts,
        "seq": 0,
        "kind": "shadow_passed",
        "detail": "at least as good",
        "version": "2",
        "data": {"agreement": 0.9},
    }
    assert [e.kind for e in tl.list(since_id=events[0].id, limit=1)] == ["window"]
    assert tl.has("rollout:1:passed") and not tl.has("rollout:2:passed")


def test_rollout_compare_and_set(store: PredictionStore) -> None:
    ro = Rollouts(store)
    r = ro.create("shadowing", version="2", reason="challenger")
    assert (r.revision, r.active) == (0, True) and ro.active() == [r]
    moved = ro.update(r, state="promoting", data={"audit_before": 7})
    assert moved is not None and moved.revision == 1 and moved.data == {"audit_before": 7}
    assert ro.update(r, state="rejected") is None  # stale revision: lost the race, nothing written
    assert ro.get(r.id).state == "promoting"
    done = ro.update(moved, state="superseded")
    assert done is not None and not done.active and ro.active() == []
    assert [x.id for x in ro.list(version="2")] == [r.id]
    with pytest.raises(NotFoundError):
        ro.get(999)
    with pytest.raises(ValueError, match="unknown rollout state"):
        ro.update(done, state="bogus")


def test_a_step_commits_all_or_nothing(store: PredictionStore) -> None:
    ro, tl = Rollouts(store), Timeline(store)
    r = ro.create("watching", version="3", previous_version="2")
    stale = ro.update(r, data={"observed": 1})
    assert stale is not None
    with pytest.raises(ConflictError), ro.step() as step:
        step.record("watch", "window ok", "3", key="rollout:w:1")
        step.put_state("controller", {"window_id": 5})
        step.update(r, state="stable")  # r is at revision 0, the row at 1: the step rolls back
    assert tl.list() == [] and ro.get_state("controller") is None and ro.get(r.id).state == "watching"
    with ro.step() as step:
        step.record("watch", "window ok", "3", key="rollout:w:1")
        step.put_state("controller", {"window_id": 5})
        step.put_state("controller", {"window_id": 6})  # upsert
        step.update(stale, state="stable")
    assert [e.kind for e in tl.list()] == ["watch"]
    assert ro.get_state("controller") == {"window_id": 6} and ro.get(r.id).state == "stable"


def test_feed_reads_after_a_cursor(store: PredictionStore) -> None:
    feed = Feed(store)
    assert feed.last_ids() == (0, 0) and feed.windows_after(0) == []
    ids = [store.insert_window(MonitorWindow(i, 100 * i, 1.0 * i, 100, "1")).id for i in range(3)]
    store.open_alert("DataDrift", "warning", "drift")
    ev, _ = store.open_alert("RealizedAccuracyLow", "critical", "low")
    store.resolve_alert(ev.fingerprint)
    assert [w.window for w in feed.windows_after(ids[0])] == [1, 2]
    assert [w.window for w in feed.windows_after(0, limit=1)] == [0]
    alerts = feed.alerts_after(0)
    assert [a.rule for a in alerts] == ["DataDrift", "RealizedAccuracyLow"]
    assert alerts[1].state == "resolved"  # it fired once: a follower still sees it
    assert feed.last_ids() == (ids[-1], alerts[-1].id)


def test_job_queue_keeps_one_active_job(store: PredictionStore) -> None:
    q = JobQueue(store)
    assert q.active() is None and q.latest() is None
    results: list[int] = []

    def submit(k: int) -> None:
        results.append(q.submit(f"t{k}", {"reason": "drift"}).id)

    threads = [threading.Thread(target=submit, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1  # concurrent submitters all got the same job
    job = q.get(results[0])
    assert job.state == "queued" and job.details == {"reason": "drift"} and q.active() == job
    set_job(store, job.id, state="running")
    assert q.submit("again").id == job.id
    set_job(store, job.id, state="succeeded")
    second = q.submit("later")
    assert second.id != job.id and [j.id for j in q.list()] == [second.id, job.id]
    assert [j.id for j in q.list(state="succeeded")] == [job.id] and q.latest() == second
    with pytest.raises(NotFoundError):
        q.get(12345)
