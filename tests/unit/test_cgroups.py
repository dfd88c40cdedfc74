"""cgroup planning as pure functions, and what rbox writes where (pyfakefs cannot emulate
cgroupfs behaviour, so the behaviour itself is tested in the VM: tests/vm)."""

from __future__ import annotations

import pytest

from rootless import cgroups as cg
from rootless.errors import SpecError


@pytest.mark.parametrize(("text", "value"), [("512M", 512 << 20), ("2G", 2 << 30), ("1.5G", 3 << 29),
                                             ("64k", 64 << 10), ("1T", 1 << 40), ("8192", 8192),
                                             ("512MiB", 512 << 20), ("512MB", 512 << 20)])
def test_sizes(text: str, value: int) -> None:
    assert cg.parse_size(text, "--memory") == value


@pytest.mark.parametrize("text", ["", "abc", "12Q", "-5M", "100", "nanM"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(SpecError, match=f"invalid size `{text}` for --memory"):
        cg.parse_size(text, "--memory")


def test_format_size() -> None:
    assert [cg.format_size(n) for n in (64 << 20, 3 << 29, 1 << 30, 5000)] == ["64M", "1536M", "1G", "5000"]


def test_planned_writes_for_every_option() -> None:
    limits = cg.Limits(memory=512 << 20, memory_high=400 << 20, memory_swap=0, cpus=1.5, cpu_weight=50,
                       pids=256, io_weight=200)
    assert limits.controllers() == ["memory", "cpu", "pids", "io"]
    assert limits.writes() == [("memory.max", str(512 << 20)), ("memory.high", str(400 << 20)),
                               ("memory.swap.max", "0"), ("cpu.max", "150000 100000"), ("cpu.weight", "50"),
                               ("pids.max", "256"), ("io.weight", "default 200")]


def test_only_the_needed_controllers() -> None:
    assert cg.Limits(pids=10).controllers() == ["pids"]
    assert cg.Limits(cpus=0.5).writes() == [("cpu.max", "50000 100000")]
    assert not cg.Limits().any() and cg.Limits(io_weight=1).any()


def test_parse_proc_cgroup() -> None:
    text = "12:pids:/user.slice\n1:name=systemd:/user.slice/x.scope\n0::/user.slice/user-1000.slice/s.scope\n"
    assert cg.parse_proc_cgroup(text) == "/user.slice/user-1000.slice/s.scope"
    assert cg.parse_proc_cgroup("0::/\n") == "/"
    assert cg.parse_proc_cgroup("5:memory:/x\n") is None


MOUNTINFO_V2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw\n"
MOUNTINFO_HYBRID = ("30 23 0:26 / /sys/fs/cgroup rw shared:9 - tmpfs tmpfs rw,mode=755\n"
                    "35 30 0:30 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw\n"
                    "36 30 0:31 / /sys/fs/cgroup/memory rw shared:11 - cgroup cgroup rw,memory\n")


def test_cgroup2_must_be_at_sys_fs_cgroup() -> None:
    assert cg.cgroup2_mounted_at(MOUNTINFO_V2)
    assert not cg.cgroup2_mounted_at(MOUNTINFO_HYBRID)     # this development host's layout


def test_delegation_is_judged_by_the_kernels_list(fs) -> None:
    fs.create_file("/sys/kernel/cgroup/delegate", contents="cgroup.procs\ncgroup.threads\ncgroup.subtree_control\n"
                                                           "memory.reclaim\n")
    files = cg.delegate_files(cg.read("/sys/kernel/cgroup/delegate"))
    assert files == ["cgroup.procs", "cgroup.threads", "cgroup.subtree_control", "memory.reclaim"]
    scope = "/sys/fs/cgroup/user.slice/run-1.scope"
    for name in ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control"):
        fs.create_file(f"{scope}/{name}", st_mode=0o100644)
    assert cg.is_delegated(scope, files)
    fs.chmod(f"{scope}/cgroup.subtree_control", 0o444)
    assert not cg.is_delegated(scope, files)


def test_missing_controllers_are_named_with_the_drop_in(fs) -> None:
    fs.create_file("/cg/cgroup.controllers", contents="cpu memory pids\n")
    cg.check_controllers("/cg", ["memory", "pids"])
    with pytest.raises(cg.CgroupError) as info:
        cg.check_controllers("/cg", ["memory", "io"])
    assert info.value.message == "the cgroup controller(s) io are not delegated to you"
    assert "helpers/user@.service.d/delegate.conf" in (info.value.hint or "")


def test_setup_writes_in_order_and_cleanup_kills_then_removes(fs, monkeypatch) -> None:
    base = "/sys/fs/cgroup/scope"
    fs.create_dir(base)
    fs.create_file(f"{base}/cgroup.subtree_control")
    fs.create_file(f"{base}/cgroup.controllers", contents="cpu io memory pids\n")
    written: list[tuple[str, str]] = []
    real_write = cg.Subtree._write

    def record(self: cg.Subtree, path: str, value: str) -> None:
        written.append((path.removeprefix(base + "/"), value))
        if not path.endswith("cgroup.procs"):
            real_write(self, path, value)

    monkeypatch.setattr(cg.Subtree, "_write", record)
    tree = cg.Subtree(base)
    tree.setup(cg.Limits(memory=64 << 20, pids=64))
    tree.attach(4242)
    import os

    assert written == [("supervisor/cgroup.procs", str(os.getpid())), ("cgroup.subtree_control", "+memory +pids"),
                       ("cgroup.subtree_control", "+io"), ("payload/memory.max", str(64 << 20)),
                       ("payload/pids.max", "64"),
                       ("payload/cgroup.procs", "4242")]
    fs.create_file(f"{base}/payload/cgroup.kill")
    fs.create_file(f"{base}/payload/cgroup.procs", contents="")
    written.clear()
    monkeypatch.setattr(os, "rmdir", lambda p: written.append((p.removeprefix(base + "/"), "rmdir")))
    tree.cleanup()
    assert written == [("payload/cgroup.kill", "1"), ("payload", "rmdir")]


def test_reports_in_plain_words() -> None:
    limits = cg.Limits(memory=512 << 20, pids=64)
    assert cg.explain(limits, cg.events("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"), {}) == [
        "the command was killed: out of memory (limit 512M)"]
    assert cg.explain(limits, {"oom": 2, "oom_kill": 0}, cg.events("max 17\n")) == [
        "the sandbox reached its process limit (64) 17 time(s); fork() failed there"]
    assert cg.explain(limits, {}, {}) == []


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--memory", "lots", "x"], "invalid size `lots` for --memory"),
    (["run", "--cpus", "0", "x"], "invalid value `0` for --cpus"),
    (["run", "--cpu-weight", "0", "x"], "invalid value `0` for --cpu-weight"),
    (["run", "--pids-limit", "1.5", "x"], "invalid value `1.5` for --pids-limit"),
    (["run", "--io-weight", "20000", "x"], "invalid value `20000` for --io-weight"),
])
def test_bad_limits_are_rejected_before_anything_starts(argv: list[str], message: str) -> None:
    from tests.unit.test_spec import make

    with pytest.raises(SpecError, match=message):
        make(argv)


def test_no_limit_means_no_cgroup_work() -> None:
    from tests.unit.test_spec import make

    assert make(["run", "x"]).limits is None
    assert make(["run", "--memory-swap", "0", "x"]).limits.memory_swap == 0


def test_cpu_throttling_is_described() -> None:
    stat = cg.events("usage_usec 900000\nnr_periods 30\nnr_throttled 12\nthrottled_usec 2500000\n")
    assert cg.throttling(stat, cg.Limits(cpus=0.5)) == (
        "the CPU limit (0.5) held the sandbox back 12 time(s), 2.5 s in all")
    assert cg.throttling(stat, cg.Limits(memory=1 << 30)) is None
    assert cg.throttling(cg.events("nr_throttled 0\n"), cg.Limits(cpus=1)) is None
