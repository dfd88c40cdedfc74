"""Overlays: a writable view of a tree that stays unchanged (an image, a host directory),
its writes discarded at exit or kept in a directory.

Runs in: parent (`layers`, `choose`, `kernel_probe`, `check_keep`: while the spec is
built), stage-1 (`lock_keep`: the --persist and UPPER directories) and init (`mount`:
the overlay itself, in the workspace before the pivot). Imported only when an option
asks for an overlay: never on the path of a plain `rbox run`.

An overlay has a read-only lower layer (the image's tree, a SquashFS file mounted with
squashfuse, a host directory) and a writable upper layer: every write lands in the upper
one, the lower is never written (overlayfs copies a file up before changing it). The
upper layer is a tmpfs by default: it exists only in the sandbox's mount namespace (its
workspace, detached at the pivot), so it is freed with the sandbox, even after kill -9,
and no file of it is left anywhere; its cost is memory (the writes, at most half the RAM,
tmpfs's default). `--persist DIR` and `--overlay SRC:UPPER` put it on disk instead:
DIR/upper and DIR/work, locked (flock on DIR/lock) for one sandbox at a time, because
overlayfs forbids two mounts sharing an upper layer.

Two drivers, one per host: the kernel's overlayfs inside the user namespace (mount
option `userxattr`, Linux 5.11; its upper layer on tmpfs needs tmpfs's user extended
attributes, Linux 6.6), or fuse-overlayfs where the kernel cannot (fusekeeper.py runs the
daemon outside the sandbox's PID namespace). `kernel_probe` tries exactly what rbox
does, once per run; RBOX_OVERLAY=kernel|fuse forces one (a knob for tests and
debugging). A directory kept with one driver is refused with the other: they record
whiteouts and opaque directories differently.
"""

from __future__ import annotations

import errno
import os
import stat

from rootless import log
from rootless import syscalls as sc
from rootless.errors import MountError, RboxError, SpecError

TYPE_CHECKING = False  # not `from typing import ...`: typing costs 9 ms at start-up
if TYPE_CHECKING:
    from rootless.spec import Spec

KERNEL, FUSE = "kernel", "fuse"
ENV = "RBOX_OVERLAY"
WORKSPACE = "/overlays"       # init's, beside /newroot and /oldroot (rootfs.py)
MARKER = "rbox-overlay"       # in a kept directory: `driver=kernel` or `driver=fuse`
SQUASHFS_MAGIC = b"hsqs"      # the superblock's first four bytes (little-endian "sqsh")
PROGRAMS = {FUSE: "fuse-overlayfs", "squashfs": "squashfuse"}


class Layer:
    """One overlay (or one SquashFS image shown read-only): `n` numbers it (the image
    first), `dst` is where the sandbox shows it, `lower` the host directory under it (None
    for a SquashFS file, `sqfs`), `keep` the host directory its writes are kept in (None:
    a tmpfs, discarded), `overlay` False for a SquashFS image under --read-only."""

    __slots__ = ("n", "dst", "lower", "sqfs", "keep", "overlay", "what")

    def __init__(self, n: int, dst: str, lower: str | None, sqfs: str | None, keep: str | None, overlay: bool,
                 what: str):
        self.n, self.dst, self.lower, self.sqfs, self.keep, self.overlay, self.what = \
            n, dst, lower, sqfs, keep, overlay, what

    def describe(self) -> str:
        return "writes " + (f"kept in {self.keep}" if self.keep else "discarded (tmpfs)")


def layers(spec: Spec) -> list[Layer]:
    """The spec's overlays and SquashFS mounts, numbered as every role numbers them (pure)."""
    found = []
    if spec.rootfs and (spec.image_mode != "read-only" or spec.squashfs):
        found.append(Layer(0, "/", None if spec.squashfs else spec.rootfs, spec.rootfs if spec.squashfs else None,
                           spec.persist, spec.image_mode != "read-only", "the image"))
    for m in spec.mounts:
        if m.kind == "--overlay":
            assert m.src is not None
            found.append(Layer(len(found), m.dst, m.src, None, m.upper, True, f"--overlay {m.src}"))
    return found


