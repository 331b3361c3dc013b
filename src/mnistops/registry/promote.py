"""Gating a registered version, promotion, rollback: alias moves under a lock, each one audited.

Aliases: ``challenger`` (candidate under evaluation), ``champion`` (served),
``previous-champion`` (what one rollback restores). The ``promotion_events`` table keeps the
whole lineage, so after a rollback ``previous-champion`` is re-pointed one step further back
and rollback can be repeated. Every sequence of alias moves runs under the ``registry`` file
lock, so two concurrent promotions serialise instead of interleaving.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from mnistops.errors import PromotionRefusedError, RollbackError, StoreError
from mnistops.registry.names import CHALLENGER, CHAMPION, GATE_PATH, PREVIOUS
from mnistops.store import audit
from mnistops.store.lock import locked

if TYPE_CHECKING:
    from mnistops.gates.checks import GateConfig, GateReport
    from mnistops.registry.core import Registry
    from mnistops.training.data import Mnist

log = logging.getLogger(__name__)


def set_challenger(reg: Registry, version: str) -> None:
    """Point ``challenger`` at ``version``.

    Raises:
        ModelNotFoundError: unknown version.
    """
    with locked(reg.settings, "registry"):
        reg.model_version(version)
        reg.client.set_registered_model_alias(reg.name, CHALLENGER, str(version))


def _set_alias(reg: Registry, alias: str, version: str | None) -> None:
    if version is None:
        reg.client.delete_registered_model_alias(reg.name, alias)
    else:
        reg.client.set_registered_model_alias(reg.name, alias, version)


def _unsafe_because(gate: str | None, gated_vs: str | None, current: str | None, failed: str) -> str:
    """Why promoting would be unsafe ("" when it is not): a failed, missing or stale gate."""
    if gate == "false":
        return f"failed the gate ({failed})"
    if gate != "true":
        return "was never gated"
    if gated_vs != current:
        # the regression checks compared it with a champion that is no longer serving
        return f"was gated against champion {gated_vs or '(none)'} but the champion is now {current}"
    return ""


def _record_promotion(reg: Registry, event: audit.AuditEvent, aliases: dict[str, str]) -> audit.AuditEvent:
    """Audit a promotion whose aliases moved (undone if the audit fails) and tag the version."""
    current, version, actor, forced = event.from_version, event.to_version, event.actor, event.forced
    try:
        event = audit.record(reg.settings.database, reg.name, event)
    except StoreError:
        # no audit trail, no promotion: put the aliases back as they were
        _set_alias(reg, CHAMPION, current)
        _set_alias(reg, PREVIOUS, aliases.get(PREVIOUS))
        raise
    tags = {"promoted_by": actor, "promoted_at": event.time.isoformat(timespec="seconds")}
    if forced:
        tags["forced_promotion"] = "true"
    reg.set_tags(version, tags)
    return event


def promote(
    reg: Registry, version: str, actor: str | None = None, reason: str = "", force: bool = False
) -> audit.AuditEvent:
    """Make ``version`` the champion; the old champion becomes ``previous-champion``.

    Args:
        reg: the registry.
        version: version to promote.
        actor: who; default ``$USER@hostname``.
        reason: free text stored in the audit event.
        force: promote even if the gate did not pass (logged as a WARNING, tagged
            ``forced_promotion=true`` and recorded in the event).

    Returns:
        The recorded audit event.

    Raises:
        ModelNotFoundError: unknown version.
        PromotionRefusedError: without ``force``: the gate failed, never ran, or ran against a
            champion that is no longer the champion (stale); with or without: already champion.
        LockTimeoutError: another promotion held the lock too long.
    """
    version, actor = str(version), actor or audit.default_actor()
    with locked(reg.settings, "registry"):
        mv = reg.model_version(version)
        aliases = reg.aliases()
        current = aliases.get(CHAMPION)
        if current == version:
            raise PromotionRefusedError(f"version {version} is already champion")
        gate, gated_vs = mv.tags.get("gate_passed"), mv.tags.get("gate_champion") or None
        why = _unsafe_because(gate, gated_vs, current, mv.tags.get("gate_failed_checks", "?"))
        forced = bool(why)
        if forced:
            if not force:
                raise PromotionRefusedError(
                    f"version {version} {why}; run `mnistops gate {version}` or promote with --force"
                )
            log.warning("FORCED PROMOTION of %s version %s by %s: it %s", reg.name, version, actor, why)
        if current is not None:
            _set_alias(reg, PREVIOUS, current)
        _set_alias(reg, CHAMPION, version)
        if aliases.get(CHALLENGER) == version:
            _set_alias(reg, CHALLENGER, None)
        event = audit.AuditEvent(
            time=audit.now(),
            action="promote",
            from_version=current,
            to_version=version,
            reason=reason,
            actor=actor,
            forced=forced,
            details={"gate_passed": gate, "gate_champion": gated_vs, "forced_because": why},
        )
        event = _record_promotion(reg, event, aliases)
    log.info("%s: champion %s -> %s (%s)", reg.name, current, version, actor)
    return event


def rollback(
    reg: Registry, actor: str | None = None, reason: str = "", auto: bool = False
) -> tuple[str, str]:
    """Restore the previous champion in one step; repeatable down the promotion history.

    Args:
        reg: the registry.
        actor: who; default ``$USER@hostname``.
        reason: stored in the audit event.
        auto: recorded as ``auto-rollback`` (the monitor's quality-drop trigger).

    Returns:
        ``(from_version, to_version)``.

    Raises:
        RollbackError: no champion, or nothing earlier to restore.
    """
    actor = actor or audit.default_actor()
    with locked(reg.settings, "registry"):
        aliases = reg.aliases()
        current = aliases.get(CHAMPION)
        if current is None:
            raise RollbackError(f"{reg.name} has no champion to roll back from")
        events = reg.history()
        stack = audit.champion_stack(events)
        target = aliases.get(PREVIOUS)  # the registry's view wins if someone moved aliases by hand
        if target is None or target == current:
            target = stack[-2] if len(stack) >= 2 and stack[-1] == current else None
        if target is None:
            raise RollbackError(f"{reg.name}: no previous champion before version {current}")
        event = audit.AuditEvent(
            time=audit.now(),
            action="auto-rollback" if auto else "rollback",
            from_version=current,
            to_version=target,
            reason=reason,
            actor=actor,
        )
        after = audit.champion_stack([*events, event])
        new_prev = after[-2] if len(after) >= 2 and after[-2] != target else None
        _set_alias(reg, CHAMPION, target)
        _set_alias(reg, PREVIOUS, new_prev)
        try:
            event = audit.record(reg.settings.database, reg.name, event)
        except StoreError:
            _set_alias(reg, CHAMPION, current)
            _set_alias(reg, PREVIOUS, target)
            raise
        stamp = event.time.isoformat(timespec="seconds")
        reg.set_tags(target, {"promoted_by": actor, "promoted_at": stamp})
        reg.set_tags(current, {"rolled_back_by": actor, "rolled_back_at": stamp})
    log.warning("%s: rolled back champion %s -> %s (%s: %s)", reg.name, current, target, actor, reason)
    return current, target


def gate_report_dir(reg: Registry, version: str) -> Path:
    """Local folder of a version's gate reports."""
    return reg.settings.home / "reports" / "gate" / f"v{version}"


def gate_version(
    reg: Registry,
    version: str,
    mnist: Mnist | None = None,
    config: GateConfig | None = None,
    out_dir: Path | None = None,
) -> GateReport:
    """Gate a registered version against the current champion and record the result.

    Writes ``gate_report.json``/``.md`` into ``out_dir`` (default :func:`gate_report_dir`),
    logs them to the version's run under ``gate/`` and tags the version ``gate_passed`` and
    ``gate_failed_checks``. Does not raise on failure: the caller decides the exit code.
    """
    from mnistops.gates.checks import load_gate_config, run_gates, write_reports
    from mnistops.training.data import load_mnist

    version = str(version)
    cand_dir = reg.download(version)
    champ = reg.alias_version(CHAMPION)
    champ_dir = reg.download(champ) if champ is not None and champ != version else None
    cfg = config or load_gate_config(reg.settings.gates_file)
    report = run_gates(
        cand_dir,
        mnist or load_mnist(reg.settings.data_path),
        cfg,
        champ_dir,
        candidate=version,
        champion=champ if champ_dir is not None else None,
    )
    out = out_dir or gate_report_dir(reg, version)
    write_reports(report, out)
    reg.log_artifacts(version, out, GATE_PATH)
    reg.set_tags(
        version,
        {
            "gate_passed": "true" if report.passed else "false",
            "gate_failed_checks": ",".join(report.failed_checks),
            "gate_champion": champ if champ is not None and champ_dir is not None else "",
            "gate_time": report.created,
        },
    )
    return report
