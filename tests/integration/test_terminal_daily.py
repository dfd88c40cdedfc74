"""rbox behaves like the command it runs in a real terminal (issue #13, items 1-3, 5-7):
a pty only when stdin, stdout and stderr are all terminals; background jobs; Ctrl-Z for
every program (sleep, vi, less, a pipeline); signals the caller ignored; scripts with no
#! line. Real bash, vi, less and sleep in tmux, as the unprivileged user.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.integration.helpers import RBOX, rbox_env, run_rbox
from tests.integration.test_terminal import RBOX_CMD, STATUS

# -- 1. a pty only when the terminal is really there ------------------------------------

@pytest.mark.needs_userns
@pytest.mark.needs_tmux
def test_redirected_output_is_byte_exact_with_a_terminal_on_stdin(term, tmp_path) -> None:
    term.run_and_wait(f"{RBOX_CMD} run -- sh -c 'printf \"out\\n\"; printf \"err\\n\" >&2' > o.txt 2> e.txt")
    assert (tmp_path / "o.txt").read_bytes() == b"out\n"
    assert (tmp_path / "e.txt").read_bytes() == b"err\n"
    term.run_and_wait(f"{RBOX_CMD} run -- sh -c 'echo visible; echo hidden >&2' 2>/dev/null > both.txt")
    assert (tmp_path / "both.txt").read_bytes() == b"visible\n"


@pytest.mark.needs_userns
@pytest.mark.needs_tmux
def test_a_pipe_reaches_the_command_as_a_pipe(term, tmp_path) -> None:
    # `git log | grep` must not start a pager inside: the command's stdout is the pipe.
    term.run_and_wait(f"{RBOX_CMD} run -- sh -c '[ -t 1 ] && echo TTY || echo NOTTY; [ -t 0 ] && echo IN-TTY' "
                      "| cat > p.txt")
    assert (tmp_path / "p.txt").read_text().split() == ["NOTTY", "IN-TTY"]
    # Positive control: with all three a terminal, the command gets a pty.
    term.line(f"{RBOX_CMD} run -- sh -c '[ -t 1 ] && echo ON''-A-TTY'")
    term.wait_for(r"^ON-A-TTY$")


# -- 2. background jobs -----------------------------------------------------------------

@pytest.mark.needs_userns
@pytest.mark.needs_tmux
def test_a_background_rbox_runs_to_completion(term, tmp_path) -> None:
    term.line(f"{RBOX_CMD} run -- sh -c 'sleep 0.5; echo done' > log 2>&1 &")
    term.line(f"wait; {STATUS}")
    assert term.wait_for(r"^rc=(\d+)$").group(1) == "0"
    assert (tmp_path / "log").read_text() == "done\n"
    assert "Stopped" not in term.screen()


@pytest.mark.needs_userns
@pytest.mark.needs_tmux
def test_a_background_rbox_with_a_pty_leaves_the_terminal_alone(term, tmp_path) -> None:
    before = term.stty()
    term.line(f"{RBOX_CMD} run -t -- sh -c 'sleep 0.5; echo bg-''output' &")
    term.line("echo still-mine $((6*7))")      # the shell keeps the terminal meanwhile
    term.wait_for(r"^still-mine 42$")
    term.wait_for(r"bg-output$")
    term.line(f"wait; {STATUS}")
    assert term.wait_for(r"^rc=(\d+)$").group(1) == "0"
    assert "Stopped" not in term.screen()
    assert term.stty() == before


# -- 3. Ctrl-Z for every program ----------------------------------------------------------

def _stop_and_resume(term, start: str, ready: str) -> None:
    """Start a command, wait for `ready`, Ctrl-Z: the shell reports it stopped (and has
    the terminal: it answers), then `fg` resumes it. (No `; echo $?` after the command:
    bash runs that as soon as the job stops.)"""
    term.line(start)
    term.wait_for(ready)
    term.send("C-z")
    term.wait_for(r"Stopped")
    term.line("echo outer-again $((6*7))")
    term.wait_for(r"^outer-again 42$")
    term.line("fg")


@pytest.mark.needs_userns
@pytest.mark.needs_tmux
def test_ctrl_z_stops_sleep_and_fg_resumes_it(term, tmp_path) -> None:
    # sleep run directly leaves SIGTSTP at its default: the terminal's Ctrl-Z stops it.
    # (sh execs it: the command's process is sleep itself once `zzz` is printed)
    # 4 s: Ctrl-Z must land while it sleeps, even on a loaded machine.
    _stop_and_resume(term, f"{RBOX_CMD} run -- sh -c 'echo zz''z; exec sleep 4'", r"^zzz$")
    term.wait_for(r"^outer\$$", timeout=30)     # the job is done: a bare prompt
    term.line(STATUS)
    assert term.wait_for(r"^rc=(\d+)$", timeout=30).group(1) == "0"


@pytest.mark.needs_userns
@pytest.mark.needs_tmux
def test_ctrl_z_stops_a_pipeline(term, tmp_path) -> None:
    _stop_and_resume(term, f"{RBOX_CMD} run -- sh -c 'echo pi''pe; sleep 1 | cat; echo pipe-''done'", r"^pipe$")
    term.wait_for(r"^pipe-done$", timeout=30)
    term.wait_for(r"^outer\$$", timeout=30)
    term.line(STATUS)
    assert term.wait_for(r"^rc=(\d+)$", timeout=30).group(1) == "0"


@pytest.mark.needs_userns
@pytest.mark.needs_tmux
@pytest.mark.parametrize("program", ["vi", "less"])
def test_ctrl_z_stops_vi_and_less(term, tmp_path, program: str) -> None:
    (tmp_path / "file.txt").write_text("first line of the file\n")
    _stop_and_resume(term, f"{RBOX_CMD} run -- {program} file.txt", r"first line of the file")
    term.wait_for(r"first line of the file")
    if program == "vi":
        term._tmux("send-keys", "-t", "t", "-l", ":q!")
        term.send("Enter")
    else:
        term._tmux("send-keys", "-t", "t", "-l", "q")
    term.wait_for(r"^outer\$$", timeout=30)
    term.line(STATUS)
    assert term.wait_for(r"^rc=(\d+)$").group(1) == "0"


# -- 5. exec like a shell -------------------------------------------------------------------

@pytest.mark.needs_userns
def test_a_script_without_a_shebang_runs_with_sh(tmp_path) -> None:
    script = tmp_path / "plain-script"
    script.write_text('echo "from $0 with $1"\n')
    script.chmod(0o755)
    r = run_rbox("run", "--net=none", "--", "./plain-script", "arg", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "from ./plain-script with arg\n"), r.stderr
    # Positive control: the kernel itself refuses it (what rbox used to report as 126).
    with pytest.raises(OSError) as info:
        subprocess.run([str(script)], capture_output=True)
    assert info.value.errno == 8      # ENOEXEC


# -- 7. signals the caller ignored stay ignored --------------------------------------------

def _ignoring(signo: int) -> None:
    signal.signal(signo, signal.SIG_IGN)


@pytest.mark.needs_userns
@pytest.mark.parametrize("ignored", [True, False], ids=["nohup", "control"])
def test_signals_the_caller_ignored_stay_ignored(tmp_path, ignored: bool) -> None:
    code = ("import os,time; open('started','w').close(); "
            "print([l for l in open('/proc/self/status') if l.startswith('SigIgn')][0].split()[1]); "
            "time.sleep(1.5); print('survived', flush=True)")
    proc = subprocess.Popen([*RBOX, "run", "--net=none", "--", sys.executable, "-c", code], cwd=tmp_path,
                            env=rbox_env(None), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=(lambda: _ignoring(signal.SIGHUP)) if ignored else None)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGHUP)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    if ignored:
        assert proc.returncode == 0, err
        mask = int(out.split()[0], 16)
        assert mask & (1 << (signal.SIGHUP - 1))            # the command has SIGHUP ignored
        assert out.split()[1:] == ["survived"]
    else:
        assert proc.returncode == 128 + signal.SIGHUP, (out, err)
