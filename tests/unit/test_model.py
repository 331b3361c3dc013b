"""Architecture, shapes, save/load and training determinism (small synthetic runs)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mnistops.errors import ModelError, ModelNotFoundError
from mnistops.training.augment import AugmentConfig
from mnistops.training.data import Split
from mnistops.training.model import MnistNet, ModelConfig, count_params, load_model, save_model, whiten_stem_
from mnistops.training.train import TrainConfig, fit


def test_parameter_budget() -> None:
    assert count_params(MnistNet()) < 25_000


def test_architecture_in_the_seeds_spirit() -> None:
    m = MnistNet()
    convs = [x for x in m.modules() if isinstance(x, torch.nn.Conv2d)]
    assert len(convs) == 7
    assert {c.kernel_size for c in convs} == {(3, 3), (1, 1)}
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())
    assert any(isinstance(x, torch.nn.MaxPool2d) for x in m.modules())
    assert isinstance(m.head[-1], torch.nn.Linear) and m.head[-1].out_features == 10


@pytest.mark.parametrize("pool", ["avg", "avg+max"])
@pytest.mark.parametrize("stem", ["stride", "pool", "seed"])
@pytest.mark.parametrize("n", [1, 7])
def test_shapes(n: int, stem: str, pool: str) -> None:
    m = MnistNet(ModelConfig(stem=stem, pool=pool)).eval()
    x = torch.randn(n, 1, 28, 28)
    assert m(x).shape == (n, 10)
    assert m.features(x).shape == (n, m.embedding_dim)
    assert m.embedding_dim == (64 if pool == "avg+max" else 32)


def test_avg_max_pool_concatenates_mean_and_max() -> None:
    m = MnistNet(ModelConfig(pool="avg+max")).eval()
    x = torch.randn(3, 1, 28, 28)
    maps = m.body[:-1](x)  # [3,32,7,7] before the global pooling
    assert torch.equal(m.features(x), torch.cat([maps.mean((2, 3)), maps.amax((2, 3))], 1))


def test_save_load_roundtrip(tmp_path: Path) -> None:
    cfg = replace(ModelConfig(), c7=24)
    m = MnistNet(cfg).eval()
    save_model(m, tmp_path / "model.pt")
    back = load_model(tmp_path)
    assert back.cfg == cfg
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(m(x), back(x))


def test_checkpoint_without_stem_rebuilds_the_seed_layout(tmp_path: Path) -> None:
    # models saved before ModelConfig.stem existed pooled after conv2; they must load unchanged
    m = MnistNet(ModelConfig(c1=12, stem="seed")).eval()
    save_model(m, tmp_path / "model.pt")
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    del ckpt["config"]["stem"]
    torch.save(ckpt, tmp_path / "model.pt")
    back = load_model(tmp_path)
    assert back.cfg.stem == "seed"
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(m(x), back(x))


def test_checkpoint_without_pool_rebuilds_average_pooling(tmp_path: Path) -> None:
    # models saved before ModelConfig.pool existed had a 32-wide average-pooled embedding
    m = MnistNet(ModelConfig(pool="avg")).eval()
    save_model(m, tmp_path / "model.pt")
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    del ckpt["config"]["pool"]
    torch.save(ckpt, tmp_path / "model.pt")
    back = load_model(tmp_path)
    assert back.cfg.pool == "avg" and back.embedding_dim == 32
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(m(x), back(x))


def test_unknown_pool_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="unknown pool"):
        MnistNet(ModelConfig(pool="median"))


def test_unknown_stem_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="unknown stem"):
        MnistNet(ModelConfig(stem="dilated"))


def test_load_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        load_model(tmp_path / "nope")


def _tiny_split(seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(512, 28, 28, generator=g) * 255).to(torch.uint8)
    y = torch.randint(0, 10, (512,), generator=g)
    return Split(x, y, x[:8], y[:8])


def _bands_split() -> Split:
    # label k = a bright horizontal band at rows 2k+4..2k+5 over faint noise: learnable in a few steps
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (2048,), generator=g)
    x = torch.rand(2048, 28, 28, generator=g) * 40
    for k in range(10):
        x[y == k, 2 * k + 4 : 2 * k + 6, 4:24] = 255
    return Split(x.to(torch.uint8), y, x[:8].to(torch.uint8), y[:8])


def test_same_seed_same_weights() -> None:
    cfg = TrainConfig(seed=5, batch_size=64)
    a, _, _ = fit(_tiny_split(), cfg, progress=False)
    b, _, _ = fit(_tiny_split(), cfg, progress=False)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka
    c, _, _ = fit(_tiny_split(), replace(cfg, seed=6), progress=False)
    assert not torch.equal(a.head[-1].weight, c.head[-1].weight)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fit_in_each_precision_returns_a_plain_fp32_model(precision: str) -> None:
    off = AugmentConfig(rotate_deg=0, crop_p=0, noise_p=0)
    cfg = TrainConfig(seed=1, precision=precision, log_every=1, augment=off)  # type: ignore[arg-type]
    model, losses, _ = fit(_bands_split(), cfg, progress=False)
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            assert v.dtype == torch.float32 and v.is_contiguous() and torch.isfinite(v).all(), k
    first, last = losses[0][1], sum(v for _, v in losses[-3:]) / 3
    assert last < 0.7 * first  # it learned the band task (2.61 → ~1.6 in 32 steps)


def test_fine_tuning_starts_from_the_given_weights() -> None:
    base, _, _ = fit(_tiny_split(), TrainConfig(seed=1), progress=False)
    start = {k: v.detach().clone() for k, v in base.named_parameters()}
    gentle = TrainConfig(seed=2, max_lr=1e-3, ema_decay=0)
    tuned, _, _ = fit(_tiny_split(1), gentle, init=base, progress=False)
    drift = max(float((p.detach() - start[k]).abs().max()) for k, p in tuned.named_parameters())
    assert 0 < drift < 0.05  # moved a little from the given weights, not re-initialised


def test_configs_saved_with_the_old_momentum_field_still_load() -> None:
    d = asdict(TrainConfig(seed=3))
    d["momentum"] = 0.9  # configs saved before the field was removed (one-cycle always set it)
    assert TrainConfig.from_dict(d) == TrainConfig(seed=3)


@pytest.mark.parametrize("stem", ["stride", "seed"])
def test_whitened_stem_decorrelates_patches(stem: str) -> None:
    # strongly correlated synthetic images (blurred noise): the + filters of the whitened stem
    # must map their 3x3 patches to uncorrelated outputs with variance λ/(λ+eps) ≤ 1
    g = torch.Generator().manual_seed(0)
    x = F.avg_pool2d(torch.randn(200, 1, 32, 32, generator=g), 5, stride=1)[..., :28, :28]
    x = (x - x.mean()) / x.std()
    m = MnistNet(ModelConfig(c1=32, stem=stem))
    untouched = m.body[0][0].weight.detach()[18:].clone()
    whiten_stem_(m, x, eps=1e-3)
    conv = m.body[0][0]
    w = conv.weight.detach()
    out = F.conv2d(x, w[0:18:2], stride=conv.stride, padding=conv.padding)  # [N,9,H,W]
    cov = torch.cov(out.transpose(0, 1).reshape(9, -1))
    var = torch.diag(cov)
    assert (cov - torch.diag(var)).abs().max() < 0.05
    assert float(var[0]) == pytest.approx(1.0, abs=0.02)  # the largest-variance direction
    assert bool(torch.all(var <= 1.02))
    assert torch.equal(w[1:18:2], -w[0:18:2])  # ± pairs
    assert torch.equal(w[18:], untouched)  # channels past the 18 filters keep their init


def test_sixteen_channel_stem_gets_the_leading_whitening_pairs() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 1, 28, 28, generator=g)
    wide, narrow = MnistNet(ModelConfig(c1=32)), MnistNet(ModelConfig(c1=16))
    whiten_stem_(wide, x)
    whiten_stem_(narrow, x)
    assert torch.equal(narrow.body[0][0].weight, wide.body[0][0].weight[:16])
