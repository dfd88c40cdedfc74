"""Inside a Slurm job: what changes for rbox there.

Runs in: parent. Imported only inside a job (`job_id` below: environment lookups the
parent makes itself) or when a limit is asked for.

slurmd starts every task of a job (each of srun's, and the batch script) through
slurmstepd, with SLURM_JOB_ID and SLURMD_NODENAME in its environment. salloc's shell,
which runs on the login node, has SLURM_JOB_ID but not SLURMD_NODENAME: it is outside the
job's confinement, and rbox behaves there as anywhere on a login node.

Inside a job (rbox(1), SLURM AND MPI):

- Limits. Slurm confines the job itself (its cgroup, when the site uses a cgroup
  plugin). rbox's own limits nest below that only where the job's cgroup is delegated to
  the user and rbox is alone in it (cgroups.check's first case, unchanged). Otherwise
  rbox refuses, naming Slurm's own options (--mem, --cpus-per-task). It never asks the
  user manager for a scope there: a systemd scope would move the sandbox out of the
  job's cgroup, and so out of Slurm's accounting, limits and kill (flux-core#7559).
- Out of memory. The job's memory limit kills with SIGKILL (137), which alone says
  nothing. The parent reads the job cgroup's count of OOM kills before the sandbox starts
  and after it ends (`MemoryWatch`), and says which limit it was when the count rose.
  cgroup v2: memory.events `oom_kill` of rbox's own cgroup (hierarchical: it counts the
  kills below it, cgroup-v2.rst). v1: memory.oom_control `oom_kill`, which the kernel
  counts in the victim's own memory cgroup, which is rbox's (the sandbox never leaves it).
  The limit is the lowest memory.max (v1: memory.limit_in_bytes) on the way from rbox's
  cgroup up to the job's (`job_<id>` in the path, as Slurm's cgroup plugins name it).
- Ranks. `srun -n 64 rbox run` starts 64 rbox; a warning that each would print alike
  (the working directory stays read-only) is printed by the first rank only.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not `from typing import ...`: typing costs 9 ms at start-up
if TYPE_CHECKING:
    from collections.abc import Mapping

    from rootless.cgroups import Limits
    from rootless.errors import CgroupError

# A v1 memory.limit_in_bytes at or above this is "no limit" (the kernel shows
# PAGE_COUNTER_MAX pages, 0x7ffffffffffff000 with 4 KiB pages).
V1_UNLIMITED = 1 << 62
# Rank variables of the launchers: Slurm's, Open MPI's mpirun, MPICH's hydra.
RANK_VARIABLES = ("SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def job_id(environ: Mapping[str, str] | None = None) -> str | None:
    """The id of the Slurm job this process runs in on a compute node; None outside one
    (and in salloc's shell on the login node)."""
    environ = os.environ if environ is None else environ
    job = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")   # SLURM_JOBID: the old name
    return job if job and environ.get("SLURMD_NODENAME") else None


def first_rank(environ: Mapping[str, str] | None = None) -> bool:
    """False for the second and later ranks of a parallel launch (srun -n, mpirun)."""
    environ = os.environ if environ is None else environ
    return all(environ.get(name, "0") == "0" for name in RANK_VARIABLES)


# --- limits: the refusal --------------------------------------------------------------

def _slurm_equivalents(limits: Limits) -> list[tuple[str, str | None]]:
    """(rbox's option, what to ask Slurm for instead or None) for each limit asked (pure)."""
    import math

    from rootless.cgroups import format_size

    out: list[tuple[str, str | None]] = []
    if limits.memory is not None:
        # Slurm's --mem takes K, M, G, T (powers of 1024, as rbox's) and no fractions.
        size = format_size(limits.memory)
        out.append(("--memory", f"--mem={-(-limits.memory // 1024)}K" if size.isdigit() else f"--mem={size}"))
    for option, value in (("--memory-high", limits.memory_high), ("--memory-swap", limits.memory_swap)):
        if value is not None:
            out.append((option, None))
    if limits.cpus is not None:
        out.append(("--cpus", f"--cpus-per-task={max(1, math.ceil(limits.cpus))}"))
    for option, value in (("--cpu-weight", limits.cpu_weight), ("--pids-limit", limits.pids),
                          ("--io-weight", limits.io_weight)):
        if value is not None:
            out.append((option, None))
    return out


def refusal(job: str, limits: Limits, reason: str) -> CgroupError:
    """The error for limits rbox cannot nest under job `job`'s cgroup (pure): what was
    asked, why not, and what to ask Slurm for instead."""
    from rootless.errors import CgroupError

    pairs = _slurm_equivalents(limits)
    asked = ", ".join(option for option, _ in pairs)
    slurm = " ".join(flag for _, flag in pairs if flag is not None)
    without = [option for option, flag in pairs if flag is None]
    hint = "Slurm limits the job itself: "
    if slurm:
        hint += f"ask it for the limits when you submit (`srun {slurm} ...`, or #SBATCH {slurm}) "
    hint += f"and leave {asked} out inside the job"
    if without:
        hint += f" (Slurm has no option for {', '.join(without)})"
    return CgroupError(f"{asked} inside Slurm job {job}: {reason}",
                       hint=f"{hint}; see rbox(1), SLURM AND MPI")


# --- out of memory: the job's limit ------------------------------------------------------

class MemoryWatch:
    """The job's memory limit, and the OOM kill count seen in rbox's cgroup at the start."""

    def __init__(self, counter: str, version: int, limit: int, kills: int):
        self.counter, self.version, self.limit, self.kills = counter, version, limit, kills

    def report(self, code: int) -> list[str]:
        """What the job's limit did while the sandbox ran (the count rose), in words."""
        kills = oom_kills(self.counter)
        if kills is None or kills <= self.kills:
            return []
        from rootless.cgroups import format_size

        limit = f"the job's memory limit ({format_size(self.limit)})"
        if code == 128 + 9:
            return [f"the command was killed: {limit} was reached; ask Slurm for more with --mem"]
        return [f"{limit} was reached: the kernel killed a process in the sandbox; ask Slurm for more with --mem"]


def memory_watch(job: str) -> MemoryWatch | None:
    """The job's memory limit as rbox's cgroup sees it, with the OOM kill count now;
    None when there is none to watch (no cgroup plugin, no memory limit, unreadable)."""
    try:
        with open("/proc/self/cgroup") as f:
            cgroups = f.read()
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    except OSError:
        return None
    found = memory_cgroup(cgroups, mountinfo)
    if found is None:
        return None
    directory, version = found
    chain = job_chain(directory, job)
    if not chain:
        return None
    limit = lowest_limit(chain, version)
    counter = f"{directory}/{'memory.events' if version == 2 else 'memory.oom_control'}"
    kills = oom_kills(counter)
    if limit is None or kills is None:
        return None
    return MemoryWatch(counter, version, limit, kills)


def memory_cgroup(cgroups: str, mountinfo: str) -> tuple[str, int] | None:
    """(the directory of our memory cgroup, 1 or 2) from /proc/self/cgroup and
    /proc/self/mountinfo (pure): v1's memory hierarchy where one is mounted (hybrid
    hosts), else the v2 hierarchy."""
    mounts: dict[int, tuple[str, str]] = {}
    for line in mountinfo.splitlines():
        fields = line.split(" - ")
        if len(fields) != 2:
            continue
        before, after = fields[0].split(), fields[1].split()
        if len(before) < 5 or len(after) < 3:
            continue
        if after[0] == "cgroup2":
            mounts.setdefault(2, (before[3], before[4]))
        elif after[0] == "cgroup" and "memory" in after[2].split(","):
            mounts.setdefault(1, (before[3], before[4]))
    paths: dict[int, str] = {}
    for line in cgroups.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and controllers == "":
            paths[2] = path
        elif "memory" in controllers.split(","):
            paths[1] = path
    for version in (1, 2):
        if version in mounts and version in paths:
            root, point = mounts[version]
            path = paths[version]
            if root != "/" and not (path == root or path.startswith(root + "/")):
                continue      # our cgroup is not below that mount's root
            relative = (path[len(root):] if root != "/" else path).strip("/")
            return (f"{point.rstrip('/')}/{relative}" if relative else point), version
    return None


def job_chain(directory: str, job: str) -> list[str]:
    """The directories from `directory` up to the job's own (`.../job_<id>`), nearest
    first (pure); empty when `directory` is not in the job's cgroup."""
    parts = directory.rstrip("/").split("/")
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] == f"job_{job}":
            return ["/".join(parts[:j]) for j in range(len(parts), i, -1)]
    return []


