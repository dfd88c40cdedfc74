"""Which signals reach the command, and a signalfd for the parent.

Runs in: parent (signalfd) and init (the sets and masks).

The parent blocks the forwarded signals before it forks, so stage-1 and init start with
them blocked too: stage-1 never reacts to them (it only waits for init), init takes them
with sigwaitinfo(). The parent reads them from a signalfd, so that a signal during setup
aborts it cleanly and one during the run is forwarded to PID 1.

init has a process group of its own (init.py says why), so every signal it gets is
meant for the command, and it forwards them all.
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct

from rootless.syscalls import libc

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
             signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT)
TERMINATING = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
# Every signal a new process may have reset to its default (exec keeps ignored ones, and
# Python ignores SIGPIPE and SIGXFSZ): for the command and for the host-side helpers.
ALL_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
SFD_CLOEXEC = 0o2000000



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
