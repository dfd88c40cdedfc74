"""Subordinate ids and the user-namespace id maps.

Runs in: parent (the maps of a child's user namespace are written from outside it).

Pure parts (`parse_subids`, `build_map`, `helper_argv`, `plan_idmap`, `identity`) take
text and numbers and are unit-tested; `apply_idmap` runs the setuid helpers newgidmap and
newuidmap against stage-1's pid, or writes a single-id map itself when that is all the
host allows (user_namespaces(7): an unprivileged writer may map only its own id, after
writing `deny` to /proc/PID/setgroups).

Two user namespaces, always: stage-1's (U1, mapped from here) owns every mount rbox
makes; the command runs in U2, nested below it, which init creates and stage-1 maps
(stage-1.py). A mount namespace created in U2 gets every mount of U1 locked
(mount_namespaces(7), MNT_LOCKED): uid 0 of U2 cannot unmount, move or remount them
read-write. The plan carries U2's maps, computed here, in U1's ids.
"""

from __future__ import annotations

import os

from rootless import log
from rootless.errors import NamespaceError, resource_hint, resource_hint_in

Range = tuple[int, int]              # (first outer id, count)
Extent = tuple[int, int, int]        # (inner id, outer id, count), as in /proc/PID/uid_map

SUBUID = "/etc/subuid"
SUBGID = "/etc/subgid"
HELPER_TIMEOUT = 10.0


def parse_subids(text: str, name: str, numeric_id: int) -> list[Range]:
    """Ranges for one user from subuid(5)/subgid(5) text, in file order.

    A line is `owner:first:count`; owner is a login name or a numeric id (shadow accepts
    both). Comments, blank lines, malformed lines and empty ranges are skipped, as
    newuidmap itself skips them.
    """
    ranges = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) != 3 or fields[0] not in (name, str(numeric_id)):
            continue
        try:
            first, count = int(fields[1]), int(fields[2])
        except ValueError:
            continue
        if first >= 0 and count > 0:
            ranges.append((first, count))
    return ranges


def read_subids(path: str, name: str, numeric_id: int) -> list[Range]:
    try:
        with open(path) as f:
            return parse_subids(f.read(), name, numeric_id)
    except FileNotFoundError:
        return []


def parse_getsubids(text: str) -> list[Range]:
    """Ranges from getsubids(1) output, `N: owner first count` per line (pure)."""
    ranges = []
    for line in text.splitlines():
        fields = line.replace(":", " ").split()
        if len(fields) == 4 and fields[2].isdigit() and fields[3].isdigit() and int(fields[3]) > 0:
            ranges.append((int(fields[2]), int(fields[3])))
    return ranges


def subid_ranges(name: str, numeric_id: int, path: str | None, file: str, kind: str) -> list[Range]:
    """Subordinate ranges of one user: /etc/sub[ug]id, then getsubids(1) when the file
    has none. getsubids goes through shadow's libsubid, which also reads SSSD or LDAP
    (`subid: sss` in nsswitch.conf); asking it only when the file is silent keeps a
    process spawn off the start-up path of every user the file already knows."""
    ranges = read_subids(file, name, numeric_id)
    if ranges:
        return ranges
    tool = which("getsubids", path)
    if tool is None:
        return []
    from rootless import spawn

    code, output = spawn.run([tool, *(["-g"] if kind == "g" else []), name], timeout=5.0, whole=True)
    return parse_getsubids(output) if code == 0 else []


def build_map(own: int, ranges: list[Range], root: bool) -> list[Extent]:
    """The id map for one kind of id (uid or gid).

    root: the caller is inner 0 and the subordinate ranges follow from inner 1 up, so
    `chown` to any other id works (podman's default rootless layout).
    Otherwise the caller keeps its own id inside, and the subordinate ranges fill the
    inner ids around it from 0 up (podman's `keep-id` layout). Either way inner ids stay
    contiguous across several ranges, never overlapping (udocker's bug was to start every
    range at inner 1).
    """
    if root:
        extents = [(0, own, 1)]
        inner = 1
        for first, count in ranges:
            extents.append((inner, first, count))
            inner += count
        return extents
    extents = [(own, own, 1)]
    inner = 0
    for first, count in ranges:
        if inner <= own < inner + count:
            below = own - inner
            if below:
                extents.append((inner, first, below))
            inner, first, count = own + 1, first + below, count - below
        if count:
            extents.append((inner, first, count))
            inner += count
    return sorted(extents)


def helper_argv(tool: str, pid: int, extents: list[Extent]) -> list[str]:
    argv = [tool, str(pid)]
    for extent in extents:
        argv.extend(str(n) for n in extent)
    return argv


