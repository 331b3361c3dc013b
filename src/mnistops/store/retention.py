"""Retention of the prediction log: prune old rows in small batches, archived to Parquet first.

A prediction is *old* when it is older than ``max_age_seconds`` or not among the newest
``max_rows`` (either rule; both are optional). An old row is pruned unless a keep rule holds:

- the monitor has not evaluated it: its seq is beyond the resume point of the last stored monitor
  window (``keep_unmonitored``; with no window stored yet, nothing is pruned);
- it may still get feedback: it is younger than ``feedback_grace_seconds``;
- the current challenger's shadow verdict needs it: it has a shadow answer of the challenger, or
  the challenger answered it (canary).

A pass prunes batch after batch (``batch_rows`` rows, by seq): one read transaction, the Parquet
file written and fsynced (:mod:`mnistops.store.archive`), then one short write transaction deletes
the rows and their shadow answers. The delete is guarded by each row's ``feedback_ts``, so a label
recorded after the batch was read keeps its row (the next pass archives it again). After each
batch the pass pauses ``pause_ratio`` times as long as the delete took: on SQLite, where a write
transaction excludes other writers, the API's log flush gets the lock at least half of the time.
Batches shrink (down to ``MIN_BATCH_ROWS``) while a delete takes longer than ``target_delete_ms``
and grow back up to ``batch_rows`` when deletes are fast, so a slow disk or a busy CPU shortens
the time writers can wait instead of lengthening it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, delete, exists, false, func, or_, select, tuple_

from mnistops.errors import ConfigError
from mnistops.store.archive import batch_table, remove_stale_temp_files, write_batch
from mnistops.store.events import EventStore
from mnistops.store.schema import predictions, shadow_predictions

if TYPE_CHECKING:
    from mnistops.settings import Settings

log = logging.getLogger(__name__)

P, S = predictions.c, shadow_predictions.c
MAX_BATCH_ROWS = 10_000  # keeps every IN list of a batch far below the drivers' parameter limits
MIN_PAUSE_S = 0.005
MIN_BATCH_ROWS = 10
Row = dict[str, Any]


@dataclass(frozen=True)
class RetentionPolicy:
    """What retention prunes and how (see module docstring); built from settings by :meth:`from_settings`."""

    max_age_seconds: float | None = None
    max_rows: int | None = None
    feedback_grace_seconds: float = 3600.0
    keep_unmonitored: bool = True
    batch_rows: int = 1000
    archive_dir: Path | None = None
    pause_ratio: float = 1.0  # pause after a batch, as a multiple of its delete transaction's time
    target_delete_ms: float = 20.0  # longer deletes halve the next batch, much shorter ones double it

    def __post_init__(self) -> None:
        if not 1 <= self.batch_rows <= MAX_BATCH_ROWS:
            raise ConfigError(f"retention batch_rows must be in 1..{MAX_BATCH_ROWS}, got {self.batch_rows}")
        if self.pause_ratio < 0 or self.feedback_grace_seconds < 0:
            raise ConfigError("retention pause_ratio and feedback_grace_seconds must be >= 0")

    @classmethod
    def from_settings(cls, s: Settings) -> RetentionPolicy:
        """The policy of the ``retention_*`` settings."""
        return cls(
            max_age_seconds=s.retention_max_age_seconds,
            max_rows=s.retention_max_rows,
            feedback_grace_seconds=s.retention_feedback_grace_seconds,
            keep_unmonitored=s.retention_keep_unmonitored,
            batch_rows=s.retention_batch_rows,
            archive_dir=s.retention_archive_dir,
        )

    @property
    def enabled(self) -> bool:
        """True when an age or row-count limit is set."""
        return self.max_age_seconds is not None or self.max_rows is not None


@dataclass(frozen=True)
class PrunePlan:
    """The cut-offs of one pass (computed once at its start)."""

    now: float
    horizon_seq: int | None  # rows with seq > this are not evaluated by the monitor (None: no limit)
    age_cut_ts: float | None  # rows with ts < this are old by age
    count_cut_seq: int | None  # rows with seq < this are old by count (None: not over max_rows)
    grace_cut_ts: float  # rows with ts >= this may still get feedback
    challenger: str | None  # whose shadow / canary rows are kept


@dataclass
class PruneReport:
    """What one pass did (or, dry run, would do)."""

    plan: PrunePlan | None
    dry_run: bool = False
    reason: str = ""  # why the pass did nothing, if it did nothing on purpose
    candidates: int = 0  # dry run: rows that would be pruned now
    pruned: int = 0
    shadows_pruned: int = 0
    skipped: int = 0  # read but kept: feedback changed meanwhile, or already gone
    files: list[Path] = field(default_factory=list)
    delete_ms: list[float] = field(default_factory=list)  # each batch's write transaction
    first_seq: int | None = None
    last_seq: int | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for logs and the CLI."""
        if self.plan is None or (self.reason and not self.pruned and not self.candidates):
            return f"retention: nothing to do ({self.reason})"
        span = f"seq {self.first_seq}..{self.last_seq}" if self.first_seq is not None else "no rows"
        if self.dry_run:
            return f"retention (dry run): would prune {self.candidates} predictions ({span})"
        longest = max(self.delete_ms, default=0.0)
        return (
            f"retention: pruned {self.pruned} predictions + {self.shadows_pruned} shadow answers ({span}) "
            f"in {len(self.delete_ms)} batches, {self.seconds:.2f} s; {len(self.files)} archive files; "
            f"{self.skipped} kept (changed during the pass); longest delete transaction {longest:.1f} ms"
        )


