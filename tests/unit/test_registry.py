"""Registry, gating, promotion, rollback and audit trail against a temporary MLflow SQLite store.

One store per module (creating an MLflow database costs seconds); the tests run in file order
and build on each other's registry state, which the ``world`` fixture documents.
Models are untrained MnistNets on self-labelled synthetic data (see test_gates.py).
"""

from __future__ import annotations

import copy
import json
import multiprocessing as mp
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mnistops.errors import ModelNotFoundError, PromotionRefusedError, RegistryError, RollbackError
from mnistops.gates.checks import load_gate_config
from mnistops.registry.core import CHALLENGER, CHAMPION, PREVIOUS, Registry, load_profile
from mnistops.registry.tracking import setup_tracking
from mnistops.settings import Settings
from mnistops.training.data import Mnist
from mnistops.training.evaluate import predict_embeddings, predict_logits
from mnistops.training.model import MnistNet, save_model
from mnistops.training.train import export_onnx

LENIENT = {"min_noisy_accuracy": 0.0, "max_ece": 1.0}


def _head(model: MnistNet) -> torch.nn.Linear:
    """The final linear layer (logits = W @ embedding + b)."""
    layer = model.head[1]
    assert isinstance(layer, torch.nn.Linear)
    return layer


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 28, 28, generator=g) ** 4 * 255).to(torch.uint8)


def _spread_model() -> MnistNet:
    """Untrained net with a standardized random head: predictions spread over the 10 classes."""
    torch.manual_seed(0)
    model = MnistNet().eval()
    _, emb = predict_embeddings(model, _images(600, 100))
    w = torch.randn(10, emb.shape[1], generator=torch.Generator().manual_seed(0)) / (emb.std(0) + 1e-6)
    with torch.no_grad():
        _head(model).weight.copy_(w)
        _head(model).bias.copy_(-(w @ emb.mean(0)))
    return model


