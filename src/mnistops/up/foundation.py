"""The cluster's foundation: PostgreSQL and the MLflow server, started first, stopped last.

Both run in their own session, tied to this process's life (``PR_SET_PDEATHSIG``), their output
in ``<root>/logs/<name>.log``. PostgreSQL refuses to run as root: when we are root it runs as
user ``postgres`` through ``setpriv`` (which execs, so signals reach the server itself).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TextIO

import httpx

from mnistops.errors import ConfigError
from mnistops.up import engines
from mnistops.up.engines import Ports
from mnistops.up.process import die_with_parent, signal_group

START_TIMEOUT = 120.0  # seconds for PostgreSQL, then mlflow, to answer
STOP_TIMEOUT = 20.0


class Foundation:
    """Context manager: ``__enter__`` starts PostgreSQL (+ databases) and mlflow, ``__exit__`` stops them."""

    def __init__(self, root: Path, ports: Ports, env: Mapping[str, str], out: TextIO) -> None:
        self.root, self.ports, self.env, self.out = root, ports, dict(env), out
        self.logs = root / "logs"
        self._procs: list[tuple[str, subprocess.Popen[bytes], signal.Signals]] = []

    def say(self, text: str) -> None:
        """One line in the cluster's stream."""
        print(f"{time.strftime('%H:%M:%S')} up         | {text}", file=self.out, flush=True)

    def __enter__(self) -> Foundation:
        try:
            self._postgres()
            self._mlflow()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    # --- start ------------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], stop_with: signal.Signals) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        self._procs.append((name, proc, stop_with))
        self.say(f"{name} started (pid {proc.pid}), log {self.logs / f'{name}.log'}")
        return proc

    def _postgres(self) -> None:
        pg = engines.postgres(self.root, self.ports.postgres)
        argv = pg.argv
        if pg.popen_user():
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                raise ConfigError("running as root needs setpriv (util-linux) to start PostgreSQL")
            # the kernel clears PR_SET_PDEATHSIG when the uid changes: setpriv sets it again after
            argv = [
                setpriv,
                f"--reuid={pg.user}",
                f"--regid={pg.user}",
                "--init-groups",
                "--pdeathsig=INT",
                "--",
                *argv,
            ]
        # SIGINT = PostgreSQL's "fast" shutdown (SIGTERM waits for every client to leave)
        proc = self._spawn("postgres", argv, signal.SIGINT)
        self._wait("postgres", proc, self._pg_ready)
        engines.create_databases(self.ports.postgres)

    def _pg_ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(
                host="127.0.0.1",
                port=self.ports.postgres,
                user="postgres",
                dbname="postgres",
                connect_timeout=2,
            ):
                return True
        except psycopg.OperationalError:
            return False

    def _mlflow(self) -> None:
        proc = self._spawn("mlflow", engines.mlflow_server(self.root, self.ports).argv, signal.SIGTERM)
        url = f"http://127.0.0.1:{self.ports.mlflow}/health"
        self._wait("mlflow", proc, lambda: _ok(url))

    def _wait(self, name: str, proc: subprocess.Popen[bytes], ready: Callable[[], bool]) -> None:
        deadline, t0 = time.monotonic() + START_TIMEOUT, time.monotonic()
        while not ready():
            if proc.poll() is not None:
                raise ConfigError(f"{name} exited with {proc.returncode}; see {self.logs / f'{name}.log'}")
            if time.monotonic() > deadline:
                raise ConfigError(f"{name} not ready after {START_TIMEOUT:.0f} s; see {self.logs}")
            time.sleep(0.2)
        self.say(f"{name} ready after {time.monotonic() - t0:.1f} s")

    # --- seed ---------------------------------------------------------------------------------------
    def seed(self, model: Path | None) -> None:
        """``mnistops seed``: a champion in the registry before the replicas start (no-op if there is one)."""
        argv = [sys.executable, "-m", "mnistops", "seed"]
        if model is not None:
            argv += ["--model", str(model)]
        self.say(f"seeding the registry: {' '.join(argv[2:])}")
        t0 = time.monotonic()
        res = subprocess.run(argv, env=self.env, capture_output=True, text=True, check=False)
        for line in (res.stdout + res.stderr).splitlines()[-6:]:
            self.say(f"seed: {line}")
        if res.returncode != 0:
            raise ConfigError(f"mnistops seed failed (exit {res.returncode})")
        self.say(f"seeded in {time.monotonic() - t0:.1f} s")

    # --- stop ---------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop mlflow, then PostgreSQL (reverse start order); SIGKILL after STOP_TIMEOUT."""
        while self._procs:
            name, proc, sig = self._procs.pop()
            if proc.poll() is None:
                signal_group(proc, sig)
                try:
                    proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    signal_group(proc, signal.SIGKILL)
                    proc.wait()
            self.say(f"{name} stopped (exit {proc.returncode})")


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
