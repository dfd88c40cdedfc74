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


def read_signalfd(fd: int) -> tuple[int, int]:
    """(signal number, si_code) of one pending signal (struct signalfd_siginfo)."""
    data = os.read(fd, 128)
    signo, _errno, code = struct.unpack_from("Iii", data)
    return signo, code
