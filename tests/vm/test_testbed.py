"""What the VM test bed promises, asserted from inside it. These fail the run if the
test bed is not a faithful login node; on any other host they skip, visibly."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.needs_vm

CONTROLLERS = {"memory", "pids", "cpu", "io"}


def user_service_cgroup() -> Path:
    uid = os.getuid()
    return Path(f"/sys/fs/cgroup/user.slice/user-{uid}.slice/user@{uid}.service")


def test_systemd_is_pid_1() -> None:
    assert Path("/proc/1/comm").read_text().strip() == "systemd"


def test_cgroup_v2_only() -> None:
    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    assert [m[2] for m in mounts if m[1] == "/sys/fs/cgroup"] == ["cgroup2"]
    assert not any(m[2] == "cgroup" for m in mounts)   # no v1 hierarchy anywhere


def test_the_user_manager_has_the_controllers_delegated() -> None:
    cgroup = user_service_cgroup()
    assert cgroup.is_dir()
    assert CONTROLLERS <= set((cgroup / "cgroup.controllers").read_text().split())
    assert cgroup.stat().st_uid == os.getuid()


def test_a_systemd_scope_memory_limit_kills_a_hog() -> None:
    r = subprocess.run(["systemd-run", "--user", "--scope", "--quiet", "-p", "MemoryMax=50M", "-p", "MemorySwapMax=0",
                        "python3", "-c", "x = bytearray(200 * 1024 * 1024)"],
                       capture_output=True, text=True, timeout=120)
    # `systemd-run --scope` execs the command in place: the kernel's OOM kill is ours to see.
    assert r.returncode == -9, r.stderr
