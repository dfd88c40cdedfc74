"""What the user asked for, validated before anything starts.

Runs in: parent (the forked children read the same object).

Every check that can be made on the host is made here, so a bad option gives one clear
error and exit 125 before any namespace exists (bwrap's block of `die("--x requires
--y")`). Checks that depend on the sandbox's own tree (a bind destination that cannot be
created) happen in init and come back to the parent as an ERROR message.

Every path of an option is resolved here, once (paths.py), so the mount plan is ordered
by the places themselves; and here it is decided whether the current directory is bound
read-write (not when it is `/`, the home, /tmp or another shared place: rbox(1),
--cwd-writable).
"""

from __future__ import annotations

import os
import pwd

from rootless.errors import SpecError
from rootless.fds import check_passable
from rootless.net import DEFAULT_MODE, uses_helper
from rootless.net.ports import Port, check_unique, parse
from rootless.options import Parsed
from rootless.paths import FRESH, HIDDEN, RO, RW, SANDBOX_OWN, View, inside

TYPE_CHECKING = False
if TYPE_CHECKING:
    from rootless.cgroups import Limits
    from rootless.image.store import Store

HOSTNAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.")


class UserMount:
    """One of --bind, --ro-bind, --tmpfs, --hide, --overlay, in the order given, with its
    paths resolved (paths.py); `given` is the option as typed when that differs; `upper`
    the directory an --overlay keeps its writes in (None: discarded)."""

    __slots__ = ("kind", "src", "dst", "given", "upper")

    def __init__(self, kind: str, src: str | None, dst: str, given: str | None = None, upper: str | None = None):
        self.kind, self.src, self.dst, self.given, self.upper = kind, src, dst, given, upper

    @property
    def view_kind(self) -> str:
        # Below an overlay the path continues in its source, as below a read-only bind.
        return {"--tmpfs": FRESH, "--hide": HIDDEN, "--ro-bind": RO, "--overlay": RO}.get(self.kind, RW)


class Spec:
    """Immutable by convention once built; the forked children read it as it is."""

    command: list[str]
    root: bool
    net: str
    ports: list[Port]
    allow_host_loopback: bool
    mounts: list[UserMount]
    home_mode: str
    workdir: str
    hostname: str
    env: dict[str, str]
    dry_run: bool
    debug: bool
    uid: int
    gid: int
    user: str
    home: str
    cwd: str
    cwd_bound: bool          # the cwd is bound read-write (cwd_protection)
    cwd_warning: str | None  # why it is not, when the user should know
    tty: bool       # rbox's stdin, stdout and stderr are all terminals
    pty: bool       # the command gets a new pseudo-terminal (console.py)
    limits: Limits | None   # None: no limit asked, no cgroup work at all
    pass_fds: list[int]     # the caller's descriptors the command gets (--pass-fd), sorted
    argv: list[str]         # rbox's own arguments, to re-run them in a systemd scope
    rootfs: str | None      # --rootfs/--image: the tree shown as `/` (resolved), or a SquashFS file, else None
    squashfs: bool          # rootfs is a SquashFS file (--image FILE.sqfs)
    image_mode: str         # with an image: "discard" (the default), "persist" or "read-only"; else ""
    persist: str | None     # --persist DIR (resolved)
    image_files: dict[str, str]   # with an image: the host's resolv.conf, when no helper serves DNS
    image_accounts: list[tuple[str, str, str]]   # with an image: (file, your id, your entry) for passwd, group
    overlay_driver: str     # "kernel" or "fuse" when an overlay is needed (overlay.py), else ""
    fuse_programs: dict[str, str]   # fuse-overlayfs, squashfuse: their paths, when needed
    name: str | None        # --name (or made up for -d): a named sandbox, joinable (rootless/instance)
    detach: bool            # -d: the supervisor runs in the background, the output goes to a log
    __slots__ = tuple(__annotations__)

    def __init__(self, **fields: object):
        for name in self.__slots__:
            setattr(self, name, fields[name])


