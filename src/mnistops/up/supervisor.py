"""Supervise the roles (serve, monitor, controller, worker) as child processes on one machine.

One thread, one ``select`` loop: it copies every child's output into one stream with role prefixes
(honcho's format: ``12:00:01 serve      | …``, coloured on a terminal only), restarts a child that
exits with exponential backoff (tenacity computes the delays), gives up when a role crash-loops,
and on SIGTERM/SIGINT/SIGHUP sends SIGTERM to every child's process group, waits ``grace_seconds``
and SIGKILLs what is left (a second Ctrl-C kills at once). Single-threaded on purpose: children are
forked with a ``preexec_fn`` (see :mod:`mnistops.up.process`), which is only safe without threads.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TextIO

from honcho.colour import get_colours
from honcho.printer import Message, Printer
from tenacity import RetryCallState, Retrying, wait_exponential

from mnistops.up.process import LineReader, describe_exit, signal_group, spawn
from mnistops.up.procfile import Role

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
EXIT_STOPPED = 0  # stopped on request (every child stopped or was killed after the grace period)
EXIT_CRASH_LOOP = 1  # a role exceeded max_restarts: everything was stopped


@dataclass(frozen=True)
class RestartPolicy:
    """How ``up`` restarts a role that exits, and how long a stop may take."""

    initial_delay: float = 1.0  # first restart after this many seconds, doubling ...
    max_delay: float = 30.0  # ... up to this
    max_restarts: int = 5  # consecutive failed runs restarted; the next one stops everything
    stable_seconds: float = 30.0  # a run this long counts as healthy: the failure count resets
    grace_seconds: float = 30.0  # SIGTERM → SIGKILL on stop

    def delay(self, failures: int) -> float:
        """Seconds before the restart that follows the ``failures``-th consecutive failed run."""
        wait = wait_exponential(multiplier=self.initial_delay, min=self.initial_delay, max=self.max_delay)
        state = RetryCallState(Retrying(), None, (), {})
        state.attempt_number = max(1, failures)
        return float(wait(state))


@dataclass
class _Child:
    role: Role
    colour: str | None
    proc: subprocess.Popen[bytes] | None = None
    reader: LineReader | None = None
    started: float = 0.0
    failures: int = 0  # consecutive runs that ended within stable_seconds
    restart_at: float | None = None  # monotonic time of the next start


@dataclass
class Supervisor:
    """Runs ``roles`` until a stop signal (or a crash loop); :meth:`run` returns the exit code.

    Args:
        roles: what to run.
        env: the children's environment (see :func:`mnistops.up.process.child_env`).
        policy: restarts and stop timing.
        out: the merged log stream.
        colour: prefix colours (default: only when ``out`` is a terminal and NO_COLOR is unset).
    """

    roles: list[Role]
    env: Mapping[str, str]
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    out: TextIO = field(default_factory=lambda: sys.stdout)
    colour: bool | None = None

    def __post_init__(self) -> None:
        colours = get_colours()
        self._children = [_Child(r, next(colours)) for r in self.roles]
        width = max(len(n) for n in [*(r.name for r in self.roles), "up"])
        use_colour = "NO_COLOR" not in os.environ if self.colour is None else self.colour
        self._printer = Printer(self.out, width=width, colour=use_colour)
        self._sel = selectors.DefaultSelector()
        self._stop_signal: int | None = None
        self._force = False
        self._stopping = False
        self._gave_up: _Child | None = None

    def log(self, name: str, text: str, colour: str | None = None) -> None:
        """One line of the merged stream."""
        self._printer.write(Message("line", text, datetime.now(), name, colour))

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop as if ``signum`` arrived (a second request skips the grace period)."""
        if self._stop_signal is not None:
            self._force = True
        self._stop_signal = signum

    def run(self) -> int:
        """Start every role, supervise, stop; ``EXIT_STOPPED`` or ``EXIT_CRASH_LOOP``."""
        with self._signals():
            try:
                for c in self._children:
                    self._start(c)
                while self._stop_signal is None and self._gave_up is None:
                    self._step(self._timeout())
            except BaseException:
                self._shutdown()  # never leave the started roles behind
                raise
            return self._shutdown()

    # --- the loop ---------------------------------------------------------------------------------
    def _timeout(self) -> float:
        due = [c.restart_at for c in self._children if c.proc is None and c.restart_at is not None]
        return max(0.0, min([0.25, *(t - time.monotonic() for t in due)]))

    def _step(self, timeout: float) -> None:
        for key, _ in self._sel.select(timeout):
            if key.data is None:  # the signal wake-up pipe
                with contextlib.suppress(BlockingIOError):
                    os.read(key.fd, 512)
            else:
                self._pump(key.data)
        now = time.monotonic()
        for c in self._children:
            if c.proc is not None and c.proc.poll() is not None:
                self._exited(c, now)
            elif c.proc is None and c.restart_at is not None and now >= c.restart_at and not self._stopping:
                self._start(c)

    def _start(self, c: _Child) -> None:
        c.proc = spawn(c.role.command, self.env)
        assert c.proc.stdout is not None
        c.reader = LineReader(c.proc.stdout.fileno())
        self._sel.register(c.reader.fd, selectors.EVENT_READ, c)
        c.started, c.restart_at = time.monotonic(), None
        self.log("up", f"{c.role.name} started (pid {c.proc.pid}): {c.role.command}")

    def _pump(self, c: _Child) -> None:
        if c.reader is None:
            return
        for line in c.reader.read():
            self.log(c.role.name, line, c.colour)
        if c.reader.eof:
            self._sel.unregister(c.reader.fd)
            c.reader = None

    def _exited(self, c: _Child, now: float) -> None:
        assert c.proc is not None
        self._pump(c)  # what it wrote before exiting
        if c.reader is not None:  # a grandchild still holds the pipe: stop reading it
            self._sel.unregister(c.reader.fd)
            c.reader = None
        signal_group(c.proc, signal.SIGKILL)  # whatever the role forked dies with it
        code, ran = int(c.proc.returncode), now - c.started
        if c.proc.stdout is not None:
            c.proc.stdout.close()
        c.proc = None
        what = f"{c.role.name} {'stopped' if self._stopping else 'exited'} ({describe_exit(code)})"
        if self._stopping:
            self.log("up", what)
            return
        c.failures = 1 if ran >= self.policy.stable_seconds else c.failures + 1
        if c.failures > self.policy.max_restarts:
            self._gave_up = c
            self.log("up", f"{what} after {ran:.1f} s: {c.failures} failed runs in a row, giving up")
            return
        delay = self.policy.delay(c.failures)
        c.restart_at = now + delay
        self.log(
            "up",
            f"{what} after {ran:.1f} s; restart {c.failures}/{self.policy.max_restarts} in {delay:.1f} s",
        )

    def _shutdown(self) -> int:
        self._stopping = True
        alive = [c for c in self._children if c.proc is not None]
        why = "crash loop" if self._gave_up else signal.Signals(self._stop_signal or signal.SIGTERM).name
        self.log("up", f"stopping ({why}): SIGTERM to {', '.join(c.role.name for c in alive) or 'none'}")
        for c in alive:
            assert c.proc is not None
            signal_group(c.proc, signal.SIGTERM)
        deadline = time.monotonic() + self.policy.grace_seconds
        while any(c.proc for c in alive) and time.monotonic() < deadline and not self._force:
            self._step(0.1)
        for c in alive:
            if c.proc is not None:
                self.log("up", f"{c.role.name} still running: SIGKILL")
                signal_group(c.proc, signal.SIGKILL)
                c.proc.wait()
                self._exited(c, time.monotonic())
        return EXIT_CRASH_LOOP if self._gave_up else EXIT_STOPPED

    # --- signals ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """Stop signals request a stop and wake the select loop (main thread only; else no-op)."""
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._sel.register(r, selectors.EVENT_READ, None)
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        old_fd: int | None = None
        try:
            old_fd = signal.set_wakeup_fd(w)
            for sig in STOP_SIGNALS:
                signal.signal(sig, lambda signum, _frame: self.request_stop(signum))
        except ValueError:  # not the main thread: the caller stops us with request_stop()
            previous = {}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                if handler is not None:  # None: installed outside Python, cannot be restored
                    signal.signal(sig, handler)
            if old_fd is not None:
                signal.set_wakeup_fd(old_fd)
            self._sel.close()
            os.close(r)
            os.close(w)
