"""PID 1, zombies, orphans, signals, and nothing surviving rbox."""

from __future__ import annotations

import os
import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.helpers import alive, descendants, kill_all, live_processes, py, run_rbox, wait_until
from tests.integration.test_identity import facts

pytestmark = pytest.mark.needs_userns


def test_command_is_pid_2_and_proc_shows_only_the_sandbox() -> None:
    r = run_rbox("run", *py("pids"))
    assert r.returncode == 0, r.stderr
    f = facts(r.stdout)
    assert f["self"] == "2"
    # PID 1 is rbox's init, 2 the command; nothing of the host is visible.
    assert f["pids"] == "1 2"


def test_orphans_are_reaped_by_pid_1() -> None:
    r = run_rbox("run", *py("orphans", "3", "--", "zombies"))
    assert r.returncode == 0, r.stderr
    assert facts(r.stdout)["zombies"] == "none"


def test_processes_left_behind_are_killed_when_the_command_exits(tmp_path) -> None:
    marker = f"{uuid.uuid4().int % 10**6 + 300}.5"  # a sleep argument no one else uses
    r = run_rbox("run", "--", "sh", "-c", f"sleep {marker} & sleep {marker} & echo started")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "started"
    assert wait_until(lambda: sleeps(marker) == 0, timeout=5)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH"])
def test_signals_to_rbox_reach_the_command(tmp_path, spawn, sig: str) -> None:
    proc = spawn("run", *py("trap", sig, "got-signal"), cwd=tmp_path)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready=1"
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 7, err
    assert (tmp_path / "got-signal").read_text() == sig


def sleeps(marker: str) -> int:
    return sum(cmd.startswith(f"sleep {marker}") for cmd in live_processes().values())


def test_kill_9_of_rbox_leaves_no_process_behind(tmp_path, spawn) -> None:
    marker = f"{uuid.uuid4().int % 10**6 + 300}.25"
    proc = spawn("run", "--", "sh", "-c", f"sleep {marker} & sleep {marker}; true", cwd=tmp_path)
    assert wait_until(lambda: sleeps(marker) == 2, timeout=30)
    tree = descendants(proc.pid)
    assert len(tree) >= 4  # stage-1, init, sh, two sleeps
    proc.kill()
    proc.wait(timeout=10)
    try:
        assert wait_until(lambda: not any(alive(p) for p in tree), timeout=5), \
            {p: live_processes().get(p) for p in tree if alive(p)}
    finally:
        kill_all(tree)


def slow_newgidmap(tmp_path) -> tuple[str, Path, Path]:
    """A PATH whose newgidmap stops rbox at a known point of its set-up: stage-1 exists
    and waits in its new user namespace, the parent waits for the id maps (signals
    blocked, read from its signalfd later), init does not exist yet. The wrapper
    touches `started`, waits for `go`, then runs the real, setuid newgidmap."""
    real = shutil.which("newgidmap")
    assert real, "newgidmap is part of the subuid capability"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    started, go = tmp_path / "started", tmp_path / "go"
    wrapper = bindir / "newgidmap"
    wrapper.write_text(f"#!/bin/sh\ntouch {started}\nwhile [ ! -e {go} ]; do sleep 0.01; done\nexec {real} \"$@\"\n")
    wrapper.chmod(0o755)
    return f"{bindir}:{os.environ['PATH']}", started, go


@pytest.mark.needs_subuid
def test_sigterm_during_setup_exits_143_and_leaves_nothing(tmp_path, spawn) -> None:
    path, started, go = slow_newgidmap(tmp_path)
    proc = spawn("run", "--net=none", "--", "sh", "-c", "echo ran > ran", cwd=tmp_path, env={"PATH": path})
    assert wait_until(started.exists, timeout=20), proc.stderr.read() if proc.poll() is not None else "no start"
    tree = descendants(proc.pid)
    assert len(tree) >= 2, tree       # stage-1 and the id-map helper: set-up is under way
    proc.terminate()
    go.touch()
    try:
        _, err = proc.communicate(timeout=10)
        # 128 + SIGTERM, from rbox's own handling: a default-action death would be -15.
        assert proc.returncode == 143, err
        assert not (tmp_path / "ran").exists(), "the command ran although set-up was interrupted"
        assert wait_until(lambda: not any(alive(p) for p in tree), timeout=5), \
            {p: live_processes().get(p) for p in tree if alive(p)}
    finally:
        kill_all(tree | descendants(proc.pid))


