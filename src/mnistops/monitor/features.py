"""Interpretable per-image statistics of raw uint8 digits (vectorised numpy, no model needed).

These let the input-drift detector say *what* changed ("strokes got thicker", "digits moved left",
"the background is no longer black") instead of only "the embedding distribution moved". The same
function fills ``ReferenceProfile.input_stats``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from mnistops.errors import DriftInputError

INK_THRESHOLD = 128  # a pixel is "ink" at >= half intensity (MNIST strokes are ~255, background 0)
SIDE = 28
STAT_NAMES: tuple[str, ...] = (
    "mean_intensity",  # mean pixel value on [0, 1]
    "ink_fraction",  # share of ink pixels
    "bbox_height",  # rows spanned by ink (0 if no ink)
    "bbox_width",  # columns spanned by ink
    "centre_row",  # intensity-weighted centroid row (13.5 for a blank image)
    "centre_col",  # intensity-weighted centroid column
    "stroke_thickness",  # 2 * ink area / ink perimeter (~ stroke width in pixels for thin strokes)
    "background_mean",  # mean value of non-ink pixels on [0, 1] (noise, contrast changes)
)


def _check_images(images: Any) -> NDArray[np.uint8]:
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    x = np.asarray(images)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or x.shape[1:] != (SIDE, SIDE):
        raise DriftInputError(f"images must be [N, 28, 28], got {x.shape}")
    if x.dtype != np.uint8:
        raise DriftInputError(f"images must be uint8 0-255, got {x.dtype}")
    return x


def _extent(mask_like: Any) -> NDArray[np.float64]:
    """Length of the span of True entries along axis 1 of an [N, 28] mask (0 if none)."""
    mask = np.asarray(mask_like, dtype=bool)
    any_ = mask.any(axis=1)
    first = mask.argmax(axis=1)
    last = SIDE - 1 - mask[:, ::-1].argmax(axis=1)
    return np.where(any_, last - first + 1, 0).astype(np.float64)


def image_stats(images: Any) -> dict[str, NDArray[np.float64]]:
    """Per-image statistics.

    Args:
        images: [N, 28, 28] (or [N, 1, 28, 28]) uint8 pixels.

    Returns:
        ``{name: [N] float64}`` for every name in :data:`STAT_NAMES`.
    """
    x = _check_images(images)
    xf = x.astype(np.float64) / 255.0  # [N, 28, 28]
    ink = x >= INK_THRESHOLD  # [N, 28, 28]
    n_ink = ink.sum(axis=(1, 2)).astype(np.float64)  # [N]
    n_px = float(SIDE * SIDE)

    mass = xf.sum(axis=(1, 2))  # [N]
    coords = np.arange(SIDE, dtype=np.float64)
    safe = np.where(mass > 0, mass, 1.0)
    centre_row = np.where(mass > 0, (xf.sum(axis=2) @ coords) / safe, (SIDE - 1) / 2)
    centre_col = np.where(mass > 0, (xf.sum(axis=1) @ coords) / safe, (SIDE - 1) / 2)

    # perimeter = number of ink/background pixel edges, counting the frame as background
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    edges = (padded[:, 1:, :] != padded[:, :-1, :]).sum(axis=(1, 2)) + (
        padded[:, :, 1:] != padded[:, :, :-1]
    ).sum(axis=(1, 2))
    thickness = np.where(edges > 0, 2.0 * n_ink / np.maximum(edges, 1), 0.0)

    n_bg = n_px - n_ink
    bg_sum = np.where(ink, 0.0, xf).sum(axis=(1, 2))
    background = np.where(n_bg > 0, bg_sum / np.maximum(n_bg, 1), 0.0)

    return {
        "mean_intensity": xf.mean(axis=(1, 2)),
        "ink_fraction": n_ink / n_px,
        "bbox_height": _extent(ink.any(axis=2)),
        "bbox_width": _extent(ink.any(axis=1)),
        "centre_row": centre_row,
        "centre_col": centre_col,
        "stroke_thickness": thickness,
        "background_mean": background,
    }


def stats_matrix(images: Any) -> NDArray[np.float64]:
    """Statistics as an [N, len(STAT_NAMES)] matrix, columns in :data:`STAT_NAMES` order."""
    stats = image_stats(images)
    return np.stack([stats[k] for k in STAT_NAMES], axis=1)
