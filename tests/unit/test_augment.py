"""Batched augmentation: statistics of the draws and geometry of the result."""

from __future__ import annotations

import math

import torch

from mnistops.training.augment import AugmentConfig, AugmentParams, apply_params, augment_batch, sample_params


def digits(n: int = 64) -> torch.Tensor:
    """Synthetic 'digits': a bright bar, off-centre, on black [N,1,28,28] in [0,1]."""
    x = torch.zeros(n, 1, 28, 28)
    x[:, :, 6:22, 12:15] = 1.0
    x[:, :, 6:9, 9:18] = 0.7
    return x


def test_crop_probability_within_binomial_bounds() -> None:
    n, p = 20000, 0.1
    params = sample_params(n, AugmentConfig(crop_p=p), torch.Generator().manual_seed(1))
    k = int(params.cropped.sum())
    sd = math.sqrt(n * p * (1 - p))
    assert abs(k - n * p) < 4.5 * sd  # 4.5 sigma: a false failure ~1 in 150,000 runs


def test_angles_within_range_and_spread() -> None:
    params = sample_params(5000, AugmentConfig(rotate_deg=15), torch.Generator().manual_seed(2))
    a = params.angles_deg
    assert float(a.abs().max()) <= 15.0
    assert float(a.min()) < -14 and float(a.max()) > 14  # uniform: the whole range is used
    assert abs(float(a.mean())) < 0.5


def test_identity_when_everything_off() -> None:
    x = digits(8)
    cfg = AugmentConfig(rotate_deg=0, crop_p=0, noise_p=0)
    assert torch.equal(augment_batch(x, cfg), x)
    # and the sampling grid itself is exact for zero angle and no crop
    params = AugmentParams(torch.zeros(8), torch.zeros(8, dtype=torch.bool), torch.zeros(8, dtype=torch.bool))
    assert torch.allclose(apply_params(x, params, cfg), x, atol=1e-5)


def test_each_sample_gets_its_own_transform() -> None:
    x = digits(32)  # 32 identical inputs
    out = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(3))
    flat = out.flatten(1)
    distinct = {tuple(torch.round(r * 1000).int().tolist()) for r in flat}
    assert len(distinct) == 32


def test_crop_zooms_and_rotation_preserves_mass() -> None:
    x = digits(2)
    cfg = AugmentConfig(rotate_deg=0, crop_p=1.0)
    zoomed = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    # a 22→28 zoom scales ink area by (28/22)^2 ≈ 1.62
    ratio = float(zoomed.sum() / x.sum())
    assert 1.45 < ratio < 1.8
    rot = AugmentParams(
        torch.tensor([90.0, -90.0]), torch.zeros(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    )
    turned = apply_params(x, rot, AugmentConfig())
    assert abs(float(turned.sum() / x.sum()) - 1.0) < 0.05
    # a vertical bar becomes horizontal: its row profile spreads out
    assert float((turned[0, 0].sum(1) > 0.5).sum()) < float((x[0, 0].sum(1) > 0.5).sum())


def test_output_range_and_fill_is_black() -> None:
    x = torch.ones(4, 1, 28, 28)
    out = augment_batch(
        x, AugmentConfig(rotate_deg=15, crop_p=0, noise_p=0), torch.Generator().manual_seed(4)
    )
    assert float(out.min()) >= 0 and float(out.max()) <= 1.0 + 1e-6
    # rotating an all-white image brings black (0) in at the corners for a non-zero angle
    assert float(out[:, :, 0, 0].min()) < 0.5


def test_noise_augmentation_is_clipped() -> None:
    x = digits(16)
    out = augment_batch(x, AugmentConfig(rotate_deg=0, crop_p=0, noise_p=1.0, noise_sigma=0.5))
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert not torch.equal(out, x)


def test_broadcast_grid_matches_affine_grid() -> None:
    from mnistops.training.augment import _affine_grid

    theta = torch.randn(16, 2, 3, generator=torch.Generator().manual_seed(3))
    ref = torch.nn.functional.affine_grid(theta, [16, 1, 28, 20], align_corners=False)
    assert torch.allclose(_affine_grid(theta, 28, 20), ref, atol=1e-5)


def test_noise_touches_only_the_noisy_rows() -> None:
    x = digits(32)
    cfg = AugmentConfig(rotate_deg=0, crop_p=0, noise_p=0.5)
    g = torch.Generator().manual_seed(7)
    params = sample_params(32, cfg, g)
    out = apply_params(x, params, cfg, g)
    clean = apply_params(x, params, AugmentConfig(rotate_deg=0, crop_p=0, noise_p=0))
    assert 0 < int(params.noisy.sum()) < 32
    assert torch.equal(out[~params.noisy], clean[~params.noisy])
    assert not torch.equal(out[params.noisy], clean[params.noisy])
