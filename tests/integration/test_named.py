"""Named sandboxes (issue #15), for real, as the unprivileged user: `rbox run [-d] --name`,
`ps`, `stop`, `logs`; nothing left behind after any of them (the `box` fixture checks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration import named
from tests.integration.helpers import RBOX, rbox_env, wait_until
from tests.integration.named import Box

pytestmark = pytest.mark.needs_userns
box = named.box      # the fixture


def test_start_list_stop_with_a_trap(box: Box) -> None:
    script = (f"trap 'echo trapped > {box.work}/term; exit 0' TERM; echo started; "
              "while :; do sleep 0.05; done")
    box.start("life", "sh", "-c", script, opts=("--net=none", "--hostname", "life-host"))
    # run -d returns once the command runs; ps lists it, running, with PID 1's host pid.
    row = box.row("life")
    assert (row["state"], row["network"], row["detached"]) == ("running", "none", True)
    assert isinstance(row["pid"], int) and os.path.exists(f"/proc/{row['pid']}")
    assert row["command"] == ["sh", "-c", script]
    assert wait_until(lambda: box.rbox("logs", "life").stdout == "started\n")
    box.stop_seeing_the_trap("life")


def test_a_foreground_named_sandbox_is_listed_and_stopped(box: Box) -> None:
    proc = box.popen("run", "--name", "fg", "--net=none", "--", "sh", "-c",
                     "trap 'echo bye; exit 5' TERM; echo up; while :; do sleep 0.05; done")
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        assert box.row("fg")["detached"] is False
        r = box.rbox("logs", "fg")
        assert r.returncode == 125 and "runs in the foreground" in r.stderr
        assert box.rbox("stop", "fg").returncode == 0
        out, err = proc.communicate(timeout=30)
        assert (proc.returncode, out) == (5, "bye\n"), err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace_time(box: Box) -> None:
    box.start("stubborn", "sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done")
    assert wait_until(lambda: box.rbox("logs", "stubborn").stdout == "ready\n")
    began = time.monotonic()
    r = box.rbox("stop", "-t", "1", "stubborn")
    took = time.monotonic() - began
    assert r.returncode == 0, r.stderr
    assert 1.0 <= took < 5.0, took


def test_names_are_checked_and_unique(box: Box) -> None:
    for bad in ("-x", ".hidden", "a/b", "a b", "x" * 65, ""):
        r = box.rbox("run", "-d", "--name", bad, "--net=none", "--", "true")
        assert r.returncode == 125, (bad, r.stderr)
        assert r.stderr.startswith(f"rbox: error: invalid sandbox name `{bad}`") and "\nhint: " in r.stderr
    box.start("web_1.a-b", "sleep", "1000")
    r = box.rbox("run", "-d", "--name", "web_1.a-b", "--net=none", "--", "true")
    assert r.returncode == 125
    assert r.stderr == ("rbox: error: a sandbox named `web_1.a-b` is already running\n"
                        "hint: choose another --name, or stop that one first: `rbox stop web_1.a-b`\n")
    r = box.rbox("run", "-d", "-t", "--net=none", "--", "true")
    assert r.returncode == 125 and "exclude each other" in r.stderr
    # -d without a name gets one, printed.
    r = box.rbox("run", "-d", "--net=none", "--", "sleep", "1000")
    assert r.returncode == 0 and r.stdout.startswith("rbox-"), r.stderr
    assert {row["name"] for row in box.ps()} == {"web_1.a-b", r.stdout.strip()}


def test_a_command_that_cannot_start_fails_at_once_and_leaves_no_name(box: Box) -> None:
    r = box.rbox("run", "-d", "--name", "nope", "--net=none", "--", "no-such-command-here")
    assert r.returncode == 127
    assert r.stderr.startswith("rbox: error: command not found: `no-such-command-here`")
    assert box.ps("-a") == [] and box.entries() == []


def test_logs_are_capped_rotated_kept_after_the_end_and_followed(box: Box) -> None:
    from rootless.instance.logfile import CHUNK, LOG_MAX

    # 3 MiB of numbered lines, then the end: more than the log keeps.
    write = "import sys\nfor i in range(3 * 1024 * 1024 // 16): sys.stdout.write(f'{i:015d}\\n')\nprint('end')\n"
    box.start("chatty", sys.executable, "-c", write)
    assert wait_until(lambda: box.row("chatty")["state"] == "exited", timeout=30)
    assert box.row("chatty")["exit_code"] == 0
    sizes = {p.name: p.stat().st_size for p in (box.named / "chatty").iterdir() if p.name.startswith("log")}
    assert set(sizes) == {"log", "log.1"} and all(s <= LOG_MAX + CHUNK for s in sizes.values()), sizes
    r = box.rbox("logs", "chatty")
    lines = r.stdout.splitlines()
    assert lines[-1] == "end" and len(r.stdout) <= 2 * (LOG_MAX + CHUNK)
    numbers = [int(line) for line in lines[:-1]]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))   # whole lines, in order, no gap
    assert numbers[-1] == 3 * 1024 * 1024 // 16 - 1
    # `logs -f` prints what comes, and returns when the sandbox ends.
    box.start("ticker", "sh", "-c", "for i in 1 2 3 4 5; do echo tick $i; sleep 0.1; done")
    r = box.rbox("logs", "-f", "ticker", timeout=30)
    assert r.stdout == "".join(f"tick {i}\n" for i in range(1, 6)), r.stderr
    # The ended one is listed with -a only, and stop removes it.
    assert [row["name"] for row in box.ps()] == []
    assert box.rbox("stop", "chatty", "ticker").returncode == 0
    assert box.entries() == []


def test_twenty_sandboxes_at_once_all_listed_all_stopped(box: Box) -> None:
    names = [f"many{i}" for i in range(20)]
    procs = [box.popen("run", "-d", "--name", n, "--net=none", "--", "sleep", "1000") for n in names]
    for name, proc in zip(names, procs, strict=True):
        out, err = proc.communicate(timeout=60)
        assert (proc.returncode, out) == (0, f"{name}\n"), err
    assert sorted(row["name"] for row in box.ps() if row["state"] == "running") == sorted(names)
    r = box.rbox("stop", "--all")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(names)
    assert box.ps("-a") == []


def test_the_detached_supervisor_is_small_and_holds_no_terminal(box: Box) -> None:
    import compileall

    import rootless

    compileall.compile_dir(os.path.dirname(rootless.__file__), quiet=1)   # as pip install leaves it
    box.start("lean", "sleep", "1000", opts=())                            # the default network
    pid = box.row("lean")["supervisor"]
    with open(f"/proc/{pid}/status") as f:
        rss = int(next(line for line in f if line.startswith("VmRSS:")).split()[1])
    assert rss <= 12 * 1024, f"supervisor RSS {rss} kB"
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    assert int(fields[3]) == pid and int(fields[4]) == 0        # leads its own session; no controlling tty
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        assert not target.startswith(("/dev/pts", "/dev/tty")), target


def test_the_starting_process_group_can_be_killed_without_harm(box: Box) -> None:
    """The caller's shell and terminal may go right away: `run -d` in a process group
    that is then killed (as a closing terminal's SIGHUP would) leaves the sandbox running."""
    argv = ["sh", "-c", '"$@"; sleep 100', "sh", *RBOX, "run", "-d", "--name", "orphan", "--net=none", "--",
            "sleep", "1000"]
    proc = subprocess.Popen(argv, cwd=box.work, env=rbox_env(box.env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == "orphan\n"
    os.killpg(proc.pid, signal.SIGHUP)
    proc.communicate(timeout=30)
    time.sleep(0.2)
    assert box.row("orphan")["state"] == "running"


def test_a_run_without_a_name_loads_nothing_of_named_sandboxes(tmp_path) -> None:
    """Start-up stays lean: rootless/instance is loaded only for --name and its commands."""
    argv = [sys.executable, "-X", "importtime", "-m", "rootless", "run", "--net=none", "--", "true"]
    r = subprocess.run(argv, cwd=tmp_path, env=rbox_env(None), capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert "rootless.parent" in r.stderr and "rootless.instance" not in r.stderr