class Retention:
    """Prunes a store by a policy (see module docstring).

    Args:
        store: the prediction store (any :class:`EventStore`).
        policy: limits and keep rules.
        challenger: the current challenger version, or None (e.g. ``registry.alias_version``); a
            failure raises out of the pass, which then prunes nothing.
        clock: epoch seconds.
    """

    def __init__(
        self,
        store: EventStore,
        policy: RetentionPolicy,
        *,
        challenger: Callable[[], str | None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.policy, self.challenger, self.clock = store, policy, challenger, clock

    def plan(self) -> tuple[PrunePlan | None, str]:
        """The cut-offs for a pass now, or ``(None, why not)``."""
        p = self.policy
        if not p.enabled:
            return None, "no limit set (retention_max_age_seconds, retention_max_rows)"
        horizon = None
        if p.keep_unmonitored:
            last = self.store.last_window()
            if last is None:
                return None, "the monitor has not evaluated a window yet"
            horizon = last.resume_after_seq
        count_cut = None
        if p.max_rows is not None:
            newest = select(P.seq).order_by(P.seq.desc()).offset(p.max_rows - 1).limit(1)
            with self.store._tx(write=False) as conn:
                count_cut = conn.execute(newest).scalar()
        now = self.clock()
        age_cut = None if p.max_age_seconds is None else now - p.max_age_seconds
        plan = PrunePlan(now, horizon, age_cut, count_cut, now - p.feedback_grace_seconds, self.challenger())
        return plan, ""

    def _where(self, plan: PrunePlan, after_seq: int) -> ColumnElement[bool]:
        old = [] if plan.age_cut_ts is None else [P.ts < plan.age_cut_ts]
        if plan.count_cut_seq is not None:
            old.append(P.seq < plan.count_cut_seq)
        conds = [P.seq > after_seq, or_(false(), *old), P.ts < plan.grace_cut_ts]
        if plan.horizon_seq is not None:
            conds.append(P.seq <= plan.horizon_seq)
        if plan.challenger is not None:
            conds.append(P.model_version != plan.challenger)
            conds.append(~exists().where(S.prediction_id == P.id, S.model_version == plan.challenger))
        return and_(*conds)

    def _read_batch(
        self, plan: PrunePlan, after_seq: int, limit: int
    ) -> tuple[list[Row], dict[str, list[Row]]]:
        q = select(predictions).where(self._where(plan, after_seq)).order_by(P.seq)
        with self.store._tx(write=False) as conn:
            rows = [dict(r._mapping) for r in conn.execute(q.limit(limit))]
            shadows: dict[str, list[Row]] = {}
            if rows:
                sq = select(shadow_predictions).where(S.prediction_id.in_([r["id"] for r in rows]))
                for s in conn.execute(sq):
                    shadows.setdefault(s.prediction_id, []).append(dict(s._mapping))
        return rows, shadows

    def _delete(self, rows: Sequence[Row], shadows: Mapping[str, Sequence[Row]]) -> tuple[list[str], int]:
        """Delete the rows unchanged since they were read, with the shadow answers archived with them."""
        fresh = [r["seq"] for r in rows if r["feedback_ts"] is None]
        labelled = [(r["seq"], r["feedback_ts"]) for r in rows if r["feedback_ts"] is not None]
        gone: list[str] = []
        with self.store._tx(write=True) as conn:
            if fresh:
                q = delete(predictions).where(P.seq.in_(fresh), P.feedback_ts.is_(None))
                gone += conn.execute(q.returning(P.id)).scalars().all()
            if labelled:
                q = delete(predictions).where(tuple_(P.seq, P.feedback_ts).in_(labelled))
                gone += conn.execute(q.returning(P.id)).scalars().all()
            # only the shadow answers that were archived: one written since stays (an orphan, not lost)
            pairs = [(pid, s["model_version"]) for pid in gone for s in shadows.get(pid, ())]
            n_shadows = 0
            if pairs:
                q2 = delete(shadow_predictions).where(tuple_(S.prediction_id, S.model_version).in_(pairs))
                n_shadows = int(conn.execute(q2).rowcount)
        return gone, n_shadows

    def count(self, plan: PrunePlan) -> tuple[int, int | None, int | None]:
        """Rows prunable now under ``plan``: (count, first seq, last seq)."""
        q = select(func.count(), func.min(P.seq), func.max(P.seq)).where(self._where(plan, 0))
        with self.store._tx(write=False) as conn:
            n, first, last = conn.execute(q).one()
        return int(n), first, last

    def run(self, *, dry_run: bool = False, stop: threading.Event | None = None) -> PruneReport:
        """One pass: prune (or, ``dry_run``, count) every row the policy allows, batch by batch.

        ``stop`` is checked between batches (a batch in flight is archived and deleted first).

        Raises:
            StoreError: the store or the archive failed; batches before it stay pruned (and
                archived), the failing one is untouched or archived twice on the next pass.
        """
        t0 = time.perf_counter()
        plan, reason = self.plan()
        report = PruneReport(plan, dry_run=dry_run, reason=reason)
        if plan is None:
            return report
        if dry_run:
            report.candidates, report.first_seq, report.last_seq = self.count(plan)
            report.reason = "" if report.candidates else "no prunable rows"
            return report
        archive = self.policy.archive_dir
        if archive is not None:
            remove_stale_temp_files(archive)
        after, size = 0, self.policy.batch_rows
        while stop is None or not stop.is_set():
            rows, shadows = self._read_batch(plan, after, size)
            if not rows:
                break
            if archive is not None:
                report.files.append(write_batch(archive, batch_table(rows, shadows, self.clock())))
            t1 = time.perf_counter()
            gone, n_shadows = self._delete(rows, shadows)
            tx_s = time.perf_counter() - t1
            self._account(report, rows, gone, n_shadows, tx_s)
            after = int(rows[-1]["seq"])
            if len(rows) < size:
                break
            size = self._next_size(size, tx_s * 1000)
            pause = max(MIN_PAUSE_S, self.policy.pause_ratio * tx_s)  # writers go first
            if stop is not None:
                stop.wait(pause)
            else:
                time.sleep(pause)
        report.seconds = time.perf_counter() - t0
        if not report.pruned and not report.skipped:
            report.reason = "no prunable rows"
        return report

    def _next_size(self, size: int, tx_ms: float) -> int:
        if tx_ms > self.policy.target_delete_ms:
            return max(min(MIN_BATCH_ROWS, self.policy.batch_rows), size // 2)
        if tx_ms < self.policy.target_delete_ms / 4:
            return min(self.policy.batch_rows, size * 2)
        return size

    @staticmethod
    def _account(
        report: PruneReport, rows: Sequence[Row], gone: list[str], n_shadows: int, tx_s: float
    ) -> None:
        report.pruned += len(gone)
        report.shadows_pruned += n_shadows
        report.skipped += len(rows) - len(gone)
        report.delete_ms.append(tx_s * 1000)
        if report.first_seq is None:
            report.first_seq = int(rows[0]["seq"])
        report.last_seq = int(rows[-1]["seq"])
