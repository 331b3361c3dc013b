"""The API conforms to its own OpenAPI schema and to HTTP: schemathesis, all checks, every phase.

A real ``mnistops serve`` process (uvicorn, the registry's champion, an admin token) is fuzzed
through schemathesis' pytest integration: examples, coverage (boundary values, missing headers,
undeclared methods → 405 + ``Allow``), fuzzing (positive data must be accepted, negative data
rejected with 4xx) and the stateful phase (OpenAPI links: a prediction's id goes straight into
feedback). Every built-in check runs on every response, as with ``schemathesis run --checks all``.

Budget: bounded examples keep this at about a minute on 2 cores; raise MNISTOPS_FUZZ_EXAMPLES
for a longer hunt. Image content comes from tests/service/schemathesis_hooks.py (see
schemathesis.toml).
"""

from __future__ import annotations

import json
import os
import tomllib
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from live_server import CLEAN_EXIT, REPO, LiveServer, make_registry
from schemathesis.config import SchemathesisConfig

pytestmark = pytest.mark.slow

TOKEN = "fuzz-admin-token"
EXAMPLES = int(os.environ.get("MNISTOPS_FUZZ_EXAMPLES", "50"))


def fuzz_config() -> SchemathesisConfig:
    """The repository's schemathesis.toml plus this test's bounds and admin credentials.

    The admin operations are fuzzed authenticated, so the ignored-auth check also proves that a
    missing or wrong token is refused (``retrain`` only queues a job; no worker runs here).
    """
    raw = tomllib.loads((REPO / "schemathesis.toml").read_text())
    raw["hooks"] = str(REPO / raw["hooks"])  # the file names it relative to the repo root
    raw["generation"] = {"max-examples": EXAMPLES, "database": "none"}
    raw["phases"] = {"stateful": {"max-steps": 6}}
    raw["operations"] = [
        {
            "include-operation-id": ["admin_promote", "admin_rollback", "admin_retrain"],
            "headers": {"Authorization": f"Bearer {TOKEN}"},
        }
    ]
    return SchemathesisConfig.from_dict(raw)


@pytest.fixture(scope="module")
def live_api(
    tmp_path_factory: pytest.TempPathFactory, cached_data_dir: Path, trained_model_dir: Path
) -> Iterator[str]:
    """Base URL of a real server: two registered versions, version 1 champion, an admin token."""
    root = tmp_path_factory.mktemp("fuzz")
    reg = make_registry(root / "reg", cached_data_dir, trained_model_dir, n_versions=2)
    server = LiveServer(reg.env(root / "home", admin_token=TOKEN), root / "home")
    try:
        server.wait_ready()
        yield f"http://127.0.0.1:{server.port}"
    finally:
        code = server.terminate()
        assert code in CLEAN_EXIT, server.log_path.read_text()[-4000:]


def served_schema() -> dict[str, Any]:
    """The document the server above serves: same app factory, same settings that shape it.

    (schemathesis' lazy ``from_fixture`` loader does not run under pytest 9, so the schema is
    built at collection time and requests go to the live server's ``base_url``.)
    """
    from mnistops.service.app import create_app
    from mnistops.settings import Settings

    settings = Settings(home=Path("/nonexistent-unused"), admin_token=TOKEN)  # type: ignore[arg-type]
    return create_app(settings).openapi()


schema = schemathesis.openapi.from_dict(served_schema(), config=fuzz_config())
SENT: Counter[str] = Counter()  # requests per phase and generation mode, e.g. "coverage/negative"


@schema.hook
def after_call(context: schemathesis.HookContext, case: schemathesis.Case, response: Any) -> None:
    """Count what was sent, so the suite proves every phase and mode ran (and reports how much)."""
    meta = case.meta
    SENT[f"{meta.phase.name.value}/{meta.generation.mode.value}" if meta else "other"] += 1


def test_served_schema_is_the_fuzzed_one(live_api: str) -> None:
    """Guard: the collection-time document equals what the live process serves."""
    with urllib.request.urlopen(f"{live_api}/openapi.json", timeout=10) as r:
        assert json.load(r) == served_schema()


@schema.parametrize()
@hsettings(deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms(case: schemathesis.Case, live_api: str) -> None:
    """Examples, coverage and fuzzing phases: every response passes every check."""
    case.call_and_validate(base_url=live_api)


def test_stateful_links_conform(live_api: str) -> None:
    """Stateful phase: sequences along the schema's links (predict → feedback) pass every check."""

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": live_api}

    Machine.run(
        settings=hsettings(
            max_examples=EXAMPLES,
            stateful_step_count=6,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    assert SENT["stateful/positive"] > EXAMPLES, SENT


def test_every_phase_ran() -> None:
    """Runs after the tests above (file order): each phase sent positive and negative requests."""
    print("schemathesis requests by phase/mode:", dict(sorted(SENT.items())))
    for key in ("examples/positive", "coverage/positive", "coverage/negative", "fuzzing/positive"):
        assert SENT[key] > 0, SENT
    assert SENT["fuzzing/negative"] > 0, SENT


def test_schema_states_the_contract() -> None:
    """What the fuzzing relies on is in the served document: links, security, documented errors."""
    raw = schema.raw_schema
    links = raw["paths"]["/v1/predict"]["post"]["responses"]["200"]["links"]
    assert links["feedback"]["operationId"] == "submit_feedback"
    image = raw["components"]["schemas"]["ImageIn"]
    assert [s["$ref"].rsplit("/", 1)[1] for s in image["oneOf"]] == ["PixelsIn", "Base64In"]
    promote = raw["paths"]["/v1/admin/promote"]["post"]
    assert promote["security"] == [{"adminToken": []}]
    assert "WWW-Authenticate" in promote["responses"]["401"]["headers"]
    for path, item in raw["paths"].items():
        for method, op in item.items():
            assert "200" in op["responses"] and op.get("operationId"), (method, path)
