"""The sandbox's filesystem as a list of operations.

Runs in: parent (`plan`, `optimize`, `describe` are pure, for --dry-run and tests) and
init (`apply`, after rootfs.enter_workspace() put the host's root at OLDROOT and an empty
NEWROOT beside it).

The shape is bubblewrap's SetupOp list and mkosi's FSOperation classes: plan the mounts
as data, sort them so parents come before children, then carry them out in one loop.
"""

from __future__ import annotations

import errno
import os
import stat

from rootless import log, net
from rootless import syscalls as sc
from rootless.errors import MountError, resource_hint
from rootless.paths import LinkLoop, walk
from rootless.spec import Spec

TYPE_CHECKING = False  # not `from typing import ...`: typing costs 9 ms at start-up
if TYPE_CHECKING:
    from rootless.overlay import Layer

OLDROOT = "/oldroot"
NEWROOT = "/newroot"
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")


class Op:
    dst: str
    given: str | None = None   # the user's option as typed, when its paths resolved otherwise

    def describe(self) -> str:
        raise NotImplementedError

    def origin(self) -> str:
        return f" (from {self.given})" if self.given else ""

    def apply(self, oldroot: str, newroot: str) -> None:
        raise NotImplementedError


class RootBind(Op):
    """The host's `/`, recursively and read-only on every submount."""

    dst = "/"

    def describe(self) -> str:
        return "bind / -> / [ro, recursive]"

    def apply(self, oldroot: str, newroot: str) -> None:
        _mount(oldroot, newroot, None, sc.MS_BIND | sc.MS_REC, what="bind the host's `/`")
        make_readonly(newroot, oldroot)


class ImageRoot(Op):
    """An image's tree (--rootfs, --image) as `/` under --read-only, without changing it.

    The root is a tmpfs holding read-only binds of the image's top-level entries (its
    symlinks copied), so a mount point the image lacks (your home, the working
    directory, /etc/hosts) is made in a tmpfs, never in the image: ensure_mountpoint()
    replaces the bind of the nearest image directory by such a tmpfs, level by level,
    as deep as needed (`expand`). seal_image() makes those tmpfs mounts read-only once
    the plan is carried out, so the command can write nowhere in `/` either."""

    dst = "/"

    def __init__(self, rootfs: str, layer: Layer | None = None):
        self.rootfs, self.layer = rootfs, layer      # `layer`: a SquashFS file, mounted first

    def describe(self) -> str:
        kind = "squashfuse " if self.layer else ""
        return f"image {kind}{self.rootfs} -> / [ro, its entries bound on a tmpfs]"

    def apply(self, oldroot: str, newroot: str) -> None:
        source = oldroot + self.rootfs
        if self.layer is not None:
            from rootless import overlay

            source = overlay.mount(self.layer, "", oldroot, None)
        IMAGE.clear()
        IMAGE["root"] = newroot
        _underlay(source, newroot, "/", oldroot)
        _own_places(newroot)


class ImageOverlay(Op):
    """An image's tree (--rootfs, --image) as `/`, writable: an overlay whose writes go to
    a tmpfs (discarded at exit) or to --persist DIR, never to the image (overlay.py).
    Mount points the image lacks are made in the upper layer."""

    dst = "/"

    def __init__(self, layer: Layer, driver: str):
        self.layer, self.driver = layer, driver

    def describe(self) -> str:
        source = self.layer.lower or f"squashfuse {self.layer.sqfs}"
        return f"overlay {source} -> / [{self.driver} overlay; {self.layer.describe()}]"

    def apply(self, oldroot: str, newroot: str) -> None:
        from rootless import overlay

        overlay.mount(self.layer, self.driver, oldroot, newroot)
        _own_places(newroot)


def _own_places(newroot: str) -> None:
    for place in ("proc", "dev", "tmp", "run"):      # where the sandbox mounts its own
        if not os.path.lexists(f"{newroot}/{place}"):
            os.mkdir(f"{newroot}/{place}", 0o755)


