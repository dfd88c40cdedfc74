#!/usr/bin/python3
"""Run a command as on Linux 4.18: every system call added since answers ENOSYS.

Runs in: CI, as root (tests/oldkernel/run), before dropping to the test user:
    /usr/bin/python3 tests/oldkernel/launch.py -- runuser -u rboxtest -- ...

The filter is installed here and inherited across fork and exec by everything below it:
runuser, pytest, rbox, stage-1, PID 1, the command, newuidmap, slirp4netns, pasta
(seccomp(2)). As root it needs no no_new_privs, so the setuid newuidmap keeps working
under it; run by anyone else, libseccomp sets no_new_privs (and newuidmap cannot work).

libseccomp's Python binding (Debian's python3-seccomp) is a test-only dependency: the
system interpreter has it, the suite's venv need not.
"""

from __future__ import annotations

import errno
import os
import sys

import seccomp  # Debian: python3-seccomp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from syscalls import AFTER_4_18, LAST_NUMBER  # noqa: E402


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print("usage: launch.py -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    command = argv[argv.index("--") + 1:]
    flt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    if os.geteuid() == 0:
        flt.set_attr(seccomp.Attr.CTL_NNP, 0)
    first = min(nr for _, nr, _ in AFTER_4_18)
    for nr in range(first, LAST_NUMBER + 1):
        flt.add_rule(seccomp.ERRNO(errno.ENOSYS), nr)
    flt.load()
    os.execvp(command[0], command)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv))
