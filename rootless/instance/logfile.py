"""A detached command's output: a pipe the supervisor copies into `log`, capped and rotated;
and `rbox logs [-f]`, which prints it.

Runs in: parent (the supervisor relays; `rbox logs` reads).

The command's stdout and stderr are the write end of a pipe (stage-1 puts it on 1 and 2
before it starts anything, so init and the command inherit it; stdin is /dev/null). The
supervisor reads the pipe without blocking and appends to `log`; when `log` reaches
LOG_MAX bytes it becomes `log.1` (the older `log.1` goes) and a new `log` starts, so a
sandbox never holds more than about 2 * LOG_MAX bytes of your runtime directory, which is
usually a tmpfs (memory). A pipe, not a file the command writes itself: a file could not
be capped, and the command could write to it after rbox removed it. The supervisor's own
words (a helper that died, the limits' report) go straight to `log` on its descriptor 2.
"""

from __future__ import annotations

import os
import select
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

LOG, OLD = "log", "log.1"
LOG_MAX = 1 << 20
CHUNK = 65536


class Relay:
    """The supervisor's end: the pipe's read end in, `log` out."""

    def __init__(self, dir_fd: int):
        self.dir_fd = dir_fd
        self.read_end, self.write_end = os.pipe()
        self.out = -1
        self.size = 0

    def open(self) -> None:
        self.out = os.open(LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                           dir_fd=self.dir_fd)
        self.size = os.fstat(self.out).st_size
        os.set_blocking(self.read_end, False)

    def started(self) -> None:
        """Stage-1 is forked and holds the write end (and passes it on): ours goes, so the
        pipe ends when the sandbox's last process does."""
        os.close(self.write_end)
        self.write_end = -1

    def on_readable(self) -> bool:
        """Copy what the pipe has; False at its end (every writer gone)."""
        while True:
            try:
                data = os.read(self.read_end, CHUNK)
            except BlockingIOError:
                return True
            except OSError:
                data = b""
            if not data:
                return False
            self._append(data)

    def _append(self, data: bytes) -> None:
        if self.size + len(data) > LOG_MAX and self.size > 0:
            self.rotate()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.out, view):]
            except OSError:
                return      # the runtime directory is full: output is lost, the command goes on
        self.size += len(data)

    def rotate(self) -> None:
        os.replace(LOG, OLD, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        fd = os.open(LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=self.dir_fd)
        # The supervisor's own messages (descriptor 2, and 1) follow to the new file.
        for std in (1, 2):
            if os.path.sameopenfile(std, self.out):
                os.dup2(fd, std)
        os.close(self.out)
        self.out, self.size = fd, 0

    def close(self) -> None:
        for fd in (self.read_end, self.write_end, self.out):
            if fd >= 0:
                os.close(fd)
        self.read_end = self.write_end = self.out = -1


def _open(dir_fd: int, name: str) -> int | None:
    try:
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None


def _copy(fd: int, out: int = 1) -> None:
    while True:
        data = os.read(fd, CHUNK)
        if not data:
            return
        view = memoryview(data)
        while view:
            view = view[os.write(out, view):]


def show(dir_fd: int, follow: bool, alive: Callable[[], bool]) -> None:
    """Print log.1 then log; with `follow`, keep printing what is added (across rotations)
    until `alive()` says the sandbox has ended and everything is printed."""
    old = _open(dir_fd, OLD)
    if old is not None:
        _copy(old)
        os.close(old)
    current = _open(dir_fd, LOG)
    if current is not None:
        _copy(current)
    while follow:
        ended = not alive()
        latest = _open(dir_fd, LOG)
        if latest is not None and (current is None or not os.path.sameopenfile(latest, current)):
            if current is not None:
                _copy(current)          # the rest of the rotated one first
                os.close(current)
            current = latest
            _copy(current)
            continue
        if latest is not None:
            os.close(latest)
        if current is not None:
            _copy(current)
        if ended:
            break
        select.poll().poll(100)
        time.sleep(0)
    if current is not None:
        os.close(current)
