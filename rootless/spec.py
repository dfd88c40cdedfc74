"""What the user asked for, validated before anything starts.

Runs in: parent (the forked children read the same object).

Every check that can be made on the host is made here, so a bad option gives one clear
error and exit 125 before any namespace exists (bwrap's block of `die("--x requires
--y")`). Checks that depend on the sandbox's own tree (a bind destination that cannot be
created) happen in init and come back to the parent as an ERROR message.
"""

from __future__ import annotations

import os
import pwd

from rootless.errors import SpecError
from rootless.net import DEFAULT_MODE, uses_helper
from rootless.net.ports import Port, check_unique, parse
from rootless.options import Parsed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from rootless.cgroups import Limits

HOSTNAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.")


class UserMount:
    """One of --bind, --ro-bind, --tmpfs, --hide, in the order given."""

    __slots__ = ("kind", "src", "dst")

    def __init__(self, kind: str, src: str | None, dst: str):
        self.kind, self.src, self.dst = kind, src, dst


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
    tty: bool       # rbox's stdin is a terminal
    pty: bool       # the command gets a new pseudo-terminal (console.py)
    limits: Limits | None   # None: no limit asked, no cgroup work at all
    argv: list[str]         # rbox's own arguments, to re-run them in a systemd scope
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
    return Spec(
        command=_command(parsed, shell),
        root=bool(v.get("root")),
        net=net_mode,
        ports=_ports(v, net_mode),
        allow_host_loopback=_allow_host_loopback(v, net_mode),
        mounts=[_user_mount(kind, value, cwd) for kind, value in _list(v, "mounts")],
        home_mode=str(v.get("home") or "ro"),
        workdir=_workdir(v.get("workdir"), cwd),
        hostname=_hostname(str(v.get("hostname") or "rbox")),
        env=_environment(v, environ),
        dry_run=bool(v.get("dry_run")),
        debug=bool(v.get("debug")),
        uid=uid, gid=gid, user=user, home=os.path.normpath(home), cwd=cwd, tty=tty,
        pty=_pty(v, tty),
        limits=_limits(v),
        argv=list(argv or []),
    )


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


def _command(parsed: Parsed, shell: str) -> list[str]:
    if parsed.command == "sh":
        if parsed.args:
            raise SpecError("`rbox sh` takes no command", hint="use `rbox run -- COMMAND ...` to run a command")
        return [shell or "/bin/sh"]
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


def _user_mount(kind: str, value: str, cwd: str) -> UserMount:
    if kind in ("--tmpfs", "--hide"):
        dst = _absolute(value, cwd, kind)
        _not_root(dst, kind)
        return UserMount(kind, None, dst)
    src_text, sep, dst_text = value.partition(":")
    src = _absolute(src_text, cwd, kind)
    try:
        os.stat(src)
    except OSError as e:
        raise SpecError(f"cannot bind `{src}`: {e.strerror}",
                        hint=f"the source of {kind} SRC[:DST] must exist on the host") from None
    if sep and not dst_text.startswith("/"):
        raise SpecError(f"the destination of {kind} must be an absolute path, not `{dst_text}`",
                        hint=f"write {kind} SRC:/ABSOLUTE/PATH")
    dst = os.path.normpath(dst_text) if sep else src
    _not_root(dst, kind)
    # Resolve symlinks on the host side now; the destination is resolved inside the
    # sandbox's tree by init (mounts.resolve_in), never against the host's root.
    return UserMount(kind, os.path.realpath(src), dst)


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


def _environment(v: dict[str, object], environ: dict[str, str]) -> dict[str, str]:
    env = {} if v.get("clearenv") else dict(environ)
    # Lets shell prompts and scripts know where they are (rbox(1), ENVIRONMENT).
    env["RBOX_SANDBOX"] = "1"
    for _, key in _list(v, "unsetenv"):
        env.pop(key, None)
    for _, item in _list(v, "env"):
        key, sep, value = item.partition("=")
        if not key:
            raise SpecError(f"invalid environment setting `{item}`", hint="use -e KEY=VALUE or -e KEY")
        if sep:
            env[key] = value
        elif key in environ:
            env[key] = environ[key]
    return env
