"""Runtime state: one directory of rbox's own, one locked subdirectory per sandbox.

Runs in: parent.

A network helper needs a path for a moment during setup (slirp4netns's API socket with
-p, pasta's --pid FIFO). Such paths never go straight into a shared directory, where
another local user could have planted a symlink under the name rbox picks. They live in

    $XDG_RUNTIME_DIR/rbox     when XDG_RUNTIME_DIR is a real directory of the user's
    /tmp/rbox-UID             otherwise

which rbox creates with mode 0700 and checks with an lstat-like look at the open
directory (O_NOFOLLOW): a real directory, owned by the user, mode exactly 0700. Anything
else there (a symlink, another user's directory) is refused with an error that names its
owner, never used, never cleaned.

Inside, each sandbox gets `PID-RANDOM/` with a file `lock` that rbox holds an flock on
(close-on-exec: no helper inherits it) until it removes the directory, right after setup.
After a `kill -9` the kernel drops the lock, and the next rbox to start removes every
unlocked subdirectory (`sweep`). A new subdirectory is made and locked while holding a
shared flock on the base directory, which a sweep takes exclusively: no sweep can see a
subdirectory between its mkdir and its lock.

Every operation goes through directory descriptors (dir_fd=, O_NOFOLLOW), so a link is
removed as a link and never followed. When no helper needs state, a start costs one
failed open (or, when the directory exists, one sweep of it) and creates nothing.
"""

from __future__ import annotations

import errno
import os
import stat

from rootless import log
from rootless.errors import HostSetupError, resource_error

TYPE_CHECKING = False  # not `from typing import ...`: typing costs 9 ms at start-up
if TYPE_CHECKING:
    from collections.abc import Mapping

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
LOCK = "lock"
NAMED = "named"       # named sandboxes' directories (rootless/instance/registry.py): not swept here


def base_path(environ: Mapping[str, str] | None = None) -> str:
    """Where rbox's state directory is (nothing is created or checked here beyond
    XDG_RUNTIME_DIR itself: a real directory owned by the user, else /tmp is used)."""
    environ = os.environ if environ is None else environ
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if runtime.startswith("/"):
        try:
            st = os.lstat(runtime)
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
                return os.path.join(runtime, "rbox")
        except OSError:
            pass
        # After `su`, XDG_RUNTIME_DIR often still names the other user's directory.
        log.step(f"XDG_RUNTIME_DIR `{runtime}` is not a directory of yours: state goes to /tmp")
    return f"/tmp/rbox-{_uid_name()}"


def _uid_name() -> str:
    """Our uid for the name in /tmp: as is in the initial user namespace; with the outer
    uid it maps to after it in any other (uid 0 of `unshare -r` is one user's, uid 0 of
    another user's `unshare -r` someone else's: one /tmp/rbox-0 would make their runs
    refuse each other's directory)."""
    uid = os.getuid()
    try:
        with open("/proc/self/uid_map") as f:
            extents = [tuple(int(n) for n in line.split()) for line in f if line.strip()]
    except (OSError, ValueError):
        return str(uid)
    if extents == [(0, 0, 4294967295)]:
        return str(uid)
    for inner, outer, count in extents:
        if inner <= uid < inner + count:
            return f"{uid}-{outer + uid - inner}"
    return str(uid)


def sweep(environ: Mapping[str, str] | None = None) -> None:
    """At start: remove what earlier sandboxes killed during setup left behind.

    Cheap: when the directory does not exist (or is not rbox's own: `create` reports
    that, when state is needed) this is one failed open."""
    try:
        fd = os.open(base_path(environ), DIR_FLAGS)
    except OSError:
        return
    try:
        if _problem(os.fstat(fd)) is None:
            _sweep(fd)
    finally:
        os.close(fd)


class SandboxDir:
    """`PID-RANDOM/` in the state directory, locked until `remove`."""

    def __init__(self, base: str, base_fd: int, name: str, fd: int, lock_fd: int):
        self.path = f"{base}/{name}"
        self.name, self.base_fd, self.fd, self.lock_fd = name, base_fd, fd, lock_fd

    def remove(self) -> None:
        """Remove the directory and drop the lock (idempotent)."""
        if self.fd < 0:
            return
        try:
            _empty(self.fd)
            os.rmdir(self.name, dir_fd=self.base_fd)
        except OSError as e:
            log.step(f"cannot remove `{self.path}`: {e.strerror}; the next start removes it")
        for fd in (self.lock_fd, self.fd, self.base_fd):
            os.close(fd)
        self.fd = self.lock_fd = self.base_fd = -1


