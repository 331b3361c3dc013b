"""Batched data augmentation on tensors (no PIL, no per-image Python loop).

The seed's two augmentations, drawn independently per sample but applied to the whole batch
with a single ``affine_grid`` + ``grid_sample`` call:

* with probability ``crop_p`` a centre crop of ``crop_size`` x ``crop_size`` resized back to 28x28
  (a zoom by 28/crop_size about the centre), and
* a rotation uniform in [-rotate_deg, rotate_deg], filling with 0 (black).

Optionally (off in the seed) additive Gaussian pixel noise for robustness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation hyper-parameters (saved with every model)."""

    rotate_deg: float = 15.0  # max |rotation| in degrees, uniform; 0 disables
    crop_p: float = 0.1  # probability of the centre crop + resize
    crop_size: int = 22  # side of the centre crop, in pixels of the 28x28 image
    noise_p: float = 0.0  # probability of additive Gaussian noise (not in the seed)
    noise_sigma: float = 0.4  # max std on the [0,1] scale (uniform per sample); result clipped to [0,1]

    @property
    def enabled(self) -> bool:
        """False when every augmentation is off (then augment is the identity)."""
        return self.rotate_deg > 0 or self.crop_p > 0 or self.noise_p > 0


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample draws, exposed for tests and visualisation."""

    angles_deg: torch.Tensor  # float32 [N]
    cropped: torch.Tensor  # bool [N]
    noisy: torch.Tensor  # bool [N]


def sample_params(n: int, cfg: AugmentConfig, generator: torch.Generator | None = None) -> AugmentParams:
    """Draw the per-sample augmentation parameters for a batch of ``n``."""
    u = torch.rand(n, 3, generator=generator)
    return AugmentParams(
        angles_deg=(u[:, 0] * 2 - 1) * cfg.rotate_deg,
        cropped=u[:, 1] < cfg.crop_p,
        noisy=u[:, 2] < cfg.noise_p,
    )


def affine_matrices(params: AugmentParams, cfg: AugmentConfig) -> torch.Tensor:
    """Sampling matrices θ [N,2,3] mapping output to input coordinates (normalised [-1,1]).

    A crop-and-resize of the central k pixels samples only the inner k/28 of the input, i.e. a
    scale of k/28 on the output grid; composing it with the rotation gives one matrix per sample.
    """
    rad = params.angles_deg * (math.pi / 180.0)
    scale = torch.where(params.cropped, cfg.crop_size / 28.0, 1.0)
    cos, sin = torch.cos(rad) * scale, torch.sin(rad) * scale
    zero = torch.zeros_like(cos)
    return torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)


def augment_batch(
    x01: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Augment a batch of images on the [0,1] scale.

    Args:
        x01: float [N,1,28,28] in [0,1] (augment BEFORE normalising so the fill value 0 is black).
        cfg: augmentation config.
        generator: RNG for reproducibility.

    Returns:
        float [N,1,28,28] in [0,1].
    """
    if not cfg.enabled:
        return x01
    params = sample_params(x01.shape[0], cfg, generator)
    return apply_params(x01, params, cfg, generator)


def _affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``F.affine_grid(theta, [N,1,h,w], align_corners=False)`` by broadcasting: grid [N,h,w,2].

    Same values to float rounding; ATen's version is a batched matmul that profiled at 4x the
    cost for small batches on CPU.
    """
    xs = (torch.arange(w, dtype=theta.dtype) * 2 + 1) / w - 1  # pixel centres in [-1, 1]
    ys = (torch.arange(h, dtype=theta.dtype) * 2 + 1) / h - 1
    t = theta.view(-1, 6, 1, 1)
    gx = t[:, 0] * xs.view(1, 1, w) + t[:, 1] * ys.view(1, h, 1) + t[:, 2]
    gy = t[:, 3] * xs.view(1, 1, w) + t[:, 4] * ys.view(1, h, 1) + t[:, 5]
    return torch.stack((gx, gy), dim=-1)


def apply_params(
    x01: torch.Tensor, params: AugmentParams, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Apply already-drawn parameters to a batch (one grid_sample for the whole batch)."""
    theta = affine_matrices(params, cfg).to(x01.dtype)
    grid = _affine_grid(theta, x01.shape[-2], x01.shape[-1])
    out = F.grid_sample(x01, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    rows = params.noisy.nonzero().squeeze(1) if cfg.noise_p > 0 else params.noisy[:0]
    if len(rows):
        # per-sample sigma ~ U(0, noise_sigma): robust to the whole range of noise levels. Noise is
        # drawn for the noisy rows only (1-2 of 64 at the default p): a whole-batch draw was 40%
        # of the augmentation's cost.
        sigma = torch.rand(len(rows), 1, 1, 1, generator=generator, dtype=out.dtype) * cfg.noise_sigma
        noise = torch.randn((len(rows), *out.shape[1:]), generator=generator, dtype=out.dtype) * sigma
        out[rows] = (out[rows] + noise).clamp_(0, 1)
    return out


def save_samples(images: torch.Tensor, path: Path, cfg: AugmentConfig, n: int = 8, seed: int = 0) -> Path:
    """Write ``augmentation_samples.png``: top row originals, bottom row augmented.

    Args:
        images: uint8 [M,28,28] (the first ``n`` are used).
        path: output PNG path.
        cfg: augmentation config.
        n: number of columns.
        seed: RNG seed of the draws.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = images[:n].float().unsqueeze(1) / 255.0
    aug = augment_batch(x, cfg, torch.Generator().manual_seed(seed))
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n, 3.2))
    for i in range(n):
        for row, batch in enumerate((x, aug)):
            ax = axes[row, i]
            ax.imshow(batch[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.axis("off")
        axes[0, i].set_title("original" if i == 0 else "", fontsize=8)
        axes[1, i].set_title("augmented" if i == 0 else "", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
