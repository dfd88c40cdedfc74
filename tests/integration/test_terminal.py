"""rbox in a real terminal (tmux), as the unprivileged user: the command's own pty, job
control, resizing, exit codes, the caller's terminal restored, no TIOCSTI injection.

Each step waits for output that the typed command line itself cannot contain
(`echo rc=$((0+$?))` prints `rc=130`; the line typed shows `rc=$((`).
"""

from __future__ import annotations

import shlex
import sys

import pytest

from tests.integration.helpers import RBOX, live_processes, wait_until
from tests.integration.terminal import Terminal

pytestmark = [pytest.mark.needs_userns, pytest.mark.needs_tmux]

RBOX_CMD = " ".join(shlex.quote(word) for word in RBOX)
STATUS = "echo rc=$((0+$?))"


def test_ctrl_c_reaches_the_command_exactly_once(term) -> None:
    code = ("import signal,time; n=[0]; signal.signal(2, lambda *a: n.__setitem__(0, n[0]+1)); "
            "print('ar' + 'med', flush=True); time.sleep(2); print('sigints', n[0] * 1)")
    term.line(f"{RBOX_CMD} run -- {shlex.quote(sys.executable)} -c {shlex.quote(code)}")
    term.wait_for(r"^armed$")
    term.send("C-c")
    assert term.wait_for(r"^\^?C?sigints (\d+)$").group(1) == "1"


def test_ctrl_z_fg_and_ctrl_c_with_no_tty(term) -> None:
    # -T: no pty, so the keys act on rbox's own process group in the caller's terminal:
    # Ctrl-Z stops rbox (the shell says Stopped), Ctrl-C is forwarded to the command.
    term.line(f"{RBOX_CMD} run -T -- sh -c 'echo st''arted; exec sleep 100'")
    term.wait_for(r"^started$")
    term.send("C-z")
    term.wait_for(r"Stopped")
    term.line("fg; " + STATUS)
    term.wait_for(r"^/.* run -T -- sh -c .*sleep 100'$")  # fg echoes the job it resumes
    term.send("C-c")
    assert term.wait_for(r"rc=(\d+)$").group(1) == "130"


def test_job_control_inside_an_interactive_shell(term) -> None:
    # Wait for the inner shell before typing: keys typed ahead while rbox starts are
    # covered by the `shell` fixture (a rare race there is noted on issue #6).
    term.line(f"{RBOX_CMD} run -- sh -c 'echo inner-''ready; exec bash --norc --noprofile -i'")
    term.wait_for(r"^inner-ready$")
    term.line("PS1='inner> '; echo in''side")
    term.wait_for(r"^inside$")
    term.line("sleep 100")
    term.wait_for(r"^inner> sleep 100$")
    # Ctrl-Z once sleep runs: one typed while the inner bash still reads its line stops nothing.
    assert wait_until(lambda: any(cmd.strip() == "sleep 100" for cmd in live_processes().values()), timeout=20)
    term.send("C-z")
    term.wait_for(r"Stopped\s+sleep 100")
    term.line("fg")
    term.wait_for(r"^sleep 100$")
    term.send("C-c")
    term.line("echo survived $((6*7))")
    term.wait_for(r"^survived 42$")
    term.line("exit 3")
    term.wait_idle()                   # rbox has exited: keys typed now reach the outer shell
    term.line(STATUS)
    assert term.wait_for(r"rc=(\d+)$").group(1) == "3"


@pytest.fixture
def shell(term):
    """`rbox sh` running in the terminal; the outer terminal's settings before it."""
    before = term.stty()
    term.line(f"{RBOX_CMD} sh")
    term.line("PS1='inner> '; echo sh''-ready $RBOX_SANDBOX")
    term.wait_for(r"^sh-ready 1$")
    yield term, before


def test_rbox_sh_gets_its_own_pty_and_a_prompt(shell) -> None:
    term, _ = shell
    term.line("echo $((6*7)) $(tty) $(hostname)")
    assert term.wait_for(r"^42 (/dev/pts/\d+) rbox$").group(1) == "/dev/pts/0"


def test_window_size_follows_the_outer_terminal(shell) -> None:
    term, _ = shell
    term.line("echo size=$(stty size)")
    term.wait_for(r"^size=40 120$")
    term.resize(90, 25)
    term.line("clear; echo size=$(stty size)")
    term.wait_for(r"^size=25 90$")


def test_ctrl_c_stops_the_foreground_job_and_the_shell_survives(shell) -> None:
    term, _ = shell
    term.line("sleep 100")
    term.wait_for(r"^inner> sleep 100$")
    term.send("C-c")
    term.line("echo alive $((2+3))")
    term.wait_for(r"^alive 5$")


def test_exit_status_and_terminal_settings_come_back(shell) -> None:
    term, before = shell
    term.line("exit 3")
    term.wait_idle()                   # rbox has exited: keys typed now reach the outer shell
    term.line(STATUS)
    assert term.wait_for(r"^rc=(\d+)$").group(1) == "3"
    assert term.stty() == before