class IdMapPlan:
    """How the parent will map stage-1's user namespace (U1), and how stage-1 will map
    the command's (U2): `nested_*` extents are (U2 id, U1 id, count)."""

    __slots__ = ("mode", "uid_map", "gid_map", "reason", "newuidmap", "newgidmap",
                 "nested_uid_map", "nested_gid_map", "nested_setgroups")

    def __init__(self, mode: str, uid_map: list[Extent], gid_map: list[Extent],
                 reason: str = "", newuidmap: str = "", newgidmap: str = "",
                 nested_uid_map: list[Extent] | None = None, nested_gid_map: list[Extent] | None = None,
                 nested_setgroups: str = "deny"):
        self.mode, self.uid_map, self.gid_map, self.reason = mode, uid_map, gid_map, reason
        self.newuidmap, self.newgidmap = newuidmap, newgidmap
        self.nested_uid_map = nested_uid_map if nested_uid_map is not None else identity(uid_map)
        self.nested_gid_map = nested_gid_map if nested_gid_map is not None else identity(gid_map)
        self.nested_setgroups = nested_setgroups

    def describe(self) -> list[str]:
        lines = [f"id map ({self.mode}{': ' + self.reason if self.reason else ''})"]
        lines += [f"uid {i} -> {o} x{c}" for i, o, c in self.uid_map]
        lines += [f"gid {i} -> {o} x{c}" for i, o, c in self.gid_map]
        lines.append(f"nested user namespace for the command (setgroups {self.nested_setgroups}):")
        lines += [f"  uid {i} -> {o} x{c}" for i, o, c in self.nested_uid_map]
        lines += [f"  gid {i} -> {o} x{c}" for i, o, c in self.nested_gid_map]
        return lines


def identity(extents: list[Extent]) -> list[Extent]:
    """U2's map when the command keeps U1's ids: every inner id of U1 maps to itself.
    One line per line of U1's map, never merged: the kernel maps each line of a child's
    map through a single line of its parent's (map_id_range_down), so a line spanning
    two of U1's extents is refused with EPERM."""
    return [(inner, inner, count) for inner, _, count in sorted(extents)]


def nested_setgroups(mode: str, gid: int, groups: list[int]) -> str:
    """`deny` whenever setgroups(2) in U2 would let the command drop a group it has on
    the host. Such groups are unmapped in U1 (they show as the overflow gid) but still
    count for permission checks; setgroups([]) would drop them and pass a negative group
    permission (mode 0604 with group X denies members of X). With a single id, U1 is
    already `deny`, and the kernel keeps U2 at `deny` too (user_namespaces(7))."""
    if mode == "single" or set(groups) - {gid}:
        return "deny"
    # No group to lose: let apt/dpkg drop privileges to _apt with setgroups().
    return "allow"