class Overlay(Op):
    """--overlay SRC[:UPPER]: the host directory SRC writable at its place, its writes in
    a tmpfs or in UPPER; SRC itself is never written (overlay.py)."""

    def __init__(self, layer: Layer, driver: str, given: str | None = None):
        self.layer, self.driver, self.dst, self.given = layer, driver, layer.dst, given

    def describe(self) -> str:
        return f"overlay {self.layer.lower} -> {self.dst} [{self.driver} overlay; {self.layer.describe()}]" \
               f"{self.origin()}"

    def apply(self, oldroot: str, newroot: str) -> None:
        from rootless import overlay

        dst = ensure_mountpoint(newroot, self.dst, True, f"show --overlay `{self.layer.lower}`")
        overlay.mount(self.layer, self.driver, oldroot, dst)


# For an image run, in init only: `root` (the new root), `oldroot`, the tmpfs mounts of
# the underlay (`tmpfs:` + path) and the image directories bound read-only (`dir:` +
# the path inside -> the host path), which expand() may replace.
IMAGE: dict[str, str] = {}


def _underlay(src: str, dst: str, inside: str, oldroot: str) -> None:
    """A tmpfs at `dst` with `src`'s entries: directories and files bound read-only,
    symlinks copied; other types (FIFOs, sockets) left out."""
    _mount("tmpfs", dst, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=0755", what=f"mount a tmpfs on `{inside}`")
    IMAGE["tmpfs:" + dst] = inside
    os.chmod(dst, os.stat(src).st_mode & 0o7777)
    for name in os.listdir(src):
        source, target = f"{src}/{name}", f"{dst}/{name}"
        child = inside.rstrip("/") + "/" + name
        mode = os.lstat(source).st_mode
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(source), target)
            continue
        if stat.S_ISDIR(mode):
            os.mkdir(target, 0o755)
            IMAGE["dir:" + child] = source
        elif stat.S_ISREG(mode):
            open(target, "w").close()
        else:
            continue
        _mount(source, target, None, sc.MS_BIND | sc.MS_REC, what=f"bind the image's `{child}`")
        make_readonly(target, oldroot)


def expand(inside: str) -> bool:
    """Make room below `inside` (a path in the new root, missing or under a read-only
    image directory): the deepest image directory above it becomes a tmpfs of binds.
    False when no image directory is above it (no image, or another mount is there)."""
    if "root" not in IMAGE:
        return False
    dirs = [p for p in (k[4:] for k in IMAGE if k.startswith("dir:")) if inside == p or inside.startswith(p + "/")]
    if not dirs:
        return False
    top = min(dirs, key=len)          # the outermost first: its children are registered next
    source = IMAGE.pop("dir:" + top)
    _underlay(source, IMAGE["root"] + top, top, OLDROOT)
    return True


def seal_image() -> None:
    """The underlay's tmpfs mounts read-only (each one alone: binds on them keep theirs)."""
    for key in [k for k in IMAGE if k.startswith("tmpfs:")]:
        _mount(None, key[6:], None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV,
               what=f"make the image's `{IMAGE[key]}` read-only")
    IMAGE.clear()


class Bind(Op):
    def __init__(self, src: str, dst: str, ro: bool, given: str | None = None):
        self.src, self.dst, self.ro, self.given = src, dst, ro, given

    def describe(self) -> str:
        return f"bind {self.src} -> {self.dst} [{'ro' if self.ro else 'rw'}]{self.origin()}"

    def apply(self, oldroot: str, newroot: str) -> None:
        src = oldroot + self.src
        dst = ensure_mountpoint(newroot, self.dst, os.path.isdir(src), f"bind `{self.src}`")
        _mount(src, dst, None, sc.MS_BIND | sc.MS_REC, what=f"bind `{self.src}` to `{self.dst}`")
        if self.ro:
            make_readonly(dst, oldroot)