def _model_dir(model: MnistNet, out: Path, metrics: dict[str, Any]) -> Path:
    out.mkdir(parents=True)
    save_model(model, out / "model.pt")
    export_onnx(model, out / "model.onnx")
    (out / "metrics.json").write_text(json.dumps({"params": 1, "data_md5": "synthetic", **metrics}))
    (out / "config.json").write_text(json.dumps({"seed": 0}))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Store + two model folders: ``good`` (from a 'training run') and ``bad`` (class 3 broken)."""
    root = tmp_path_factory.mktemp("registry")
    settings = Settings(home=root / "home", database_url=f"sqlite:///{root / 'ops.db'}")
    good = _spread_model()
    bad = copy.deepcopy(good)
    with torch.no_grad():
        _head(bad).bias[3] = -1e4
    tr, te = _images(400, 1), _images(1000, 2)
    mnist = Mnist(tr, predict_logits(good, tr).argmax(1), te, predict_logits(good, te).argmax(1), "synthetic")
    reg = Registry(settings)
    exp = setup_tracking(settings)
    run_id = reg.client.create_run(exp).info.run_id  # stands in for the training run
    return {
        "settings": settings,
        "reg": reg,
        "mnist": mnist,
        "cfg": load_gate_config(overrides=LENIENT),
        "good_dir": _model_dir(good, root / "good", {"run_id": run_id, "test_accuracy": 1.0}),
        "bad_dir": _model_dir(bad, root / "bad", {"test_accuracy": 0.9}),
        "good": good,
        "root": root,
    }


def test_register_is_idempotent_and_tagged(world: dict[str, Any]) -> None:
    reg: Registry = world["reg"]
    v1 = reg.register(world["good_dir"], mnist=world["mnist"])
    assert reg.register(world["good_dir"], mnist=world["mnist"]) == v1 == "1"
    # without a run id a run is created and remembered, so re-registering is idempotent too
    v2 = reg.register(world["bad_dir"], mnist=world["mnist"])
    assert reg.register(world["bad_dir"], mnist=world["mnist"]) == v2 == "2"
    assert [v.version for v in reg.list_versions()] == ["1", "2"]
    info = reg.get_version("1")
    assert info.tags["data_md5"] == "synthetic" and info.tags["git_commit"]
    assert info.metrics == {"test_accuracy": 1.0, "params": 1.0} and info.gate_passed is None
    assert info.run_id == json.loads((world["good_dir"] / "metrics.json").read_text())["run_id"]


def test_download_is_a_model_folder_and_a_pyfunc(world: dict[str, Any]) -> None:
    import mlflow.pyfunc

    d = world["reg"].download("1")
    assert {"model.pt", "model.onnx", "metrics.json", "config.json"} <= {p.name for p in d.iterdir()}
    images = world["mnist"].test_images[:8]
    pyfunc_logits = mlflow.pyfunc.load_model(str(d.parent)).predict(images.numpy())
    expected = predict_logits(world["good"], images).numpy()
    np.testing.assert_allclose(pyfunc_logits, expected, atol=1e-4)
    with pytest.raises(ModelNotFoundError):
        world["reg"].download("99")


def test_reference_profile_is_loadable_by_version(world: dict[str, Any]) -> None:
    prof = load_profile("1", world["settings"])
    assert prof.version == "1" and prof.temperature > 0
    assert prof.probs.shape == prof.logits.shape == (400, 10)  # the whole synthetic 'validation' split
    assert prof.embeddings.shape == (400, 64) and prof.images.dtype == np.uint8  # avg ⊕ max of 32 maps
    np.testing.assert_allclose(prof.probs.sum(1), 1.0, atol=1e-5)
    assert prof.class_freq.sum() == pytest.approx(1.0) and prof.confidence_hist.sum() == pytest.approx(1.0)
    assert "mean_intensity" in prof.input_stats and prof.input_stats["ink_fraction"].shape == (400,)


def test_gate_records_result_on_the_version(world: dict[str, Any]) -> None:
    reg: Registry = world["reg"]
    bad = reg.gate("2", mnist=world["mnist"], config=world["cfg"])
    assert not bad.passed and "class_recall" in bad.failed_checks
    assert "class 3" in next(c.detail for c in bad.checks if c.name == "class_recall")
    info = reg.get_version("2")
    assert info.gate_passed is False and "class_recall" in info.gate_failed_checks
    assert reg.gate("1", mnist=world["mnist"], config=world["cfg"]).passed
    assert reg.get_version("1").gate_passed is True
    artifacts = {a.path for a in reg.client.list_artifacts(info.run_id, "gate")}
    assert artifacts == {"gate/gate_report.json", "gate/gate_report.md"}


def test_promote_refuses_failed_then_force_then_rollback(world: dict[str, Any]) -> None:
    reg: Registry = world["reg"]
    reg.set_challenger("2")
    with pytest.raises(PromotionRefusedError, match="class_recall"):
        reg.promote("2", actor="alice", reason="try")
    assert reg.aliases() == {CHALLENGER: "2"}  # a refused promotion moves nothing
    reg.promote("1", actor="alice", reason="first release")
    with pytest.raises(PromotionRefusedError, match="already champion"):
        reg.promote("1", actor="alice")
    ev = reg.promote("2", actor="bob", reason="hotfix", force=True)
    assert ev.forced and ev.from_version == "1"
    assert reg.aliases() == {CHAMPION: "2", PREVIOUS: "1"}  # challenger consumed by the promotion
    assert reg.get_version("2").forced and reg.get_version("2").promoted_by == "bob"
    assert reg.resolve_alias(CHAMPION)[0] == "2"
    assert reg.rollback(actor="carol", reason="class 3 broken") == ("2", "1")
    assert reg.aliases() == {CHAMPION: "1"}
    with pytest.raises(RollbackError):
        reg.rollback(actor="carol")
    hist = [(e.action, e.from_version, e.to_version, e.actor, e.forced, e.reason) for e in reg.history()]
    assert hist == [
        ("promote", None, "1", "alice", False, "first release"),
        ("promote", "1", "2", "bob", True, "hotfix"),
        ("rollback", "2", "1", "carol", False, "class 3 broken"),
    ]
    listed = {v.version: v for v in reg.list_versions()}
    assert listed["1"].aliases == (CHAMPION,) and listed["1"].promoted_by == "carol"


def test_rollback_walks_back_more_than_one_step(world: dict[str, Any]) -> None:
    reg: Registry = world["reg"]
    d3 = _model_dir(world["good"], world["root"] / "good3", {})
    v3 = reg.register(d3, mnist=world["mnist"], profile=False)
    reg.set_tags(v3, {"gate_passed": "true", "gate_champion": "1"})  # as if gated against champion 1
    reg.promote(v3, actor="alice")  # lineage 1 → 3
    with pytest.raises(PromotionRefusedError, match="gated against champion"):
        reg.promote("1", actor="alice")  # its gate ran with no champion: stale now that 3 serves
    reg.promote("2", actor="bob", force=True)  # lineage 1 → 3 → 2
    assert reg.rollback(actor="carol") == ("2", v3)
    assert reg.aliases()[PREVIOUS] == "1"
    assert reg.rollback(actor="carol") == (v3, "1")
    assert PREVIOUS not in reg.aliases()


def _promote_in_child(settings: Settings, version: str, go: Any) -> None:
    go.wait(120)
    # force: whichever process goes second finds its gate stale (gated against the old champion)
    Registry(settings).promote(version, actor=f"proc-{version}", reason="race", force=True)


def test_concurrent_promotions_from_two_processes(world: dict[str, Any]) -> None:
    reg: Registry = world["reg"]
    versions = []
    for name in ("race_a", "race_b"):
        v = reg.register(
            _model_dir(world["good"], world["root"] / name, {}), mnist=world["mnist"], profile=False
        )
        reg.set_tags(v, {"gate_passed": "true"})
        versions.append(v)
    before = len(reg.history())
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    procs = [ctx.Process(target=_promote_in_child, args=(world["settings"], v, go)) for v in versions]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0]
    first, second = reg.history()[before:]
    assert {first.to_version, second.to_version} == set(versions)
    assert (
        first.from_version == "1" and second.from_version == first.to_version
    )  # serialised, not interleaved
    assert reg.aliases()[CHAMPION] == second.to_version and reg.aliases()[PREVIOUS] == first.to_version


def test_run_id_from_another_store_gets_a_local_run(world: dict[str, Any]) -> None:
    reg: Registry = world["reg"]
    foreign = "0123456789abcdef0123456789abcdef"  # a training run in some other MLflow store
    d = _model_dir(world["good"], world["root"] / "foreign", {"run_id": foreign, "test_accuracy": 1.0})
    v = reg.register(d, mnist=world["mnist"], profile=False)
    assert reg.register(d, mnist=world["mnist"], profile=False) == v  # idempotent via the source tag
    local = reg.get_version(v).run_id
    assert local != foreign
    assert reg.client.get_run(local).data.tags["mnistops.source_run_id"] == foreign
    assert json.loads((d / "metrics.json").read_text())["run_id"] == foreign  # the folder is untouched
    with pytest.raises(RegistryError, match="not found"):
        reg.register(d, run_id=foreign, profile=False)  # an explicit run id must exist
