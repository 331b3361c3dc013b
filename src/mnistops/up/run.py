"""``mnistops up``: read the Procfile, check the roles' ports, print the URLs, supervise."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path
from typing import TextIO

from mnistops.errors import ConfigError
from mnistops.settings import Settings
from mnistops.up.process import child_env
from mnistops.up.procfile import ROLE_PORTS, Role, load_roles, role_port, role_urls, select_roles
from mnistops.up.supervisor import RestartPolicy, Supervisor


def check_ports(settings: Settings, roles: list[Role]) -> None:
    """Fail fast (one readable line) when a role's port is taken, instead of a crash loop."""
    for r in roles:
        port = role_port(settings, r.name)
        if port is None:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((settings.host, port))
            except OSError as exc:
                var = f"MNISTOPS_{ROLE_PORTS[r.name].upper()}"
                raise ConfigError(
                    f"{r.name}: port {port} on {settings.host} is not free ({exc.strerror}); "
                    f"stop what holds it or set {var}"
                ) from exc


def _columns(out: TextIO, prefix: int) -> int:
    """Width the roles may print at (their Rich consoles wrap at 80 on a pipe otherwise)."""
    if out.isatty():
        return max(40, shutil.get_terminal_size().columns - prefix)
    return 160


def run_up(
    settings: Settings,
    procfile: Path | None = None,
    only: str | None = None,
    policy: RestartPolicy | None = None,
    out: TextIO | None = None,
) -> int:
    """Start the Procfile's roles (or ``only`` some), restart crashed ones, stop all on a signal.

    Returns:
        the exit code: 0 after a requested stop, 1 when a role crash-looped.
    """
    out = out or sys.stdout
    roles, source = load_roles(procfile)
    roles = select_roles(roles, only)
    check_ports(settings, roles)
    width = max(len(n) for n in [*(r.name for r in roles), "up"])
    env = child_env(os.environ, columns=_columns(out, prefix=width + 12))
    sup = Supervisor(roles, env, policy or RestartPolicy(), out)
    sup.log("up", f"{len(roles)} role(s) from {source}: {', '.join(r.name for r in roles)}")
    for label, url in role_urls(settings, roles):
        sup.log("up", f"{label:<18} {url}")
    return sup.run()
