"""`rbox run --join[=TAG]`: the ranks of one step on one node share one sandbox.

Runs in: parent (each rank's rbox), and the group's watcher (forked by the first rank, in
a session of its own: not one of the ranks, so no rank's early exit takes the sandbox).

    rank (rbox run --join)                     watcher                         supervisor
    state dir: join.TAG/ (mkdir wins: first)
      first: spec, lock (flock, held) ──fork──▶ setsid, 0 1 2 /dev/null
                                                fork+exec, death signal ─────▶ rbox run --name join.TAG
                                                                                -T ... -- sleep infinity
                                                sandbox runs: `ready`
      all: the spec agrees? members (LOCK_SH,
        held), `arrived` += 1 (under flock of
        join.TAG/)
      wait: `ready` and every rank arrived
        (bounded: RBOX_JOIN_TIMEOUT, 30 s)
      rbox exec's path (join.py): U1, net,
        uts, ipc, cgroup, pid, U2, M2 ──────────────────────────────────────▶ the command, in the sandbox
                                                every rank arrived (or the wait
                                                is over) and `members` is free:
                                                SIGTERM the supervisor, remove
                                                join.TAG/

Crash-safety is by flock only (no shared memory): a rank's shared lock on `members` ends
with its process, so a rank killed by SIGKILL counts as left; the watcher's lock on
`lock` ends with it, and the supervisor dies by its death signal (then stage-1, PID 1 and
the PID namespace by theirs), and state.sweep removes a `join.TAG/` whose lock is free.
Every wait has a deadline, and a rank that waits in vain says why and exits 125.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import sys
import time

from rootless import log, slurm, state
from rootless.errors import RboxError, SpecError
from rootless.instance import registry

TYPE_CHECKING = False
if TYPE_CHECKING:
    from rootless.spec import Spec

LOCK, SPEC, MEMBERS, ARRIVED, READY, FAILED, ERRORS = "lock", "spec", "members", "arrived", "ready", "failed", "errors"
FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC
DEFAULT_TIMEOUT = 30.0
POLL = 0.02
HINT = "see rbox(1), SLURM AND MPI"
COUNT = "the number of ranks on this node (--join-count)"
# The options each rank may give differently: they are not the sandbox's, or were checked already.
RANK_OPTIONS = ("--join", "--join-count", "-t", "--tty", "-T", "--no-tty")


def shape(spec: Spec) -> dict[str, str]:
    """What makes the sandbox what it is, by the option that sets it: every rank of a group
    must ask for the same (pure). Environment, working directory and command are each rank's."""
    mounts = [(m.kind, m.src, m.dst) for m in spec.mounts]
    limits = None
    if spec.limits is not None:
        limits = {k: getattr(spec.limits, k) for k in spec.limits.__slots__}
    return {"--root": repr(spec.root), "--net": repr(spec.net), "--publish": repr([repr(p) for p in spec.ports]),
            "--allow-host-loopback": repr(spec.allow_host_loopback), "--bind and the like": repr(mounts),
            "--home": repr(spec.home_mode), "--hostname": repr(spec.hostname),
            "--rootfs or --image": repr(spec.rootfs), "the limits": repr(limits),
            "the bound working directory": repr(spec.cwd if spec.cwd_bound else None), "the user": repr(spec.uid)}


def difference(mine: dict[str, str], theirs: dict[str, str]) -> str | None:
    """The first option on which two ranks differ, or None (pure)."""
    for key in sorted(set(mine) | set(theirs)):
        if mine.get(key) != theirs.get(key):
            return key
    return None


def supervisor_argv(argv: list[str], command_args: list[str], name: str) -> list[str]:
    """The rank's own `rbox ... run [OPTIONS]` without the group's options, naming the
    sandbox and giving it a waiter as its command (pure)."""
    head = argv[:len(argv) - len(command_args)]
    if head[-1:] == ["--"]:
        head = head[:-1]
    kept: list[str] = []
    skip = False
    for word in head:
        if skip:
            skip = False
            continue
        option = word.partition("=")[0] if word.startswith("--") else word
        if option in RANK_OPTIONS:
            skip = option == "--join-count" and "=" not in word
            continue
        kept.append(word)
    return [*kept, "--name", name, "-T", "--", "sleep", "infinity"]