class Tmpfs(Op):
    def __init__(self, dst: str, mode: str = "0755", ro: bool = False, given: str | None = None):
        self.dst, self.mode, self.ro, self.given = dst, mode, ro, given

    def describe(self) -> str:
        return f"tmpfs {self.dst} [mode={self.mode}{', ro' if self.ro else ''}]{self.origin()}"

    def apply(self, oldroot: str, newroot: str) -> None:
        dst = ensure_mountpoint(newroot, self.dst, True, f"mount a tmpfs on `{self.dst}`")
        flags = sc.MS_NOSUID | sc.MS_NODEV | (sc.MS_RDONLY if self.ro else 0)
        _mount("tmpfs", dst, "tmpfs", flags, f"mode={self.mode}", what=f"mount a tmpfs on `{self.dst}`")


class Hide(Op):
    """An empty read-only tmpfs over a directory, /dev/null over anything else."""

    def __init__(self, dst: str, given: str | None = None):
        self.dst, self.given = dst, given

    def describe(self) -> str:
        return f"hide {self.dst}{self.origin()}"

    def apply(self, oldroot: str, newroot: str) -> None:
        dst = resolve_in(newroot, self.dst)
        if os.path.isdir(dst):
            Tmpfs(self.dst, "0755", ro=True).apply(oldroot, newroot)
        elif os.path.lexists(dst):
            _mount(oldroot + "/dev/null", dst, None, sc.MS_BIND, what=f"hide `{self.dst}`")
        else:
            raise MountError(f"cannot hide `{self.dst}`: No such file or directory in the sandbox",
                             hint="check the path; only what exists can be hidden (a missing path needs no hiding)")


class Proc(Op):
    dst = "/proc"

    def describe(self) -> str:
        return "proc /proc [new, for this PID namespace]"

    def apply(self, oldroot: str, newroot: str) -> None:
        # Only PID 1 of the new PID namespace may mount its proc (architecture notes,
        # pitfall 9); the mount also needs a fully visible /proc in our mount namespace
        # (the host's, under OLDROOT), which is why it happens before the old root goes.
        _mount("proc", newroot + "/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
               what="mount /proc")


