"""A terminal passed through to the sandbox: job control works, and a Ctrl-C reaches the
command exactly once. Driven through a real terminal (tmux) as the unprivileged user.

Each step waits for output that the typed command line itself cannot contain
(`echo rc=$((0+$?))` prints `rc=130`; the line typed shows `rc=$((`).
"""

from __future__ import annotations

import shlex
import sys

import pytest

from tests.integration.helpers import RBOX
from tests.integration.terminal import Terminal

pytestmark = [pytest.mark.needs_userns, pytest.mark.needs_tmux]

RBOX_CMD = " ".join(shlex.quote(word) for word in RBOX)
STATUS = "echo rc=$((0+$?))"


@pytest.fixture
def term(tmp_path):
    from tests.integration.helpers import rbox_env

    t = Terminal(str(tmp_path))
    t.line(f"export PYTHONPATH={shlex.quote(rbox_env(None)['PYTHONPATH'])}")
    yield t
    t.close()


def test_ctrl_c_reaches_the_command_exactly_once(term) -> None:
    code = ("import signal,time; n=[0]; signal.signal(2, lambda *a: n.__setitem__(0, n[0]+1)); "
            "print('ar' + 'med', flush=True); time.sleep(2); print('sigints', n[0] * 1)")
    term.line(f"{RBOX_CMD} run -- {shlex.quote(sys.executable)} -c {shlex.quote(code)}")
    term.wait_for(r"^armed$")
    term.send("C-c")
    assert term.wait_for(r"^\^?C?sigints (\d+)$").group(1) == "1"


def test_ctrl_z_fg_and_ctrl_c_of_a_sandboxed_command(term) -> None:
    term.line(f"{RBOX_CMD} run -- sh -c 'echo st''arted; exec sleep 100'")
    term.wait_for(r"^started$")
    term.send("C-z")
    term.wait_for(r"Stopped")
    term.line("fg; " + STATUS)
    term.wait_for(r"^/.* run -- sh -c .*sleep 100'$")  # fg echoes the job it resumes
    term.send("C-c")
    assert term.wait_for(r"rc=(\d+)$").group(1) == "130"


def test_job_control_inside_an_interactive_shell(term) -> None:
    term.line(f"{RBOX_CMD} run -- bash --norc --noprofile -i")
    term.line("PS1='inner> '; echo in''side")
    term.wait_for(r"^inside$")
    term.line("sleep 100")
    term.send("C-z")
    term.wait_for(r"Stopped\s+sleep 100")
    term.line("fg")
    term.wait_for(r"^sleep 100$")
    term.send("C-c")
    term.line("echo survived $((6*7))")
    term.wait_for(r"^survived 42$")
    term.line("exit 3")
    term.line(STATUS)
    assert term.wait_for(r"rc=(\d+)$").group(1) == "3"