def timeout(environ: dict[str, str]) -> float:
    value = environ.get("RBOX_JOIN_TIMEOUT", "")
    try:
        return max(0.5, float(value)) if value else DEFAULT_TIMEOUT
    except ValueError:
        raise SpecError(f"invalid RBOX_JOIN_TIMEOUT `{value}`", hint="seconds, such as 30") from None


def run(spec: Spec, values: dict[str, object], argv: list[str], command_args: list[str],
        environ: dict[str, str]) -> int:
    """`rbox run --join`: into the group's sandbox (made by the first rank's watcher), then
    the command there as `rbox exec` starts one."""
    if spec.name is not None or spec.detach:
        raise SpecError("--join cannot be combined with --name or -d: the group's sandbox is named after its tag",
                        hint=HINT)
    if spec.pass_fds:
        raise SpecError("--pass-fd cannot be combined with --join", hint=HINT)
    given = values.get("join")
    count_given = values.get("join_count")
    tag, count = slurm.join_group(environ, given if isinstance(given, str) else None,
                                  None if count_given is None else str(count_given))
    name = f"join.{tag}"
    wait = timeout(environ)
    deadline = time.monotonic() + wait
    from rootless import parent

    if spec.dry_run:
        return parent.run(spec)
    if spec.cwd_warning:
        parent.warn_once_per_launch(spec.cwd_warning)     # the supervisor's goes to `errors`
    mine = shape(spec)
    mine[COUNT] = str(count)
    group_fd, members_fd = arrive(tag, count, mine, environ, argv, command_args, deadline)
    try:
        wait_for_group(group_fd, tag, count, wait, deadline)
        return enter(spec, name, environ)
    finally:
        os.close(group_fd)
        os.close(members_fd)


def arrive(tag: str, count: int, mine: dict[str, str], environ: dict[str, str], argv: list[str],
           command_args: list[str], deadline: float) -> tuple[int, int]:
    """Into the group: made (and its watcher started) by the first rank; the spec checked
    by the others; this rank counted and its shared lock on `members` held."""
    base = state.base_path(environ)
    base_fd = state._open_base(base)
    try:
        state._sweep(base_fd)        # a group whose watcher was killed: its directory, unlocked, goes
        group_fd = create_or_open(base_fd, f"join.{tag}", tag, mine, environ, argv, command_args, deadline)
    finally:
        os.close(base_fd)
    try:
        fcntl.flock(group_fd, fcntl.LOCK_EX)
        try:
            theirs = read_spec(group_fd)
            different = difference(mine, theirs)
            if different is not None:
                raise RboxError(f"this rank asks for another sandbox than the join group `{tag}`: {different} "
                                f"differs", hint="give every rank of the group the same options (only -e, -w and "
                                                 f"the command may differ); {HINT}")
            arrived = size(group_fd, ARRIVED)
            if arrived >= count:
                raise RboxError(f"the join group `{tag}` already has its {count} ranks",
                            hint=f"--join-count counts the ranks on this node, or give this one another TAG; {HINT}")
            members_fd = os.open(MEMBERS, os.O_RDWR | os.O_CREAT | FLAGS, 0o600, dir_fd=group_fd)
            fcntl.flock(members_fd, fcntl.LOCK_SH)
            fd = os.open(ARRIVED, os.O_WRONLY | os.O_APPEND | os.O_CREAT | FLAGS, 0o600, dir_fd=group_fd)
            os.write(fd, b".")
            os.close(fd)
        finally:
            fcntl.flock(group_fd, fcntl.LOCK_UN)
    except BaseException:
        os.close(group_fd)
        raise
    log.step(f"join group `{tag}`: rank {arrived + 1} of {count} on this node")
    return group_fd, members_fd


