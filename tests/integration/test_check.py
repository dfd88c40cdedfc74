"""`rbox check` for real, as the unprivileged user, on the conditions this machine can
reproduce (the VM covers delegation)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.helpers import run_rbox

ROOT = Path(__file__).resolve().parents[2]


def findings(*args: str, **kw) -> tuple[int, dict[str, dict[str, str]]]:
    r = run_rbox("check", "--json", *args, **kw)
    return r.returncode, {f["name"]: f for f in json.loads(r.stdout)}


@pytest.mark.needs_userns
@pytest.mark.needs_subuid
@pytest.mark.needs_slirp4netns
def test_check_on_a_host_where_rbox_runs_has_no_fail_and_exits_0() -> None:
    # The markers are what rbox needs to run with its defaults (CI requires them), and
    # the rest of the suite shows that it does: any `fail` here is a false one.
    # rbox(1), CHECK: exit status 0 when rbox can run with its defaults, 1 if not.
    r = run_rbox("check")
    host, _, kernel_part = r.stdout.partition("\n\n")
    lines = [line for line in host.splitlines() if not line.startswith("      fix:")]
    systemd = "ok    init system: systemd" in r.stdout
    # Without systemd, the user-manager and delegation lines would offer fixes that cannot work.
    assert len(lines) == (15 if systemd else 13)
    assert all(line.split()[0] in ("ok", "warn", "fail") for line in lines)
    assert "ok    user namespace creation: works" in r.stdout
    # This host runs rbox with its defaults: a `fail` here would be false.
    assert [line for line in lines if line.startswith("fail")] == []
    assert "ok    /dev/net/tun: usable" in r.stdout
    assert (r.returncode, r.stderr) == (0, "")
    # The kernel's own section follows, one line per facility (checked for truth below).
    assert kernel_part.splitlines()[0] == f"ok    kernel: Linux {os.uname().release} (rbox needs 4.18 or later)"
    assert len(kernel_part.splitlines()) >= 7


def syscall_answers(nr: int, *args: int) -> int:
    """errno of a raw system call made by the test itself (0: it succeeded)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    return 0 if rc >= 0 else ctypes.get_errno()


def test_check_tells_the_truth_about_the_kernels_facilities() -> None:
    # Each facility probed here independently of rbox (raw numbers, unified since 5.1):
    # the same answers must come out of `rbox check`, on a new kernel and under the
    # old-kernel tier's filter (tests/oldkernel), where they answer ENOSYS.
    import errno

    _, found = findings()
    expected = {
        "kernel: pidfd_open (Linux 5.3)": syscall_answers(434, os.getpid(), 0) != errno.ENOSYS,
        "kernel: mount_setattr (Linux 5.12)": syscall_answers(442, -1, 0, 0, 0, 0) != errno.ENOSYS,
        "kernel: close_range CLOEXEC (Linux 5.11)": syscall_answers(436, 1 << 30, 1 << 30, 1 << 2) == 0,
    }
    for name, present in expected.items():
        assert found[name]["detail"].startswith("present: " if present else "absent: "), (name, found[name])
    assert found["kernel"]["detail"].startswith(f"Linux {os.uname().release} ")


@pytest.mark.needs_userns
def test_missing_slirp4netns_fails_with_the_fix(tmp_path) -> None:
    code, found = findings(env={"PATH": str(tmp_path)})
    assert code == 1
    f = found["slirp4netns (default network)"]
    assert (f["status"], f["detail"]) == ("fail", "not installed")
    assert found["newuidmap"]["status"] == "warn"


@pytest.mark.needs_userns
def test_no_new_privs_is_reported() -> None:
    r = run_rbox("check", "--json", wrapper=(shutil.which("setpriv") or "setpriv", "--no-new-privs"))
    assert {f["name"]: f for f in json.loads(r.stdout)}["no_new_privs"]["status"] == "warn"


def test_no_runtime_dir_is_said_truly() -> None:
    env = {"XDG_RUNTIME_DIR": ""}
    _, found = findings(env=env)
    assert "/tmp/rbox-" in found["XDG_RUNTIME_DIR"]["detail"]
    if found["init system"]["status"] == "ok":      # systemd: a session would set it
        assert found["XDG_RUNTIME_DIR"]["status"] == "warn"
        assert found["systemd user manager"]["status"] == "warn"
    else:                                           # no fix exists: no warning, no user-manager line
        assert found["XDG_RUNTIME_DIR"]["status"] == "ok"
        assert "systemd user manager" not in found and "delegated controllers" not in found


@pytest.mark.nosubid
def test_user_without_subordinate_ids_gets_the_helper_as_fix() -> None:
    _, found = findings()
    f = found["subordinate ids"]
    assert f["status"] == "warn" and "helpers/rbox-add-subids" in f["fix"]


def test_add_subids_dry_run_picks_a_free_range() -> None:
    # Read-only as an ordinary user: --dry-run only reads /etc/subuid and /etc/subgid.
    me = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    r = subprocess.run(["sh", str(ROOT / "helpers" / "rbox-add-subids"), "--dry-run", me], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    from rootless import userns

    if userns.read_subids(userns.SUBUID, me, os.getuid()):
        assert r.stdout.strip() == f"rbox-add-subids: {me} already has subordinate ids; nothing to do"
        return
    start = int(r.stdout.split()[-4].split("-")[0]) if "would give" in r.stdout else -1
    ends = [int(a) + int(b) for line in Path("/etc/subuid").read_text().splitlines()
            if line.count(":") == 2 for _, a, b in [line.split(":")] if a.isdigit() and b.isdigit()]
    assert start >= max(ends + [100000]) and start % 65536 == 0


@pytest.mark.needs_userns
def test_config_defaults_and_profiles_apply_and_the_command_line_wins(tmp_path) -> None:
    (tmp_path / "rbox").mkdir()
    (tmp_path / "rbox" / "rbox.toml").write_text('[defaults]\nhostname = "configured"\nnet = "none"\n'
                                                 '[profiles.named]\nhostname = "profiled"\n')
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert run_rbox("run", "--", "hostname", env=env).stdout == "configured\n"
    assert run_rbox("run", "--profile", "named", "--", "hostname", env=env).stdout == "profiled\n"
    assert run_rbox("run", "--profile", "named", "--hostname", "cli", "--", "hostname", env=env).stdout == "cli\n"


def test_a_bad_config_file_is_one_error_with_file_line_and_key(tmp_path) -> None:
    (tmp_path / "rbox").mkdir()
    path = tmp_path / "rbox" / "rbox.toml"
    path.write_text('[defaults]\nnet = "none"\npids-limit = "many"\n')
    r = run_rbox("run", "--", "true", env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert r.returncode == 125
    assert r.stderr.splitlines()[0] == (f"rbox: error: {path}, line 3, key `pids-limit`: invalid value `many` "
                                        "for --pids-limit")
