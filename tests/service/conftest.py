"""Prediction-store fixtures: every store test runs on SQLite and, when available, PostgreSQL.

PostgreSQL comes from ``MNISTOPS_TEST_POSTGRES_URL`` (``eval "$(bash .ci/postgres.sh start)"``);
each test gets its own fresh schema (via ``search_path``), dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from mnistops.store.predictions import PredictionStore

PG_ENV = "MNISTOPS_TEST_POSTGRES_URL"
PG_SKIP = "PostgreSQL not available: set MNISTOPS_TEST_POSTGRES_URL (.ci/postgres.sh)"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an empty store: a SQLite file in tmp_path, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'predictions.db'}"
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(PG_SKIP)
    base_url = make_url(base)
    if base_url.drivername == "postgresql":
        base_url = base_url.set(drivername="postgresql+psycopg")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(base_url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = base_url.update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def store(store_url: str) -> Iterator[PredictionStore]:
    """An empty, migrated store (closed after the test)."""
    s = PredictionStore(store_url)
    s.migrate()
    yield s
    s.close()
