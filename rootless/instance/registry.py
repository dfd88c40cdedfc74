"""Named sandboxes on disk: one directory per name, locked by its supervisor for its whole life.

Runs in: parent (`rbox run --name`, the supervisor, and ps, exec, stop, stats, logs).

    $XDG_RUNTIME_DIR/rbox/named/  0700, checked as state.py checks its base (or /tmp/rbox-UID/named/)
      NAME/                       0700
        lock        flock held by the sandbox's supervisor while it lives: held means alive.
                    A pid can be reused by another process; a lock cannot outlive its holder.
        record      what ps, exec, stats and stop need: a Python literal (repr), read with
                    ast.literal_eval; replaced by rename, never rewritten in place
        env         the command's environment, for exec: K=V, NUL-separated (mode 0600)
        sock        the supervisor's socket, made once the command runs: exec gets the namespaces
                    there, stop asks there
        stopping    made when `rbox stop` asked
        log, log.1  a detached command's output, at most logfile.LOG_MAX bytes each
        exit        a detached command's exit code, once it ended by itself

A directory whose lock is free and that has no `exit` is stale (its supervisor was killed):
the next rbox command on named sandboxes removes it, so `ps` never lists a dead one. One with
`exit` stays for `ps -a` and `rbox logs` until `rbox stop` or a new sandbox of that name
removes it. Creating, replacing and removing a NAME/ take an flock on `named/` itself, so
no two rbox decide about one name at once; reading (ps) takes none. Everything goes
through directory descriptors and O_NOFOLLOW: a link planted anywhere is never followed.
"""

from __future__ import annotations

import errno
import fcntl
import os

from rootless import log, state
from rootless.errors import RboxError

LOCK, RECORD, ENV, SOCK, STOPPING, EXIT = "lock", "record", "env", "sock", "stopping", "exit"
FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


def named_path(environ: dict[str, str] | None = None) -> str:
    return os.path.join(state.base_path(environ), state.NAMED)


