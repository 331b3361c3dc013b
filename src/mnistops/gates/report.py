"""Gate results and their renderings: a rich table (terminal), JSON and Markdown (CI job summary)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one gate check."""

    name: str
    passed: bool
    value: float | None  # what was measured (None when skipped)
    threshold: float
    detail: str  # one readable sentence; names failing classes etc.
    skipped: bool = False  # e.g. champion checks when there is no champion (counts as passed)
    data: dict[str, Any] = field(default_factory=dict)  # machine-readable extras

    @classmethod
    def skip(cls, name: str, threshold: float, why: str) -> CheckResult:
        """A check that does not apply (passes, marked skipped)."""
        return cls(name, True, None, threshold, why, skipped=True)

    @property
    def status(self) -> str:
        """PASS, FAIL or SKIP."""
        return "SKIP" if self.skipped else ("PASS" if self.passed else "FAIL")


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if isinstance(v, int) or (float(v).is_integer() and abs(v) >= 100):
        return f"{int(v):,}"
    if v != 0 and abs(v) < 1e-3:
        return f"{v:.2e}"
    return f"{v:.4f}"


@dataclass
class GateReport:
    """All check results for one candidate."""

    candidate: str  # version or folder name
    champion: str | None  # version compared with, if any
    checks: list[CheckResult]
    config: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def passed(self) -> bool:
        """True when no check failed."""
        return all(c.passed for c in self.checks)

    @property
    def failed_checks(self) -> list[str]:
        """Names of the failed checks."""
        return [c.name for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite numbers become null)."""
        checks = []
        for c in self.checks:
            d = asdict(c)
            if isinstance(d["value"], float) and not math.isfinite(d["value"]):
                d["value"] = None
            d["status"] = c.status
            checks.append(d)
        return {
            "candidate": self.candidate,
            "champion": self.champion,
            "passed": self.passed,
            "failed_checks": self.failed_checks,
            "created": self.created,
            "checks": checks,
            "config": self.config,
        }

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateReport:
        """Inverse of :meth:`to_dict`."""
        keys = {"name", "passed", "value", "threshold", "detail", "skipped", "data"}
        checks = [CheckResult(**{k: v for k, v in c.items() if k in keys}) for c in d["checks"]]
        return cls(d["candidate"], d.get("champion"), checks, d.get("config", {}), d.get("created", ""))

    def to_markdown(self) -> str:
        """A Markdown summary (for ``$GITHUB_STEP_SUMMARY``)."""
        head = "PASSED" if self.passed else f"FAILED ({', '.join(self.failed_checks)})"
        vs = f" vs champion {self.champion}" if self.champion else " (no champion)"
        lines = [
            f"## Quality gate: {self.candidate}{vs}: **{head}**",
            "",
            "| check | status | value | threshold | detail |",
            "|---|---|---|---|---|",
        ]
        for c in self.checks:
            mark = {"PASS": "✅ pass", "FAIL": "❌ FAIL", "SKIP": "➖ skip"}[c.status]
            detail = c.detail.replace("|", "\\|")
            lines.append(f"| {c.name} | {mark} | {_fmt(c.value)} | {_fmt(c.threshold)} | {detail} |")
        return "\n".join(lines) + "\n"

    def to_table(self) -> Table:
        """A rich Table for the terminal."""
        from rich.table import Table

        verdict = "[green]PASSED[/]" if self.passed else "[red]FAILED[/]"
        vs = f" vs champion {self.champion}" if self.champion else ""
        t = Table(title=f"quality gate: {self.candidate}{vs}: {verdict}")
        t.add_column("check")
        t.add_column("status")
        t.add_column("value", justify="right")
        t.add_column("threshold", justify="right")
        t.add_column("detail")
        style = {"PASS": "[green]PASS[/]", "FAIL": "[bold red]FAIL[/]", "SKIP": "[dim]skip[/]"}
        for c in self.checks:
            t.add_row(c.name, style[c.status], _fmt(c.value), _fmt(c.threshold), c.detail)
        return t


def write_reports(report: GateReport, out_dir: Path) -> tuple[Path, Path]:
    """Write ``gate_report.json`` and ``gate_report.md`` into ``out_dir`` (created)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "gate_report.json", out_dir / "gate_report.md"
    js.write_text(report.to_json())
    md.write_text(report.to_markdown())
    return js, md