def which(name: str, path: str | None) -> str | None:
    """A host helper (newuidmap, slirp4netns, ...) on PATH, looking only in absolute
    directories. An empty or relative PATH entry means the current directory, which the
    sandbox can write: a `slirp4netns` planted there by an earlier sandbox would run on
    the host, outside any sandbox. (The command's own lookup inside the sandbox keeps
    the shell's rules: payload.find_command.)"""
    for d in (path or os.defpath).split(os.pathsep):
        if not d.startswith("/"):
            continue
        candidate = os.path.join(d, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def no_new_privs_set(status_path: str = "/proc/self/status") -> bool:
    with open(status_path) as f:
        for line in f:
            if line.startswith("NoNewPrivs:"):
                return line.split()[1] == "1"
    return False


def plan_idmap(root: bool, uid: int, gid: int, name: str, path: str | None,
               nnp: bool, subuid: str = SUBUID, subgid: str = SUBGID,
               groups: list[int] | None = None, image: bool = False) -> IdMapPlan:
    """Choose subordinate-range maps through the helpers, or the single-id fallback.
    `groups`: the caller's supplementary groups (os.getgroups()), for U2's setgroups.

    With a single id and your own identity, the sandbox's user namespace maps it as 0,
    and the command's nested user namespace makes it your uid again (uid -> 0):
    slirp4netns insists on setegid(0)/seteuid(0) in the namespace it joins, so without a
    mapped 0 users with no subordinate ids (LDAP/SSSD users) would have no network.
    Otherwise U2 keeps U1's ids (`identity`), so chown to any mapped id keeps working.

    `image`: with an image (--rootfs, --image) and your own identity, U1 takes the layout
    the image was stored in (image.store unpacks as `--root`: its id 0 is you, its id N is
    your subordinate base + N - 1), and U2 makes you your own uid again (`nested_keep`):
    the image's files keep their owners' numbers (a file of gid 42 is gid 42, not 41 as the
    keep-id layout would show it), and the image's root's files are yours."""
    single = IdMapPlan("single", [(0, uid, 1)], [(0, gid, 1)],
                       nested_uid_map=None if root else [(uid, 0, 1)],
                       nested_gid_map=None if root else [(gid, 0, 1)])
    uranges = subid_ranges(name, uid, path, subuid, "u")
    # subgid(5) lines are owned by a user (name or uid), like subuid(5) lines.
    granges = subid_ranges(name, uid, path, subgid, "g") if uranges else []
    newuidmap, newgidmap = which("newuidmap", path), which("newgidmap", path)
    if not uranges:
        single.reason = f"no subordinate uid range for `{name}` in {subuid}"
    elif not granges:
        single.reason = f"no subordinate gid range for `{name}` in {subgid}"
    elif not (newuidmap and newgidmap):
        single.reason = "newuidmap/newgidmap not found on PATH (Debian package `uidmap`)"
    elif nnp:
        # Setuid helpers gain nothing under no_new_privs (prctl(2)); rootlesskit hangs
        # here (rootlesskit#551), rbox says so and maps the one id it may map itself.
        single.reason = "no_new_privs is set on this session, so newuidmap cannot work"
    if single.reason:
        return single
    stored = image and not root
    uid_map, gid_map = build_map(uid, uranges, root or stored), build_map(gid, granges, root or stored)
    return IdMapPlan("subid", uid_map, gid_map, newuidmap=newuidmap or "", newgidmap=newgidmap or "",
                     nested_uid_map=nested_keep(uid, uid_map) if stored else None,
                     nested_gid_map=nested_keep(gid, gid_map) if stored else None,
                     nested_setgroups=nested_setgroups("subid", gid, groups or []))


def nested_keep(own: int, extents: list[Extent]) -> list[Extent]:
    """U2's map over a root-layout U1 (`build_map(own, ..., root=True)`): your id is U1's 0
    (you on the host), every other id of U1 is itself, and U1's `own` (a subordinate id)
    is left out, since your id takes its place. Each line lies within one line of U1's map
    (see `identity`); U1's 0 is only yours."""
    nested = [(own, 0, 1)]
    for inner, _, count in sorted(extents):
        if inner == 0:
            continue
        end = inner + count
        if inner <= own < end:
            if own > inner:
                nested.append((inner, inner, own - inner))
            if end > own + 1:
                nested.append((own + 1, own + 1, end - own - 1))
        else:
            nested.append((inner, inner, count))
    return sorted(nested)


def apply_idmap(plan: IdMapPlan, pid: int) -> None:
    """Map stage-1's user namespace: newgidmap and newuidmap at the same time."""
    if plan.mode == "subid":
        run_helpers(helper_argv(plan.newgidmap, pid, plan.gid_map), helper_argv(plan.newuidmap, pid, plan.uid_map))
        return
    # setgroups must be `deny` before an unprivileged gid_map write (Linux 3.19+,
    # CVE-2014-8989); files written by the namespace's creator, from the parent namespace.
    for name, text in (("setgroups", "deny"), ("uid_map", map_text(plan.uid_map)),
                       ("gid_map", map_text(plan.gid_map))):
        log.step(f"write /proc/{pid}/{name}: {text.strip()}")
        try:
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(text)
        except OSError as e:
            raise NamespaceError(f"cannot write `/proc/{pid}/{name}`: {e.strerror}",
                                 hint="see rbox(1), HOST SETUP") from None


def map_text(extents: list[Extent]) -> str:
    return "".join(f"{i} {o} {c}\n" for i, o, c in extents)


def run_helpers(*argvs: list[str]) -> None:
    """Run setuid helpers side by side; the first failure, in argument order, becomes the
    error, with the helper's output. Never hangs (HELPER_TIMEOUT).

    newgidmap and newuidmap need no order: each writes its own file of the target
    (/proc/PID/gid_map, uid_map; newgidmap's own `setgroups` write, where it makes one,
    comes before its gid_map), the kernel takes each map whole, once (user_namespaces(7)),
    and stage-1 waits for IDMAP_DONE, sent only when both have exited. One after the
    other they cost two process starts in a row (about 2 ms each)."""
    import time

    from rootless import spawn

    started: list[spawn.Helper] = []
    try:
        for argv in argvs:
            try:
                started.append(spawn.Helper(argv))
            except OSError as e:
                raise NamespaceError(f"cannot run `{argv[0]}`: {e.strerror}",
                                     hint=resource_hint(e.errno or 0) or f"`{os.path.basename(argv[0])}` must be "
                                     "an executable file (Debian package `uidmap`)") from None
        deadline = time.monotonic() + HELPER_TIMEOUT
        for argv, helper in zip(argvs, started, strict=True):
            status = helper.wait_exit(max(0.0, deadline - time.monotonic()))
            check_helper(argv, None if status is None else os.waitstatus_to_exitcode(status), helper.output_tail())
    finally:
        for helper in started:
            helper.stop()


def check_helper(argv: list[str], code: int | None, output: str) -> None:
    """A helper's exit code (None: it timed out) as an error, if it failed."""
    tool = os.path.basename(argv[0])
    if code is None:
        raise NamespaceError(f"`{tool}` did not finish within {HELPER_TIMEOUT:g} s",
                             hint="the machine may be overloaded (or a directory service slow): try again")
    if code != 0:
        raise NamespaceError(f"`{' '.join(argv)}` failed: {output}",
                             hint=resource_hint_in(output) or f"`{tool}` must be setuid root and your ranges in "
                             "/etc/sub[ug]id must be valid; see rbox(1), HOST SETUP")