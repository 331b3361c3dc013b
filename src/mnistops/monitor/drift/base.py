"""Shared drift machinery: the ``Sample`` a detector sees, the ``DriftResult`` it returns, and the
``Detector`` base class that does validation, multiple-testing correction and thresholding.

A detector implements one method, :meth:`Detector.score`, returning raw per-feature statistics and
p-values (:class:`Scores`); optionally :meth:`Detector.prepare` to precompute on the reference.
Every result uses the same scale: ``score = -log10(p_adjusted)``, ``threshold = -log10(alpha)``, so
``drifted`` means ``score >= threshold`` (and ``effect_size >= min_effect``) for every detector, which
is what Grafana plots next to each other.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, Self

import numpy as np
from numpy.typing import NDArray

from mnistops.errors import DetectorNotFittedError, DriftConfigError, DriftInputError
from mnistops.monitor.performance import calibrated_probs

Correction = Literal["bonferroni", "holm", "bh"]
CORRECTIONS: tuple[str, ...] = ("bonferroni", "holm", "bh")
FIELDS: tuple[str, ...] = ("probs", "logits", "embeddings", "images")
P_FLOOR = 1e-300  # keeps -log10(p) finite


def _array(x: Any) -> NDArray[Any] | None:
    if x is None:
        return None
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


@dataclass(frozen=True)
class Sample:
    """One reference set or monitoring window; any field may be None if no detector needs it.

    The constructor also accepts torch tensors, [N, 1, 28, 28] images and other float dtypes and
    converts them (typed code passing tensors can use :meth:`from_arrays`). After construction:

    Attributes:
        probs: [N, 10] float64 temperature-calibrated softmax (rows checked to sum to 1).
        logits: [N, 10] float64 raw logits.
        embeddings: [N, D] float32 penultimate-layer features.
        images: [N, 28, 28] uint8 raw pixels.
    """

    probs: NDArray[Any] | None = None
    logits: NDArray[Any] | None = None
    embeddings: NDArray[Any] | None = None
    images: NDArray[Any] | None = None

    def __post_init__(self) -> None:
        probs, logits, emb, img = (_array(getattr(self, f)) for f in FIELDS)
        if probs is not None:
            probs = self._float(probs, "probs", 2, np.float64)
            if probs.size and (probs.min() < -1e-6 or np.abs(probs.sum(axis=1) - 1).max() > 1e-3):
                raise DriftInputError("probs rows must be probabilities summing to 1 (got logits?)")
        if logits is not None:
            logits = self._float(logits, "logits", 2, np.float64)
        if emb is not None:
            emb = self._float(emb, "embeddings", 2, np.float32)
        if img is not None:
            if img.ndim == 4 and img.shape[1] == 1:  # accept [N, 1, 28, 28]
                img = img[:, 0]
            if img.ndim != 3 or img.shape[1:] != (28, 28):
                raise DriftInputError(f"images must be [N, 28, 28], got {img.shape}")
            if img.dtype != np.uint8:
                # float images are ambiguous (0-1 or normalized?): refuse rather than guess the scale
                if not np.issubdtype(img.dtype, np.integer) or (
                    img.size and (img.min() < 0 or img.max() > 255)
                ):
                    raise DriftInputError(f"images must be uint8 0-255, got {img.dtype}")
                img = img.astype(np.uint8)
        values = {"probs": probs, "logits": logits, "embeddings": emb, "images": img}
        sizes = {k: v.shape[0] for k, v in values.items() if v is not None}
        if not sizes:
            raise DriftInputError("a Sample needs at least one of probs, logits, embeddings, images")
        if len(set(sizes.values())) > 1:
            raise DriftInputError(f"fields disagree on the number of rows: {sizes}")
        for k, v in values.items():
            object.__setattr__(self, k, v)

    @staticmethod
    def _float(arr: NDArray[Any], name: str, ndim: int, dtype: Any) -> NDArray[Any]:
        if arr.ndim != ndim:
            raise DriftInputError(f"{name} must have {ndim} dims, got shape {arr.shape}")
        out = arr.astype(dtype, copy=False)
        if not np.isfinite(out).all():
            raise DriftInputError(f"{name} contain NaN or inf")
        return out

    @classmethod
    def from_arrays(
        cls,
        *,
        logits: Any = None,
        probs: Any = None,
        embeddings: Any = None,
        images: Any = None,
        temperature: float | None = None,
    ) -> Sample:
        """Build a Sample from numpy arrays or torch tensors.

        If ``probs`` is missing and ``temperature`` is given, probs are ``softmax(logits / T)``.
        """
        if probs is None and temperature is not None and logits is not None:
            probs = calibrated_probs(logits, temperature)
        return cls(probs=probs, logits=logits, embeddings=embeddings, images=images)

    @property
    def n(self) -> int:
        """Number of rows."""
        for f in FIELDS:
            v = getattr(self, f)
            if v is not None:
                return int(v.shape[0])
        return 0  # unreachable: __post_init__ requires a field

    def __len__(self) -> int:
        return self.n

    def present(self) -> tuple[str, ...]:
        """Names of the fields that are set."""
        return tuple(f for f in FIELDS if getattr(self, f) is not None)

    def take(self, index: slice | Sequence[int] | NDArray[Any]) -> Sample:
        """Rows selected by a slice, index array or boolean mask."""
        return Sample(**{f: None if getattr(self, f) is None else getattr(self, f)[index] for f in FIELDS})

    def windows(self, size: int, step: int | None = None) -> list[Sample]:
        """Consecutive (or sliding, if ``step < size``) full windows of ``size`` rows."""
        step = step or size
        return [self.take(slice(s, s + size)) for s in range(0, self.n - size + 1, step)]

    @classmethod
    def concat(cls, samples: Sequence[Sample]) -> Sample:
        """Stack samples row-wise; a field is kept only if every sample has it."""
        if not samples:
            raise DriftInputError("concat needs at least one Sample")
        kw = {
            f: np.concatenate([getattr(s, f) for s in samples])
            if all(getattr(s, f) is not None for s in samples)
            else None
            for f in FIELDS
        }
        return cls(**kw)


def _jsonable(x: Any) -> Any:
    """Numpy scalars/arrays inside ``details`` become plain Python so results serialise as JSON."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    return x


