"""Data side of the drift benchmark: the model, the reference, per-scenario prediction pools, windows.

Speed: the model runs once per pool (the clean test set once; each shifted scenario once per seed
on a fixed random subset of the test set); a window is then assembled by index, taking each row
from the clean or the shifted pool exactly as :func:`mnistops.demo.scenarios.sample_stream` would.
"""

from __future__ import annotations

import gzip
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mnistops.demo.scenarios import Scenario, sample_indices
from mnistops.monitor.drift import Sample
from mnistops.monitor.performance import calibrated_probs
from mnistops.training.data import Mnist, parse_idx
from mnistops.training.evaluate import predict_embeddings
from mnistops.training.model import MnistNet, load_model

FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # where the Debian package puts its idx files
FASHION_IMAGES = "t10k-images-idx3-ubyte"


def _fashion_file(folder: Path) -> Path | None:
    for name in (FASHION_IMAGES, FASHION_IMAGES + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def find_fashion(folder: Path | None = None) -> tuple[Path | None, str]:
    """Locate Fashion-MNIST test images: ``folder``, else the installed Debian package. Never downloads.

    Returns:
        (path of the idx file or None, a human-readable note on where it was looked for).
    """
    if folder is not None:
        found = _fashion_file(folder)
        return found, f"{folder}" if found else f"no {FASHION_IMAGES}[.gz] in {folder}"
    installed = subprocess.run(["dpkg", "-s", FASHION_PACKAGE], capture_output=True, check=False).returncode
    if installed != 0:
        return None, f"Debian package {FASHION_PACKAGE} is not installed"
    listing = subprocess.run(["dpkg", "-L", FASHION_PACKAGE], capture_output=True, text=True, check=False)
    dirs = {Path(p).parent for p in listing.stdout.splitlines() if Path(p).name.startswith(FASHION_IMAGES)}
    for d in [FASHION_DIR, *sorted(dirs)]:
        found = _fashion_file(d)
        if found:
            return found, str(found)
    return None, f"{FASHION_PACKAGE} is installed but has no {FASHION_IMAGES}"


def load_idx_images(path: Path) -> np.ndarray:
    """uint8 [N,28,28] from a raw or gzipped idx3 file."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return np.ascontiguousarray(parse_idx(raw, path.name), dtype=np.uint8)


def get_model(model_dir: Path | None, mnist: Mnist, progress: bool = True) -> tuple[MnistNet, str]:
    """Load ``model_dir/model.pt``; otherwise train one with the default TrainConfig (no tracking).

    If ``model_dir`` is given but empty, the trained model is written there (reusable next run);
    without it, into a temporary folder.

    Returns:
        (model in eval mode, description of where it came from).
    """
    if model_dir is not None and (model_dir / "model.pt").is_file():
        return load_model(model_dir), f"loaded {model_dir}"
    from mnistops.settings import Settings
    from mnistops.training.train import TrainConfig, run_training

    with tempfile.TemporaryDirectory() as tmp:
        out = model_dir or Path(tmp) / "model"
        # a throwaway home so nothing lands in the user's MLflow store (track=False anyway)
        settings = Settings(home=Path(tmp), data_dir=Path(tmp) / "unused")
        res = run_training(TrainConfig(), settings, out_dir=out, mnist=mnist, track=False, progress=progress)
        acc = res.metrics["test_accuracy"]
        return res.model.eval(), f"trained (default TrainConfig) -> {out}, test accuracy {acc:.4f}"


@dataclass(frozen=True)
class Pool:
    """Model outputs for every image of a pool (the clean test set or one shifted copy of it)."""

    logits: np.ndarray  # float64 [N,10]
    probs: np.ndarray  # float64 [N,10], temperature-calibrated
    embeddings: np.ndarray  # float32 [N,D]
    images: np.ndarray  # uint8 [N,28,28]

    @classmethod
    def compute(cls, model: MnistNet, images: np.ndarray, temperature: float) -> Pool:
        """Run the model once over uint8 images [N,28,28]."""
        logits_t, emb_t = predict_embeddings(model, torch.from_numpy(np.ascontiguousarray(images)))
        logits = logits_t.numpy().astype(np.float64)
        return cls(logits, calibrated_probs(logits, temperature), emb_t.numpy().astype(np.float32), images)

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, ...]:
        """(logits, probs, embeddings, images) of the given rows."""
        return self.logits[idx], self.probs[idx], self.embeddings[idx], self.images[idx]


@dataclass(frozen=True)
class ScenarioPool:
    """A scenario's pool for one seed: a subset of the test set, clean and shifted outputs."""

    scenario: Scenario
    subset: np.ndarray  # [P] indices into the test set
    labels: np.ndarray  # [P] true labels of the subset
    clean: Pool  # the whole clean test set (shared between scenarios)
    shifted: Pool | None  # [P] outputs on the transformed subset; None without a transform

    def window(self, n: int, delta: float, rng: np.random.Generator) -> tuple[Sample, np.ndarray, np.ndarray]:
        """One window, drawn like ``sample_stream``.

        Returns:
            (Sample, true labels [n], affected mask [n]).
        """
        local, affected = sample_indices(self.labels, n, self.scenario, delta, rng)
        parts = list(self.clean.rows(self.subset[local]))
        if self.shifted is not None and affected.any():
            for part, new in zip(parts, self.shifted.rows(local[affected]), strict=True):
                part[affected] = new
        logits, probs, emb, img = parts
        return Sample(probs=probs, logits=logits, embeddings=emb, images=img), self.labels[local], affected


def build_pool(
    scenario: Scenario,
    model: MnistNet,
    clean: Pool,
    test_labels: np.ndarray,
    temperature: float,
    seed: int,
    size: int,
) -> ScenarioPool:
    """Transform a seeded random subset of ``size`` test images once and run the model on it."""
    rng = np.random.default_rng([seed, 7])
    subset = np.sort(rng.choice(len(test_labels), size=min(size, len(test_labels)), replace=False))
    shifted = None
    if scenario.transform is not None:
        images = scenario.transform(clean.images[subset], rng)
        shifted = Pool.compute(model, images, temperature)
    return ScenarioPool(scenario, subset, test_labels[subset], clean, shifted)
