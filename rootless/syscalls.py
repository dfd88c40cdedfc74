"""The system calls Python 3.11 lacks, and process controls.

Runs in: stage-1 and init (the parent only uses `prctl` helpers and statfs; the SquashFS
reader, in the parent and the unpacking sandbox, zstd_decompress).

This is the only module that uses ctypes (also for libzstd's one function, which the
SquashFS reader needs and Python 3.11 lacks). libc is loaded once with use_errno=True and
every wrapper raises OSError(errno, strerror, path) through `oserror()`, so errno is never
lost (udocker's `os.strerror(-1)` is the counter-example). Kernel constants keep their
kernel names. Process controls (PDEATHSIG, NO_NEW_PRIVS, the capability bounding set) go
through python-prctl's C module `_prctl`; its pure-Python wrapper `prctl` costs 4 ms to
import, which rbox does not spend on its start-up path.
"""

from __future__ import annotations

import ctypes
import errno
import os

import _prctl

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000

MNT_DETACH = 0x2

AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
# The new mount API (open_tree, move_mount: 5.2; openat2: 5.6), for latemounts.py.
AT_EMPTY_PATH = 0x1000
OPEN_TREE_CLONE = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
RESOLVE_NO_SYMLINKS = 0x4
RESOLVE_NO_MAGICLINKS = 0x2
RESOLVE_IN_ROOT = 0x10

# System call numbers without a glibc wrapper. mount_setattr (5.12) came after the
# unification of new syscall numbers across architectures (424 and up), so it is 442
# everywhere; pivot_root is older and differs per architecture.
SYS_MOUNT_SETATTR = 442
SYS_CLOSE_RANGE = 436
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_OPENAT2 = 437
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "ppc64le": 271, "s390x": 280}

CLOSE_RANGE_CLOEXEC = 1 << 2
KEYCTL_JOIN_SESSION_KEYRING = 1

_libc = ctypes.CDLL(None, use_errno=True)
libc = _libc  # shared with net/loopback.py and signals.py: one handle, one errno discipline
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.sethostname.argtypes = (ctypes.c_char_p, ctypes.c_size_t)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def oserror(call: str, path: str | None = None) -> OSError:
    err = ctypes.get_errno()
    exc = OSError(err, os.strerror(err), path)
    exc.call = call  # type: ignore[attr-defined]
    return exc


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def unshare(flags: int) -> None:
    if _libc.unshare(flags) < 0:
        raise oserror("unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)) < 0:
        raise oserror("mount", target)


def umount2(target: str, flags: int) -> None:
    if _libc.umount2(_b(target), flags) < 0:
        raise oserror("umount2", target)


def pivot_root(new_root: str, put_old: str) -> None:
    nr = SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(38, f"pivot_root: unknown system call number on {os.uname().machine}")
    if _libc.syscall(nr, _b(new_root), _b(put_old)) < 0:
        raise oserror("pivot_root", new_root)


def make_readonly_recursive(path: str) -> None:
    """mount_setattr(MOUNT_ATTR_RDONLY, AT_RECURSIVE): one call for a whole tree (5.12+).

    Raises OSError(ENOSYS) on older kernels; the caller then remounts mount by mount.
    """
    attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    if os.environ.get("RBOX_TEST_NO_MOUNT_SETATTR") == "1":
        # Lets the integration suite exercise the pre-5.12 fallback on a new kernel.
        raise OSError(38, os.strerror(38), path)
    rc = _libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, _b(path), AT_RECURSIVE,
                       ctypes.byref(attr), ctypes.sizeof(attr))
    if rc < 0:
        raise oserror("mount_setattr", path)


def close_range_cloexec(first: int, last: int) -> None:
    """close_range(first, last, CLOSE_RANGE_CLOEXEC): mark a range close-on-exec in one
    call (Linux 5.11). OSError(ENOSYS or EINVAL) on older kernels: the caller falls back."""
    if _libc.syscall(SYS_CLOSE_RANGE, ctypes.c_uint(first), ctypes.c_uint(last),
                     ctypes.c_uint(CLOSE_RANGE_CLOEXEC)) < 0:
        raise oserror("close_range")


def join_session_keyring() -> int:
    """keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL): a new, empty, anonymous session keyring
    for this process and its children (keyrings(7)); its serial. OSError(ENOSYS) where
    the kernel has no keyrings."""
    nr = SYS_KEYCTL.get(os.uname().machine)
    if nr is None:
        raise OSError(38, f"keyctl: unknown system call number on {os.uname().machine}")
    serial = _libc.syscall(nr, ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING), ctypes.c_void_p(None))
    if serial < 0:
        raise oserror("keyctl")
    return int(serial)


def has_mount_setattr() -> bool:
    """Whether the kernel has mount_setattr (5.12), and with it open_tree and move_mount.

    A call with size 0 is refused with EINVAL by a kernel that has it, ENOSYS otherwise
    (or EPERM under a seccomp filter that denies it: also a no)."""
    if os.environ.get("RBOX_TEST_NO_MOUNT_SETATTR") == "1":
        return False
    rc = _libc.syscall(SYS_MOUNT_SETATTR, -1, None, 0, None, 0)
    return rc < 0 and ctypes.get_errno() == 22


def mount_setattr(fd: int, flags: int, attr_set: int, propagation: int = 0) -> None:
    """mount_setattr on the mount `fd` refers to (AT_EMPTY_PATH)."""
    attr = _MountAttr(attr_set, 0, propagation, 0)
    if _libc.syscall(SYS_MOUNT_SETATTR, fd, b"", flags | AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)) < 0:
        raise oserror("mount_setattr")


