"""Running the detectors on benchmark windows and aggregating detection rates.

One :meth:`Monitor.check` per window gives every detector's own p-value (``p_value_detector``, already
corrected over the detector's features) and the combined verdict; the BBSD-KS baseline on raw
softmax runs next to it at the same overall alpha. Standalone detection of a detector = its own
p-value <= alpha, i.e. what it would flag if it were the only detector.
Alternative combinations (see ``RULES``) are recomputed offline from the stored p-values.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mnistops.monitor.drift import (
    DEFAULT_DETECTORS,
    Detector,
    Monitor,
    Sample,
    adjust_p_values,
    make_detector,
)

COMBINED, BASELINE = "combined", "baseline"
MULTI_FEATURE = ("bbsd", "inputs")  # detectors with several KS tests corrected inside the detector


def mmd_options(n: int, fast: bool) -> dict[str, Any]:
    """MMD settings per window size: capped ones with ``fast`` (default), else the production defaults.

    500 permutations is the minimum that lets MMD fire under Holm over 5 detectors at alpha 0.01
    (smallest p = 1/501 <= 0.01/5). With ``fast`` the reference is subsampled to max(300, 2n)
    rows (<= 1000) for small windows: the test's power is bounded by the small window, not the
    reference, and one [500, N] x [N, N] permutation matmul is ~10x cheaper at n=10.
    """
    if not fast:
        return {"n_permutations": 500, "ref_cap": 1000}
    return {"n_permutations": 500, "ref_cap": int(min(1000, max(300, 2 * n)))}


def make_monitor(reference: Sample, n: int, alpha: float, fast: bool) -> Monitor:
    """The production monitor (default detectors, weighted Bonferroni, ``alpha``) fitted on the reference."""
    return Monitor.from_names(
        DEFAULT_DETECTORS, alpha=alpha, correction="holm", seed=0, options={"mmd": mmd_options(n, fast)}
    ).fit(reference)


def make_baseline(reference: Sample, alpha: float) -> Detector:
    """Plain BBSD-KS: KS on each raw softmax output, Bonferroni over the 10, at the monitor's alpha."""
    return make_detector("bbsd_raw", alpha=alpha, correction="bonferroni").fit(reference)


@dataclass
class Record:
    """Outcome of one window."""

    scenario: str
    delta: float
    n: int
    seed: int
    p: dict[str, float]  # standalone p-value per detector, plus "baseline"
    effect: dict[str, float]
    combined: bool
    seconds: float  # CPU seconds of all detectors and the baseline on this window
    features: dict[str, list[float]] = field(default_factory=dict)  # raw per-feature p (bbsd, inputs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "scenario": self.scenario,
            "delta": self.delta,
            "n": self.n,
            "seed": self.seed,
            "p": self.p,
            "effect": self.effect,
            "combined": self.combined,
            "seconds": round(self.seconds, 4),
            "features": self.features,
        }


def run_window(
    monitor: Monitor, baseline: Detector, sample: Sample, scenario: str, delta: float, seed: int
) -> Record:
    """All detectors, the combined verdict and the baseline on one window."""
    t0 = time.process_time()  # CPU seconds: wall time depends on how busy the shared machine is
    report = monitor.check(sample)
    base = baseline.detect(sample)
    seconds = time.process_time() - t0
    p = {r.detector: float(r.details["p_value_detector"]) for r in report.results}
    p[BASELINE] = float(base.p_value if base.p_value is not None else 1.0)
    effect = {r.detector: float(r.effect_size) for r in report.results}
    effect[BASELINE] = float(base.effect_size)
    features = {
        r.detector: [float(f["p_value"]) for f in r.details["features"].values()]
        for r in report.results
        if r.detector in MULTI_FEATURE
    }
    return Record(scenario, delta, sample.n, seed, p, effect, report.drifted, seconds, features)


# --- alternative combinations (investigation), from the stored p-values ---------------------------
Rule = Callable[[Record, float], bool]


def _within_bh(rec: Record) -> dict[str, float]:
    """Detector p-values with BH (Simes) instead of Bonferroni inside bbsd and inputs.

    Simes is valid for positively dependent tests; the 10 softmax outputs and the 8 image statistics
    move together under a shift, which is where it gains over Bonferroni.
    """
    p = dict(rec.p)
    for d, raw in rec.features.items():
        p[d] = float(adjust_p_values(raw, "bh").min())
    return p


def _correction(names: tuple[str, ...], method: str, within_bh: bool = False) -> Rule:
    def rule(rec: Record, alpha: float) -> bool:
        p = _within_bh(rec) if within_bh else rec.p
        return bool(adjust_p_values([p[k] for k in names], method).min() <= alpha)

    return rule


def _weighted(weights: Mapping[str, float], within_bh: bool = False) -> Rule:
    """Weighted Bonferroni: drift iff some p_i <= w_i * alpha (sum w_i = 1; valid for any dependence)."""

    def rule(rec: Record, alpha: float) -> bool:
        p = _within_bh(rec) if within_bh else rec.p
        return any(p[k] <= w * alpha for k, w in weights.items())

    return rule


# a larger share of alpha for the detector that carries most of the signal at small n
WEIGHTS = {"inputs": 0.4, "mmd": 0.2, "bbsd": 0.15, "prior": 0.125, "ood": 0.125}
RULES: dict[str, Rule] = {
    "bh5": _correction(DEFAULT_DETECTORS, "bh"),  # Simes global test: more power when several fire
    "weighted": _weighted(WEIGHTS),
    "BH-within": _correction(DEFAULT_DETECTORS, "holm", within_bh=True),
    "BH-within+weighted": _weighted(WEIGHTS, within_bh=True),
    # leave-one-out: what each detector adds to the combined verdict
    **{
        f"w/o {d}": _correction(tuple(x for x in DEFAULT_DETECTORS if x != d), "holm")
        for d in DEFAULT_DETECTORS
    },
}


def detected(rec: Record, method: str, alpha: float) -> bool:
    """Whether ``method`` (a detector, ``combined``, ``baseline`` or a rule name) flagged the window."""
    if method == COMBINED:
        return rec.combined
    if method in RULES:
        return RULES[method](rec, alpha)
    return rec.p[method] <= alpha


@dataclass
class Rates:
    """Detection rates aggregated as ``rate[(scenario, delta, n)][method]`` (mean over windows)."""

    alpha: float
    methods: tuple[str, ...]
    cells: dict[tuple[str, float, int], list[Record]] = field(default_factory=lambda: defaultdict(list))

    def add(self, recs: Iterable[Record]) -> None:
        """Add window records."""
        for r in recs:
            self.cells[(r.scenario, r.delta, r.n)].append(r)

    def rate(self, scenario: str, n: int, method: str, delta: float | None = None) -> float:
        """Detection rate in one scenario at window size n (all deltas pooled equally if None)."""
        keys = [k for k in self.cells if k[0] == scenario and k[2] == n and (delta is None or k[1] == delta)]
        if not keys:
            return float("nan")
        # mean over deltas of the per-delta rate, so every delta weighs the same
        return float(
            np.mean([np.mean([detected(r, method, self.alpha) for r in self.cells[k]]) for k in keys])
        )

    def average(self, scenarios: Iterable[str], n: int, method: str) -> float:
        """Detection rate averaged over scenarios (each the mean over its deltas)."""
        vals = [self.rate(s, n, method) for s in scenarios]
        vals = [v for v in vals if not np.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")

    def count(self, scenario: str, n: int) -> int:
        """Number of windows in a scenario at window size n."""
        return sum(len(v) for k, v in self.cells.items() if k[0] == scenario and k[2] == n)
