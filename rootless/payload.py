"""The last steps before the command runs, and how an exec failure is reported.

Runs in: init (`start`) and the payload, PID 2 (`_become_command`).

Exec success is detected the way subprocess does it: a close-on-exec pipe from the
payload to init. EOF means the exec happened; `STAGE ERRNO` means it did not, and init
turns that into 127 (not found), 126 (cannot execute) or 125 (rbox's own setup failed).
"""

from __future__ import annotations

import errno
import os

from rootless import signals
from rootless import syscalls as sc
from rootless.errors import EXIT_CANNOT_EXEC, EXIT_NOT_FOUND, EXIT_SETUP, RboxError
from rootless.spec import Spec


def start(spec: Spec) -> int:
    """Fork the command as PID 2; its pid once the exec has succeeded."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _become_command(spec, w)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        report = f.read()
    if report:
        os.waitpid(pid, 0)
        raise exec_error(spec, report.decode())
    return pid


def _become_command(spec: Spec, errfd: int) -> None:
    stage = "setup"
    try:
        signals.reset_for_exec()
        if not spec.tty:
            # No controlling terminal: a program inside cannot push input into the
            # caller's terminal with TIOCSTI (CVE-2017-5226, bubblewrap#142).
            os.setsid()
        if not spec.root:
            # Your own uid inside: no capabilities, not even in the bounding set.
            sc.drop_bounding_set()
        # Always: a setuid or file-capability binary inside gains nothing (prctl(2)).
        sc.set_no_new_privs()
        stage = "chdir"
        os.chdir(spec.workdir)
        stage = "exec"
        os.execve(find_command(spec.command[0], spec.env.get("PATH")), spec.command, spec.env)
    except OSError as e:
        _report(errfd, stage, e.errno or 0)
    except BaseException:  # noqa: BLE001 - nothing may escape a forked child
        _report(errfd, stage, 0)
    finally:
        os._exit(EXIT_NOT_FOUND)


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


def _report(fd: int, stage: str, err: int) -> None:
    try:
        os.write(fd, f"{stage} {err}".encode())
    except OSError:
        pass


def exec_error(spec: Spec, report: str) -> RboxError:
    stage, _, num = report.partition(" ")
    err = int(num) if num.isdigit() else 0
    reason = os.strerror(err) if err else "unknown error"
    cmd = spec.command[0]
    if stage == "chdir":
        return RboxError(f"cannot change to `{spec.workdir}` in the sandbox: {reason}",
                         hint="-w/--workdir must name a directory that exists inside the sandbox")
    if stage != "exec":
        return RboxError(f"cannot prepare the command: {reason}", exit_code=EXIT_SETUP)
    if err == errno.ENOENT:
        if "/" in cmd and os.path.exists(os.path.join(spec.workdir, cmd)):
            # execve gives ENOENT for a script whose interpreter is missing, too.
            return RboxError(f"cannot execute `{cmd}`: its interpreter (#! line) was not found",
                             exit_code=EXIT_NOT_FOUND)
        return RboxError(f"command not found: `{cmd}`", exit_code=EXIT_NOT_FOUND)
    return RboxError(f"cannot execute `{cmd}`: {reason}", exit_code=EXIT_CANNOT_EXEC)
