"""Alert rules over per-window monitoring metrics, and the engine that fires and resolves them.

Rules live in YAML (packaged ``alerts.yaml``; ``settings.alerts_file`` replaces it). Each window the
monitor calls :meth:`AlertEngine.evaluate` with its metrics dict (``drift.combined.drifted``,
``drift.<detector>.p_value``, ``estimated_accuracy``, ``realized_accuracy``, ``ood_rate``, ...).
A rule fires after ``for`` consecutive breaching windows; the event is persisted in the store,
deduplicated by fingerprint (rule name + labels), and resolved on the first clean window. A rule
whose metric is missing or null in a window is skipped: its streak and firing state are kept.
"""

from __future__ import annotations

import logging
import math
import operator
import string
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from mnistops.errors import ConfigError, StoreError
from mnistops.monitor.alerts.notify import LogNotifier, Notification, Notifier
from mnistops.monitor.alerts.webhook import WebhookNotifier
from mnistops.store.events import alert_fingerprint
from mnistops.store.records import AlertEvent

if TYPE_CHECKING:
    from mnistops.settings import Settings

__all__ = ["AlertEngine", "AlertRule", "AlertStore", "MetricValue", "load_alert_rules", "parse_alert_rules"]

log = logging.getLogger(__name__)

MetricValue = float | bool | None
Comparator = Literal["<", "<=", ">", ">=", "==", "!="]
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_TEMPLATE_FIELDS = frozenset({"value", "threshold", "window", "model_version", "metric", "name"})


class AlertRule(BaseModel):
    """One alert rule: fires when ``metric <comparator> threshold`` holds for ``for`` windows."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$")
    metric: str = Field(min_length=1)
    comparator: Comparator
    threshold: StrictBool | float  # strict: the string "yes" is not a threshold
    for_: int = Field(1, ge=1, alias="for")
    severity: Literal["warning", "critical"]
    summary: str = Field(min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """Dedup key of this rule's alert (rule name + labels)."""
        return alert_fingerprint(self.name, self.labels)

    def breached(self, value: Any) -> bool | None:
        """True/False for a breach, None when the value is missing, null or NaN (rule skipped)."""
        value = _plain(value)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return bool(_OPS[self.comparator](value, self.threshold))

    def render(self, value: MetricValue, window: int, model_version: str) -> str:
        """The summary with its placeholders filled."""
        return self.summary.format(
            value=value,
            threshold=self.threshold,
            window=window,
            model_version=model_version,
            metric=self.metric,
            name=self.name,
        )


def _plain(value: Any) -> MetricValue:
    # numpy scalars -> Python scalars so comparisons, JSON and templates behave the same
    if hasattr(value, "item") and not isinstance(value, bool | int | float):
        value = value.item()
    if value is None or isinstance(value, bool):
        return value
    return float(value)


def _check_template(rule: AlertRule) -> str | None:
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(rule.summary) if f is not None}
    except ValueError as exc:
        return str(exc)
    unknown = {n for n in names if n.split(".")[0].split("[")[0] not in _TEMPLATE_FIELDS}
    if unknown:
        return f"unknown placeholder(s) {sorted(unknown)}; allowed: {sorted(_TEMPLATE_FIELDS)}"
    try:  # catches bad format specs such as {window:.2q}
        rule.render(0.5, 0, "0")
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _problems(exc: ValidationError) -> str:
    # One entry per field; union members (threshold.bool / threshold.float) fold into their field.
    by_field: dict[str, list[str]] = {}
    for e in exc.errors():
        loc = [str(x) for x in e["loc"]] or ["?"]
        name = ".".join(loc[:2]) if loc[0] == "labels" else loc[0]
        msgs = by_field.setdefault(name, [])
        if e["msg"] not in msgs:
            msgs.append(e["msg"])
    return "; ".join(f"field '{f}': {' or '.join(m)}" for f, m in by_field.items())


