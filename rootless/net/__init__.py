"""Network drivers.

Runs in: init (`configure`); the parent half of drivers that need one (slirp4netns, a
later issue) will live beside it. `none` is a new network namespace with only `lo` up;
`host` shares the host's network namespace.
"""

from __future__ import annotations

NET_MODES = ("none", "host")


def configure(mode: str) -> None:
    if mode == "none":
        from rootless.net import loopback  # imported before pivot_root by init.py

        loopback.up()
