"""ONNX / torch inference, the hot-swapping ModelFollower and the ShadowRunner."""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mnistops.errors import InputError, ModelError, ModelNotFoundError
from mnistops.service.follower import ModelFollower
from mnistops.service.inference import (
    MEAN,
    STD,
    LoadedModel,
    OnnxClassifier,
    TorchClassifier,
    load_model_dir,
)
from mnistops.training import data
from mnistops.training.model import MnistNet, ModelConfig, save_model

SMALL = ModelConfig(c1=4, c2=8, c3=4, c4=8, c5=8, c6=8, c7=8)


def export(model: nn.Module, path: Path, input_name: str = "image") -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation notices
        torch.onnx.export(
            model.eval(),
            (torch.zeros(1, 1, 28, 28),),
            str(path),
            input_names=[input_name],
            output_names=["logits"],
            dynamic_axes={input_name: {0: "N"}, "logits": {0: "N"}},
            dynamo=False,
        )


def make_model_dir(path: Path, seed: int) -> tuple[Path, MnistNet]:
    """A model folder (model.pt, model.onnx, metrics.json) of a random small MnistNet."""
    torch.manual_seed(seed)
    model = MnistNet(SMALL).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics so the folders really differ
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    path.mkdir(parents=True)
    save_model(model, path / "model.pt")
    export(model, path / "model.onnx")
    (path / "metrics.json").write_text(json.dumps({"test_accuracy": 0.5 + seed / 100, "seed": seed}))
    return path, model


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, MnistNet]]:
    root = tmp_path_factory.mktemp("models")
    return {v: make_model_dir(root / f"v{v}", seed=int(v)) for v in ("1", "2")}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)


def torch_logits(model: nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = model(data.normalize(torch.from_numpy(images))).numpy()
    return out


def test_normalisation_constants_match_training() -> None:
    assert (MEAN, STD) == (data.MEAN, data.STD)


@pytest.mark.parametrize("n", [1, 7])
def test_onnx_matches_torch_reference(models: dict, images: np.ndarray, n: int) -> None:
    path, model = models["1"]
    probs, logits = OnnxClassifier(path / "model.onnx").predict(images[:n])
    ref = torch_logits(model, images[:n])
    assert probs.shape == logits.shape == (n, 10) and probs.dtype == logits.dtype == np.float32
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(ref), 1).numpy(), atol=1e-5)


def test_torch_backend_matches_onnx(models: dict, images: np.ndarray) -> None:
    path, _ = models["2"]
    p_onnx, l_onnx = OnnxClassifier(path).predict(images)
    p_torch, l_torch = TorchClassifier(path).predict(images)
    np.testing.assert_allclose(l_onnx, l_torch, rtol=1e-4, atol=1e-4)
    assert (p_onnx.argmax(1) == p_torch.argmax(1)).all()


def test_single_image_and_bad_inputs(models: dict, images: np.ndarray) -> None:
    clf = OnnxClassifier(models["1"][0])
    probs, _ = clf.predict(images[0])  # [28,28] → batch of one
    assert probs.shape == (1, 10)
    for bad in (images.astype(np.float32), images[:, :27], np.zeros((0, 28, 28), np.uint8)):
        with pytest.raises(InputError):
            clf.predict(bad)


def test_onnx_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        OnnxClassifier(tmp_path / "missing.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load"):
        OnnxClassifier(tmp_path / "garbage.onnx")
    export(MnistNet(SMALL), tmp_path / "renamed.onnx", input_name="x")
    with pytest.raises(ModelError, match="expected input 'image'"):
        OnnxClassifier(tmp_path / "renamed.onnx")


def test_load_model_dir_reads_metrics_and_falls_back_to_torch(models: dict, tmp_path: Path) -> None:
    lm = load_model_dir("1", models["1"][0])
    assert (lm.version, lm.backend, lm.metrics["seed"]) == ("1", "onnx", 1)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.pt").write_bytes((models["1"][0] / "model.pt").read_bytes())
    (broken / "model.onnx").write_bytes(b"corrupt")
    lm = load_model_dir("9", broken)
    assert lm.backend == "torch" and lm.metrics == {}
    with pytest.raises(ModelNotFoundError):
        load_model_dir("x", tmp_path / "nope")


class Resolver:
    """A settable stand-in for the registry's champion alias."""

    def __init__(self, version: str, path: Path) -> None:
        self.target = (version, path)
        self.fail = False

    def __call__(self) -> tuple[str, Path]:
        if self.fail:
            raise ConnectionError("registry down")
        return self.target


def test_follower_swaps_when_resolve_changes(models: dict, images: np.ndarray) -> None:
    resolve = Resolver("1", models["1"][0])
    changes: list[tuple[str | None, str]] = []

    def record(old: LoadedModel | None, new: LoadedModel) -> None:
        changes.append((old.version if old else None, new.version))

    follower = ModelFollower(resolve, on_change=record)
    with pytest.raises(ModelError, match="no model loaded"):
        follower.current()
    assert follower.force_refresh().version == "1"
    first = follower.current()
    follower.poll_once()
    assert follower.current() is first  # same version: nothing reloaded
    resolve.target = ("2", models["2"][0])
    follower.poll_once()
    second = follower.current()
    assert second.version == "2" and second.metrics["seed"] == 2
    np.testing.assert_allclose(
        second.classifier.predict(images)[1], torch_logits(models["2"][1], images), atol=1e-4
    )
    # a request that grabbed the old object before the swap still finishes on version 1
    np.testing.assert_allclose(
        first.classifier.predict(images)[1], torch_logits(models["1"][1], images), atol=1e-4
    )
    assert changes == [(None, "1"), ("1", "2")]
    assert follower.stats()["swaps"] == 2


