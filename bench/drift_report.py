"""Tables of the drift benchmark: one list-of-rows form rendered to the console (rich) and markdown."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy import stats


@dataclass
class TableData:
    """A titled table of strings (first column left-aligned, the rest right-aligned)."""

    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""

    def add(self, *cells: object) -> None:
        """Append a row; floats are formatted by :func:`fmt`."""
        self.rows.append([fmt(c) for c in cells])

    def to_rich(self) -> Table:
        """A rich Table for the console."""
        t = Table(title=self.title, caption=self.note or None)
        for i, h in enumerate(self.header):
            t.add_column(h, justify="left" if i == 0 else "right")
        for r in self.rows:
            t.add_row(*r)
        return t

    def to_markdown(self) -> str:
        """A GitHub markdown table with the title as a bold line above it."""
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.header) + " |"]
        lines.append("|" + "|".join([":---"] + ["---:"] * (len(self.header) - 1)) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return {"title": self.title, "header": self.header, "rows": self.rows, "note": self.note}


def fmt(x: object) -> str:
    """Floats with 2 decimals (3 below 0.1 so small false-alarm rates stay readable); others str()."""
    if isinstance(x, float | np.floating):
        v = float(x)
        if np.isnan(v):
            return "-"
        return f"{v:.3f}" if abs(v) < 0.1 and v != 0 else f"{v:.2f}"
    return str(x)


def upper_bound(k: int, n: int, level: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a binomial rate (k events in n trials)."""
    if n == 0:
        return float("nan")
    if k >= n:
        return 1.0
    return float(stats.beta.ppf(level, k + 1, n - k))


def render(console: Console, tables: Sequence[TableData]) -> None:
    """Print tables to the console."""
    for t in tables:
        console.print(t.to_rich())
        console.print()


def markdown(tables: Sequence[TableData], preamble: str) -> str:
    """The markdown document for the README (tables separated by blank lines)."""
    return "\n\n".join([preamble, *(t.to_markdown() for t in tables)]) + "\n"