def from_parsed(parsed: Parsed, environ: dict[str, str], cwd: str, tty: bool,
                argv: list[str] | None = None) -> Spec:
    v = parsed.values
    net_mode = str(v.get("net") or DEFAULT_MODE)
    uid, gid = os.getuid(), os.getgid()
    try:
        pw = pwd.getpwuid(uid)
        user, home, shell = pw.pw_name, pw.pw_dir, pw.pw_shell
    except KeyError:
        user, home, shell = str(uid), environ.get("HOME", "/"), ""
    home = os.path.realpath(home)
    home_mode = str(v.get("home") or "ro")
    cwd = os.path.realpath(cwd)   # getcwd() is physical already; tests pass other paths
    rootfs, squashfs, config = _image_root(v, environ, cwd)
    image_mode, persist = _image_mode(v, rootfs, cwd)
    mounts, cwd_bound, cwd_warning = _resolve_paths(v, environ, cwd, home, home_mode, uid,
                                                    None if squashfs else rootfs, image=rootfs is not None)
    workdir = _workdir(v.get("workdir"), cwd)
    if rootfs is not None and v.get("workdir") is None:
        workdir = _image_workdir(config, cwd, cwd_bound, home, mounts)
    driver, programs = "", dict[str, str]()
    if squashfs or image_mode in ("discard", "persist") or any(m.kind == "--overlay" for m in mounts):
        from rootless import overlay

        driver, programs = overlay.choose(environ, image_mode in ("discard", "persist") or
                                          any(m.kind == "--overlay" for m in mounts), squashfs)
    return Spec(
        command=_command(parsed, _shell_in(rootfs, shell, squashfs) if rootfs else shell,
                         config if rootfs else None),
        root=bool(v.get("root")),
        net=net_mode,
        ports=_ports(v, net_mode),
        allow_host_loopback=_allow_host_loopback(v, net_mode),
        mounts=mounts,
        home_mode=home_mode,
        workdir=workdir,
        hostname=_hostname(str(v.get("hostname") or "rbox")),
        env=_environment(v, environ, _strings(config.get("Env"))),
        dry_run=bool(v.get("dry_run")),
        debug=bool(v.get("debug")),
        uid=uid, gid=gid, user=user, home=home, cwd=cwd, cwd_bound=cwd_bound, cwd_warning=cwd_warning,
        tty=tty, pty=_pty(v, tty) and not _detach(v),
        limits=_limits(v),
        pass_fds=sorted({check_passable(value) for _, value in _list(v, "pass_fd")}),
        argv=list(argv or []),
        rootfs=rootfs,
        squashfs=squashfs,
        image_mode=image_mode,
        persist=persist,
        image_files=_image_files(net_mode) if rootfs else {},
        image_accounts=_image_accounts(bool(v.get("root")), uid, gid, user, home) if rootfs else [],
        overlay_driver=driver,
        fuse_programs=programs,
        name=_name(v.get("name"), _detach(v)),
        detach=_detach(v),
    )


def _image_root(v: dict[str, object], environ: dict[str, str], cwd: str
                ) -> tuple[str | None, bool, dict[str, object]]:
    """The tree --rootfs or --image names (resolved), whether it is a SquashFS file, and
    the image's config."""
    rootfs, image = v.get("rootfs"), v.get("image")
    if rootfs is not None and image is not None:
        raise SpecError("--rootfs and --image exclude each other", hint="give one of them")
    if image is not None and _names_a_file(str(image), cwd):
        path = _squashfs_file(str(image), cwd)
        return path, True, _sqfs_config(path, str(image))
    if image is not None:
        from rootless.image import store

        the_store = store.Store.open(environ)
        meta = _image_meta(the_store, str(image))
        config = meta.get("config")
        return (os.path.join(the_store.image_dir(str(image)), "rootfs"), False,
                config if isinstance(config, dict) else {})
    if rootfs is None:
        return None, False, {}
    path = os.path.realpath(_absolute(str(rootfs), cwd, "--rootfs"))
    if not os.path.isdir(path):
        raise SpecError(f"--rootfs `{rootfs}` is not a directory",
                        hint="give the directory to show as `/`, e.g. a tree made by `rbox image import`")
    if path == "/":
        raise SpecError("--rootfs / is the host's root, which rbox shows anyway", hint="leave out --rootfs")
    return path, False, {}