def create_or_open(base_fd: int, dirname: str, tag: str, mine: dict[str, str], environ: dict[str, str],
                   argv: list[str], command_args: list[str], deadline: float) -> int:
    """`join.TAG/`, open, with its spec written. mkdir decides which rank is first: that
    one writes the spec and starts the watcher, holding the group's flock meanwhile; the
    others wait for the spec (a first rank killed right after mkdir leaves no lock: the
    directory is stale, and its wait ends at the deadline)."""
    fcntl.flock(base_fd, fcntl.LOCK_SH)          # no state.sweep between mkdir and the lock
    try:
        try:
            os.mkdir(dirname, 0o700, dir_fd=base_fd)
            first = True
        except FileExistsError:
            first = False
        group_fd = os.open(dirname, state.DIR_FLAGS, dir_fd=base_fd)
        if first:
            fcntl.flock(group_fd, fcntl.LOCK_EX)
            lock_fd = os.open(LOCK, os.O_WRONLY | os.O_CREAT | os.O_EXCL | FLAGS, 0o600, dir_fd=group_fd)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
    finally:
        fcntl.flock(base_fd, fcntl.LOCK_UN)
    if first:
        try:
            write(group_fd, SPEC, repr(mine).encode())
            start_watcher(group_fd, lock_fd, f"join.{tag}", environ, argv, command_args, deadline)
        finally:
            os.close(lock_fd)
            fcntl.flock(group_fd, fcntl.LOCK_UN)
        return group_fd
    while True:
        st = os.fstat(group_fd)
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            os.close(group_fd)
            raise RboxError(f"`{state.base_path(environ)}/{dirname}` is not rbox's", hint="remove it")
        fcntl.flock(group_fd, fcntl.LOCK_EX)
        ready = has(group_fd, SPEC)
        fcntl.flock(group_fd, fcntl.LOCK_UN)
        if ready:
            return group_fd
        if time.monotonic() > deadline:
            os.close(group_fd)
            raise RboxError(f"the join group `{tag}` was never set up: its first rank ended while it made it",
                            hint=f"see that rank's error; {HINT}")
        time.sleep(POLL)


def wait_for_group(group_fd: int, tag: str, count: int, wait: float, deadline: float) -> None:
    """Until the sandbox runs and every rank of this node has arrived: bounded, and ended
    early by the watcher's failure or death."""
    while True:
        if has(group_fd, FAILED):
            raise RboxError(f"the sandbox of the join group `{tag}` did not start: {read(group_fd, FAILED)}",
                            hint=f"the first rank's options made it; {HINT}")
        if not locked(group_fd, LOCK):
            raise RboxError(f"the sandbox of the join group `{tag}` has ended", hint=HINT)
        arrived = size(group_fd, ARRIVED)
        if arrived >= count and has(group_fd, READY):
            return
        if time.monotonic() > deadline:
            if arrived < count:
                raise RboxError(f"only {arrived} of the {count} ranks of the join group `{tag}` arrived within "
                                f"{wait:g} s", hint="a rank failed or was killed before it joined (see its error); "
                                                    f"RBOX_JOIN_TIMEOUT sets the wait; {HINT}")
            raise RboxError(f"the sandbox of the join group `{tag}` did not start within {wait:g} s", hint=HINT)
        time.sleep(POLL)


def enter(spec: Spec, name: str, environ: dict[str, str]) -> int:
    """The command, in the group's sandbox, by rbox exec's path (instance/join.py): U1 and
    what it owns, the PID namespace, then U2 and M2, with this rank's environment, working
    directory and command."""
    from rootless.instance import join

    _, fds, fields = join.namespaces(name, environ)
    try:
        spec.name = name
        cgroup = fields.get("cgroup")
        if cgroup is not None:
            join.prepare_cgroup()
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return join.start(spec, fds, fields["kinds"].split(","), int(fields["stage1"]), cgroup)


# -- the watcher -----------------------------------------------------------------------------

def start_watcher(group_fd: int, lock_fd: int, name: str, environ: dict[str, str], argv: list[str],
                  command_args: list[str], deadline: float) -> None:
    """Fork the watcher, twice (no rank is its parent, none waits for it), in a session of
    its own: the step's signals to the rank's process group are not for it."""
    pid = os.fork()
    if pid != 0:
        os.waitpid(pid, 0)
        return
    try:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        keep = {0, 1, 2, group_fd, lock_fd}
        for entry in os.listdir("/proc/self/fd"):
            if int(entry) not in keep:
                try:
                    os.close(int(entry))
                except OSError:
                    pass
        code = watch(group_fd, name, environ, supervisor_argv(argv, command_args, name), deadline)
    except BaseException:
        code = 125
    os._exit(code)


