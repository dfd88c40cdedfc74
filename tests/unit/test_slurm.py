"""Inside a Slurm job (slurm.py), as pure logic on fake cgroup trees (pyfakefs).

The test cluster (tests/slurm) has no cgroup plugin (TaskPlugin=task/none), so what needs
one is proven here only: nesting under a delegated job cgroup is cgroups.check's existing
first case, the refusal when it is not delegated, and the explanation of a kill by the
job's memory limit for Slurm's cgroup v2 and v1 layouts. The refusal on a node without
cgroup v2 runs for real in tests/slurm/test_jobs.py, and so does the v1 explanation when
the cluster is started with task/cgroup (RBOX_SLURM_TASK=cgroup; needs_slurm_memory)."""

from __future__ import annotations

import os

import pytest

from rootless import cgroups as cg
from rootless import slurm

IN_JOB = {"SLURM_JOB_ID": "42", "SLURMD_NODENAME": "node1", "SLURM_STEP_ID": "0", "SLURM_PROCID": "0"}


def test_a_job_is_a_task_that_slurmd_started() -> None:
    assert slurm.job_id(IN_JOB) == "42"
    assert slurm.job_id({"SLURM_JOBID": "7", "SLURMD_NODENAME": "n"}) == "7"      # the old name
    # salloc's shell on the login node: the job's id, but outside its confinement.
    assert slurm.job_id({"SLURM_JOB_ID": "42"}) is None
    assert slurm.job_id({}) is None


def test_first_rank() -> None:
    assert slurm.first_rank({})
    assert slurm.first_rank(IN_JOB)
    assert not slurm.first_rank(dict(IN_JOB, SLURM_PROCID="3"))
    assert not slurm.first_rank({"OMPI_COMM_WORLD_RANK": "1"})
    assert not slurm.first_rank({"PMI_RANK": "1"})


def test_the_refusal_names_slurms_options() -> None:
    e = slurm.refusal("42", cg.Limits(memory=512 << 20, cpus=1.5), "why")
    assert e.message == "--memory, --cpus inside Slurm job 42: why"
    assert e.hint is not None and "`srun --mem=512M --cpus-per-task=2 ...`" in e.hint
    assert "#SBATCH --mem=512M --cpus-per-task=2" in e.hint
    assert e.hint.endswith("see rbox(1), SLURM AND MPI") and e.exit_code == 125


def test_the_refusal_for_limits_slurm_has_no_option_for() -> None:
    e = slurm.refusal("42", cg.Limits(pids=100, memory=5000 * 1024 + 1), "why")
    assert e.hint is not None
    assert "--mem=5001K" in e.hint                           # rounded up to what Slurm can take
    assert "Slurm has no option for --pids-limit" in e.hint
    only = slurm.refusal("42", cg.Limits(pids=100), "why")
    assert only.hint is not None and "srun" not in only.hint


