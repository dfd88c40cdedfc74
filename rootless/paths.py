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
        parts = [p for p in path.split("/") if p not in ("", ".")]
        resolved = ""
        links = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                resolved = resolved.rpartition("/")[0]
                continue
            candidate = f"{resolved}/{part}"
            host = self.host_path(candidate)
            if host is not None and os.path.islink(host):
                links += 1
                if links > MAX_LINKS:
                    raise SpecError(f"cannot resolve `{path}`: too many levels of symbolic links",
                                    hint="a symlink loop: name the path without the looping link")
                target = os.readlink(host)
                if target.startswith("/"):
                    resolved = ""
                parts = [p for p in target.split("/") if p not in ("", ".")] + parts
                continue
            resolved = candidate
        return resolved or "/"
