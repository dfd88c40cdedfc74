"""Daily use: `rbox unshare`, `rbox sh -l/-c`, the installed man page (issue #13).

Runs in: the test runner, as the unprivileged user, with the real rbox."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.integration.helpers import RBOX_SCRIPT, run_rbox

pytestmark = pytest.mark.needs_userns


@pytest.mark.needs_subuid
def test_unshare_deletes_what_root_made(tmp_path) -> None:
    made = run_rbox("run", "--root", "--net=none", "--", "sh", "-c",
                    "mkdir -p tree/sub && touch tree/sub/f && chown -R 1:1 tree && chmod 0700 tree/sub",
                    cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    # Positive control: from outside, the user cannot delete it (the files are a subordinate id's).
    outside = subprocess.run(["rm", "-rf", "tree"], cwd=tmp_path, capture_output=True, text=True)
    assert outside.returncode != 0 and "Permission denied" in outside.stderr
    r = run_rbox("unshare", "--", "rm", "-rf", "tree", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, "")
    assert not (tmp_path / "tree").exists()


@pytest.mark.needs_subuid
def test_unshare_is_uid_0_with_the_root_map_and_nothing_else() -> None:
    r = run_rbox("unshare", "--", "sh", "-c", 'id -u; cat /proc/self/uid_map; readlink /proc/self/ns/net; pwd')
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "0"
    assert lines[1].split() == ["0", str(os.getuid()), "1"]
    assert len(lines[2].split()) == 3 and lines[2].split()[0] == "1"       # subordinate range from 1 up
    assert lines[-2] == os.readlink("/proc/self/ns/net")                     # the host's network
    assert lines[-1] == os.getcwd()


@pytest.mark.parametrize(("argv", "code"), [(["sh", "-c", "exit 7"], 7), (["no-such-command-x"], 127),
                                            (["sh", "-c", "kill -TERM $$"], 143), (["/etc/passwd"], 126)])
def test_unshare_passes_the_status_through(argv: list[str], code: int) -> None:
    r = run_rbox("unshare", "--", *argv)
    assert r.returncode == code, r.stderr
    if code in (126, 127):
        assert r.stderr.startswith("rbox: error:") and "\nhint: " in r.stderr


def test_unshare_needs_a_command() -> None:
    r = run_rbox("unshare")
    assert r.returncode == 125 and "needs a COMMAND" in r.stderr and "hint:" in r.stderr


def test_sh_dash_c_runs_like_the_shells_own(tmp_path) -> None:
    env = {"SHELL": "/bin/sh"}
    r = run_rbox("sh", "--net=none", "-c", 'echo "$0:$1:$2"', "name", "a b", "c", env=env)
    assert (r.returncode, r.stdout) == (0, "name:a b:c\n"), r.stderr
    r = run_rbox("sh", "--net=none", "-c", "exit 3")
    assert r.returncode == 3


def test_sh_login_reads_the_profile(tmp_path) -> None:
    # bash as a login shell reads ~/.bash_profile; HOME is pointed at a directory of our own.
    shell = os.environ.get("SHELL") or ""
    import pwd

    login_shell = pwd.getpwuid(os.getuid()).pw_shell
    assert os.path.basename(login_shell) == "bash", f"the test user's shell is {login_shell} ({shell})"
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bash_profile").write_text("echo PROFILE-READ\n")
    # The host's /tmp is not the sandbox's: the home is bound in (read-only) to be seen.
    shown = ("--ro-bind", str(home))
    r = run_rbox("sh", "--net=none", *shown, "-l", "-c", "shopt -q login_shell && echo LOGIN",
                 env={"HOME": str(home)}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["PROFILE-READ", "LOGIN"]
    # Control: without -l the profile is not read.
    r = run_rbox("sh", "--net=none", *shown, "-c", "shopt -q login_shell || echo NOT-LOGIN",
                 env={"HOME": str(home)}, cwd=tmp_path)
    assert r.stdout.split() == ["NOT-LOGIN"]


@pytest.mark.needs_install
def test_man_finds_the_installed_page() -> None:
    man = shutil.which("man")
    assert man, "man is needed (Debian package man-db)"
    bindir = os.path.dirname(RBOX_SCRIPT)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/"), "MANPATH": ""}
    env.pop("MANPATH")
    r = subprocess.run([man, "-w", "rbox"], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    page = os.path.realpath(r.stdout.strip())
    assert page.startswith(os.path.realpath(sys.prefix)), page


def test_ipv6_publish_needs_pasta() -> None:
    r = run_rbox("run", "-p", "[::1]:18081:80", "--", "true")
    assert r.returncode == 125 and "needs --net=pasta" in r.stderr and "hint:" in r.stderr


@pytest.mark.needs_pasta
def test_ipv6_publish_with_pasta(tmp_path) -> None:
    import socket
    import time

    from tests.integration.helpers import start_rbox

    port = _free_port6()
    proc = start_rbox("run", "--net=pasta", "-p", f"[::1]:{port}:8000", "--", sys.executable, "-c",
                      "import socket\n"
                      "s = socket.create_server(('::', 8000), family=socket.AF_INET6, dualstack_ipv6=True)\n"
                      "c, _ = s.accept(); c.sendall(b'hello-v6'); c.close()", cwd=tmp_path)
    try:
        got = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not got:
            try:
                with socket.create_connection(("::1", port), timeout=2) as s:
                    got = s.recv(100)
            except OSError:
                time.sleep(0.1)
        assert got == b"hello-v6"
    finally:
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def _free_port6() -> int:
    import socket

    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("mode", ["host", "none", pytest.param("slirp4netns", marks=pytest.mark.needs_slirp4netns),
                                  pytest.param("pasta", marks=pytest.mark.needs_pasta)])
def test_the_host_name_resolves_in_every_network_mode(mode: str) -> None:
    r = run_rbox("run", f"--net={mode}", "--", sys.executable, "-c",
                 "import socket; n = socket.gethostname(); print(n, socket.gethostbyname(n))")
    assert r.returncode == 0, r.stderr
    name, address = r.stdout.split()
    assert name == "rbox" and address.count(".") == 3


@pytest.mark.parametrize("lang", [None, "C", "POSIX", "xx_XX.UTF-8"])
def test_rbox_adds_nothing_to_the_environment_but_rbox_sandbox(lang: str | None) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LC_") and k != "LANG"}
    if lang is not None:
        base["LANG"] = lang
    base["ODD"] = "caf\udce9"          # not UTF-8: survives as the same bytes
    inner = subprocess.run([sys.executable, "-m", "rootless", "run", "--net=none", "--", "env", "-0"],
                           env={**base, "PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[2])},
                           capture_output=True, timeout=60)
    assert inner.returncode == 0, inner.stderr
    got = dict(e.split(b"=", 1) for e in inner.stdout.split(b"\0") if e)
    expected = {os.fsencode(k): os.fsencode(v) for k, v in base.items()}
    expected[b"PYTHONPATH"] = got[b"PYTHONPATH"]
    expected[b"RBOX_SANDBOX"] = b"1"
    assert got == expected


def test_dry_run_refuses_what_the_real_run_refuses() -> None:
    """--dry-run --memory 1G on a host without delegated controllers: the same 125 as
    the real run, before printing any plan (issue #13, item 11)."""
    real = run_rbox("run", "--net=none", "--memory", "1G", "--", "true")
    dry = run_rbox("run", "--net=none", "--memory", "1G", "--dry-run", "--", "true")
    assert dry.returncode == real.returncode, (dry.stderr, real.stderr)
    if real.returncode == 125:      # this host cannot enforce limits (every non-VM host here)
        assert dry.stdout == ""
        assert dry.stderr.splitlines()[0] == real.stderr.splitlines()[0]
    # Control: without the limit, the dry run prints its plan.
    ok = run_rbox("run", "--net=none", "--dry-run", "--", "true")
    assert ok.returncode == 0 and "bind / -> /" in ok.stdout


def test_bind_try_skips_a_missing_source(tmp_path) -> None:
    there = tmp_path / "there"
    there.mkdir()
    (there / "f").write_text("present\n")
    r = run_rbox("run", "--net=none", "--debug", "--ro-bind-try", f"{tmp_path}/missing:/tmp/m",
                 "--bind-try", f"{there}:/tmp/t", "--", "sh", "-c", "cat /tmp/t/f; echo w > /tmp/t/g; ls /tmp/m",
                 cwd=tmp_path)
    assert r.stdout.startswith("present\n"), r.stderr
    assert (there / "g").read_text() == "w\n"                    # --bind-try binds read-write
    assert r.returncode != 0 and "skip --ro-bind-try" in r.stderr  # /tmp/m was never made
    # Control: the plain option refuses the missing source.
    plain = run_rbox("run", "--net=none", "--ro-bind", f"{tmp_path}/missing:/tmp/m", "--", "true")
    assert plain.returncode == 125 and "hint:" in plain.stderr


def _with_config(tmp_path, text: str) -> dict[str, str]:
    conf = tmp_path / "conf" / "rbox"
    conf.mkdir(parents=True)
    (conf / "rbox.toml").write_text(text)
    return {"XDG_CONFIG_HOME": str(tmp_path / "conf")}


@pytest.mark.parametrize("key", ["root", "fakeroot"])
def test_every_long_name_is_a_setting(tmp_path, key: str) -> None:
    env = _with_config(tmp_path, f"[defaults]\n{key} = true\n")
    r = run_rbox("run", "--net=none", "--", "id", "-u", env=env, cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "0\n"), r.stderr


@pytest.mark.parametrize("key", ["tty", "no-tty", "pass-fd"])
def test_per_run_options_are_refused_with_the_reason(tmp_path, key: str) -> None:
    value = "3" if key == "pass-fd" else "true"
    env = _with_config(tmp_path, f"[defaults]\n{key} = {value}\n")
    r = run_rbox("run", "--net=none", "--", "true", env=env, cwd=tmp_path)
    assert r.returncode == 125
    first, hint = r.stderr.splitlines()[:2]
    assert "rbox.toml" in first and f"`{key}` is not a setting" in first
    assert hint == f"hint: give --{key} on the command line of the run that needs it"


def test_paths_in_config_files_expand_the_home(tmp_path) -> None:
    home = tmp_path / "home"
    (home / ".secret").mkdir(parents=True)
    (home / ".secret" / "key").write_text("s3cret\n")
    env = {**_with_config(tmp_path, '[defaults]\nhide = ["~/.secret"]\nro-bind = ["$HOME/.secret:/tmp/seen"]\n'),
           "HOME": str(home)}
    r = run_rbox("run", "--net=none", "--dry-run", "--", "true", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"hide {home}/.secret" in r.stdout and f"bind {home}/.secret -> /tmp/seen [ro]" in r.stdout
    env = {**_with_config(tmp_path / "b", 'ro-bind = ["relative/dir"]\n'.join(["[defaults]\n", ""])),
           "HOME": str(home)}
    r = run_rbox("run", "--net=none", "--", "true", env=env, cwd=tmp_path)
    assert r.returncode == 125 and "is not an absolute path" in r.stderr and "rbox.toml" in r.stderr


def test_a_default_bind_missing_on_this_node_does_not_stop_every_run(tmp_path) -> None:
    env = _with_config(tmp_path, '[defaults]\nro-bind = ["/no/such/scratch"]\n')
    r = run_rbox("run", "--net=none", "--debug", "--", "true", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "skip --ro-bind-try /no/such/scratch" in r.stderr
    # On the command line, the same missing source is an error.
    r = run_rbox("run", "--net=none", "--ro-bind", "/no/such/scratch", "--", "true", cwd=tmp_path)
    assert r.returncode == 125