# --- parent: which driver, which programs ------------------------------------------------

def choose(environ: dict[str, str], overlay: bool, squashfs: bool) -> tuple[str, dict[str, str]]:
    """The driver for the overlays ("" when there is none) and the FUSE programs the
    sandbox will run (name -> path), checked here so that a missing one is an error now."""
    path = environ.get("PATH")
    programs: dict[str, str] = {}
    driver = ""
    if overlay:
        forced = environ.get(ENV, "")
        if forced not in ("", KERNEL, FUSE):
            raise SpecError(f"invalid {ENV}=`{forced}`", hint=f"set {ENV}=kernel or {ENV}=fuse, or unset it "
                            "(rbox then uses the kernel's overlayfs where it works)")
        driver = forced or (KERNEL if kernel_probe() is None else FUSE)
        log.step(f"overlays: {driver}{' (' + ENV + ')' if forced else ''}")
        if driver == FUSE:
            programs[PROGRAMS[FUSE]] = _program(PROGRAMS[FUSE], path, "fuse-overlayfs")
    if squashfs:
        programs[PROGRAMS["squashfs"]] = _program(PROGRAMS["squashfs"], path, "squashfuse")
    if programs:
        check_fuse_device()
    return driver, programs


def _program(name: str, path: str | None, package: str) -> str:
    from rootless.userns import which

    found = which(name, path)
    if found is None:
        needs = "a SquashFS image needs it" if name == "squashfuse" else \
            "the overlays need it here (`rbox check` says why the kernel's overlayfs is not used)"
        raise SpecError(f"`{name}` is not installed: {needs}",
                        hint=f"an administrator can install the Debian package `{package}`"
                        + ("; or, with an image, run with --read-only" if name != "squashfuse" else ""))
    return found


FUSE_DEVICE = "/dev/fuse"


def check_fuse_device() -> None:
    if not os.access(FUSE_DEVICE, os.R_OK | os.W_OK):
        what = "missing" if not os.path.exists(FUSE_DEVICE) else "not usable by you"
        raise SpecError(f"{FUSE_DEVICE} is {what}: fuse-overlayfs and squashfuse need it",
                        hint=f"an administrator can load the module (`modprobe fuse`) and run `chmod 0666 "
                             f"{FUSE_DEVICE}` (udev's default on Debian)")


