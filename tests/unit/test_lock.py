"""Lock naming, backend choice and advisory keys (no processes, no database).

Mutual exclusion, timeouts, a killed holder and leader fail-over, with real processes on SQLite
(file locks) and PostgreSQL (advisory locks): tests/service/test_locks.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mnistops.errors import ConfigError
from mnistops.settings import Settings
from mnistops.store.advisory import NAMESPACE, lock_key
from mnistops.store.lock import LeaderLease, lock_path, locked, uses_postgres


def test_lock_names_are_plain_file_names(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'p.db'}")
    with pytest.raises(ConfigError):
        lock_path(settings, "../escape")
    with pytest.raises(ConfigError), locked(settings, "no spaces"):
        pass
    with pytest.raises(ConfigError):
        LeaderLease(settings, "a/b")
    assert lock_path(settings, "registry") == tmp_path / "locks" / "registry.lock"


def test_backend_follows_the_database_url(tmp_path: Path) -> None:
    assert not uses_postgres(Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'p.db'}"))
    assert uses_postgres(Settings(home=tmp_path, database_url="postgresql://u@db.example:5432/ops"))
    assert uses_postgres(Settings(home=tmp_path, database_url="postgresql+psycopg://u@h/ops"))


def test_advisory_keys_are_stable_and_namespaced() -> None:
    # the same key in another interpreter (hash randomisation must not leak into lock keys)
    code = "from mnistops.store.advisory import lock_key; print(*lock_key('registry'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert tuple(int(x) for x in other.stdout.split()) == lock_key("registry")
    keys = {lock_key(n) for n in ("registry", "leader-controller", "retrain", "retrain-submit")}
    assert len(keys) == 4
    assert all(a == NAMESPACE and 0 <= b < 2**31 for a, b in keys)  # positive int4s (pg_locks oids)
