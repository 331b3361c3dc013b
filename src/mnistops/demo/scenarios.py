"""Synthetic production shifts on uint8 digits, shared by the demo, the drift benchmark and tests.

Every transform takes uint8 images [N,28,28] and a numpy Generator and returns uint8 [N,28,28];
``sample_stream`` applies one to an affected fraction δ of a window; ``sample_indices`` draws the
same window as indices only (for benchmarks that transform a whole pool once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mnistops.errors import DataError

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _affine(images: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Batched affine resampling (θ [N,2,3] maps output to input coords), fill 0."""
    x = torch.from_numpy(images).float().unsqueeze(1) / 255.0
    grid = F.affine_grid(torch.from_numpy(theta).float(), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    return (out[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def rotate(max_deg: float) -> Transform:
    """Rotate by ±max_deg (random sign, magnitude uniform in [max_deg/2, max_deg])."""

    def f(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = len(images)
        deg = rng.uniform(max_deg / 2, max_deg, n) * rng.choice([-1, 1], n)
        rad = np.deg2rad(deg)
        c, s, z = np.cos(rad), np.sin(rad), np.zeros(n)
        return _affine(images, np.stack([np.stack([c, -s, z], 1), np.stack([s, c, z], 1)], 1))

    return f


def translate(max_px: float) -> Transform:
    """Shift by up to max_px pixels in each direction."""

    def f(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = len(images)
        t = rng.uniform(-max_px, max_px, (n, 2)) * 2 / 28  # pixels → normalised coords
        one, z = np.ones(n), np.zeros(n)
        theta = np.stack([np.stack([one, z, -t[:, 0]], 1), np.stack([z, one, -t[:, 1]], 1)], 1)
        return _affine(images, theta)

    return f


def zoom(factor: float) -> Transform:
    """Scale the digit by ``factor`` about the centre (>1 bigger, <1 smaller)."""

    def f(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = len(images)
        s, z = np.full(n, 1 / factor), np.zeros(n)
        return _affine(images, np.stack([np.stack([s, z, z], 1), np.stack([z, s, z], 1)], 1))

    return f


def noise(sigma255: float) -> Transform:
    """Additive Gaussian noise with std ``sigma255`` on the 0-255 scale, clipped."""

    def f(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = images.astype(np.float32) + rng.normal(0, sigma255, images.shape).astype(np.float32)
        return np.clip(x, 0, 255).round().astype(np.uint8)

    return f


def thicken(iterations: int = 1) -> Transform:
    """Thicker strokes: grey-level dilation with a 3x3 max filter."""

    def f(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = torch.from_numpy(images).float().unsqueeze(1)
        for _ in range(iterations):
            x = F.max_pool2d(x, 3, stride=1, padding=1)
        return x[:, 0].to(torch.uint8).numpy()

    return f


def invert() -> Transform:
    """Colour inversion (dark ink on white)."""

    def f(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return (255 - images).astype(np.uint8)

    return f


def foreign(pool: np.ndarray) -> Transform:
    """Replace each image by a random image of another dataset (e.g. Fashion-MNIST), uint8 [M,28,28]."""
    if pool.ndim != 3 or pool.shape[1:] != (28, 28) or pool.dtype != np.uint8 or len(pool) == 0:
        raise DataError(f"foreign pool must be non-empty uint8 [M,28,28], got {pool.dtype} {pool.shape}")

    def f(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return pool[rng.integers(0, len(pool), len(images))].copy()

    return f


def compose(*fs: Transform) -> Transform:
    """Apply transforms in order."""

    def f(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for g in fs:
            images = g(images, rng)
        return images

    return f


@dataclass(frozen=True)
class Scenario:
    """A named shift: an image transform and/or a class knock-out."""

    name: str
    transform: Transform | None = None
    knockout_class: int | None = None  # remove this class from the stream ...
    knockout_share: float = 0.0  # ... with this probability per sample


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("clean"),
        Scenario("noise_10", noise(10)),
        Scenario("noise_50", noise(50)),
        Scenario("noise_100", noise(100)),
        Scenario("rotate_10", rotate(10)),
        Scenario("rotate_40", rotate(40)),
        Scenario("rotate_90", rotate(90)),
        Scenario("translate_4", translate(4)),
        Scenario("zoom_0.7", zoom(0.7)),
        Scenario("thicken", thicken(1)),
        Scenario("invert", invert()),
        Scenario("knockout_50", knockout_class=1, knockout_share=0.5),
        Scenario("knockout_100", knockout_class=1, knockout_share=1.0),
    )
}

# The demo's harmful shift: rotated, thicker and noisier digits (a new scanner + pen).
DEMO_SHIFT = compose(rotate(45), thicken(1), noise(40))


def sample_indices(
    labels: np.ndarray, n: int, scenario: Scenario, delta: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Which rows of a labelled pool form a window, and which of them are shifted.

    The index-only half of :func:`sample_stream` (same random draws, same order), for benchmarks that
    transform a whole pool once and then assemble many windows by index.

    Returns:
        (indices into the pool [n], affected bool [n]; all False for scenarios without a transform).
    """
    pool = np.arange(len(labels))
    if scenario.knockout_class is not None:
        # knock-out ignores delta: it removes a share of one class from the whole window
        drop = (labels == scenario.knockout_class) & (rng.random(len(labels)) < scenario.knockout_share)
        pool = pool[~drop]
    idx = rng.choice(pool, size=n, replace=len(pool) < n)
    affected = np.zeros(n, dtype=bool)
    if scenario.transform is not None and delta > 0:
        affected = rng.random(n) < delta
    return idx, affected


def sample_stream(
    images: np.ndarray,
    labels: np.ndarray,
    n: int,
    scenario: Scenario,
    delta: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``n`` (image, label) pairs and shift a fraction ``delta`` of them.

    Returns:
        (images uint8 [n,28,28], labels [n], affected bool [n]).
    """
    idx, affected = sample_indices(labels, n, scenario, delta, rng)
    x, y = images[idx].copy(), labels[idx]
    if scenario.transform is not None and affected.any():
        x[affected] = scenario.transform(x[affected], rng)
    return x, y, affected
