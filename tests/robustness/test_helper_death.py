"""The network helper dies while the command runs (killed, crashed, out of memory):
rbox notices at once through the helper's exit descriptor (its pidfd; before Linux 5.3 a
pipe only the helper holds: the old-kernel tier runs this file) and says so in one warning naming the
helper and how it ended; the command keeps running, without a network (rbox(1),
NETWORK), and rbox exits with the command's status.

Traffic stays on this machine: the probe inside connects to a listener of the test's
on the host's 127.0.0.1, which --allow-host-loopback makes 10.0.2.2.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.integration.helpers import RBOX, rbox_env
from tests.robustness.leftovers import Snapshot, children, wait_clean

pytestmark = pytest.mark.needs_userns
DRIVERS = [pytest.param("slirp4netns", marks=pytest.mark.needs_slirp4netns),
           pytest.param("pasta", marks=pytest.mark.needs_pasta)]
# Connects to 10.0.2.2:PORT, says how it went, waits for a line on stdin, tries again.
PROBE = ("import socket, sys\n"
         "def probe():\n"
         "    s = socket.socket(); s.settimeout(2)\n"
         "    try:\n"
         "        s.connect(('10.0.2.2', int(sys.argv[1]))); return 'up'\n"
         "    except OSError as e:\n"
         "        return 'down'\n"
         "print('network=' + probe(), flush=True)\n"
         "sys.stdin.readline()\n"
         "print('network=' + probe(), flush=True)\n"
         "sys.exit(5)\n")


def helper_of(rbox_pid: int, driver: str) -> int:
    """The helper's pid: slirp4netns is rbox's child, pasta its watchdog shell's."""
    for pid, cmd in children(rbox_pid).items():
        if driver == "slirp4netns" and os.path.basename(cmd.split(" ", 1)[0]) == "slirp4netns":
            return pid
        if driver == "pasta" and " rbox-pasta " in cmd:
            for child, child_cmd in children(pid).items():
                if os.path.basename(child_cmd.split(" ", 1)[0]).startswith("pasta"):
                    return child
    raise AssertionError(f"no {driver} under rbox {rbox_pid}: {children(rbox_pid)}")


def read_line(fd: int, timeout: float) -> str:
    """One line from a pipe within `timeout` seconds ("" if none came)."""
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            break
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_helper_killed_mid_run_is_reported_at_once_and_the_command_goes_on(driver: str) -> None:
    before = Snapshot([])
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        proc = subprocess.Popen([*RBOX, "run", f"--net={driver}", "--allow-host-loopback", "--", sys.executable,
                                 "-c", PROBE, str(port)], env=rbox_env(None), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
            # The positive control: the network works before the helper dies.
            assert read_line(proc.stdout.fileno(), 30) == "network=up\n", proc.stderr.read1().decode()
            helper = helper_of(proc.pid, driver)
            os.kill(helper, signal.SIGKILL)
            warning = read_line(proc.stderr.fileno(), 5)
            assert warning == (f"rbox: warning: {driver} (pid {helper}) was killed by signal 9 (SIGKILL); "
                               "the sandbox has no network from now on\n")
            proc.stdin.write(b"\n")
            proc.stdin.flush()
            assert read_line(proc.stdout.fileno(), 30) == "network=down\n"
            _, rest = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 5
    assert rest == b"", "one warning, nothing more"
    assert not wait_clean(before)
