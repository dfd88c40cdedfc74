"""Mounts the host makes after the start: shown in the sandbox read-only, by stage-1.

Runs in: stage-1 (the watcher, for the whole run) and init (`tree_built`: one write).

The sandbox's mounts were once slaves of the host's (bubblewrap's way), so a mount made
on the host later (an autofs home, sshfs, a USB stick) propagated in as the host made
it: writable, since read-only flags are applied once, at the start. Now init makes its
mount namespace (M1) private before building anything (rootfs.py), and stage-1 shows
the host's later mounts itself:

  1. Before M1 is copied, stage-1 unshares a mount namespace of its own (Mw): a copy of
     the host's view whose mounts stay slaves of the host's, so the host's later mounts
     keep arriving there (copies in a new user namespace turn shared into slave,
     mount_namespaces(7)). It records Mw's mounts at that moment (the baseline) and keeps
     a descriptor of M1, taken before init exists.
  2. It polls Mw's /proc/self/mountinfo, which reports POLLPRI when a mount comes or
     goes (proc(5)). A mount not in the baseline that the sandbox shows from the host
     (under the read-only `/`, a --bind/--ro-bind source or the working directory, and
     not under a tmpfs, a hide or a later bind) is cloned (open_tree OPEN_TREE_CLONE:
     a detached copy, which receives no propagation), made read-only unless it lies
     under a writable bind, and private, so that nothing the host mounts below it later
     arrives except through this watcher (mount_setattr), and moved to its place in M1
     (setns, move_mount). When the host unmounts it, the clone is unmounted in M1.
  3. M1 is shared after the pivot (rootfs.py), so a clone moved in propagates to a mount
     namespace made below M1 for the command (the nested one of class 1). Crossing into
     that less privileged user namespace, a read-only copy gets MNT_LOCK_READONLY
     (fs/namespace.c, lock_mnt_tree): not even uid 0 there can make it writable.

A mount that reached M1 between its copy and init's first step is simply part of the
tree and is made read-only with the rest; the watcher may add a read-only clone on top.
Kernels without mount_setattr (before 5.12): no watcher; later mounts stay invisible.
"""

from __future__ import annotations

import errno
import os
import select

from rootless import log, mounts
from rootless import syscalls as sc
from rootless.mounts import Bind, Dir, Op, RootBind

TYPE_CHECKING = False  # not `from typing import ...`: typing costs 9 ms at start-up
if TYPE_CHECKING:
    from rootless.spec import Spec

# init's end of the "tree built" pipe, set in init right after the fork.
_built_fd = [-1]


class Lost(Exception):
    """The watcher cannot go on (it could not return to its own mount namespace)."""


class Mount:
    """One line of /proc/self/mountinfo (proc(5)).

    `key` names the mount for the baseline: mount ids are reused after an unmount, so
    the id alone could mistake a new mount for an old one."""

    __slots__ = ("id", "parent", "point", "key")

    def __init__(self, mount_id: int, parent: int, point: str, key: str):
        self.id, self.parent, self.point, self.key = mount_id, parent, point, key


def parse_mountinfo(text: str) -> list[Mount]:
    """Mounts from mountinfo text, in the kernel's order (pure)."""
    found = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            # Not the root field: a cgroup v1 mount shows it relative to the reader's
            # cgroup namespace, which stage-1 changes after reading the baseline.
            found.append(Mount(int(fields[0]), int(fields[1]), mounts.unescape(fields[4]),
                               " ".join(fields[:3] + fields[4:5] + fields[sep + 1:sep + 3])))
        except (ValueError, IndexError):
            continue
    return found


def under(path: str, root: str) -> bool:
    return path == root or root == "/" or path.startswith(root + "/")


def places(host_path: str, ops: list[Op]) -> list[tuple[str, bool]]:
    """Where the sandbox shows `host_path`, and whether it is writable there (pure).

    `ops` is the plan as init carried it out (mounts.optimize order): a bind shows its
    source at its destination, unless an operation carried out after it (a deeper mount,
    or one at the same place) covers the spot. Only a writable --bind (the working
    directory, --home=rw, --bind) makes a place writable."""
    found = []
    for i, op in enumerate(ops):
        if isinstance(op, RootBind):
            src, writable = "/", False
        elif isinstance(op, Bind):
            src, writable = op.src, not op.ro
        else:
            continue
        if not under(host_path, src):
            continue
        rest = host_path[len(src.rstrip("/")):]
        place = (op.dst.rstrip("/") + rest) or "/"
        if any(under(place, later.dst) for later in ops[i + 1:] if not isinstance(later, Dir)):
            continue
        found.append((place, writable))
    return found


