"""The setup protocol between the parent, stage-1 and init.

Runs in: parent, stage-1 and init (each holds one end of two pipes).

    #  direction          message        fields
    1  stage-1 -> parent  USERNS_READY   -
    2  parent -> stage-1  IDMAP_DONE     -
    3  stage-1 -> parent  INIT_STARTED   pid (host pid of PID 1)
    4  parent -> init     NETWORK_DONE   (network facts, later)
    5  init -> parent     RUNNING        -
    6  init -> parent     STOPPED        - (the command stopped itself: a Ctrl-Z in its pty)
    *  any child -> parent ERROR         message, hint, code

Between init and stage-1, over a pipe pair of their own (after INIT_STARTED):

    a  init -> stage-1    NESTED_USERNS  - (init unshared the command's user namespace)
    b  stage-1 -> init    NESTED_MAPPED  - (its maps are written), or ERROR

Stage-1 closes its ends after INIT_STARTED, so from then on the parent's read end
reaches EOF exactly when PID 1 is gone: EOF is the "peer died" signal, and every wait
also has a timeout, so the parent never hangs on a dead or stuck child (rootlesskit's
waitForReadyFD rule). A diagram of the whole sequence is in docs/internals.md.

Why pipes and a line codec rather than a SOCK_SEQPACKET socketpair and JSON: `socket`
and `json` cost about 6 ms each to import (they pull in enum and re), and start-up time
is a feature. Messages are one line each, `TYPE key=value ...`, values percent-escaped;
decoding is plain string splitting, so a malformed line from a compromised peer can only
raise ProtocolError. Writes are far below PIPE_BUF, so each message is written atomically.

Bytes are bytes: a command name, a path or a message may hold bytes that are not UTF-8
(Python carries them as surrogate escapes, PEP 383), so the codec uses surrogateescape
both ways. Error fields are cut to FIELD_MAX characters, so that no message (a
`command not found` for a name of 100,000 characters) can exceed MAX_LINE.
"""

from __future__ import annotations

import os
import select
import time

from rootless.errors import BUG_HINT, SLOW_HINT, ProtocolError, RboxError

USERNS_READY = "USERNS_READY"
IDMAP_DONE = "IDMAP_DONE"
INIT_STARTED = "INIT_STARTED"
NETWORK_DONE = "NETWORK_DONE"
RUNNING = "RUNNING"
STOPPED = "STOPPED"
NESTED_USERNS = "NESTED_USERNS"
NESTED_MAPPED = "NESTED_MAPPED"
ERROR = "ERROR"

MAX_LINE = 65536
FIELD_MAX = 2000
_ESCAPES = (("%", "%25"), (" ", "%20"), ("\n", "%0A"), ("\r", "%0D"))


def encode(kind: str, fields: dict[str, str | int] | None = None) -> bytes:
    parts = [kind]
    for key, value in (fields or {}).items():
        text = str(value)
        for raw, esc in _ESCAPES:
            text = text.replace(raw, esc)
        parts.append(f"{key}={text}")
    return (" ".join(parts) + "\n").encode("utf-8", "surrogateescape")


def decode(line: bytes) -> tuple[str, dict[str, str]]:
    words = line.decode("utf-8", "surrogateescape").rstrip("\n").split(" ")
    kind, fields = words[0], {}
    if not kind.isupper():
        raise ProtocolError(f"malformed setup message `{kind[:40]}`", hint=BUG_HINT)
    for word in words[1:]:
        key, sep, text = word.partition("=")
        if not sep:
            raise ProtocolError(f"malformed field in setup message {kind}", hint=BUG_HINT)
        for raw, esc in reversed(_ESCAPES):
            text = text.replace(esc, raw)
        fields[key] = text
    return kind, fields


class Channel:
    """One end of the protocol: a read fd and a write fd (both close-on-exec)."""

    def __init__(self, rfd: int, wfd: int, peer: str):
        self.rfd, self.wfd, self.peer = rfd, wfd, peer
        self._buf = b""

    def send(self, kind: str, **fields: str | int) -> None:
        os.write(self.wfd, encode(kind, fields))

    def send_error(self, err: RboxError) -> None:
        self.send(ERROR, message=shorten(err.message), hint=shorten(err.hint or ""), code=err.exit_code)

    def pending_error(self) -> RboxError | None:
        """The ERROR the peer already sent, without waiting; None if there is none.

        For the parent when a secondary failure ends setup (a helper that lost PID 1's
        namespaces, a broken pipe to PID 1): PID 1 sends its ERROR before it exits, so
        when PID 1's exit caused the secondary failure, its ERROR is here already."""
        try:
            while self._wait_readable(time.monotonic()):
                chunk = os.read(self.rfd, 4096)
                if not chunk:
                    break
                self._buf += chunk
                if len(self._buf) > MAX_LINE:
                    break
        except OSError:
            pass
        for line in self._buf.split(b"\n")[:-1]:
            try:
                kind, fields = decode(line)
            except ProtocolError:
                continue
            if kind == ERROR:
                return error_from_fields(fields)
        return None

    def receive(self, timeout: float | None) -> tuple[str, dict[str, str]] | None:
        """The next message, or None at EOF (every writer is gone)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            if not self._wait_readable(deadline):
                raise ProtocolError(f"{self.peer} did not answer within {timeout:g} s", hint=SLOW_HINT)
            chunk = os.read(self.rfd, 4096)
            if not chunk:
                return None
            self._buf += chunk
            if len(self._buf) > MAX_LINE:
                raise ProtocolError(f"oversized setup message from {self.peer}", hint=BUG_HINT)
        line, _, self._buf = self._buf.partition(b"\n")
        return decode(line)

    def expect(self, kind: str, timeout: float | None = 30.0) -> dict[str, str]:
        """Wait for one message type; an ERROR from the peer is raised as the error it was."""
        msg = self.receive(timeout)
        if msg is None:
            raise ProtocolError(f"{self.peer} exited during setup (expected {kind})")
        got, fields = msg
        if got == ERROR:
            raise error_from_fields(fields)
        if got != kind:
            raise ProtocolError(f"expected {kind} from {self.peer}, got {got}", hint=BUG_HINT)
        return fields

    def _wait_readable(self, deadline: float | None) -> bool:
        poller = select.poll()
        poller.register(self.rfd, select.POLLIN | select.POLLHUP)
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if poller.poll(None if left is None else left * 1000):
                return True
            if left is not None and left <= 0:
                return False

    def close(self) -> None:
        for fd in (self.rfd, self.wfd):
            try:
                os.close(fd)
            except OSError:
                pass
        # A late send (an error report) must fail, not write to whatever reuses the number.
        self.rfd = self.wfd = -1


def shorten(text: str, limit: int = FIELD_MAX) -> str:
    """At most `limit` characters: the start and the end, the middle elided."""
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


def error_from_fields(fields: dict[str, str]) -> RboxError:
    try:
        code = int(fields.get("code", "125"))
    except ValueError:
        code = 125
    return RboxError(fields.get("message", "setup failed"), fields.get("hint") or None, code)


def channel_pair(child: str = "stage-1", parent: str = "parent") -> tuple[Channel, Channel]:
    """(parent end, child end) over two pipes; os.pipe() fds are close-on-exec."""
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    return (Channel(to_parent_r, to_child_w, child),
            Channel(to_child_r, to_parent_w, parent))
