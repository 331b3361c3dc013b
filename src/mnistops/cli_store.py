"""`mnistops store …`: the operational database's schema (Alembic) and retention."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from mnistops.settings import Settings, get_settings

store_app = typer.Typer(no_args_is_help=True, help="The operational database (schema, retention).")
console = Console()


def _settings() -> Settings:
    return get_settings()


def _retention(store: Any, registry: Any = None) -> Any:
    """The retention role on ``store`` (None when no retention limit is set)."""
    from mnistops.registry.core import CHALLENGER, Registry, configure
    from mnistops.store.retention_service import retention_service

    configure(_settings())
    reg = Registry(_settings())
    return retention_service(
        _settings(), store, challenger=lambda: reg.alias_version(CHALLENGER), registry=registry
    )


@store_app.command("prune")
def store_prune(
    dry_run: Annotated[bool, typer.Option(help="Only count what would be pruned now.")] = False,
    once: Annotated[bool, typer.Option(help="One pass, then exit (default: every interval).")] = False,
) -> None:
    """Apply the retention policy (MNISTOPS_RETENTION_*): archive to Parquet, then delete, in batches."""
    from mnistops.errors import ConfigError
    from mnistops.runtime import stop_on_signals
    from mnistops.store.predictions import PredictionStore

    service = _retention(PredictionStore(_settings().database))
    if service is None:
        raise ConfigError("no retention limit: set MNISTOPS_RETENTION_MAX_AGE_SECONDS and/or _MAX_ROWS")
    if dry_run or once:
        console.print(service.retention.run(dry_run=dry_run).summary())
        return
    console.print(f"pruning {_settings().database} every {service.interval:.0f}s")
    stop_on_signals(service.start().stopping)
    service.stopping.wait()
    service.stop(timeout=30)


def _where(url: str) -> str:
    from mnistops.store.engine import normalize_url

    return normalize_url(url).render_as_string(hide_password=True)


@store_app.command("migrate")
def store_migrate() -> None:
    """Upgrade the database schema to the newest revision (every role also does this on first use)."""
    from mnistops.store.engine import Database

    s = _settings()
    db = Database(s.database)
    rev = db.migrate()
    db.close()
    console.print(f"{_where(s.database)}: schema at revision {rev} (head)")


@store_app.command("current")
def store_current() -> None:
    """Print the schema revision of the database and whether it is the newest this code knows."""
    from mnistops.store import revisions
    from mnistops.store.engine import Database

    s = _settings()
    db = Database(s.database)
    rev, head = db.schema_revision(), revisions.head()
    db.close()
    state = "head" if rev == head else f"behind head {head}: run `mnistops store migrate`"
    if rev is not None and rev not in revisions.known():
        state = f"unknown to this code (head {head}): a newer mnistops migrated it"
    console.print(f"{_where(s.database)}: schema at revision {rev or 'none'} ({state})")
