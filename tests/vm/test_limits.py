"""Resource limits for real, in the systemd VM test bed, as the unprivileged user. On any
other host these skip, visibly (needs_vm): the limits cannot be shown there."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.integration.helpers import py, run_rbox, wait_until
from tests.integration.test_identity import facts

pytestmark = [pytest.mark.needs_vm, pytest.mark.needs_userns]


def manager_tree() -> Path:
    uid = os.getuid()
    return Path(f"/sys/fs/cgroup/user.slice/user-{uid}.slice/user@{uid}.service")


def rbox_leaves() -> list[Path]:
    # os.walk, not rglob: systemd removes finished scopes while we look (a vanished
    # directory is skipped, not an error).
    return [Path(d) / name for d, subdirs, _ in os.walk(manager_tree()) for name in subdirs
            if name in ("payload", "supervisor")]


@pytest.mark.parametrize("mechanism", ["dbus", "systemd-run"])
def test_a_memory_hog_is_killed_and_reported_while_the_host_lives_on(mechanism: str) -> None:
    # Both ways to a delegated scope: D-Bus (the default) and the systemd-run fallback.
    r = run_rbox("run", "--net=none", "--memory", "64M", "--memory-swap", "0", *py("memhog", "256"), timeout=300,
                 env={"RBOX_SCOPE_MECHANISM": mechanism})
    assert r.returncode == 137, r.stderr
    assert "allocated" not in r.stdout
    assert "rbox: the command was killed: out of memory (limit 64M)" in r.stderr
    assert run_rbox("run", "--net=none", "--", "true", timeout=300).returncode == 0


def test_a_fork_bomb_is_contained_and_the_sandbox_still_exits() -> None:
    r = run_rbox("run", "--net=none", "--pids-limit", "64", *py("forkbomb", "1000"), timeout=300)
    assert r.returncode == 0, r.stderr
    assert int(facts(r.stdout)["forked"]) < 64      # init and python count too
    assert "reached its process limit (64)" in r.stderr


def payload_of(proc) -> Path:
    """The sandbox's cgroup, from rbox's --debug lines (read while it runs)."""
    assert proc.stderr is not None
    payload = None
    for line in proc.stderr:
        found = re.search(r"cgroup: \d+ > (/sys/fs/cgroup/\S+/payload)/cgroup.procs", line)
        if found:
            payload = Path(found.group(1))
        if "PID 1 is host pid" in line and payload:
            break
    assert payload is not None and payload.is_dir()
    return payload


def test_every_limit_option_reaches_the_kernel(spawn) -> None:
    proc = spawn("run", "--net=none", "--debug", "--memory", "300M", "--memory-high", "200M", "--memory-swap", "0",
                 "--cpus", "1.5", "--cpu-weight", "50", "--pids-limit", "77", "--io-weight", "200",
                 "--", "sleep", "60")
    payload = payload_of(proc)
    read = {name: (payload / name).read_text().split() for name in
            ("memory.max", "memory.high", "memory.swap.max", "cpu.max", "cpu.weight", "pids.max", "io.weight")}
    assert read == {"memory.max": [str(300 << 20)], "memory.high": [str(200 << 20)], "memory.swap.max": ["0"],
                    "cpu.max": ["150000", "100000"], "cpu.weight": ["50"], "pids.max": ["77"],
                    "io.weight": ["default", "200"]}
    proc.terminate()
    proc.communicate(timeout=120)


def test_half_a_cpu_is_half_a_cpu(spawn) -> None:
    proc = spawn("run", "--net=none", "--debug", "--cpus", "0.5", *py("busy", "12"))
    payload = payload_of(proc)

    def usage() -> int:
        stat = dict(line.split() for line in (payload / "cpu.stat").read_text().splitlines())
        return int(stat["usage_usec"])

    time.sleep(2)
    u0, t0 = usage(), time.monotonic()
    time.sleep(5)
    rate = (usage() - u0) / 1e6 / (time.monotonic() - t0)
    assert 0.4 <= rate <= 0.6, rate
    proc.terminate()
    proc.communicate(timeout=120)


def test_no_cgroup_is_left_after_an_exit_or_a_kill_9(spawn) -> None:
    assert run_rbox("run", "--net=none", "--memory", "256M", "--", "true", timeout=300).returncode == 0
    assert wait_until(lambda: rbox_leaves() == [], timeout=20), rbox_leaves()
    proc = spawn("run", "--net=none", "--memory", "256M", "--", "sleep", "300")
    assert wait_until(lambda: len(rbox_leaves()) == 2, timeout=120)
    proc.kill()
    proc.wait()
    assert wait_until(lambda: rbox_leaves() == [], timeout=30), rbox_leaves()


def test_no_user_manager_is_the_documented_error() -> None:
    # As under su or a batch system: no XDG_RUNTIME_DIR, no session bus address.
    r = run_rbox("run", "--net=none", "--pids-limit", "100", "--", "true", timeout=300,
                 env={"XDG_RUNTIME_DIR": "", "DBUS_SESSION_BUS_ADDRESS": ""})
    assert r.returncode == 125
    assert r.stderr.startswith("rbox: error: resource limits need your systemd user manager, and none is "
                               "reachable (XDG_RUNTIME_DIR is not set)\nhint: log in with a session")


def test_without_limits_there_is_no_systemd_call() -> None:
    r = run_rbox("run", "--net=none", "--debug", "--", "true", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "systemd-run" not in r.stderr and "cgroup:" not in r.stderr
