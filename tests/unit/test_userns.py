"""Subordinate-id parsing and id-map building: pure functions, plus pyfakefs for the
default /etc paths."""

from __future__ import annotations

import pytest

from rootless import userns

SUBUID = """\
# managed by the site
alice:100000:65536
bob:165536:65536

1001:231072:1000
alice:300000:10
carol:400000
alice:abc:10
alice:500000:0
alice:-5:10
"""


def test_parse_matches_names_and_numeric_ids_in_file_order() -> None:
    assert userns.parse_subids(SUBUID, "alice", 1000) == [(100000, 65536), (300000, 10)]
    assert userns.parse_subids(SUBUID, "dave", 1001) == [(231072, 1000)]


def test_parse_skips_comments_blanks_malformed_and_empty_ranges() -> None:
    assert userns.parse_subids(SUBUID, "carol", 1002) == []
    assert userns.parse_subids("", "alice", 1000) == []
    assert userns.parse_subids("alice:1:2:3\nalice:1\n", "alice", 1000) == []


def test_parse_does_not_match_a_name_prefix() -> None:
    assert userns.parse_subids("alicex:100000:10\n", "alice", 1000) == []


def test_root_map_puts_the_caller_at_0_and_ranges_contiguously_from_1() -> None:
    assert userns.build_map(1000, [(100000, 65536), (300000, 10)], root=True) == [
        (0, 1000, 1), (1, 100000, 65536), (65537, 300000, 10)]


def test_own_id_map_keeps_the_caller_and_fills_around_it() -> None:
    # keep-id layout: inner 0..999 from the range, 1000 is the caller, the rest follows.
    assert userns.build_map(1000, [(100000, 65536)], root=False) == [
        (0, 100000, 1000), (1000, 1000, 1), (1001, 101000, 64536)]


def test_own_id_map_with_several_ranges_and_the_split_in_the_second() -> None:
    assert userns.build_map(15, [(100000, 10), (200000, 10)], root=False) == [
        (0, 100000, 10), (10, 200000, 5), (15, 15, 1), (16, 200005, 5)]


def test_own_id_above_every_range_is_not_split() -> None:
    assert userns.build_map(1_500_000_000, [(100000, 65536)], root=False) == [
        (0, 100000, 65536), (1_500_000_000, 1_500_000_000, 1)]


@pytest.mark.parametrize("root", [True, False])
def test_inner_ids_never_overlap(root: bool) -> None:
    extents = userns.build_map(1000, [(100000, 500), (300000, 700), (500000, 3)], root)
    inner = [i for start, _, count in extents for i in range(start, start + count)]
    assert len(inner) == len(set(inner)) == 1 + 500 + 700 + 3


def test_helper_argv_is_pid_then_triples() -> None:
    assert userns.helper_argv("/usr/bin/newuidmap", 42, [(0, 1000, 1), (1, 100000, 65536)]) == [
        "/usr/bin/newuidmap", "42", "0", "1000", "1", "1", "100000", "65536"]


@pytest.fixture
def host(fs):
    # Distinct uid and gid, distinct subordinate uid and gid ranges (and another user's
    # lines around them): a map built from the wrong file or id shows.
    fs.create_file("/etc/subuid", contents="bob:100000:65536\nalice:200000:65536\n")
    fs.create_file("/etc/subgid", contents="alice:500000:4000\nbob:200000:65536\n")
    for tool in ("newuidmap", "newgidmap"):
        fs.create_file(f"/usr/bin/{tool}", st_mode=0o104755)
    return fs


def test_plan_for_root_with_distinct_uid_and_gid_ranges(host) -> None:
    plan = userns.plan_idmap(True, 1000, 1001, "alice", "/usr/bin", nnp=False)
    assert (plan.mode, plan.newuidmap, plan.newgidmap) == ("subid", "/usr/bin/newuidmap", "/usr/bin/newgidmap")
    assert plan.uid_map == [(0, 1000, 1), (1, 200000, 65536)]
    assert plan.gid_map == [(0, 1001, 1), (1, 500000, 4000)]
    assert plan.nested_uid_map == [(0, 0, 1), (1, 1, 65536)]          # the identity over the ids above
    assert plan.nested_gid_map == [(0, 0, 1), (1, 1, 4000)]


