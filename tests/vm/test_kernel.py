"""On a real kernel of a known version (the VM test beds: bookworm's 6.1, bullseye's 5.10),
`rbox check` finds exactly the facilities that version has. The old-kernel tier
(tests/oldkernel) only emulates an old kernel with a seccomp filter; here the kernel
itself answers, e.g. 5.10's close_range without CLOSE_RANGE_CLOEXEC (EINVAL, not ENOSYS)
and a cgroup v2 directory without cgroup.kill. Debian backports none of these."""

from __future__ import annotations

import json
import os

import pytest

from rootless import kernel
from tests.integration.helpers import run_rbox

pytestmark = [pytest.mark.needs_vm, pytest.mark.needs_userns]


def test_rbox_check_finds_the_facilities_of_this_kernel_version() -> None:
    r = run_rbox("check", "--json", timeout=300)
    found = {f["name"]: f for f in json.loads(r.stdout)}
    running = kernel.version(os.uname().release)
    expected, seen = {}, {}
    for name, since, *_ in kernel.FACILITIES:
        finding = found[f"kernel: {name} (Linux {since})"]
        expected[name] = "present" if running >= kernel.version(since) else "absent"
        seen[name] = finding["detail"].split(":")[0]
        assert finding["status"] == "ok", finding
    assert seen == expected, os.uname().release