def create(environ: Mapping[str, str] | None = None) -> SandboxDir:
    """A new, locked directory for one sandbox's state (HostSetupError, exit 125, when the
    state directory is not rbox's own)."""
    import fcntl

    base = base_path(environ)
    base_fd = _open_base(base)
    try:
        _sweep(base_fd)
        name = f"{os.getpid()}-{os.urandom(4).hex()}"
        fcntl.flock(base_fd, fcntl.LOCK_SH)      # no sweep between mkdir and flock
        try:
            os.mkdir(name, 0o700, dir_fd=base_fd)
            fd = os.open(name, DIR_FLAGS, dir_fd=base_fd)
            lock_fd = os.open(LOCK, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                              dir_fd=fd)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        finally:
            fcntl.flock(base_fd, fcntl.LOCK_UN)
    except OSError as e:
        os.close(base_fd)
        raise resource_error(e) or HostSetupError(f"cannot create a directory in `{base}`: {e.strerror}",
                                                  hint=_ELSEWHERE) from None
    log.step(f"state in {base}/{name}")
    return SandboxDir(base, base_fd, name, fd, lock_fd)


def _open_base(base: str) -> int:
    """The state directory, created if missing, open, and verified."""
    created = False
    try:
        os.mkdir(base, 0o700)
        created = True
    except FileExistsError:
        pass
    except OSError as e:
        # Out of space or inodes (a full $XDG_RUNTIME_DIR): said as such, with the fix.
        raise resource_error(e) or HostSetupError(f"cannot create rbox's state directory `{base}`: {e.strerror}",
                                                  hint=_ELSEWHERE) from None
    try:
        fd = os.open(base, DIR_FLAGS)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _refusal(base, os.lstat(base)) from None
        raise HostSetupError(f"cannot open rbox's state directory `{base}`: {e.strerror}", hint=_ELSEWHERE) from None
    st = os.fstat(fd)
    if created and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) != 0o700:
        os.fchmod(fd, 0o700)       # a umask such as 0277 took bits away
        st = os.fstat(fd)
    if _problem(st) is not None:
        os.close(fd)
        raise _refusal(base, st)
    return fd


open_verified = _open_base      # for rootless/instance: its `named/` is checked by the same rules


_ELSEWHERE = ("set XDG_RUNTIME_DIR to a directory of your own (mode 0700); rbox then keeps its state in "
              "$XDG_RUNTIME_DIR/rbox")


def _problem(st: os.stat_result) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != os.getuid():
        return "is not yours"
    if stat.S_IMODE(st.st_mode) != 0o700:
        return f"has mode {stat.S_IMODE(st.st_mode):04o}, not 0700"
    return None


def _refusal(base: str, st: os.stat_result) -> HostSetupError:
    what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode) else "a file"
    if st.st_uid != os.getuid():
        owner = _owner(st.st_uid)
        return HostSetupError(
            f"`{base}` is {what} of {owner}, not rbox's own state directory: someone may have planted it to "
            "catch or redirect rbox's files, so rbox does not use it",
            hint=f"ask its owner or an administrator to remove `{base}`, or {_ELSEWHERE}")
    if stat.S_ISDIR(st.st_mode):
        return HostSetupError(f"rbox's state directory `{base}` {_problem(st)}",
                              hint=f"`chmod 0700 {base}`, or remove it (rbox creates it again)")
    return HostSetupError(f"`{base}` is {what}, not rbox's own state directory",
                          hint=f"remove it (`rm {base}`); rbox creates the directory again")


def _owner(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _sweep(base_fd: int) -> None:
    """Remove every unlocked sandbox directory; skip the sweep when another rbox is
    creating its own right now (it sweeps itself)."""
    import fcntl

    try:
        fcntl.flock(base_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return
    try:
        with os.scandir(base_fd) as entries:
            names = [entry.name for entry in entries]
        for name in names:
            if name != NAMED:
                _remove_if_stale(base_fd, name)
    finally:
        fcntl.flock(base_fd, fcntl.LOCK_UN)


def _remove_if_stale(base_fd: int, name: str) -> None:
    import fcntl

    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=base_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            _unlink(base_fd, name)      # not rbox's; a link goes as a link
        return
    try:
        try:
            lock = os.open(LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            lock = -1                   # made, then killed before its lock: stale too
        try:
            if lock >= 0:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return                      # a running sandbox's
        finally:
            if lock >= 0:
                os.close(lock)
        log.step(f"remove stale state {name}")
        _empty(fd)
        os.rmdir(name, dir_fd=base_fd)
    except OSError as e:
        log.step(f"cannot remove stale state {name}: {e.strerror}")
    finally:
        os.close(fd)


def _empty(dir_fd: int, depth: int = 0) -> None:
    """Remove everything in the directory open at dir_fd, without following links."""
    with os.scandir(dir_fd) as it:
        entries = list(it)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and depth < 8:
            sub = os.open(entry.name, DIR_FLAGS, dir_fd=dir_fd)
            try:
                _empty(sub, depth + 1)
            finally:
                os.close(sub)
            os.rmdir(entry.name, dir_fd=dir_fd)
        else:
            _unlink(dir_fd, entry.name)


def _unlink(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
