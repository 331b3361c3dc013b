"""What the monitor produces: per-window reports and metrics, concept-drift reports, the one-shot check.

``window_metrics`` builds the flat dict the alert rules read (keys documented in ``alerts.yaml``);
``concept_from_rows`` turns labelled predictions into windowed realized metrics and ADWIN/DDM change
points; ``render_check`` prints ``mnistops monitor check``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mnistops.monitor.concept import ErrorStreamMonitor, windowed_metrics
from mnistops.monitor.drift.combine import MonitorReport
from mnistops.monitor.performance import Estimate, RealizedMetrics, realized_metrics
from mnistops.store.records import AlertEvent, MonitorWindow, PredictionWindow

if TYPE_CHECKING:
    from rich.table import Table

    from mnistops.monitor.windows import WindowScores

__all__ = [
    "CheckReport",
    "ConceptReport",
    "WindowReport",
    "concept_from_rows",
    "realized_for_rows",
    "render_check",
    "window_metrics",
]


@dataclass(frozen=True)
class WindowReport:
    """One processed window, as handed to ``on_window`` subscribers."""

    window: MonitorWindow  # as stored (id set)
    metrics: dict[str, Any]  # the alert engine's input, see :func:`window_metrics`
    drift: MonitorReport
    estimate: Estimate
    realized: RealizedMetrics | None
    fired: list[AlertEvent] = field(default_factory=list)
    resolved: list[AlertEvent] = field(default_factory=list)
    start_seq: int = 0

    @property
    def drifted(self) -> bool:
        """The combined drift verdict."""
        return self.drift.drifted


@dataclass(frozen=True)
class ConceptReport:
    """Realized metrics over time and change points of the error stream of labelled predictions."""

    model_version: str | None
    n_labelled: int
    accuracy: float | None  # over all labelled rows considered
    macro_f1: float | None
    windows: list[dict[str, Any]]  # start_seq, end_seq, accuracy, macro P/R/F1, per_class_recall
    adwin_change_seqs: list[int]  # prediction seq at which ADWIN signalled a change
    ddm_change_seqs: list[int]
    error_rate: float | None  # ADWIN's current estimate of the error rate

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class CheckReport:
    """``mnistops monitor check --last N``: the last N predictions of the newest version."""

    model_version: str
    n: int
    start_seq: int
    end_seq: int
    drift: MonitorReport
    estimate: Estimate
    reference_accuracy: float
    realized: RealizedMetrics | None
    ood_rate: float

    @property
    def drifted(self) -> bool:
        """Overall verdict (the CLI raises DriftDetectedError, exit 12, when True)."""
        return self.drift.drifted

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (for ``--json``)."""
        return {
            "model_version": self.model_version,
            "n": self.n,
            "start_seq": self.start_seq,
            "end_seq": self.end_seq,
            "drifted": self.drifted,
            "drift": self.drift.to_dict(),
            "estimate": asdict(self.estimate),
            "reference_accuracy": self.reference_accuracy,
            "realized": None if self.realized is None else asdict(self.realized),
            "ood_rate": self.ood_rate,
        }


def realized_for_rows(rows: PredictionWindow, min_labels: int) -> RealizedMetrics | None:
    """Realized metrics of the rows with feedback (served label vs true label); None if too few."""
    has = rows.has_feedback
    if int(has.sum()) < max(1, min_labels):
        return None
    return realized_metrics(rows.true_labels[has], rows.labels[has])


def window_metrics(
    scores: WindowScores, realized: RealizedMetrics | None, reference_accuracy: float
) -> dict[str, Any]:
    """The flat per-window metrics dict the alert rules read.

    ``drift.<d>.p_value`` is the detector's own p-value (corrected over its features, not across
    detectors, as ``alerts.yaml`` assumes); ``drift.<d>.p_value_adjusted``, ``score``,
    ``threshold`` and ``drifted`` are in the combined monitor's frame (``d`` includes ``combined``).
    """
    m: dict[str, Any] = {}
    for r in scores.drift.all():
        key = f"drift.{r.detector}"
        m[f"{key}.p_value"] = r.details.get("p_value_detector", r.p_value)
        m[f"{key}.p_value_adjusted"] = r.p_value
        m[f"{key}.score"] = r.score
        m[f"{key}.threshold"] = r.threshold
        m[f"{key}.drifted"] = r.drifted
        m[f"{key}.effect_size"] = r.effect_size
    est = scores.estimate
    m.update(
        {
            "n": est.n,
            "estimated_accuracy": est.value,
            "estimated_accuracy_lower": est.lower,
            "estimated_accuracy_upper": est.upper,
            "ood_rate": scores.ood_rate,
            "reference_accuracy": reference_accuracy,
            "accuracy_drop_vs_reference": reference_accuracy - est.value,
            "realized_accuracy": None if realized is None else realized.accuracy,
            "realized_macro_f1": None if realized is None else realized.macro_f1,
            "realized_n": 0 if realized is None else realized.n,
            "estimation_gap": None if realized is None else est.value - realized.accuracy,
        }
    )
    return m


