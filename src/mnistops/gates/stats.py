"""Statistics on paired correctness and binomial proportions, the one home of each test.

Used by the release gate (:mod:`mnistops.gates.checks`: candidate vs champion on the test set), the
production gate of a retraining job (challenger vs champion on held-out production rows) and the
controller's shadow verdict and post-promotion watch (:mod:`mnistops.controller.policy`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["Alternative", "McNemar", "mcnemar", "wilson_upper"]

Alternative = Literal["greater", "two-sided"]


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test of ``new`` against ``ref`` on the same inputs.

    ``b`` and ``c`` are the discordant pairs; the p-value is ``P(X >= c)`` for the one-sided test
    (``new`` more often right than ``ref``) or the two-sided binomial p-value, with
    ``X ~ Binomial(b + c, 1/2)``; 1.0 without discordant pairs (no evidence either way).
    """

    b: int  # ref right, new wrong
    c: int  # new right, ref wrong
    p_value: float
    alternative: Alternative = "greater"

    @property
    def n_discordant(self) -> int:
        """Pairs on which the two disagree about correctness."""
        return self.b + self.c


def mcnemar(ref_correct: ArrayLike, new_correct: ArrayLike, alternative: Alternative = "greater") -> McNemar:
    """Exact McNemar test on paired correctness vectors (bool [N] each).

    Only discordant pairs carry information; under H0 (equal accuracy) each one is equally likely
    to favour either model, so the number favouring ``new`` is Binomial(b + c, 1/2).

    Args:
        ref_correct: bool [N], the reference model (e.g. the champion) was right.
        new_correct: bool [N], the new model (candidate, challenger) was right on the same inputs.
        alternative: ``"greater"`` tests that ``new`` is better; ``"two-sided"`` that they differ.

    Raises:
        ValueError: the vectors differ in shape.
    """
    from scipy.stats import binomtest  # scipy is heavy: only the callers that test pay for it

    ref, new = np.asarray(ref_correct, dtype=bool), np.asarray(new_correct, dtype=bool)
    if ref.shape != new.shape:
        raise ValueError(f"paired vectors differ in shape: {ref.shape} vs {new.shape}")
    b, c = int((ref & ~new).sum()), int((new & ~ref).sum())
    p = 1.0 if b + c == 0 else float(binomtest(c, b + c, 0.5, alternative=alternative).pvalue)
    return McNemar(b, c, p, alternative)


def wilson_upper(acc: float, n: int, z: float = 1.645) -> float:
    """Upper Wilson score bound of a binomial proportion (one-sided 95% for the default ``z``).

    A small noisy window is then not mistaken for a regression: the drop must hold for the bound.

    Raises:
        ValueError: ``n`` is not positive.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    denom = 1 + z * z / n
    centre = acc + z * z / (2 * n)
    half = z * math.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n))
    return min(1.0, (centre + half) / denom)