def test_plan_for_your_own_ids_with_distinct_uid_and_gid_ranges(host) -> None:
    plan = userns.plan_idmap(False, 1000, 1001, "alice", "/usr/bin", nnp=False)
    assert plan.uid_map == [(0, 200000, 1000), (1000, 1000, 1), (1001, 201000, 64536)]
    assert plan.gid_map == [(0, 500000, 1001), (1001, 1001, 1), (1002, 501001, 2999)]


def test_apply_runs_newgidmap_and_newuidmap_with_the_literal_maps(tmp_path) -> None:
    # Stand-ins for the setuid helpers that record how they were called.
    for tool in ("newuidmap", "newgidmap"):
        (tmp_path / tool).write_text(f'#!/bin/sh\necho {tool} "$@" > {tmp_path}/{tool}.call\n')
        (tmp_path / tool).chmod(0o755)
    plan = userns.IdMapPlan("subid", [(0, 1000, 1), (1, 200000, 65536)], [(0, 1001, 1), (1, 500000, 4000)],
                            newuidmap=str(tmp_path / "newuidmap"), newgidmap=str(tmp_path / "newgidmap"))
    userns.apply_idmap(plan, 4242)
    assert (tmp_path / "newgidmap.call").read_text() == "newgidmap 4242 0 1001 1 1 500000 4000\n"
    assert (tmp_path / "newuidmap.call").read_text() == "newuidmap 4242 0 1000 1 1 200000 65536\n"


def test_apply_runs_both_helpers_at_the_same_time(tmp_path) -> None:
    """Each stand-in marks that it started, then waits for the other's mark and fails
    without it: run one after the other, the first would never see the second's."""
    for tool, other in (("newuidmap", "newgidmap"), ("newgidmap", "newuidmap")):
        (tmp_path / tool).write_text(f"#!/bin/sh\ntouch {tmp_path}/{tool}.started\n"
                                     f"for i in $(seq 500); do [ -e {tmp_path}/{other}.started ] && exit 0; "
                                     "sleep 0.01; done\necho the other helper never started; exit 1\n")
        (tmp_path / tool).chmod(0o755)
    plan = userns.IdMapPlan("subid", [(0, 1000, 1)], [(0, 1001, 1)],
                            newuidmap=str(tmp_path / "newuidmap"), newgidmap=str(tmp_path / "newgidmap"))
    userns.apply_idmap(plan, 4242)


def test_apply_reports_newgidmap_first_when_both_fail(tmp_path) -> None:
    for tool in ("newuidmap", "newgidmap"):
        (tmp_path / tool).write_text(f"#!/bin/sh\necho {tool} refused >&2\nexit 1\n")
        (tmp_path / tool).chmod(0o755)
    plan = userns.IdMapPlan("subid", [(0, 1000, 1)], [(0, 1001, 1)],
                            newuidmap=str(tmp_path / "newuidmap"), newgidmap=str(tmp_path / "newgidmap"))
    with pytest.raises(userns.NamespaceError) as e:
        userns.apply_idmap(plan, 4242)
    assert "newgidmap refused" in e.value.message and "newuidmap" not in e.value.message


@pytest.mark.parametrize(("change", "reason"), [
    ("no-subuid", "no subordinate uid range for `alice` in /etc/subuid"),
    ("no-subgid", "no subordinate gid range for `alice` in /etc/subgid"),
    ("no-helpers", "newuidmap/newgidmap not found on PATH (Debian package `uidmap`)"),
    ("nnp", "no_new_privs is set on this session, so newuidmap cannot work"),
])
def test_plan_falls_back_to_a_single_id_with_the_reason(host, change: str, reason: str) -> None:
    path, nnp = "/usr/bin", False
    if change == "no-subuid":
        host.remove("/etc/subuid")
    elif change == "no-subgid":
        host.remove("/etc/subgid")
        host.create_file("/etc/subgid", contents="bob:1:2\n")
    elif change == "no-helpers":
        path = "/nowhere"
    else:
        nnp = True
    plan = userns.plan_idmap(False, 1000, 1001, "alice", path, nnp)
    assert (plan.mode, plan.reason) == ("single", reason)
    # Mapped as 0 (the network helpers need a mapped 0); the command gets its own ids
    # back in a nested user namespace.
    assert plan.uid_map == [(0, 1000, 1)]
    assert plan.gid_map == [(0, 1001, 1)]
    assert (plan.nested_uid_map, plan.nested_gid_map) == ([(1000, 0, 1)], [(1001, 0, 1)])
    assert plan.nested_setgroups == "deny"


