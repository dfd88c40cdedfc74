"""A broken login node, in the VM's second phase (tests/vm/run): the delegation drop-in
removed (stock systemd then delegates only memory and pids, and cpu too from 252 on:
bullseye's 247 and bookworm's 252) and user.max_user_namespaces set to 0. rbox must say
exactly that, with the fixes."""

from __future__ import annotations

import json
import subprocess

import pytest

from rootless.hostcheck import FIX
from tests.integration.helpers import run_rbox

pytestmark = pytest.mark.needs_vm_broken


def systemd_version() -> int:
    # `systemd 247 (247.3-7+deb11u5)`: the first line of systemctl --version.
    out = subprocess.run(["systemctl", "--version"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[1])


def test_check_names_the_missing_delegation_and_the_disabled_user_namespaces() -> None:
    r = run_rbox("check", "--json", timeout=300)
    assert r.returncode == 1
    found = {f["name"]: f for f in json.loads(r.stdout)}
    delegation = found["delegated controllers"]
    # Stock delegation: memory pids, and cpu from systemd 252 on (rbox(1), HOST SETUP).
    expected = "cpu memory pids; missing io" if systemd_version() >= 252 else "memory pids; missing cpu io"
    assert (delegation["status"], delegation["detail"]) == ("warn", expected)
    assert delegation["fix"] == FIX["delegate"]
    userns = found["user namespaces allowed"]
    assert (userns["status"], userns["detail"], userns["fix"]) == (
        "fail", "user.max_user_namespaces is 0", FIX["userns_sysctl"])
    assert found["user namespace creation"]["status"] == "fail"


def test_rbox_run_gives_the_documented_error() -> None:
    r = run_rbox("run", "--net=none", "--", "true", timeout=300)
    assert r.returncode == 125
    assert r.stderr.splitlines()[-2:] == [
        "rbox: error: cannot create a user namespace: the limit on user namespaces is reached (ENOSPC)",
        "hint: the limit user.max_user_namespaces is reached or 0; see rbox(1), HOST SETUP"]


def test_a_limit_on_an_undelegated_controller_names_it_and_the_drop_in() -> None:
    r = run_rbox("run", "--net=none", "--io-weight", "100", "--", "true", timeout=300)
    assert r.returncode == 125
    assert r.stderr.splitlines()[:2] == [
        "rbox: error: the cgroup controller(s) io are not delegated to you",
        "hint: an administrator can install helpers/user@.service.d/delegate.conf (Delegate=cpu cpuset io "
        "memory pids); see rbox(1), HOST SETUP"]