def tree_built() -> None:
    """In init, once the sandbox's tree is complete and shared: the watcher may start."""
    fd = _built_fd[0]
    if fd >= 0:
        _built_fd[0] = -1
        try:
            os.write(fd, b"B")
        except OSError:
            pass  # stage-1 is gone, and init with it in a moment
        os.close(fd)


def prepare() -> Watcher | None:
    """Step 1, in stage-1 before the sandbox's mount namespace is copied. It costs about
    0.2 ms on the start-up path; all the rest happens in stage-1 after the fork, while
    init builds the sandbox."""
    try:
        sc.unshare(sc.CLONE_NEWNS)
        return Watcher()
    except OSError as e:
        log.step(f"late mounts: cannot watch the host's mounts ({e.strerror}); they stay invisible")
        return None


class Watcher:
    def __init__(self) -> None:
        self.fds: list[int] = []
        try:
            self.own_ns = self._open("/proc/self/ns/mnt", os.O_RDONLY)
            self.mountinfo = self._open("/proc/self/mountinfo", os.O_RDONLY)
            self.baseline_text = self.read_mountinfo()    # parsed after the fork
            self.built_r, self.built_w = os.pipe()
            self.fds += [self.built_r, self.built_w]
        except OSError:
            for fd in self.fds:
                os.close(fd)
            raise
        self.sandbox_ns = self.proc = -1
        self.baseline: set[str] = set()
        self.ops: list[Op] = []
        self.shown: dict[str, list[int]] = {}     # key -> clones moved into the sandbox
        self.active = False

    def _open(self, path: str, flags: int) -> int:
        fd = os.open(path, flags | os.O_CLOEXEC)
        self.fds.append(fd)
        return fd

    def read_mountinfo(self) -> bytes:
        chunks = []
        os.lseek(self.mountinfo, 0, os.SEEK_SET)
        while chunk := os.read(self.mountinfo, 65536):
            chunks.append(chunk)
        return b"".join(chunks)

    def keep_sandbox_ns(self) -> None:
        """After the sandbox's mount namespace (M1) was created, before init is forked:
        a handle that init's later steps (pivot_root, a non-dumpable PID 1) cannot take."""
        try:
            self.sandbox_ns = self._open("/proc/self/ns/mnt", os.O_RDONLY)
        except OSError as e:
            log.step(f"late mounts: cannot keep the sandbox's mount namespace ({e.strerror}); they stay invisible")

    def in_init(self) -> None:
        """In init right after the fork: keep only the write end of the pipe."""
        for fd in self.fds:
            if fd != self.built_w:
                os.close(fd)
        _built_fd[0] = self.built_w

    def wait(self, init_pid: int, spec: Spec) -> int:
        """Stage-1's wait for init, watching the host's mounts meanwhile; init's status."""
        os.close(self.built_w)
        if not sc.has_mount_setattr():
            log.step("late mounts: no mount_setattr (Linux 5.12): host mounts made after the start stay invisible")
            return os.waitpid(init_pid, 0)[1]
        try:
            if self.sandbox_ns < 0:
                raise OSError(errno.EBADF, "no handle on the sandbox's mount namespace")
            sc.setns(self.own_ns, sc.CLONE_NEWNS)
            self.proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            pidfd = os.pidfd_open(init_pid)
        except OSError as e:
            log.step(f"late mounts: cannot watch ({e.strerror}); host mounts made from now on stay invisible")
            return os.waitpid(init_pid, 0)[1]
        self.baseline = {m.key for m in parse_mountinfo(os.fsdecode(self.baseline_text))}
        self.ops = mounts.optimize(mounts.plan(spec))
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.register(self.built_r, select.POLLIN)
        poller.register(self.mountinfo, select.POLLPRI)
        while True:
            ready = dict(poller.poll())
            if pidfd in ready:
                break
            if self.built_r in ready:
                self.active = os.read(self.built_r, 1) == b"B"
                poller.unregister(self.built_r)
            if self.active:
                self.update()
        os.close(pidfd)
        return os.waitpid(init_pid, 0)[1]

    def update(self) -> None:
        """Bring the sandbox in line with the host's later mounts; never raises: a
        failure leaves a mount invisible, which is safe, and the command runs on."""
        try:
            self.sync(parse_mountinfo(os.fsdecode(self.read_mountinfo())))
        except (OSError, Lost) as e:
            log.step(f"late mounts: stopped watching: {e}")
            self.active = False

    def sync(self, now: list[Mount]) -> None:
        keys = {m.key for m in now}
        for key in [k for k in self.shown if k not in keys]:
            for clone in self.shown.pop(key):
                self.remove(clone)
        by_id = {m.id: m for m in now}
        for m in sorted(now, key=lambda m: mounts.depth(m.point)):
            if m.key not in self.baseline and m.key not in self.shown:
                self.show(m, by_id)

    def show(self, m: Mount, by_id: dict[int, Mount]) -> None:
        targets = places(m.point, self.ops)
        clones: list[int] = []
        if not targets:
            self.shown[m.key] = clones
            return
        try:
            src = os.open(m.point, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return  # already gone: the next change tells
        try:
            if mount_id(src) != m.id:
                return  # something else is mounted on top of it (on the host too)
            self.shown[m.key] = clones
            for place, writable in targets:
                try:
                    clone = self.clone(src, m, by_id)
                except OSError as e:
                    log.step(f"late mount {m.point}: cannot clone it: {e.strerror}")
                    return
                try:
                    how = self.move_in(clone, place, writable)
                except OSError as e:
                    os.close(clone)
                    log.step(f"late mount {m.point}: not shown at {place}: {e.strerror}")
                    continue
                clones.append(clone)
                log.step(f"late mount {m.point} -> {place} [{how}]")
        finally:
            os.close(src)

    def clone(self, src: int, m: Mount, by_id: dict[int, Mount]) -> int:
        """A detached copy of the mount `src` refers to. Mounts that arrived below it
        later are shown one by one; only mounts that came with it as one tree (a
        recursive bind on the host) are locked to it (open_tree refuses EINVAL without
        AT_RECURSIVE: they would uncover what is under them) and come along."""
        try:
            return sc.open_tree(src, sc.OPEN_TREE_CLONE)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
        for child in by_id.values():
            if child.key not in self.shown and descends(child, m, by_id):
                self.shown[child.key] = []
        return sc.open_tree(src, sc.OPEN_TREE_CLONE | sc.AT_RECURSIVE)

    def move_in(self, clone: int, place: str, writable: bool) -> str:
        """Move `clone` to `place` in the sandbox; 'rw' or 'ro', as it was shown."""
        sc.setns(self.sandbox_ns, sc.CLONE_NEWNS)
        try:
            # No symlink on the way: under a writable bind the command could plant one
            # to send the mount elsewhere. Writable only where the spot itself is.
            target = sc.openat2(place, os.O_PATH, sc.RESOLVE_NO_SYMLINKS)
            try:
                writable = writable and not os.fstatvfs(target).f_flag & os.ST_RDONLY
                sc.mount_setattr(clone, sc.AT_RECURSIVE, 0 if writable else sc.MOUNT_ATTR_RDONLY, sc.MS_PRIVATE)
                sc.move_mount(clone, target)
            finally:
                os.close(target)
        finally:
            self.back_home()
        return "rw" if writable else "ro"

    def remove(self, clone: int) -> None:
        """Unmount a clone the host's mount is gone for. umount2 takes a path only: the
        clone's own is /proc/self/fd/N of the host's /proc (the sandbox's /proc does not
        show stage-1), reached from a working directory there."""
        sc.setns(self.sandbox_ns, sc.CLONE_NEWNS)
        try:
            os.fchdir(self.proc)
            sc.umount2(f"self/fd/{clone}", sc.MNT_DETACH)
        except OSError as e:
            log.step(f"late mount: cannot unmount a clone: {e.strerror}")  # gone with its parent
        finally:
            self.back_home()
            os.close(clone)

    def back_home(self) -> None:
        try:
            sc.setns(self.own_ns, sc.CLONE_NEWNS)
        except OSError as e:
            raise Lost(f"cannot return to the watcher's mount namespace: {e.strerror}") from None


def descends(m: Mount, ancestor: Mount, by_id: dict[int, Mount]) -> bool:
    seen = 0
    while m.parent in by_id and m.parent != m.id and seen < len(by_id):
        m = by_id[m.parent]
        if m.id == ancestor.id:
            return True
        seen += 1
    return False


def mount_id(fd: int) -> int:
    """The id of the mount `fd` is on (/proc/self/fdinfo, `mnt_id:`, since 3.15)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    return -1
