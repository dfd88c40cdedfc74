"""`rbox run --join`: the ranks of one step on one node share one sandbox (issue #16).

Runs in: the test runner, as the unprivileged user: real ranks of srun (on the test
cluster) and mpirun, and plain rbox processes with --join-count for the failures (a
rank that never arrives, one killed by SIGKILL while the others wait, options that
disagree), each checked to leave no process and no state behind.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import live_processes, wait_until
from tests.slurm.jobs import run, slurm_env
from tests.slurm.test_mpi import ranks

pytestmark = [pytest.mark.needs_userns]

JOINED = 'exec rbox run --join --net=host --bind "$PMIX_SERVER_TMPDIR" -- ./mpi_hello'
SEPARATE = 'exec rbox run --net=host --bind "$PMIX_SERVER_TMPDIR" -- ./mpi_hello'
STATE = Path(f"/tmp/rbox-{os.getuid()}")        # no XDG_RUNTIME_DIR in the tests' jobs (slurm_env)


def left_behind(marker: str) -> list[str]:
    """Processes whose command line names `marker`, and state of its group or sandbox."""
    found = [cmd for cmd in live_processes().values() if marker in cmd]
    found += [str(p) for p in (STATE / f"join.{marker}", STATE / "named" / f"join.{marker}") if p.exists()]
    return found


def nothing_left(marker: str) -> None:
    assert wait_until(lambda: not left_behind(marker), timeout=8), left_behind(marker)


@pytest.fixture(autouse=True)
def kill_what_a_failure_left() -> Iterator[None]:
    """A failed test (or a mutant) may leave ranks, watchers and supervisors of its group
    (every tag names this test process): they are killed, by pid, after the test."""
    yield
    tag = f"-{os.getpid()}"
    for pid, cmd in live_processes().items():
        if tag in cmd and ("--join" in cmd or "join." in cmd):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def check_one_sandbox(r: subprocess.CompletedProcess[str]) -> None:
    """Both ranks ran, their ping-pong came back intact, and they share the PID, IPC and
    network namespaces (PIDs of one namespace: two different small numbers)."""
    assert r.returncode == 0, r.stdout + r.stderr
    lines = ranks(r.stdout)
    assert [(m.group(1), m.group(2), m.group(7)) for m in lines] == [("0", "2", "ok"), ("1", "2", "ok")], r.stdout
    assert len({m.group(4) for m in lines}) == 1 and len({m.group(5) for m in lines}) == 1
    assert len({m.group(6) for m in lines}) == 1
    pids = {int(m.group(3)) for m in lines}
    assert len(pids) == 2 and max(pids) < 100, r.stdout
    assert "rbox:" not in r.stderr and "PMIX ERROR" not in r.stderr, r.stderr


@pytest.mark.needs_slurm
@pytest.mark.needs_mpi
def test_srun_ranks_share_one_sandbox_and_its_shared_memory(program: Path, bindir: Path) -> None:
    """No OMPI_MCA_btl: Open MPI's shared-memory transport between the ranks. Control: the
    same without --join (a sandbox per rank) fails, the transport reading the wrong peer."""
    r = run(["srun", "-n2", "--mpi=pmix", "sh", "-c", JOINED], bindir, program)
    check_one_sandbox(r)
    control = run(["srun", "-n2", "--mpi=pmix", "sh", "-c", SEPARATE], bindir, program)
    assert control.returncode != 0, control.stdout + control.stderr


# Each rank marks its arrival in /dev/shm (the sandbox's, shared by the ranks), waits for the
# other's mark, lists the processes, then waits until the other has listed them too.
SEE_EACH_OTHER = r"""
wait_for() { i=0; while [ "$(ls /dev/shm | grep -c "^$1")" -lt 2 ]; do
  i=$((i + 1)); [ $i -gt 100 ] && { echo "timeout $1"; exit 99; }; sleep 0.05; done; }
