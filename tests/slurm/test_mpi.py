"""MPI programs in rbox, one sandbox per rank (issue #16; sharing one per node is --join's).

Runs in: the test runner, as the unprivileged user: a small MPI program of the tests' own
(mpi_hello.c, built here with Debian's Open MPI) started by `srun --mpi=pmix` on the test
cluster and by `mpirun`, each rank in a sandbox of its own. What Open MPI needs there
(rbox(1), SLURM AND MPI):

- --net=host: the launcher's PMIx server (slurmstepd's, or mpirun's) listens on the
  host's 127.0.0.1, and the ranks talk TCP to each other;
- --bind "$PMIX_SERVER_TMPDIR": PMIx keeps its shared-memory store there (read-only, each
  rank prints PMIX ERROR and falls back to a slower one);
- OMPI_MCA_btl=self,tcp: Open MPI's shared-memory transport (vader) would take the ranks
  for neighbours and read the peer's memory by its PID (process_vm_readv), which in two
  PID namespaces is 2 for both: the rank reads itself and crashes. One sandbox for the
  ranks of a node (--join) is what lets them share memory.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.slurm.jobs import run

pytestmark = [pytest.mark.needs_userns, pytest.mark.needs_mpi]

RANK = re.compile(r"^rank (\d+) of (\d+) pid (\d+) pidns (\d+) ipcns (\d+) netns (\d+) pingpong (\w+) rtt ([\d.]+) us$")
IN_SANDBOX = 'exec rbox run --net=host --bind "$PMIX_SERVER_TMPDIR" -- ./mpi_hello'
TCP_ONLY = {"OMPI_MCA_btl": "self,tcp"}


def ranks(stdout: str) -> list[re.Match[str]]:
    found = [RANK.match(line) for line in stdout.splitlines()]
    return sorted((m for m in found if m), key=lambda m: int(m.group(1)))


def check_separate_sandboxes(r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode == 0, r.stdout + r.stderr
    lines = ranks(r.stdout)
    assert [(m.group(1), m.group(2), m.group(7)) for m in lines] == [("0", "2", "ok"), ("1", "2", "ok")], r.stdout
    # Each rank is its sandbox's command (PID 2), in PID and IPC namespaces of its own;
    # both on the host's network (--net=host).
    assert [m.group(3) for m in lines] == ["2", "2"]
    assert lines[0].group(4) != lines[1].group(4) and lines[0].group(5) != lines[1].group(5)
    assert lines[0].group(6) == lines[1].group(6)
    assert "PMIX ERROR" not in r.stderr and "rbox:" not in r.stderr, r.stderr


@pytest.mark.needs_slurm
def test_srun_starts_each_rank_in_its_sandbox(program: Path, bindir: Path) -> None:
    offered = run(["srun", "--mpi=list"], bindir, program)
    plugins = set(re.findall(r"^\s+(\w+)$", offered.stdout + offered.stderr, re.M))
    # Debian's Open MPI talks PMIx (Slurm's pmi2 plugin it does not take).
    assert "pmix" in plugins, offered.stdout + offered.stderr
    r = run(["srun", "-n2", "--mpi=pmix", "sh", "-c", IN_SANDBOX], bindir, program, extra=TCP_ONLY)
    check_separate_sandboxes(r)


def test_mpirun_starts_each_rank_in_its_sandbox(program: Path, bindir: Path) -> None:
    r = run(["mpirun", "-n", "2", "sh", "-c", IN_SANDBOX], bindir, program, extra=TCP_ONLY)
    check_separate_sandboxes(r)
