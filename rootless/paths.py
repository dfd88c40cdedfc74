"""Paths of options as the sandbox will show them, resolved once, on the host.

Runs in: parent (spec.py, before anything is planned).

Two options can name one place by different paths: a symlink, a symlinked parent
directory. Were the mount plan ordered by the paths as typed and carried out on the
resolved ones, a later bind of an ancestor could cover a --hide or a --ro-bind
(mounts.optimize sorts parents first). So every path is resolved here, once, and the plan
is ordered by what comes out.

Resolution follows the sandbox's view, not blindly the host's: a `View` lists what the
sandbox mounts. Below a fresh tmpfs of the sandbox (/tmp, /var/tmp, /run, /dev, /proc,
a --tmpfs, a --hide, --home=tmpfs) the rest of a path is kept literal: the host's
symlinks there (another user's link in the host's /tmp) do not exist inside and must
not steer the plan. Below a bind, the path continues in the bind's source on the host.
Everywhere else the sandbox shows the host's tree, so the host's symlinks are followed,
component by component, with absolute targets taken from the sandbox's `/` (as
mounts.resolve_in does in init, which stays as the second line of defence).
"""

from __future__ import annotations

import os

from rootless.errors import SpecError

TYPE_CHECKING = False  # not `from typing import ...`: typing costs 9 ms at start-up
if TYPE_CHECKING:
    from collections.abc import Callable

# Where the sandbox mounts something of its own over the host's tree (mounts.plan).
SANDBOX_OWN = ("/proc", "/dev", "/tmp", "/var/tmp", "/run")
MAX_LINKS = 40   # the kernel's limit on symlinks in one lookup (path_resolution(7))

FRESH = "fresh"   # a tmpfs or procfs of the sandbox: literal below
HIDDEN = "hidden"  # --hide: an empty read-only tmpfs (or /dev/null): literal below
RW, RO = "rw", "ro"  # binds: below them the path continues in the source


def inside(path: str, top: str) -> bool:
    """`path` is `top` or lies below it (both normalized, absolute)."""
    return path == top or top == "/" or path.startswith(top + "/")


class View:
    """The mounts that decide what a path is inside: (dst, src or None, kind), in the
    order mounts.plan lists them (at equal depth the later one wins, as there)."""

    __slots__ = ("entries",)

    def __init__(self, entries: list[tuple[str, str | None, str]] | None = None):
        self.entries = list(entries or [])

    def copy(self) -> View:
        return View(self.entries)

    def add(self, dst: str, src: str | None, kind: str) -> None:
        self.entries.append((dst, src, kind))

    def covering(self, path: str) -> tuple[str, str | None, str] | None:
        """The deepest entry at or above `path`; the later one at equal depth."""
        found = None
        for entry in self.entries:
            if inside(path, entry[0]) and (found is None or len(entry[0]) >= len(found[0])):
                found = entry
        return found

    def host_path(self, path: str) -> str | None:
        """Where the host holds what the sandbox shows at `path`; None below a fresh mount."""
        entry = self.covering(path)
        if entry is None:
            return path
        dst, src, kind = entry
        if src is None:
            return None
        return src + path[len(dst):] if dst != "/" else src + path

    def resolve(self, path: str) -> str:
        """The absolute path the sandbox will use for `path` (absolute, not yet normalized:
        `..` is taken after the symlink before it, as the kernel does)."""
        def target(candidate: str) -> str | None:
            host = self.host_path(candidate)
            return os.readlink(host) if host is not None and os.path.islink(host) else None

        try:
            return walk(path, target)
        except LinkLoop:
            raise SpecError(f"cannot resolve `{path}`: too many levels of symbolic links",
                            hint="a symlink loop: name the path without the looping link") from None


class LinkLoop(Exception):
    """More symbolic links in one lookup than the kernel follows."""


def walk(path: str, readlink: Callable[[str], str | None], max_links: int = MAX_LINKS) -> str:
    """`path` with its symlinks followed component by component, the one walk both the
    planner (View.resolve, the host's tree as the sandbox shows it) and init
    (mounts.resolve_in, the new tree) use. `readlink(candidate)` gives a component's link
    target, or None when it is no link. An absolute target restarts from `/` of the same
    view, never the caller's own root; `..` is taken after the link before it, as the
    kernel does; missing components stay as they are. LinkLoop past max_links."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved = ""
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            resolved = resolved.rpartition("/")[0]
            continue
        candidate = f"{resolved}/{part}"
        target = readlink(candidate)
        if target is not None:
            links += 1
            if links > max_links:
                raise LinkLoop(path)
            if target.startswith("/"):
                resolved = ""
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved = candidate
    return resolved or "/"
