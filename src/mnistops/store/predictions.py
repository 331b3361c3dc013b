"""Prediction store: every served prediction, its feedback and shadow answers, for monitoring.

``PredictionStore(url)`` works on SQLite (``sqlite:///path.db``, WAL mode) and PostgreSQL
(``postgresql+psycopg://user@host:port/db``). Reads return column arrays decoded in bulk with numpy
(images uint8 [N,28,28], probs float32 [N,10]). Alerts, windows and jobs live in :mod:`.events`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from sqlalchemy import Select, bindparam, event, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from mnistops.errors import InputError, NotFoundError
from mnistops.store.events import EventStore, alert_fingerprint
from mnistops.store.records import (
    N_CLASSES,
    AlertEvent,
    FeedbackRecord,
    MonitorWindow,
    PredictionRecord,
    PredictionWindow,
    RetrainJob,
    ShadowPairs,
    ShadowRecord,
)
from mnistops.store.schema import predictions, shadow_predictions

__all__ = [
    "AlertEvent",
    "FeedbackRecord",
    "MonitorWindow",
    "PredictionRecord",
    "PredictionStore",
    "PredictionWindow",
    "RetrainJob",
    "ShadowPairs",
    "ShadowRecord",
    "alert_fingerprint",
]

P = predictions.c
# column order of every bulk read (see _to_window)
_COLS = (P.seq, P.id, P.ts, P.model_version, P.image, P.probs, P.label, P.confidence, P.latency_ms)
_COLS2 = (P.served_by, P.true_label, P.client)


# Idempotent feedback (see insert_many): a new label, and not older than the one stored. The
# timestamp test keeps a replayed old label (say from another replica's journal) from undoing
# a newer one.
_APPLY_FEEDBACK = (
    update(predictions)
    .where(
        P.id == bindparam("pid"),
        or_(P.true_label.is_(None), P.true_label != bindparam("new_label")),
        or_(P.feedback_ts.is_(None), P.feedback_ts <= bindparam("fb_ts")),
    )
    .values(true_label=bindparam("new_label"), feedback_ts=bindparam("fb_ts"))
)


def _durable_session(is_sqlite: bool, dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    if is_sqlite:
        cur.execute("PRAGMA synchronous=FULL")  # after the engine's NORMAL (listeners run in order)
        cur.close()
        return
    cur.execute("SET synchronous_commit TO on")
    cur.close()
    dbapi_conn.commit()  # SET is transactional: keep it past the pool's reset


def _probs_blob(probs: Sequence[float]) -> bytes:
    return np.asarray(probs, dtype="<f4").tobytes()


def _prediction_row(r: PredictionRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "ts": r.ts,
        "model_version": r.model_version,
        "image": r.image,
        "probs": _probs_blob(r.probs),
        "label": r.label,
        "confidence": r.confidence,
        "latency_ms": r.latency_ms,
        "client": r.client,
        "served_by": r.served_by,
        "true_label": r.true_label,
        "feedback_ts": r.feedback_ts,
    }


def _shadow_row(s: ShadowRecord) -> dict[str, Any]:
    return {
        "prediction_id": s.prediction_id,
        "model_version": s.model_version,
        "ts": s.ts,
        "probs": _probs_blob(s.probs),
        "label": s.label,
        "confidence": s.confidence,
        "latency_ms": s.latency_ms,
    }


def _to_window(rows: Sequence[Any]) -> PredictionWindow:
    n = len(rows)
    if n == 0:
        cols: list[tuple[Any, ...]] = [()] * (len(_COLS) + len(_COLS2))
    else:
        cols = list(zip(*rows, strict=True))
    seq, ids, ts, mv, img, probs, label, conf, lat, served, true, client = cols
    return PredictionWindow(
        ids=np.array(ids, dtype=str),
        seqs=np.array(seq, dtype=np.int64),
        ts=np.array(ts, dtype=np.float64),
        model_versions=np.array(mv, dtype=str),
        # one join + one frombuffer per column: ~10k rows decode in milliseconds
        images=np.frombuffer(b"".join(img), dtype=np.uint8).reshape(n, 28, 28).copy(),
        probs=np.frombuffer(b"".join(probs), dtype="<f4").reshape(n, N_CLASSES).astype(np.float32),
        labels=np.array(label, dtype=np.int64),
        confidence=np.array(conf, dtype=np.float64),
        latency_ms=np.array(lat, dtype=np.float64),
        served_by=np.array(served, dtype=str),
        true_labels=np.array([-1 if t is None else t for t in true], dtype=np.int64),
        clients=np.array(["" if c is None else c for c in client], dtype=str),
    )


class PredictionStore(EventStore):
    """All monitoring data in one SQL database (see module docstring).

    Args:
        url: SQLAlchemy URL (``sqlite:///...`` or ``postgresql+psycopg://...``).
        busy_timeout_ms: how long SQLite waits for a lock before failing with StoreError.
        connect_timeout_s: PostgreSQL connect timeout.

    Every method raises :class:`StoreError` when the database is unreachable or fails.
    """

    # --- writes -----------------------------------------------------------------------------
    def _insert_ignore(self, table: Any, keys: list[str]) -> Any:
        dialect = sqlite if self.is_sqlite else postgresql
        return dialect.insert(table).on_conflict_do_nothing(index_elements=keys)

    def insert_many(
        self,
        records: Sequence[PredictionRecord],
        shadows: Sequence[ShadowRecord] = (),
        feedback: Sequence[FeedbackRecord] = (),
    ) -> int:
        """Insert predictions and shadow answers, then apply feedback, in one transaction.

        Idempotent, so journal replays and retries are safe: ids already stored are skipped, and
        feedback changes a prediction only to a different label and only if it is not older than
        the stored one (the same feedback applied twice, or an older one replayed after a newer
        one, changes nothing). Rows get increasing ``seq`` in list order; feedback for a
        prediction of the same call applies to it.

        Returns:
            Number of prediction rows actually inserted.
        """
        if not records and not shadows and not feedback:
            return 0
        inserted = 0
        with self._tx(write=True) as conn:
            if records:
                rows = [_prediction_row(r) for r in records]
                # executemany rowcount is unreliable on psycopg: count the rows RETURNING gives back
                stmt = self._insert_ignore(predictions, ["id"]).returning(P.seq)
                inserted = len(conn.execute(stmt, rows).all())
            if shadows:
                srows = [_shadow_row(s) for s in shadows]
                conn.execute(
                    self._insert_ignore(shadow_predictions, ["prediction_id", "model_version"]), srows
                )
            if feedback:  # executed in order: the last label reported for an id wins
                frows = [{"pid": f.prediction_id, "new_label": f.true_label, "fb_ts": f.ts} for f in feedback]
                conn.execute(_APPLY_FEEDBACK, frows)
        return inserted

    def feedback_label(self, prediction_id: str) -> int | None:
        """The true label recorded for a prediction (None: no feedback yet).

        Raises:
            NotFoundError: no prediction with that id.
        """
        with self._tx(write=False) as conn:
            row = conn.execute(select(P.true_label).where(P.id == prediction_id)).first()
        if row is None:
            raise NotFoundError(f"prediction {prediction_id!r} not found")
        return None if row[0] is None else int(row[0])

    def require_durable_commits(self) -> None:
        """Make later commits survive power loss (``MNISTOPS_DURABILITY=power``).

        SQLite: ``synchronous=FULL``, the WAL is fsync'd at every commit (with the default NORMAL
        it is synced only at checkpoints, so a power cut can undo the last commits; an
        application crash cannot). PostgreSQL: ``synchronous_commit=on`` for this store's
        sessions whatever the server default, so a commit returns once its WAL is flushed.
        """
        if getattr(self, "_durable_commits", False):
            return
        self._durable_commits = True
        event.listen(self._engine, "connect", lambda c, r: _durable_session(self.is_sqlite, c, r))
        self._engine.dispose()  # pooled connections reconnect with the setting

    def add_feedback(
        self, prediction_id: str, true_label: int, *, now: float | None = None
    ) -> Literal["recorded", "unchanged"]:
        """Attach the true label to a prediction (idempotent).

        Returns:
            "unchanged" if that label was already recorded, else "recorded" (a different label
            overwrites the previous one).

        Raises:
            InputError: label outside 0..9.
            NotFoundError: no prediction with that id.
        """
        if isinstance(true_label, bool) or not 0 <= int(true_label) < N_CLASSES:
            raise InputError(f"true_label must be in 0..9, got {true_label!r}")
        with self._tx(write=True) as conn:
            res = conn.execute(
                update(predictions)
                .where(P.id == prediction_id, or_(P.true_label.is_(None), P.true_label != int(true_label)))
                .values(true_label=int(true_label), feedback_ts=time.time() if now is None else now)
            )
            if res.rowcount:
                return "recorded"
            if conn.execute(select(P.seq).where(P.id == prediction_id)).first() is None:
                raise NotFoundError(f"prediction {prediction_id!r} not found")
            return "unchanged"

    # --- single rows and counts -------------------------------------------------------------
    def get(self, prediction_id: str) -> PredictionRecord:
        """One prediction. Raises NotFoundError for an unknown id."""
        with self._tx(write=False) as conn:
            row = conn.execute(select(predictions).where(P.id == prediction_id)).first()
        if row is None:
            raise NotFoundError(f"prediction {prediction_id!r} not found")
        m = dict(row._mapping)
        m["probs"] = tuple(float(p) for p in np.frombuffer(m["probs"], dtype="<f4"))
        return PredictionRecord(**m)

    def count(self, *, model_version: str | None = None, labelled: bool = False) -> int:
        """Number of predictions (optionally of one version, or only those with feedback)."""
        q = select(func.count()).select_from(predictions)
        if model_version is not None:
            q = q.where(P.model_version == model_version)
        if labelled:
            q = q.where(P.true_label.is_not(None))
        with self._tx(write=False) as conn:
            return int(conn.execute(q).scalar_one())

    def max_seq(self) -> int:
        """Highest seq stored (0 when empty)."""
        with self._tx(write=False) as conn:
            return int(conn.execute(select(func.coalesce(func.max(P.seq), 0))).scalar_one())

    # --- bulk reads -------------------------------------------------------------------------
    def _read(self, q: Select[Any], *, newest_first: bool = False) -> PredictionWindow:
        with self._tx(write=False) as conn:
            rows = conn.execute(q).all()
        return _to_window(rows[::-1] if newest_first else rows)

    @staticmethod
    def _select(model_version: str | None, served_by: str | None) -> Select[Any]:
        q = select(*_COLS, *_COLS2)
        if model_version is not None:
            q = q.where(P.model_version == model_version)
        if served_by is not None:
            q = q.where(P.served_by == served_by)
        return q

    def window(
        self, start_seq: int, end_seq: int, *, model_version: str | None = None, served_by: str | None = None
    ) -> PredictionWindow:
        """Predictions with ``start_seq <= seq <= end_seq`` (both inclusive), by seq ascending."""
        q = self._select(model_version, served_by).where(P.seq >= start_seq, P.seq <= end_seq)
        return self._read(q.order_by(P.seq))

    def after(
        self,
        seq: int,
        limit: int | None = None,
        *,
        model_version: str | None = None,
        served_by: str | None = None,
    ) -> PredictionWindow:
        """The first ``limit`` predictions with ``seq > seq``, ascending (seqs may have gaps:
        count-based windows should use this, not seq arithmetic)."""
        q = self._select(model_version, served_by).where(P.seq > seq).order_by(P.seq).limit(limit)
        return self._read(q)

    def latest(
        self, n: int, *, model_version: str | None = None, served_by: str | None = None
    ) -> PredictionWindow:
        """The newest ``n`` predictions, returned oldest first."""
        q = self._select(model_version, served_by).order_by(P.seq.desc()).limit(n)
        return self._read(q, newest_first=True)

    def labelled(
        self, since_seq: int | None = None, model_version: str | None = None, limit: int | None = None
    ) -> PredictionWindow:
        """Predictions that have feedback (``seq > since_seq``); with ``limit``, the newest ones.

        Rows are always returned oldest first.
        """
        q = self._select(model_version, None).where(P.true_label.is_not(None))
        if since_seq is not None:
            q = q.where(P.seq > since_seq)
        if limit is None:
            return self._read(q.order_by(P.seq))
        return self._read(q.order_by(P.seq.desc()).limit(limit), newest_first=True)

    # --- shadow answers ---------------------------------------------------------------------
    def shadow_pairs(
        self, model_version: str, *, since_seq: int | None = None, limit: int | None = None
    ) -> ShadowPairs:
        """Champion vs challenger ``model_version`` on the same inputs (newest ``limit``, oldest first)."""
        s = shadow_predictions.c
        q = (
            select(P.seq, P.id, P.model_version, P.label, s.label, P.probs, s.probs, P.true_label)
            .join(shadow_predictions, s.prediction_id == P.id)
            .where(s.model_version == model_version)
        )
        if since_seq is not None:
            q = q.where(P.seq > since_seq)
        q = q.order_by(P.seq.desc()).limit(limit)
        with self._tx(write=False) as conn:
            rows = conn.execute(q).all()[::-1]
        n = len(rows)
        cols: list[tuple[Any, ...]] = list(zip(*rows, strict=True)) if rows else [()] * 8
        seq, ids, mv, lab, slab, probs, sprobs, true = cols
        return ShadowPairs(
            prediction_ids=np.array(ids, dtype=str),
            seqs=np.array(seq, dtype=np.int64),
            champion_versions=np.array(mv, dtype=str),
            champion_labels=np.array(lab, dtype=np.int64),
            shadow_labels=np.array(slab, dtype=np.int64),
            champion_probs=np.frombuffer(b"".join(probs), dtype="<f4")
            .reshape(n, N_CLASSES)
            .astype(np.float32),
            shadow_probs=np.frombuffer(b"".join(sprobs), dtype="<f4")
            .reshape(n, N_CLASSES)
            .astype(np.float32),
            true_labels=np.array([-1 if t is None else t for t in true], dtype=np.int64),
        )

    def count_shadow(self, model_version: str) -> int:
        """Number of shadow answers stored for a challenger version."""
        q = select(func.count()).select_from(shadow_predictions)
        with self._tx(write=False) as conn:
            return int(
                conn.execute(q.where(shadow_predictions.c.model_version == model_version)).scalar_one()
            )
