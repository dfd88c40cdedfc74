"""Limits asked for on a host that cannot enforce them: a clear error, never a run
without the limit. The limits themselves are tested in tests/vm.

The host this needs (no cgroup2 at /sys/fs/cgroup) is made for the test: a user and
mount namespace of its own with an empty tmpfs over /sys/fs/cgroup, so the refusal is
shown on every host, whatever its cgroup layout."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from tests.integration.helpers import rbox_env

pytestmark = pytest.mark.needs_userns


def without_cgroup2(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    rbox = " ".join(shlex.quote(w) for w in (sys.executable, "-m", "rootless", *args))
    script = f"mount -t tmpfs rbox-test /sys/fs/cgroup && grep ' /sys/fs/cgroup ' /proc/self/mountinfo >&2 && {rbox}"
    return subprocess.run(["unshare", "-Urm", "sh", "-c", script], cwd=tmp_path, env=rbox_env(None),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("limit", [["--memory", "64M"], ["--pids-limit", "10"], ["--cpus", "0.5"]])
def test_limits_without_cgroup2_are_refused(tmp_path, limit: list[str]) -> None:
    marker = tmp_path / "ran"
    r = without_cgroup2(tmp_path, "run", *limit, "--", "touch", str(marker))
    assert r.returncode == 125, r.stderr
    lines = r.stderr.splitlines()
    # The layout is really there: one mount at /sys/fs/cgroup, our tmpfs.
    mounts = [line.split(" - ")[1].split()[:2] for line in lines if " /sys/fs/cgroup " in line and " - " in line]
    assert mounts[-1:] == [["tmpfs", "rbox-test"]]
    # (The caller is uid 0 of that namespace, with no subordinate ids: rbox warns first.)
    assert lines[-2:] == ["rbox: error: resource limits need cgroup v2, and /sys/fs/cgroup is not a cgroup2 "
                          "mount here",
                          "hint: an administrator can boot with systemd.unified_cgroup_hierarchy=1; "
                          "see rbox(1), RESOURCE LIMITS"]
    assert not marker.exists()
