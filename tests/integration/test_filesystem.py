"""What the command sees: read-only host, writable cwd, private /tmp, the mount options."""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.helpers import PAYLOAD, py, run_rbox
from tests.integration.test_identity import facts

pytestmark = pytest.mark.needs_userns

# Mount points the sandbox makes writable on purpose (besides the cwd and options).
WRITABLE = ("/proc", "/dev", "/tmp", "/var/tmp", "/run")


def sandbox_mounts(*args: str, cwd=None, env=None) -> list[tuple[str, set[str]]]:
    r = run_rbox("run", *args, "--", "cat", "/proc/self/mountinfo", cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr
    mounts = []
    for line in r.stdout.splitlines():
        fields = line.split()
        mounts.append((fields[4].replace("\\040", " "), set(fields[5].split(","))))
    return mounts


def under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


@pytest.mark.parametrize("fallback", [False, True], ids=["mount_setattr", "remount-each"])
def test_every_host_mount_is_read_only(tmp_path, fallback: bool) -> None:
    env = {"RBOX_TEST_NO_MOUNT_SETATTR": "1"} if fallback else None
    mounts = sandbox_mounts(cwd=tmp_path, env=env)
    host_mounts = [(p, o) for p, o in mounts if not under(p, (*WRITABLE, str(tmp_path)))]
    assert len(host_mounts) >= 2  # `/` and at least /sys: the check is not vacuous
    assert [p for p, o in host_mounts if "ro" not in o] == []


def test_writes_to_the_host_root_fail_with_erofs(tmp_path) -> None:
    r = run_rbox("run", *py("write", "/usr/rbox-test", "--", "write", "/etc/rbox-test"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["write=EROFS", "write=EROFS"]


def test_home_is_read_only_by_default(tmp_path) -> None:
    home = os.path.expanduser("~")
    r = run_rbox("run", *py("write", f"{home}/.rbox-test-{uuid.uuid4().hex}"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # Read-only unless it is the current directory (then it is the cwd bind).
    assert facts(r.stdout)["write"] == ("ok" if str(tmp_path) == home else "EROFS")


def test_current_directory_is_writable_and_the_default_workdir(tmp_path) -> None:
    r = run_rbox("run", "--", "sh", "-c", "pwd; echo data > out.txt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path)
    assert (tmp_path / "out.txt").read_text() == "data\n"


@pytest.mark.parametrize("hidden", ["/tmp", "/var/tmp", "/run/lock"])
def test_tmp_var_tmp_and_run_are_private(hidden: str) -> None:
    # The host state the check needs is made here, not assumed: a file of ours in the
    # host's directory (all three are world-writable, sticky), seen on the host first.
    name = f"rbox-private-{uuid.uuid4().hex}"
    host_file = f"{hidden}/{name}-host"
    with open(host_file, "w") as f:
        f.write("host")
    try:
        assert os.path.exists(host_file)   # the positive control: the host shows it
        # From `/`: the cwd bind must not expose the directory under test.
        # (Not a listing of the host's directory: its names need not be UTF-8.)
        r = run_rbox("run", "--", "sh", "-c", f"echo run: $(ls -A /run); test -e {host_file} && echo visible; "
                     f"mkdir -p {hidden} && touch {hidden}/{name}-inside", cwd="/")
    finally:
        os.unlink(host_file)
    # /run is a new tmpfs: only what rbox itself puts there; the host's file is not there.
    assert r.stdout.splitlines() == ["run: rbox user"], r.stderr
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(f"{hidden}/{name}-inside")


def test_cwd_of_root_stays_read_only() -> None:
    r = run_rbox("run", *py("write", "/rbox-test"), cwd="/")
    assert r.returncode == 0, r.stderr
    assert facts(r.stdout)["write"] == "EROFS"


def test_bind_and_ro_bind(tmp_path) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    r = run_rbox("run", "--bind", f"{rw}:/tmp/rw", "--ro-bind", f"{ro}:/tmp/ro",
                 *py("write", "/tmp/rw/f", "--", "write", "/tmp/ro/f"), cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["write=ok", "write=EROFS"]
    assert (rw / "f").read_text() == "x"
    assert not (ro / "f").exists()


def test_ro_bind_over_the_writable_cwd_makes_that_part_read_only(tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    r = run_rbox("run", "--ro-bind", "sub", *py("write", "sub/f", "--", "write", "top"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["write=EROFS", "write=ok"]


def test_bind_of_a_file(tmp_path) -> None:
    (tmp_path / "conf").write_text("from-host\n")
    r = run_rbox("run", "--ro-bind", f"{tmp_path}/conf:/tmp/conf", "--", "cat", "/tmp/conf", cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "from-host\n"


def test_tmpfs_option(tmp_path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "secret").write_text("s")
    r = run_rbox("run", "--tmpfs", f"{tmp_path}/data", "--", "sh", "-c", "ls -A data | wc -l; touch data/new",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0"
    assert not (tmp_path / "data" / "new").exists()


def test_hide_a_directory_and_a_file(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("x")
    (tmp_path / "f").write_text("secret")
    r = run_rbox("run", "--hide", "d", "--hide", "f", "--", "sh", "-c", "ls -A d | wc -l; wc -c < f; "
                 f"{sys.executable} {PAYLOAD} write d/new -- write f", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # Empty, read-only, and the host's files untouched. (f is /dev/null: writes vanish.)
    assert r.stdout.split() == ["0", "0", "write=EROFS", "write=ok"]
    assert (tmp_path / "f").read_text() == "secret"
    assert sorted(os.listdir(tmp_path / "d")) == ["x"]


@pytest.mark.parametrize(("mode", "expect"), [("rw", "ok"), ("tmpfs", "ok"), ("ro", "EROFS")])
def test_home_modes(tmp_path, mode: str, expect: str) -> None:
    home = os.path.expanduser("~")
    name = f".rbox-home-test-{uuid.uuid4().hex}"
    # sh, not the payload tool: the test's own interpreter may live under the home.
    r = run_rbox("run", f"--home={mode}", "--", "sh", "-c", f"touch {home}/{name} 2>/dev/null && echo write=ok "
                 "|| echo write=EROFS", cwd="/")
    try:
        assert r.returncode == 0, r.stderr
        assert facts(r.stdout)["write"] == expect
        # Only --home=rw reaches the real home.
        assert os.path.exists(f"{home}/{name}") == (mode == "rw")
    finally:
        if os.path.exists(f"{home}/{name}"):
            os.unlink(f"{home}/{name}")


def test_workdir_option(tmp_path) -> None:
    r = run_rbox("run", "-w", "/usr", "--", "pwd", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "/usr\n"


def test_minimal_dev() -> None:
    r = run_rbox("run", "--", "sh", "-c", "ls -A /dev; echo x > /dev/null; head -c 4 /dev/urandom | wc -c; "
                 "test -c /dev/pts/ptmx && echo pts", cwd="/")
    assert r.returncode == 0, r.stderr
    *names, count, pts = r.stdout.split()
    # Exactly these: nothing else of the host's /dev (which has more: /dev/net/tun at least).
    assert sorted(names) == ["fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout",
                             "tty", "urandom", "zero"]
    assert set(os.listdir("/dev")) - set(names), "the host's /dev is no bigger: the check would be vacuous"
    assert (count, pts) == ("4", "pts")


def test_hostname_default_and_option() -> None:
    assert run_rbox("run", "--", "hostname").stdout == "rbox\n"
    assert run_rbox("run", "--hostname", "build-7", "--", "hostname").stdout == "build-7\n"


def test_environment_options() -> None:
    r = run_rbox("run", "-e", "A=1", "--env", "B=two words", "--unsetenv", "HOME",
                 *py("env", "A", "--", "env", "B", "--", "env", "HOME"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["A=1", "B=two words", "HOME=<unset>"]


def test_clearenv_keeps_only_what_is_asked() -> None:
    r = run_rbox("run", "--clearenv", "-e", "PATH", "-e", "X=y", "--", "env",
                 env={"PATH": "/usr/bin:/bin", "SECRET": "s"})
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["PATH=/usr/bin:/bin", "RBOX_SANDBOX=1", "X=y"]


def test_net_none_has_only_loopback_and_it_is_up() -> None:
    r = run_rbox("run", "--net=none", *py("netdevs", "--", "loopback"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["netdevs=lo", "loopback=ok"]


def test_net_host_shares_the_host_network() -> None:
    with open("/proc/net/dev") as f:
        host = sorted(line.split(":")[0].strip() for line in f.read().splitlines()[2:])
    r = run_rbox("run", "--net=host", *py("netdevs"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "netdevs=" + " ".join(host)


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path) -> None:
    r = run_rbox("run", "--dry-run", "--tmpfs", "/opt", "--", "touch", "should-not-exist", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("id map (")
    assert "bind / -> / [ro, recursive]" in lines
    assert "tmpfs /opt [mode=0755]" in lines
    assert f"bind {tmp_path} -> {tmp_path} [rw]" in lines
    assert not (tmp_path / "should-not-exist").exists()


@pytest.mark.needs_subuid
def test_debug_prints_helper_command_lines_and_mount_steps(tmp_path) -> None:
    r = run_rbox("run", "--debug", "--", "true", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "] + /usr/bin/newgidmap " in r.stderr or "newgidmap" in r.stderr
    assert "+ bind / -> / [ro, recursive]" in r.stderr
    assert "[rbox:init 1 " in r.stderr


def test_nothing_is_imported_after_pivot_root(tmp_path) -> None:
    """init and the payload run after pivot_root, where the host's site-packages may be
    gone: they must not import lazily (architecture notes, pitfall 2)."""
    import subprocess
    import sys

    from tests.integration.helpers import rbox_env

    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "rootless", "run", "--debug", "--", "true"],
                       cwd=tmp_path, env=rbox_env(None), capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    first_init = next(i for i, line in enumerate(lines) if line.startswith("[rbox:init"))
    late = [line for line in lines[first_init:] if line.startswith("import time:")]
    assert late == []


def fake_helpers(tmp_path) -> tuple[str, Path]:
    """A PATH with slirp4netns and pasta that note each start in `started`, then run
    the real ones (so the positive control still works)."""
    bindir, log = tmp_path / "fakebin", tmp_path / "started"
    bindir.mkdir()
    for tool in ("slirp4netns", "pasta"):
        real = shutil.which(tool) or f"/usr/bin/{tool}"
        (bindir / tool).write_text(f'#!/bin/sh\necho {tool} >> {log}\nexec {real} "$@"\n')
        (bindir / tool).chmod(0o755)
    return f"{bindir}:{os.environ['PATH']}", log


@pytest.mark.parametrize("driver", [pytest.param("slirp4netns", marks=pytest.mark.needs_slirp4netns),
                                    pytest.param("pasta", marks=pytest.mark.needs_pasta)])
def test_dry_run_starts_no_network_helper_and_no_limits(tmp_path, driver: str) -> None:
    path, log = fake_helpers(tmp_path)
    # A dry run only prints. (A limit this host cannot enforce is refused by the dry run
    # as by the real run, before any side effect: test_daily.)
    r = run_rbox("run", "--dry-run", f"--net={driver}", "--", "true", cwd=tmp_path,
                 env={"PATH": path})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("id map (")
    # A helper rbox spawned runs on after rbox exits: give it the time to show itself.
    time.sleep(0.5)
    assert not log.exists(), log.read_text()
    # The positive control: the same PATH, without --dry-run, starts the fake helper.
    r = run_rbox("run", f"--net={driver}", "--", "true", cwd=tmp_path, env={"PATH": path})
    assert r.returncode == 0, r.stderr
    assert driver in log.read_text().split()
