"""Architecture, shapes, save/load and training determinism (small synthetic runs)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mnistops.data import Split
from mnistops.errors import ModelError, ModelNotFoundError
from mnistops.model import MnistNet, ModelConfig, count_params, load_model, save_model
from mnistops.train import TrainConfig, fit


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


@pytest.mark.parametrize("stem", ["stride", "pool", "seed"])
@pytest.mark.parametrize("n", [1, 7])
def test_shapes(n: int, stem: str) -> None:
    m = MnistNet(ModelConfig(stem=stem)).eval()
    x = torch.randn(n, 1, 28, 28)
    assert m(x).shape == (n, 10)
    assert m.features(x).shape == (n, m.embedding_dim)


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


def test_same_seed_same_weights() -> None:
    cfg = TrainConfig(seed=5, batch_size=64)
    a, _, _ = fit(_tiny_split(), cfg, progress=False)
    b, _, _ = fit(_tiny_split(), cfg, progress=False)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka
    c, _, _ = fit(_tiny_split(), replace(cfg, seed=6), progress=False)
    assert not torch.equal(a.head[-1].weight, c.head[-1].weight)
