"""The progress line of `rbox image pull|import`: bytes, layers done of all, rate.

Runs in: parent (download threads report here too: every method takes the lock).

Drawn only when standard error is a terminal and --quiet is not given, redrawn in place
(a carriage return, and blanks over what the longer line before left: no terminal
escape sequences, so a dumb terminal shows it as well), at most ten times a second. On
a pipe or a file nothing is written at all: a log gets no carriage returns. The last
line stays on the screen as a summary.
"""

from __future__ import annotations

import os
import threading
import time

INTERVAL = 0.1


def wanted(quiet: bool) -> bool:
    return not quiet and os.isatty(2)


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


class Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.lock = threading.Lock()
        self.verb = ""
        self.layers = self.done = self.cached = 0
        self.total: int | None = None
        self.bytes = self.fetched = 0
        self.start = time.monotonic()
        self.drawn = 0.0
        self.width = 0          # of the line on the screen, to blank what a shorter one leaves

    def phase(self, verb: str, layers: int, total: int | None = None) -> None:
        """A new phase (`pulling`, `unpacking`, ...): `layers` to go through, `total` bytes if known."""
        with self.lock:
            self.verb, self.layers, self.total = verb, layers, total
            self.done = self.cached = self.bytes = self.fetched = 0
            self.start = time.monotonic()
            self._draw(True)

    def add(self, n: int, fetched: bool = True) -> None:
        with self.lock:
            self.bytes += n
            if fetched:
                self.fetched += n
            self._draw(False)

    def layer_done(self, cached: bool = False) -> None:
        with self.lock:
            self.done += 1
            self.cached += cached
            self._draw(True)

    def at(self, done: int, nbytes: int) -> None:
        """Where a phase is: `done` layers (-1: unchanged), `nbytes` so far."""
        with self.lock:
            if done >= 0:
                self.done = done
            self.bytes = nbytes
            self._draw(done >= 0)

    def stop(self) -> None:
        """End the line as it is (before an error message)."""
        with self.lock:
            if self.enabled and self.width:
                os.write(2, b"\n")
                self.width = 0

    def finish(self, summary: str) -> None:
        """Replace the line by `summary`, and end it."""
        with self.lock:
            if self.enabled:
                self._show(summary)
                os.write(2, b"\n")
                self.width = 0

    def rate(self) -> str:
        elapsed = time.monotonic() - self.start
        return f"{size(self.fetched / elapsed)}/s" if elapsed > 0.05 and self.fetched else ""

    def line(self) -> str:
        layers = f"{self.done}/{self.layers} layers" + (f" ({self.cached} cached)" if self.cached else "") \
            if self.layers else ""
        amount = size(self.bytes) + (f"/{size(self.total)}" if self.total is not None else "")
        return "  ".join(part for part in (f"{self.verb:<9}", layers, amount, self.rate()) if part)

    def _draw(self, force: bool) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if force or now - self.drawn >= INTERVAL:
            self.drawn = now
            self._show(self.line())

    def _show(self, text: str) -> None:
        try:
            columns = os.get_terminal_size(2).columns or 80    # 0: a terminal whose size nobody set
        except OSError:
            columns = 80
        text = text[:max(columns - 1, 10)]
        pad = max(self.width - len(text), 0)
        try:
            os.write(2, ("\r" + text + " " * pad + "\b" * pad).encode())
        except OSError:
            self.enabled = False        # the terminal went away: the pull goes on quietly
        self.width = len(text)
