"""Resource limits in a cgroup v2 subtree that systemd delegated to the user.

Runs in: parent. Imported only when a limit is asked for: without limits rbox makes no
systemd call and pays nothing.

The chain (rbox(1), RESOURCE LIMITS):
1. cgroup v2 must be mounted at /sys/fs/cgroup, else there is no way to honour a limit:
   exit 125 (never run silently without the limit the user asked for).
2. If rbox stands alone in a cgroup it may write to (a scope it was started in), it uses
   it. Otherwise it checks that a user manager is reachable and that the controllers it
   needs are delegated to it (each failure a message with the administrator's fix), then
   asks the manager over D-Bus for a delegated transient scope holding rbox itself
   (StartTransientUnit with PIDs and Delegate, through busctl). If that is impossible, it
   re-executes itself under `systemd-run --user --scope -p Delegate=yes` (the mechanism
   rootlesskit documents), marked with RBOX_IN_SCOPE=1 against loops. The D-Bus way
   saves the second interpreter start (bench/limits.py measures both).
3. In the scope, the no-internal-processes rule (systemd's CGROUP_DELEGATION.md;
   nspawn's create_subcgroup) puts rbox in `supervisor` and the sandbox in `payload`;
   controllers are enabled in the scope's cgroup.subtree_control, limits written to
   `payload`, and stage-1 is attached to it before it creates its cgroup namespace.
4. At the end memory.events and pids.events say why the command died, in plain words;
   cgroup.kill empties `payload`, which is removed; systemd collects the scope (--collect).
"""

from __future__ import annotations

import os
import sys
import time

from rootless import log
from rootless.errors import CgroupError, SpecError

ROOT = "/sys/fs/cgroup"
DELEGATE_LIST = "/sys/kernel/cgroup/delegate"
CPU_PERIOD = 100_000          # cpu.max period in microseconds (the kernel's default)
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class Limits:
    """The limits asked for; None where nothing was asked."""

    memory: int | None
    memory_high: int | None
    memory_swap: int | None
    cpus: float | None
    cpu_weight: int | None
    pids: int | None
    io_weight: int | None
    __slots__ = tuple(__annotations__)

    def __init__(self, **values: object):
        for name in self.__slots__:
            setattr(self, name, values.get(name))

    def any(self) -> bool:
        return any(getattr(self, name) is not None for name in self.__slots__)

    def controllers(self) -> list[str]:
        """The controllers the limits need, in the order they are enabled (pure)."""
        wanted = {"memory": (self.memory, self.memory_high, self.memory_swap),
                  "cpu": (self.cpus, self.cpu_weight), "pids": (self.pids,), "io": (self.io_weight,)}
        return [c for c, values in wanted.items() if any(v is not None for v in values)]

    def writes(self) -> list[tuple[str, str]]:
        """(file, value) for the payload leaf (pure; cgroup-v2.rst for the formats)."""
        out = []
        if self.memory is not None:
            out.append(("memory.max", str(self.memory)))
        if self.memory_high is not None:
            out.append(("memory.high", str(self.memory_high)))
        if self.memory_swap is not None:
            out.append(("memory.swap.max", str(self.memory_swap)))
        if self.cpus is not None:
            out.append(("cpu.max", f"{round(self.cpus * CPU_PERIOD)} {CPU_PERIOD}"))
        if self.cpu_weight is not None:
            out.append(("cpu.weight", str(self.cpu_weight)))
        if self.pids is not None:
            out.append(("pids.max", str(self.pids)))
        if self.io_weight is not None:
            out.append(("io.weight", f"default {self.io_weight}"))
        return out


# --- parsing options (pure) -----------------------------------------------------------

# pids.max counts rbox's stage-1 and PID 1 too (both live in `payload`): below 3 not
# even the command could start.
PIDS_MIN, PIDS_MAX = 3, 4194304
MAX_SIZE = (1 << 63) - 1      # the kernel's limit files hold a signed 64-bit byte count


def parse_size(text: str, option: str) -> int:
    """`512M` -> bytes: K, M, G, T are powers of 1024 (as in cgroup files and podman).

    Decimal fractions are allowed (`1.5G`); `inf`, `nan` and sizes beyond MAX_SIZE are
    not (float() accepts `inf` and `1e400`, which int() then cannot convert)."""
    body = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = body[-1:] if body[-1:] in UNITS and body[-1:] != "" else ""
    number = body[:-1] if unit else body
    try:
        value = float(number) * UNITS[unit]
    except ValueError:
        value = -1
    if not 4096 <= value <= MAX_SIZE:   # false for nan and inf, too
        raise SpecError(f"invalid size `{_short(text)}` for {option}",
                        hint="use a number of at least 4096 bytes with K, M, G or T, e.g. 512M"
                        if value < 4096 or value != value else "use at most 8388607T (2^63 - 1 bytes)")
    return int(value)


