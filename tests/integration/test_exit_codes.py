"""The exit-code matrix (rootlesskit's integration-exit-code.sh, as pytest)."""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.helpers import py, rbox_env, run_rbox

pytestmark = pytest.mark.needs_userns


@pytest.mark.parametrize(("command", "code"), [
    (["--", "true"], 0),
    (py("exit", "42"), 42),
    (py("exit", "1"), 1),
    (py("kill-self", "SIGTERM"), 143),
    (py("kill-self", "SIGKILL"), 137),
    (py("kill-self", "SIGSEGV"), 139),
], ids=["0", "42", "1", "SIGTERM", "SIGKILL", "SIGSEGV"])
def test_the_command_exit_code_passes_through(command: list[str], code: int) -> None:
    r = run_rbox("run", *command)
    assert r.returncode == code, r.stderr
    assert "rbox:" not in r.stderr


def test_missing_command_is_127() -> None:
    r = run_rbox("run", "--", "no-such-command-xyz")
    assert r.returncode == 127
    assert r.stderr.splitlines()[0] == "rbox: error: command not found: `no-such-command-xyz`"
    assert r.stderr.splitlines()[1].startswith("hint: check the name; it must exist on the sandbox's PATH (PATH=")


def test_missing_command_with_an_unsearchable_path_entry_is_still_127(tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o000)
    try:
        r = run_rbox("run", "--", "no-such-command-xyz", env={"PATH": f"{locked}:/usr/bin:/bin"})
    finally:
        locked.chmod(0o700)
    assert r.returncode == 127, r.stderr


def test_non_executable_file_is_126(tmp_path) -> None:
    (tmp_path / "plain.txt").write_text("echo hi\n")
    r = run_rbox("run", "--", "./plain.txt", cwd=tmp_path)
    assert r.returncode == 126
    assert r.stderr == ("rbox: error: cannot execute `./plain.txt`: Permission denied\n"
                        "hint: it must be a file with execute permission (chmod +x) on a filesystem mounted "
                        "without noexec\n")


def test_directory_is_126(tmp_path) -> None:
    r = run_rbox("run", "--", "/usr", cwd=tmp_path)
    assert r.returncode == 126
    assert "cannot execute `/usr`" in r.stderr


def test_script_with_missing_interpreter_is_127(tmp_path) -> None:
    script = tmp_path / "s"
    script.write_text("#!/no/such/interpreter\n")
    script.chmod(0o755)
    r = run_rbox("run", "--", "./s", cwd=tmp_path)
    assert r.returncode == 127
    assert "its interpreter (#! line) was not found" in r.stderr


def test_unknown_option_is_125_with_one_error_and_a_hint() -> None:
    r = run_rbox("run", "--frobnicate", "--", "true")
    assert r.returncode == 125
    assert r.stderr == "rbox: error: unknown option `--frobnicate` for `rbox run`\nhint: see `rbox run --help`\n"


def test_missing_bind_source_is_125_before_anything_starts() -> None:
    r = run_rbox("run", "--bind", "/no/such/source", "--", "true")
    assert r.returncode == 125
    assert r.stderr == ("rbox: error: cannot bind `/no/such/source`: No such file or directory\n"
                        "hint: the source of --bind SRC[:DST] must exist on the host\n")


def test_setup_failure_inside_the_namespaces_is_reported_once_by_the_parent() -> None:
    r = run_rbox("run", "--ro-bind", "/etc:/no-such-dir/inside", "--", "true")
    assert r.returncode == 125
    assert r.stderr == ("rbox: error: cannot bind `/etc`: `/no-such-dir/inside` does not exist in the sandbox "
                        "and its parent is read-only\nhint: use a destination that exists on the host, or one "
                        "under /tmp, /run or a --tmpfs\n")


def test_bad_workdir_is_125() -> None:
    r = run_rbox("run", "-w", "/no/such/dir", "--", "true")
    assert r.returncode == 125
    assert r.stderr.startswith("rbox: error: cannot change to `/no/such/dir` in the sandbox: No such file")


def test_failure_inside_init_is_one_line_without_traceback() -> None:
    r = run_rbox("run", "--hide", "/no/such/path", "--", "true")
    assert r.returncode == 125
    assert r.stderr == ("rbox: error: cannot hide `/no/such/path`: No such file or directory in the sandbox\n"
                        "hint: check the path; only what exists can be hidden (a missing path needs no hiding)\n")


def test_user_namespaces_unavailable_gives_the_documented_error(tmp_path) -> None:
    # In a user namespace of our own we may set its user.max_user_namespaces to 0
    # (user_namespaces(7)): rbox inside it then cannot create its own.
    import shlex
    import sys

    rbox = " ".join(shlex.quote(w) for w in (sys.executable, "-m", "rootless", "run", "--", "true"))
    r = subprocess.run(["unshare", "-Ur", "sh", "-c", f"echo 0 > /proc/sys/user/max_user_namespaces && {rbox}"],
                       cwd=tmp_path, env=rbox_env(None), capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 125
    assert r.stderr.splitlines()[-2:] == [
        "rbox: error: cannot create a user namespace: the limit on user namespaces is reached (ENOSPC)",
        "hint: the limit user.max_user_namespaces is reached or 0; see rbox(1), HOST SETUP"]