echo $$ > /dev/shm/in.$SLURM_PROCID.tmp; mv /dev/shm/in.$SLURM_PROCID.tmp /dev/shm/in.$SLURM_PROCID; wait_for in.
other=$(cat /dev/shm/in.$((1 - SLURM_PROCID)))
ps -e -o pid=,args= | awk -v p="$other" '$1 == p && $2 == "sh" && $3 == "ranks.sh" { print "sees-other" }'
touch /dev/shm/seen.$SLURM_PROCID; wait_for seen.
exit $((3 + SLURM_PROCID))
"""


@pytest.mark.needs_slurm
def test_srun_ranks_see_each_other_and_their_exit_codes_pass(workdir: Path, bindir: Path) -> None:
    """The ranks share /dev/shm, each rank's `ps` shows the other's command, and each
    rank's own exit status reaches srun."""
    (workdir / "ranks.sh").write_text(SEE_EACH_OTHER)
    r = run(["srun", "-n2", "--kill-on-bad-exit=0", "-l", "rbox", "run", "--join", "--net=none", "--", "sh",
             "ranks.sh"], bindir, workdir)
    assert r.returncode == 4, r.stdout + r.stderr        # srun: the highest of the tasks' codes
    for rank in ("0", "1"):
        # The other rank's shell, by the pid it wrote itself (a number in this one PID
        # namespace), is in this rank's `ps`.
        assert f"{rank}: sees-other" in r.stdout.splitlines(), r.stdout
    assert "rbox:" not in r.stderr, r.stderr


@pytest.mark.needs_slurm
def test_two_jobs_of_one_user_never_share_a_sandbox(workdir: Path, bindir: Path) -> None:
    """Two jobs at once on the one node, two ranks each: one sandbox per job (the tag is
    the job's and step's id), both ranks of a job in it."""
    argv = ["srun", "-n2", "rbox", "run", "--join", "--net=none", "--", "sh", "-c",
            "readlink /proc/self/ns/pid; sleep 0.5"]
    jobs = [subprocess.Popen(argv, env=slurm_env(bindir), cwd=workdir, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL) for _ in range(2)]
    results = [job.communicate(timeout=60) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], results
    namespaces = [set(out.split()) for out, _ in results]
    assert all(len(ns) == 1 and len(out.split()) == 2 for ns, (out, _) in zip(namespaces, results, strict=True)), \
        results
    assert namespaces[0] != namespaces[1], results


@pytest.mark.needs_mpi
def test_mpirun_ranks_share_one_sandbox(program: Path, bindir: Path) -> None:
    r = run(["mpirun", "-n", "2", "sh", "-c", JOINED.replace("--join", "--join-count 2")], bindir, program)
    check_one_sandbox(r)