def _image_meta(the_store: Store, name: str) -> dict[str, object]:
    """image.json of image `name`, as `rbox image inspect` reads it (command.load), without
    loading the import's modules (tarfile, hashlib: 9 ms) on the run's start-up path."""
    import json

    try:
        with open(os.path.join(the_store.image_dir(name), "image.json")) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise SpecError(f"no image `{name}` in {the_store.path}", hint="`rbox image ls` lists them; "
                        "`rbox image import SOURCE NAME` makes one") from None
    return meta if isinstance(meta, dict) else {}


SQUASHFS_SUFFIXES = (".sqfs", ".squashfs")


def _sqfs_config(path: str, given: str) -> dict[str, object]:
    """The config `rbox image export` put in the file (/.rbox/image.json: Env, Entrypoint,
    Cmd, WorkingDir, User), read by rbox's own reader without mounting it; {} for a
    SquashFS file without one (made by mksquashfs)."""
    from rootless.image import squash
    from rootless.image.unpack import UnpackError

    try:
        return squash.read_sqfs_config(path)
    except (UnpackError, OSError) as e:
        raise SpecError(f"--image `{given}`: {e}", hint="the file is damaged, or not one this rbox can read; "
                        "`rbox image export` makes one") from None


def _names_a_file(image: str, cwd: str) -> bool:
    """--image takes a file for a path (a `/` in it; image names have none) or a name
    ending in .sqfs that exists as a file here."""
    return "/" in image or (image.endswith(SQUASHFS_SUFFIXES) and os.path.lexists(os.path.join(cwd, image)))


def _squashfs_file(image: str, cwd: str) -> str:
    path = os.path.realpath(_absolute(image, cwd, "--image"))
    if os.path.isdir(path):
        raise SpecError(f"--image `{image}` is a directory", hint=f"use --rootfs {image}; --image takes an image "
                        "name (`rbox image ls`) or a SquashFS file")
    if not os.path.isfile(path):
        raise SpecError(f"--image `{image}`: no such SquashFS file",
                        hint="give a SquashFS file (made by `rbox image export` or mksquashfs), or an image name "
                             "from `rbox image ls` (names have no `/`)")
    from rootless.overlay import is_squashfs

    if not is_squashfs(path):
        raise SpecError(f"--image `{image}` is not a SquashFS file (or not readable)",
                        hint="give a file made by `rbox image export` or mksquashfs; `rbox image import` takes "
                             "other kinds of images")
    return path


def _image_mode(v: dict[str, object], rootfs: str | None, cwd: str) -> tuple[str, str | None]:
    """With an image: writable and discarded (the default), --persist DIR, or --read-only."""
    read_only, persist = bool(v.get("read_only")), v.get("persist")
    if rootfs is None:
        if read_only or persist is not None:
            option = "--read-only" if read_only else "--persist"
            raise SpecError(f"{option} is for an image: it needs --image or --rootfs",
                            hint="without an image the host's tree is read-only already; for a writable view of "
                                 "a host directory use --overlay DIR")
        return "", None
    if read_only and persist is not None:
        raise SpecError("--read-only and --persist exclude each other",
                        hint="give --persist DIR to keep the writes, --read-only to allow none")
    if read_only:
        return "read-only", None
    if persist is None:
        return "discard", None
    from rootless import overlay

    return "persist", overlay.check_keep(str(persist), _absolute(str(persist), cwd, "--persist"), "--persist",
                                         [rootfs])


def _strings(value: object) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []


def _image_workdir(config: dict[str, object], cwd: str, cwd_bound: bool, home: str, mounts: list[UserMount]) -> str:
    """Where the command starts in an image: its WorkingDir; else the current directory
    when the sandbox shows it (bound, or in the home), else `/`."""
    working = config.get("WorkingDir")
    if isinstance(working, str) and working.startswith("/"):
        return working
    if cwd_bound or inside(cwd, home) or any(m.kind in ("--bind", "--ro-bind") and inside(cwd, m.dst) for m in mounts):
        return cwd
    return "/"


def _image_files(net_mode: str) -> dict[str, str]:
    """The host's resolver for an image when no helper serves DNS (mounts.py adds the
    helper's)."""
    from rootless.net import uses_helper

    if uses_helper(net_mode):
        return {}
    try:
        with open("/etc/resolv.conf") as f:
            return {"/etc/resolv.conf": f.read(1 << 20)}
    except OSError:
        return {"/etc/resolv.conf": ""}


def _image_accounts(root: bool, uid: int, gid: int, user: str, home: str) -> list[tuple[str, str, str]]:
    """Your entries for the image's /etc/passwd and /etc/group (uid 0 with --root),
    added in the sandbox where the file has no line with your id (mounts.Account), so
    that `id` and `whoami` name you."""
    import grp

    inner_uid, inner_gid = (0, 0) if root else (uid, gid)
    name = "root" if root else user
    try:
        group = "root" if root else grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return [("/etc/passwd", str(inner_uid), f"{name}:x:{inner_uid}:{inner_gid}::{'/root' if root else home}:/bin/sh"),
            ("/etc/group", str(inner_gid), f"{group}:x:{inner_gid}:")]


def _shell_in(rootfs: str, shell: str, squashfs: bool = False) -> str:
    """`rbox sh` in an image: your login shell where the image has it, else its /bin/sh
    (a busybox or distroless-like image has no /bin/bash or /bin/zsh). A SquashFS file
    is not open to look: its /bin/sh."""
    if shell.startswith("/") and not squashfs:
        try:
            os.close(_open_in(rootfs, shell.lstrip("/")))
            return shell
        except OSError:
            pass
    return "/bin/sh"


def _open_in(root: str, path: str) -> int:
    from rootless import syscalls as sc

    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return sc.openat2(path, os.O_RDONLY, sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS, dirfd=top)
    finally:
        os.close(top)


def _resolve_paths(v: dict[str, object], environ: dict[str, str], cwd: str, home: str, home_mode: str,
                   uid: int, rootfs: str | None = None, image: bool = False
                   ) -> tuple[list[UserMount], bool, str | None]:
    """The user's mounts with resolved paths, whether the cwd is bound read-write, and
    the warning to give when it is not (paths.py explains the resolution). With an image
    (`rootfs`), destinations are resolved through the image's tree, the sandbox's `/`,
    not the host's; in a SquashFS image (`image` without `rootfs`) they stay as typed
    (init resolves them in the tree, mounts.resolve_in)."""
    base = View([("/", rootfs, RO)] if rootfs else [("/", None, FRESH)] if image else [])
    for place in (*SANDBOX_OWN, "/dev/shm", f"/run/user/{uid}"):
        base.add(place, None, FRESH)
    if home_mode == "tmpfs":
        base.add(home, None, FRESH)
    elif home_mode == "rw":
        base.add(home, home, RW)
    reason = cwd_protection(cwd, protected_places(home, environ))
    forced = bool(v.get("cwd_writable"))
    # A cwd of `/` is never bound: binding it read-write would undo the read-only root.
    want_cwd = cwd != "/" and (reason is None or forced)
    entries = _present(_list(v, "mounts"), cwd)
    # Pass 1: each option's paths as the options before it leave the sandbox; pass 2:
    # as all of them do (a later bind of an ancestor changes what lies below it).
    view = base.copy()
    if want_cwd:
        view.add(cwd, cwd, RW)
    first = []
    for kind, value in entries:
        m = _user_mount(kind, value, cwd, view)
        view.add(m.dst, m.src, m.view_kind)
        first.append(m)
    cwd_bound = want_cwd and not _covers_cwd(first, cwd)
    full = base.copy()
    if cwd_bound:
        full.add(cwd, cwd, RW)
    for m in first:
        full.add(m.dst, m.src, m.view_kind)
    mounts = [_user_mount(kind, value, cwd, full) for kind, value in entries]
    covered = _covers_cwd(mounts, cwd)
    cwd_bound = cwd_bound and not covered
    warning = None if cwd_bound or covered else _cwd_warning(cwd, reason, forced, home, full)
    return mounts, cwd_bound, warning


