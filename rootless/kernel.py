"""Kernel facilities newer than rbox's floor (Linux 4.18, RHEL 8): detected once, each
with what rbox does without it.

Runs in: parent (spawn.py asks `pidfd()` before each helper; `rbox check` lists them
all); the other roles use their own fallbacks on ENOSYS (fds.seal, mounts.make_readonly).

A facility is absent when its system call answers ENOSYS (the kernel predates it, or a
seccomp filter says so, as the old-kernel test tier's does: tests/oldkernel), or EINVAL
for a flag the kernel does not know, or when its file is missing. Every fallback keeps
the guarantee it stands in for; where none can, only that feature is refused, with the
kernel version it needs (`needs()`). rbox(1), HOST SETUP lists what each one costs.
"""

from __future__ import annotations

import errno
import os

FLOOR = "4.18"
_FOUND: dict[str, bool] = {}


def pidfd() -> bool:
    """pidfd_open(2), Linux 5.3. Python built against older headers has no os.pidfd_open."""
    if "pidfd" not in _FOUND:
        opener = getattr(os, "pidfd_open", None)
        found = False
        if opener is not None:
            try:
                os.close(opener(os.getpid()))
                found = True
            except OSError as e:
                if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.EPERM):
                    raise
        _FOUND["pidfd"] = found
    return _FOUND["pidfd"]


def pidfd_open(pid: int) -> int | None:
    """A pidfd for `pid`, or None where the kernel has none (ProcessLookupError when
    the process is gone)."""
    if not pidfd():
        return None
    return int(os.pidfd_open(pid))


def setns_pidfd() -> bool:
    """setns(2) with a pidfd, Linux 5.8: all of a process's namespaces in one call, or none
    (`rbox exec`; without it, one namespace file after the other). Probed on ourselves with
    CLONE_NEWUTS: EPERM (no CAP_SYS_ADMIN over our own UTS namespace) or success where a
    pidfd is taken, EINVAL where only namespace files are."""
    if "setns_pidfd" not in _FOUND:
        found = False
        if pidfd():
            from rootless import syscalls as sc

            fd = os.pidfd_open(os.getpid())
            try:
                sc.setns(fd, sc.CLONE_NEWUTS)
                found = True
            except OSError as e:
                found = e.errno == errno.EPERM
            finally:
                os.close(fd)
        _FOUND["setns_pidfd"] = found
    return _FOUND["setns_pidfd"]


def close_range_cloexec() -> bool:
    """close_range(2) with CLOSE_RANGE_CLOEXEC, Linux 5.11 (5.9 has close_range without
    the flag: EINVAL)."""
    from rootless import syscalls as sc

    fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.close_range_cloexec(fd, fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def mount_setattr() -> bool:
    """mount_setattr(2), Linux 5.12 (and with it open_tree and move_mount): the same probe
    the late-mount watcher uses (syscalls.has_mount_setattr)."""
    from rootless import syscalls as sc

    return sc.has_mount_setattr()


def seccomp_filter() -> bool:
    """Seccomp filters (CONFIG_SECCOMP_FILTER): PR_SET_SECCOMP with a NULL program is
    EFAULT where filters exist (the program is read first), EINVAL where they do not."""
    import ctypes

    from rootless import syscalls as sc

    sc.libc.prctl(22, 2, 0, 0, 0)      # PR_SET_SECCOMP, SECCOMP_MODE_FILTER, NULL
    return ctypes.get_errno() == errno.EFAULT


def keyrings() -> bool:
    """Kernel keyrings (CONFIG_KEYS): keyctl(KEYCTL_GET_KEYRING_ID, @s, create=0)."""
    import ctypes

    from rootless import syscalls as sc

    nr = sc.SYS_KEYCTL.get(os.uname().machine)
    if nr is None:
        return False
    if sc.libc.syscall(nr, ctypes.c_long(0), ctypes.c_long(-3), ctypes.c_long(0)) >= 0:
        return True
    return ctypes.get_errno() != errno.ENOSYS


def cgroup_kill(cgroup_dir: str | None) -> bool | None:
    """cgroup.kill, Linux 5.14 (only in a non-root cgroup v2 directory); None when there
    is no cgroup v2 directory of ours to look in."""
    if cgroup_dir is None:
        return None
    return os.path.exists(f"{cgroup_dir}/cgroup.kill")


def release() -> str:
    return os.uname().release


def version(release_text: str) -> tuple[int, int]:
    """(major, minor) of a kernel release string like `4.18.0-553.el8_10.x86_64` (pure)."""
    parts = release_text.split("-")[0].split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    except ValueError:
        return 0, 0


def below_floor(release_text: str) -> bool:
    major, minor = version(release_text)
    floor = tuple(int(p) for p in FLOOR.split("."))
    return (major, minor) != (0, 0) and (major, minor) < floor


# (name, the Linux version that added it, what rbox does with it, what it does without it)
FACILITIES = (
    ("pidfd_open", "5.3", "a network helper's death is noticed through its pidfd",
     "a network helper's death is noticed through a pipe only the helper holds (as promptly)"),
    ("close_range CLOEXEC", "5.11", "inherited descriptors are made close-on-exec in one call",
     "inherited descriptors are made close-on-exec one by one from /proc/self/fd (same result)"),
    ("mount_setattr", "5.12", "a read-only tree is made read-only in one call",
     "a read-only tree is remounted mount by mount (same result, slower with many mounts)"),
    ("cgroup.kill", "5.14", "what is left in the limits cgroup is killed in one write",
     "what is left in the limits cgroup is killed process by process from cgroup.procs"),
    ("seccomp filters", "3.5", "the command cannot reach the kernel keyrings (add_key, keyctl, request_key)",
     "no keyring filter: the command gets a session keyring of its own, but can reach your user keyring"),
    ("keyrings", "2.6.10", "the sandbox gets a session keyring of its own",
     "the kernel has no keyrings: nothing of yours to reach there"),
)


def survey(cgroup_dir: str | None = None) -> dict[str, bool | None]:
    """Every facility of FACILITIES: present, absent, or None (cannot tell here)."""
    return {"pidfd_open": pidfd(), "close_range CLOEXEC": close_range_cloexec(), "mount_setattr": mount_setattr(),
            "cgroup.kill": cgroup_kill(cgroup_dir), "seccomp filters": seccomp_filter(), "keyrings": keyrings()}
