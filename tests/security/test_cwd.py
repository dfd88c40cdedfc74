"""Issue #10, class 4: the working directory is bound read-write only when it is a
project directory. Started from $HOME, the command must not write ~/.bashrc (code that
runs outside the sandbox at the next login); started from /tmp, it must not reach the
host's /tmp, where other programs keep their sockets.

Each attack has its positive control: the same probe succeeds with --cwd-writable (or
from a project directory), so a probe that cannot see a write or a socket cannot pass.
"""

from __future__ import annotations

import os
import pwd
import socket
import sys
import uuid

import pytest

from rootless import config, options, spec
from tests.integration.helpers import run_rbox

APPEND = 'echo pwned >> "$1" && echo write=ok || echo write=denied'
# Connects to a unix socket, reads a file, and says where it is: key=value lines.
REACH = """
import errno, os, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1]); print("connect=ok")
except OSError as e:
    print("connect=" + errno.errorcode.get(e.errno, str(e.errno)))
try:
    print("read=" + open(sys.argv[2]).read())
except OSError as e:
    print("read=" + errno.errorcode.get(e.errno, str(e.errno)))
print("cwd=" + os.getcwd())
"""


def home() -> str:
    return os.path.realpath(pwd.getpwuid(os.getuid()).pw_dir)


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("rbox: warning: not binding")]


