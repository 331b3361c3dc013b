"""Shared shift scenarios: shapes and dtypes, what each transform does, knock-out and δ sampling."""

from __future__ import annotations

import numpy as np
import pytest

from mnistops.demo.scenarios import (
    SCENARIOS,
    Scenario,
    foreign,
    invert,
    noise,
    rotate,
    sample_indices,
    sample_stream,
    thicken,
    translate,
    zoom,
)
from mnistops.errors import DataError


def blob(row: int, col: int, n: int = 8, half: int = 2) -> np.ndarray:
    """n identical uint8 images [n,28,28] with a bright square centred at (row, col)."""
    x = np.zeros((n, 28, 28), np.uint8)
    x[:, row - half : row + half + 1, col - half : col + half + 1] = 255
    return x


def centroid(x: np.ndarray) -> np.ndarray:
    """Intensity-weighted (row, col) centre of each image [N,2]."""
    w = x.astype(np.float64)
    r, c = np.mgrid[0:28, 0:28]
    total = w.sum(axis=(1, 2))
    return np.stack([(w * r).sum(axis=(1, 2)) / total, (w * c).sum(axis=(1, 2)) / total], 1)


@pytest.mark.parametrize("name", [k for k, s in SCENARIOS.items() if s.transform is not None])
def test_every_transform_keeps_shape_and_dtype(name: str) -> None:
    x = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    fn = SCENARIOS[name].transform
    assert fn is not None
    out = fn(x, np.random.default_rng(1))
    assert out.shape == (5, 28, 28)
    assert out.dtype == np.uint8
    assert not np.array_equal(out, x)  # every shift changes something


def test_rotation_moves_mass_around_the_centre() -> None:
    x = blob(6, 14)  # 7.5 px above the centre (13.5, 13.5)
    out = rotate(90)(x, np.random.default_rng(0))
    # |angle| in [45, 90] moves a point at radius 7.5 by 2 r sin(angle/2) >= 5.7 px
    moved = np.linalg.norm(centroid(out) - centroid(x), axis=1)
    assert (moved > 4.5).all()
    # the mass stays on the circle around the centre (rotation, not a shift)
    radius = np.linalg.norm(centroid(out) - 13.5, axis=1)
    assert np.allclose(radius, 7.5, atol=1.0)


def test_translate_moves_and_zoom_shrinks() -> None:
    x = blob(14, 14, half=4)
    shifted = translate(4)(x, np.random.default_rng(0))
    assert np.abs(centroid(shifted) - centroid(x)).max() > 1.0
    small = zoom(0.7)(x, np.random.default_rng(0))
    assert (small > 127).sum() < (x > 127).sum() * 0.7


def test_noise_changes_pixels_and_stays_in_range() -> None:
    x = np.full((4, 28, 28), 128, np.uint8)
    out = noise(50)(x, np.random.default_rng(0))
    changed = (out != x).mean()
    assert changed > 0.9
    assert 40 < out.astype(np.float64).std() < 60  # ~50, barely clipped around mid-grey
    assert abs(out.astype(np.float64).mean() - 128) < 3


def test_thicken_adds_ink_and_invert_flips() -> None:
    x = blob(14, 14, half=1)
    assert (thicken(1)(x, np.random.default_rng(0)) > 0).sum() > (x > 0).sum()
    assert np.array_equal(invert()(x, np.random.default_rng(0)), 255 - x)


def test_foreign_draws_from_the_pool_and_rejects_bad_pools() -> None:
    pool = np.stack([np.full((28, 28), v, np.uint8) for v in (7, 9)])
    out = foreign(pool)(np.zeros((50, 28, 28), np.uint8), np.random.default_rng(0))
    assert set(np.unique(out)) == {7, 9}
    with pytest.raises(DataError):
        foreign(np.zeros((3, 28, 28), np.float32))


def test_knockout_removes_the_class() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 100)
    images = np.zeros((1000, 28, 28), np.uint8)
    _, y, affected = sample_stream(images, labels, 2000, SCENARIOS["knockout_100"], 1.0, rng)
    assert 1 not in y
    assert not affected.any()  # knock-out changes the mix, not the images
    _, y50, _ = sample_stream(images, labels, 4000, SCENARIOS["knockout_50"], 1.0, rng)
    share = (y50 == 1).mean()
    assert 0.03 < share < 0.07  # half of the 10 % is gone: ~5.3 % of the remaining stream


def test_delta_sets_the_affected_fraction_and_only_those_rows_change() -> None:
    labels = np.arange(500) % 10
    images = (np.arange(500) % 200).astype(np.uint8)[:, None, None] * np.ones((1, 28, 28), np.uint8)
    sc = Scenario("invert", invert())
    x, _, affected = sample_stream(images, labels, 2000, sc, 0.3, np.random.default_rng(3))
    assert 0.25 < affected.mean() < 0.35
    idx, again = sample_indices(labels, 2000, sc, 0.3, np.random.default_rng(3))
    assert np.array_equal(again, affected)  # index-only sampling draws the same window
    assert np.array_equal(x[~affected], images[idx][~affected])
    assert np.array_equal(x[affected], 255 - images[idx][affected])
    _, _, none = sample_stream(images, labels, 100, sc, 0.0, np.random.default_rng(3))
    assert not none.any()
