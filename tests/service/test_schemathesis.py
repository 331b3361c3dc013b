"""Property-based fuzzing of every documented route against the OpenAPI schema: never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from mnistops.service.app import create_app
from mnistops.settings import Settings


@pytest.fixture(scope="module")
def fuzz_app(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    s = Settings(home=tmp_path_factory.mktemp("fuzz"), admin_token="fuzz-token")  # type: ignore[arg-type]
    app = create_app(s, resolver=lambda: ("1", trained_model_dir))
    with TestClient(app):  # runs the lifespan: store, logger, model follower
        yield app


def test_no_server_errors(fuzz_app: FastAPI) -> None:
    # schemathesis' pytest plugin does not support pytest 9 yet: drive each operation's strategy
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    failures: list[str] = []
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 8

    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: schemathesis.Case) -> None:
            response = case.call()
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path}: {response.status_code} {response.text[:200]}")
            elif response.status_code >= 400 and "application/json" in response.headers.get(
                "content-type", ""
            ):
                body = response.json()
                if set(body) != {"error", "detail"}:
                    failures.append(f"{case.method} {case.path}: error body {body}")

        check()
    assert not failures, failures[:5]