def open_named(create: bool, environ: dict[str, str] | None = None) -> int | None:
    """`named/`, checked (a real directory of the user's, mode 0700); None when it does
    not exist and `create` is false (then there is no named sandbox at all)."""
    base = state.base_path(environ)
    if create:
        os.close(state.open_verified(base))
        return state.open_verified(os.path.join(base, state.NAMED))
    path = os.path.join(base, state.NAMED)
    try:
        fd = os.open(path, state.DIR_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise state._refusal(path, os.lstat(path)) from None
        raise
    st = os.fstat(fd)
    if state._problem(st) is not None:
        os.close(fd)
        raise state._refusal(path, st)
    return fd


class Entry:
    """One NAME/ directory, open."""

    def __init__(self, named_fd: int, name: str, fd: int):
        self.named_fd, self.name, self.fd = named_fd, name, fd
        self.lock_fd = -1            # held by the supervisor (and the reserving rbox before it)

    # -- reading ------------------------------------------------------------------------

    def alive(self) -> bool:
        """Its supervisor holds the lock. A shared probe: two readers never disturb each other,
        and it fails at once while the supervisor holds its exclusive lock."""
        if self.lock_fd >= 0:
            return True
        try:
            fd = os.open(LOCK, os.O_RDONLY | FILE_FLAGS, dir_fd=self.fd)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(fd)

    def environment(self) -> dict[str, str]:
        """The command's environment (the `env` file), bytes that are not UTF-8 kept."""
        try:
            with os.fdopen(os.open(ENV, os.O_RDONLY | FILE_FLAGS, dir_fd=self.fd), "rb") as f:
                data = f.read(1 << 24)
        except OSError:
            return {}
        env = {}
        for item in data.split(b"\0"):
            key, sep, value = item.partition(b"=")
            if sep and key:
                env[os.fsdecode(key)] = os.fsdecode(value)
        return env

    def record(self) -> dict[str, object]:
        """The record; {} when it cannot be read. A literal, not JSON: the supervisor
        writes it with repr(), so it never imports json (and re), which would cost it
        0.4 MiB of its 12 MiB (bench/exec.py measures); only the readers import ast."""
        import ast

        try:
            with os.fdopen(os.open(RECORD, os.O_RDONLY | FILE_FLAGS, dir_fd=self.fd), "rb") as f:
                value = ast.literal_eval(f.read(1 << 22).decode("utf-8", "surrogateescape"))
        except (OSError, ValueError, SyntaxError, MemoryError, RecursionError):
            return {}
        return value if isinstance(value, dict) else {}

    def has(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            return True
        except OSError:
            return False

    def exit_code(self) -> int | None:
        """The exit code of a detached command that ended by itself; None while it runs."""
        try:
            with os.fdopen(os.open(EXIT, os.O_RDONLY | FILE_FLAGS, dir_fd=self.fd), "rb") as f:
                return int(f.read(32))
        except (OSError, ValueError):
            return None

    def status(self) -> str:
        """`starting`, `running`, `stopping`, `exited` or `stale` (its supervisor is gone)."""
        if self.alive():
            if self.has(STOPPING):
                return "stopping"
            return "running" if self.has(SOCK) else "starting"
        return "exited" if self.exit_code() is not None else "stale"

    # -- writing (the reserving rbox, then the supervisor) --------------------------------

    def write(self, name: str, data: bytes) -> None:
        """Write a file of this directory whole: a temporary name, then rename over."""
        tmp = f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | FILE_FLAGS, 0o600, dir_fd=self.fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def write_record(self, record: dict[str, object]) -> None:
        self.write(RECORD, repr(record).encode("utf-8", "surrogateescape"))

    def remove(self) -> None:
        """Remove the directory, under `named/`'s lock, only while NAME is still this very
        directory (a new sandbox may have taken the name since this one went stale)."""
        fcntl.flock(self.named_fd, fcntl.LOCK_EX)
        try:
            _remove_locked(self.named_fd, self.name, self.fd)
        finally:
            fcntl.flock(self.named_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        for fd in (self.lock_fd, self.fd, self.named_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.lock_fd = self.fd = self.named_fd = -1


def _remove_locked(named_fd: int, name: str, fd: int) -> None:
    try:
        if os.stat(name, dir_fd=named_fd, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
            return
        state._empty(fd)
        os.rmdir(name, dir_fd=named_fd)
    except OSError as e:
        log.step(f"cannot remove the named sandbox `{name}`: {e.strerror}")


def reserve(name: str, record: dict[str, object], environ: dict[str, str] | None = None) -> Entry:
    """NAME/ made and locked, its record written; RboxError (125) when a sandbox of that name
    lives. An ended one of that name (its `exit` kept for `ps -a` and `logs`) is replaced."""
    named_fd = open_named(create=True, environ=environ)
    assert named_fd is not None
    try:
        fcntl.flock(named_fd, fcntl.LOCK_EX)
        try:
            entry = _reserve_locked(named_fd, name)
        finally:
            fcntl.flock(named_fd, fcntl.LOCK_UN)
    except BaseException:
        os.close(named_fd)
        raise
    entry.write_record(record)
    log.step(f"named sandbox `{name}` in {named_path(environ)}/{name}")
    return entry


def _reserve_locked(named_fd: int, name: str) -> Entry:
    _sweep_locked(named_fd)
    try:
        os.mkdir(name, 0o700, dir_fd=named_fd)
    except FileExistsError:
        old = _open_entry(named_fd, name)
        if old is not None and old.alive():
            status = old.status()
            os.close(old.fd)
            raise RboxError(f"a sandbox named `{name}` is {'already ' if status == 'running' else ''}{status}",
                            hint=f"choose another --name, or stop that one first: `rbox stop {name}`") from None
        if old is not None:
            _remove_locked(named_fd, name, old.fd)
            os.close(old.fd)
        else:
            _unlink(named_fd, name)          # not a directory of rbox's: a link goes as a link
        os.mkdir(name, 0o700, dir_fd=named_fd)
    fd = os.open(name, state.DIR_FLAGS, dir_fd=named_fd)
    entry = Entry(named_fd, name, fd)
    entry.lock_fd = os.open(LOCK, os.O_WRONLY | os.O_CREAT | os.O_EXCL | FILE_FLAGS, 0o600, dir_fd=fd)
    fcntl.flock(entry.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return entry


def _open_entry(named_fd: int, name: str) -> Entry | None:
    try:
        return Entry(named_fd, name, os.open(name, state.DIR_FLAGS, dir_fd=named_fd))
    except OSError:
        return None


def _unlink(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def sweep(environ: dict[str, str] | None = None) -> None:
    """Remove what supervisors killed left (stale entries), unless another rbox is deciding
    about names right now (it sweeps itself)."""
    named_fd = open_named(create=False, environ=environ)
    if named_fd is None:
        return
    try:
        try:
            fcntl.flock(named_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return
        try:
            _sweep_locked(named_fd)
        finally:
            fcntl.flock(named_fd, fcntl.LOCK_UN)
    finally:
        os.close(named_fd)


def _sweep_locked(named_fd: int) -> None:
    with os.scandir(named_fd) as it:
        names = [e.name for e in it]
    for name in names:
        entry = _open_entry(named_fd, name)
        if entry is None:
            _unlink(named_fd, name)
            continue
        try:
            if entry.status() == "stale":
                log.step(f"remove the stale named sandbox `{name}` (its supervisor was killed)")
                _remove_cgroups(entry.record())
                _remove_locked(named_fd, name, entry.fd)
        finally:
            os.close(entry.fd)


def _remove_cgroups(record: dict[str, object]) -> None:
    """The limits cgroup of a sandbox whose supervisor was killed: its processes died with
    the PID namespace; the empty directories go (the scope itself is systemd's)."""
    for key in ("cgroup", "supervisor_cgroup"):
        path = record.get(key)
        if isinstance(path, str) and path.startswith("/sys/fs/cgroup/"):
            try:
                os.rmdir(path)
            except OSError:
                pass


def entries(environ: dict[str, str] | None = None) -> list[Entry]:
    """Every NAME/ (stale ones included: callers ask `status()`), by name; each open."""
    named_fd = open_named(create=False, environ=environ)
    if named_fd is None:
        return []
    found: list[Entry] = []
    with os.scandir(named_fd) as it:
        names = sorted(e.name for e in it if not e.name.startswith("."))
    for name in names:
        entry = _open_entry(named_fd, name)
        if entry is not None:
            entry.named_fd = os.dup(named_fd) if found else named_fd
            found.append(entry)
    if not found:
        os.close(named_fd)
    return found


def find(name: str, environ: dict[str, str] | None = None) -> Entry | None:
    named_fd = open_named(create=False, environ=environ)
    if named_fd is None:
        return None
    entry = _open_entry(named_fd, name)
    if entry is None:
        os.close(named_fd)
    return entry


def not_found(name: str) -> RboxError:
    return RboxError(f"no sandbox named `{name}`",
                     hint="`rbox ps -a` lists yours; named sandboxes of another XDG_RUNTIME_DIR (a login "
                          "without one, su) are not seen here")
