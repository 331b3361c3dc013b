"""The roles ``mnistops up`` runs: a Procfile (``name: command`` lines, as foreman/honcho read them).

``up`` reads ``./Procfile`` when there is one (the repository root ships it), else the same four
roles built in here, so an installed package works from any folder. Parsing is honcho's, so the
file also runs under ``honcho start`` (without restarts) for anyone who prefers it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from honcho.environ import parse_procfile

from mnistops.errors import ConfigError
from mnistops.settings import Settings

# Same roles as the repository's Procfile (a test keeps the two equal).
DEFAULT_PROCFILE = """\
serve: mnistops serve
monitor: mnistops monitor run
controller: mnistops controller run
worker: mnistops worker run
"""

# Which setting holds each known role's port (serve: the API; the others: /metrics + /healthz).
ROLE_PORTS = {
    "serve": "port",
    "monitor": "monitor_port",
    "controller": "controller_port",
    "worker": "worker_port",
}


@dataclass(frozen=True)
class Role:
    """One supervised process: its Procfile name and shell command."""

    name: str
    command: str


def parse_roles(text: str, source: str = "Procfile") -> list[Role]:
    """Roles of a Procfile's text, in file order (comments and blank lines ignored)."""
    try:
        procs = parse_procfile(text).processes
    except AssertionError as exc:  # honcho asserts unique names
        raise ConfigError(f"{source}: {exc}") from exc
    if not procs:
        raise ConfigError(f"{source}: no `name: command` lines")
    return [Role(name, cmd) for name, cmd in procs.items()]


def load_roles(path: Path | None = None) -> tuple[list[Role], str]:
    """Roles from ``path``, else ``./Procfile``, else the built-in four; also says which it used."""
    if path is None and Path("Procfile").is_file():
        path = Path("Procfile")
    if path is None:
        return parse_roles(DEFAULT_PROCFILE, "built-in Procfile"), "built-in Procfile"
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read Procfile {path}: {exc.strerror}") from exc
    return parse_roles(text, str(path)), str(path)


def select_roles(roles: list[Role], only: str | None) -> list[Role]:
    """Keep the roles named in ``only`` (comma-separated; None = all), in Procfile order."""
    if not only:
        return roles
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    known = {r.name for r in roles}
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        raise ConfigError(f"--only {only!r}: unknown role(s) {unknown}; the Procfile has {sorted(known)}")
    return [r for r in roles if r.name in wanted]


def role_port(settings: Settings, role: str) -> int | None:
    """The port a known role listens on (None for other roles or a port set to 0 = off)."""
    field = ROLE_PORTS.get(role)
    port = int(getattr(settings, field)) if field else 0
    return port or None


def role_urls(settings: Settings, roles: list[Role]) -> list[tuple[str, str]]:
    """``(label, url)`` for what the selected roles serve: API, pages, each role's /metrics."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    out: list[tuple[str, str]] = []
    for r in roles:
        port = role_port(settings, r.name)
        if port is None:
            continue
        base = f"http://{host}:{port}"
        if r.name == "serve":
            out += [("API", f"{base}/"), ("dashboard", f"{base}/dashboard"), ("docs", f"{base}/docs")]
        out.append((f"{r.name} metrics", f"{base}/metrics"))
    return out
