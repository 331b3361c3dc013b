"""CPU inference for the service, and hot-swapping of the served model.

:class:`OnnxClassifier` (default) runs ``model.onnx`` with onnxruntime; :class:`TorchClassifier`
runs ``model.pt`` and is the fallback when the ONNX file is missing or unloadable. Both are
thread-safe: ``InferenceSession.run`` is, and the torch module is only read under
``inference_mode``.

:func:`load_model_dir` loads and warms up a model folder as a :class:`LoadedModel`; the service's
:class:`~mnistops.service.follower.ModelFollower` swaps them as the champion alias moves.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

# constants is torch-free: the ONNX serving path never imports torch (~1 s and ~200 MB per process)
from mnistops.constants import MEAN, STD
from mnistops.errors import InputError, ModelError, ModelNotFoundError

__all__ = ["MEAN", "STD", "LoadedModel", "OnnxClassifier", "TorchClassifier", "load_model_dir"]

log = logging.getLogger(__name__)


class Classifier(Protocol):
    """What the service needs from a model backend."""

    backend: str

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probs [N,10] float32, logits [N,10] float32) of uint8 images [N,28,28]."""
        ...


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 [N,28,28] → float32 [N,1,28,28], ``(x/255 - MEAN) / STD`` (the training transform)."""
    if images.dtype != np.uint8:
        raise InputError(f"images must be uint8, got {images.dtype}")
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.shape[0] == 0:
        raise InputError(f"images must be [N,28,28] with N >= 1, got {list(images.shape)}")
    x = images.astype(np.float32)[:, None] / np.float32(255.0)
    return (x - np.float32(MEAN)) / np.float32(STD)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax [N,K] → float32 [N,K] (max-subtracted for stability)."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class OnnxClassifier:
    """onnxruntime session on ``model.onnx`` (input ``image`` [N,1,28,28], output ``logits`` [N,10])."""

    backend = "onnx"

    def __init__(self, path: Path, intra_op_threads: int = 1) -> None:
        """Load the session.

        Args:
            path: ``model.onnx`` or a model folder containing it.
            intra_op_threads: Threads per ``run``. 1 serves many concurrent requests best on a
                small machine (parallelism comes from concurrent requests, not inside one).

        Raises:
            ModelNotFoundError: No ONNX file there.
            ModelError: The file is not a loadable model with the expected input/output.
        """
        import onnxruntime as ort  # lazy: keeps `import mnistops.service` light for the CLI

        path = Path(path)
        if path.is_dir():
            path = path / "model.onnx"
        if not path.is_file():
            raise ModelNotFoundError(f"no ONNX model at {path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle pool threads must not spin on a CPU shared with the web server
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own (non-exported) exception types
            raise ModelError(f"cannot load ONNX model {path}: {exc}") from exc
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != ["image"] or "logits" not in outputs:
            raise ModelError(f"{path}: expected input 'image' and output 'logits', got {inputs} → {outputs}")
        self.path = path

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Classify uint8 images [N,28,28] (or one [28,28]).

        Returns:
            (probs [N,10] float32, logits [N,10] float32).
        """
        logits = np.asarray(self.session.run(["logits"], {"image": normalize(images)})[0], dtype=np.float32)
        return softmax(logits), logits


class TorchClassifier:
    """``model.pt`` through :func:`mnistops.training.model.load_model` (fallback backend)."""

    backend = "torch"

    def __init__(self, path: Path) -> None:
        """Load the weights.

        Args:
            path: ``model.pt`` or a model folder containing it.

        Raises:
            ModelNotFoundError: No weights there.
            ModelError: The checkpoint does not load.
        """
        from mnistops.training.model import (
            load_model,  # lazy: torch is only imported when this backend is used
        )

        self.model = load_model(Path(path))
        self.path = Path(path)

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Classify uint8 images [N,28,28] (or one [28,28]).

        Returns:
            (probs [N,10] float32, logits [N,10] float32).
        """
        import torch

        x = torch.from_numpy(normalize(images))
        with torch.inference_mode():
            logits = self.model(x).float().numpy()
        return softmax(logits), logits


@dataclass(frozen=True)
class LoadedModel:
    """A fully loaded, warmed-up model version, ready to serve."""

    version: str
    model_dir: Path
    backend: str  # the backend actually used ("onnx", or "torch" after a fallback)
    classifier: Classifier
    metrics: dict[str, Any] = field(default_factory=dict)  # metrics.json
    loaded_at: float = field(default_factory=time.time)  # epoch seconds


def load_model_dir(
    version: str, model_dir: Path, backend: str = "onnx", intra_op_threads: int = 1
) -> LoadedModel:
    """Load a model folder, fall back from ONNX to torch if needed, and warm it up.

    Args:
        version: Registry version (or any label) of the folder.
        model_dir: Folder with ``model.onnx`` and/or ``model.pt`` and ``metrics.json``.
        backend: Preferred backend, ``"onnx"`` or ``"torch"``.
        intra_op_threads: onnxruntime threads per run.

    Returns:
        The loaded model; a warm-up prediction has already succeeded.

    Raises:
        ModelNotFoundError: The folder does not exist.
        ModelError: No backend could load it, or the warm-up output is wrong.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelNotFoundError(f"model folder {model_dir} does not exist")
    if backend not in ("onnx", "torch"):
        raise ModelError(f"unknown inference backend {backend!r}")
    clf: Classifier
    if backend == "onnx":
        try:
            clf = OnnxClassifier(model_dir, intra_op_threads=intra_op_threads)
        except ModelError as exc:
            if not (model_dir / "model.pt").is_file():
                raise
            log.warning("ONNX backend unavailable for version %s (%s); falling back to torch", version, exc)
            clf = TorchClassifier(model_dir)
    else:
        clf = TorchClassifier(model_dir)
    probs, logits = clf.predict(np.zeros((2, 28, 28), dtype=np.uint8))  # warm-up + sanity check
    if probs.shape != (2, 10) or logits.shape != (2, 10) or not np.isfinite(logits).all():
        raise ModelError(f"model {model_dir} gives {list(logits.shape)} / non-finite logits, want [N,10]")
    return LoadedModel(version, model_dir, clf.backend, clf, _read_metrics(model_dir))


def _read_metrics(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "metrics.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:  # metrics are informational: serve the model anyway
        log.warning("unreadable %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}
