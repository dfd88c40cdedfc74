"""`rbox exec` (issue #15), for real, as the unprivileged user: the same sandbox as its
command (host name, /tmp, network, processes, every namespace), exit codes, errors, and
exec'd processes dying with the sandbox. Containment attacks: tests/security/test_exec.py."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid

import pytest

from tests.integration import named
from tests.integration.helpers import py, wait_until
from tests.integration.named import Box

pytestmark = pytest.mark.needs_userns
box = named.box      # the fixture

NS = ("user", "mnt", "net", "uts", "ipc", "pid", "cgroup")
# What the sandbox's command records about itself at start, for exec to compare with.
SELF_REPORT = ("import os, socket, sys\n"
               "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
               "s.connect(('10.0.2.2', 9))   # UDP connect: an address, no packet\n"
               "open('/tmp/addr', 'w').write(s.getsockname()[0])\n")


@pytest.mark.needs_slirp4netns
def test_lifecycle_start_list_exec_stop(box: Box) -> None:
    token = uuid.uuid4().hex
    script = (f"{sys.executable} -c \"$REPORT\"; echo {token} > /tmp/inside; echo $$ > /tmp/pid; "
              f"trap 'echo trapped > {box.work}/term; exit 0' TERM; echo started; "
              "while :; do sleep 0.05; done")
    box.start("life", "sh", "-c", script, opts=("--hostname", "life-host", "-e", f"REPORT={SELF_REPORT}"))
    # run -d returns once the command runs; ps lists it, running, with PID 1's host pid.
    row = box.row("life")
    assert (row["state"], row["network"], row["detached"]) == ("running", "slirp4netns", True)
    assert isinstance(row["pid"], int) and os.path.exists(f"/proc/{row['pid']}")
    assert row["command"] == ["sh", "-c", script]
    assert wait_until(lambda: (box.work / "term").exists() or box.rbox("logs", "life").stdout == "started\n")
    # exec: the same host name, /tmp, network address, processes and namespaces.
    code = (f"import os, socket; pid = open('/tmp/pid').read().strip(); print(open('/tmp/inside').read().strip()); "
            f"print(socket.gethostname()); print(open('/tmp/addr').read()); "
            f"s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(('10.0.2.2', 9)); "
            f"print(s.getsockname()[0]); print(open(f'/proc/{{pid}}/cmdline').read().split(chr(0))[:2]); "
            f"print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit())[:2]); "
            f"same = [n for n in {NS!r} "
            f"if os.readlink(f'/proc/{{pid}}/ns/{{n}}') == os.readlink(f'/proc/self/ns/{{n}}')];"
            f"print(same)")
    r = box.rbox("exec", "life", "--", sys.executable, "-c", code)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == token and lines[1] == "life-host"
    assert lines[2] == lines[3] == "10.0.2.100"
    assert lines[4] == "['sh', '-c']" and lines[5] == "[1, 2]"
    assert lines[6] == repr(list(NS))             # every namespace is the command's own
    box.stop_seeing_the_trap("life")


def test_a_foreground_named_sandbox_can_be_joined(box: Box) -> None:
    proc = box.popen("run", "--name", "fg", "--net=none", "--", "sh", "-c",
                     "echo up; while :; do sleep 0.05; done")
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        r = box.rbox("exec", "fg", "--", "sh", "-c", "echo joined; exit 4")
        assert (r.returncode, r.stdout) == (4, "joined\n"), r.stderr
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def test_exec_while_stopping_is_refused_at_once(box: Box) -> None:
    box.start("slow", "sh", "-c", f"trap 'sleep 1.5; exit 0' TERM; echo ready > {box.work}/ready; "
              "while :; do sleep 0.05; done")
    assert wait_until(lambda: (box.work / "ready").exists())
    stopper = box.popen("stop", "-t", "20", "slow")
    try:
        assert wait_until(lambda: box.row("slow")["state"] == "stopping")
        began = time.monotonic()
        r = box.rbox("exec", "slow", "--", "true", timeout=20)
        assert time.monotonic() - began < 5
        assert r.returncode == 125
        assert r.stderr.startswith("rbox: error: the sandbox `slow` is stopping\nhint: ")
    finally:
        stopper.communicate(timeout=30)
    assert stopper.returncode == 0


def test_exec_errors_say_what_is_wrong(box: Box) -> None:
    r = box.rbox("exec", "ghost", "--", "true")
    assert r.returncode == 125 and r.stderr.startswith("rbox: error: no sandbox named `ghost`\nhint: ")
    box.start("ok", "sleep", "1000")
    r = box.rbox("exec", "ok")
    assert r.returncode == 125 and "needs a COMMAND" in r.stderr
    r = box.rbox("exec", "-w", "relative", "ok", "--", "true")
    assert r.returncode == 125 and "absolute path" in r.stderr
    r = box.rbox("exec", "-e", "EXTRA=1", "-w", "/tmp", "ok", "--", "sh", "-c", 'echo "$EXTRA $RBOX_SANDBOX $PWD"')
    assert (r.returncode, r.stdout) == (0, "1 1 /tmp\n"), r.stderr
    for code, argv in ((127, ["no-such-command"]), (126, ["/etc/passwd"]), (3, ["sh", "-c", "exit 3"]),
                       (128 + 9, ["sh", "-c", "kill -9 $$"])):
        assert box.rbox("exec", "ok", "--", *argv).returncode == code, argv


def test_exec_d_processes_die_with_the_sandbox(box: Box) -> None:
    box.start("host", "sleep", "1000")
    joined = box.popen("exec", "host", "--", *py("trap", "SIGTERM", "never")[1:])
    try:
        assert joined.stdout is not None and joined.stdout.readline().strip() == "ready=1"
        assert box.rbox("stop", "-t", "0", "host").returncode == 0
        joined.communicate(timeout=30)
        assert joined.returncode in (128 + signal.SIGKILL, 7)     # killed, or its trap saw the SIGTERM
    finally:
        if joined.poll() is None:
            joined.kill()
            joined.communicate(timeout=30)


@pytest.mark.needs_tmux
def test_exec_with_a_pseudo_terminal_in_tmux(box: Box, term) -> None:
    """A prompt, a resize, Ctrl-C, the exit code: as `rbox run` in a terminal."""
    from tests.integration.test_terminal import RBOX_CMD, STATUS

    box.start("shell", "sleep", "1000")
    term.line(f"export XDG_RUNTIME_DIR={box.runtime}; cd {box.work}")
    term.line(f"{RBOX_CMD} exec shell -- bash --norc --noprofile -i")
    term.line("PS1='in''ner> '; tty; echo ready-$((6*7))")
    term.wait_for(r"^ready-42$")
    assert term.wait_for(r"^(/dev/pts/\d+)$").group(1).startswith("/dev/pts/")
    term.resize(100, 30)
    term.line("echo size $(stty size)")
    term.wait_for(r"^size 30 100$")
    term.line("sleep 100")
    term.send("C-c")
    term.line("echo after-$((2+3))")
    term.wait_for(r"^after-5$")
    term.line("exit 7")
    term.wait_idle()                   # rbox has exited: keys typed now reach the outer shell
    term.line(STATUS)
    assert term.wait_for(r"rc=(\d+)$").group(1) == "7"


@pytest.mark.needs_tmux
def test_a_detached_sandbox_survives_its_terminal_closing(box: Box, term) -> None:
    from tests.integration.test_terminal import RBOX_CMD

    term.line(f"export XDG_RUNTIME_DIR={box.runtime}; cd {box.work}")
    term.line(f"{RBOX_CMD} run -d --name lasting --net=none -- sleep 1000 && echo st''arted")
    term.wait_for(r"^started$")
    supervisor = int(box.row("lasting")["supervisor"])
    for fd in os.listdir(f"/proc/{supervisor}/fd"):
        assert not os.readlink(f"/proc/{supervisor}/fd/{fd}").startswith("/dev/pts"), fd
    term.close()                       # the terminal goes: its session gets SIGHUP
    time.sleep(0.3)
    assert box.row("lasting")["state"] == "running"
    assert box.rbox("exec", "lasting", "--", "true").returncode == 0