@dataclass(frozen=True)
class DriftResult:
    """Outcome of one detector (or of the combined verdict) on one window.

    ``score = -log10(p_value)`` and ``threshold = -log10(alpha)`` (so higher = more drift);
    ``statistic`` is the detector's raw test statistic and ``effect_size`` its size-of-shift measure
    (units depend on the detector; see its docstring).
    """

    detector: str
    window: int
    n: int
    statistic: float
    p_value: float | None
    score: float
    threshold: float
    drifted: bool
    effect_size: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of all fields."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class Scores:
    """Raw output of :meth:`Detector.score`: one statistic and p-value per tested feature."""

    names: tuple[str, ...]
    statistics: NDArray[np.float64]
    p_values: NDArray[np.float64]
    effect_size: float
    statistic: float | None = None  # summary statistic; default: max of ``statistics``
    details: dict[str, Any] = field(default_factory=dict)


def adjust_p_values(
    p_values: Sequence[float] | NDArray[Any], method: str = "bonferroni"
) -> NDArray[np.float64]:
    """Multiple-testing adjusted p-values.

    Args:
        p_values: raw p-values of m tests.
        method: ``bonferroni`` (FWER), ``holm`` (FWER, step-down, uniformly more powerful) or
            ``bh`` (Benjamini-Hochberg FDR).

    Returns:
        Adjusted p-values in the input order; reject test i at level alpha iff ``adj[i] <= alpha``.
        For all three, ``min(adj) <= alpha`` is a valid level-alpha test of "no feature drifted"
        (BH is the Simes test there: valid under independence or positive dependence).
    """
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    m = p.size
    if m == 0:
        raise DriftInputError("no p-values to adjust")
    if np.isnan(p).any():
        raise DriftInputError("p-values contain NaN")
    if method == "bonferroni":
        return np.minimum(1.0, p * m)
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if method == "holm":
        adj = np.maximum.accumulate(np.minimum(1.0, ranked * (m - np.arange(m))))
    elif method == "bh":
        adj = np.minimum.accumulate((ranked * m / np.arange(1, m + 1))[::-1])[::-1]
        adj = np.minimum(1.0, adj)
    else:
        raise DriftConfigError(f"unknown correction {method!r}; use one of {CORRECTIONS}")
    out = np.empty(m)
    out[order] = adj
    return out


def surprise(p: float) -> float:
    """``-log10(p)`` with a floor so p = 0 stays finite."""
    return max(0.0, -math.log10(max(p, P_FLOOR)))


