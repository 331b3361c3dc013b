"""Reference profile of a registered version: what monitoring compares production traffic against.

Built once at registration from the fixed 5k validation split (never the test set, which the
gates use): raw logits, temperature-calibrated softmax, penultimate embeddings, the images and
labels themselves, predicted-class frequencies, a confidence histogram, the calibration
temperature and per-image input statistics. Stored as one ``profile.npz`` (arrays) plus
``profile.json`` (scalars, shapes, provenance) and logged to the version's run under
``reference_profile/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mnistops.errors import ModelError, ModelNotFoundError

if TYPE_CHECKING:
    from mnistops.training.model import MnistNet

CONF_EDGES = np.linspace(0.0, 1.0, 21)  # 20 confidence bins of width 0.05
FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class ReferenceProfile:
    """Reference distribution of one model version on the validation split (N = 5000)."""

    version: str  # registry version ("" before registration)
    temperature: float  # T > 0: calibrated probs = softmax(logits / T)
    logits: np.ndarray  # float32 [N,10]
    probs: np.ndarray  # float32 [N,10], temperature-calibrated
    embeddings: np.ndarray  # float32 [N,D] penultimate layer
    images: np.ndarray  # uint8 [N,28,28]
    labels: np.ndarray  # int64 [N]
    class_freq: np.ndarray  # float64 [10] share of each predicted class
    confidence_hist: np.ndarray  # float64 [20] share of max calibrated prob per CONF_EDGES bin
    input_stats: dict[str, np.ndarray]  # per-image statistics, each [N]
    confidence_edges: np.ndarray = field(default_factory=lambda: CONF_EDGES.copy())  # [21]
    meta: dict[str, Any] = field(default_factory=dict)  # created, accuracy, ece, ...

    @property
    def n(self) -> int:
        """Number of reference images."""
        return len(self.labels)

    def save(self, out_dir: Path) -> Path:
        """Write ``profile.npz`` and ``profile.json`` into ``out_dir`` (created) and return it."""
        out_dir.mkdir(parents=True, exist_ok=True)
        arrays = {
            "logits": self.logits,
            "probs": self.probs,
            "embeddings": self.embeddings,
            "images": self.images,
            "labels": self.labels,
            "class_freq": self.class_freq,
            "confidence_hist": self.confidence_hist,
            "confidence_edges": self.confidence_edges,
            **{f"input_stats.{k}": v for k, v in self.input_stats.items()},
        }
        np.savez_compressed(out_dir / "profile.npz", **arrays)  # type: ignore[arg-type]
        doc = {
            "format": FORMAT_VERSION,
            "version": self.version,
            "temperature": self.temperature,
            "n": self.n,
            "embedding_dim": int(self.embeddings.shape[1]),
            "input_stats": sorted(self.input_stats),
            "class_freq": self.class_freq.tolist(),
            "meta": self.meta,
        }
        (out_dir / "profile.json").write_text(json.dumps(doc, indent=1))
        return out_dir

    @classmethod
    def load(cls, in_dir: Path) -> ReferenceProfile:
        """Read a profile written by :meth:`save`.

        Raises:
            ModelNotFoundError: the files are missing.
            ModelError: they are unreadable.
        """
        npz, js = in_dir / "profile.npz", in_dir / "profile.json"
        if not (npz.is_file() and js.is_file()):
            raise ModelNotFoundError(f"no reference profile in {in_dir}")
        try:
            doc = json.loads(js.read_text())
            with np.load(npz) as z:
                arr = {k: z[k] for k in z.files}
            stats = {
                k.removeprefix("input_stats."): v for k, v in arr.items() if k.startswith("input_stats.")
            }
            return cls(
                version=str(doc["version"]),
                temperature=float(doc["temperature"]),
                logits=arr["logits"],
                probs=arr["probs"],
                embeddings=arr["embeddings"],
                images=arr["images"],
                labels=arr["labels"],
                class_freq=arr["class_freq"],
                confidence_hist=arr["confidence_hist"],
                confidence_edges=arr["confidence_edges"],
                input_stats=stats,
                meta=dict(doc.get("meta", {})),
            )
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"cannot read reference profile in {in_dir}: {exc}") from exc


@torch.inference_mode()
def build_profile(
    model: MnistNet, val_x: torch.Tensor, val_y: torch.Tensor, version: str = ""
) -> ReferenceProfile:
    """Compute the reference profile of ``model`` on validation images.

    Args:
        model: the registered model (eval mode is set here).
        val_x: uint8 [N,28,28] validation images.
        val_y: int64 [N] labels.
        version: registry version the profile belongs to.
    """
    from mnistops.monitor.features import image_stats
    from mnistops.monitor.performance import calibrated_probs, fit_temperature
    from mnistops.training.evaluate import predict_embeddings

    logits_t, emb_t = predict_embeddings(model.eval(), val_x)
    logits = logits_t.numpy().astype(np.float32)
    labels = val_y.numpy().astype(np.int64)
    temperature = fit_temperature(logits, labels)
    probs = calibrated_probs(logits, temperature).astype(np.float32)
    conf = probs.max(axis=1)
    pred = probs.argmax(axis=1)
    hist = np.histogram(conf, bins=CONF_EDGES)[0] / len(conf)
    images = val_x.numpy().astype(np.uint8)
    return ReferenceProfile(
        version=str(version),
        temperature=float(temperature),
        logits=logits,
        probs=probs,
        embeddings=emb_t.numpy().astype(np.float32),
        images=images,
        labels=labels,
        class_freq=np.bincount(pred, minlength=logits.shape[1]) / len(pred),
        confidence_hist=hist,
        input_stats={k: np.asarray(v) for k, v in image_stats(images).items()},
        meta={
            "created": datetime.now(UTC).isoformat(),
            "val_accuracy": float((pred == labels).mean()),
            "mean_confidence": float(conf.mean()),
        },
    )
