"""Bring `lo` up with ioctl(SIOCSIFFLAGS), without iproute2.

Runs in: init (inside the new network namespace).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct

from rootless.errors import NamespaceError, resource_hint
from rootless.syscalls import libc

AF_INET, SOCK_DGRAM, SOCK_CLOEXEC = 2, 2, 0o2000000
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFF_UP = 0x1
_IFREQ = "16sH14x"   # struct ifreq: name[IFNAMSIZ], short ifr_flags, padding to 32 bytes



def up(name: str = "lo") -> None:
    # A raw socket(2) through libc: the `socket` module costs 6 ms to import.
    fd = libc.socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)
    if fd < 0:
        err = ctypes.get_errno()
        raise NamespaceError(f"cannot open a socket to bring `{name}` up: {os.strerror(err)}",
                             hint=resource_hint(err) or "run again with --debug and report this as a bug")
    try:
        req = struct.pack(_IFREQ, name.encode(), 0)
        flags = struct.unpack(_IFREQ, fcntl.ioctl(fd, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(fd, SIOCSIFFLAGS, struct.pack(_IFREQ, name.encode(), flags | IFF_UP))
    except OSError as e:
        raise NamespaceError(f"cannot bring `{name}` up: {e.strerror}",
                             hint="run again with --debug and report this as a bug") from None
    finally:
        os.close(fd)
