"""Quality gates: the checks a model must pass before it may become champion.

Each check is a plain function ``check(ctx) -> CheckResult`` listed in :data:`CHECKS`;
:func:`run_gates` runs exactly that list and ``tests/model`` parametrizes over it, so CI and
the gate can never disagree. Thresholds come from the packaged ``gates.yaml``, overridable by
``settings.gates_file``.

Calibration decision: the ECE gate measures the probabilities the service returns, i.e. the
softmax of logits divided by the temperature fitted on the 5k validation split (never on the
test set that measures it). Set ``ece_after_temperature: false`` to gate raw softmax instead;
both values are always in the check's detail.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mnistops.errors import ConfigError
from mnistops.gates.report import CheckResult, GateReport, write_reports
from mnistops.gates.stats import mcnemar
from mnistops.training.data import Mnist
from mnistops.training.model import MnistNet, count_params, load_model

__all__ = [
    "CHAMPION_CHECKS",
    "CHECKS",
    "CheckResult",
    "GateConfig",
    "GateContext",
    "GateReport",
    "load_gate_config",
    "run_gates",
    "write_reports",
]


class GateConfig(BaseModel):
    """Gate thresholds (defaults live only in the packaged ``gates.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    param_budget: int = Field(gt=0)
    min_test_accuracy: float = Field(ge=0, le=1)
    noise_sigma: float = Field(ge=0, le=1)
    noise_seed: int = Field(ge=0)
    min_noisy_accuracy: float = Field(ge=0, le=1)
    min_class_recall: float = Field(ge=0, le=1)
    parity_images: int = Field(gt=0)
    max_parity_diff: float = Field(gt=0)
    max_ece: float = Field(gt=0, le=1)
    ece_bins: int = Field(ge=2, le=100)
    ece_after_temperature: bool
    mcnemar_alpha: float = Field(gt=0, lt=1)
    max_accuracy_drop: float = Field(ge=0, le=1)


def _read_yaml(text: str, origin: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of threshold names to values")
    return data


def load_gate_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> GateConfig:
    """Packaged defaults, updated by the YAML at ``path`` and then by ``overrides``.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type or out-of-range value.
    """
    values = _read_yaml((resources.files("mnistops.gates") / "gates.yaml").read_text(), "packaged gates.yaml")
    origin = "gate overrides"
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"gates file {path} not found")
        values.update(_read_yaml(path.read_text(), str(path)))
        origin = str(path)
    values.update(overrides or {})
    try:
        return GateConfig.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{origin}: invalid gate thresholds: {problems}") from exc


class GateContext:
    """Everything the checks need, each tensor computed once and shared between checks."""

    def __init__(
        self,
        candidate_dir: Path,
        mnist: Mnist,
        config: GateConfig,
        champion_dir: Path | None = None,
        model: MnistNet | None = None,
    ) -> None:
        self.candidate_dir = candidate_dir
        self.mnist = mnist
        self.config = config
        self.champion_dir = champion_dir
        self.model = model if model is not None else load_model(candidate_dir)

    @cached_property
    def labels(self) -> np.ndarray:
        """int64 [N] test labels."""
        return self.mnist.test_labels.numpy()

    @cached_property
    def logits(self) -> np.ndarray:
        """Candidate logits [N,10] on the clean test set."""
        from mnistops.training.evaluate import predict_logits

        return predict_logits(self.model, self.mnist.test_images).numpy()

    @cached_property
    def noisy_logits(self) -> np.ndarray:
        """Candidate logits [N,10] on the noisy test set."""
        from mnistops.training.evaluate import add_noise, predict_logits

        noisy = add_noise(self.mnist.test_images, self.config.noise_sigma, seed=self.config.noise_seed)
        return predict_logits(self.model, noisy).numpy()

    @cached_property
    def temperature(self) -> float:
        """Temperature fitted on the validation split (the one the reference profile uses)."""
        from mnistops.monitor.performance import fit_temperature
        from mnistops.training.data import split_train_val
        from mnistops.training.evaluate import predict_logits

        split = split_train_val(self.mnist)
        return fit_temperature(predict_logits(self.model, split.val_x).numpy(), split.val_y.numpy())

    @cached_property
    def champion_logits(self) -> np.ndarray | None:
        """Champion logits [N,10] on the same test images, or ``None`` without a champion."""
        if self.champion_dir is None:
            return None
        from mnistops.training.evaluate import predict_logits

        return predict_logits(load_model(self.champion_dir), self.mnist.test_images).numpy()


def _acc(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


# --- the checks ------------------------------------------------------------------------------
def check_param_budget(ctx: GateContext) -> CheckResult:
    """Trainable parameters strictly below the budget."""
    n = count_params(ctx.model)
    limit = ctx.config.param_budget
    return CheckResult("param_budget", n < limit, n, limit, f"{n:,} parameters (must be < {limit:,})")


def check_test_accuracy(ctx: GateContext) -> CheckResult:
    """Clean test accuracy at or above the floor."""
    acc, floor = _acc(ctx.logits, ctx.labels), ctx.config.min_test_accuracy
    return CheckResult(
        "test_accuracy", acc >= floor, acc, floor, f"{acc:.4f} on {len(ctx.labels)} test images"
    )


def check_noisy_accuracy(ctx: GateContext) -> CheckResult:
    """Accuracy under Gaussian pixel noise at or above the floor."""
    acc, floor = _acc(ctx.noisy_logits, ctx.labels), ctx.config.min_noisy_accuracy
    detail = f"{acc:.4f} with noise sigma {ctx.config.noise_sigma} (seed {ctx.config.noise_seed})"
    return CheckResult("noisy_accuracy", acc >= floor, acc, floor, detail)


def check_class_recall(ctx: GateContext) -> CheckResult:
    """Every class's recall at or above the floor; the detail names the failing classes."""
    pred, y, floor = ctx.logits.argmax(1), ctx.labels, ctx.config.min_class_recall
    recalls = {int(k): float((pred[y == k] == k).mean()) for k in np.unique(y)}
    failing = {k: r for k, r in recalls.items() if r < floor}
    worst = min(recalls.values()) if recalls else 0.0
    if failing:
        names = ", ".join(f"class {k} recall {r:.4f}" for k, r in sorted(failing.items()))
        detail = f"below {floor}: {names}"
    else:
        detail = f"lowest: class {min(recalls, key=recalls.__getitem__)} recall {worst:.4f}"
    return CheckResult(
        "class_recall", not failing, worst, floor, detail, data={"failing_classes": sorted(failing)}
    )


def check_onnx_parity(ctx: GateContext) -> CheckResult:
    """ONNX Runtime and PyTorch logits agree on the first ``parity_images`` test images."""
    from mnistops.training.evaluate import onnx_logits

    n = min(ctx.config.parity_images, len(ctx.labels))
    onnx = onnx_logits(ctx.candidate_dir / "model.onnx", ctx.mnist.test_images[:n])
    diff = float(np.abs(onnx - ctx.logits[:n]).max())
    limit = ctx.config.max_parity_diff
    return CheckResult(
        "onnx_parity", diff <= limit, diff, limit, f"max |logit diff| {diff:.2e} on {n} images"
    )


def check_calibration(ctx: GateContext) -> CheckResult:
    """Expected calibration error at or below the ceiling (see module docstring)."""
    from mnistops.monitor.performance import calibrated_probs, expected_calibration_error

    cfg = ctx.config
    raw = expected_calibration_error(calibrated_probs(ctx.logits), ctx.labels, cfg.ece_bins)
    t = ctx.temperature
    cal = expected_calibration_error(calibrated_probs(ctx.logits, t), ctx.labels, cfg.ece_bins)
    ece = cal if cfg.ece_after_temperature else raw
    which = "calibrated" if cfg.ece_after_temperature else "raw"
    detail = f"ECE raw {raw:.4f}, after temperature {t:.3f}: {cal:.4f} (gating {which})"
    return CheckResult(
        "calibration_ece", ece <= cfg.max_ece, ece, cfg.max_ece, detail, data={"temperature": t}
    )


def check_mcnemar(ctx: GateContext) -> CheckResult:
    """Not significantly worse than the champion: exact McNemar test on discordant pairs."""
    alpha = ctx.config.mcnemar_alpha
    champ = ctx.champion_logits
    if champ is None:
        return CheckResult.skip("mcnemar_vs_champion", alpha, "no champion to compare with")
    cand_ok = ctx.logits.argmax(1) == ctx.labels
    champ_ok = champ.argmax(1) == ctx.labels
    t = mcnemar(champ_ok, cand_ok, alternative="two-sided")
    b, c, p = t.b, t.c, t.p_value  # b: champion right, candidate wrong; c: the reverse
    worse = b > c
    passed = not (worse and p < alpha)
    verdict = "significantly worse" if not passed else ("worse, not significant" if worse else "not worse")
    detail = f"discordant: champion-only correct {b}, candidate-only correct {c}; p={p:.4g} ({verdict})"
    return CheckResult("mcnemar_vs_champion", passed, p, alpha, detail, data={"b": b, "c": c})


def check_accuracy_drop(ctx: GateContext) -> CheckResult:
    """Test accuracy at most ``max_accuracy_drop`` below the champion's."""
    limit = ctx.config.max_accuracy_drop
    champ = ctx.champion_logits
    if champ is None:
        return CheckResult.skip("accuracy_drop_vs_champion", limit, "no champion to compare with")
    ca, ch = _acc(ctx.logits, ctx.labels), _acc(champ, ctx.labels)
    drop = ch - ca
    detail = f"candidate {ca:.4f} vs champion {ch:.4f} (drop {drop:+.4f})"
    return CheckResult("accuracy_drop_vs_champion", drop <= limit, drop, limit, detail)


Check = Callable[[GateContext], CheckResult]
CHAMPION_CHECKS: tuple[Check, ...] = (check_mcnemar, check_accuracy_drop)
CHECKS: tuple[Check, ...] = (
    check_param_budget,
    check_test_accuracy,
    check_noisy_accuracy,
    check_class_recall,
    check_onnx_parity,
    check_calibration,
    *CHAMPION_CHECKS,
)


def run_gates(
    candidate_dir: Path,
    mnist: Mnist,
    config: GateConfig | None = None,
    champion_dir: Path | None = None,
    candidate: str | None = None,
    champion: str | None = None,
) -> GateReport:
    """Run every check in :data:`CHECKS` on a model folder.

    Args:
        candidate_dir: model folder (model.pt, model.onnx).
        mnist: the data (test split measured; validation split for the temperature).
        config: thresholds; the packaged defaults if ``None``.
        champion_dir: the current champion's folder; champion checks are skipped without it.
        candidate: label for the report (a version, default the folder name).
        champion: label of the champion (its version).

    Returns:
        The report; ``report.passed`` is False if any check failed.
    """
    cfg = config or load_gate_config()
    ctx = GateContext(candidate_dir, mnist, cfg, champion_dir)
    results = [check(ctx) for check in CHECKS]
    return GateReport(
        candidate=candidate or candidate_dir.name,
        champion=champion if champion_dir is not None else None,
        checks=results,
        config=cfg.model_dump(),
    )