class Detector(ABC):
    """Base class: validation, fit, correction, thresholding. Subclasses implement :meth:`score`.

    Args:
        alpha: significance level of this detector's own verdict.
        correction: multiple-testing correction over the detector's features.
        min_effect: a significant result with ``effect_size < min_effect`` is reported, not flagged
            (a tiny shift on a huge window is still tiny); 0 = off.
        seed: for any subsampling or permutation (results are reproducible).
    """

    name: ClassVar[str] = "detector"
    requires: ClassVar[tuple[str, ...]] = ()
    min_window: ClassVar[int] = 1

    def __init__(
        self,
        alpha: float = 0.01,
        correction: Correction = "bonferroni",
        min_effect: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not 0 < alpha < 1:
            raise DriftConfigError(f"alpha must be in (0, 1), got {alpha}")
        if correction not in CORRECTIONS:
            raise DriftConfigError(f"unknown correction {correction!r}; use one of {CORRECTIONS}")
        if min_effect < 0:
            raise DriftConfigError("min_effect must be >= 0")
        self.alpha = alpha
        self.correction: Correction = correction
        self.min_effect = min_effect
        self.seed = seed
        self._reference: Sample | None = None

    # --- to implement ---------------------------------------------------------------------
    def prepare(self, reference: Sample) -> None:  # noqa: B027 - optional hook, no-op by default
        """Precompute whatever :meth:`score` needs from the reference (optional hook)."""

    @abstractmethod
    def score(self, target: Sample) -> Scores:
        """Raw per-feature statistics and p-values of the target window against the reference."""

    # --- shared ---------------------------------------------------------------------------
    @property
    def min_p_value(self) -> float:
        """Smallest p-value this detector can return (> 0 for permutation tests)."""
        return 0.0

    @property
    def reference(self) -> Sample:
        """The fitted reference sample."""
        if self._reference is None:
            raise DetectorNotFittedError(f"{self.name}: call fit(reference) before detect()")
        return self._reference

    def _validate(self, sample: Sample, role: str) -> None:
        missing = [f for f in self.requires if getattr(sample, f) is None]
        if missing:
            raise DriftInputError(f"{self.name}: {role} sample lacks {missing}")
        if sample.n < self.min_window:
            raise DriftInputError(f"{self.name}: {role} has {sample.n} rows, needs >= {self.min_window}")
        if self._reference is not None and role == "window":
            for f in self.requires:
                ref_shape, new_shape = getattr(self._reference, f).shape[1:], getattr(sample, f).shape[1:]
                if ref_shape != new_shape:
                    raise DriftInputError(f"{self.name}: window {f} {new_shape} != reference {ref_shape}")

    def fit(self, reference: Sample) -> Self:
        """Store (and precompute on) the reference sample. Returns self."""
        self._validate(reference, "reference")
        self._reference = reference
        self.prepare(reference)
        return self

    def detect(self, target: Sample, window: int = 0) -> DriftResult:
        """Test one window against the reference.

        Args:
            target: the window.
            window: window index, copied into the result.

        Returns:
            DriftResult at this detector's alpha, with per-feature details.
        """
        _ = self.reference  # raises if not fitted
        self._validate(target, "window")
        raw = self.score(target)
        adj = adjust_p_values(raw.p_values, self.correction)
        p = float(adj.min())
        significant = p <= self.alpha
        details: dict[str, Any] = {
            "correction": self.correction,
            "alpha": self.alpha,
            "significant": significant,
            "min_effect": self.min_effect,
            "features": {
                name: {"statistic": float(s), "p_value": float(pr), "p_adjusted": float(pa)}
                for name, s, pr, pa in zip(raw.names, raw.statistics, raw.p_values, adj, strict=True)
            },
            "drifted_features": [n for n, pa in zip(raw.names, adj, strict=True) if pa <= self.alpha],
            **raw.details,
        }
        stat = raw.statistic if raw.statistic is not None else float(np.max(raw.statistics))
        return DriftResult(
            detector=self.name,
            window=window,
            n=target.n,
            statistic=float(stat),
            p_value=p,
            score=surprise(p),
            threshold=surprise(self.alpha),
            drifted=bool(significant and raw.effect_size >= self.min_effect),
            effect_size=float(raw.effect_size),
            details=_jsonable(details),
        )
