"""Quality gates on a synthetic, self-labelled data set (no training, no MLflow).

The "good" model is an untrained MnistNet whose head is re-scaled so its predictions spread
over all ten classes; the synthetic labels ARE its predictions, so it is 100% accurate by
construction. The "bad" model is the same network with class 3's logit suppressed.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mnistops.errors import ConfigError
from mnistops.gates.checks import (
    CHAMPION_CHECKS,
    CHECKS,
    GateContext,
    GateReport,
    load_gate_config,
    run_gates,
    write_reports,
)
from mnistops.training.data import Mnist
from mnistops.training.evaluate import predict_embeddings, predict_logits
from mnistops.training.model import MnistNet, save_model
from mnistops.training.train import export_onnx

# thresholds a self-labelled random model can meet; the class-recall floor stays strict
LENIENT = {"min_test_accuracy": 0.99, "min_noisy_accuracy": 0.0, "max_ece": 1.0, "min_class_recall": 0.97}


def _head(model: MnistNet) -> torch.nn.Linear:
    """The final linear layer (logits = W @ embedding + b)."""
    layer = model.head[1]
    assert isinstance(layer, torch.nn.Linear)
    return layer


def spread_model(seed: int = 0) -> MnistNet:
    """Untrained net whose standardized random head spreads predictions over the 10 classes."""
    torch.manual_seed(seed)
    model = MnistNet().eval()
    g = torch.Generator().manual_seed(seed)
    x = synthetic_images(600, seed + 100)
    _, emb = predict_embeddings(model, x)
    mu, sd = emb.mean(0), emb.std(0) + 1e-6
    w = torch.randn(10, emb.shape[1], generator=g) / sd
    with torch.no_grad():
        _head(model).weight.copy_(w)
        _head(model).bias.copy_(-(w @ mu))
    return model


def synthetic_images(n: int, seed: int) -> torch.Tensor:
    """uint8 [n,28,28], mostly dark with bright specks, like ink on paper."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 28, 28, generator=g) ** 4 * 255).to(torch.uint8)


def self_labelled_mnist(model: MnistNet, n_train: int = 400, n_test: int = 1000) -> Mnist:
    """A tiny Mnist whose labels are ``model``'s own predictions."""
    tr, te = synthetic_images(n_train, 1), synthetic_images(n_test, 2)
    return Mnist(
        train_images=tr,
        train_labels=predict_logits(model, tr).argmax(1),
        test_images=te,
        test_labels=predict_logits(model, te).argmax(1),
        md5="synthetic",
    )


def break_class(model: MnistNet, k: int = 3) -> MnistNet:
    """Copy of ``model`` that never predicts class ``k`` (its logit bias -1e4)."""
    bad = copy.deepcopy(model)
    with torch.no_grad():
        _head(bad).bias[k] = -1e4
    return bad


def write_model_dir(model: MnistNet, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out / "model.pt")
    export_onnx(model, out / "model.onnx")
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    good = spread_model()
    mnist = self_labelled_mnist(good)
    root = tmp_path_factory.mktemp("gates")
    return {
        "mnist": mnist,
        "good": write_model_dir(good, root / "good"),
        "bad": write_model_dir(break_class(good), root / "bad"),
        "cfg": load_gate_config(overrides=LENIENT),
    }


def test_synthetic_data_covers_every_class(world: dict[str, Any]) -> None:
    mnist = world["mnist"]
    assert isinstance(mnist, Mnist)
    counts = np.bincount(mnist.test_labels.numpy(), minlength=10)
    assert (counts > 0).all(), counts  # per-class recall must be defined for class 3


def test_good_model_passes_every_check(world: dict[str, Any]) -> None:
    report = run_gates(world["good"], world["mnist"], world["cfg"], champion_dir=world["good"])
    assert report.passed, report.to_markdown()
    assert [c.name for c in report.checks][-2:] == ["mcnemar_vs_champion", "accuracy_drop_vs_champion"]
    assert not any(c.skipped for c in report.checks)


def test_broken_class_fails_and_is_named(world: dict[str, Any], tmp_path: Path) -> None:
    report = run_gates(world["bad"], world["mnist"], world["cfg"], champion_dir=world["good"], champion="1")
    assert not report.passed
    assert "class_recall" in report.failed_checks
    recall = next(c for c in report.checks if c.name == "class_recall")
    assert recall.data["failing_classes"] == [3]
    assert "class 3 recall 0.0000" in recall.detail
    # vs the intact champion it is significantly worse (every class-3 image is a discordant pair)
    assert "mcnemar_vs_champion" in report.failed_checks
    assert "accuracy_drop_vs_champion" in report.failed_checks
    js, md = write_reports(report, tmp_path)
    again = GateReport.from_dict(json.loads(js.read_text()))
    assert again.failed_checks == report.failed_checks and not again.passed
    assert "class 3 recall" in md.read_text() and "FAILED" in md.read_text()


def test_champion_checks_skip_without_champion(world: dict[str, Any]) -> None:
    ctx = GateContext(world["good"], world["mnist"], world["cfg"])
    results = [check(ctx) for check in CHAMPION_CHECKS]
    assert all(r.skipped and r.passed for r in results)
    assert set(CHAMPION_CHECKS) <= set(CHECKS)


def test_table_renders_every_check(world: dict[str, Any]) -> None:
    from rich.console import Console

    report = run_gates(world["bad"], world["mnist"], world["cfg"])
    console = Console(record=True, width=200)
    console.print(report.to_table())
    text = console.export_text()
    assert "FAILED" in text and "class_recall" in text and "skip" in text


def test_default_config_matches_the_issue() -> None:
    cfg = load_gate_config()
    assert (cfg.param_budget, cfg.min_test_accuracy, cfg.min_noisy_accuracy) == (25000, 0.99, 0.95)
    assert (cfg.min_class_recall, cfg.max_parity_diff, cfg.max_ece) == (0.97, 1e-4, 0.03)
    assert (cfg.mcnemar_alpha, cfg.max_accuracy_drop, cfg.noise_sigma) == (0.05, 0.003, 0.3)


def test_gates_file_overrides_a_subset(tmp_path: Path) -> None:
    f = tmp_path / "gates.yaml"
    f.write_text("min_test_accuracy: 0.98\n")
    cfg = load_gate_config(f)
    assert cfg.min_test_accuracy == 0.98 and cfg.max_ece == 0.03


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("min_test_acuracy: 0.9\n", "min_test_acuracy"),  # typo → unknown key
        ("max_ece: 2.0\n", "max_ece"),  # out of range
        ("param_budget: lots\n", "param_budget"),  # wrong type
        ("- 1\n- 2\n", "mapping"),  # not a mapping
        ("a: [\n", "YAML"),  # not YAML
    ],
)
def test_bad_gates_file_is_a_config_error(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "gates.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_gate_config(f)
