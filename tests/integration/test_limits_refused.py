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


# A host with no cgroup2 mount at all (RHEL 8's default, cgroup v1 only): the tmpfs
# above still leaves the hidden cgroup2 mounts in mountinfo, and mounts copied into a
# user namespace are locked (no unmount, no bind of `/` without them). So the script
# builds a root on a tmpfs: each top-level directory of `/` but /sys bound recursively,
# its symlinks copied, a fresh sysfs (the new network namespace allows it) with nothing
# below /sys/fs/cgroup, and pivots into it (pivot_root . ., the old root detached).
NO_CGROUP2 = r'''
set -e
r=$(mktemp -d)
mount -t tmpfs rbox-root "$r"
for e in /*; do
  if [ -L "$e" ]; then cp -P "$e" "$r$e"
  elif [ "$e" = /sys ]; then mkdir "$r/sys" && mount -t sysfs sysfs "$r/sys"
  elif [ -d "$e" ]; then mkdir "$r$e" && mount --rbind "$e" "$r$e"
  fi
done
back=$PWD
cd "$r"
PATH=$PATH:/usr/sbin:/sbin pivot_root . .
umount -l .
cd "$back"
echo "cgroup2 mounts: $(grep -c ' - cgroup2 ' /proc/self/mountinfo || true)" >&2
exec "$@"
'''


def without_any_cgroup2(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["unshare", "-Urmn", "sh", "-c", NO_CGROUP2, "sh", sys.executable, "-m", "rootless", *args],
                          cwd=tmp_path, env=rbox_env(None), capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_with_no_cgroup2_mount_at_all_limits_are_refused_with_the_kernel_option_and_the_rest_works(tmp_path) -> None:
    marker = tmp_path / "ran"
    # Positive control: the same namespace runs a sandbox without limits.
    r = without_any_cgroup2(tmp_path, "run", "--net=none", "--", "touch", str(marker))
    assert r.stderr.splitlines()[0] == "cgroup2 mounts: 0", r.stderr
    assert r.returncode == 0 and marker.exists(), r.stderr
    marker.unlink()
    r = without_any_cgroup2(tmp_path, "run", "--net=none", "--memory", "64M", "--", "touch", str(marker))
    assert r.stderr.splitlines()[0] == "cgroup2 mounts: 0", r.stderr
    assert r.returncode == 125, r.stderr
    assert r.stderr.splitlines()[-2:] == [
        "rbox: error: resource limits need cgroup v2, and /sys/fs/cgroup is not a cgroup2 mount here",
        "hint: an administrator can boot with systemd.unified_cgroup_hierarchy=1; see rbox(1), RESOURCE LIMITS"]
    assert not marker.exists()
    # `rbox check` there says so too.
    r = without_any_cgroup2(tmp_path, "check")
    assert "warn  cgroup v2: not mounted: resource limits are unavailable" in r.stdout, r.stdout + r.stderr
