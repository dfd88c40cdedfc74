"""Starting the host-side helpers (newuidmap, slirp4netns, pasta) and watching them.

Runs in: parent.

Helpers are started with posix_spawn (the `subprocess` module costs milliseconds to
import). Their output goes to an anonymous memfd, not a pipe that nobody drains and not
a file that could be left behind; it is read only to explain a failure. Every wait has a
deadline and watches the helper's exit descriptor, so a helper that dies or hangs is
reported, never waited on forever (rootlesskit's waitForReadyFD).

The exit descriptor is the helper's pidfd (Linux 5.3), readable once it has exited.
Before 5.3 (RHEL 8) it is the read end of a pipe whose write end only the helper holds
(rbox closes its copy right after the spawn; nothing else gets it, rbox's descriptors
being close-on-exec): the kernel closes that end when the helper exits, so its death is
noticed as promptly. A helper that closed the pipe itself while alive is then watched by
polling waitpid, so the answer stays right, only later.
"""

from __future__ import annotations

import _signal as signal  # not `signal`: it imports enum (3 ms at start-up); signals.py says more
import os
import select
import time

from rootless import kernel, log
from rootless.signals import ALL_SIGNALS


class Aborted(Exception):
    """The sandbox spoke (or died) while we waited for a helper: its word comes first."""


class Helper:
    def __init__(self, argv: list[str], pass_fds: dict[int, int] | None = None, exit_pipe_at: int | None = None):
        """Spawn argv; pass_fds maps our fd -> the fd number the helper sees it as;
        exit_pipe_at: the number the exit pipe gets in the helper (before Linux 5.3),
        for a helper that must keep it from its own children (pasta's watchdog)."""
        self.name = os.path.basename(argv[0])
        self.argv = argv
        self.output = os.memfd_create(f"rbox-{self.name}", os.MFD_CLOEXEC)
        actions: list[tuple[object, ...]] = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                             (os.POSIX_SPAWN_DUP2, self.output, 1),
                                             (os.POSIX_SPAWN_DUP2, self.output, 2)]
        actions += [(os.POSIX_SPAWN_DUP2, ours, theirs) for ours, theirs in (pass_fds or {}).items()]
        lifeline = None if kernel.pidfd() else os.pipe()
        if lifeline is not None:
            # Last, to a number no other action writes and that is not its own (a dup2
            # onto itself keeps close-on-exec before glibc 2.29: RHEL 8 has 2.28).
            taken = {0, 1, 2, *(pass_fds or {}).values()}
            target = exit_pipe_at or next(n for n in range(3, 1 << 16) if n not in taken and n != lifeline[1])
            if lifeline[1] == target:
                moved = os.dup(lifeline[1])
                os.close(lifeline[1])
                lifeline = (lifeline[0], moved)
            actions.append((os.POSIX_SPAWN_DUP2, lifeline[1], target))
        log.step(" ".join(argv))
        # Every signal at its default and none blocked: Python ignores SIGPIPE and
        # SIGXFSZ, exec would pass that on, and pasta (2023) then refuses to start
        # ("Couldn't install signal handlers"); rbox also blocks the forwarded signals.
        # A process group of its own: the keys of rbox's terminal (Ctrl-C, Ctrl-Z) are
        # for the command, not for slirp4netns, which would die or stop with it.
        try:
            self.pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions,
                                      setsigmask=(), setsigdef=ALL_SIGNALS, setpgroup=0)
        except BaseException:
            if lifeline is not None:
                os.close(lifeline[0])
            raise
        finally:
            if lifeline is not None:
                os.close(lifeline[1])
        self.status: int | None = None
        self.by_pipe = lifeline is not None
        # Readable once the helper has exited (see the module docstring).
        self.exit_fd = lifeline[0] if lifeline is not None else int(os.pidfd_open(self.pid))

    def output_text(self) -> str:
        """Everything the helper wrote to stdout and stderr (at most 64 KiB)."""
        os.lseek(self.output, 0, os.SEEK_SET)
        return os.read(self.output, 1 << 16).decode(errors="replace")

    def output_tail(self, limit: int = 600) -> str:
        """The end of the output on one line, for an error message."""
        # pasta without a syslog socket says `Failed to send N bytes to syslog` per line.
        lines = [line for line in self.output_text().splitlines() if line.strip() and "Failed to send" not in line]
        return " / ".join(lines)[-limit:] or "no output"

    def poll_exit(self) -> int | None:
        """The wait status once the helper has exited (reaped once), else None."""
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
        return self.status

    def wait_exit(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        readable([self.exit_fd], timeout)
        # The pipe hangs up as the helper's files close, a moment before its zombie
        # can be reaped (or earlier, had it closed the pipe itself): poll until then.
        while self.poll_exit() is None and self.by_pipe and time.monotonic() < deadline:
            time.sleep(0.002)
        return self.status

    def wait_readable(self, fd: int, timeout: float, abort_fd: int | None = None) -> bool:
        """True when fd became readable; False when the helper exited first or the
        deadline passed (check poll_exit() to tell which). Raises Aborted when abort_fd
        becomes readable first (the sandbox's setup channel: PID 1 failed or spoke)."""
        deadline = time.monotonic() + timeout
        watched = [fd, self.exit_fd] + ([abort_fd] if abort_fd is not None else [])
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready = readable(watched, left if self.exit_fd in watched else min(left, 0.05))
            if fd in ready:
                return True
            if abort_fd is not None and abort_fd in ready:
                raise Aborted(self.name)
            if self.exit_fd in ready:
                if not self.by_pipe or self.wait_exit(min(1.0, max(0.0, deadline - time.monotonic()))) is not None:
                    return False
                watched.remove(self.exit_fd)     # closed by the helper itself: poll waitpid instead
            if self.exit_fd not in watched and self.poll_exit() is not None:
                return False

    def kill_now(self) -> None:
        """SIGKILL without waiting to reap. For a helper with namespaces of its own
        (slirp4netns --enable-sandbox, pasta), the kernel's teardown of its mount
        namespace waits for an RCU grace period: 20-30 ms that rbox, which exits right
        after, need not spend. The process is dead at once; its zombie goes to PID 1
        when rbox exits."""
        if self.poll_exit() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.close(self.exit_fd)
        os.close(self.output)

    def stop(self, timeout: float = 2.0, signo: int = signal.SIGTERM) -> None:
        """`signo` (SIGTERM: a grace period, then SIGKILL); always reaped; fds closed."""
        if self.poll_exit() is None:
            try:
                os.kill(self.pid, signo)
            except ProcessLookupError:
                pass
            if signo == signal.SIGKILL or self.wait_exit(timeout) is None:
                if signo != signal.SIGKILL:
                    os.kill(self.pid, signal.SIGKILL)
                _, self.status = os.waitpid(self.pid, 0)
        os.close(self.exit_fd)
        os.close(self.output)


def readable(fds: list[int], timeout: float) -> list[int]:
    """The fds of `fds` that are readable (or hung up) within `timeout` seconds.
    poll(2), not select(2): select cannot watch a descriptor numbered 1024 or more."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _ in poller.poll(max(0.0, timeout) * 1000)]


def run(argv: list[str], timeout: float, whole: bool = False) -> tuple[int | None, str]:
    """Run a short-lived helper to the end: (exit code or None on timeout, its output,
    whole or as the one-line tail for messages)."""
    helper = Helper(argv)
    status = helper.wait_exit(timeout)
    output = helper.output_text() if whole else helper.output_tail()
    helper.stop()
    return (None if status is None else os.waitstatus_to_exitcode(status)), output
