"""Where the sandbox shows a mount the host makes later, and reading mountinfo (pure)."""

from __future__ import annotations

from rootless import latemounts, mounts
from tests.unit.test_spec import make


def places(host_path: str, argv: list[str], cwd: str = "/work/proj") -> list[tuple[str, bool]]:
    ops = mounts.optimize(mounts.plan(make(["run", "--net=none", *argv, "true"], cwd=cwd)))
    return latemounts.places(host_path, ops)


def test_under_the_read_only_root() -> None:
    assert places("/media/usb", []) == [("/media/usb", False)]
    assert places("/home/someone", []) == [("/home/someone", False)]


def test_under_the_working_directory_it_is_writable() -> None:
    assert places("/work/proj/mnt", []) == [("/work/proj/mnt", True)]
    assert places("/work/proj", []) == [("/work/proj", True)]       # on the bind's source itself
    assert places("/work/project2", []) == [("/work/project2", False)]


def test_covered_by_the_sandbox_s_own_mounts() -> None:
    for path in ("/tmp/x", "/run/media/me/usb", "/proc/sys/fs/binfmt_misc", "/dev/hugepages", "/var/tmp/a"):
        assert places(path, []) == [], path


def test_a_bind_shows_it_at_its_destination_too() -> None:
    got = places("/usr/share/late", ["--bind", "/usr/share:/srv/data", "--ro-bind", "/usr/share:/opt/data"])
    assert got == [("/usr/share/late", False), ("/srv/data/late", True), ("/opt/data/late", False)]


def test_user_tmpfs_and_hide_cover_it() -> None:
    assert places("/opt/x/late", ["--tmpfs", "/opt/x"]) == []
    assert places("/opt/x/late", ["--hide", "/opt/x"]) == []
    assert places("/opt/y/late", ["--tmpfs", "/opt/x"]) == [("/opt/y/late", False)]


def test_a_later_bind_at_the_same_place_wins() -> None:
    argv = ["--bind", "/usr/share:/srv/x", "--ro-bind", "/usr/lib:/srv/x"]
    assert places("/usr/share/late", argv) == [("/usr/share/late", False)]
    assert places("/usr/lib/late", argv) == [("/usr/lib/late", False), ("/srv/x/late", False)]


def test_a_read_only_bind_below_a_writable_one() -> None:
    got = places("/usr/share/doc/late", ["--ro-bind", "/usr/share/doc"], cwd="/usr/share")
    assert got == [("/usr/share/doc/late", False)]
    assert places("/usr/share/man/late", ["--ro-bind", "/usr/share/doc"], cwd="/usr/share") == \
        [("/usr/share/man/late", True)]


def test_parse_mountinfo_keys_ignore_the_root_field() -> None:
    text = ("24 1 0:22 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
            "72 68 0:32 /../.. /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
            "80 24 0:40 / /mnt/with\\040space rw master:3 - tmpfs late rw\n"
            "garbage\n")
    found = latemounts.parse_mountinfo(text)
    assert [(m.id, m.parent, m.point) for m in found] == [(24, 1, "/"), (72, 68, "/sys/fs/cgroup/memory"),
                                                          (80, 24, "/mnt/with space")]
    moved = latemounts.parse_mountinfo("72 68 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    assert moved[0].key == found[1].key


def test_descends() -> None:
    found = latemounts.parse_mountinfo("1 0 0:1 / / rw - ext4 a rw\n2 1 0:2 / /a rw - tmpfs b rw\n"
                                       "3 2 0:3 / /a/b rw - tmpfs c rw\n4 1 0:4 / /c rw - tmpfs d rw\n")
    by_id = {m.id: m for m in found}
    assert latemounts.descends(by_id[3], by_id[2], by_id)
    assert not latemounts.descends(by_id[4], by_id[2], by_id)
    assert not latemounts.descends(by_id[2], by_id[3], by_id)
