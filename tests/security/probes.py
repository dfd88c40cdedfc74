"""What the security tests share: reading a probe's `key=value` lines.

Runs in: the test runner."""

from __future__ import annotations

from pathlib import Path

PROBE = str(Path(__file__).with_name("contain_probe.py"))


def facts(stdout: str) -> dict[str, list[str]]:
    """Every `key=value` line of a probe's output, the values of each key in order."""
    found: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found.setdefault(key, []).append(value)
    return found
