"""Limits asked for on a host that cannot enforce them: a clear error, never a run
without the limit. This machine's cgroup v2 tree is not at /sys/fs/cgroup (a v1/v2
hybrid), which is exactly such a host; the limits themselves are tested in tests/vm."""

from __future__ import annotations

import pytest

from rootless import cgroups
from tests.integration.helpers import run_rbox

pytestmark = pytest.mark.needs_userns


@pytest.mark.parametrize("limit", [["--memory", "64M"], ["--pids-limit", "10"], ["--cpus", "0.5"]])
def test_limits_without_cgroup2_are_refused(tmp_path, limit: list[str]) -> None:
    if cgroups.cgroup2_mounted_at(cgroups.read("/proc/self/mountinfo")):
        pytest.skip("this host has cgroup v2 at /sys/fs/cgroup: the refusal cannot be shown here")
    marker = tmp_path / "ran"
    r = run_rbox("run", *limit, "--", "touch", str(marker), cwd=tmp_path)
    assert r.returncode == 125
    assert r.stderr == ("rbox: error: resource limits need cgroup v2, and /sys/fs/cgroup is not a cgroup2 mount "
                        "here\nhint: an administrator can boot with systemd.unified_cgroup_hierarchy=1; "
                        "see rbox(1), RESOURCE LIMITS\n")
    assert not marker.exists()