class Dev(Op):
    """A minimal /dev: tmpfs, the host's harmless nodes bound in, a new devpts, /dev/shm.

    mknod is impossible in a user namespace, so the nodes are bind mounts of the host's
    (as bwrap's --dev does). devpts gets no gid= option: gid 5 may not be mapped, and the
    kernel then refuses the mount (EINVAL; apptainer/singularity#1186).
    """

    dst = "/dev"

    def describe(self) -> str:
        return "dev /dev [tmpfs; " + " ".join(DEV_NODES) + "; devpts; shm]"

    def apply(self, oldroot: str, newroot: str) -> None:
        dev = newroot + "/dev"
        _mount("tmpfs", dev, "tmpfs", sc.MS_NOSUID | sc.MS_NOEXEC, "mode=0755", what="mount /dev")
        for node in DEV_NODES:
            open(f"{dev}/{node}", "w").close()
            _mount(f"{oldroot}/dev/{node}", f"{dev}/{node}", None, sc.MS_BIND, what=f"bind /dev/{node}")
        os.mkdir(f"{dev}/pts")
        _mount("devpts", f"{dev}/pts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC,
               "newinstance,ptmxmode=0666,mode=620", what="mount /dev/pts")
        os.symlink("pts/ptmx", f"{dev}/ptmx")
        os.mkdir(f"{dev}/shm")
        _mount("tmpfs", f"{dev}/shm", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=1777", what="mount /dev/shm")
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(target, f"{dev}/{name}")


class File(Op):
    """A file rbox writes (the sandbox's resolv.conf, hosts), bound read-only at dst.

    The content lives in /run/rbox/ on the sandbox's /run tmpfs; the bind goes to where
    dst resolves inside, so a host /etc/resolv.conf that links into /run still works."""

    def __init__(self, dst: str, content: str, optional: bool = False):
        self.dst, self.content, self.optional = dst, content, optional

    def describe(self) -> str:
        return f"file {self.dst} [ro, {len(self.content)} bytes{', if it exists' if self.optional else ''}]"

    def apply(self, oldroot: str, newroot: str) -> None:
        if self.optional and not os.path.lexists(newroot + self.dst):
            # A host without this file (a minimal image with no /etc/hosts): the
            # read-only root has no place for it, and the host lived without it too.
            # (A symlink counts as there: resolv.conf often links into /run, which is
            # empty in the sandbox, and ensure_mountpoint creates its target there.)
            log.step(f"skip {self.dst}: the host has none")
            return
        store = f"{newroot}/run/rbox"
        os.makedirs(store, mode=0o755, exist_ok=True)
        src = f"{store}/{os.path.basename(self.dst)}"
        with open(src, "w") as f:
            f.write(self.content)
        dst = ensure_mountpoint(newroot, self.dst, False, f"write `{self.dst}`")
        _mount(src, dst, None, sc.MS_BIND, what=f"bind `{self.dst}`")
        _mount(None, dst, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY, what=f"make `{self.dst}` read-only")


class Account(File):
    """An entry for you in the image's /etc/passwd or /etc/group (`line`), added when no
    line of the file names your id (`key`), so that `id` and `whoami` name you. A
    writable image gets it in the file itself (later runs of --persist keep it, and
    useradd or a package's maintainer script can change the file); a read-only one gets
    the file rbox writes, bound read-only over it."""

    def __init__(self, dst: str, key: str, line: str, in_place: bool):
        super().__init__(dst, "")
        self.key, self.line, self.in_place = key, line, in_place

    def describe(self) -> str:
        return f"entry {self.dst} [id {self.key}{', in the image' if self.in_place else ', ro'}]"

    def apply(self, oldroot: str, newroot: str) -> None:
        path = resolve_in(newroot, self.dst)
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read(1 << 20)
        except OSError:
            text = ""
        if any(line.split(":")[2:3] == [self.key] for line in text.splitlines()):
            if not self.in_place:
                File(self.dst, text).apply(oldroot, newroot)
            return
        text += ("" if text.endswith("\n") or not text else "\n") + self.line + "\n"
        if not self.in_place:
            File(self.dst, text).apply(oldroot, newroot)
            return
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(text)
        except OSError as e:
            # An image whose /etc/passwd is no file (a directory, say): only `id` suffers.
            log.step(f"no entry added to {self.dst}: {e.strerror}")


class Dir(Op):
    def __init__(self, dst: str, mode: int):
        self.dst, self.mode = dst, mode

    def describe(self) -> str:
        return f"dir {self.dst} [mode={self.mode:04o}]"

    def apply(self, oldroot: str, newroot: str) -> None:
        path = resolve_in(newroot, self.dst)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, self.mode)


def plan(spec: Spec) -> list[Op]:
    """The mounts for a spec, in the order given (optimize() sorts them).

    Every path in the spec is resolved already (spec.py, paths.py), so the order
    optimize() gives is the order of the places themselves, whatever aliases the options
    used. The places the sandbox mounts itself are paths.SANDBOX_OWN."""
    ops: list[Op] = [_root(spec), Proc(), Dev(),
                     Tmpfs("/tmp", "1777"), Tmpfs("/var/tmp", "1777"), Tmpfs("/run", "0755"),
                     Dir(f"/run/user/{spec.uid}", 0o700)]
    ops += _host_resolver(spec) + _network_files(spec)
    ops += [File(path, content) for path, content in spec.image_files.items()]
    ops += [Account(path, key, line, spec.image_mode != "read-only") for path, key, line in spec.image_accounts]
    if spec.home_mode == "rw":
        ops.append(Bind(spec.home, spec.home, ro=False))
    elif spec.home_mode == "tmpfs":
        ops.append(Tmpfs(spec.home, "0700"))
    elif spec.rootfs and spec.home != "/" and os.path.isdir(spec.home):
        # --home ro with an image: the host's `/` is not there to show the home read-only,
        # so it is bound at its place, read-only, as it is seen without an image.
        ops.append(Bind(spec.home, spec.home, ro=True))
    if spec.cwd_bound:
        # The current directory, when it is a project directory, is the one place the
        # command may write on the host (spec.cwd_protection says which are not).
        ops.append(Bind(spec.cwd, spec.cwd, ro=False))
    overlays = iter([layer for layer in _layers(spec) if layer.dst != "/"])    # the --overlay ones, in order
    for m in spec.mounts:
        if m.kind == "--overlay":
            ops.append(Overlay(next(overlays), spec.overlay_driver, given=m.given))
        elif m.kind == "--tmpfs":
            ops.append(Tmpfs(m.dst, "0755", given=m.given))
        elif m.kind == "--hide":
            ops.append(Hide(m.dst, given=m.given))
        else:
            assert m.src is not None
            ops.append(Bind(m.src, m.dst, ro=(m.kind == "--ro-bind"), given=m.given))
    return ops