def kernel_probe() -> str | None:
    """None when the kernel's overlayfs works in a user namespace with a tmpfs upper layer
    (what rbox does); else why not, in words. A child makes a user and mount namespace,
    a tmpfs, sets a user extended attribute on it and mounts an overlay: about 1.5 ms.

    Only old system calls are involved (unshare, mount, setxattr): under the old-kernel
    test tier's filter (tests/oldkernel), which answers ENOSYS for calls after 4.18, the
    probe still succeeds on a new kernel; what 4.18 lacks is a rule inside mount(2)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            os.write(write_end, _probe_child().encode())
            code = 0
        except BaseException:  # noqa: BLE001 - a forked child must never return
            pass
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        reason = os.read(read_end, 4096).decode(errors="replace")
    finally:
        os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if status != 0 and not reason:
        reason = "the probe failed"
    return reason or None


def _probe_child() -> str:
    """In a forked child: "" when the overlay works, else the reason."""
    uid, gid = os.getuid(), os.getgid()
    try:
        sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        place = next((p for p in ("/tmp", "/dev", "/mnt") if os.path.isdir(p)), "/tmp")
        sc.mount("tmpfs", place, "tmpfs", 0, "mode=0700")
    except OSError as e:
        return f"no user and mount namespace to try it in ({e.strerror})"
    for name in ("lower", "upper", "work", "merged"):
        os.mkdir(f"{place}/{name}")
    try:
        os.setxattr(f"{place}/upper", "user.rbox", b"1")
    except OSError as e:
        return (f"tmpfs has no user extended attributes here ({e.strerror}; Linux 6.6 has them), which overlayfs "
                "needs for an upper layer in a user namespace")
    try:
        sc.mount("overlay", f"{place}/merged", "overlay", 0, options(f"{place}/lower", f"{place}/upper",
                                                                       f"{place}/work"))
        os.mkdir(f"{place}/merged/probe")
    except OSError as e:
        return f"overlayfs refuses a user namespace's mount ({e.strerror}; Linux 5.11 allows it)"
    return "" if os.path.isdir(f"{place}/upper/probe") else "the overlay's writes did not reach its upper layer"


def options(lower: str, upper: str, work: str) -> str:
    """The kernel overlay's mount options. The paths are rbox's own (no `,`, `:` or `\\`,
    which overlayfs would take as separators)."""
    return f"lowerdir={lower},upperdir={upper},workdir={work},userxattr"


def is_squashfs(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == SQUASHFS_MAGIC
    except OSError:
        return False


# --- parent: the directories writes are kept in ------------------------------------------

def check_keep(typed: str, path: str, option: str, lowers: list[str]) -> str:
    """A --persist DIR or --overlay UPPER, resolved: refused on a network file system,
    when it overlaps a lower layer (its writes would change what lies under it), and when
    it is someone else's (they could read the writes, or swap its parts for links)."""
    full, path = os.path.realpath(path), typed
    if os.path.lexists(full) and not os.path.isdir(full):
        raise SpecError(f"{option} `{path}` is not a directory", hint=f"give {option} a directory (made if missing)")
    if os.path.isdir(full) and os.stat(full).st_uid != os.getuid():
        raise SpecError(f"{option} `{path}` belongs to another user",
                        hint=f"give {option} a directory of your own (made if missing, mode 0700)")
    existing = full
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    from rootless.image.store import NETWORK_FS

    try:
        kind = NETWORK_FS.get(sc.statfs_type(existing))
    except OSError as e:
        raise SpecError(f"cannot use {option} `{path}`: {e.strerror}",
                        hint=f"give {option} a directory you may write") from None
    if kind is not None:
        raise SpecError(f"{option} `{path}` is on {kind}, a network file system: overlayfs cannot keep its upper "
                        "layer there", hint=f"give {option} a directory on this node's own disk, such as "
                                            "/var/tmp/$USER.keep")
    for lower in lowers:
        if _inside(full, lower) or _inside(lower, full):
            raise SpecError(f"{option} `{path}` overlaps `{lower}`, the tree it would keep the writes of",
                            hint=f"give {option} a directory outside `{lower}`")
    return full


def _inside(path: str, top: str) -> bool:
    return path == top or top == "/" or path.startswith(top.rstrip("/") + "/")


# --- stage-1: lock the kept directories --------------------------------------------------

