"""`mnistops up`: the supervisor on a test Procfile of small Python children (real processes, signals)."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.processes import pid_alive, read_pids, wait_until
from mnistops.errors import ConfigError
from mnistops.settings import Settings
from mnistops.up import DEFAULT_PROCFILE, EXIT_CRASH_LOOP, RestartPolicy, Supervisor, parse_roles
from mnistops.up.process import child_env, shell_command
from mnistops.up.procfile import load_roles, role_urls, select_roles
from mnistops.up.run import check_ports

REPO = Path(__file__).resolve().parents[2]
LINUX = sys.platform.startswith("linux")

# A role for tests: notes its pid (and a grandchild's) and each start time, says hello, then
# crashes, sleeps, ignores SIGTERM while sleeping, or forks a grandchild into its process group.
CHILD = """\
import os, signal, subprocess, sys, time
name, mode, out = sys.argv[1], sys.argv[2], sys.argv[3]
def note(what, value):
    with open(os.path.join(out, f"{name}.{what}"), "a") as f:
        f.write(f"{value}\\n")
note("starts", time.time())
note("pids", os.getpid())
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "fork":
    note("pids", subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"]).pid)
print(f"{name} says hello", flush=True)
print("partial line without newline", end="", flush=True)
if mode == "crash":
    note("ends", time.time())
    sys.exit(3)
time.sleep(300)
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "child.py").write_text(CHILD)
    return tmp_path


def procfile(workdir: Path, **roles: str) -> Path:
    """A Procfile of test children: ``name=mode``."""
    lines = [f"{n}: python {workdir / 'child.py'} {n} {mode} {workdir}" for n, mode in roles.items()]
    path = workdir / "Procfile"
    path.write_text("# test roles\n" + "\n".join(lines) + "\n")
    return path