def _root(spec: Spec) -> Op:
    if not spec.rootfs:
        return RootBind()
    image = _layers(spec)[0] if spec.image_mode != "read-only" or spec.squashfs else None
    if spec.image_mode == "read-only":
        return ImageRoot(spec.rootfs, image)
    assert image is not None
    return ImageOverlay(image, spec.overlay_driver)


def _layers(spec: Spec) -> list[Layer]:
    if not spec.overlay_driver and not spec.squashfs:
        return []
    from rootless import overlay  # only with an overlay or a SquashFS image (and loaded by then)

    return overlay.layers(spec)


def _host_resolver(spec: Spec) -> list[Op]:
    # /etc/resolv.conf is often a symlink into /run (systemd-resolved, NetworkManager),
    # which the sandbox replaces with a tmpfs; keep the file it points to, read-only.
    target = os.path.realpath("/etc/resolv.conf")
    hidden = ("/run/", "/tmp/", "/var/tmp/")
    if spec.rootfs:
        return []           # an image gets the host's resolver as a file of its own (spec.image_files)
    if spec.net == "host" and target.startswith(hidden) and os.path.isfile(target):
        return [Bind(target, target, ro=True)]
    return []


def _network_files(spec: Spec, etc: str = "/etc") -> list[Op]:
    """The sandbox's own /etc/hosts (naming its host name) and, when a helper serves
    DNS at 10.0.2.3, its own /etc/resolv.conf. The host's files are never modified."""
    # Every mode, --net=host too: the sandbox's UTS namespace has its own host name, which
    # gethostbyname(gethostname()) must still resolve.
    # An image gets both files whether it has them or not (they are made in a tmpfs).
    optional = not spec.rootfs
    ops: list[Op] = [File("/etc/hosts", net.hosts(_read(f"{etc}/hosts"), spec.hostname, spec.net),
                          optional=optional)]
    if net.uses_helper(spec.net):
        ops.append(File("/etc/resolv.conf", net.resolv_conf(_read(f"{etc}/resolv.conf")), optional=optional))
    return ops


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def depth(path: str) -> int:
    return len([p for p in path.split("/") if p])


def optimize(ops: list[Op]) -> list[Op]:
    """Parents before children (a stable sort by depth, as mkosi's optimize()), so that a
    tmpfs on /tmp never hides a bind below it; at equal depth the later option wins.
    The depth is the resolved path's (spec.py): an alias cannot move a --hide or a
    --ro-bind before the bind of its ancestor."""
    return sorted(ops, key=lambda op: depth(op.dst))


def resolve_in(root: str, path: str, max_links: int = 40) -> str:
    """`path` as seen from inside `root`, following symlinks without ever leaving it.

    An absolute symlink inside the new tree (/etc/foo -> /etc/bar) must resolve against
    the new root, not against the workspace init is running in (mkosi's chase()).
    Missing components are kept as they are, so the result can be created.
    """
    def target(candidate: str) -> str | None:
        return os.readlink(root + candidate) if os.path.islink(root + candidate) else None

    try:
        return root + walk(path, target, max_links)
    except LinkLoop:
        raise MountError(f"cannot resolve `{path}`: too many levels of symbolic links",
                         hint="the path has a symbolic link loop: use the real path") from None


