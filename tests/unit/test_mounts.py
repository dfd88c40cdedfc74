"""The mount plan as data: what is mounted, in which order, and path resolution that
never leaves the new root."""

from __future__ import annotations

import os

import pytest

from rootless import mounts
from rootless.errors import MountError
from tests.unit.test_spec import make


def described(argv: list[str], cwd: str = "/work/proj") -> list[str]:
    return [op.describe() for op in mounts.optimize(mounts.plan(make(argv, cwd=cwd)))]


def test_default_plan() -> None:
    uid = os.getuid()
    assert [line for line in described(["run", "--net=host", "true"]) if "/etc/" not in line] == [
        "bind / -> / [ro, recursive]",
        "proc /proc [new, for this PID namespace]",
        "dev /dev [tmpfs; null zero full random urandom tty; devpts; shm]",
        "tmpfs /tmp [mode=1777]",
        "tmpfs /run [mode=0755]",
        "tmpfs /var/tmp [mode=1777]",
        "bind /work/proj -> /work/proj [rw]",
        f"dir /run/user/{uid} [mode=0700]",
    ]


def test_cwd_of_slash_is_not_bound_read_write() -> None:
    assert not any(line.startswith("bind / -> / [rw") for line in described(["run", "true"], cwd="/"))


def test_parents_come_before_children_whatever_the_option_order(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    lines = described(["run", "--bind", f"{tmp_path}/d:/opt/data/in", "--tmpfs", "/opt", "true"])
    assert lines.index("tmpfs /opt [mode=0755]") < lines.index(f"bind {tmp_path}/d -> /opt/data/in [rw]")


def test_at_equal_depth_the_later_option_wins() -> None:
    lines = described(["run", "--tmpfs", "/work/proj", "true"])
    # The user's --tmpfs over the cwd comes after the cwd bind, so it is the one seen.
    assert lines.index("bind /work/proj -> /work/proj [rw]") < lines.index("tmpfs /work/proj [mode=0755]")


def test_home_modes() -> None:
    s = make(["run", "--home=tmpfs", "true"])
    assert f"tmpfs {s.home} [mode=0700]" in described(["run", "--home=tmpfs", "true"])
    assert f"bind {s.home} -> {s.home} [rw]" in described(["run", "--home=rw", "true"])
    assert not any(s.home in line for line in described(["run", "true"], cwd="/"))


def test_hide_and_ro_bind(tmp_path) -> None:
    lines = described(["run", "--hide", "/etc/shadow", "--ro-bind", str(tmp_path), "true"])
    assert "hide /etc/shadow" in lines
    assert f"bind {tmp_path} -> {tmp_path} [ro]" in lines


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "usr" / "lib").mkdir(parents=True)
    (r / "lib").symlink_to("usr/lib")
    (r / "etc" / "abs").symlink_to("/usr/lib")
    (r / "etc" / "escape").symlink_to("../../../../../..")
    (r / "loop").symlink_to("loop")
    return str(r)


@pytest.mark.parametrize(("path", "inside"), [
    ("/lib/x", "/usr/lib/x"),
    ("/etc/abs/y", "/usr/lib/y"),
    ("/etc/escape/etc", "/etc"),
    ("/../../etc", "/etc"),
    ("/usr/./lib/", "/usr/lib"),
    ("/", "/"),
    ("/new/dir", "/new/dir"),
])
def test_resolve_in_stays_inside_the_root(root: str, path: str, inside: str) -> None:
    assert mounts.resolve_in(root, path) == root + (inside if inside != "/" else "/")


def test_resolve_in_reports_symlink_loops(root: str) -> None:
    with pytest.raises(MountError, match="too many levels of symbolic links"):
        mounts.resolve_in(root, "/loop/x")


def test_ensure_mountpoint_creates_directories_and_files(root: str) -> None:
    assert mounts.ensure_mountpoint(root, "/lib/a/b", True, "x") == root + "/usr/lib/a/b"
    assert os.path.isdir(root + "/usr/lib/a/b")
    assert mounts.ensure_mountpoint(root, "/etc/conf", False, "x") == root + "/etc/conf"
    assert os.path.isfile(root + "/etc/conf")


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:5 / /newroot rw - ext4 /dev/sda1 rw
24 23 0:6 / /newroot/sys ro - sysfs sysfs rw
25 23 0:7 / /newroot/my\\040dir rw - tmpfs tmpfs rw
26 22 0:8 / /newrootx rw - tmpfs tmpfs rw
"""


def test_mountpoints_under_is_parent_first_and_unescapes() -> None:
    assert mounts.mountpoints_under(MOUNTINFO, "/newroot") == ["/newroot", "/newroot/sys", "/newroot/my dir"]


def test_optional_file_is_skipped_when_the_host_has_none_but_not_when_it_is_a_dangling_link(tmp_path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "run").mkdir()
    (root / "etc" / "resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    skipped = mounts.File("/etc/hosts", "x", optional=True)
    skipped.apply(str(tmp_path / "old"), str(root))       # no mount attempted: nothing to do
    assert not (root / "etc" / "hosts").exists()
    # The dangling link is followed inside the root, so its target is created there
    # (the bind itself needs privileges this unit test does not have).
    with pytest.raises(MountError, match="cannot bind `/etc/resolv.conf`"):
        mounts.File("/etc/resolv.conf", "nameserver 10.0.2.3\n", optional=True).apply(str(tmp_path), str(root))
    assert (root / "run/systemd/resolve/stub-resolv.conf").exists()