def _present(entries: list[tuple[str, str]], cwd: str) -> list[tuple[str, str]]:
    """--bind-try and --ro-bind-try as --bind and --ro-bind, without those whose source
    is missing here: a site default names a path some nodes lack (bwrap's --bind-try)."""
    kept = []
    for kind, value in entries:
        if kind in ("--bind-try", "--ro-bind-try"):
            source = os.path.join(cwd, value.partition(":")[0])
            if not os.path.lexists(source):
                from rootless import log

                log.step(f"skip {kind} {value}: `{source}` does not exist here")
                continue
            kind = kind.removesuffix("-try")
        kept.append((kind, value))
    return kept


def _covers_cwd(mounts: list[UserMount], cwd: str) -> bool:
    """An explicit --hide, --ro-bind or --overlay at or above the cwd wins over the
    implicit cwd bind: a hidden path stays hidden, a read-only one read-only, and an
    overlay's writes stay out of the host's directory."""
    return any(m.kind in ("--hide", "--ro-bind", "--overlay") and inside(cwd, m.dst) for m in mounts)


def protected_places(home: str, environ: dict[str, str]) -> list[tuple[str, str]]:
    """Directories whose bind would open more than a project (rbox(1), --cwd-writable):
    code there runs outside the sandbox later (~/.bashrc, ~/.config/systemd/user), or
    other programs' sockets live there (a terminal multiplexer's in /tmp)."""
    places = [("/", "is the root directory"), (home, "is your home directory")]
    env_home = environ.get("HOME", "")
    if env_home.startswith("/"):
        places.append((os.path.realpath(env_home), "is your home directory ($HOME)"))
    places += [(os.path.realpath(p), "is a shared temporary directory") for p in ("/tmp", "/var/tmp")]
    places.append((os.path.realpath("/dev/shm"), "is the shared memory directory"))
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if runtime.startswith("/"):
        places.append((os.path.realpath(runtime), "is your runtime directory ($XDG_RUNTIME_DIR)"))
    # The host's own trees, which the sandbox replaces with its own or keeps read-only:
    # a bind of the host's would undo that (host processes in /proc, sockets in /run).
    places += [(p, f"is the host's {p}") for p in ("/proc", "/dev", "/run", "/sys")]
    return places


def cwd_protection(cwd: str, places: list[tuple[str, str]]) -> str | None:
    """Why `cwd` (physical) must not be bound read-write, or None for a project directory."""
    for path, what in places:
        if cwd == path:
            return what
    for path, what in places:
        if inside(path, cwd):
            return f"contains {what.removeprefix('is ')} `{path}`"
    return None


def _cwd_warning(cwd: str, reason: str | None, forced: bool, home: str, view: View) -> str | None:
    """What happens to a cwd that is not bound, said the way it really is inside."""
    if reason is None:
        return None
    entry = view.covering(cwd)
    kind = entry[2] if entry else RO
    if kind == RW:
        return None          # writable anyway, through --bind or --home=rw
    advice = "use --bind DIR for what the command must write"
    if cwd == "/" and forced:
        return f"not binding the current directory `/` read-write, not even with --cwd-writable; {advice}"
    if entry is None or kind != FRESH:
        fate = "it stays read-only in the sandbox"
    elif entry[0] == home:
        fate = "the command starts in the sandbox's empty home (--home=tmpfs), not in yours"
    elif entry[0] == cwd:
        fate = f"the command starts in the sandbox's own `{cwd}`, not the host's"
    else:
        fate = f"inside, `{entry[0]}` is the sandbox's own, without the host's `{cwd}`"
    return (f"not binding the current directory `{cwd}` read-write: it {reason}; {fate}. Run rbox in a "
            f"project directory, or {advice}, or --cwd-writable to bind this one anyway")


