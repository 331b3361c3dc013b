"""Behaviour of the session's trained model (the seed's tests, with parametrized thresholds)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from mnistops.training.data import normalize
from mnistops.training.evaluate import accuracy, add_noise, onnx_logits, predict_logits
from mnistops.training.model import count_params, load_model


@pytest.fixture(scope="module")
def model_dir(get_latest_model: Callable[[], Path]) -> Path:
    return get_latest_model()


def test_param_count(model_dir: Path) -> None:
    assert count_params(load_model(model_dir)) < 25_000


@pytest.mark.parametrize("n", [1, 16])
def test_io_shapes(model_dir: Path, n: int) -> None:
    out = load_model(model_dir)(torch.zeros(n, 1, 28, 28))
    assert out.shape == (n, 10)


@pytest.mark.parametrize("threshold", [0.95, 0.99])
def test_accuracy_above(
    model_dir: Path, mnist_test_data: tuple[torch.Tensor, torch.Tensor], threshold: float
) -> None:
    x, y = mnist_test_data
    assert accuracy(predict_logits(load_model(model_dir), x), y) > threshold


def test_single_image(model_dir: Path, mnist_test_data: tuple[torch.Tensor, torch.Tensor]) -> None:
    # rule: the first image of the test set (index 0, a "7")
    x, y = mnist_test_data
    pred = int(load_model(model_dir)(normalize(x[:1])).argmax(1))
    assert pred == int(y[0])


@pytest.mark.parametrize("threshold", [0.90, 0.95])
def test_noise_robustness(
    model_dir: Path, mnist_test_data: tuple[torch.Tensor, torch.Tensor], threshold: float
) -> None:
    x, y = mnist_test_data
    assert accuracy(predict_logits(load_model(model_dir), add_noise(x, 0.3)), y) > threshold


def test_onnx_matches_pytorch(model_dir: Path, mnist_test_data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = mnist_test_data[0][:1000]
    diff = np.abs(onnx_logits(model_dir / "model.onnx", x) - predict_logits(load_model(model_dir), x).numpy())
    assert float(diff.max()) < 1e-4


def test_onnx_alone_reproduces_reported_accuracy(
    model_dir: Path, mnist_test_data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = mnist_test_data
    reported = json.loads((model_dir / "metrics.json").read_text())["test_accuracy"]
    assert abs(accuracy(onnx_logits(model_dir / "model.onnx", x), y) - reported) * 100 <= 0.01


def test_metrics_file_complete(model_dir: Path) -> None:
    m = json.loads((model_dir / "metrics.json").read_text())
    for key in (
        "test_accuracy",
        "noisy_test_accuracy",
        "params",
        "train_seconds",
        "seed",
        "data_md5",
        "run_id",
    ):
        assert key in m
    for png in ("augmentation_samples.png", "confusion_matrix.png", "noisy_images_visualization.png"):
        assert (model_dir / png).stat().st_size > 1000
