"""Each detector fires on an obvious shift and stays quiet on same-distribution data; the combined
monitor keeps its false-alarm rate on clean windows. Synthetic data only (no model)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from mnistops.errors import DriftConfigError, DriftInputError
from mnistops.monitor.drift import (
    BBSDDetector,
    InputStatsDetector,
    MMDDetector,
    Monitor,
    OODRateDetector,
    PriorShiftDetector,
    RawBBSDDetector,
    Sample,
    make_detector,
)

UNIFORM = np.full(10, 0.1)
_PY, _PX = (g.reshape(1, -1).astype(np.float32) for g in np.mgrid[0:28, 0:28])  # pixel coords [1, 784]


def strokes(rng: np.random.Generator, n: int, radius: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """Digit-like images: 3 random line segments of half-width ``radius`` -> uint8 [n, 28, 28]."""
    dist = np.full((n, 784), np.inf, np.float32)
    for _ in range(3):
        (ay, ax), (by, bx) = (rng.uniform(7, 20, (2, n, 1)).astype(np.float32) + offset for _ in range(2))
        dy, dx = by - ay, bx - ax
        t = np.clip(((_PY - ay) * dy + (_PX - ax) * dx) / np.maximum(dy**2 + dx**2, 1e-6), 0, 1)
        dist = np.minimum(dist, np.hypot(_PY - ay - t * dy, _PX - ax - t * dx))  # [n, 784]
    return (np.clip(radius + 0.5 - dist, 0, 1) * 255).astype(np.uint8).reshape(n, 28, 28)


def synth(
    seed: int,
    n: int,
    prior: np.ndarray = UNIFORM,
    margin: float = 3.0,
    emb_shift: float = 0.0,
    radius: float = 1.0,
    ood_share: float = 0.0,
) -> Sample:
    """A window as a 10-class model would see it: logits, calibrated probs, embeddings, images."""
    rng = np.random.default_rng(seed)
    y = rng.choice(10, n, p=prior)
    logits = rng.normal(0, 1, (n, 10))
    logits[np.arange(n), y] += margin
    ood = rng.random(n) < ood_share
    logits[ood] = rng.normal(0, 0.3, (int(ood.sum()), 10)) - 2.0  # low, flat logits = high energy
    emb = rng.normal(0, 1, (n, 16)) + emb_shift
    emb[np.arange(n), y] += 2.0
    probs = special.softmax(logits / 1.5, axis=1)  # "calibrated" = a temperature other than 1
    return Sample(probs=probs, logits=logits, embeddings=emb, images=strokes(rng, n, radius))


@pytest.fixture(scope="module")
def reference() -> Sample:
    return synth(0, 1000)


def _fit(det: object, ref: Sample) -> object:
    return det.fit(ref)  # type: ignore[attr-defined]


# --- single detectors ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "shift"),
    [
        ("bbsd", {"margin": 1.0}),
        ("bbsd_raw", {"margin": 1.0}),
        ("mmd", {"emb_shift": 0.4}),
        ("prior", {"prior": np.r_[np.full(5, 0.16), np.full(5, 0.04)]}),
        ("inputs", {"radius": 2.0}),
        ("ood", {"ood_share": 0.1}),
    ],
)
def test_detector_fires_on_shift_not_on_clean(reference: Sample, name: str, shift: dict[str, object]) -> None:
    det = make_detector(name, n_permutations=200) if name == "mmd" else make_detector(name)
    det.fit(reference)
    clean = det.detect(synth(1, 300))
    shifted = det.detect(synth(2, 300, **shift))  # type: ignore[arg-type]
    assert not clean.drifted and clean.p_value is not None and clean.p_value > 0.01
    assert shifted.drifted and shifted.p_value is not None and shifted.p_value <= 0.01
    assert shifted.effect_size > clean.effect_size
    assert shifted.score >= shifted.threshold > clean.score


@pytest.mark.parametrize("cls", [BBSDDetector, RawBBSDDetector, PriorShiftDetector, InputStatsDetector])
def test_identical_data_gives_no_drift(reference: Sample, cls: type) -> None:
    r = cls().fit(reference).detect(reference)
    assert not r.drifted and r.p_value == pytest.approx(1.0) and r.effect_size == pytest.approx(0.0)


def test_mmd_identical_and_deterministic(reference: Sample) -> None:
    det = MMDDetector(n_permutations=200, ref_cap=300, seed=3).fit(reference)
    window = synth(5, 200, emb_shift=0.2)
    a, b = det.detect(window), det.detect(window)
    assert a.p_value == b.p_value and a.effect_size == b.effect_size  # seeded permutations
    same = det.detect(reference.take(slice(0, 300)))
    assert not same.drifted and same.details["n_reference"] == 300


def test_mmd_refuses_too_few_permutations() -> None:
    with pytest.raises(DriftConfigError, match="never fire"):
        MMDDetector(alpha=0.01, n_permutations=50)


def test_bbsd_details_name_the_largest_shift(reference: Sample) -> None:
    r = BBSDDetector().fit(reference).detect(synth(4, 300, margin=0.5))
    assert set(r.details["features"]) == {f"class_{c}" for c in range(10)}
    assert r.details["largest_shift"].startswith("class_") and r.statistic == r.effect_size


def test_prior_with_empty_reference_class_is_deterministic() -> None:
    no_seven = np.r_[np.full(7, 1 / 9), 0.0, np.full(2, 1 / 9)]
    det = PriorShiftDetector().fit(synth(0, 2000, prior=no_seven, margin=6))
    assert det.reference_freq[7] < 0.01
    clean = det.detect(synth(1, 500, prior=no_seven, margin=6))
    appears = det.detect(synth(2, 500, prior=0.9 * no_seven + 0.1 * np.eye(10)[7], margin=6))
    assert not clean.drifted and np.isfinite(clean.statistic)
    assert appears.drifted and appears.details["largest_changes"].get("class_7", 0) > 0.05
    assert (
        appears.p_value
        == det.detect(synth(2, 500, prior=0.9 * no_seven + 0.1 * np.eye(10)[7], margin=6)).p_value
    )
    tiny = det.detect(synth(3, 6))  # too few predictions for any cell to expect 5
    assert tiny.p_value == 1.0 and not tiny.drifted and "note" in tiny.details


def test_g_test_option_agrees_in_direction(reference: Sample) -> None:
    det = PriorShiftDetector(test="g").fit(reference)
    assert det.detect(synth(2, 400, prior=np.r_[np.full(5, 0.16), np.full(5, 0.04)])).drifted
    with pytest.raises(DriftConfigError):
        PriorShiftDetector(test="exact")  # type: ignore[arg-type]


def test_inputs_report_which_statistic_changed(reference: Sample) -> None:
    r = InputStatsDetector().fit(reference).detect(synth(6, 300, radius=2.0))
    assert "stroke_thickness" in r.details["drifted_features"]
    assert r.details["per_stat"]["stroke_thickness"]["std_shift"] > 1.0
    moved = InputStatsDetector().fit(reference)
    rng = np.random.default_rng(7)
    shifted = Sample(images=strokes(rng, 300, offset=4.0))
    assert "centre_col" in moved.detect(shifted).details["drifted_features"]


def test_ood_rate_details(reference: Sample) -> None:
    det = OODRateDetector().fit(reference)
    assert 0.005 < det.expected_rate < 0.02
    r = det.detect(synth(8, 400, ood_share=0.2))
    assert r.effect_size == pytest.approx(r.details["n_flagged"] / 400) and r.effect_size > 0.15
    msp = OODRateDetector(kind="msp").fit(Sample(probs=reference.probs))
    assert msp.detect(Sample(probs=synth(8, 400, ood_share=0.2).probs)).drifted


# --- combined verdict ------------------------------------------------------------------------
def _monitor(ref: Sample, **kw: object) -> Monitor:
    return Monitor.from_names(options={"mmd": {"n_permutations": 500, "ref_cap": 150}}, **kw).fit(ref)  # type: ignore[arg-type]


def test_combined_false_alarm_rate_on_clean_windows(reference: Sample) -> None:
    monitor = _monitor(reference)
    pool = synth(11, 200 * 100)
    alarms = [monitor.check(w, i).drifted for i, w in enumerate(pool.windows(100))]
    assert len(alarms) == 200
    assert np.mean(alarms) <= 0.03  # nominal 1 %; 3 % leaves room for sampling noise


def test_combined_flags_shift_and_names_detectors(reference: Sample) -> None:
    report = _monitor(reference).check(synth(12, 300, radius=2.0, emb_shift=0.4), window_index=9)
    assert report.drifted and report.overall.detector == "combined" and report.overall.window == 9
    assert {"inputs", "mmd"} <= set(report.overall.details["drifted_detectors"])
    assert len(report.all()) == 6 and report.to_dict()["overall"]["drifted"] is True
    for r in report.results:  # per-detector results are consistent in the monitor's frame
        assert r.drifted == (r.p_value is not None and r.p_value <= 0.01)


def test_combined_min_effect_and_skip_missing(reference: Sample) -> None:
    mon = _monitor(reference, min_effect={"inputs": 0.9})
    report = mon.check(synth(13, 300, radius=1.2))  # significant, but max KS D ~0.6 < 0.9
    assert "inputs" in report.overall.details["tiny_significant"]
    assert "inputs" not in report.overall.details["drifted_detectors"]
    no_images = synth(14, 100)
    no_images = Sample(probs=no_images.probs, logits=no_images.logits, embeddings=no_images.embeddings)
    with pytest.raises(DriftInputError):
        mon.check(no_images)
    skipping = _monitor(reference, skip_missing=True)
    assert skipping.check(no_images).overall.details["skipped"] == ["inputs"]


def test_monitor_config_errors() -> None:
    with pytest.raises(DriftConfigError, match="never fire"):
        Monitor([MMDDetector(n_permutations=200), BBSDDetector(), OODRateDetector()], alpha=0.01)
    with pytest.raises(DriftConfigError, match="duplicate"):
        Monitor([BBSDDetector(), BBSDDetector()])
    with pytest.raises(DriftConfigError, match="unknown detector"):
        make_detector("ks")
    with pytest.raises(DriftConfigError):
        make_detector("bbsd", n_permutations=10)


def test_unknown_weights_name_is_a_config_error() -> None:
    with pytest.raises(DriftConfigError, match="weights must be"):
        Monitor.from_names(weights="uniform")
