"""scancel ends the sandbox and everything in it (issue #16), whatever left the task's
process group.

Runs in: the test runner, as the unprivileged user, on tests/slurm/cluster's cluster
(proctrack/pgid, KillWait=2). Last of tests/slurm by name: cancelled jobs stay COMPLETING
for seconds after their processes are gone, and Slurm starts nothing on a node meanwhile.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.integration.helpers import kill_all, live_processes, wait_until
from tests.slurm.jobs import run, slurm_env

pytestmark = [pytest.mark.needs_userns, pytest.mark.needs_slurm]


def test_scancel_leaves_nothing(bindir: Path, workdir: Path) -> None:
    """scancel jobs whose sandboxed command ignores SIGTERM and has a child in a new
    session: with proctrack/pgid Slurm signals only the task's process group (an srun
    step: SIGTERM, a grace, SIGKILL; a batch script: SIGKILL at once), which that child
    has left. rbox's chain (PID 1 dies with rbox, the PID namespace with PID 1) must take
    it down. Positive control, alongside: the same srun job without rbox keeps its
    new-session child after Slurm's SIGKILL has ended the rest, so the check sees a
    survivor where there is one."""
    before = set(live_processes())
    script = "trap '' TERM; setsid sleep {n} & sleep {n} & echo ready; wait; wait"
    steps = {}
    try:
        # Each job's sleeps have a length of its own: 1000 srun + rbox, 1002 sbatch + rbox, 1001 the control.
        for name, argv in (("step", ["rbox", "run", "--", "bash", "-c", script.format(n=1000)]),
                           ("bare", ["bash", "-c", script.format(n=1001)])):
            steps[name] = subprocess.Popen(["srun", "-J", f"rbox-scancel-{name}", "--unbuffered", *argv],
                                           cwd=workdir, env=slurm_env(bindir), stdin=subprocess.DEVNULL,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        batch = run(["sbatch", "-J", "rbox-scancel-batch", "-o", "batch.out", "--wrap",
                     f"rbox run -- bash -c {shlex.quote(script.format(n=1002))}"], bindir, workdir)
        assert batch.returncode == 0, batch.stderr
        for proc in steps.values():
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""

        def new(marker: str) -> dict[int, str]:
            """Processes started since, of one job (its sleeps' length is in every cmdline)."""
            return {pid: cmd for pid, cmd in live_processes().items() if pid not in before and marker in cmd}

        def sleeping(n: int) -> list[int]:
            return [pid for pid, cmd in new(str(n)).items() if cmd.startswith(f"sleep {n} ")]

        # Both sleeps of every job have started ("ready" comes before their execs).
        assert wait_until(lambda: all(len(sleeping(n)) == 2 for n in (1000, 1001, 1002))), new("100")
        # The premise: in each, one sleep has a session of its own, out of reach of a kill of
        # the task's process group (in a sandbox, the command's session differs from rbox's too).
        for n in (1000, 1001, 1002):
            assert len({os.getsid(pid) for pid in sleeping(n)}) == 2
        squeue = run(["squeue", "-h", "--me", "-o", "%i %j"], bindir, workdir).stdout
        ids = [line.split()[0] for line in squeue.splitlines() if line.split()[1].startswith("rbox-scancel-")]
        assert len(ids) == 3, squeue
        run(["scancel", *ids], bindir, workdir)

        def settled() -> bool:
            control = [cmd for cmd in new("1001").values() if not cmd.startswith("srun")]
            return not new("1000") and not new("1002") and control == ["sleep 1001 "]

        # The srun steps: SIGTERM, then SIGKILL about 5 s later (slurmd waits at least 5 s).
        assert wait_until(settled, timeout=20), (new("1000"), new("1002"), new("1001"))
        survivor = sleeping(1001)[0]
        assert os.getsid(survivor) == survivor          # the control's new-session child, as expected
    finally:
        # The control's survivor ignores SIGTERM (inherited) and holds the step's output open.
        kill_all(set(live_processes()) - before)
        for proc in steps.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)
        # The jobs stay COMPLETING for seconds more: the next Slurm test waits for them
        # (conftest's no_job_left); this file sorts last, so in a full run nothing does.
