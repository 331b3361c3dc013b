"""Shared drift machinery: Sample validation, p-value corrections, Detector thresholding."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from mnistops.errors import DetectorNotFittedError, DriftConfigError, DriftInputError
from mnistops.monitor.drift.base import Detector, Sample, Scores, adjust_p_values, surprise


def _probs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(10), n)


# --- corrections ---------------------------------------------------------------------------
def test_bonferroni_multiplies_and_caps() -> None:
    np.testing.assert_allclose(adjust_p_values([0.001, 0.02, 0.5], "bonferroni"), [0.003, 0.06, 1.0])


def test_holm_matches_hand_computation() -> None:
    # sorted p: 0.01, 0.02, 0.04 -> 3*0.01=0.03, 2*0.02=0.04, 1*0.04=0.04 (monotone), input order kept
    np.testing.assert_allclose(adjust_p_values([0.04, 0.01, 0.02], "holm"), [0.04, 0.03, 0.04])


def test_bh_matches_hand_computation() -> None:
    # sorted p: 0.01, 0.02, 0.04 -> 0.03, 0.03, 0.04 after the step-up minimum
    np.testing.assert_allclose(adjust_p_values([0.04, 0.01, 0.02], "bh"), [0.04, 0.03, 0.03])


def test_corrections_never_below_raw_and_single_test_unchanged() -> None:
    p = np.random.default_rng(1).random(20)
    for method in ("bonferroni", "holm", "bh"):
        adj = adjust_p_values(p, method)
        assert (adj >= p - 1e-15).all() and (adj <= 1).all()
        assert adjust_p_values([0.3], method)[0] == pytest.approx(0.3)


def test_correction_errors() -> None:
    with pytest.raises(DriftConfigError):
        adjust_p_values([0.1], "sidak")
    with pytest.raises(DriftInputError):
        adjust_p_values([np.nan], "holm")
    with pytest.raises(DriftInputError):
        adjust_p_values([], "holm")


def test_surprise_is_finite_and_non_negative() -> None:
    assert surprise(0.0) == pytest.approx(300.0)
    assert surprise(1.0) == 0.0
    assert surprise(0.01) == pytest.approx(2.0)


# --- Sample ----------------------------------------------------------------------------------
def test_sample_accepts_torch_and_slices() -> None:
    s = Sample.from_arrays(
        probs=torch.from_numpy(_probs(6)),
        embeddings=torch.zeros(6, 4),
        images=np.zeros((6, 1, 28, 28), dtype=np.uint8),
    )
    assert isinstance(s.probs, np.ndarray) and s.embeddings is not None and s.embeddings.dtype == np.float32
    assert s.images is not None and s.images.shape == (6, 28, 28)
    assert len(s) == 6 and s.present() == ("probs", "embeddings", "images")
    assert len(s.take(slice(1, 3))) == 2
    assert [len(w) for w in s.windows(2)] == [2, 2, 2]
    both = Sample.concat([s, s.take([0])])
    assert len(both) == 7 and both.logits is None


def test_sample_from_logits_with_temperature() -> None:
    logits = np.random.default_rng(0).normal(size=(5, 10))
    s = Sample.from_arrays(logits=logits, temperature=2.0)
    assert s.probs is not None
    e = np.exp(logits / 2.0)
    np.testing.assert_allclose(s.probs, e / e.sum(axis=1, keepdims=True), rtol=1e-10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "at least one"),
        ({"probs": _probs(3), "embeddings": np.zeros((4, 2))}, "disagree"),
        ({"embeddings": np.array([[0.0, np.nan]])}, "NaN"),
        ({"probs": np.random.default_rng(0).normal(size=(3, 10))}, "summing to 1"),
        ({"images": np.zeros((2, 28, 28), dtype=np.float32)}, "uint8"),
        ({"images": np.zeros((2, 32, 32), dtype=np.uint8)}, r"\[N, 28, 28\]"),
        ({"logits": np.zeros(10)}, "2 dims"),
    ],
)
def test_sample_rejects_bad_input(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(DriftInputError, match=match):
        Sample(**kwargs)  # type: ignore[arg-type]


# --- Detector base ---------------------------------------------------------------------------
class FixedP(Detector):
    """Returns preset p-values and effect size, to test the base class logic alone."""

    name: ClassVar[str] = "fixed"
    requires: ClassVar[tuple[str, ...]] = ("probs",)
    p_values: ClassVar[list[float]] = [0.5]
    effect: ClassVar[float] = 0.3

    def score(self, target: Sample) -> Scores:
        p = np.array(self.p_values)
        return Scores(tuple(f"f{i}" for i in range(p.size)), 1 - p, p, self.effect)


def _fixed(p: list[float], effect: float = 0.3, **kw: object) -> FixedP:
    det = FixedP(**kw).fit(Sample(probs=_probs(20)))  # type: ignore[arg-type]
    det.p_values = p  # type: ignore[misc]
    det.effect = effect  # type: ignore[misc]
    return det


def test_detector_applies_bonferroni_and_threshold() -> None:
    r = _fixed([0.004, 0.5]).detect(Sample(probs=_probs(10)), window=3)
    assert r.drifted and r.p_value == pytest.approx(0.008) and r.window == 3 and r.n == 10
    assert r.score == pytest.approx(surprise(0.008)) and r.threshold == pytest.approx(2.0)
    assert r.details["drifted_features"] == ["f0"]
    assert not _fixed([0.006, 0.5]).detect(Sample(probs=_probs(10))).drifted  # 0.012 > 0.01


def test_bh_is_more_powerful_than_bonferroni() -> None:
    p = [0.006, 0.009]
    assert not _fixed(p).detect(Sample(probs=_probs(10))).drifted
    assert _fixed(p, correction="bh").detect(Sample(probs=_probs(10))).drifted


def test_min_effect_reports_but_does_not_flag_tiny_shift() -> None:
    r = _fixed([1e-9], effect=0.01, min_effect=0.05).detect(Sample(probs=_probs(10)))
    assert r.details["significant"] and not r.drifted


def test_result_is_json_serialisable() -> None:
    r = _fixed([0.001]).detect(Sample(probs=_probs(10)))
    back = json.loads(json.dumps(r.to_dict()))
    assert back["detector"] == "fixed" and back["drifted"] is True


def test_detector_validation_errors() -> None:
    with pytest.raises(DetectorNotFittedError):
        FixedP().detect(Sample(probs=_probs(5)))
    det = _fixed([0.5])
    with pytest.raises(DriftInputError, match="lacks"):
        det.detect(Sample(embeddings=np.zeros((5, 3))))
    with pytest.raises(DriftInputError, match="rows"):
        det.detect(Sample(probs=_probs(0)))
    with pytest.raises(DriftInputError, match="reference"):
        det.detect(Sample(probs=np.full((4, 5), 0.2)))
    bad: dict[str, Any]
    for bad in ({"alpha": 0.0}, {"alpha": 1.5}, {"correction": "nope"}, {"min_effect": -1.0}):
        with pytest.raises(DriftConfigError):
            FixedP(**bad)
