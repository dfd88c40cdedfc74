"""Errors and exit codes.

Runs in: any role.

Exit codes follow the podman/docker "chroot standard" (see rbox(1), EXIT STATUS):
125 rbox itself failed (including bad options), 126 the command cannot be executed,
127 the command was not found, 128+N the command was killed by signal N, anything
else is the command's own exit code.
"""

from __future__ import annotations

import os

EXIT_SETUP = 125
EXIT_CANNOT_EXEC = 126
EXIT_NOT_FOUND = 127


class RboxError(Exception):
    """A failure of rbox itself: one message line, an optional hint line, an exit code."""

    exit_code = EXIT_SETUP

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
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


def waitstatus_to_code(status: int) -> int:
    """Turn a wait status into rbox's exit code: n for exit(n), 128+N for signal N.

    os.waitstatus_to_exitcode gives -N for a signal; shells report 128+N, and so does
    bwrap (`propagate_exit_status`), so that is what rbox exits with.
    """
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code