@pytest.fixture
def up_process(workdir: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """Started `mnistops up` processes; any still running at the end is killed (children follow)."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def start_up(procs: list[subprocess.Popen[str]], workdir: Path, *args: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-m", "mnistops", "up", "--procfile", str(workdir / "Procfile"), *args],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    procs.append(p)
    return p


# --- Procfile, commands, policy -----------------------------------------------------------------
def test_repo_procfile_lists_the_four_roles_like_the_builtin_one() -> None:
    roles, _ = load_roles(REPO / "Procfile")
    assert roles == parse_roles(DEFAULT_PROCFILE)
    assert [r.name for r in roles] == ["serve", "monitor", "controller", "worker"]
    assert roles[1].command == "mnistops monitor run"


def test_only_selects_roles_in_procfile_order_and_rejects_unknown_names() -> None:
    roles = parse_roles(DEFAULT_PROCFILE)
    assert [r.name for r in select_roles(roles, "worker, serve")] == ["serve", "worker"]
    with pytest.raises(ConfigError, match="unknown role"):
        select_roles(roles, "serve,trainer")


def test_bad_procfiles_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no `name: command`"):
        parse_roles("# nothing here\n")
    with pytest.raises(ConfigError, match="unique"):
        parse_roles("a: x\na: y\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_roles(tmp_path / "missing")


def test_simple_commands_are_execd_and_shell_syntax_is_left_alone() -> None:
    assert shell_command("mnistops serve") == ["/bin/sh", "-c", "exec mnistops serve"]
    assert shell_command('python -c "import a; a.b()"')[2].startswith("exec ")  # quoted ';'
    assert shell_command("a && b") == ["/bin/sh", "-c", "a && b"]
    show = "import os; print(os.environ['MNISTOPS_WORKER_PORT'])"
    argv = shell_command(f'MNISTOPS_WORKER_PORT=8013 {sys.executable} -c "{show}"')
    assert argv[2].startswith("exec env MNISTOPS_WORKER_PORT=8013 ")
    assert subprocess.run(argv, capture_output=True, text=True, check=True).stdout == "8013\n"


def test_child_env_puts_this_interpreter_first_and_unbuffers_python() -> None:
    env = child_env({"PATH": "/usr/bin"})
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["PYTHONUNBUFFERED"] == "1"


def test_restart_delays_double_up_to_the_cap() -> None:
    p = RestartPolicy(initial_delay=0.5, max_delay=3.0)
    assert [p.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_urls_cover_api_pages_and_each_roles_metrics() -> None:
    s = Settings(port=9000, monitor_port=9001, controller_port=0, worker_port=9003)
    urls = dict(role_urls(s, parse_roles(DEFAULT_PROCFILE)))
    assert urls["dashboard"] == "http://127.0.0.1:9000/dashboard"
    assert urls["docs"] == "http://127.0.0.1:9000/docs"
    assert urls["serve metrics"] == "http://127.0.0.1:9000/metrics"
    assert urls["monitor metrics"] == "http://127.0.0.1:9001/metrics"
    assert "controller metrics" not in urls  # port 0 = off
    assert urls["worker metrics"] == "http://127.0.0.1:9003/metrics"


def test_a_taken_port_fails_fast_with_the_setting_to_change() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        settings = Settings(port=busy, monitor_port=0, controller_port=0, worker_port=0)
        with pytest.raises(ConfigError, match="MNISTOPS_PORT"):
            check_ports(settings, parse_roles(DEFAULT_PROCFILE))


# --- real processes -----------------------------------------------------------------------------
def test_crashing_child_is_restarted_with_growing_delays_then_up_gives_up(workdir: Path) -> None:
    roles = parse_roles(procfile(workdir, crash="crash", steady="sleep").read_text())
    policy = RestartPolicy(initial_delay=0.3, max_delay=5.0, max_restarts=3, grace_seconds=5)
    out = io.StringIO()
    code = Supervisor(roles, child_env(os.environ), policy, out, colour=False).run()
    assert code == EXIT_CRASH_LOOP
    starts = [float(x) for x in (workdir / "crash.starts").read_text().split()]
    ends = [float(x) for x in (workdir / "crash.ends").read_text().split()]
    assert len(starts) == 4  # the first run and three restarts
    # from one run's exit to the next run's start: the delay, plus the next run's interpreter start
    gaps = [nxt - end for end, nxt in zip(ends, starts[1:], strict=False)]
    assert all(g >= d for g, d in zip(gaps, (0.3, 0.6, 1.2), strict=True)), gaps
    assert gaps[2] > gaps[0] + 0.5, gaps  # 1.2 s vs 0.3 s of backoff
    log = out.getvalue()
    for n, delay in ((1, 0.3), (2, 0.6), (3, 1.2)):
        assert "crash exited (exit code 3) after" in log and f"restart {n}/3 in {delay:.1f} s" in log
    assert "4 failed runs in a row, giving up" in log
    assert "steady stopped (killed by SIGTERM)" in log  # the healthy role is stopped with it
    assert not any(pid_alive(p) for p in read_pids(workdir / "steady.pids"))


def test_log_lines_carry_time_and_role_prefix_and_colour_only_when_asked(workdir: Path) -> None:
    roles = parse_roles(procfile(workdir, crash="crash").read_text())
    policy = RestartPolicy(max_restarts=0)
    plain, tty = io.StringIO(), io.StringIO()
    tty.isatty = lambda: True  # type: ignore[method-assign]
    Supervisor(roles, child_env(os.environ), policy, plain, colour=False).run()
    Supervisor(roles, child_env(os.environ), policy, tty).run()
    lines = plain.getvalue().splitlines()
    assert any(re.fullmatch(r"\d\d:\d\d:\d\d crash \| crash says hello", ln) for ln in lines), lines
    # a last line without a newline is still printed when the child exits
    assert any(ln.endswith("crash | partial line without newline") for ln in lines)
    assert any(re.fullmatch(r"\d\d:\d\d:\d\d up    \| crash started \(pid \d+\): .*", ln) for ln in lines)
    assert "\x1b[" not in plain.getvalue()
    assert "\x1b[" in tty.getvalue()


def test_sigterm_stops_every_child_and_its_group_then_exits_zero(
    workdir: Path, up_process: list[subprocess.Popen[str]]
) -> None:
    procfile(workdir, calm="sleep", stubborn="ignore-term", forker="fork")
    up = start_up(up_process, workdir, "--grace", "1")
    assert wait_until(lambda: len(read_pids(workdir / "forker.pids")) == 2, 30)
    assert wait_until(lambda: bool(read_pids(workdir / "calm.pids") and read_pids(workdir / "stubborn.pids")))
    pids = [p for n in ("calm", "stubborn", "forker") for p in read_pids(workdir / f"{n}.pids")]
    assert all(pid_alive(p) for p in pids)
    up.send_signal(signal.SIGTERM)
    out, _ = up.communicate(timeout=30)
    assert up.returncode == 0, out
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), 5), out
    assert "stubborn still running: SIGKILL" in out  # it ignored SIGTERM for the grace period
    assert "calm stopped (killed by SIGTERM)" in out
    assert re.search(r"^\d\d:\d\d:\d\d forker +\| forker says hello$", out, re.M), out


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux-only")
def test_children_exit_when_up_is_sigkilled(workdir: Path, up_process: list[subprocess.Popen[str]]) -> None:
    procfile(workdir, one="sleep", two="sleep")
    up = start_up(up_process, workdir)
    assert wait_until(lambda: bool(read_pids(workdir / "one.pids") and read_pids(workdir / "two.pids")), 30)
    pids = read_pids(workdir / "one.pids") + read_pids(workdir / "two.pids")
    up.kill()  # SIGKILL: no chance to forward anything
    up.wait()
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), 10), [p for p in pids if pid_alive(p)]


def test_a_stable_run_resets_the_failure_count(workdir: Path) -> None:
    roles = parse_roles(procfile(workdir, crash="crash").read_text())
    # every run counts as stable, so one allowed restart goes on for ever: a thread stops it
    policy = RestartPolicy(initial_delay=0.1, max_restarts=1, stable_seconds=0.0, grace_seconds=5)
    out = io.StringIO()
    sup = Supervisor(roles, child_env(os.environ), policy, out, colour=False)
    stopper = threading.Thread(
        target=lambda: (wait_until(lambda: len(read_pids(workdir / "crash.pids")) >= 4), sup.request_stop())
    )
    stopper.start()
    assert sup.run() == 0
    stopper.join()
    assert len(read_pids(workdir / "crash.pids")) >= 4
    assert "giving up" not in out.getvalue() and "restart 1/1 in 0.1 s" in out.getvalue()