def lowest_limit(chain: list[str], version: int) -> int | None:
    """The lowest memory limit set on the chain; None when none is set."""
    name = "memory.max" if version == 2 else "memory.limit_in_bytes"
    found = []
    for directory in chain:
        try:
            with open(f"{directory}/{name}") as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and (version == 2 or int(text) < V1_UNLIMITED):
            found.append(int(text))
    return min(found) if found else None


def oom_kills(counter: str) -> int | None:
    """`oom_kill N` from memory.events (v2) or memory.oom_control (v1); None when unreadable
    (v1 kernels before 4.13 do not count kills)."""
    try:
        with open(counter) as f:
            for line in f.read().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and value.strip().isdigit():
                    return int(value)
    except OSError:
        pass
    return None


# --- --join: the group of ranks on this node ----------------------------------------------

def tasks_on_node(compressed: str, node: int) -> int | None:
    """The number of tasks on node `node` (0-based) from Slurm's compressed list, such as
    SLURM_STEP_TASKS_PER_NODE=`2(x3),1` (nodes 0-2 run 2 tasks, node 3 one); None when the
    list is malformed or shorter (pure)."""
    if node < 0:
        return None
    for item in compressed.split(","):
        count, _, repeat = item.strip().partition("(")
        times = 1
        if repeat:
            if not (repeat.startswith("x") and repeat.endswith(")") and repeat[1:-1].isdigit()):
                return None
            times = int(repeat[1:-1])
        if not count.isdigit() or times < 1:
            return None
        if node < times:
            return int(count)
        node -= times
    return None


