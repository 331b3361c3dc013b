"""Per-image statistics on hand-drawn images with known geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mnistops.errors import DriftInputError
from mnistops.monitor.features import STAT_NAMES, image_stats, stats_matrix


def _bar(top: int, left: int, height: int, width: int, value: int = 255) -> np.ndarray:
    img = np.zeros((28, 28), dtype=np.uint8)
    img[top : top + height, left : left + width] = value
    return img


def test_bar_geometry() -> None:
    s = image_stats(np.stack([_bar(4, 10, 20, 2), _bar(4, 10, 20, 6)]))
    np.testing.assert_allclose(s["bbox_height"], [20, 20])
    np.testing.assert_allclose(s["bbox_width"], [2, 6])
    np.testing.assert_allclose(s["centre_row"], [13.5, 13.5])
    np.testing.assert_allclose(s["centre_col"], [10.5, 12.5])
    np.testing.assert_allclose(s["ink_fraction"], [40 / 784, 120 / 784])
    # 2 * area / perimeter: 2*40/44 and 2*120/52 -- grows with the stroke width
    np.testing.assert_allclose(s["stroke_thickness"], [80 / 44, 240 / 52])
    np.testing.assert_allclose(s["background_mean"], [0.0, 0.0])


def test_blank_and_noisy_images() -> None:
    blank = np.zeros((28, 28), dtype=np.uint8)
    noisy = _bar(4, 10, 20, 2) | np.full((28, 28), 40, dtype=np.uint8)
    s = image_stats(np.stack([blank, noisy]))
    assert s["bbox_height"][0] == 0 and s["stroke_thickness"][0] == 0 and s["centre_row"][0] == 13.5
    assert s["background_mean"][1] == pytest.approx(40 / 255)  # faint background is not ink
    assert s["bbox_width"][1] == 2


def test_matrix_order_and_torch_input() -> None:
    imgs = torch.from_numpy(np.stack([_bar(0, 0, 5, 5)] * 3)).unsqueeze(1)  # [3, 1, 28, 28]
    m = stats_matrix(imgs)
    assert m.shape == (3, len(STAT_NAMES))
    assert m[0, STAT_NAMES.index("bbox_height")] == 5


def test_rejects_float_or_wrong_shape() -> None:
    with pytest.raises(DriftInputError):
        image_stats(np.zeros((2, 28, 28), dtype=np.float32))
    with pytest.raises(DriftInputError):
        image_stats(np.zeros((2, 14, 14), dtype=np.uint8))
