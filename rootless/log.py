"""Warnings and `--debug` step tracing.

Runs in: any role. Each process sets its role once (`set_role`), so debug lines say
where they come from: `[rbox:init 1] + bind / -> / [ro]`.
Fatal errors are never printed here: only cli.main() prints them (see errors.py).
"""

from __future__ import annotations

import os
import sys
import time

_state = {"debug": False, "role": "parent"}
_START = time.monotonic()  # debug lines show milliseconds since rbox started


def enable_debug(on: bool = True) -> None:
    _state["debug"] = on


def debugging() -> bool:
    return bool(_state["debug"])


def set_role(role: str) -> None:
    _state["role"] = role


def step(text: str) -> None:
    """One setup step, printed only with --debug."""
    if _state["debug"]:
        ms = (time.monotonic() - _START) * 1000
        _write(f"[rbox:{_state['role']} {os.getpid()} {ms:6.1f}ms] + {text}\n")


def say(text: str) -> None:
    """A fact the user must see, not an error: `rbox: the command was killed: ...`."""
    _write(f"rbox: {text}\n")


def warn(text: str) -> None:
    _write(f"rbox: warning: {text}\n")


def _write(line: str) -> None:
    # Unbuffered write: children end with os._exit(), which would drop buffered text.
    try:
        os.write(2, line.encode(errors="replace"))
    except OSError:
        pass


def out(text: str) -> None:
    """Normal output (help, dry-run plan) to stdout."""
    sys.stdout.write(text)
    sys.stdout.flush()
