"""Child processes of the supervisor: own process group, tied to the parent's life, read line by line.

Each child runs ``/bin/sh -c`` in a new session (so a terminal's Ctrl-C reaches only ``up``, which
forwards SIGTERM to the whole group: the shell, the role and anything the role forked). On Linux
the child also asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), so a
SIGKILLed supervisor does not leave the roles running; the setting survives ``exec``, which is why
a simple command is exec'd by the shell rather than forked.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_OPERATOR_CHARS = set("();<>|&")  # a command with an unquoted operator is left to the shell as written


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` giving the child ``sig`` when the spawning thread's process dies (Linux only).

    The kernel ties the signal to the *thread* that forks, so spawn from a thread that lives as long
    as the child should (the supervisor spawns from its main thread). None where unsupported.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: no lookups after fork
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def shell_command(command: str) -> list[str]:
    """argv running ``command`` with /bin/sh; a simple command is exec'd (one process, signals direct)."""
    try:
        tokens = list(shlex.shlex(command, posix=True, punctuation_chars=True))
    except ValueError:  # unbalanced quotes: let the shell report it
        tokens = ["("]
    simple = not any(t and set(t) <= _OPERATOR_CHARS for t in tokens) and "\n" not in command
    if not simple:
        return ["/bin/sh", "-c", command]
    # `exec A=1 cmd` would look for a program named "A=1": leading assignments go through env(1)
    assigns = bool(tokens) and re.match(r"[A-Za-z_][A-Za-z0-9_]*=", tokens[0]) is not None
    return ["/bin/sh", "-c", f"exec env {command}" if assigns else f"exec {command}"]


def child_env(base: Mapping[str, str], columns: int | None = None) -> dict[str, str]:
    """The roles' environment: ``base`` plus unbuffered Python output and this interpreter's bin first.

    The interpreter's folder goes first on PATH so ``mnistops`` in the Procfile is the one running
    ``up`` (the same virtualenv), whatever the caller's PATH.
    """
    env = dict(base)
    env["PYTHONUNBUFFERED"] = "1"
    bin_dir = str(Path(sys.executable).parent)
    path = env.get("PATH", os.defpath)
    if path.split(os.pathsep)[0] != bin_dir:
        env["PATH"] = bin_dir + os.pathsep + path
    if columns and "COLUMNS" not in env:
        env["COLUMNS"] = str(columns)  # rich wraps piped output at 80 columns otherwise
    return env


def spawn(command: str, env: Mapping[str, str], tie_to_parent: bool = True) -> subprocess.Popen[bytes]:
    """Start ``command`` in a new session, stdout+stderr on one non-blocking pipe, stdin closed."""
    proc = subprocess.Popen(
        shell_command(command),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent() if tie_to_parent else None,  # the supervisor has one thread
    )
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    return proc


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send ``sig`` to the child's whole process group (ignored when the group is gone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def describe_exit(code: int) -> str:
    """``exit code 3`` or ``killed by SIGKILL``."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


class LineReader:
    """Splits a non-blocking pipe's bytes into lines (a partial last line waits for its newline)."""

    MAX_LINE = 64 * 1024  # a longer "line" is emitted in pieces

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = b""
        self.eof = False

    def read(self) -> list[str]:
        """Complete lines available now (decoded, newline stripped); sets :attr:`eof` at the end."""
        chunks = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self.eof = True
                break
            chunks.append(data)
        self._buf += b"".join(chunks)
        *lines, self._buf = self._buf.split(b"\n")
        while len(self._buf) > self.MAX_LINE:
            lines.append(self._buf[: self.MAX_LINE])
            self._buf = self._buf[self.MAX_LINE :]
        if self.eof and self._buf:
            lines.append(self._buf)
            self._buf = b""
        return [ln.decode("utf-8", "replace").rstrip("\r") for ln in lines]
