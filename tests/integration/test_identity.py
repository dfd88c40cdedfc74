"""Who you are inside: the planned id maps, for real, as an unprivileged user."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess

import pytest

from tests.integration.helpers import RBOX_SCRIPT, py, run_rbox

pytestmark = pytest.mark.needs_userns


def facts(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


def our_range(path: str) -> tuple[int, int]:
    """(first, count) of our one subordinate range in `path`, read here, not through the
    planner under test. useradd and rbox-add-subids give one range per user."""
    user, uid = pwd.getpwuid(os.getuid()).pw_name, str(os.getuid())
    with open(path) as f:
        found = [(int(first), int(count)) for owner, first, count in
                 (line.strip().split(":") for line in f if line.count(":") == 2) if owner in (user, uid)]
    assert len(found) == 1, f"these tests expect one range for {user} in {path}: {found}"
    return found[0]


def expected_map(own: int, path: str, root: bool) -> str:
    """The kernel's map, in payload.py's `inner outer count|...` form, written out by hand:
    --root puts you at 0 and your range from 1 up; otherwise you keep your id and your
    range fills the ids around it (rbox(1), the podman layouts)."""
    first, count = our_range(path)
    if root:
        return f"0 {own} 1|1 {first} {count}"
    if own < count:
        return f"0 {first} {own}|{own} {own} 1|{own + 1} {first + own} {count - own}"
    return f"0 {first} {count}|{own} {own} 1"


def nested(text: str) -> str:
    """The command's own map: its user namespace is nested in the one above and maps the
    same inner ids onto themselves, one line per line above (the kernel maps a child's
    line through a single line of its parent's)."""
    return "|".join(f"{i} {i} {c}" for i, _, c in (line.split() for line in text.split("|")))


@pytest.mark.needs_subuid
@pytest.mark.parametrize("root", [False, True], ids=["own-id", "root"])
def test_uid_and_gid_maps_are_the_documented_layout(root: bool) -> None:
    r = run_rbox("run", *(["--root"] if root else []), *py("ids"))
    assert r.returncode == 0, r.stderr
    f = facts(r.stdout)
    assert f["uid_map"] == nested(expected_map(os.getuid(), "/etc/subuid", root))
    assert f["gid_map"] == nested(expected_map(os.getgid(), "/etc/subgid", root))
    assert f["uid"] == ("0" if root else str(os.getuid()))
    assert f["gid"] == ("0" if root else str(os.getgid()))
    # `allow` only when the caller has no supplementary group that dropping could lose.
    assert f["setgroups"] == ("deny" if set(os.getgroups()) - {os.getgid()} else "allow")
    assert "warning" not in r.stderr


@pytest.mark.needs_subuid
@pytest.mark.parametrize("root", [False, True], ids=["own-id", "root"])
def test_files_created_in_cwd_belong_to_the_caller(tmp_path, root: bool) -> None:
    r = run_rbox("run", *(["--root"] if root else []), "--", "sh", "-c", "echo hi > made-inside",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    st = (tmp_path / "made-inside").stat()
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


@pytest.mark.needs_subuid
def test_root_can_chown_to_subordinate_ids(tmp_path) -> None:
    r = run_rbox("run", "--root", "--", "sh", "-c", "touch f && chown 1234:55 f", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # Inner 1 is the first subordinate id, so inner 1234 is that plus 1233.
    first_uid, first_gid = our_range("/etc/subuid")[0], our_range("/etc/subgid")[0]
    st = (tmp_path / "f").stat()
    assert (st.st_uid, st.st_gid) == (first_uid + 1233, first_gid + 54)


def _path_without_newuidmap(tmp_path) -> str:
    """A PATH holding only what the tests run: no newuidmap, no newgidmap."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("sh", "touch", "id", "cat"):
        os.symlink(shutil.which(tool), bindir / tool)
    return str(bindir)


@pytest.mark.parametrize("root", [False, True], ids=["own-id", "root"])
def test_without_helpers_falls_back_to_a_single_id_with_one_warning(tmp_path, root: bool) -> None:
    path = _path_without_newuidmap(tmp_path)
    # --net=none: that PATH has no slirp4netns either.
    r = run_rbox("run", "--net=none", *(["--root"] if root else []), *py("ids"), env={"PATH": path})
    assert r.returncode == 0, r.stderr
    f = facts(r.stdout)
    assert (f["uid"], f["gid"]) == (("0", "0") if root else (str(os.getuid()), str(os.getgid())))
    if root:
        # 0 in a user namespace nested in the one that maps your id as 0.
        assert (f["uid_map"], f["gid_map"]) == ("0 0 1", "0 0 1")
    else:
        # Your own id, in a user namespace nested in the one that maps it as 0.
        assert (f["uid_map"], f["gid_map"]) == (f"{os.getuid()} 0 1", f"{os.getgid()} 0 1")
    assert f["setgroups"] == "deny"
    warnings = [line for line in r.stderr.splitlines() if line]
    assert warnings == ["rbox: warning: mapping only your own uid and gid (newuidmap/newgidmap not found "
                        "on PATH (Debian package `uidmap`)); see rbox(1), HOST SETUP"]


@pytest.mark.nosubid
def test_user_without_subordinate_ids_falls_back_with_a_warning(tmp_path) -> None:
    user = pwd.getpwuid(os.getuid()).pw_name
    r = run_rbox("run", "--root", *py("ids"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    f = facts(r.stdout)
    assert f["uid_map"] == "0 0 1"      # nested in the namespace that maps your uid as 0
    assert f["setgroups"] == "deny"
    assert r.stderr.strip() == (f"rbox: warning: mapping only your own uid and gid (no subordinate uid range "
                                f"for `{user}` in /etc/subuid); see rbox(1), HOST SETUP")


@pytest.mark.nosubid
def test_user_without_subordinate_ids_still_gets_a_full_sandbox(tmp_path) -> None:
    r = run_rbox("run", *py("pids", "--", "write", "/usr/rbox-test", "--", "status", "--", "netdevs"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    f = facts(r.stdout)
    assert f["netdevs"] == "lo tap0"
    assert f["write"] == "EROFS"
    assert f["NoNewPrivs"] == "1"
    assert f["self"] == "2"


@pytest.mark.needs_subuid
def test_no_new_privs_session_falls_back_instead_of_hanging(tmp_path) -> None:
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is part of every Debian system"
    r = run_rbox("run", *py("ids", "--", "netdevs"), cwd=tmp_path, wrapper=(setpriv, "--no-new-privs"))
    assert r.returncode == 0, r.stderr
    assert "no_new_privs is set on this session" in r.stderr
    f = facts(r.stdout)
    assert (f["setgroups"], f["uid"]) == ("deny", str(os.getuid()))
    # The default network works with a single id too (slirp4netns needs a mapped 0).
    assert f["netdevs"] == "lo tap0"


@pytest.mark.needs_install
def test_the_rbox_console_script_runs(tmp_path) -> None:
    r = subprocess.run([RBOX_SCRIPT, "run", "--", "id", "-u"], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(os.getuid())
