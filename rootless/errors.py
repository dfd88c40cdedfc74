"""Errors and exit codes.

Runs in: any role.

Exit codes follow the podman/docker "chroot standard" (see rbox(1), EXIT STATUS):
125 rbox itself failed (including bad options), 126 the command cannot be executed,
127 the command was not found, 128+N the command was killed by signal N, anything
else is the command's own exit code.
"""

from __future__ import annotations

import errno
import os

EXIT_SETUP = 125
EXIT_CANNOT_EXEC = 126
EXIT_NOT_FOUND = 127


BUG_HINT = "run again with --debug and report this as a bug"
SLOW_HINT = ("the machine may be overloaded, or a path hangs (an unreachable network filesystem): run again "
             "with --debug to see the last step")


class RboxError(Exception):
    """A failure of rbox itself: one message line, a hint line with what to do, an exit code.

    Every construction names a hint (tests/unit/test_hints.py scans the source for
    ones that do not), unless its class has a `default_hint`."""

    exit_code = EXIT_SETUP
    default_hint: str | None = None

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        if exit_code is not None:
            self.exit_code = exit_code


class SpecError(RboxError):
    """Bad options or a bad combination of them (found before anything starts)."""


class HostSetupError(RboxError):
    """The host lacks something rbox needs (subordinate ids, user namespaces, ...)."""


class NamespaceError(RboxError):
    """Creating or mapping a namespace failed."""


class MountError(RboxError):
    """Building the sandbox's filesystem failed."""


class NetworkError(RboxError):
    """A network helper (slirp4netns, pasta) failed."""


class CgroupError(RboxError):
    """A limit was asked for and this host cannot enforce it."""


class ProtocolError(RboxError):
    """A peer process died, timed out, or sent something unexpected during setup."""

    default_hint = ("something ended the sandbox while it was being set up (a kill, the out-of-memory "
                    "killer, a crash): run again with --debug to see the last step")


# Resource exhaustion, wherever it happens (fork, posix_spawn, pipe, mkdir, ...): said in
# words that name the limit and how to raise it, never as an internal error.
_RESOURCES = {
    errno.EAGAIN: ("rbox ran out of processes",
                   "your limit on processes is reached (`ulimit -u`{nproc}; every process and thread of "
                   "yours counts): end some of them, or raise it, e.g. `ulimit -u 4096`"),
    errno.EMFILE: ("rbox ran out of file descriptors",
                   "your limit on open files (`ulimit -n`{nofile}) is too low for rbox and its network "
                   "helper: raise it, e.g. `ulimit -n 1024`"),
    errno.ENFILE: ("the system ran out of file descriptors",
                   "the system-wide limit (fs.file-max) is reached: try again later, or tell the administrators"),
    errno.ENOMEM: ("rbox ran out of memory", "free some memory, or raise `ulimit -v`, and try again"),
    errno.ENOSPC: ("no space left", "the filesystem is full or out of inodes (see `df -h` and `df -i`): free some "
                   "space there{runtime}"),
    errno.EDQUOT: ("your disk quota is exceeded", "free some of your space there (see `quota`)"),
}


def resource_error(e: OSError, doing: str = "") -> RboxError | None:
    """The RboxError for an OSError that means a resource ran out; None for any other.

    `doing` says what rbox was doing (`while starting slirp4netns`)."""
    name = os.fsdecode(e.filename) if isinstance(e.filename, (str, bytes)) else ""
    hint = resource_hint(e.errno or 0, name)
    if hint is None:
        return None
    what = _RESOURCES[e.errno or 0][0]
    if "/" not in name:
        name = ""          # a call's name (`signalfd`), not a file's
    if name:
        # posix_spawn names the program it could not start; other calls the file.
        name = {errno.EAGAIN: f" (starting `{name}`)", errno.ENOSPC: f" for `{name}`",
                errno.EDQUOT: f" for `{name}`"}.get(e.errno or 0, f" (`{name}`)")
    return RboxError(f"{what}{' ' + doing if doing else ''}{name}: {e.strerror}", hint=hint)


def resource_hint(err: int, filename: str = "") -> str | None:
    """What to do when resource `err` (EAGAIN, EMFILE, ...) ran out; None for other errnos."""
    if err not in _RESOURCES:
        return None
    def limit(name: str) -> str:
        try:
            import resource  # an extension module: out of descriptors, even this import can fail
        except ImportError:
            return ""
        soft = resource.getrlimit(getattr(resource, name))[0]
        return " is unlimited" if soft == resource.RLIM_INFINITY else f" is {soft}"

    runtime = os.environ.get("XDG_RUNTIME_DIR") or ""
    in_runtime = bool(runtime and filename.startswith(runtime.rstrip("/") + "/"))
    return _RESOURCES[err][1].format(nproc=limit("RLIMIT_NPROC"), nofile=limit("RLIMIT_NOFILE"),
                                     runtime=", or set XDG_RUNTIME_DIR to a directory with room" if in_runtime
                                     else "")


def resource_hint_in(output: str) -> str | None:
    """The hint for a resource a helper ran out of, from its output (strerror texts);
    None when it names none."""
    for err in (errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM, errno.ENOSPC, errno.EDQUOT):
        if os.strerror(err) in output:
            return resource_hint(err)
    if "Cannot fork" in output:          # the shell's words (pasta's watchdog, sh)
        return resource_hint(errno.EAGAIN)
    return None


def waitstatus_to_code(status: int) -> int:
    """Turn a wait status into rbox's exit code: n for exit(n), 128+N for signal N.

    os.waitstatus_to_exitcode gives -N for a signal; shells report 128+N, and so does
    bwrap (`propagate_exit_status`), so that is what rbox exits with.
    """
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code