def test_single_plan_for_root_maps_0(host) -> None:
    host.remove("/etc/subuid")
    plan = userns.plan_idmap(True, 1000, 1001, "alice", "/usr/bin", False)
    assert plan.uid_map == [(0, 1000, 1)] and plan.gid_map == [(0, 1001, 1)]
    # Root again in the command's nested namespace; U1 is `deny`, so U2 must be too.
    assert (plan.nested_uid_map, plan.nested_gid_map) == ([(0, 0, 1)], [(0, 0, 1)])
    assert plan.nested_setgroups == "deny"


@pytest.mark.parametrize("root", [True, False])
def test_subid_plan_nests_the_identity_over_every_inner_id(host, root: bool) -> None:
    plan = userns.plan_idmap(root, 1000, 1000, "alice", "/usr/bin", False)
    assert plan.nested_uid_map == [(i, i, c) for i, _, c in plan.uid_map]
    assert plan.nested_gid_map == [(i, i, c) for i, _, c in plan.gid_map]


def test_identity_keeps_one_line_per_extent_in_inner_order() -> None:
    # Never merged: the kernel maps each line through one line of the parent's map.
    assert userns.identity([(1001, 101000, 64536), (0, 100000, 1000), (1000, 1000, 1)]) == [
        (0, 0, 1000), (1000, 1000, 1), (1001, 1001, 64536)]


@pytest.mark.parametrize(("groups", "expected"), [
    ([], "allow"), ([1000], "allow"), ([1000, 27], "deny"), ([27], "deny")])
def test_setgroups_is_denied_when_the_caller_has_a_group_to_lose(host, groups: list[int], expected: str) -> None:
    plan = userns.plan_idmap(True, 1000, 1000, "alice", "/usr/bin", False, groups=groups)
    assert plan.mode == "subid"
    assert plan.nested_setgroups == expected


@pytest.mark.parametrize("path", [":/usr/bin", "/usr/bin::/bin", ".:/usr/bin", "bin:/usr/bin", ""])
def test_which_looks_only_in_absolute_directories(fs, monkeypatch, path: str) -> None:
    fs.create_file("/work/newuidmap", st_mode=0o100755)
    fs.create_file("/work/bin/newuidmap", st_mode=0o100755)
    fs.create_file("/usr/bin/newuidmap", st_mode=0o100755)
    monkeypatch.chdir("/work")
    # Never ./newuidmap nor bin/newuidmap; an empty PATH falls back to the default path.
    assert userns.which("newuidmap", path) == "/usr/bin/newuidmap"


@pytest.mark.parametrize(("value", "expected"), [("0", False), ("1", True)])
def test_no_new_privs_is_read_from_proc_status(fs, value: str, expected: bool) -> None:
    fs.create_file("/proc/self/status", contents=f"Name:\tx\nNoNewPrivs:\t{value}\nSeccomp:\t0\n")
    assert userns.no_new_privs_set() is expected


def test_describe_lists_every_extent() -> None:
    plan = userns.IdMapPlan("single", [(0, 1000, 1)], [(0, 1000, 1)], reason="why")
    assert plan.describe() == ["id map (single: why)", "uid 0 -> 1000 x1", "gid 0 -> 1000 x1",
                               "nested user namespace for the command (setgroups deny):",
                               "  uid 0 -> 0 x1", "  gid 0 -> 0 x1"]


def test_nested_keep_over_the_stored_layout_gives_you_your_id_and_the_image_its_numbers() -> None:
    """With an image (not --root), U1 is the layout the image was stored in and U2 makes
    you your own id: U1's 0 (you) -> your id, every other id itself, U1's `own` left out;
    each line within one line of U1's map."""
    u1 = userns.build_map(1000, [(100000, 65536)], root=True)
    assert userns.nested_keep(1000, u1) == [(1, 1, 999), (1000, 0, 1), (1001, 1001, 64536)]
    u1 = userns.build_map(1000, [(100000, 500), (300000, 65536)], root=True)
    assert userns.nested_keep(1000, u1) == [(1, 1, 500), (501, 501, 499), (1000, 0, 1), (1001, 1001, 65036)]
    u1 = userns.build_map(123456789, [(100000, 65536)], root=True)
    assert userns.nested_keep(123456789, u1) == [(1, 1, 65536), (123456789, 0, 1)]
