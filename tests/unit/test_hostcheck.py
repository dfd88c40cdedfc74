"""`rbox check`: one test per broken host condition, asserting the status and the fix
(pyfakefs stands in for /proc/sys, /sys/fs/cgroup and the binaries)."""

from __future__ import annotations

import pytest

from rootless import hostcheck as hc


@pytest.mark.parametrize(("path", "value", "detail"), [
    ("user/max_user_namespaces", "0", "user.max_user_namespaces is 0"),
    ("kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone is 0"),
])
def test_userns_sysctls_that_forbid(fs, path: str, value: str, detail: str) -> None:
    fs.create_file("/proc/sys/user/max_user_namespaces", contents="1000\n")
    fs.create_file(f"/proc/sys/{path}", contents=value + "\n") if path != "user/max_user_namespaces" else \
        fs.get_object("/proc/sys/user/max_user_namespaces").set_contents(value + "\n")
    f = hc.check_userns_sysctls()
    assert (f.status, f.fix) == ("fail", hc.FIX["userns_sysctl"])
    assert f.detail.startswith(detail)


def apparmor_host(fs, restrict: str | None, enabled: str | None = "Y", label: str | None = "unconfined") -> None:
    fs.create_file("/proc/sys/user/max_user_namespaces", contents="1000\n")
    if restrict is not None:
        fs.create_file("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", contents=restrict + "\n")
    if enabled is not None:
        fs.create_file("/sys/module/apparmor/parameters/enabled", contents=enabled + "\n")
    if label is not None:
        fs.create_file("/proc/self/attr/apparmor/current", contents=label + "\n")


def test_apparmor_restriction_on_an_unconfined_rbox_fails_with_the_profile_fix(fs) -> None:
    # Ubuntu 23.10+: the sysctl is 1, AppArmor is on, rbox runs unconfined.
    apparmor_host(fs, "1")
    assert hc.apparmor_userns_restricted() is not None
    f = hc.check_userns_sysctls()
    assert (f.status, f.fix) == ("fail", hc.FIX["apparmor"])
    assert f.detail.startswith("kernel.apparmor_restrict_unprivileged_userns is 1")
    assert "helpers/apparmor.d/rbox" in f.fix and "apparmor_parser -r" in f.fix


@pytest.mark.parametrize(("restrict", "enabled", "label"), [
    ("0", "Y", "unconfined"),                 # the restriction lifted
    (None, None, None),                       # a kernel without it (Debian, RHEL)
    ("1", "N", "unconfined"),                 # AppArmor disabled at boot
    ("1", "Y", "rbox (unconfined)"),          # rbox under its profile (helpers/apparmor.d/rbox)
])
def test_apparmor_restriction_that_does_not_apply(fs, restrict, enabled, label) -> None:
    apparmor_host(fs, restrict, enabled, label)
    assert hc.apparmor_userns_restricted() is None
    assert hc.check_userns_sysctls().status == "ok"


def test_apparmor_restriction_on_the_old_attr_interface(fs) -> None:
    # Kernels before 5.8 have only /proc/self/attr/current.
    apparmor_host(fs, "1", label=None)
    fs.create_file("/proc/self/attr/current", contents="unconfined\n")
    assert hc.apparmor_userns_restricted() is not None


def test_stage1_hint_names_the_apparmor_fix_when_restricted(fs) -> None:
    from rootless import stage1

    apparmor_host(fs, "1")
    assert hc.FIX["apparmor"] in (stage1.apparmor_hint() or "")
    assert hc.FIX["apparmor"] in stage1._userns_hint(1)


def test_stage1_hint_is_the_sysctl_one_without_apparmor(fs) -> None:
    from rootless import stage1

    apparmor_host(fs, None, None, None)
    assert stage1.apparmor_hint() is None
    assert "kernel.unprivileged_userns_clone" in stage1._userns_hint(1)