def facts(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


@pytest.fixture
def rc_file():
    """A ~/.bashrc-like file of the user's own, removed afterwards."""
    path = f"{home()}/.rbox-test-rc-{uuid.uuid4().hex[:12]}"
    with open(path, "w") as f:
        f.write("original\n")
    yield path
    os.unlink(path)


@pytest.mark.needs_userns
def test_started_from_home_the_home_stays_read_only_and_a_warning_says_so(rc_file: str) -> None:
    r = run_rbox("run", "--net=none", "--", "sh", "-c", APPEND, "sh", rc_file, cwd=home())
    assert r.returncode == 0, r.stderr
    assert facts(r.stdout)["write"] == "denied"
    with open(rc_file) as f:
        assert f.read() == "original\n"
    [warning] = warnings(r.stderr)
    assert f"`{home()}`" in warning and "your home directory" in warning
    assert "stays read-only" in warning and "--bind DIR" in warning and "--cwd-writable" in warning


@pytest.mark.needs_userns
def test_cwd_writable_binds_the_home_anyway(rc_file: str) -> None:
    """Positive control of the probe above: with the bind forced, the same write lands."""
    r = run_rbox("run", "--net=none", "--cwd-writable", "--", "sh", "-c", APPEND, "sh", rc_file, cwd=home())
    assert r.returncode == 0, r.stderr
    assert facts(r.stdout)["write"] == "ok"
    with open(rc_file) as f:
        assert f.read() == "original\npwned\n"
    assert warnings(r.stderr) == []


@pytest.mark.needs_userns
def test_home_tmpfs_from_home_does_not_reach_the_real_home(rc_file: str) -> None:
    # The cwd bind used to come after the home tmpfs and put the real home back, writable.
    r = run_rbox("run", "--net=none", "--home=tmpfs", "--", "sh", "-c", APPEND, "sh", rc_file, cwd=home())
    assert r.returncode == 0, r.stderr
    assert facts(r.stdout)["write"] == "ok"          # into the sandbox's empty home
    with open(rc_file) as f:
        assert f.read() == "original\n"
    [warning] = warnings(r.stderr)
    assert "the sandbox's empty home (--home=tmpfs)" in warning


@pytest.mark.needs_userns
def test_a_project_directory_under_home_is_writable_and_the_home_is_not(rc_file: str, tmp_path) -> None:
    project = f"{home()}/.rbox-test-project-{uuid.uuid4().hex[:12]}"
    os.mkdir(project)
    try:
        r = run_rbox("run", "--net=none", "--", "sh", "-c", f'echo data > out.txt && echo write=ok; {APPEND}',
                     "sh", rc_file, cwd=project)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["write=ok", "write=denied"]
        with open(f"{project}/out.txt") as f:
            assert f.read() == "data\n"
        assert warnings(r.stderr) == []
    finally:
        if os.path.exists(f"{project}/out.txt"):
            os.unlink(f"{project}/out.txt")
        os.rmdir(project)


@pytest.fixture
def host_tmp_socket():
    """A listening unix socket and a file in the host's /tmp, as a terminal multiplexer
    or another program keeps them there."""
    name = f"/tmp/rbox-test-{uuid.uuid4().hex[:12]}"
    server = socket.socket(socket.AF_UNIX)
    server.bind(f"{name}.sock")
    server.listen(4)
    with open(f"{name}.txt", "w") as f:
        f.write("host-secret")
    yield f"{name}.sock", f"{name}.txt"
    server.close()
    os.unlink(f"{name}.sock")
    os.unlink(f"{name}.txt")


@pytest.mark.needs_userns
def test_started_from_tmp_the_hosts_tmp_is_out_of_reach(host_tmp_socket: tuple[str, str]) -> None:
    sock, path = host_tmp_socket
    r = run_rbox("run", "--net=none", "--", sys.executable, "-c", REACH, sock, path, cwd="/tmp")
    assert r.returncode == 0, r.stderr
    assert facts(r.stdout) == {"connect": "ENOENT", "read": "ENOENT", "cwd": "/tmp"}
    [warning] = warnings(r.stderr)
    # What really happens: the command works in the sandbox's own, empty /tmp.
    assert "`/tmp`" in warning and "the command starts in the sandbox's own `/tmp`, not the host's" in warning


@pytest.mark.needs_userns
def test_from_tmp_with_cwd_writable_the_probe_reaches_the_socket(host_tmp_socket: tuple[str, str]) -> None:
    """Positive control: the probe connects and reads when the host's /tmp is bound."""
    sock, path = host_tmp_socket
    r = run_rbox("run", "--net=none", "--cwd-writable", "--", sys.executable, "-c", REACH, sock, path, cwd="/tmp")
    assert r.returncode == 0, r.stderr
    assert facts(r.stdout) == {"connect": "ok", "read": "host-secret", "cwd": "/tmp"}


@pytest.mark.needs_userns
def test_a_project_directory_is_writable_without_a_warning(tmp_path) -> None:
    r = run_rbox("run", "--net=none", "--", "sh", "-c", "echo data > out.txt && echo write=ok", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "write=ok\n"
    assert (tmp_path / "out.txt").read_text() == "data\n"
    assert "warning" not in r.stderr


# The decision itself, for every place of the list (rbox(1), --cwd-writable).

def make(argv: list[str], cwd: str, environ: dict[str, str] | None = None) -> spec.Spec:
    return spec.from_parsed(options.parse(argv), environ or {}, cwd, False)


@pytest.mark.parametrize(("cwd", "reason"), [
    ("/", "is the root directory"),
    ("/tmp", "is a shared temporary directory"),
    ("/var/tmp", "is a shared temporary directory"),
    ("/var", "contains a shared temporary directory `/var/tmp`"),
    ("/dev/shm", "is the shared memory directory"),
    ("/proc", "is the host's /proc"),
    ("/run", "is the host's /run"),
])
def test_shared_places_are_not_bound(cwd: str, reason: str) -> None:
    s = make(["run", "true"], os.path.realpath(cwd))
    assert not s.cwd_bound
    assert s.cwd_warning is not None and f"it {reason};" in s.cwd_warning


def test_the_home_its_ancestors_and_home_from_the_environment(tmp_path) -> None:
    h = home()
    assert "it is your home directory;" in (make(["run", "true"], h).cwd_warning or "")
    parent = os.path.dirname(h)
    assert f"it contains your home directory `{h}`;" in (make(["run", "true"], parent).cwd_warning or "")
    other = tmp_path / "h"
    other.mkdir()
    s = make(["run", "true"], str(other), {"HOME": str(other)})
    assert not s.cwd_bound and "your home directory ($HOME)" in (s.cwd_warning or "")


def test_the_runtime_directory_and_its_ancestors(tmp_path) -> None:
    runtime = tmp_path / "run" / "user"
    runtime.mkdir(parents=True)
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    assert "your runtime directory ($XDG_RUNTIME_DIR)" in (make(["run", "true"], str(runtime), env).cwd_warning or "")
    assert not make(["run", "true"], str(tmp_path / "run"), env).cwd_bound
    assert make(["run", "true"], str(tmp_path), env).cwd_bound is False
    assert make(["run", "true"], str(tmp_path / "run"), {}).cwd_bound


def test_a_symlinked_home_is_compared_physically(tmp_path) -> None:
    real = tmp_path / "real-home"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    s = make(["run", "true"], str(real), {"HOME": str(tmp_path / "link")})
    assert not s.cwd_bound and f"`{real}`" in (s.cwd_warning or "")


def test_project_directories_below_shared_places_are_bound(tmp_path) -> None:
    s = make(["run", "true"], str(tmp_path))
    assert s.cwd_bound and s.cwd_warning is None


def test_cwd_writable_forces_the_bind_except_for_the_root() -> None:
    s = make(["run", "--cwd-writable", "true"], home())
    assert s.cwd_bound and s.cwd_warning is None
    s = make(["run", "--cwd-writable", "true"], "/")
    assert not s.cwd_bound and "not even with --cwd-writable" in (s.cwd_warning or "")


def test_no_warning_when_the_cwd_is_writable_anyway() -> None:
    s = make(["run", "--home=rw", "true"], home())
    assert not s.cwd_bound and s.cwd_warning is None


def test_cwd_writable_is_a_setting_of_the_configuration_file(tmp_path) -> None:
    site = tmp_path / "rbox.toml"
    site.write_text("[defaults]\ncwd-writable = true\n")
    cfg = config.load({"HOME": str(tmp_path)}, None, site=str(site))
    assert cfg.words == ["--cwd-writable"]
    assert make(["run", *cfg.words, "true"], home()).cwd_bound