def parse_alert_rules(data: Any, origin: str = "alert rules") -> list[AlertRule]:
    """Validate parsed YAML (``{"rules": [...]}``) into rules.

    Raises:
        ConfigError: not a mapping with a ``rules`` list, an unknown key, a bad comparator or
            severity, a missing field, a bad summary template or a duplicate name; the message
            names the rule and the field.
    """
    if not isinstance(data, dict) or set(data) != {"rules"} or not isinstance(data["rules"], list):
        raise ConfigError(f"{origin}: expected a mapping with exactly one key 'rules' holding a list")
    rules: list[AlertRule] = []
    seen: set[str] = set()
    for i, raw in enumerate(data["rules"]):
        ident = f"#{i}"
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            ident = f"{raw['name']!r} (#{i})"
        if not isinstance(raw, dict):
            raise ConfigError(f"{origin}: rule {ident}: expected a mapping, got {type(raw).__name__}")
        try:
            rule = AlertRule.model_validate(raw)
        except ValidationError as exc:
            problems = _problems(exc)
            raise ConfigError(f"{origin}: rule {ident}: {problems}") from exc
        if (problem := _check_template(rule)) is not None:
            raise ConfigError(f"{origin}: rule {ident}: field 'summary': {problem}")
        if rule.name in seen:
            raise ConfigError(f"{origin}: rule {ident}: field 'name': duplicate rule name")
        seen.add(rule.name)
        rules.append(rule)
    return rules


def load_alert_rules(path: Path | str | None = None) -> list[AlertRule]:
    """Rules from ``path`` (e.g. ``settings.alerts_file``), or the packaged defaults when None.

    Raises:
        ConfigError: missing or unreadable file, invalid YAML or invalid rules.
    """
    if path is None:
        text, origin = (
            (resources.files("mnistops.monitor.alerts") / "alerts.yaml").read_text(),
            "packaged alerts.yaml",
        )
    else:
        p = Path(path)
        origin = str(p)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"alerts file {p}: cannot read: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {exc}") from exc
    return parse_alert_rules(data, origin)


class AlertStore(Protocol):
    """The part of :class:`~mnistops.store.predictions.PredictionStore` the engine uses."""

    def open_alert(
        self,
        rule: str,
        severity: str,
        summary: str,
        *,
        labels: dict[str, Any] | None = None,
        fingerprint: str | None = None,
        now: float | None = None,
    ) -> tuple[AlertEvent, bool]: ...

    def resolve_alert(self, fingerprint: str, *, now: float | None = None) -> AlertEvent | None: ...

    def list_alerts(self, *, state: str | None = None, limit: int = 100) -> list[AlertEvent]: ...