def test_leftovers_get_sigterm_and_a_grace_period_to_clean_up(tmp_path) -> None:
    # The leftover needs half a second after SIGTERM: within PID 1's grace period. Had
    # PID 1 not sent SIGTERM, the kernel's SIGKILL at namespace teardown would give it none.
    r = run_rbox("run", *py("leftover", "cleanup-log", "0.5"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "leftover=ready\n"
    assert (tmp_path / "cleanup-log").read_text() == "cleaned up after SIGTERM"


def test_a_leftover_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path) -> None:
    marker = f"{uuid.uuid4().int % 10**6 + 300}.5"
    start = time.monotonic()
    r = run_rbox("run", *py("leftover", "term-log", marker, "ignore"), cwd=tmp_path)
    elapsed = time.monotonic() - start
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "term-log").read_text() == "SIGTERM ignored\n"
    assert 2.0 <= elapsed < 10, elapsed      # the 2 s grace (init.LEFTOVER_GRACE), then no more
    assert wait_until(lambda: not any(marker in cmd for cmd in live_processes().values()), timeout=5)


def test_the_hosts_ipc_objects_are_invisible() -> None:
    # A System V shared memory segment of ours on the host (made here, so the check is
    # never vacuous): the sandbox's IPC namespace has none (ipc_namespaces(7)).
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    ipc_private, ipc_creat, ipc_rmid = 0, 0o1000, 0
    shmid = libc.shmget(ipc_private, 4096, ipc_creat | 0o600)
    assert shmid >= 0, ctypes.get_errno()
    try:
        with open("/proc/sysvipc/shm") as f:
            assert str(shmid) in [line.split()[1] for line in f.read().splitlines()[1:]]   # the positive control
        r = run_rbox("run", "--", "cat", "/proc/sysvipc/shm")
    finally:
        libc.shmctl(shmid, ipc_rmid, None)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 1, r.stdout      # the header only


def test_non_terminal_stdin_gets_a_new_session_without_a_terminal() -> None:
    r = run_rbox("run", *py("session"))
    assert r.returncode == 0, r.stderr
    f = facts(r.stdout)
    assert f["session_leader"] == "True"
    # No controlling terminal: nothing to inject keystrokes into (TIOCSTI).
    assert f["tty"] == "ENXIO"


def test_no_new_privs_and_no_capabilities_in_the_default_identity() -> None:
    r = run_rbox("run", *py("status"))
    assert r.returncode == 0, r.stderr
    f = facts(r.stdout)
    assert f["NoNewPrivs"] == "1"
    assert int(f["CapEff"], 16) == 0
    assert int(f["CapPrm"], 16) == 0
    assert int(f["CapBnd"], 16) == 0


def test_no_new_privs_with_root_identity_too() -> None:
    r = run_rbox("run", "--root", *py("status"))
    assert r.returncode == 0, r.stderr
    assert facts(r.stdout)["NoNewPrivs"] == "1"


def test_rbox_sh_runs_the_login_shell(tmp_path) -> None:
    import pwd

    r = run_rbox("sh", input="echo $((6*7)); echo shell=$0\n", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "42"
    assert lines[1] == "shell=" + (pwd.getpwuid(os.getuid()).pw_shell or "/bin/sh")


def test_rbox_sh_exit_status_is_rbox_exit_status(tmp_path) -> None:
    r = run_rbox("sh", input="exit 3\n", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