def test_follower_keeps_old_model_on_failures(models: dict, tmp_path: Path) -> None:
    resolve = Resolver("1", models["1"][0])
    follower = ModelFollower(resolve)
    follower.force_refresh()
    bad = tmp_path / "v3"
    bad.mkdir()
    (bad / "model.onnx").write_bytes(b"corrupt")
    resolve.target = ("3", bad)
    follower.poll_once()
    follower.poll_once()
    assert follower.current().version == "1"
    assert follower.load_failures == 2 and "load 3" in (follower.last_error or "")
    with pytest.raises(ModelError):
        follower.force_refresh()  # explicit refresh reports the error
    resolve.fail = True
    follower.poll_once()
    assert follower.resolve_failures == 1 and follower.current().version == "1"
    resolve.fail = False
    resolve.target = ("2", models["2"][0])
    follower.poll_once()
    assert follower.current().version == "2"


def test_background_thread_follows_the_alias(models: dict) -> None:
    resolve = Resolver("1", models["1"][0])
    swapped = threading.Event()

    def on_change(old: LoadedModel | None, new: LoadedModel) -> None:
        if new.version == "2":
            swapped.set()

    follower = ModelFollower(resolve, poll_seconds=0.01, on_change=on_change)
    follower.start()  # loads version 1 synchronously
    try:
        assert follower.current().version == "1"
        resolve.target = ("2", models["2"][0])
        assert swapped.wait(30), "the poller never picked up version 2"
        assert follower.current().version == "2"
    finally:
        follower.stop()
    assert not follower.running and follower.health().steps >= 1


def test_concurrent_readers_never_see_half_loaded_or_mixed_models(models: dict, images: np.ndarray) -> None:
    expected = {v: torch_logits(m, images) for v, (_, m) in models.items()}
    completed: list[LoadedModel] = []  # objects whose load returned (kept alive: no id reuse)

    def slow_loader(version: str, path: Path) -> LoadedModel:
        lm = load_model_dir(version, path)
        time.sleep(0.002)  # widen the window in which a non-atomic swap would be visible
        completed.append(lm)
        return lm

    resolve = Resolver("1", models["1"][0])
    follower = ModelFollower(resolve, loader=slow_loader)
    follower.force_refresh()
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = [0]
    seen: set[str] = set()

    def reader() -> None:
        while not stop.is_set():
            try:
                lm = follower.current()  # grab once, use for the whole "request"
                assert any(lm is c for c in completed), "saw a model whose load had not finished"
                _, logits = lm.classifier.predict(images)
                np.testing.assert_allclose(logits, expected[lm.version], atol=1e-4)
                seen.add(lm.version)
                reads[0] += 1
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(12):
            v = "2" if i % 2 == 0 else "1"
            resolve.target = (v, models[v][0])
            follower.poll_once()
            before = reads[0]
            deadline = time.monotonic() + 10
            while reads[0] < before + 4 and time.monotonic() < deadline and not errors:
                time.sleep(0.001)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert seen == {"1", "2"} and follower.swaps == 13


def test_shadow_runner_scores_within_budget_and_survives_bad_batches(
    models: dict, images: np.ndarray
) -> None:
    from mnistops.service.shadow import ShadowRunner

    target: list[tuple[str, Path] | None] = [("2", models["2"][0])]
    records: list = []
    agreement: list[float] = []
    runner = ShadowRunner(
        lambda: target[0], records.append, max_requests=5, poll_seconds=0.01, on_agreement=agreement.append
    ).start()  # loads the challenger synchronously
    try:
        ch = runner.challenger()
        assert ch is not None and ch.version == "2" and runner.active
        runner.offer("bad", np.zeros((3, 3), np.uint8), 0)  # a batch that cannot be stacked
        assert wait_until(lambda: runner.scorer_health().errors == 1)
        champion = OnnxClassifier(models["1"][0]).predict(images)[0].argmax(1)
        for i, img in enumerate(images):
            runner.offer(f"p{i}", img, int(champion[i]))
        assert wait_until(lambda: runner.scored == 5), runner.scorer_health()
        assert not runner.active  # budget used up: further offers are ignored
        expected = OnnxClassifier(models["2"][0]).predict(images)[0].argmax(1)
        got = {r.prediction_id: r.label for r in records}
        assert len(records) == 5 and all(got[f"p{i}"] == expected[i] for i in range(7) if f"p{i}" in got)
        assert (
            runner.agreement
            == agreement[-1]
            == float(np.mean([expected[int(p[1:])] == champion[int(p[1:])] for p in got]))
        )
        target[0] = None  # the challenger alias is cleared: the poller drops it
        assert wait_until(lambda: runner.challenger() is None)
        assert runner.health().steps >= 1 and runner.health().errors == 0
    finally:
        runner.stop()
    assert not runner.running and not runner.scorer_health().alive


def wait_until(cond: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()
