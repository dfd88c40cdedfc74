"""Warnings and `--debug` step tracing.

Runs in: any role. Each process sets its role once (`set_role`), so debug lines say
where they come from: `[rbox:init 1] + bind / -> / [ro]`.
Fatal errors are never printed here: only cli.main() prints them (see errors.py).

Everything is written with os.write on file descriptors 1 and 2, never through
sys.stdout/sys.stderr: Python sets those to None when the descriptor was closed when
rbox started (`rbox ... 2>&-`), and children end with os._exit(), which would drop
buffered text. A closed or broken stream is not an error of rbox's: the text is dropped.
"""

from __future__ import annotations

import os
import select
import time

_state = {"debug": False, "role": "parent"}
_START = time.monotonic()  # debug lines show milliseconds since rbox started


def enable_debug(on: bool = True) -> None:
    _state["debug"] = on


def started() -> float:
    """When rbox started, on CLOCK_MONOTONIC (the clock every process shares): the zero
    of the debug lines' milliseconds, for bench/startup.py to place them."""
    return _START


def debugging() -> bool:
    return bool(_state["debug"])


def set_role(role: str) -> None:
    _state["role"] = role


def step(text: str) -> None:
    """One setup step, printed only with --debug."""
    if _state["debug"]:
        ms = (time.monotonic() - _START) * 1000
        write_raw(f"[rbox:{_state['role']} {os.getpid()} {ms:6.1f}ms] + {printable(text)}\n")


def say(text: str) -> None:
    """A fact the user must see, not an error: `rbox: the command was killed: ...`."""
    write_raw(f"rbox: {printable(text)}\n")


def warn(text: str) -> None:
    write_raw(f"rbox: warning: {printable(text)}\n")


def printable(text: str) -> str:
    """`text` safe to show on one line of a terminal: bytes that are not UTF-8 (carried
    as surrogate escapes, PEP 383) and control or invisible characters become `\\xNN`
    (`\\uNNNN`), so a file name can neither garble the terminal nor break the line."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char.isprintable():
            out.append(char)
        else:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def write_raw(text: str) -> None:
    """Text to stderr as it is (bytes that are not UTF-8 restored)."""
    _write_fd(2, text)


def out(text: str) -> None:
    """Normal output (help, dry-run plan) to stdout."""
    _write_fd(1, text)


def _write_fd(fd: int, text: str) -> None:
    data = memoryview(text.encode("utf-8", "surrogateescape"))
    while data:
        try:
            data = data[os.write(fd, data):]
        except BlockingIOError:
            # A descriptor shared with a program that made it non-blocking.
            select.poll().poll(100)
        except InterruptedError:
            continue
        except OSError:
            return   # closed (EBADF) or nobody reads any more (EPIPE)
