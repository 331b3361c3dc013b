"""``mnistops up``: every role as a supervised child process on one machine."""

from mnistops.up.procfile import DEFAULT_PROCFILE, Role, load_roles, parse_roles
from mnistops.up.run import run_up
from mnistops.up.supervisor import EXIT_CRASH_LOOP, EXIT_STOPPED, RestartPolicy, Supervisor

__all__ = [
    "DEFAULT_PROCFILE",
    "EXIT_CRASH_LOOP",
    "EXIT_STOPPED",
    "RestartPolicy",
    "Role",
    "Supervisor",
    "load_roles",
    "parse_roles",
    "run_up",
]
