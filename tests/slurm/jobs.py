"""Running real Slurm jobs from the tests: the cluster's configuration, an environment in
which `srun rbox ...` finds this checkout's rbox, and the probe for the `slurm` marker.

Runs in: the test runner, as the unprivileged user. The cluster is tests/slurm/cluster's
(started by .ci/run as root); clients find it through SLURM_CONF, or, when that is not
set, at the script's default place.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.helpers import rbox_env

CLUSTER_CONF = "/run/rbox-slurm/slurm.conf"     # tests/slurm/cluster's default RBOX_SLURM_DIR
TIMEOUT = 60


def slurm_conf() -> str:
    return os.environ.get("SLURM_CONF") or CLUSTER_CONF


def cluster_problem() -> str | None:
    """None when this user can run a job on the test cluster, else why not."""
    conf = slurm_conf()
    if not os.path.exists(conf):
        return f"no Slurm cluster: {conf} does not exist (as root: tests/slurm/cluster install && ... start)"
    try:
        # --immediate: a busy node is an answer too, and no job is left waiting for it.
        r = subprocess.run(["srun", "--quiet", "--immediate=20", "-t", "1", "-n1", "true"],
                           env=dict(os.environ, SLURM_CONF=conf), capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL, cwd="/")
    except FileNotFoundError:
        return "srun is not installed (Debian package slurm-client)"
    except subprocess.TimeoutExpired:
        return f"`srun true` did not finish within 60 s (is the cluster of {conf} running?)"
    if r.returncode != 0:
        return f"`srun true` failed with {r.returncode}: {r.stderr.strip()[-300:]}"
    return None


def memory_limit_problem() -> str | None:
    """None when the test cluster enforces a job's --mem (Slurm's task/cgroup: the task
    is in a memory cgroup of its job's), else why not."""
    problem = cluster_problem()
    if problem is not None:
        return problem
    r = subprocess.run(["srun", "--quiet", "--immediate=20", "-t", "1", "--mem=100M", "cat", "/proc/self/cgroup"],
                       env=dict(os.environ, SLURM_CONF=slurm_conf()), capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL, cwd="/")
    for line in r.stdout.splitlines():
        if "memory" in line.split(":")[1].split(",") and "/job_" in line:
            return None
    return ("the test cluster does not confine a job's memory (Slurm's TaskPlugin is not task/cgroup; as root: "
            "RBOX_SLURM_TASK=cgroup tests/slurm/cluster start, on a node with a cgroup v1 memory hierarchy)")


def shim_dir(where: Path) -> Path:
    """A directory with an `rbox` that runs this checkout (`python -m rootless`), for the
    tasks' PATH: srun passes the caller's environment on, PYTHONPATH included."""
    where.mkdir(parents=True, exist_ok=True)
    rbox = where / "rbox"
    rbox.write_text(f'#!/bin/sh\nexec {sys.executable} -m rootless "$@"\n')
    rbox.chmod(0o755)
    return where


def slurm_env(bindir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = rbox_env({"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "SLURM_CONF": slurm_conf()})
    # The runner's own session says nothing about a job's: a test sets what it needs.
    for name in ("XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS"):
        env.pop(name, None)
    env.update(extra or {})
    return env


def run(argv: list[str], bindir: Path, cwd: Path, extra: dict[str, str] | None = None,
        timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=slurm_env(bindir, extra), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def wait_for_jobs_to_leave(bindir: Path, timeout: float = 30) -> bool:
    """Wait until this user has no job in the queue (running or completing): a cancelled
    job stays COMPLETING for seconds, and Slurm starts nothing on a node while one is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(["squeue", "-h", "--me", "-o", "%i"], env=slurm_env(bindir), capture_output=True,
                           text=True, timeout=30)
        if r.returncode != 0 or not r.stdout.strip():
            return True
        time.sleep(0.2)
    return False


def job_field(job: str, field: str, bindir: Path) -> str | None:
    """One field of `scontrol show job` (ExitCode=3:0 -> "3:0"): the job record sacct
    would show (sacct itself needs slurmdbd, which the test cluster does not run)."""
    r = subprocess.run(["scontrol", "-o", "show", "job", job], env=slurm_env(bindir), capture_output=True,
                       text=True, timeout=30)
    for word in r.stdout.split():
        key, _, value = word.partition("=")
        if key == field:
            return value
    return None
