"""Odd input from the user: every failure is `rbox: error:` + `hint:` and exit 125 (or
the command's own 126/127), never a traceback or an internal error; bytes that are not
UTF-8 pass through untouched; a Ctrl-C while rbox starts ends it quietly."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest

from tests.integration.helpers import RBOX, rbox_env, run_rbox

pytestmark = pytest.mark.needs_userns


def run_bytes(*args: str | bytes, cwd: str | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*RBOX, *args], env=rbox_env(None), capture_output=True, timeout=60,
                          stdin=subprocess.DEVNULL, cwd=cwd)


def error_and_hint(stderr: str) -> tuple[str, str]:
    lines = [line for line in stderr.splitlines() if not line.startswith("rbox: warning:")]
    assert len(lines) == 2, stderr
    assert lines[0].startswith("rbox: error: ") and lines[1].startswith("hint: "), stderr
    return lines[0].removeprefix("rbox: error: "), lines[1].removeprefix("hint: ")


@pytest.mark.parametrize("value", ["inf", "1e400", "-inf", "nan", "99999999T"])
def test_sizes_beyond_any_limit_are_refused(value: str) -> None:
    r = run_rbox("run", "--memory", value, "--", "true")
    assert r.returncode == 125
    message, hint = error_and_hint(r.stderr)
    assert message == f"invalid size `{value}` for --memory"


@pytest.mark.parametrize(("text", "line"), [('[defaults]\nmemory = inf\n', 2), ("[defaults]\n\n'memory' = 1e400\n", 3),
                                            ('defaults = { memory = "inf" }\n', 1)])
def test_sizes_beyond_any_limit_in_the_user_file_name_file_and_line(tmp_path, text: str, line: int) -> None:
    (tmp_path / "rbox").mkdir()
    (tmp_path / "rbox" / "rbox.toml").write_text(text)
    r = run_rbox("run", "--dry-run", "--", "true", env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert r.returncode == 125
    message, _ = error_and_hint(r.stderr)
    assert message.startswith(f"{tmp_path}/rbox/rbox.toml, line {line}, key `memory`: invalid size `")


@pytest.mark.parametrize("args", [["--tmpfs", "/proc"], ["--hide", "/proc"], ["--bind", "/tmp:/proc"],
                                  ["--tmpfs", "/proc/self"], ["--hide", "/proc/1/fd"]])
def test_the_sandbox_s_own_proc_cannot_be_covered(args: list[str]) -> None:
    r = run_rbox("run", "--net=none", *args, "--", "true")
    assert r.returncode == 125
    message, hint = error_and_hint(r.stderr)
    assert "rbox needs `/proc" in message and "hide entries below it" in hint


@pytest.mark.parametrize("args", [["--tmpfs", "/proc/sys"], ["--hide", "/proc/sys"], ["--hide", "/proc/sys/kernel"],
                                  ["--ro-bind", "/etc/hostname:/proc/sys/kernel/cap_last_cap"]])
def test_what_proc_tells_of_the_host_can_be_hidden_and_capabilities_still_go(args: list[str]) -> None:
    # The bounding set is dropped after the mounts: it must not depend on reading
    # /proc/sys/kernel/cap_last_cap there (hidden, or replaced by the user's file).
    r = run_rbox("run", "--net=none", *args, "--", "sh", "-c",
                 "grep CapBnd /proc/self/status; cat /proc/sys/kernel/cap_last_cap 2>/dev/null; true")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].split() == ["CapBnd:", "0000000000000000"]
    assert r.stdout.splitlines()[1:] != [open("/proc/sys/kernel/cap_last_cap").read().strip()], \
        "the host's cap_last_cap is still visible: the probe hid nothing"


def test_a_command_name_that_is_not_utf8_is_not_found_127() -> None:
    r = run_bytes("run", "--net=none", "--", b"caf\xe9")
    assert r.returncode == 127, r.stderr
    message, hint = error_and_hint(r.stderr.decode())
    assert message == "command not found: `caf\\xe9`"


def test_bytes_that_are_not_utf8_pass_through_to_the_command(tmp_path) -> None:
    name = b"d\xe9j\xe0-\xff"
    os.mkdir(os.fsencode(tmp_path) + b"/" + name)
    with open(os.fsencode(tmp_path) + b"/secret-\xfe", "w") as f:
        f.write("host secret\n")
    r = run_bytes("run", "--net=none", "-w", os.fsencode(tmp_path) + b"/" + name, "--hide",
                  os.fsencode(tmp_path) + b"/secret-\xfe", "-e", b"K=\xfe\xff", "--", "sh", "-c",
                  b'pwd; printf "%s|" "$1" "$K"; echo; cat ../secret-\xfe; echo end', "sh", b"arg-\x80",
                  cwd=str(tmp_path))   # the current directory is bound: /tmp is the sandbox's own
    assert r.returncode == 0, r.stderr
    assert r.stdout.split(b"\n") == [os.fsencode(tmp_path) + b"/" + name, b"arg-\x80|\xfe\xff|", b"end", b""]


def test_a_workdir_longer_than_path_max_is_refused_up_front() -> None:
    start = time.monotonic()
    r = run_rbox("run", "--net=none", "-w", "/" + "a" * 100_000, "--", "true")
    assert r.returncode == 125
    message, hint = error_and_hint(r.stderr)
    assert message.startswith("the path given to --workdir is 100001 bytes long")
    assert "PATH_MAX" in hint and len(r.stderr) < 400
    assert time.monotonic() - start < 10


def test_a_command_name_of_100000_characters_is_not_found() -> None:
    r = run_rbox("run", "--net=none", "--", "x" * 100_000)
    assert r.returncode == 127
    message, _ = error_and_hint(r.stderr)
    assert message.startswith("command not found: `xxx") and " ... " in message and len(message) < 3000


@pytest.mark.parametrize(("args", "message", "hint"), [
    (["run", "--root=yes", "--", "true"], "option `--root` takes no value", "write `--root` alone"),
    (["run", "-w"], "option `-w` needs a value (DIR)", "write `-w DIR`"),
    (["run", "-t", "-T", "--", "true"], "-t/--tty and -T/--no-tty exclude each other", "give one of them"),
    (["run", "-p", "8080:80", "-p", "8080:81", "--", "true"], "host port 127.0.0.1:8080/tcp is published twice",
     "give each -p its own host port"),
    (["run", "--bind", "/tmp:/", "--", "true"], "--bind cannot replace the sandbox's `/`",
     "the host's / is the sandbox's, read-only; bind or mount below it"),
    (["run", "--pids-limit", "2", "--", "true"], "invalid value `2` for --pids-limit",
     "use a whole number from 3 to 4194304"),
    (["run", "--net=none", "--", "no-such-command-xyz"], "command not found: `no-such-command-xyz`",
     "check the name"),
])
def test_usage_errors_say_what_to_do(args: list[str], message: str, hint: str) -> None:
    r = run_rbox(*args)
    assert r.returncode == (127 if "no-such" in args[-1] else 125)
    got_message, got_hint = error_and_hint(r.stderr)
    assert got_message == message
    assert got_hint.startswith(hint), got_hint


def sigint_state(pid: int) -> tuple[bool, bool]:
    """(SIGINT caught by a handler, SIGINT blocked) for a process, from its status."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":\t", 1) for line in f if ":\t" in line)
    bit = 1 << (signal.SIGINT - 1)
    return bool(int(fields["SigCgt"], 16) & bit), bool(int(fields["SigBlk"], 16) & bit)


