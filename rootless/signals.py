"""Which signals reach the command, and a signalfd for the parent.

Runs in: parent (signalfd) and init (the sets and masks).

The parent blocks the forwarded signals before it forks, so stage-1 and init start with
them blocked too: stage-1 never reacts to them (it only waits for init), init takes them
with sigwaitinfo(). The parent reads them from a signalfd, so that a signal during setup
aborts it cleanly and one during the run is forwarded to PID 1.

init has a session and process group of its own (init.py says why), so every signal it
gets is meant for the command, and it forwards them all.

Every start-up module imports the built-in `_signal`, not `signal`: `signal` wraps the
same functions to return enum members, and importing it loads enum, functools and
collections (about 3 ms, a tenth of a run). The numbers are the same ints; only `name()`
wants the enum, and loads it when a signal's name is printed.
"""

from __future__ import annotations

import _signal as signal  # not `signal`: it imports enum (3 ms at start-up); signals.py says more
import ctypes
import os
import struct

from rootless.syscalls import libc

_PASSED_ON = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
              signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT)
# What rbox's caller ignored (nohup, `trap '' HUP INT`, the SIGINT and SIGQUIT a
# non-interactive shell ignores for `cmd &`) stays ignored for the command, as exec keeps
# it (signal(7): "the dispositions of ignored signals are left unchanged" by execve),
# and rbox neither forwards nor acts on it. It must not be blocked either: a blocked signal
# is queued even when ignored, and the signalfd would deliver it. Read once, at import,
# before rbox changes any disposition (Python reports a disposition it inherited as is).
IGNORED = frozenset(s for s in _PASSED_ON if signal.getsignal(s) == signal.SIG_IGN)
FORWARDED = tuple(s for s in _PASSED_ON if s not in IGNORED)
TERMINATING = tuple(s for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT) if s not in IGNORED)
# Every signal a new process may have reset to its default (exec keeps ignored ones, and
# Python ignores SIGPIPE and SIGXFSZ): for the host-side helpers, which are rbox's own.
ALL_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
# For the command: the same, except what the caller ignored.
COMMAND_DEFAULTS = ALL_SIGNALS - IGNORED
SFD_CLOEXEC = 0o2000000


def name(signo: int) -> str:
    """SIGTERM for 15: for messages only (it imports `signal`, hence enum, on first use)."""
    import signal as named

    return named.Signals(signo).name    # ValueError for a number that names no signal


def block(signals: tuple[int, ...]) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)


def signalfd(signals: tuple[int, ...]) -> int:
    mask = bytearray(128)                       # glibc's sigset_t: 1024 bits
    for sig in signals:
        mask[(sig - 1) // 8] |= 1 << ((sig - 1) % 8)
    buf = (ctypes.c_char * 128).from_buffer(mask)
    fd = libc.signalfd(-1, buf, SFD_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), "signalfd")
    return int(fd)


def read_signalfd(fd: int) -> int:
    """The number of one pending signal (ssi_signo of struct signalfd_siginfo)."""
    return int(struct.unpack_from("I", os.read(fd, 128))[0])