def _list(values: dict[str, object], key: str) -> list[tuple[str, str]]:
    entries = values.get(key) or []
    assert isinstance(entries, list)
    return entries


LIMIT_OPTIONS = ("memory", "memory_high", "memory_swap", "cpus", "cpu_weight", "pids_limit", "io_weight")


def _limits(v: dict[str, object]) -> Limits | None:
    """Checked here, before anything starts; cgroups.py is imported only when needed."""
    if not any(v.get(k) is not None for k in LIMIT_OPTIONS):
        return None
    from rootless import cgroups as cg

    def get(key: str) -> str | None:
        value = v.get(key)
        return None if value is None else str(value)

    def size(key: str, allow_zero: bool = False) -> int | None:
        text = get(key)
        if text is None:
            return None
        if allow_zero and text.strip() == "0":
            return 0
        return cg.parse_size(text, "--" + key.replace("_", "-"))

    def number(key: str, low: float, high: float, integer: bool = True) -> int | float | None:
        text = get(key)
        return None if text is None else cg.parse_number(text, "--" + key.replace("_", "-"), low, high, integer)

    cpus = number("cpus", 0.01, 4096, integer=False)
    return cg.Limits(memory=size("memory"), memory_high=size("memory_high"),
                     memory_swap=size("memory_swap", allow_zero=True),
                     cpus=None if cpus is None else float(cpus), cpu_weight=number("cpu_weight", 1, 10000),
                     pids=number("pids_limit", cg.PIDS_MIN, cg.PIDS_MAX), io_weight=number("io_weight", 1, 10000))


def _ports(v: dict[str, object], mode: str) -> list[Port]:
    ports = [parse(value) for _, value in _list(v, "publish")]
    if ports and not uses_helper(mode):
        raise SpecError(f"-p/--publish needs --net=slirp4netns or --net=pasta, not --net={mode}",
                        hint="with --net=host the command's ports are the host's already")
    if mode == "slirp4netns" and any(":" in p.host_ip for p in ports):
        # slirp4netns's add_hostfwd takes IPv4 host addresses only (1.2: "bad arguments.host_addr").
        raise SpecError("publishing on an IPv6 host address needs --net=pasta",
                        hint="add --net=pasta (the command must listen on IPv6 or on both, e.g. `::`), "
                             "or publish on an IPv4 address such as 127.0.0.1")
    check_unique(ports)
    return ports


def _allow_host_loopback(v: dict[str, object], mode: str) -> bool:
    if v.get("allow_host_loopback") and not uses_helper(mode):
        raise SpecError(f"--allow-host-loopback needs --net=slirp4netns or --net=pasta, not --net={mode}",
                        hint="drop --allow-host-loopback, or choose --net=slirp4netns or --net=pasta")
    return bool(v.get("allow_host_loopback"))


def _pty(v: dict[str, object], tty: bool) -> bool:
    if v.get("tty") and v.get("no_tty"):
        raise SpecError("-t/--tty and -T/--no-tty exclude each other",
                        hint="give one of them: -t for a new pseudo-terminal, -T for none")
    return bool(v.get("tty")) or (tty and not v.get("no_tty"))


NAME_CHARS = HOSTNAME_CHARS | {"_"}


def _name(value: object, detach: bool) -> str | None:
    """--name: letters, digits, `-`, `_` and `.`, not starting with `-` or `.`, at most 64
    (it names a directory and appears in `rbox ps`). -d without one gets one made up."""
    if value is None:
        return f"rbox-{os.urandom(4).hex()}" if detach else None
    name = str(value)
    if not (0 < len(name) <= 64) or not set(name) <= NAME_CHARS or name[0] in "-.":
        raise SpecError(f"invalid sandbox name `{name}`",
                        hint="use up to 64 letters, digits, `-`, `_` and `.`, not starting with `-` or `.`")
    return name