def watch(group_fd: int, name: str, environ: dict[str, str], args: list[str], deadline: float) -> int:
    """Start the supervisor (`rbox run --name join.TAG -- sleep infinity`, its death tied to
    ours), say `ready` once it runs, end it when every rank has left, then remove the group."""
    errors = os.open(ERRORS, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | FLAGS, 0o600, dir_fd=group_fd)
    supervisor = os.fork()
    if supervisor == 0:
        try:
            from rootless import syscalls as sc

            sc.set_pdeathsig(signal.SIGKILL)
            os.dup2(errors, 2)
            os.execve(sys.executable, [sys.executable, "-m", "rootless", *args], environ)
        finally:
            os._exit(125)
    os.close(errors)
    ready = ended = False
    code = 0
    while True:
        if not ended:
            pid, status = os.waitpid(supervisor, os.WNOHANG)
            if pid == supervisor:
                ended = True
                if not ready:
                    write(group_fd, FAILED, last_error(group_fd).encode())
        if not ready and not ended:
            entry = registry.find(name, environ)
            if entry is not None:
                try:
                    ready = entry.status() == "running"
                finally:
                    entry.close()
                if ready:
                    write(group_fd, READY, b"")
            if not ready and time.monotonic() > deadline:
                write(group_fd, FAILED, f"it did not start in time; {last_error(group_fd)}".encode())
                break
        if (ended or size(group_fd, ARRIVED) >= count_of(group_fd) or time.monotonic() > deadline) \
                and all_left(group_fd):
            break
        time.sleep(0.05)
    if not ended:
        end(supervisor)
    remove(group_fd)
    return code


def count_of(group_fd: int) -> int:
    """The ranks the group waits for, as the first rank's spec says (each rank's agrees)."""
    try:
        return max(1, int(read_spec(group_fd).get(COUNT, "1")))
    except ValueError:
        return 1


def all_left(group_fd: int) -> bool:
    """No rank holds its shared lock on `members` (every one ended, killed ones too)."""
    try:
        fd = os.open(MEMBERS, os.O_RDONLY | FLAGS, dir_fd=group_fd)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def end(supervisor: int) -> None:
    """SIGTERM to the supervisor (it passes it on to the waiter through PID 1), SIGKILL
    after 5 s (stage-1, PID 1 and the PID namespace follow by their death signals)."""
    try:
        os.kill(supervisor, signal.SIGTERM)
    except ProcessLookupError:
        pass
    limit = time.monotonic() + 5.0
    while time.monotonic() < limit:
        pid, _ = os.waitpid(supervisor, os.WNOHANG)
        if pid == supervisor:
            return
        time.sleep(0.02)
    os.kill(supervisor, signal.SIGKILL)
    os.waitpid(supervisor, 0)


def remove(group_fd: int) -> None:
    """join.TAG/ goes; its lock (ours) last, with the process."""
    path = os.readlink(f"/proc/self/fd/{group_fd}")
    try:
        base_fd = os.open(os.path.dirname(path), state.DIR_FLAGS)
    except OSError:
        return
    try:
        state._empty(group_fd)
        os.rmdir(os.path.basename(path), dir_fd=base_fd)
    except OSError as e:
        log.step(f"cannot remove {path}: {e.strerror}")
    finally:
        os.close(base_fd)


def last_error(group_fd: int) -> str:
    lines = [line for line in read(group_fd, ERRORS).splitlines() if line.startswith("rbox: error:")]
    return lines[-1][len("rbox: error: "):] if lines else "its supervisor exited"


# -- files of join.TAG/ ----------------------------------------------------------------------

def write(dir_fd: int, name: str, data: bytes) -> None:
    tmp = f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | FLAGS, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def read(dir_fd: int, name: str) -> str:
    try:
        fd = os.open(name, os.O_RDONLY | FLAGS, dir_fd=dir_fd)
    except OSError:
        return ""
    try:
        return os.read(fd, 1 << 16).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)


def read_spec(dir_fd: int) -> dict[str, str]:
    import ast

    try:
        value = ast.literal_eval(read(dir_fd, SPEC))
    except (ValueError, SyntaxError):
        return {}
    return value if isinstance(value, dict) else {}


def has(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except OSError:
        return False


def size(dir_fd: int, name: str) -> int:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_size
    except OSError:
        return 0


def locked(dir_fd: int, name: str) -> bool:
    """Someone holds an exclusive flock on the file (the watcher, on `lock`)."""
    try:
        fd = os.open(name, os.O_RDONLY | FLAGS, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError as e:
        return e.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)
