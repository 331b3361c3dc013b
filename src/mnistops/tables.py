"""Rich tables shared by the CLI and the demo (metrics of a run, the registry's versions)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from rich.table import Table

if TYPE_CHECKING:
    from mnistops.registry.core import VersionInfo

MODEL_COLUMNS = (
    "version",
    "aliases",
    "test acc",
    "noisy acc",
    "params",
    "gate",
    "promoted by",
    "promoted at",
)


def metrics_table(metrics: Mapping[str, object], title: str) -> Table:
    """``metric | value`` rows (floats to 4 decimals)."""
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in metrics.items():
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    return t


def models_table(name: str, versions: Iterable[VersionInfo]) -> Table:
    """The registered versions with metrics, gate result, aliases and last promotion."""
    t = Table(title=f"registered model {name}")
    for col in MODEL_COLUMNS:
        t.add_column(col)
    for v in versions:
        gate = (
            "-"
            if v.gate_passed is None
            else ("[green]pass[/]" if v.gate_passed else "[red]FAIL[/] " + ",".join(v.gate_failed_checks))
        )
        t.add_row(
            v.version,
            ", ".join(v.aliases),
            f"{v.metrics.get('test_accuracy', float('nan')):.4f}",
            f"{v.metrics.get('noisy_test_accuracy', float('nan')):.4f}",
            str(int(v.metrics.get("params", 0))),
            gate + (" [red](forced)[/]" if v.forced else ""),
            v.promoted_by or "",
            (v.promoted_at or "")[:19],
        )
    return t