def ensure_mountpoint(root: str, path: str, directory: bool, what: str) -> str:
    """The resolved mount point, created (with parents) when it is missing; in an image's
    read-only tree, in a tmpfs put in its place (ImageRoot, expand)."""
    dst = resolve_in(root, path)
    if os.path.lexists(dst):
        return dst
    while True:
        try:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if directory:
                os.mkdir(dst)
            else:
                open(dst, "w").close()
            return dst
        except OSError as e:
            if e.errno == errno.EROFS and expand(dst[len(root):] or "/"):
                continue
            if e.errno == errno.EROFS:
                raise MountError(f"cannot {what}: `{path}` does not exist in the sandbox and its parent "
                                 "is read-only", hint="use a destination that exists on the host, or one "
                                 "under /tmp, /run or a --tmpfs") from None
            raise MountError(f"cannot {what}: cannot create `{path}`: {e.strerror}",
                             hint=resource_hint(e.errno or 0) or "use a destination that exists, or one under "
                             "/tmp, /run or a --tmpfs") from None


def _mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None,
           *, what: str) -> None:
    try:
        sc.mount(src, dst, fstype, flags, data)
    except OSError as e:
        raise MountError(f"cannot {what}: {e.strerror}", hint=_mount_hint(e.errno or 0)) from None


def _mount_hint(err: int) -> str:
    if err == errno.ENOTDIR:
        return ("a directory goes on a directory, a file on a file: check both paths (--hide hides a file, "
                "--tmpfs needs a directory)")
    return resource_hint(err) or "run again with --debug to see the mounts before it; see rbox(1), HOST SETUP"


# Flags a remount must keep: the kernel refuses (EPERM) to clear a flag that was locked
# when the mount came into our user namespace (mount_namespaces(7), "locked mounts").
_STATVFS_TO_MS = ((os.ST_NOSUID, sc.MS_NOSUID), (os.ST_NODEV, sc.MS_NODEV), (os.ST_NOEXEC, sc.MS_NOEXEC),
                  (os.ST_NOATIME, sc.MS_NOATIME), (os.ST_NODIRATIME, sc.MS_NODIRATIME),
                  (os.ST_RELATIME, sc.MS_RELATIME))


def make_readonly(path: str, oldroot: str) -> None:
    """Make `path` and every mount below it read-only.

    `oldroot` is where the host's /proc is: the workspace init runs in has none.
    """
    try:
        sc.make_readonly_recursive(path)
        return
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise MountError(f"cannot make `{path}` read-only: {e.strerror}",
                             hint="run again with --debug and report this as a bug") from None
    # Kernels before 5.12 (RHEL 8, Debian 11) have no mount_setattr: remount one by one.
    for mountpoint in submounts(path, f"{oldroot}/proc/self/mountinfo"):
        try:
            flags = os.statvfs(mountpoint).f_flag
        except OSError:
            continue  # hidden under another mount: not reachable, nothing to protect
        keep = 0
        for st, ms in _STATVFS_TO_MS:
            if flags & st:
                keep |= ms
        try:
            sc.mount(None, mountpoint, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | keep)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.EACCES):
                raise MountError(f"cannot make `{mountpoint}` read-only: {e.strerror}",
                                 hint="run again with --debug and report this as a bug") from None


def submounts(path: str, mountinfo: str) -> list[str]:
    with open(mountinfo) as f:
        return mountpoints_under(f.read(), path)


def mountpoints_under(text: str, path: str) -> list[str]:
    """Mount points at or below `path` from mountinfo text, parents first (pure)."""
    found = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        point = unescape(fields[4])
        if point == path or point.startswith(path.rstrip("/") + "/"):
            found.append(point)
    return found


def unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal (proc(5)).
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field