def parse_number(text: str, option: str, low: float, high: float, integer: bool = True) -> int | float:
    try:
        value: int | float = int(text) if integer else float(text)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:    # false for nan and inf, too
        span = f"{_number(low)} to {_number(high)}"
        raise SpecError(f"invalid value `{_short(text)}` for {option}",
                        hint=f"use a {'whole ' if integer else ''}number from {span}")
    return value


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:40] + "..."


def format_size(n: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if n >= UNITS[unit] and n % UNITS[unit] == 0:
            return f"{n // UNITS[unit]}{unit}"
    return str(n)


# --- reading the host (pure functions over text, thin readers) ---------------------

def parse_proc_cgroup(text: str) -> str | None:
    """The cgroup v2 path from /proc/PID/cgroup (the `0::/path` line), or None."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


def cgroup2_mounted_at(mountinfo: str, root: str = ROOT) -> bool:
    """Whether mountinfo shows a cgroup2 filesystem mounted at `root` (pure)."""
    for line in mountinfo.splitlines():
        fields = line.split(" - ")
        if len(fields) == 2 and fields[0].split()[4] == root and fields[1].split()[0] == "cgroup2":
            return True
    return False


def delegate_files(text: str) -> list[str]:
    """The files the kernel says a delegatee must own (/sys/kernel/cgroup/delegate)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def is_delegated(path: str, files: list[str]) -> bool:
    """The directory and the kernel's delegation files in it are writable by us."""
    if not os.access(path, os.W_OK):
        return False
    return all(os.access(f"{path}/{name}", os.W_OK) for name in files if os.path.exists(f"{path}/{name}"))


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def events(text: str) -> dict[str, int]:
    """`key value` lines (memory.events, pids.events) -> dict (pure)."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def throttling(cpu_stat: dict[str, int], limits: Limits) -> str | None:
    """How long --cpus held the sandbox back, from cpu.stat (pure)."""
    if limits.cpus is None or not cpu_stat.get("nr_throttled"):
        return None
    seconds = cpu_stat.get("throttled_usec", 0) / 1e6
    return (f"the CPU limit ({limits.cpus:g}) held the sandbox back {cpu_stat['nr_throttled']} time(s), "
            f"{seconds:.1f} s in all")


def explain(limits: Limits, memory_events: dict[str, int], pids_events: dict[str, int]) -> list[str]:
    """What the limits did to the command, in plain words (pure).

    oom_kill, not oom: `oom` is counted where a limit was hit (maybe an ancestor), oom_kill
    where the kernel killed (containerd PR #6323)."""
    lines = []
    if memory_events.get("oom_kill"):
        limit = f" (limit {format_size(limits.memory)})" if limits.memory is not None else ""
        lines.append(f"the command was killed: out of memory{limit}")
    if pids_events.get("max"):
        lines.append(f"the sandbox reached its process limit ({limits.pids}) {pids_events['max']} time(s); "
                     "fork() failed there")
    return lines


# --- the chain (I/O) -------------------------------------------------------------------

def check(limits: Limits) -> tuple[str, list[str], bool]:
    """Every check prepare() makes before its first side effect (--dry-run makes only
    these): (our cgroup's directory, the files a delegated cgroup must let us write,
    whether it is delegated to us already and holds us alone). CgroupError otherwise.

    Inside a Slurm job only the first case can work: anything else refuses, naming
    Slurm's options (slurm.py says why rbox never takes a systemd scope there)."""
    from rootless import slurm

    job = slurm.job_id()
    if not cgroup2_mounted_at(read("/proc/self/mountinfo")):
        if job:
            raise slurm.refusal(job, limits, "rbox nests limits only under a job cgroup of cgroup v2, and "
                                             "/sys/fs/cgroup is not a cgroup2 mount on this node")
        raise CgroupError("resource limits need cgroup v2, and /sys/fs/cgroup is not a cgroup2 mount here",
                          hint="an administrator can boot with systemd.unified_cgroup_hierarchy=1; "
                               "see rbox(1), RESOURCE LIMITS")
    path = parse_proc_cgroup(read("/proc/self/cgroup")) or "/"
    base = ROOT + path.rstrip("/")
    files = delegate_files(read(DELEGATE_LIST)) if os.path.exists(DELEGATE_LIST) else ["cgroup.procs"]
    alone = read(f"{base}/cgroup.procs").split() == [str(os.getpid())]
    if is_delegated(base, files) and alone:
        check_controllers(base, limits.controllers())
        return base, files, True
    if job:
        why = "is not delegated to you" if not is_delegated(base, files) else "holds other processes too"
        raise slurm.refusal(job, limits, f"rbox nests limits only under a job cgroup that Slurm delegates to you "
                                         f"and that holds rbox alone, and this task's cgroup `{base}` {why}")
    if os.environ.get("RBOX_IN_SCOPE") != "1":
        check_user_manager(limits)
    return base, files, False


def prepare(limits: Limits, argv: list[str]) -> Subtree:
    """A delegated subtree for this sandbox, or re-exec under a systemd scope (which
    does not return), or CgroupError with what is missing and the fix."""
    base, files, ready = check(limits)
    if ready:
        return Subtree(base)
    if os.environ.get("RBOX_IN_SCOPE") == "1":
        raise CgroupError(f"the systemd scope rbox started is not delegated to you (`{base}`)",
                          hint="the user manager must allow Delegate=yes; see rbox(1), RESOURCE LIMITS")
    systemd_run, bus = check_user_manager(limits)
    mechanism = os.environ.get("RBOX_SCOPE_MECHANISM", "dbus")
    if mechanism == "dbus":
        subtree = move_into_scope(bus, files, limits)
        if subtree is not None:
            return subtree
    reexec_in_scope(systemd_run, bus, argv)
    raise AssertionError("unreachable")


def move_into_scope(bus: str, files: list[str], limits: Limits) -> Subtree | None:
    """Ask the user manager over D-Bus (StartTransientUnit, through busctl) for a
    delegated scope holding this very process. No second interpreter start, unlike the
    systemd-run re-exec: bench/limits.py measures the difference. None when busctl is
    missing or the call fails: systemd-run is the fallback."""
    from rootless import spawn
    from rootless.userns import which

    busctl = which("busctl", os.environ.get("PATH"))
    if busctl is None:
        return None
    name = f"rbox-{os.getpid()}-{os.urandom(3).hex()}.scope"
    argv = [busctl, "--user", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager", "StartTransientUnit", "ssa(sv)a(sa(sv))", name, "fail",
            "3", "PIDs", "au", "1", str(os.getpid()), "Delegate", "b", "true",
            "CollectMode", "s", "inactive-or-failed", "0"]
    os.environ["DBUS_SESSION_BUS_ADDRESS"] = bus
    code, output = spawn.run(argv, timeout=10.0)
    if code != 0:
        log.step(f"StartTransientUnit failed ({output}); falling back to systemd-run")
        return None
    # The job is asynchronous: wait until the kernel shows us in the new scope.
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        path = parse_proc_cgroup(read("/proc/self/cgroup")) or "/"
        if path.endswith("/" + name):
            base = ROOT + path
            if not is_delegated(base, files):
                raise CgroupError(f"the systemd scope `{name}` is not delegated to you",
                                  hint="the user manager must allow Delegate=yes; see rbox(1), RESOURCE LIMITS")
            check_controllers(base, limits.controllers())
            return Subtree(base)
        time.sleep(0.001)
    raise CgroupError(f"the systemd scope `{name}` did not take rbox in within 10 s",
                      hint="see rbox(1), RESOURCE LIMITS")


def check_controllers(base: str, wanted: list[str]) -> None:
    available = read(f"{base}/cgroup.controllers").split()
    missing = [c for c in wanted if c not in available]
    if missing:
        raise CgroupError(f"the cgroup controller(s) {' '.join(missing)} are not delegated to you",
                          hint="an administrator can install helpers/user@.service.d/delegate.conf "
                               "(Delegate=cpu cpuset io memory pids); see rbox(1), HOST SETUP")


def check_user_manager(limits: Limits) -> tuple[str, str]:
    """(systemd-run's path, the session bus address), or CgroupError naming what is
    missing: checked before asking for a scope, so the error is rbox's own."""
    from rootless.userns import which

    uid = os.getuid()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    bus = os.environ.get("DBUS_SESSION_BUS_ADDRESS") or (f"unix:path={runtime}/bus" if runtime else "")
    systemd_run = which("systemd-run", os.environ.get("PATH"))
    if systemd_run is None:
        raise CgroupError("resource limits need systemd-run, which is not installed",
                          hint="install systemd; see rbox(1), RESOURCE LIMITS")
    if not runtime or not os.path.exists(bus.removeprefix("unix:path=")):
        reason = "XDG_RUNTIME_DIR is not set" if not runtime else f"there is no session bus at {runtime}/bus"
        raise CgroupError(f"resource limits need your systemd user manager, and none is reachable ({reason})",
                          hint="log in with a session (ssh or login, not su/sudo), or an administrator can run "
                               f"`loginctl enable-linger {uid}`; see rbox(1), RESOURCE LIMITS")
    manager = f"{ROOT}/user.slice/user-{uid}.slice/user@{uid}.service"
    if os.path.exists(f"{manager}/cgroup.controllers"):
        check_controllers(manager, limits.controllers())
    return systemd_run, bus


def reexec_in_scope(systemd_run: str, bus: str, argv: list[str]) -> None:
    """Become `systemd-run --user --scope -p Delegate=yes -- rbox ARGV...`."""
    command = [systemd_run, "--user", "--scope", "--quiet", "--collect", "-p", "Delegate=yes",
               "--", sys.executable, "-m", "rootless", *argv]
    log.step(" ".join(command))
    env = dict(os.environ, RBOX_IN_SCOPE="1", DBUS_SESSION_BUS_ADDRESS=bus)
    from rootless import fds

    fds.inherit()        # the --pass-fd descriptors, for the second rbox to pass on
    os.execve(systemd_run, command, env)


class Subtree:
    """`<scope>/supervisor` (rbox) and `<scope>/payload` (the sandbox, with the limits)."""

    def __init__(self, base: str):
        self.base = base
        self.payload = f"{base}/payload"
        self.supervisor = f"{base}/supervisor"

    def setup(self, limits: Limits) -> None:
        for leaf in (self.supervisor, self.payload):
            os.makedirs(leaf, exist_ok=True)
        # No internal processes (cgroups(7)): rbox leaves the scope's own cgroup before
        # the scope can enable controllers for its children.
        self._write(f"{self.supervisor}/cgroup.procs", str(os.getpid()))
        self._write(f"{self.base}/cgroup.subtree_control", " ".join(f"+{c}" for c in limits.controllers()))
        # io.stat (block I/O for `rbox stats`) exists only where the io controller is
        # enabled: on too when delegated, though no limit needs it (never an error).
        try:
            if "io" not in limits.controllers() and "io" in read(f"{self.base}/cgroup.controllers").split():
                self._write(f"{self.base}/cgroup.subtree_control", "+io")
        except (OSError, CgroupError) as e:
            log.step(f"io accounting: {e}")
        for name, value in limits.writes():
            self._write(f"{self.payload}/{name}", value)

    def attach(self, pid: int) -> None:
        """Stage-1, before it creates its cgroup namespace: everything it starts is in."""
        self._write(f"{self.payload}/cgroup.procs", str(pid))

    def report(self, limits: Limits) -> list[str]:
        def maybe(name: str) -> dict[str, int]:
            try:
                return events(read(f"{self.payload}/{name}"))
            except OSError:
                return {}

        throttled = throttling(maybe("cpu.stat"), limits)
        if throttled:
            log.step(throttled)   # not a failure: said only with --debug
        return explain(limits, maybe("memory.events"), maybe("pids.events"))

    def cleanup(self) -> None:
        """Kill whatever is left in `payload` (cgroup.kill, Linux 5.14; before it, what
        cgroup.procs lists, until it is empty), then remove it. Errors are logged, not
        raised: the original error, if any, must survive."""
        try:
            one_write = os.path.exists(f"{self.payload}/cgroup.kill")
            if one_write:
                self._write(f"{self.payload}/cgroup.kill", "1")
            for _ in range(200):
                left = read(f"{self.payload}/cgroup.procs").split()
                if not left:
                    break
                if not one_write:
                    kill_listed(left)
                time.sleep(0.005)
            os.rmdir(self.payload)
        except OSError as e:
            log.step(f"cgroup cleanup: {e}")

    def _write(self, path: str, value: str) -> None:
        log.step(f"cgroup: {value} > {path}")
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as e:
            raise CgroupError(f"cannot write `{value}` to `{path}`: {e.strerror}",
                              hint="see rbox(1), RESOURCE LIMITS") from None


def kill_listed(pids: list[str]) -> None:
    """SIGKILL each pid of a cgroup.procs listing (the fallback for cgroup.kill). They are
    in the sandbox's PID namespace, whose PID 1 is dead or dying, so the kernel is killing
    them too; this only makes sure of it. A pid that exited meanwhile is skipped."""
    import signal

    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError, ValueError):
            pass