def _detach(v: dict[str, object]) -> bool:
    if v.get("detach") and v.get("tty"):
        raise SpecError("-d/--detach and -t/--tty exclude each other: a detached sandbox has no terminal",
                        hint="drop -t; use `rbox exec -t NAME -- COMMAND` for a terminal in it later")
    return bool(v.get("detach"))


def _command(parsed: Parsed, shell: str, config: dict[str, object] | None = None) -> list[str]:
    if parsed.command == "sh":
        # The shell's own -l and -c, passed as the shell takes them (sh(1), bash(1)).
        argv = [shell or "/bin/sh"] + (["-l"] if parsed.values.get("login") else [])
        script = parsed.values.get("shell_command")
        if script is not None:
            return [*argv, "-c", str(script), *parsed.args]
        if parsed.args:
            raise SpecError("`rbox sh` takes no command words without -c",
                            hint="use `rbox sh -c 'COMMAND'`, or `rbox run -- COMMAND ...`")
        return argv
    if not parsed.args and config is not None:
        # An image's own command: Entrypoint, then Cmd (as docker run with no arguments).
        argv = _strings(config.get("Entrypoint")) + _strings(config.get("Cmd"))
        if argv:
            return argv
        raise SpecError("the image has no Entrypoint or Cmd: `rbox run` needs a COMMAND",
                        hint="give one, e.g. `rbox run --image NAME -- sh`")
    if not parsed.args:
        raise SpecError("`rbox run` needs a COMMAND",
                        hint="for example `rbox run -- id`, or `rbox sh` for a shell")
    return parsed.args


PATH_MAX = 4096   # bytes, with the terminating NUL (limits.h): longer paths fail in every system call


def _absolute(path: str, cwd: str, what: str) -> str:
    if not path:
        raise SpecError(f"empty path given to {what}", hint=f"give {what} a path, e.g. {what} /tmp")
    full = os.path.normpath(os.path.join(cwd, path))
    size = len(os.fsencode(full))
    if size >= PATH_MAX:
        raise SpecError(f"the path given to {what} is {size} bytes long: `{full[:40]}...`",
                        hint=f"Linux paths are at most {PATH_MAX - 1} bytes (PATH_MAX); use a shorter one")
    return full


def _user_mount(kind: str, value: str, cwd: str, view: View) -> UserMount:
    """One option with its paths resolved: the source on the host (its symlinks
    followed), the destination as the sandbox will show it (paths.View)."""
    if kind == "--overlay":
        return _overlay_mount(value, cwd, view)
    if kind in ("--tmpfs", "--hide"):
        typed = _absolute(value, cwd, kind)
        dst = _resolve(view, os.path.join(cwd, value), kind)
        _not_root(dst, kind)
        return UserMount(kind, None, dst, None if dst == typed else f"{kind} {value}")
    src_text, sep, dst_text = value.partition(":")
    typed_src = _absolute(src_text, cwd, kind)
    try:
        os.stat(os.path.join(cwd, src_text))
    except OSError as e:
        raise SpecError(f"cannot bind `{typed_src}`: {e.strerror}",
                        hint=f"the source of {kind} SRC[:DST] must exist on the host") from None
    if sep and not dst_text.startswith("/"):
        raise SpecError(f"the destination of {kind} must be an absolute path, not `{dst_text}`",
                        hint=f"write {kind} SRC:/ABSOLUTE/PATH")
    src = os.path.realpath(os.path.join(cwd, src_text))
    dst = _resolve(view, dst_text if sep else os.path.join(cwd, src_text), kind)
    _not_root(dst, kind)
    typed_dst = os.path.normpath(dst_text) if sep else typed_src
    return UserMount(kind, src, dst, None if (src, dst) == (typed_src, typed_dst) else f"{kind} {value}")