def join_group(environ: Mapping[str, str], tag: str | None, count: str | None) -> tuple[str, int]:
    """(TAG, the number of ranks on this node) for `--join[=TAG]` / `--join-count N` (pure):
    mpirun's (Open MPI: its job id, OMPI_COMM_WORLD_LOCAL_SIZE), else Slurm's step
    (SLURM_JOB_ID.SLURM_STEP_ID, SLURM_STEP_TASKS_PER_NODE at SLURM_NODEID); what is given
    wins. SpecError when either is unknown."""
    from rootless.errors import SpecError

    hint = "see rbox(1), SLURM AND MPI"
    ompi = environ.get("OMPI_MCA_ess_base_jobid")
    job = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    step = environ.get("SLURM_STEP_ID") or environ.get("SLURM_STEPID")
    if not tag:
        if ompi:
            tag = f"ompi.{ompi}"
        elif job and step:
            tag = f"{job}.{step}"
        else:
            raise SpecError("--join needs a TAG outside a Slurm step or an mpirun launch",
                            hint=f"give every rank the same one: --join=TAG; {hint}")
    if not (0 < len(tag) <= 58) or not set(tag) <= TAG_CHARS or tag[0] in "-.":
        raise SpecError(f"invalid --join tag `{tag}`",
                        hint="use up to 58 letters, digits, `-`, `_` and `.`, not starting with `-` or `.`")
    if count is None:
        if ompi and environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", "").isdigit():
            count = environ["OMPI_COMM_WORLD_LOCAL_SIZE"]
        elif job and step and environ.get("SLURM_NODEID", "").isdigit():
            found = tasks_on_node(environ.get("SLURM_STEP_TASKS_PER_NODE", ""), int(environ["SLURM_NODEID"]))
            count = None if found is None else str(found)
        if count is None:
            raise SpecError("--join cannot tell how many ranks run on this node",
                            hint=f"outside a Slurm step or an Open MPI launch give it: --join-count N; {hint}")
    if not count.isdigit() or not 0 < int(count) <= 4096:
        raise SpecError(f"invalid --join-count `{count}`", hint="a number of ranks on this node, 1 to 4096")
    return tag, int(count)


TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
