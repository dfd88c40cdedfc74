"""Faults of named sandboxes (issue #15): `kill -9` of the supervisor, of PID 1, of an exec'd
process; a caller that leaves descriptors open. After each, nothing of the sandbox is
left but what is meant to stay, and `ps` never lists a dead sandbox."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.integration import named
from tests.integration.helpers import RBOX, alive, descendants, kill_all, rbox_env, wait_until
from tests.integration.named import Box

pytestmark = pytest.mark.needs_userns
box = named.box      # the fixture


def test_kill_9_of_the_supervisor_takes_the_sandbox_down(box: Box) -> None:
    box.start("victim", "sleep", "1000", opts=())             # with its network helper
    joined = box.popen("exec", "victim", "--", "sh", "-c", "echo running; exec sleep 1000")
    try:
        assert joined.stdout is not None and joined.stdout.readline() == "running\n"
        assert wait_until(lambda: len(descendants(int(box.row("victim")["supervisor"]))) >= 4)
        supervisor = int(box.row("victim")["supervisor"])
        tree = descendants(supervisor) | descendants(joined.pid)
        os.kill(supervisor, signal.SIGKILL)
        # Stage-1, PID 1, the command, the helper and the exec'd command all go.
        assert wait_until(lambda: not any(alive(p) for p in tree)), [p for p in tree if alive(p)]
        joined.communicate(timeout=30)
        assert joined.returncode == 128 + signal.SIGKILL
        # Never listed; the next command removes what the supervisor left.
        assert box.ps("-a") == []
        assert box.entries() == []
    finally:
        kill_all(descendants(joined.pid))
        if joined.poll() is None:
            joined.kill()
            joined.communicate(timeout=30)


def test_kill_9_of_pid_1_ends_the_sandbox_and_says_how(box: Box) -> None:
    box.start("victim", "sh", "-c", "echo started; sleep 1000")
    assert wait_until(lambda: box.rbox("logs", "victim").stdout == "started\n")
    os.kill(int(box.row("victim")["pid"]), signal.SIGKILL)
    assert wait_until(lambda: box.row("victim")["state"] == "exited")
    assert box.row("victim")["exit_code"] == 128 + signal.SIGKILL
    assert [row["name"] for row in box.ps()] == []
    assert box.rbox("logs", "victim").stdout == "started\n"
    r = box.rbox("exec", "victim", "--", "true")
    assert r.returncode == 125 and "has ended (exit code 137)" in r.stderr


def test_kill_9_of_an_exec_d_process_leaves_the_sandbox_running(box: Box) -> None:
    box.start("host", "sleep", "1000")
    joined = box.popen("exec", "host", "--", "sh", "-c", "echo $$; exec sleep 1000")
    assert joined.stdout is not None
    inner = int(joined.stdout.readline())
    r = box.rbox("exec", "host", "--", "kill", "-9", str(inner))
    assert r.returncode == 0, r.stderr
    joined.communicate(timeout=30)
    assert joined.returncode == 128 + signal.SIGKILL
    assert box.row("host")["state"] == "running"
    assert box.rbox("exec", "host", "--", "true").returncode == 0


def test_run_d_returns_although_the_caller_holds_its_output_open_elsewhere(box: Box) -> None:
    """`out=$(rbox run -d ...)` and ssh wait for every holder of the output: the detached
    supervisor keeps none of the caller's descriptors (here the output pipe, also on 3)."""
    argv = ["sh", "-c", 'exec 3>&1; exec "$@"', "sh", *RBOX, "run", "-d", "--name", "quiet", "--net=none", "--",
            "sleep", "1000"]
    r = subprocess.run(argv, cwd=box.work, env=rbox_env(box.env), capture_output=True, text=True, timeout=20,
                       stdin=subprocess.DEVNULL)
    assert (r.returncode, r.stdout) == (0, "quiet\n"), r.stderr