V2_MOUNTINFO = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
HYBRID_MOUNTINFO = ("30 23 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n"
                    "35 30 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
                    "36 30 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
V2_TASK = "/system.slice/slurmstepd.scope/job_42/step_0/user/task_0"       # Slurm's cgroup/v2 layout
V1_TASK = "/slurm/uid_1000/job_42/step_0/task_0"                           # Slurm's cgroup/v1 layout


def test_which_memory_cgroup() -> None:
    assert slurm.memory_cgroup(f"0::{V2_TASK}\n", V2_MOUNTINFO) == (f"/sys/fs/cgroup{V2_TASK}", 2)
    hybrid = f"4:memory:{V1_TASK}\n1:cpu:/\n0::/\n"
    assert slurm.memory_cgroup(hybrid, HYBRID_MOUNTINFO) == (f"/sys/fs/cgroup/memory{V1_TASK}", 1)
    # A cgroup namespace or a container: the mount's root is not the hierarchy's.
    nested = "40 23 0:26 /system.slice/slurmstepd.scope /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert slurm.memory_cgroup(f"0::{V2_TASK}\n", nested) == ("/sys/fs/cgroup/job_42/step_0/user/task_0", 2)
    assert slurm.memory_cgroup("0::/elsewhere\n", nested) is None
    assert slurm.memory_cgroup("0::/\n", "") is None


def test_the_chain_up_to_the_job() -> None:
    d = f"/sys/fs/cgroup{V2_TASK}"
    assert slurm.job_chain(d, "42") == [d, d.rsplit("/", 1)[0], "/sys/fs/cgroup/system.slice/slurmstepd.scope/job_42/"
                                        "step_0", "/sys/fs/cgroup/system.slice/slurmstepd.scope/job_42"]
    assert slurm.job_chain(d, "4") == []                     # job_42 is not job_4's
    assert slurm.job_chain("/sys/fs/cgroup/user.slice", "42") == []


def fake_v2_job(fs, job_limit: str = "1073741824", step_limit: str = "max", kills: int = 0) -> str:
    job = "/sys/fs/cgroup/system.slice/slurmstepd.scope/job_42"
    task = f"/sys/fs/cgroup{V2_TASK}"
    fs.create_file("/proc/self/cgroup", contents=f"0::{V2_TASK}\n")
    fs.create_file("/proc/self/mountinfo", contents=V2_MOUNTINFO)
    fs.create_file(f"{job}/memory.max", contents=job_limit + "\n")
    fs.create_file(f"{job}/step_0/memory.max", contents=step_limit + "\n")
    fs.create_file(f"{task}/memory.max", contents="max\n")
    fs.create_file(f"{task}/memory.events", contents=f"low 0\nhigh 0\nmax 3\noom 1\noom_kill {kills}\n")
    return task


def test_a_kill_by_the_jobs_memory_limit_is_explained(fs) -> None:
    task = fake_v2_job(fs, kills=2)
    watch = slurm.memory_watch("42")
    assert watch is not None and watch.limit == 1 << 30
    assert watch.report(137) == []                           # nothing new since the start
    fs.remove(f"{task}/memory.events")
    fs.create_file(f"{task}/memory.events", contents="oom 2\noom_kill 3\n")
    assert watch.report(137) == ["the command was killed: the job's memory limit (1G) was reached; "
                                 "ask Slurm for more with --mem"]
    assert watch.report(2) == ["the job's memory limit (1G) was reached: the kernel killed a process in the "
                               "sandbox; ask Slurm for more with --mem"]


def test_the_lowest_limit_on_the_way_is_the_one(fs) -> None:
    fake_v2_job(fs, job_limit="2147483648", step_limit="536870912")
    watch = slurm.memory_watch("42")
    assert watch is not None and watch.limit == 512 << 20


def test_nothing_to_watch(fs) -> None:
    fake_v2_job(fs, job_limit="max")
    assert slurm.memory_watch("42") is None                  # a job without a memory limit
    assert slurm.memory_watch("43") is None                  # not this job's cgroup (task/none: the node's)


def test_the_v1_layout(fs) -> None:
    job = "/sys/fs/cgroup/memory/slurm/uid_1000/job_42"
    task = f"/sys/fs/cgroup/memory{V1_TASK}"
    fs.create_file("/proc/self/cgroup", contents=f"4:memory:{V1_TASK}\n0::/\n")
    fs.create_file("/proc/self/mountinfo", contents=HYBRID_MOUNTINFO)
    fs.create_file(f"{job}/memory.limit_in_bytes", contents=f"{3 << 30}\n")
    fs.create_file(f"{job}/step_0/memory.limit_in_bytes", contents="9223372036854771712\n")   # unlimited
    fs.create_file(f"{task}/memory.oom_control", contents="oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    watch = slurm.memory_watch("42")
    assert watch is not None and (watch.limit, watch.version) == (3 << 30, 1)
    fs.remove(f"{task}/memory.oom_control")
    fs.create_file(f"{task}/memory.oom_control", contents="oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert watch.report(137)[0].startswith("the command was killed: the job's memory limit (3G) was reached")


def test_old_v1_kernels_count_no_kills(fs) -> None:
    job = "/sys/fs/cgroup/memory/slurm/uid_1000/job_42"
    fs.create_file("/proc/self/cgroup", contents=f"4:memory:{V1_TASK}\n")
    fs.create_file("/proc/self/mountinfo", contents=HYBRID_MOUNTINFO)
    fs.create_file(f"{job}/memory.limit_in_bytes", contents=f"{3 << 30}\n")
    fs.create_file(f"/sys/fs/cgroup/memory{V1_TASK}/memory.oom_control", contents="oom_kill_disable 0\n")
    assert slurm.memory_watch("42") is None


# --- cgroups.check inside a job ---------------------------------------------------------

@pytest.fixture
def in_job(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in IN_JOB.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RBOX_IN_SCOPE", raising=False)

    def no_user_manager(limits: cg.Limits) -> tuple[str, str]:
        raise AssertionError("inside a job rbox must not reach for the user manager")

    monkeypatch.setattr(cg, "check_user_manager", no_user_manager)


def fake_task_cgroup(fs, writable: bool, alone: bool = True) -> str:
    task = f"/sys/fs/cgroup{V2_TASK}"
    fs.create_file("/proc/self/cgroup", contents=f"0::{V2_TASK}\n")
    fs.create_file("/proc/self/mountinfo", contents=V2_MOUNTINFO)
    fs.create_file("/sys/kernel/cgroup/delegate", contents="cgroup.procs\ncgroup.subtree_control\n")
    procs = f"{os.getpid()}\n" + ("" if alone else "4711\n")
    mode = 0o100644 if writable else 0o100444
    fs.create_file(f"{task}/cgroup.procs", contents=procs, st_mode=mode)
    fs.create_file(f"{task}/cgroup.subtree_control", st_mode=mode)
    fs.create_file(f"{task}/cgroup.controllers", contents="cpu memory pids\n")
    if not writable:
        fs.chmod(task, 0o555)
    return task


def test_a_delegated_job_cgroup_holding_rbox_alone_is_nested_in(fs, in_job) -> None:
    task = fake_task_cgroup(fs, writable=True)
    assert cg.check(cg.Limits(memory=1 << 30)) == (task, ["cgroup.procs", "cgroup.subtree_control"], True)


def test_a_job_cgroup_that_is_not_delegated_is_refused(fs, in_job) -> None:
    task = fake_task_cgroup(fs, writable=False)
    with pytest.raises(cg.CgroupError) as info:
        cg.check(cg.Limits(memory=1 << 30))
    assert info.value.message.startswith("--memory inside Slurm job 42: ")
    assert f"`{task}` is not delegated to you" in info.value.message
    assert info.value.hint is not None and "--mem=1G" in info.value.hint


def test_a_shared_job_cgroup_is_refused(fs, in_job) -> None:
    fake_task_cgroup(fs, writable=True, alone=False)
    with pytest.raises(cg.CgroupError) as info:
        cg.check(cg.Limits(cpus=2))
    assert "holds other processes too" in info.value.message
    assert info.value.hint is not None and "--cpus-per-task=2" in info.value.hint


def test_a_node_without_cgroup_v2(fs, in_job) -> None:
    fs.create_file("/proc/self/mountinfo", contents=HYBRID_MOUNTINFO)
    with pytest.raises(cg.CgroupError) as info:
        cg.check(cg.Limits(memory=1 << 30))
    assert "inside Slurm job 42" in info.value.message and "not a cgroup2 mount" in info.value.message


def test_outside_a_job_the_user_manager_is_asked(fs, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: the same tree outside a job goes on to the user manager."""
    for key in IN_JOB:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("RBOX_IN_SCOPE", raising=False)
    fake_task_cgroup(fs, writable=False)
    asked = []
    monkeypatch.setattr(cg, "check_user_manager", lambda limits: asked.append(limits) or ("", ""))
    assert cg.check(cg.Limits(memory=1 << 30))[2] is False
    assert len(asked) == 1