class AlertEngine:
    """Evaluates rules window by window, persists alert events and notifies on transitions.

    Args:
        rules: the rules (see :func:`load_alert_rules`).
        store: where events live (firing events are reloaded from it here, so a restarted
            monitor resolves alerts it fired before the restart instead of duplicating them).
        notifiers: receive the transitions of each window (errors are logged, never raised).
        clock: epoch-seconds clock for started_at / resolved_at.

    Raises:
        ConfigError: two rules share a name.
        StoreError: the store cannot be read at start.
    """

    def __init__(
        self,
        rules: Sequence[AlertRule],
        store: AlertStore,
        notifiers: Sequence[Notifier] = (),
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ConfigError(f"duplicate alert rule names in {names}")
        self.rules = list(rules)
        self.store = store
        self.notifiers = list(notifiers)
        self.clock = clock
        self._streak: dict[str, int] = {r.name: 0 for r in self.rules}
        self._firing: dict[str, AlertEvent] = {}
        # evaluate() runs in the monitor thread while /metrics may read firing() from another
        self._lock = threading.Lock()
        by_fp = {r.fingerprint: r for r in self.rules}
        for event in store.list_alerts(state="firing", limit=100_000):
            rule = by_fp.get(event.fingerprint)
            if rule is None:
                log.warning(
                    "firing alert %s (id %d) matches no configured rule; left as is", event.rule, event.id
                )
                continue
            self._firing[rule.name] = event
            self._streak[rule.name] = rule.for_  # a clean window resolves it, a breach keeps it

    @classmethod
    def from_settings(cls, settings: Settings, store: AlertStore) -> AlertEngine:
        """Rules from ``settings.alerts_file`` (or defaults), a log notifier and ``settings.webhook_urls``."""
        notifiers: list[Notifier] = [LogNotifier()]
        if settings.webhook_urls:
            notifiers.append(WebhookNotifier(settings.webhook_urls))
        return cls(load_alert_rules(settings.alerts_file), store, notifiers)

    def evaluate(
        self, window_index: int, metrics: Mapping[str, Any], model_version: str, *, now: float | None = None
    ) -> list[AlertEvent]:
        """Check every rule on one window's metrics.

        Returns:
            The events that changed state in this window: newly firing ones (state "firing") and
            resolved ones (state "resolved", ``resolved_at`` set). A store failure on one rule is
            logged and retried on the next window; the other rules still run.
        """
        ts = self.clock() if now is None else now
        changed: list[AlertEvent] = []
        notes: list[Notification] = []
        with self._lock:
            for rule in self.rules:
                try:
                    value = _plain(metrics.get(rule.metric))
                except (TypeError, ValueError):
                    log.warning("alert rule %s: metric %s is not a number, skipped", rule.name, rule.metric)
                    continue
                breached = rule.breached(value)
                if breached is None:
                    continue
                try:
                    if breached:
                        self._streak[rule.name] += 1
                        if self._streak[rule.name] >= rule.for_:
                            self._fire(rule, value, window_index, model_version, ts, changed, notes)
                    else:
                        self._streak[rule.name] = 0
                        self._resolve(rule, value, window_index, model_version, ts, changed, notes)
                except StoreError:
                    log.exception("alert rule %s: store failed in window %d", rule.name, window_index)
        if notes:
            for notifier in self.notifiers:
                try:
                    notifier.notify(notes)
                except Exception:  # a notifier must never break monitoring
                    log.exception("notifier %s failed", type(notifier).__name__)
        return changed

    def _fire(
        self,
        rule: AlertRule,
        value: MetricValue,
        window: int,
        model_version: str,
        ts: float,
        changed: list[AlertEvent],
        notes: list[Notification],
    ) -> None:
        # Called on every breaching window once the streak is long enough: the store's dedup makes it
        # idempotent, and it re-opens an alert another process resolved meanwhile.
        labels = {**rule.labels, "metric": rule.metric, "model_version": model_version}
        summary = rule.render(value, window, model_version)
        event, created = self.store.open_alert(
            rule.name, rule.severity, summary, labels=labels, fingerprint=rule.fingerprint, now=ts
        )
        self._firing[rule.name] = event
        if created:
            changed.append(event)
            notes.append(self._note(rule, event, value, window, model_version))

    def _resolve(
        self,
        rule: AlertRule,
        value: MetricValue,
        window: int,
        model_version: str,
        ts: float,
        changed: list[AlertEvent],
        notes: list[Notification],
    ) -> None:
        if rule.name not in self._firing:
            return
        event = self.store.resolve_alert(rule.fingerprint, now=ts)
        del self._firing[rule.name]
        if event is not None:  # None: someone else resolved it already (and notified)
            changed.append(event)
            notes.append(self._note(rule, event, value, window, model_version))

    @staticmethod
    def _note(
        rule: AlertRule, event: AlertEvent, value: MetricValue, window: int, model_version: str
    ) -> Notification:
        return Notification(
            status=event.state,
            rule=rule.name,
            severity=rule.severity,
            summary=event.summary,
            fingerprint=event.fingerprint,
            started_at=event.started_at,
            ended_at=event.resolved_at,
            event_id=event.id,
            window=window,
            model_version=model_version,
            metric=rule.metric,
            value=value,
            threshold=rule.threshold,
            comparator=rule.comparator,
            labels={k: str(v) for k, v in event.labels.items()},
        )

    def firing(self) -> list[AlertEvent]:
        """Currently firing events of the configured rules, in rule order."""
        with self._lock:
            return [self._firing[r.name] for r in self.rules if r.name in self._firing]

    def streaks(self) -> dict[str, int]:
        """Consecutive breaching windows per rule (for debugging and tests)."""
        with self._lock:
            return dict(self._streak)

    def firing_gauge(self) -> dict[tuple[str, str], int]:
        """``{(rule, severity): 0|1}`` for every rule: values of ``mnistops_alerts_firing{rule,severity}``."""
        with self._lock:
            return {(r.name, r.severity): int(r.name in self._firing) for r in self.rules}

    def close(self, timeout: float = 5.0) -> None:
        """Close the notifiers (webhooks get up to ``timeout`` seconds each to drain)."""
        for notifier in self.notifiers:
            try:
                notifier.close(timeout)
            except Exception:
                log.exception("closing notifier %s failed", type(notifier).__name__)