def _overlay_mount(value: str, cwd: str, view: View) -> UserMount:
    """--overlay SRC[:UPPER]: SRC at its own place, its writes in UPPER when given."""
    kind = "--overlay"
    src_text, sep, upper_text = value.partition(":")
    typed = _absolute(src_text, cwd, kind)
    src = os.path.realpath(typed)
    if not os.path.isdir(src):
        raise SpecError(f"--overlay `{src_text}` is not a directory",
                        hint="--overlay shows a host directory writable at its place (writes discarded, or kept in "
                             "UPPER); for a file use --bind or --ro-bind")
    dst = _resolve(view, typed, kind)
    _not_root(dst, kind)
    upper = None
    if sep:
        from rootless import overlay

        upper = overlay.check_keep(upper_text, _absolute(upper_text, cwd, "--overlay SRC:UPPER"),
                                   f"the UPPER of --overlay {src_text}", [src])
    return UserMount(kind, src, dst, None if (src, dst) == (typed, typed) else f"{kind} {value}", upper)


def _resolve(view: View, path: str, kind: str) -> str:
    try:
        return view.resolve(path)
    except OSError as e:
        raise SpecError(f"cannot resolve `{path}` for {kind}: {e.strerror}",
                        hint=f"the path of {kind} must be one you may look up (check the directories' permissions)"
                        ) from None


# The sandbox's /proc is its own PID namespace's: it shows only the sandbox's processes,
# so covering it hides nothing of the host, while /dev/fd, /dev/stdin... point into it
# and PID 1 uses its own entry (/proc/self, which is /proc/1). Entries below /proc that
# describe the host (/proc/cpuinfo, /proc/sys) may be hidden.
RESERVED = ("/proc", "/proc/self", "/proc/thread-self", "/proc/1")


def _not_root(dst: str, kind: str) -> None:
    reserved = next((r for r in RESERVED if dst == r or (r != "/proc" and dst.startswith(r + "/"))), None)
    if reserved is not None:
        raise SpecError(f"{kind} {dst}: rbox needs `{reserved}` as it is (the sandbox's own, of its PID namespace)",
                        hint="it shows only the sandbox's processes; to hide what it tells of the host, "
                             "hide entries below it instead, e.g. --hide /proc/cpuinfo")
    if dst == "/":
        raise SpecError(f"{kind} cannot replace the sandbox's `/`",
                        hint="the host's / is the sandbox's, read-only; bind or mount below it, e.g. "
                             f"{kind} {'SRC:/mnt' if kind.endswith('bind') else '/mnt'}")


def _workdir(value: object, cwd: str) -> str:
    return cwd if value is None else _absolute(str(value), cwd, "--workdir")


def _hostname(name: str) -> str:
    # sethostname(2) takes at most 64 bytes; RFC 1123 labels keep prompts and logs sane.
    if not (0 < len(name) <= 64) or not set(name) <= HOSTNAME_CHARS or name[0] in "-.":
        raise SpecError(f"invalid host name `{name}`",
                        hint="use up to 64 letters, digits, `-` and `.`, not starting with `-` or `.`")
    return name


def _environment(v: dict[str, object], environ: dict[str, str], image_env: list[str] | None = None
                 ) -> dict[str, str]:
    env = {} if v.get("clearenv") else dict(environ)
    for item in image_env or []:        # the image's Env over rbox's environment; -e wins
        key, sep, value = item.partition("=")
        if key and sep:
            env[key] = value
    # Lets shell prompts and scripts know where they are (rbox(1), ENVIRONMENT).
    env["RBOX_SANDBOX"] = "1"
    for _, key in _list(v, "unsetenv"):
        env.pop(key, None)
    set_env(env, [item for _, item in _list(v, "env")], environ)
    return env


def set_env(env: dict[str, str], items: list[str], environ: dict[str, str]) -> None:
    """-e KEY=VALUE sets KEY; -e KEY copies KEY from rbox's environment (run and exec alike)."""
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise SpecError(f"invalid environment setting `{item}`", hint="use -e KEY=VALUE or -e KEY")
        if sep:
            env[key] = value
        elif key in environ:
            env[key] = environ[key]
