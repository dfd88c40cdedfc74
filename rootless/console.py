"""The command's pseudo-terminal, seen from the parent: raw mode, window size, relay.

Runs in: parent (init opens the pty inside the sandbox and passes the master here).

Why a new pty instead of passing the caller's terminal through: a program that shares
the caller's terminal can push keystrokes into it with TIOCSTI/TIOCLINUX
(CVE-2017-5226, bubblewrap#142), and `setsid()` alone would break job control. With a
pty of the sandbox's own devpts instance, the command's controlling terminal is that pty:
what it injects lands in its own input, never in the caller's shell (rbox(1), SECURITY).

The relay never blocks on the command: input for the pty is buffered and written when
the master is writable, so a command that does not read cannot stall its output.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct
import termios

TYPE_CHECKING = False  # not `from typing import ...`: typing costs 9 ms at start-up
if TYPE_CHECKING:
    from collections.abc import Callable

IN, OUT = 0, 1
CHUNK = 65536
EOF_CHAR = b"\x04"   # VEOF in the pty's canonical mode: what Ctrl-D sends


def window_size(fd: int = IN) -> tuple[int, int]:
    """(rows, cols) of a terminal; (0, 0) when fd is not one (the kernel's default)."""
    try:
        rows, cols = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))[:2]
        return rows, cols
    except OSError:
        return 0, 0


def set_window_size(fd: int, rows: int, cols: int) -> None:
    # On a pty master this also sends SIGWINCH to the pty's foreground process group.
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Console:
    """The parent's end of the command's pty."""

    def __init__(self, master: int, on_hangup: Callable[[], None] | None = None):
        self.master = master
        self.on_hangup = on_hangup or self.hang_up   # what a terminal that hung up does
        self.saved: list[int | list[bytes | int]] | None = None
        self.pending = b""            # input not yet written to the pty
        self.stdin_open = True
        self.master_open = True
        os.set_blocking(master, False)

    # -- the caller's terminal ---------------------------------------------------------

    def in_foreground(self) -> bool:
        """rbox's process group owns the terminal (it is not a background job)."""
        try:
            return os.tcgetpgrp(IN) == os.getpgrp()
        except OSError:
            return False

    def make_raw(self) -> None:
        """Put the caller's terminal in raw mode (restored by restore(), always), only
        while rbox is in the terminal's foreground: a background job that changes the
        terminal's modes is stopped (SIGTTOU, termios(3)) and would take the user's
        terminal from the shell. A background rbox relays output only; `fg` sends
        SIGCONT, and the parent calls this again."""
        if self.saved is not None or not os.isatty(IN) or not self.in_foreground():
            return
        self.saved = termios.tcgetattr(IN)
        mode = termios.tcgetattr(IN)
        # cfmakeraw(3): no echo, no line editing, no signals from keys (Ctrl-C goes to
        # the pty, whose own line discipline turns it into SIGINT for the command).
        mode[0] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR
                     | termios.IGNCR | termios.ICRNL | termios.IXON)
        mode[1] &= ~termios.OPOST
        mode[2] &= ~(termios.CSIZE | termios.PARENB)
        mode[2] |= termios.CS8
        mode[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
        mode[6][termios.VMIN] = 1
        mode[6][termios.VTIME] = 0
        # TCSANOW, not TCSAFLUSH: keys typed while rbox was starting are the user's
        # first input to the command, not noise to discard.
        termios.tcsetattr(IN, termios.TCSANOW, mode)

    def restore(self) -> None:
        if self.saved is not None:
            try:
                termios.tcsetattr(IN, termios.TCSADRAIN, self.saved)
            except termios.error:
                pass  # the terminal is gone (hang-up): nothing to restore
            self.saved = None

    def copy_window_size(self) -> None:
        rows, cols = window_size(IN)
        if rows and cols and self.master_open:
            set_window_size(self.master, rows, cols)

    # -- the relay --------------------------------------------------------------------

    def poll_events(self) -> list[tuple[int, int]]:
        """(fd, events) to poll for, given what is open and what is pending."""
        wanted = []
        if self.master_open:
            wanted.append((self.master, select.POLLIN | (select.POLLOUT if self.pending else 0)))
        # Keys are read only while the command's pty is there: once it is gone, what the
        # user types stays in the terminal for the shell that gets it back.
        # In the background, reading the terminal would stop rbox (SIGTTIN): keys are the
        # foreground job's until `fg` makes rbox raw again.
        if self.stdin_open and self.master_open and not self.pending and (self.saved is not None
                                                                          or not os.isatty(IN)):
            wanted.append((IN, select.POLLIN))
        return wanted

    def on_ready(self, fd: int, events: int) -> None:
        if fd == IN:
            self._read_input()
        elif fd == self.master:
            if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                self.drain_output()
            if events & select.POLLOUT:
                self._write_input()

    def _read_input(self) -> None:
        try:
            data = os.read(IN, CHUNK)
        except OSError:
            data = b""
        if data:
            self.pending += data
        else:
            # stdin ended (a file or pipe with -t): end the command's input the way a
            # user would, with one Ctrl-D. A terminal that hung up ends the sandbox.
            self.stdin_open = False
            if os.isatty(IN):
                self.on_hangup()
            else:
                self.pending += EOF_CHAR
        self._write_input()

    def _write_input(self) -> None:
        while self.pending and self.master_open:
            try:
                written = os.write(self.master, self.pending)
            except BlockingIOError:
                return
            except OSError:
                self.pending = b""
                return
            self.pending = self.pending[written:]

    def drain_output(self) -> None:
        """Copy everything the pty has to our stdout; EIO means no process holds the
        slave any more (the command and all its children are gone)."""
        while self.master_open:
            try:
                data = os.read(self.master, CHUNK)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno != errno.EIO:
                    raise
                data = b""
            if not data:
                self.close()
                return
            _write_all(OUT, data)

    def hang_up(self) -> None:
        """Like a terminal window closing: the kernel sends SIGHUP to the pty's session."""
        self.close()

    def close(self) -> None:
        if self.master_open:
            self.master_open = False
            self.pending = b""
            os.close(self.master)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            poller = select.poll()     # not select(): fd may be 1024 or more
            poller.register(fd, select.POLLOUT)
            poller.poll()
        except OSError:
            return  # nobody reads our output any more (EPIPE, EIO of a terminal gone, EBADF)