def lock_keep(found: list[Layer], driver: str) -> list[int]:
    """Make each kept directory (mode 0700) and lock it for this sandbox; the locks are
    held by descriptors that stay open in stage-1 and init (close-on-exec: never the
    command's) and go with them. Runs in stage-1, in the host's view of the paths."""
    import fcntl

    locks = []
    for layer in found:
        if layer.keep is None:
            continue
        option = "--persist" if layer.dst == "/" else f"the UPPER of {layer.what}"
        try:
            os.makedirs(layer.keep, mode=0o700, exist_ok=True)
            fd = os.open(f"{layer.keep}/lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            raise RboxError(f"cannot use {option} `{layer.keep}`: {e.strerror}",
                            hint="give a directory you may write, on this node's own disk") from None
        locks.append(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RboxError(f"{option} `{layer.keep}` is in use by another rbox",
                            hint="overlayfs forbids two sandboxes sharing an upper layer: wait for the other one to "
                                 "end, or give another directory") from None
        recorded = _read_marker(layer.keep)
        if recorded and recorded != driver:
            raise RboxError(f"{option} `{layer.keep}` was written by the {recorded} overlay driver, this run uses "
                            f"the {driver} one", hint=f"they record deletions differently: use it where {ENV}="
                                                     f"{recorded} is right, or give another directory")
    return locks


def _read_marker(keep: str) -> str:
    try:
        with open(f"{keep}/{MARKER}") as f:
            return f.read(100).strip().removeprefix("driver=")
    except OSError:
        return ""


# --- init and the FUSE keeper: the upper layer -------------------------------------------

def prepare_upper(rw: str, lower: str, driver: str, kept: bool) -> tuple[str, str]:
    """`rw`/upper and `rw`/work, made when missing. A new upper layer gets the lower
    root's mode and owner: the overlay's root is the upper directory itself."""
    upper, work = f"{rw}/upper", f"{rw}/work"
    fresh = not os.path.isdir(upper)
    if fresh:
        os.mkdir(upper, 0o755)
        st = os.stat(lower)
        os.chmod(upper, stat.S_IMODE(st.st_mode))
        try:
            os.chown(upper, st.st_uid, st.st_gid)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EPERM):     # an owner this namespace does not map
                raise
    if not os.path.isdir(work):
        os.mkdir(work, 0o700)
    if kept and fresh:
        with open(f"{rw}/{MARKER}", "w") as f:
            f.write(f"driver={driver}\n")
    return upper, work


def mount(layer: Layer, driver: str, oldroot: str, target: str | None) -> str:
    """The overlay of `layer` at `target`, in init (for a SquashFS image under
    --read-only, `target` None: only the squashfuse mount); returns where its lower layer
    is mounted. Its parts live in the workspace (WORKSPACE/N), which the pivot detaches:
    the command never sees a lower or an upper layer itself, only the overlay."""
    base = f"{WORKSPACE}/{layer.n}"
    lower = f"{base}/lower"
    os.makedirs(lower)
    if driver == FUSE and layer.overlay:
        assert target is not None
        # fuse-overlayfs reaches its layers itself, in its keeper's namespace.
        from rootless import fusekeeper  # loaded by stage-1 before the fork

        fusekeeper.mount(f"ov{layer.n}", target, "fuse-overlayfs", _flags(layer), layer.what)
        return lower
    if layer.sqfs:
        from rootless import fusekeeper

        fusekeeper.mount(f"sq{layer.n}", lower, "squashfuse", sc.MS_NODEV | sc.MS_NOSUID | sc.MS_RDONLY, layer.what)
    else:
        assert layer.lower is not None
        _mount(oldroot + layer.lower, lower, None, sc.MS_BIND, None, f"bind the lower layer of {layer.what}")
    if target is None or not layer.overlay:
        return lower
    rw = f"{base}/rw"
    os.mkdir(rw)
    if layer.keep is None:
        # Discarded with the sandbox: a tmpfs in init's workspace, which nothing outside
        # the sandbox's mount namespace holds.
        _mount("tmpfs", rw, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=0700", f"mount the upper layer of {layer.what}")
    else:
        _mount(oldroot + layer.keep, rw, None, sc.MS_BIND, None, f"bind `{layer.keep}` for {layer.what}")
    upper, work = prepare_upper(rw, lower, driver, layer.keep is not None)
    _mount("overlay", target, "overlay", _flags(layer), options(lower, upper, work),
           f"mount the overlay of {layer.what}")
    return lower


def _flags(layer: Layer) -> int:
    """An image's root keeps its set-id programs as its binds did; a host directory's
    overlay does not (nosuid)."""
    return sc.MS_NODEV | (0 if layer.dst == "/" else sc.MS_NOSUID)


def _mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None, what: str) -> None:
    try:
        sc.mount(src, dst, fstype, flags, data)
    except OSError as e:
        raise MountError(f"cannot {what}: {e.strerror}",
                         hint="run `rbox check` (the overlay line), or force fuse-overlayfs with "
                              f"{ENV}=fuse; run again with --debug to see the mounts") from None
