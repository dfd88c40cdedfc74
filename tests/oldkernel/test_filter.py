"""The old-kernel tier's own proof: under tests/oldkernel/launch.py every system call
added after 4.18 answers ENOSYS, in the test runner and in a sandbox's command alike (the
filter is inherited by rbox, stage-1, PID 1 and the command), while rbox still runs.

The positive control is the main run: there the same probe finds pidfd_open working
(this module's tests are gated on needs_old_kernel, the others on needs_pidfd)."""

from __future__ import annotations

import errno
import json
import sys

import pytest

from tests.integration.helpers import run_rbox
from tests.oldkernel.syscalls import AFTER_4_18

PROBE = ("import ctypes, json, sys\n"
         "libc = ctypes.CDLL(None, use_errno=True)\n"
         "out = {}\n"
         "for nr in map(int, sys.argv[1:]):\n"
         "    ctypes.set_errno(0)\n"
         "    rc = libc.syscall(nr, -1, 0, 0, 0, 0, 0)\n"
         "    out[nr] = ctypes.get_errno() if rc < 0 else 0\n"
         "print(json.dumps(out))\n")
NUMBERS = [str(nr) for _, nr, _ in AFTER_4_18]


def answers(text: str) -> dict[int, int]:
    return {int(k): v for k, v in json.loads(text).items()}


@pytest.mark.needs_old_kernel
@pytest.mark.needs_userns
def test_every_syscall_after_4_18_answers_enosys_in_the_runner_and_in_the_sandbox() -> None:
    import subprocess

    here = subprocess.run([sys.executable, "-c", PROBE, *NUMBERS], capture_output=True, text=True, check=True)
    assert set(answers(here.stdout).values()) == {errno.ENOSYS}
    r = run_rbox("run", "--net=none", "--", sys.executable, "-c", PROBE, *NUMBERS)
    assert r.returncode == 0, r.stderr
    assert set(answers(r.stdout).values()) == {errno.ENOSYS}


@pytest.mark.needs_pidfd
def test_the_probe_sees_new_syscalls_where_the_kernel_has_them() -> None:
    # Positive control (main run, new kernel): pidfd_open (434) with pid -1 is EINVAL, not ENOSYS.
    import subprocess

    here = subprocess.run([sys.executable, "-c", PROBE, "434"], capture_output=True, text=True, check=True)
    assert answers(here.stdout)[434] != errno.ENOSYS


def test_the_table_is_ordered_and_unique() -> None:
    numbers = [nr for _, nr, _ in AFTER_4_18]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert all(tuple(map(int, v.split("."))) > (4, 18) for _, _, v in AFTER_4_18)
