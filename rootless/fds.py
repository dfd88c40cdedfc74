"""Which file descriptors reach the command: 0, 1, 2 and the ones passed with --pass-fd.

Runs in: parent (`reserve_stdio` and `seal`, first thing at start) and init (`inherit`,
just before the command starts).

A descriptor the caller left open is a capability: a directory fd of a read-only path is
writable through /proc/self/fd/N, past every read-only mount and --hide. So rbox marks
every descriptor from 3 up close-on-exec as soon as it starts, the passed ones included:
no helper it runs (newuidmap, slirp4netns, pasta, busctl) can get one, whatever fd
numbers the helper's own file actions use. Only init, right before posix_spawn, clears
the flag on the passed ones, so the command gets them at the same numbers.

Before that, 0, 1 and 2 are reserved: a closed one gets /dev/null, so that none of
rbox's own descriptors (a helper's output memfd, a sync pipe) can land there and be
taken for the command's stdin by a helper (slirp4netns' --help probe broke that way).
"""

from __future__ import annotations

import errno
import os
import sys

from rootless.errors import BUG_HINT, RboxError

PASSED: list[int] = []        # what seal() left for the command (for a re-exec of rbox)


def reserve_stdio() -> None:
    """/dev/null on each of 0, 1, 2 that is closed, inheritable like a standard stream."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)      # the lowest free number: this one
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        os.set_inheritable(fd, True)
        # Python left the stream None when the fd was closed at start-up.
        if fd == 0 and sys.stdin is None:
            sys.stdin = open(0, closefd=False)
        elif fd == 1 and sys.stdout is None:
            sys.stdout = open(1, "w", closefd=False)
        elif fd == 2 and sys.stderr is None:
            sys.stderr = open(2, "w", closefd=False)


def seal(passed: list[int]) -> None:
    """Every fd from 3 up close-on-exec (`passed` too: see the module docstring)."""
    PASSED[:] = passed
    from rootless import syscalls as sc

    try:
        sc.close_range_cloexec(3, 0xFFFFFFFF)
        return
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL):
            raise RboxError(f"cannot mark inherited file descriptors close-on-exec: {e.strerror}",
                            hint=BUG_HINT) from None
    # Before Linux 5.11: one by one. listdir's own fd is in the list, closed by then.
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd >= 3:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass


def inherit(passed: list[int] | None = None) -> None:
    """Let the passed fds cross the next exec (init: the command; cgroups: the re-exec
    of rbox under systemd-run, which parses --pass-fd again)."""
    for fd in PASSED if passed is None else passed:
        os.set_inheritable(fd, True)


def check_passable(text: str) -> int:
    """The fd number of `--pass-fd TEXT`, if it can be passed (SpecError otherwise)."""
    from rootless.errors import SpecError

    try:
        fd = int(text)
    except ValueError:
        raise SpecError(f"invalid value `{text}` for `--pass-fd`: not a number",
                        hint="give a descriptor number, for example --pass-fd 3") from None
    if fd < 3:
        raise SpecError(f"--pass-fd {fd}: 0, 1 and 2 are always passed",
                        hint="give a descriptor number of 3 or more")
    try:
        os.fstat(fd)
    except OSError:
        raise SpecError(f"--pass-fd {fd}: file descriptor {fd} is not open",
                        hint=f"open it in the calling shell first, for example `rbox run --pass-fd {fd} ... "
                             f"{fd}<file` or `exec {fd}<file`") from None
    return fd
