"""Two processes promoting at once on PostgreSQL, as if on two hosts.

Each process has its own ``MNISTOPS_HOME`` (so the file lock cannot serialise them) and shares
only the PostgreSQL database (audit trail, advisory lock) and the MLflow store with the other.
Afterwards the audit trail must be one chain (each promotion starts where the previous one
ended) and the aliases must match its last event.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
from pathlib import Path
from typing import Any

import pytest

from mnistops.registry.core import CHAMPION, PREVIOUS, Registry
from mnistops.registry.tracking import setup_tracking
from mnistops.settings import Settings

ROUNDS = 8  # promotions per process

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _host(root: Path, name: str, db_url: str) -> Settings:
    """One 'host': its own home, the shared MLflow store and database."""
    return Settings(home=root / name, tracking_uri=f"sqlite:///{root / 'mlflow.db'}", database_url=db_url)


def _promote_rounds(root: str, name: str, db_url: str, versions: list[str], start: Any) -> None:
    reg = Registry(_host(Path(root), name, db_url))
    reg.aliases(), reg.history()  # connect to both stores first: the two race from the first promotion
    start.wait(120)
    for i in range(ROUNDS):
        # alternating between two versions: never "already champion"; force: the gate goes stale
        reg.promote(versions[i % 2], actor=name, reason=f"race {i}", force=True)


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_concurrent_promotions_from_two_hosts(
    store_url: str, tmp_path: Path, trained_model_dir: Path
) -> None:
    parent = Registry(_host(tmp_path, "parent", store_url))
    exp = setup_tracking(parent.settings)
    versions = [
        parent.register(trained_model_dir, run_id=parent.client.create_run(exp).info.run_id, profile=False)
        for _ in range(4)
    ]
    assert len(set(versions)) == 4
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_promote_rounds, args=(str(tmp_path), name, store_url, vs, start))
        for name, vs in (("host-a", versions[:2]), ("host-b", versions[2:]))
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]

    events = parent.history()
    assert len(events) == 2 * ROUNDS
    actors = [e.actor for e in events]
    assert sorted(actors) == ["host-a"] * ROUNDS + ["host-b"] * ROUNDS
    print("promotion order:", " ".join(a[-1] for a in actors))
    assert events[0].from_version is None
    for prev, ev in itertools.pairwise(events):
        assert ev.from_version == prev.to_version, f"interleaved promotions: {prev} then {ev}"
    aliases = parent.aliases()
    assert aliases[CHAMPION] == events[-1].to_version
    assert aliases[PREVIOUS] == events[-1].from_version
