"""Starting the command as PID 2, and how a failure to start it is reported.

Runs in: init (PID 1, after pivot_root).

init prepares its own state the way the command must start (working directory,
NO_NEW_PRIVS, an empty capability bounding set), then starts the command with
posix_spawn(3): glibc creates it with CLONE_VFORK and returns exec's errno directly,
so no copy of the interpreter is forked and no error pipe is needed. NO_NEW_PRIVS and
the bounding set are inherited by the command; init needs neither any more, because the
mounts are done and it only reaps and forwards signals from here on.
"""

from __future__ import annotations

import errno
import os
import signal

from rootless import syscalls as sc
from rootless.errors import EXIT_CANNOT_EXEC, EXIT_NOT_FOUND, RboxError
from rootless.spec import Spec

# Every signal back to its default and unblocked in the command: init blocks the
# forwarded ones, and exec would keep both the mask and ignored dispositions.
DEFAULT_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


def start(spec: Spec) -> int:
    """Start the command as PID 2; its pid. RboxError (126/127/125) when it cannot."""
    prepare(spec)
    try:
        path = find_command(spec.command[0], spec.env.get("PATH"))
        return os.posix_spawn(path, spec.command, spec.env,
                              # No controlling terminal when stdin is not one: a program
                              # inside cannot push input into the caller's terminal with
                              # TIOCSTI (CVE-2017-5226, bubblewrap#142).
                              setsid=not spec.tty,
                              setsigmask=(), setsigdef=DEFAULT_SIGNALS)
    except OSError as e:
        raise exec_error(spec, e.errno or 0) from None


def prepare(spec: Spec) -> None:
    try:
        os.chdir(spec.workdir)
    except OSError as e:
        raise RboxError(f"cannot change to `{spec.workdir}` in the sandbox: {e.strerror}",
                        hint="-w/--workdir must name a directory that exists inside the sandbox") from None
    if not spec.root:
        # Your own uid inside: no capabilities, not even in the bounding set.
        sc.drop_bounding_set()
    # Always: a setuid or file-capability binary inside gains nothing (prctl(2)).
    sc.set_no_new_privs()


def find_command(name: str, path: str | None) -> str:
    """The file to execute for `name`, searched the way a shell does.

    Not execvp(3): glibc's execvp reports EACCES when any PATH entry cannot be searched
    (a directory under another user's 0700 home), so a missing command would exit 126
    instead of 127. Like bash, rbox takes the first executable regular file on PATH,
    else the first regular file (its exec then fails with EACCES: 126), else ENOENT (127).
    """
    if "/" in name:
        return name
    fallback = None
    for d in (path if path is not None else os.defpath).split(os.pathsep):
        candidate = os.path.join(d or ".", name)
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate
            fallback = fallback or candidate
    if fallback is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
    return fallback


def exec_error(spec: Spec, err: int) -> RboxError:
    reason = os.strerror(err) if err else "unknown error"
    cmd = spec.command[0]
    if err == errno.ENOENT:
        if "/" in cmd and os.path.exists(os.path.join(spec.workdir, cmd)):
            # execve gives ENOENT for a script whose interpreter is missing, too.
            return RboxError(f"cannot execute `{cmd}`: its interpreter (#! line) was not found",
                             exit_code=EXIT_NOT_FOUND)
        return RboxError(f"command not found: `{cmd}`", exit_code=EXIT_NOT_FOUND)
    return RboxError(f"cannot execute `{cmd}`: {reason}", exit_code=EXIT_CANNOT_EXEC)