def test_sigterm_to_rbox_restores_the_terminal(shell) -> None:
    import os
    import signal

    from tests.integration.helpers import children, wait_until

    term, before = shell
    rbox = [pid for pid, cmd in children(term.shell_pid).items() if " -m rootless sh" in cmd]
    assert len(rbox) == 1, children(term.shell_pid)
    os.kill(rbox[0], signal.SIGTERM)
    assert wait_until(lambda: rbox[0] not in children(term.shell_pid), timeout=20)
    term.line(STATUS)
    # The pty was hung up, as when a terminal window closes: the shell ends with SIGHUP.
    assert term.wait_for(r"^rc=(\d+)$").group(1) == "129"
    assert term.stty() == before


INJECT = ("import fcntl, sys, termios\n"
          "try:\n"
          "    [fcntl.ioctl(0, termios.TIOCSTI, bytes([c])) for c in b'touch INJECTED\\n']\n"
          "    print(sys.argv[1], 'inj' + 'ected')\n"
          "except OSError as e:\n"
          "    print(sys.argv[1], 'refused', e.errno)\n")


@pytest.mark.needs_tiocsti
@pytest.mark.parametrize(("option", "outcome"), [("-t", "injected"), ("-T", "refused 1")], ids=["pty", "no-tty"])
def test_tiocsti_inside_cannot_type_into_the_callers_terminal(term, tmp_path, option: str, outcome: str) -> None:
    # The kernel allows TIOCSTI here (needs_tiocsti reads its policy, not rbox's
    # behaviour), so what happens inside is rbox's doing. With a pty, the text goes into
    # the sandbox's own terminal, which nobody reads after the command: harmless. With
    # -T, stdin is the caller's terminal, but the command leads a new session without a
    # controlling terminal, and TIOCSTI on another terminal is EPERM (tty_ioctl(4)).
    marker = tmp_path / "INJECTED"
    (tmp_path / "inject.py").write_text(INJECT)
    # The positive control: run directly, the probe does type into the caller's shell.
    term.line(f"{shlex.quote(sys.executable)} inject.py control; echo control-done")
    term.wait_for(r"^control-done$")
    assert wait_for_file(marker), "the probe could not inject even without rbox: it proves nothing"
    marker.unlink()
    term.line(f"{RBOX_CMD} run {option} -- {shlex.quote(sys.executable)} inject.py inside; echo after-inject")
    found = term.wait_for(r"^inside (injected|refused \d+)$")
    term.wait_for(r"^after-inject$")
    term.line("echo check-done")
    term.wait_for(r"^check-done$")
    assert not marker.exists(), "text injected inside ran in the caller's shell"
    assert found.group(1) == outcome


def wait_for_file(path) -> bool:
    from tests.integration.helpers import wait_until

    return wait_until(path.exists, timeout=10)


def test_hang_up_of_the_outer_terminal_ends_the_sandbox(tmp_path) -> None:
    import uuid

    from tests.integration.helpers import live_processes, rbox_env, wait_until

    marker = f"{uuid.uuid4().int % 10**6 + 300}.75"
    t = Terminal(str(tmp_path))
    try:
        t.line(f"export PYTHONPATH={shlex.quote(rbox_env(None)['PYTHONPATH'])}")
        t.line(f"{RBOX_CMD} sh")
        t.line(f"sleep {marker}")
        assert wait_until(lambda: any(c.startswith(f"sleep {marker}") for c in live_processes().values()), 20)
    finally:
        t.close()      # kills the tmux server: the outer terminal hangs up
    assert wait_until(lambda: not any(marker in c for c in live_processes().values()), timeout=10)


def test_ctrl_z_of_a_command_that_stops_itself_stops_rbox_and_fg_resumes_it(term, tmp_path) -> None:
    # vim and less catch SIGTSTP and stop themselves with SIGSTOP; a command leading its
    # own session is otherwise stuck (orphaned process group): rbox stops with it.
    before = term.stty()
    (tmp_path / "stopper.py").write_text(
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTSTP, lambda *a: os.kill(os.getpid(), signal.SIGSTOP))\n"
        "print('ar' + 'med', flush=True)\n"
        "for line in sys.stdin:\n"
        "    print('got', line.strip(), flush=True)\n")
    term.line(f"{RBOX_CMD} run -- {shlex.quote(sys.executable)} stopper.py")
    term.wait_for(r"^armed$")
    term.send("C-z")
    term.wait_for(r"Stopped\s+\S+ -m rootless run")
    assert term.stty() == before            # the shell has its own settings back
    term.line("fg")
    term.line("hello-again")
    term.wait_for(r"^got hello-again$")       # resumed, and reading its pty again
    term.send("C-c")
    term.wait_for(r"^outer\$$")             # the shell's prompt, empty: rbox has exited
    term.line(STATUS)
    assert term.wait_for(r"rc=(\d+)$").group(1) == "130"