def start_rank(tag: str, count: int, workdir: Path, bindir: Path, *options: str, wait: str = "2",
               command: str = "true") -> subprocess.Popen[str]:
    env = slurm_env(bindir, {"RBOX_JOIN_TIMEOUT": wait})
    return subprocess.Popen(["rbox", "run", f"--join={tag}", "--join-count", str(count), "--net=none", *options,
                             "--", "sh", "-c", command], env=env, cwd=workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def arrived(tag: str) -> int:
    try:
        return (STATE / f"join.{tag}" / "arrived").stat().st_size
    except OSError:
        return 0


def test_a_rank_killed_while_the_others_wait_fails_them_in_time(workdir: Path, bindir: Path) -> None:
    """Three ranks expected; two arrive, one of them (the first, whose rbox started the
    group) is killed by SIGKILL: the other says so within the bounded wait, and the
    group's watcher, supervisor and sandbox all go."""
    tag = f"killed-{os.getpid()}"
    first = start_rank(tag, 3, workdir, bindir)
    assert wait_until(lambda: arrived(tag) == 1, timeout=10)
    second = start_rank(tag, 3, workdir, bindir)
    assert wait_until(lambda: arrived(tag) == 2, timeout=10)
    started = time.monotonic()
    first.send_signal(signal.SIGKILL)
    _, err = second.communicate(timeout=10)
    first.communicate(timeout=5)
    assert second.returncode == 125 and time.monotonic() - started < 5, err
    assert f"rbox: error: only 2 of the 3 ranks of the join group `{tag}` arrived within 2 s" in err, err
    assert "hint: a rank failed or was killed" in err and "Traceback" not in err, err
    nothing_left(tag)


def test_ranks_asking_for_different_sandboxes_are_refused(workdir: Path, bindir: Path) -> None:
    """The second rank's --hostname differs: it is refused, naming the option, without
    joining; the first, alone, fails at the end of its wait. Nothing is left."""
    tag = f"differ-{os.getpid()}"
    first = start_rank(tag, 2, workdir, bindir, "--hostname", "a")
    assert wait_until(lambda: arrived(tag) == 1, timeout=10)
    second = start_rank(tag, 2, workdir, bindir, "--hostname", "b")
    _, err = second.communicate(timeout=10)
    assert second.returncode == 125, err
    assert f"rbox: error: this rank asks for another sandbox than the join group `{tag}`: --hostname differs" \
        in err, err
    assert arrived(tag) == 1
    _, err = first.communicate(timeout=10)
    assert first.returncode == 125 and "only 1 of the 2 ranks" in err, err
    nothing_left(tag)


def test_ranks_with_the_same_options_run_and_leave_nothing(workdir: Path, bindir: Path) -> None:
    """Control for the two above: the same ranks, agreeing and all there, run in one
    sandbox (one PID namespace), each with its exit status; then nothing is left."""
    tag = f"agree-{os.getpid()}"
    # The sandbox's own command (the group's waiter) is PID 2, in U2: each rank is in that
    # user namespace too (the joiner entered it), not in U1, which owns the mounts.
    probe = 'readlink /proc/self/ns/pid /proc/self/ns/user /proc/2/ns/user; exit "$CODE"'
    ranks_ = [start_rank(tag, 2, workdir, bindir, "--hostname", "a", "-e", f"CODE={code}", command=probe)
              for code in (3, 5)]
    results = [p.communicate(timeout=15) for p in ranks_]
    assert [p.returncode for p in ranks_] == [3, 5], results
    assert results[0][0] == results[1][0] and results[0][0].startswith("pid:["), results
    _, user, waiters = results[0][0].split()
    assert user == waiters and user.startswith("user:["), results
    nothing_left(tag)


def test_the_watcher_killed_ends_the_sandbox_and_the_ranks_say_so(workdir: Path, bindir: Path) -> None:
    """The group's watcher (no rank) killed by SIGKILL: its supervisor dies by its death
    signal, and the sandbox with it; the waiting rank says so at once; what is left on
    disk goes with the next rbox start (as for any sandbox killed during setup)."""
    tag = f"watcher-{os.getpid()}"
    rank = start_rank(tag, 2, workdir, bindir, wait="20")
    assert wait_until(lambda: (STATE / f"join.{tag}" / "ready").exists(), timeout=10)
    record = ast.literal_eval((STATE / "named" / f"join.{tag}" / "record").read_text())
    supervisor = int(record["supervisor"])
    with open(f"/proc/{supervisor}/stat") as f:
        watcher = int(f.read().rsplit(")", 1)[1].split()[1])
    started = time.monotonic()
    os.kill(watcher, signal.SIGKILL)
    _, err = rank.communicate(timeout=10)
    assert rank.returncode == 125 and time.monotonic() - started < 3, err
    assert f"rbox: error: the sandbox of the join group `{tag}` has ended" in err, err
    assert wait_until(lambda: not [cmd for cmd in live_processes().values() if tag in cmd], timeout=5), \
        live_processes()
    subprocess.run(["rbox", "ps"], env=slurm_env(bindir), cwd=workdir, capture_output=True, timeout=30)
    subprocess.run(["rbox", "run", "--net=none", "--", "true"], env=slurm_env(bindir), cwd=workdir,
                   capture_output=True, timeout=30)
    nothing_left(tag)
