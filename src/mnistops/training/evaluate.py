"""Evaluation: accuracy, per-class report, robustness to noise and rotation, ONNX parity, plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnistops.training.augment import AugmentConfig, AugmentParams, apply_params
from mnistops.training.data import Mnist, normalize
from mnistops.training.model import MnistNet, count_params, load_model


@torch.inference_mode()
def predict_embeddings(
    model: MnistNet, images: torch.Tensor, batch: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N,10] and penultimate embeddings [N,D] of uint8 images [N,28,28]."""
    model.eval()
    logits, feats = [], []
    for i in range(0, len(images), batch):
        f = model.features(normalize(images[i : i + batch]))
        feats.append(f)
        logits.append(model.classify(f))
    return torch.cat(logits), torch.cat(feats)


def predict_logits(model: MnistNet, images: torch.Tensor, batch: int = 2048) -> torch.Tensor:
    """Logits [N,10] of uint8 images [N,28,28]."""
    return predict_embeddings(model, images, batch)[0]


def add_noise(images: torch.Tensor, sigma: float = 0.3, seed: int = 0) -> torch.Tensor:
    """Gaussian noise with std ``sigma`` on the [0,1] scale, clipped, back to uint8 [N,28,28]."""
    g = torch.Generator().manual_seed(seed)
    x = images.float() / 255.0 + torch.randn(images.shape, generator=g) * sigma
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8)


def rotate(images: torch.Tensor, max_deg: float = 15.0, seed: int = 0) -> torch.Tensor:
    """Rotate each image by an angle uniform in [-max_deg, max_deg], fill 0; uint8 out."""
    g = torch.Generator().manual_seed(seed)
    n = len(images)
    no = torch.zeros(n, dtype=torch.bool)
    params = AugmentParams((torch.rand(n, generator=g) * 2 - 1) * max_deg, no, no)
    out = apply_params(
        images.float().unsqueeze(1) / 255.0, params, AugmentConfig(rotate_deg=max_deg, crop_p=0)
    )
    return (out[:, 0].clamp(0, 1) * 255).round().to(torch.uint8)


def onnx_logits(onnx_path: Path, images: torch.Tensor) -> np.ndarray:
    """Logits [N,10] from the ONNX file alone, via onnxruntime (float32 normalised input)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = normalize(images).numpy()
    out: np.ndarray = sess.run(["logits"], {"image": x})[0]
    return out


def accuracy(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Top-1 accuracy."""
    pred = np.asarray(logits).argmax(1)
    return float((pred == np.asarray(labels)).mean())


def confusion(pred: np.ndarray, labels: np.ndarray, k: int = 10) -> np.ndarray:
    """Confusion matrix [k,k]: rows true class, columns predicted."""
    return np.bincount(labels * k + pred, minlength=k * k).reshape(k, k)


def per_class(cm: np.ndarray) -> dict[str, list[float]]:
    """Per-class precision, recall and F1 from a confusion matrix."""
    tp = np.diag(cm).astype(float)
    precision = tp / np.maximum(cm.sum(0), 1)
    recall = tp / np.maximum(cm.sum(1), 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist()}


def evaluate_model(
    model_or_dir: MnistNet | Path, mnist: Mnist, out_dir: Path | None = None, noise_sigma: float = 0.3
) -> dict[str, Any]:
    """Full evaluation on the 10k test set; writes PNGs and ``evaluation.json`` when ``out_dir`` is given.

    Returns:
        Metrics: test/noisy/rotated accuracy, per-class report, confusion matrix, params.
    """
    model = load_model(model_or_dir) if isinstance(model_or_dir, Path) else model_or_dir
    x, y = mnist.test_images, mnist.test_labels
    logits = predict_logits(model, x)
    pred, labels = logits.argmax(1).numpy(), y.numpy()
    cm = confusion(pred, labels)
    noisy = add_noise(x, noise_sigma, seed=0)
    metrics: dict[str, Any] = {
        "test_accuracy": accuracy(logits, y),
        "noisy_test_accuracy": accuracy(predict_logits(model, noisy), y),
        "noise_sigma": noise_sigma,
        "rotated_test_accuracy": accuracy(predict_logits(model, rotate(x, 15.0)), y),
        "params": count_params(model),
        "per_class": per_class(cm),
        "confusion_matrix": cm.tolist(),
    }
    metrics["macro_f1"] = float(np.mean(metrics["per_class"]["f1"]))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_confusion(cm, out_dir / "confusion_matrix.png")
        plot_noisy(x[:5], noisy[:5], out_dir / "noisy_images_visualization.png", noise_sigma)
        (out_dir / "evaluation.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def plot_confusion(cm: np.ndarray, path: Path) -> Path:
    """Confusion matrix heat map with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5.4))
    ax.imshow(np.log1p(cm), cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", xticks=range(10), yticks=range(10), title="Confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_noisy(clean: torch.Tensor, noisy: torch.Tensor, path: Path, sigma: float) -> Path:
    """5 originals over their noisy versions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(clean)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4))
    for i in range(n):
        axes[0, i].imshow(clean[i].numpy(), cmap="gray", vmin=0, vmax=255)
        axes[1, i].imshow(noisy[i].numpy(), cmap="gray", vmin=0, vmax=255)
        axes[0, i].axis("off")
        axes[1, i].axis("off")
    axes[0, 0].set_title("original", fontsize=8)
    axes[1, 0].set_title(f"noise σ={sigma}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