def open_tree(fd: int, flags: int) -> int:
    """open_tree(fd, "", AT_EMPTY_PATH | flags): with OPEN_TREE_CLONE, a detached copy."""
    rc = _libc.syscall(SYS_OPEN_TREE, fd, b"", flags | AT_EMPTY_PATH | os.O_CLOEXEC)
    if rc < 0:
        raise oserror("open_tree")
    return int(rc)


def move_mount(from_fd: int, to_fd: int) -> None:
    """Attach the detached mount `from_fd` on top of the place `to_fd` refers to."""
    if _libc.syscall(SYS_MOVE_MOUNT, from_fd, b"", to_fd, b"", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0:
        raise oserror("move_mount")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(path: str, flags: int, resolve: int, dirfd: int = AT_FDCWD) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve)
    rc = _libc.syscall(SYS_OPENAT2, dirfd, _b(path), ctypes.byref(how), ctypes.sizeof(how))
    if rc < 0:
        raise oserror("openat2", path)
    return int(rc)


def setns(fd: int, nstype: int) -> None:
    if _libc.setns(fd, nstype) < 0:
        raise oserror("setns")


def sethostname(name: str) -> None:
    raw = name.encode()
    if _libc.sethostname(raw, len(raw)) < 0:
        raise oserror("sethostname")


# --- process controls (prctl(2)) -------------------------------------------------------

def set_pdeathsig(sig: int) -> None:
    _prctl.prctl(_prctl.PR_SET_PDEATHSIG, sig)


def set_no_new_privs() -> None:
    _prctl.prctl(_prctl.PR_SET_NO_NEW_PRIVS, 1)


def set_dumpable(on: bool) -> None:
    _prctl.prctl(_prctl.PR_SET_DUMPABLE, 1 if on else 0)


PR_CAPBSET_DROP = 24


def drop_bounding_set() -> None:
    """Drop every capability from the bounding set (needs CAP_SETPCAP in our user ns).

    Capability by capability until the kernel says EINVAL (one past its last), with no
    file read: this runs after the mounts, where /proc/sys/kernel/cap_last_cap may be
    hidden or replaced by a --tmpfs or --bind of the user's; and through libc rather
    than _prctl, which refuses capabilities newer than the libcap it was built with."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0:
            if ctypes.get_errno() == errno.EINVAL and cap > 0:
                return
            raise oserror("prctl(PR_CAPBSET_DROP)")


# Capabilities a FUSE daemon keeps (fusekeeper.py): what overlaying files takes (copy
# a file up with its owner, mode and attributes; make whiteouts), nothing more.
CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID, CAP_MKNOD, CAP_SETFCAP = 0, 1, 2, 3, 4, 27, 31
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def keep_only_capabilities(caps: tuple[int, ...]) -> None:
    """The next program exec'd has exactly `caps` (of those this process has), whatever
    its uid (capabilities(7), "Transformation of capabilities during execve()"): the
    bounding set cut down to them (a uid 0 gets its bounding set), and them inheritable
    and ambient (another uid keeps only the ambient set; Linux 4.3)."""
    for cap in [c for c in range(64) if c not in caps]:
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0:
            if ctypes.get_errno() == errno.EINVAL and cap > 0:
                break
            raise oserror("prctl(PR_CAPBSET_DROP)")
    header, data = _CapHeader(_CAP_VERSION_3, 0), (_CapData * 2)()
    if _libc.capget(ctypes.byref(header), data) < 0:
        raise oserror("capget")
    for cap in caps:
        data[cap // 32].inheritable |= 1 << (cap % 32)
    if _libc.capset(ctypes.byref(header), data) < 0:
        raise oserror("capset")
    for cap in caps:
        if _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0:
            raise oserror("prctl(PR_CAP_AMBIENT_RAISE)")


def statfs_type(path: str) -> int:
    """The file system's magic number (statfs(2) f_type, the first field on every
    64-bit ABI; the buffer is larger than struct statfs anywhere)."""
    buf = ctypes.create_string_buffer(256)
    if _libc.statfs(_b(path), buf) < 0:
        raise oserror("statfs", path)
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


_zstd: ctypes.CDLL | None = None


def zstd_decompress(data: bytes, limit: int) -> bytes | None:
    """One zstd frame decompressed by libzstd (Python 3.11 has no zstd module) into at
    most `limit` bytes: a frame that holds more is an error, so a hostile one cannot
    take memory (ZSTD_decompress stops at dstCapacity). None when libzstd.so.1 is not
    there (the caller runs the `zstd` program instead); ValueError for bad data."""
    global _zstd
    if _zstd is None:
        try:
            _zstd = ctypes.CDLL("libzstd.so.1")
        except OSError:
            return None
        _zstd.ZSTD_decompress.restype = ctypes.c_size_t
        _zstd.ZSTD_decompress.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t)
        _zstd.ZSTD_isError.restype = ctypes.c_uint
        _zstd.ZSTD_isError.argtypes = (ctypes.c_size_t,)
    out = ctypes.create_string_buffer(max(limit, 1))
    size = _zstd.ZSTD_decompress(out, limit, data, len(data))
    if _zstd.ZSTD_isError(size):
        raise ValueError("zstd: the frame does not decompress within its size")
    return out.raw[:size]