def concept_from_rows(rows: PredictionWindow, model_version: str | None, window: int = 100) -> ConceptReport:
    """Concept-drift report of labelled rows (seq order; rows without feedback are ignored).

    Args:
        rows: predictions, typically ``store.labelled(...)``.
        model_version: recorded in the report.
        window: labelled predictions per metrics window (non-overlapping).
    """
    rows_mask = rows.has_feedback
    y, p, seqs = rows.true_labels[rows_mask], rows.labels[rows_mask], rows.seqs[rows_mask]
    n = int(y.size)
    if n == 0:
        return ConceptReport(model_version, 0, None, None, [], [], [], None)
    errors = (y != p).astype(np.int64).tolist()
    adwin = ErrorStreamMonitor("adwin")
    adwin.update_many(errors)
    ddm = ErrorStreamMonitor("ddm", warm_start=100)  # river's default 30 false-alarms at ~2 % error
    ddm.update_many(errors)
    overall = realized_metrics(y, p)
    wins = [
        {
            "start_seq": int(seqs[w.start]),
            "end_seq": int(seqs[w.end - 1]),
            "accuracy": w.metrics.accuracy,
            "macro_precision": w.metrics.macro_precision,
            "macro_recall": w.metrics.macro_recall,
            "macro_f1": w.metrics.macro_f1,
            "per_class_recall": list(w.metrics.per_class_recall),
        }
        for w in windowed_metrics(y, p, window=max(1, min(window, n)))
    ]
    return ConceptReport(
        model_version=model_version,
        n_labelled=n,
        accuracy=overall.accuracy,
        macro_f1=overall.macro_f1,
        windows=wins,
        adwin_change_seqs=[int(seqs[i]) for i in adwin.change_points],
        ddm_change_seqs=[int(seqs[i]) for i in ddm.change_points],
        error_rate=adwin.error_rate,
    )


def concept_metrics(report: ConceptReport | None) -> dict[str, Any]:
    """``concept.*`` keys added to each window's metrics."""
    if report is None or report.n_labelled == 0:
        return {"concept.n_labelled": 0}
    return {
        "concept.n_labelled": report.n_labelled,
        "concept.accuracy": report.accuracy,
        "concept.macro_f1": report.macro_f1,
        "concept.error_rate": report.error_rate,
        "concept.change_points": len(report.adwin_change_seqs),
        "concept.last_change_seq": report.adwin_change_seqs[-1] if report.adwin_change_seqs else None,
    }


def render_check(report: CheckReport) -> Table:
    """Per-detector table of a :class:`CheckReport` (verdict in the title, accuracy in the caption)."""
    from rich.table import Table

    verdict = "[bold red]DRIFT[/]" if report.drifted else "[green]no drift[/]"
    table = Table(
        title=f"Version {report.model_version}: last {report.n} predictions "
        f"(seq {report.start_seq}-{report.end_seq}): {verdict}"
    )
    for col in ("detector", "p-value", "score", "threshold", "effect size", "drifted", "what changed"):
        table.add_column(col, justify="left" if col in ("detector", "what changed") else "right")
    for r in report.drift.all():
        changed = r.details.get("drifted_features") or r.details.get("drifted_detectors") or []
        table.add_row(
            r.detector,
            "-" if r.p_value is None else f"{r.p_value:.3g}",
            f"{r.score:.2f}",
            f"{r.threshold:.2f}",
            f"{r.effect_size:.3g}",
            "[red]yes[/]" if r.drifted else "no",
            ", ".join(str(c) for c in changed[:4]),
        )
    est = report.estimate
    caption = (
        f"estimated accuracy {est.value:.3f} [{est.lower:.3f}, {est.upper:.3f}] "
        f"(reference {report.reference_accuracy:.3f}); OOD rate {report.ood_rate:.1%}"
    )
    if report.realized is not None:
        caption += f"; realized {report.realized.accuracy:.3f} on {report.realized.n} labels"
    table.caption = caption
    return table
