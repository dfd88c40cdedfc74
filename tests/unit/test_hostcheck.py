"""`rbox check`: one test per broken host condition, asserting the status and the fix
(pyfakefs stands in for /proc/sys, /sys/fs/cgroup and the binaries)."""

from __future__ import annotations

import pytest

from rootless import hostcheck as hc


@pytest.mark.parametrize(("path", "value", "detail"), [
    ("user/max_user_namespaces", "0", "user.max_user_namespaces is 0"),
    ("kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone is 0"),
    ("kernel/apparmor_restrict_unprivileged_userns", "1", "kernel.apparmor_restrict_unprivileged_userns is 1"),
])
def test_userns_sysctls_that_forbid(fs, path: str, value: str, detail: str) -> None:
    fs.create_file("/proc/sys/user/max_user_namespaces", contents="1000\n")
    fs.create_file(f"/proc/sys/{path}", contents=value + "\n") if path != "user/max_user_namespaces" else \
        fs.get_object("/proc/sys/user/max_user_namespaces").set_contents(value + "\n")
    f = hc.check_userns_sysctls()
    assert (f.status, f.fix) == ("fail", hc.FIX["userns_sysctl"])
    assert f.detail.startswith(detail)


def test_userns_sysctls_that_allow(fs) -> None:
    fs.create_file("/proc/sys/user/max_user_namespaces", contents="1000\n")
    fs.create_file("/proc/sys/kernel/unprivileged_userns_clone", contents="1\n")
    assert hc.check_userns_sysctls().status == "ok"


def test_no_subordinate_ids(fs) -> None:
    fs.create_file("/etc/subuid", contents="bob:100000:65536\n")
    f = hc.check_subids("alice", 1000, "/nowhere")
    assert f.status == "warn"
    assert f.fix == "an administrator can run `helpers/rbox-add-subids alice` (a free 65536-id range)"


def test_subordinate_ids_present(fs) -> None:
    fs.create_file("/etc/subuid", contents="alice:100000:65536\n1000:300000:10\n")
    assert hc.check_subids("alice", 1000, "/nowhere").detail == "65546 uids in 2 range(s)"


def test_helper_missing_setuid_and_ok(fs) -> None:
    assert hc.check_helper("newuidmap", "/usr/bin").status == "warn"
    fs.create_file("/usr/bin/newuidmap", st_mode=0o100755)
    f = hc.check_helper("newuidmap", "/usr/bin")
    assert (f.status, f.fix) == ("fail", "an administrator can run `chmod u+s /usr/bin/newuidmap` "
                                         "(it must be owned by root)")


def test_no_new_privs(fs) -> None:
    fs.create_file("/proc/self/status", contents="NoNewPrivs:\t1\n")
    f = hc.check_no_new_privs()
    assert (f.status, f.fix) == ("warn", hc.FIX["nnp"])


def test_slirp4netns_missing_fails(fs) -> None:
    f = hc.check_slirp4netns("/nowhere")
    assert (f.status, f.detail, f.fix) == ("fail", "not installed", hc.FIX["slirp4netns"])


def test_pasta_missing_only_warns(fs) -> None:
    assert hc.check_pasta("/nowhere").status == "warn"


@pytest.mark.needs_unprivileged
def test_tun_not_usable(tmp_path) -> None:
    device = tmp_path / "tun"
    device.write_text("")
    device.chmod(0)
    import os

    assert not os.access(device, os.R_OK)
    f = hc.check_tun(str(device))
    assert (f.status, f.fix) == ("fail", hc.FIX["tun"])


def test_cgroup_v1_host(fs) -> None:
    fs.create_file("/proc/self/mountinfo",
                   contents="30 23 0:26 / /sys/fs/cgroup rw shared:9 - tmpfs tmpfs rw\n")
    f = hc.check_cgroup2()
    assert (f.status, f.fix) == ("warn", hc.FIX["cgroup2"])


@pytest.mark.parametrize(("environ", "detail"), [
    ({}, "XDG_RUNTIME_DIR is not set"), ({"XDG_RUNTIME_DIR": "/run/user/1000"}, "no session bus at"),
])
def test_no_user_manager(fs, environ: dict[str, str], detail: str) -> None:
    f = hc.check_user_manager(environ, "alice")
    assert f.status == "warn" and detail in f.detail
    assert "loginctl enable-linger alice" in f.fix


def test_user_manager_reachable(fs) -> None:
    fs.create_file("/run/user/1000/bus")
    assert hc.check_user_manager({"XDG_RUNTIME_DIR": "/run/user/1000"}, "alice").status == "ok"


@pytest.mark.parametrize(("controllers", "status", "missing"), [
    ("cpuset cpu io memory pids", "ok", ""), ("cpu memory pids", "warn", "missing io"),
    ("memory pids", "warn", "missing cpu io"),
])
def test_delegated_controllers(fs, controllers: str, status: str, missing: str) -> None:
    fs.create_file("/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/cgroup.controllers",
                   contents=controllers + "\n")
    f = hc.check_delegation(1000)
    assert f.status == status and missing in f.detail
    if status == "warn":
        assert f.fix == hc.FIX["delegate"]


def test_no_user_service_cgroup(fs) -> None:
    assert hc.check_delegation(1000).status == "warn"


def test_runtime_dir(fs) -> None:
    assert hc.check_runtime_dir({}).status == "warn"
    assert hc.check_runtime_dir({}, pid1="sh").status == "ok"      # no fix exists without systemd
    fs.create_dir("/run/user/1000")
    assert hc.check_runtime_dir({"XDG_RUNTIME_DIR": "/run/user/1000"}).status == "ok"


def test_render_puts_each_fix_under_its_finding() -> None:
    text = hc.render([hc.Finding("a", "ok", "fine"), hc.Finding("b", "fail", "broken", "do this")])
    assert text == "ok    a: fine\nfail  b: broken\n      fix: do this\n"


def test_runtime_errors_use_the_same_fix_text(tmp_path) -> None:
    from rootless.errors import HostSetupError
    from rootless.net import slirp

    with pytest.raises(HostSetupError) as info:
        slirp.preflight(str(tmp_path))
    assert info.value.hint == hc.FIX["slirp4netns"]


def test_getsubids_output() -> None:
    from rootless import userns

    assert userns.parse_getsubids("0: alice 100000 65536\n1: alice 300000 10\n") == [(100000, 65536), (300000, 10)]
    assert userns.parse_getsubids("Error fetching ranges\n") == []


def test_tun_missing(tmp_path) -> None:
    f = hc.check_tun(str(tmp_path / "no-tun"))
    assert (f.status, f.fix) == ("fail", hc.FIX["tun_missing"]) and "missing" in f.detail


def test_cgroup2_elsewhere_is_named(fs) -> None:
    fs.create_file("/proc/self/mountinfo", contents=(
        "30 23 0:26 / /sys/fs/cgroup rw shared:9 - tmpfs tmpfs rw\n"
        "31 30 0:27 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw\n"))
    f = hc.check_cgroup2(pid1="docker-init")
    assert f.status == "warn" and "/sys/fs/cgroup/unified" in f.detail and f.fix == hc.FIX["no_systemd"]


def test_no_systemd_gives_no_systemd_fixes(fs) -> None:
    fs.create_file("/proc/1/comm", contents="tini\n")
    assert hc.init_system() == "tini"
    f = hc.check_init_system("tini")
    assert f.status == "warn" and "`tini`" in f.detail
    fs.create_dir("/run/systemd/system")
    assert hc.init_system() is None
