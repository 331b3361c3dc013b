"""Session fixtures shared by every suite.

The dataset comes from the cache that `make setup` fills (tests never touch the network).
A model is trained ONCE per session into a temporary home with its own MLflow store, so no
test depends on a model left on disk by an earlier run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from mnistops.data import FILES, Mnist, load_mnist
from mnistops.settings import Settings, get_settings

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
    from mnistops.train import TrainConfig, run_training

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
