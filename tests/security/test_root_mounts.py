"""Class 1 of issue #10: with --root, uid 0 inside does not own the sandbox's mounts.

The command runs in a user namespace nested below the one that made the mounts, with a
mount namespace of its own, so every mount rbox made is locked (mount_namespaces(7)).
Each attack runs as the unprivileged test user, in both id modes (subordinate ranges and
a single id), and each has a positive control: the same probe, against mounts made by
its own user namespace (plain `unshare`), succeeds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from tests.conftest import probe
from tests.integration.helpers import run_rbox
from tests.security.probes import PROBE, facts

pytestmark = pytest.mark.needs_userns

SINGLE_WARNING = "rbox: warning: mapping only your own uid and gid"
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"


class Mode:
    """One id mode: the environment that selects it, and the check that it was used."""

    def __init__(self, name: str, env: dict[str, str]):
        self.name, self.env = name, env

    def run(self, *probe: str, cwd: Path, opts: tuple[str, ...] = ()) -> dict[str, list[str]]:
        r = run_rbox("run", "--root", "--net=none", *opts, "--", sys.executable, PROBE, *probe,
                     cwd=cwd, env=self.env)
        assert r.returncode == 0, r.stderr
        # Both modes must really be exercised: the single-id one says so, once.
        assert (SINGLE_WARNING in r.stderr) == (self.name == "single"), r.stderr
        assert "forged" not in r.stderr
        return facts(r.stdout)


@pytest.fixture(params=[pytest.param("subid", marks=pytest.mark.needs_subuid), "single"])
def mode(request, tmp_path_factory) -> Mode:
    if request.param == "subid":
        return Mode("subid", {})
    # A PATH without newuidmap/newgidmap forces the single-id map (test_identity.py).
    return Mode("single", {"PATH": str(tmp_path_factory.mktemp("empty-bin"))})


@pytest.fixture
def home_dir():
    """A directory in the home: outside the current directory, read-only in the sandbox,
    owned and writable by the test user on the host."""
    path = Path(tempfile.mkdtemp(prefix=".rbox-security-", dir=os.path.expanduser("~")))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def control(script: str, *args: str, unshare: tuple[str, ...] = ("-Urm",)) -> dict[str, list[str]]:
    """The positive control: `sh -c SCRIPT` in plain `unshare`, the probe as "$P"."""
    r = subprocess.run([UNSHARE, *unshare, "sh", "-c", script, "sh", *args], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, P=PROBE, PY=sys.executable), stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    return facts(r.stdout)


def test_root_cannot_remount_the_host_read_write(mode: Mode, tmp_path, home_dir) -> None:
    victim = home_dir / "victim"
    victim.write_text("original")
    f = mode.run("remount-rw", "/", "--", "remount-rw", str(victim), "--", "write", str(victim), "pwned",
                 cwd=tmp_path)
    assert f["remount"] and all(result != "ok" for result in f["remount"]), f
    assert f["write"] == ["EROFS"]
    assert victim.read_text() == "original"


def test_control_remount_and_write_succeed_on_a_mount_of_the_same_user_namespace(home_dir) -> None:
    victim = home_dir / "victim"
    victim.write_text("original")
    # A read-only bind made by the probe's own user namespace, as rbox's were before.
    f = control('"$PY" "$P" bind "$1" "$1" -- remount-ro "$1" -- write "$1/victim" x -- remount-rw "$1/victim" '
                '-- write "$1/victim" pwned', str(home_dir))
    assert f["bind"] == ["ok"] and f["remount"] == ["ok", "ok"] and f["write"] == ["EROFS", "ok"], f
    assert victim.read_text() == "pwned"


def test_root_cannot_unmount_a_hide(mode: Mode, tmp_path, home_dir) -> None:
    (home_dir / "secret-dir").mkdir()
    (home_dir / "secret-dir" / "secret").write_text("hidden")
    (home_dir / "secret-file").write_text("hidden")
    d, file = home_dir / "secret-dir", home_dir / "secret-file"
    f = mode.run("umount", str(d), "--", "read", f"{d}/secret", "--", "umount", str(file), "--", "read", str(file),
                 cwd=tmp_path, opts=("--hide", str(d), "--hide", str(file)))
    assert "ok" not in f["umount"] + f["umount_detach"], f
    assert f["read"] == ["ENOENT", "''"]


def test_control_unmounting_a_hide_of_the_same_user_namespace_reveals_it(home_dir) -> None:
    (home_dir / "secret-dir").mkdir()
    (home_dir / "secret-dir" / "secret").write_text("hidden")
    f = control('mount -t tmpfs -o ro tmpfs "$1" && "$PY" "$P" read "$1/secret" -- umount "$1" -- read "$1/secret"',
                str(home_dir / "secret-dir"))
    assert f["read"] == ["ENOENT", "'hidden'"] and f["umount"] == ["ok"], f


def test_root_cannot_make_a_ro_bind_writable(mode: Mode, tmp_path) -> None:
    work = tmp_path / "work"
    (work / "ro").mkdir(parents=True)
    (work / "ro" / "file").write_text("original")
    target = str(work / "ro" / "file")
    f = mode.run("remount-rw", target, "--", "write", target, "pwned", "--", "umount", str(work / "ro"),
                 "--", "write", target, "pwned", cwd=work, opts=("--ro-bind", str(work / "ro")))
    assert f["mountpoint"] == [str(work / "ro")]
    assert f["remount"] != ["ok"] and "ok" not in f["umount"] + f["umount_detach"], f
    assert f["write"] == ["EROFS", "EROFS"]
    assert (work / "ro" / "file").read_text() == "original"


def test_root_cannot_unmount_proc_to_see_the_hosts(mode: Mode, tmp_path) -> None:
    f = mode.run("pid-visible", str(os.getpid()), "--", "umount", "/proc", "--", "pid-visible", str(os.getpid()),
                 cwd=tmp_path)
    assert "ok" not in f["umount"] + f["umount_detach"], f
    assert f["pid_visible"] == ["False", "False"]


def test_control_unmounting_a_new_proc_shows_the_hosts() -> None:
    f = control('"$PY" "$P" pid-visible "$1" -- umount /proc -- pid-visible "$1"', str(os.getpid()),
                unshare=("-Urpfm", "--mount-proc"))
    assert f["umount"] == ["ok"] and f["pid_visible"] == ["False", "True"], f


@pytest.fixture
def negative_group_file(tmp_path) -> Path:
    """A file that denies access to a group the test user is in: owner a subordinate uid,
    group the user's supplementary group, mode 0604 (others may read, that group may not).
    Made in a setgid directory by a subordinate uid (unshare --map-auto), the only way an
    unprivileged user can give a file another owner and keep the group."""
    group = sorted(set(os.getgroups()) - {os.getgid()})[0]
    d = tmp_path / "neg"
    d.mkdir()
    os.chown(d, -1, group)
    d.chmod(0o2777)
    make = ("import os; os.chdir(os.environ['D']); os.setresuid(1, 1, 1); "
            "fd = os.open('file', os.O_CREAT | os.O_WRONLY, 0o604); os.write(fd, b'for others only'); "
            "os.fchmod(fd, 0o604)")
    subprocess.run([UNSHARE, "--map-auto", "--map-root-user", sys.executable, "-c", make], check=True, timeout=60,
                   env=dict(os.environ, D=str(d)))
    st = (d / "file").stat()
    assert (st.st_uid != os.getuid(), st.st_gid, st.st_mode & 0o777) == (True, group, 0o604)
    return d / "file"


@pytest.mark.needs_subuid
@pytest.mark.needs_suppgroup
def test_root_cannot_drop_a_group_to_pass_a_negative_group_permission(mode: Mode, tmp_path,
                                                                     negative_group_file) -> None:
    f = mode.run("setgroups", "--", "read", str(negative_group_file), cwd=tmp_path)
    assert f["setgroups"] == ["EPERM"]
    assert f["read"] == ["EACCES"]


@pytest.mark.needs_subuid
@pytest.mark.needs_suppgroup
def test_control_dropping_the_group_passes_the_negative_permission(negative_group_file) -> None:
    with pytest.raises(PermissionError):
        negative_group_file.read_text()           # the group denies the test user on the host
    f = control('"$PY" "$P" setgroups -- read "$1"', str(negative_group_file),
                unshare=("--map-auto", "--map-root-user"))
    assert f["setgroups"] == ["ok"] and f["read"] == ["'for others only'"], f


def test_pid1_is_out_of_reach(mode: Mode, tmp_path) -> None:
    f = mode.run("pid1", cwd=tmp_path)
    assert f["fd_list"] == ["EACCES"]
    assert f["mem"] == ["EACCES"] and f["environ"] == ["EACCES"]
    assert f["ptrace"] == ["EPERM"]
    # Before Linux 5.6 (the old-kernel tier) pidfd_getfd does not exist: no way in at all.
    assert f["pidfd_getfd"] == (["EPERM"] if probe("pidfd") is None else ["ENOSYS"])
    assert f["forged_writes"] == ["0"]


def test_control_a_dumpable_pid1_is_reachable_and_its_descriptors_writable() -> None:
    # PID 1 is a shell here; its stdout is the pipe the control reads, like init's sync pipe.
    f = control('"$PY" "$P" pid1; :', unshare=("-Urpf", "--mount-proc"))
    assert f["fd_list"][0] != "EACCES" and f["mem"] == ["ok"] and f["ptrace"] == ["ok"], f
    assert (f["pidfd_getfd"][0].startswith("fd") or f["pidfd_getfd"] == ["EBADF"]
            or (probe("pidfd") is not None and f["pidfd_getfd"] == ["ENOSYS"])), f
    assert int(f["forged_writes"][0]) > 0


def test_pid1_is_out_of_reach_with_a_pseudo_terminal_too(tmp_path) -> None:
    # -t: init also holds the pty socket until it has passed the master.
    r = run_rbox("run", "--root", "--net=none", "-t", "--", sys.executable, PROBE, "pid1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    f = facts(r.stdout.replace("\r", ""))
    assert (f["fd_list"], f["ptrace"], f["forged_writes"]) == (["EACCES"], ["EPERM"], ["0"])
    assert "forged" not in r.stderr


def _owners_tar(path: Path) -> None:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("owned")
        info.uid, info.gid, info.size = 1234, 55, 0
        tar.addfile(info)


def test_what_root_is_for_still_works(mode: Mode, tmp_path) -> None:
    for name in ("f1", "f65534", "f0"):
        (tmp_path / name).touch()
    (tmp_path / "mnt").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "marker").touch()
    (tmp_path / "b").mkdir()
    (tmp_path / "out").mkdir()
    _owners_tar(tmp_path / "t.tar")
    tar = shutil.which("tar") or "/usr/bin/tar"
    f = mode.run("chown", "f0", "0", "0", "--", "chown", "f1", "1", "1", "--", "chown", "f65534", "65534", "65534",
                 "--", "tmpfs", str(tmp_path / "mnt"), "--", "bind", str(tmp_path / "a"), str(tmp_path / "b"),
                 cwd=tmp_path)
    # New mounts of its own work, in its own mount namespace: the host sees neither.
    assert f["tmpfs"] == ["ok"] and f["write"] == ["ok"] and f["bind"] == ["ok"], f
    assert not (tmp_path / "mnt" / "inside-tmpfs").exists() and not (tmp_path / "b" / "marker").exists()
    assert (tmp_path / "f0").stat().st_uid == os.getuid()
    if mode.name == "single":
        # Only your own id is mapped: chown to another fails, as it always did there.
        assert f["chown"] == ["ok", "EINVAL", "EINVAL"]
        return
    assert f["chown"] == ["ok", "ok", "ok"]
    r = run_rbox("run", "--root", "--net=none", "--", tar, "-xpf", "t.tar", "--same-owner", "-C", "out",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    first_uid, first_gid = _first_subordinate_ids()
    assert (tmp_path / "f1").stat().st_uid == first_uid
    assert (tmp_path / "f65534").stat().st_uid == first_uid + 65533
    st = (tmp_path / "out" / "owned").stat()
    assert (st.st_uid, st.st_gid) == (first_uid + 1233, first_gid + 54)


def _first_subordinate_ids() -> tuple[int, int]:
    import pwd

    from rootless import userns

    user = pwd.getpwuid(os.getuid()).pw_name
    return (userns.read_subids(userns.SUBUID, user, os.getuid())[0][0],
            userns.read_subids(userns.SUBGID, user, os.getuid())[0][0])