def test_kernel_section_lists_each_facility_with_what_it_costs() -> None:
    from rootless import kernel

    absent = {name: False for name, *_ in kernel.FACILITIES}
    found = hc.check_kernel("4.18.0-553.el8_10.x86_64", absent)
    assert (found[0].name, found[0].status) == ("kernel", "ok")
    assert "Linux 4.18.0-553.el8_10.x86_64 (rbox needs 4.18 or later)" == found[0].detail
    by_name = {f.name: f for f in found[1:]}
    assert len(by_name) == len(kernel.FACILITIES)
    pidfd = by_name["kernel: pidfd_open (Linux 5.3)"]
    assert pidfd.status == "ok" and pidfd.detail.startswith("absent: ") and "pipe" in pidfd.detail
    assert by_name["kernel: seccomp filters (Linux 3.5)"].status == "warn"
    present = hc.check_kernel("6.1.0", {name: True for name, *_ in kernel.FACILITIES})
    assert all(f.status == "ok" for f in present)
    assert all(f.detail.startswith("present: ") for f in present[1:])
    cannot_tell = hc.check_kernel("6.1.0", {**absent, "cgroup.kill": None})
    assert "cannot tell here" in {f.name: f for f in cannot_tell}["kernel: cgroup.kill (Linux 5.14)"].detail


def test_a_kernel_below_the_floor_fails() -> None:
    found = hc.check_kernel("3.10.0-1160.el7.x86_64", {})
    assert (found[0].status, found[0].fix) == ("fail", hc.FIX["kernel"])
    assert "older than 4.18" in found[0].detail


@pytest.mark.parametrize(("release", "version"), [("4.18.0-553.el8_10.x86_64", (4, 18)), ("6.18.44-fc-v657", (6, 18)),
                                                  ("5.10.0-28-amd64", (5, 10)), ("6", (6, 0)), ("weird", (0, 0))])
def test_kernel_version_parsing(release: str, version: tuple[int, int]) -> None:
    from rootless import kernel

    assert kernel.version(release) == version


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


def test_inside_a_slurm_job_limits_are_slurms(fs, monkeypatch) -> None:
    """A job's task has no session: on a systemd host, no user-manager or delegation
    finding (their fixes are about logging in), and no warning for a missing
    XDG_RUNTIME_DIR; the job is named instead. Outside a job, the same host gets them."""
    for name in ("check_userns_sysctls", "check_userns_works", "check_no_new_privs", "check_tun"):
        monkeypatch.setattr(hc, name, lambda *a, **k: hc.Finding("x", "ok", ""))
    for name in ("check_subids", "check_helper", "check_slirp4netns", "check_pasta", "check_cgroup2",
                 "check_user_manager", "check_delegation"):
        monkeypatch.setattr(hc, name, lambda *a, name=name, **k: hc.Finding(name, "warn", "", "fix"))
    monkeypatch.setattr(hc, "check_kernel", lambda *a: [])
    monkeypatch.setattr(hc, "cgroup_child", lambda: None)
    from rootless import kernel

    monkeypatch.setattr(kernel, "survey", lambda *a: {})
    monkeypatch.setattr(hc, "init_system", lambda: None)              # systemd is PID 1
    job = {"SLURM_JOB_ID": "42", "SLURMD_NODENAME": "node1", "PATH": "/usr/bin"}
    inside = {f.name: f for f in hc.check_all(job)}
    assert inside["Slurm job"].status == "ok"
    assert inside["Slurm job"].detail.startswith("job 42 on node1: Slurm sets its limits (srun/sbatch --mem, "
                                                 "--cpus-per-task)")
    assert "check_user_manager" not in inside and "check_delegation" not in inside
    assert inside["XDG_RUNTIME_DIR"].status == "ok"
    # salloc's shell on the login node is not in the job: the login node's findings.
    outside = {f.name: f for f in hc.check_all({"SLURM_JOB_ID": "42", "PATH": "/usr/bin"})}
    assert "Slurm job" not in outside and "check_user_manager" in outside
    assert outside["XDG_RUNTIME_DIR"].status == "warn"
