"""Session fixtures shared by every suite.

The dataset comes from the cache that `make setup` fills (tests never touch the network).
A model is trained ONCE per session into a temporary home with its own MLflow store, so no
test depends on a model left on disk by an earlier run.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from mnistops.errors import ModelNotFoundError
from mnistops.registry.profile import build_profile
from mnistops.settings import Settings, get_settings
from mnistops.store.predictions import PredictionStore
from mnistops.training.data import FILES, Mnist, load_mnist, split_train_val
from mnistops.training.model import load_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cached_data_dir() -> Path:
    """Folder with the four verified idx files (filled by `make setup`)."""
    d = Path(os.environ.get("MNISTOPS_DATA_DIR", REPO / ".mnistops" / "data"))
    missing = [n for n in FILES if not (d / n).is_file()]
    if missing:
        pytest.fail(f"MNIST not cached in {d} ({missing}); run `make setup` first", pytrace=False)
    return d


@pytest.fixture(scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory, cached_data_dir: Path) -> Path:
    """A private MNISTOPS_HOME whose data dir links to the cached idx files."""
    home = tmp_path_factory.mktemp("home")
    data = home / "data"
    data.mkdir()
    for name in FILES:
        (data / name).symlink_to(cached_data_dir / name)
    return home


@pytest.fixture(scope="session")
def settings(session_home: Path) -> Iterator[Settings]:
    """Settings pointing every store (MLflow, prediction log) into the session home."""
    mp = pytest.MonkeyPatch()
    for key in list(os.environ):
        if key.startswith("MNISTOPS_") and key != "MNISTOPS_TEST_POSTGRES_URL":
            mp.delenv(key)
    mp.setenv("MNISTOPS_HOME", str(session_home))
    get_settings.cache_clear()
    s = get_settings()
    s.ensure_dirs()
    yield s
    mp.undo()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def mnist(cached_data_dir: Path) -> Mnist:
    """The whole dataset in memory."""
    return load_mnist(cached_data_dir)


@pytest.fixture(scope="session")
def mnist_test_data(mnist: Mnist) -> tuple[torch.Tensor, torch.Tensor]:
    """(test images uint8 [10000,28,28], labels int64 [10000])."""
    return mnist.test_images, mnist.test_labels


@pytest.fixture(scope="session")
def models_dir(settings: Settings) -> Path:
    """Folder holding this session's trained models."""
    return settings.models_path


@pytest.fixture(scope="session")
def trained_model_dir(settings: Settings, mnist: Mnist, models_dir: Path) -> Path:
    """A model trained once per session with the default recipe (tracked in the session's MLflow)."""
    from mnistops.training.train import TrainConfig, run_training

    res = run_training(
        TrainConfig(seed=0), settings, out_dir=models_dir / "seed0", mnist=mnist, progress=False
    )
    return res.out_dir


@pytest.fixture(scope="session")
def get_latest_model(trained_model_dir: Path, models_dir: Path) -> Callable[[], Path]:
    """Returns the newest model folder under models_dir (as the seed's fixture did)."""

    def latest() -> Path:
        dirs = [p for p in models_dir.iterdir() if (p / "model.pt").is_file()]
        return max(dirs, key=lambda p: (p / "model.pt").stat().st_mtime)

    return latest


# --- shared by the service and e2e suites: a registry stand-in and a webhook receiver ---------
N_REF = 2000  # validation images in the reference profile; the following ones are clean traffic


class FakeRegistry:
    """Registry stand-in: version "1" is the session's trained model, with a validation profile."""

    def __init__(self, model_dir: Path, profile_dir: Path) -> None:
        self.model_dir, self.profile_dir = model_dir, profile_dir

    def download(self, version: str) -> Path:
        """Model folder of a version."""
        if version != "1":
            raise ModelNotFoundError(version)
        return self.model_dir

    def download_profile(self, version: str) -> Path:
        """Reference-profile folder of a version."""
        if version != "1":
            raise ModelNotFoundError(version)
        return self.profile_dir

    def alias_version(self, alias: str) -> str | None:
        """Only ``champion`` is set (no challenger: no shadow traffic)."""
        return "1" if alias == "champion" else None

    def get_version(self, version: str) -> SimpleNamespace:
        """Aliases and gate result, as ``GET /v1/model`` reads them."""
        if version != "1":
            raise ModelNotFoundError(version)
        return SimpleNamespace(version="1", aliases=["champion"], gate_passed=True)

    def history(self, limit: int | None = None) -> list[Any]:
        """No promotions recorded."""
        return []


@pytest.fixture(scope="session")
def profile_dir(trained_model_dir: Path, mnist: Mnist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Reference profile of the trained model on the first N_REF validation images."""
    s = split_train_val(mnist)
    prof = build_profile(load_model(trained_model_dir), s.val_x[:N_REF], s.val_y[:N_REF], version="1")
    return prof.save(tmp_path_factory.mktemp("e2e-profile"))


@pytest.fixture
def fake_registry(trained_model_dir: Path, profile_dir: Path) -> FakeRegistry:
    """A fresh fake registry over the session's model and profile."""
    return FakeRegistry(trained_model_dir, profile_dir)


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback webhook receiver: (url, JSON bodies received)."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


# --- stores: every store test runs on SQLite and, when available, PostgreSQL -------------------------
# PostgreSQL comes from ``MNISTOPS_TEST_POSTGRES_URL`` (``eval "$(bash .ci/postgres.sh start)"``);
# each test gets its own fresh schema (via ``search_path``), dropped afterwards.
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
