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
import fcntl
import os
import termios

from rootless import console, fds, seccomp
from rootless import syscalls as sc
from rootless.errors import EXIT_CANNOT_EXEC, EXIT_NOT_FOUND, RboxError, resource_error, resource_hint
from rootless.signals import COMMAND_DEFAULTS
from rootless.spec import Spec


def start(spec: Spec) -> tuple[int, int | None]:
    """Start the command as PID 2: (its pid, the pty master or None).

    Never in the caller's session: with no pty it has a session of its own and no
    controlling terminal at all, so it cannot push input into the caller's terminal with
    TIOCSTI (CVE-2017-5226, bubblewrap#142); with a pty, it is in init's session, whose
    controlling terminal is that pty (console.py).
    RboxError (126/127/125) when it cannot be started.
    """
    prepare(spec)
    master, slave = open_pty() if spec.pty else (None, None)
    # Everything init holds is close-on-exec (fds.py); the command gets 0, 1, 2 and the
    # descriptors passed on purpose, at their own numbers.
    fds.inherit(spec.pass_fds)
    # Again, right before the spawn: nothing of init may be dumpable while the command runs.
    sc.set_dumpable(False)
    try:
        pid = spawn(spec, slave)
    except OSError as e:
        raise exec_error(spec, e.errno or 0) from None
    finally:
        if slave is not None:
            os.close(slave)
    return pid, master


def spawn(spec: Spec, slave: int | None) -> int:
    """posix_spawn the command; with a pty, in a process group of its own in init's
    session, made the pty's foreground group, so the terminal's job control works as on
    a real terminal (Ctrl-Z stops it; a group whose parent is in the same session is not
    orphaned: credentials(7), "Process groups"). Without a pty, in a session of its own
    with no controlling terminal at all.

    A file without a #! line fails with ENOEXEC; like execvp(3) and every shell, rbox
    then runs it with /bin/sh."""
    path = find_command(spec.command[0], spec.env.get("PATH"))
    argv = spec.command
    if slave is None:
        kwargs: dict[str, object] = {"setsid": True}
    else:
        kwargs = {"setpgroup": 0, "file_actions": [(os.POSIX_SPAWN_DUP2, slave, fd) for fd in (0, 1, 2)]}
    # Every signal at its default (but what rbox's caller ignored) and unblocked: init
    # blocks the forwarded ones.
    kwargs.update(setsigmask=(), setsigdef=COMMAND_DEFAULTS)
    try:
        pid = os.posix_spawn(path, argv, spec.env, **kwargs)  # type: ignore[arg-type]
    except OSError as e:
        if e.errno != errno.ENOEXEC:
            raise
        pid = os.posix_spawn("/bin/sh", ["/bin/sh", path, *argv[1:]], spec.env, **kwargs)  # type: ignore[arg-type]
    if slave is not None:
        os.tcsetpgrp(slave, pid)
        # The command may have touched the terminal before it was the foreground group
        # and been stopped (SIGTTIN/SIGTTOU): init continues it (init.reap).
    return pid


def open_pty() -> tuple[int, int]:
    """A pty of the sandbox's own devpts (/dev/ptmx is its pts/ptmx), shaped like the
    caller's terminal, and made init's controlling terminal: init leads a session of its
    own (init.py), and TIOCSCTTY gives a session leader without one its terminal (tty(4)).
    The command's process group becomes its foreground group once spawned."""
    try:
        master, slave = os.openpty()
    except OSError as e:
        # After the user's mounts: a --tmpfs or --hide of /dev, /dev/pts or /dev/ptmx.
        raise RboxError(f"cannot open a pseudo-terminal in the sandbox: {e.strerror}",
                        hint=resource_hint(e.errno or 0) or "leave /dev, /dev/pts and /dev/ptmx uncovered, or run "
                        "with -T (no pseudo-terminal)") from None
    if os.isatty(0):
        termios.tcsetattr(slave, termios.TCSANOW, termios.tcgetattr(0))
        rows, cols = console.window_size(0)
        if rows and cols:
            console.set_window_size(master, rows, cols)
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    os.set_inheritable(slave, False)
    return master, slave


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
    # After NO_NEW_PRIVS, which an unprivileged seccomp filter needs (seccomp(2)).
    seccomp.deny_keyrings()


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
    return command_error(spec.command[0], err, spec.workdir, spec.env.get("PATH", os.defpath), "the sandbox")


def command_error(cmd: str, err: int, workdir: str, path: str, place: str) -> RboxError:
    """The error for a command that could not be started (exec's errno `err`): 127 not
    found, 126 cannot execute, 125 when rbox ran out of a resource (`rbox run` here,
    `rbox unshare` too)."""
    reason = os.strerror(err) if err else "unknown error"
    if err in (errno.EAGAIN, errno.ENOMEM):
        # posix_spawn's clone() failed: rbox ran out of processes or memory, the command
        # is not to blame (125, not 126).
        error = resource_error(OSError(err, reason), "while starting the command")
        assert error is not None
        return error
    if err == errno.ENOENT:
        if "/" in cmd and os.path.exists(os.path.join(workdir, cmd)):
            # execve gives ENOENT for a script whose interpreter is missing, too.
            return RboxError(f"cannot execute `{cmd}`: its interpreter (#! line) was not found",
                             hint="install the interpreter its first line names inside the sandbox's view, "
                                  "or fix that line", exit_code=EXIT_NOT_FOUND)
        where = f"in {place}" if "/" in cmd else f"on {place}'s PATH"
        return RboxError(f"command not found: `{cmd}`",
                         hint=f"check the name; it must exist {where} (PATH={path})",
                         exit_code=EXIT_NOT_FOUND)
    hints = {errno.ENOEXEC: "it is not a program this system runs (a script needs a #! line)",
             errno.E2BIG: "its arguments and environment are too large: pass fewer or shorter ones (or --clearenv)"}
    return RboxError(f"cannot execute `{cmd}`: {reason}",
                     hint=hints.get(err, "it must be a file with execute permission (chmod +x) on a filesystem "
                                         "mounted without noexec"), exit_code=EXIT_CANNOT_EXEC)
