"""Run several detectors on a window and combine them into one verdict with a known false-alarm rate.

Each detector returns one p-value (already corrected over its own features). The monitor adjusts
those k p-values across detectors (Holm by default, Bonferroni or BH optional) at the overall
``alpha`` (default 0.01), so adding a detector does not raise the false-alarm rate on clean data:
the overall verdict "something drifted" is the test ``min(adjusted p) <= alpha``, valid at level
alpha for any dependence between detectors (Holm/Bonferroni). A significant detector whose
effect size is below its ``min_effect`` is reported (``details["tiny_significant"]``) but not
flagged, so a negligible shift on a huge window does not page anyone (Evidently #50/#171/#509).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from mnistops.errors import DriftConfigError
from mnistops.monitor.drift.base import Correction, Detector, DriftResult, Sample, adjust_p_values, surprise
from mnistops.monitor.drift.baseline import RawBBSDDetector
from mnistops.monitor.drift.bbsd import BBSDDetector
from mnistops.monitor.drift.inputs import InputStatsDetector
from mnistops.monitor.drift.mmd import MMDDetector
from mnistops.monitor.drift.ood import OODRateDetector
from mnistops.monitor.drift.prior import PriorShiftDetector

DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (
        BBSDDetector,
        RawBBSDDetector,
        MMDDetector,
        PriorShiftDetector,
        InputStatsDetector,
        OODRateDetector,
    )
}
DEFAULT_DETECTORS: tuple[str, ...] = ("bbsd", "mmd", "prior", "inputs", "ood")


def make_detector(name: str, **kwargs: Any) -> Detector:
    """Instantiate a detector by name (``bbsd``, ``bbsd_raw``, ``mmd``, ``prior``, ``inputs``, ``ood``)."""
    try:
        cls = DETECTORS[name]
    except KeyError:
        raise DriftConfigError(f"unknown detector {name!r}; known: {sorted(DETECTORS)}") from None
    try:
        return cls(**kwargs)
    except TypeError as exc:  # unknown keyword argument
        raise DriftConfigError(f"{name}: {exc}") from None


@dataclass(frozen=True)
class MonitorReport:
    """Per-detector results (in the monitor's frame, see :meth:`Monitor.check`) and the overall verdict."""

    results: tuple[DriftResult, ...]
    overall: DriftResult

    @property
    def drifted(self) -> bool:
        """The overall verdict."""
        return self.overall.drifted

    def all(self) -> list[DriftResult]:
        """Per-detector results followed by the combined one."""
        return [*self.results, self.overall]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"results": [...], "overall": {...}}``."""
        return {"results": [r.to_dict() for r in self.results], "overall": self.overall.to_dict()}


# Weighted Bonferroni: detector i fires when p_i <= w_i * alpha (weights sum to 1), so the overall
# false-alarm rate stays <= alpha for any dependence. Weights follow where the signal is on MNIST
# shifts (bench/results/drift.md): the input statistics carry most of it at small windows; MMD keeps
# >= 0.2 because its permutation p-value cannot go below 1/501.
DEFAULT_WEIGHTS: dict[str, float] = {"inputs": 0.4, "mmd": 0.2, "bbsd": 0.15, "prior": 0.125, "ood": 0.125}


class Monitor:
    """A configured set of detectors with an overall multiple-testing correction.

    Args:
        detectors: detector instances (distinct names).
        alpha: overall false-alarm level per window.
        correction: across detectors: ``holm`` (default), ``bonferroni`` or ``bh``.
        min_effect: per-detector minimum effect size to flag drift (overrides the detector's own).
        skip_missing: skip detectors whose input (e.g. images) a window lacks instead of raising.
        weights: per-detector share of alpha (weighted Bonferroni, replaces ``correction``);
            normalised over the detectors that run.
    """

    def __init__(
        self,
        detectors: Sequence[Detector],
        alpha: float = 0.01,
        correction: Correction = "holm",
        min_effect: Mapping[str, float] | None = None,
        skip_missing: bool = False,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        if not detectors:
            raise DriftConfigError("a Monitor needs at least one detector")
        names = [d.name for d in detectors]
        if len(set(names)) != len(names):
            raise DriftConfigError(f"duplicate detector names: {names}")
        if not 0 < alpha < 1:
            raise DriftConfigError(f"alpha must be in (0, 1), got {alpha}")
        adjust_p_values([1.0], correction)  # validates the name
        unknown = set(min_effect or {}) - set(names)
        if unknown:
            raise DriftConfigError(f"min_effect for unknown detectors {sorted(unknown)}")
        if weights is not None:
            missing = set(names) - set(weights)
            if missing or any(w <= 0 for w in weights.values()):
                raise DriftConfigError(f"weights must be > 0 for every detector (missing {sorted(missing)})")
        total = sum(weights[n] for n in names) if weights is not None else 1.0
        for d in detectors:
            # the strictest per-detector level: alpha / k (corrections) or alpha * w (weights)
            level = alpha * weights[d.name] / total if weights is not None else alpha / len(detectors)
            if d.min_p_value > level:
                raise DriftConfigError(
                    f"{d.name}: smallest attainable p-value {d.min_p_value:.4g} > its level "
                    f"{level:.4g}; it could never fire (raise n_permutations)"
                )
        self.weights = dict(weights) if weights is not None else None
        self.detectors = list(detectors)
        self.alpha = alpha
        self.correction: Correction = correction
        self.min_effect = {d.name: (min_effect or {}).get(d.name, d.min_effect) for d in detectors}
        self.skip_missing = skip_missing

    @classmethod
    def from_names(
        cls,
        names: Sequence[str] = DEFAULT_DETECTORS,
        alpha: float = 0.01,
        correction: Correction = "holm",
        seed: int = 0,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        weights: Mapping[str, float] | str | None = "default",
        **kwargs: Any,
    ) -> Monitor:
        """Build detectors by name; ``options[name]`` holds that detector's constructor kwargs.

        ``weights="default"`` uses :data:`DEFAULT_WEIGHTS` when every detector has one, else the
        unweighted ``correction``.
        """
        opts = options or {}
        dets = [make_detector(n, seed=seed, **dict(opts.get(n, {}))) for n in names]
        if isinstance(weights, str):
            if weights != "default":
                raise DriftConfigError(f"weights must be a mapping, None or 'default', not {weights!r}")
            weights = DEFAULT_WEIGHTS if set(names) <= set(DEFAULT_WEIGHTS) else None
        return cls(dets, alpha=alpha, correction=correction, weights=weights, **kwargs)

    def fit(self, reference: Sample) -> Self:
        """Fit every detector on the reference (the reference must have every needed field)."""
        for d in self.detectors:
            d.fit(reference)
        return self

    def _judge(self, raw: list[DriftResult], adj: np.ndarray) -> tuple[list[DriftResult], list[str]]:
        """Each detector's result at its adjusted p-value; also the significant-but-tiny ones."""
        results: list[DriftResult] = []
        tiny: list[str] = []
        for r, pa in zip(raw, adj, strict=True):
            significant = bool(pa <= self.alpha)
            big_enough = r.effect_size >= self.min_effect[r.detector]
            if significant and not big_enough:
                tiny.append(r.detector)
            details = {
                **r.details,
                "p_value_detector": r.p_value,
                "monitor_alpha": self.alpha,
                "monitor_correction": "weighted-bonferroni" if self.weights else self.correction,
                "significant": significant,
                "min_effect": self.min_effect[r.detector],
            }
            results.append(
                dataclasses.replace(
                    r,
                    p_value=float(pa),
                    score=surprise(float(pa)),
                    threshold=surprise(self.alpha),
                    drifted=significant and big_enough,
                    details=details,
                )
            )
        return results, tiny

    def check(self, window: Sample, window_index: int = 0) -> MonitorReport:
        """Run all detectors on one window and combine.

        In the returned per-detector results ``p_value`` is the across-detector adjusted p-value,
        ``score``/``threshold`` are ``-log10`` of it and of the overall alpha, and ``drifted`` is the
        monitor's decision; the detector's own p-value is ``details["p_value_detector"]``.
        """
        ran = [
            d
            for d in self.detectors
            if not self.skip_missing or all(getattr(window, f) is not None for f in d.requires)
        ]
        if not ran:
            raise DriftConfigError("no detector can run on this window (missing fields)")
        raw = [d.detect(window, window_index) for d in ran]
        pvals = np.array([1.0 if r.p_value is None else r.p_value for r in raw])
        if self.weights is not None:
            w = np.array([self.weights[r.detector] for r in raw])
            adj = np.minimum(1.0, pvals * w.sum() / w)  # weighted Bonferroni
        else:
            adj = adjust_p_values(pvals, self.correction)
        results, tiny = self._judge(raw, adj)
        best = int(np.argmin(adj))
        p = float(adj[best])
        drifted = [r.detector for r in results if r.drifted]
        overall = DriftResult(
            detector="combined",
            window=window_index,
            n=window.n,
            statistic=float(len(drifted)),
            p_value=p,
            score=surprise(p),
            threshold=surprise(self.alpha),
            drifted=bool(drifted),
            effect_size=results[best].effect_size,
            details={
                "alpha": self.alpha,
                "correction": "weighted-bonferroni" if self.weights else self.correction,
                "weights": self.weights,
                "drifted_detectors": drifted,
                "tiny_significant": tiny,
                "most_significant": results[best].detector,
                "skipped": [d.name for d in self.detectors if d not in ran],
                "detectors": {
                    r.detector: {"p_value": r.p_value, "effect_size": r.effect_size, "drifted": r.drifted}
                    for r in results
                },
            },
        )
        return MonitorReport(tuple(results), overall)