def test_a_ctrl_c_while_rbox_starts_ends_it_quietly_with_130() -> None:
    # The interpreter installs its KeyboardInterrupt handler before any of rbox's code
    # runs; rbox's first line gives SIGINT its default action back (bin/rbox,
    # rootless/__main__.py), long before the parent blocks it for its signalfd. The
    # test sees both steps in /proc, then interrupts at a random moment of the 30 ms
    # that follow: rbox is killed by SIGINT (130 to a shell) or exits 130, silently.
    for _ in range(12):
        proc = subprocess.Popen([*RBOX, "run", "--net=none", "--", "sleep", "5"], env=rbox_env(None),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # Python's handler still there when SIGINT is blocked is the old behaviour; the
        # moment in between is too short to be sure to see under load, so only that
        # combination is looked for, until SIGINT is blocked.
        kept = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            caught, blocked = sigint_state(proc.pid)
            kept = kept or (caught and blocked)
            if blocked:
                break
        assert not kept, "rbox kept Python's KeyboardInterrupt handler until it blocked SIGINT"
        time.sleep(random.uniform(0, 0.030))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode in (130, -signal.SIGINT), err
        assert err == b"", err.decode()


@pytest.mark.parametrize("args", [["--tmpfs", "/dev"], ["--tmpfs", "/dev/pts"], ["--hide", "/dev/ptmx"]])
def test_a_pseudo_terminal_with_dev_covered_is_a_clear_error(args: list[str]) -> None:
    # The pty is opened after the mounts, in the sandbox's /dev/pts; without -t the
    # same options work (the positive control).
    assert run_rbox("run", "--net=none", "-T", *args, "--", "true").returncode == 0
    r = run_rbox("run", "--net=none", "-t", *args, "--", "true")
    assert r.returncode == 125
    message, hint = error_and_hint(r.stderr)
    assert message.startswith("cannot open a pseudo-terminal in the sandbox: ")
    assert hint == "leave /dev, /dev/pts and /dev/ptmx uncovered, or run with -T (no pseudo-terminal)"


@pytest.mark.parametrize("args", [["--tmpfs", "/etc/hostname"], ["--bind", "/etc:/etc/hostname"]])
def test_a_directory_over_a_file_says_which_goes_where(args: list[str]) -> None:
    r = run_rbox("run", "--net=none", *args, "--", "true")
    assert r.returncode == 125
    message, hint = error_and_hint(r.stderr)
    assert message.endswith(": Not a directory")
    assert hint.startswith("a directory goes on a directory, a file on a file")


@pytest.mark.needs_slirp4netns
def test_publishing_on_an_address_the_host_lacks_says_so() -> None:
    r = run_rbox("run", "-p", "192.0.2.1:18123:80", "--", "true")   # TEST-NET-1: no host has it
    assert r.returncode == 125
    message, hint = error_and_hint(r.stderr)
    assert message == "cannot publish host port 192.0.2.1:18123/tcp: Cannot assign requested address"
    assert hint.startswith("HOST_IP must be an address of this machine")


def test_control_characters_in_a_message_cannot_break_its_line_or_the_terminal() -> None:
    r = run_bytes("run", "--net=none", "--", b"a\nb\x1b[31m\xe2\x80\x8b")
    assert r.returncode == 127
    message, _ = error_and_hint(r.stderr.decode())
    assert message == "command not found: `a\\x0ab\\x1b[31m\\u200b`"
