"""rbox inside real Slurm jobs (issue #16): srun, srun --pty, sbatch, salloc, scancel.

Runs in: the test runner, as the unprivileged user, against the single-node cluster of
tests/slurm/cluster (proctrack/pgid, task/none, KillWait=2). Inside a task there is no
user manager, no XDG_RUNTIME_DIR and no terminal; rbox must work as on the login node,
say nothing alarming, pass exit codes through, and end with the step, everything in the
sandbox included, even what left the step's process group.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.terminal import Terminal
from tests.slurm.jobs import job_field, run, slurm_env

pytestmark = [pytest.mark.needs_userns, pytest.mark.needs_slurm]


@pytest.mark.parametrize(("command", "code"), [(["sh", "-c", "echo ran; exit 0"], 0),
                                               (["sh", "-c", "echo ran; exit 3"], 3), (["no-such-command"], 127),
                                               (["sh", "-c", "echo ran; kill -9 $$"], 137)])
def test_srun_passes_the_exit_code(command: list[str], code: int, bindir: Path, workdir: Path) -> None:
    r = run(["srun", "rbox", "run", "--", *command], bindir, workdir)
    assert r.returncode == code, r.stderr
    # The command ran (srun exits 0 also when slurmd could not start the task at all).
    assert r.stdout == ("" if code == 127 else "ran\n"), r.stderr
    if code:
        assert f"task 0: Exited with exit code {code}" in r.stderr      # Slurm's own record of it
    if code == 127:
        assert "rbox: error: command not found: `no-such-command`" in r.stderr
    else:
        assert "rbox:" not in r.stderr, r.stderr


def test_batch_job_and_its_steps(bindir: Path, workdir: Path) -> None:
    """sbatch --wait: rbox in the batch script itself and in an srun step of it; the
    job's exit code is the sandboxed command's, 128+N for a signal, in the job record."""
    (workdir / "job.sh").write_text("#!/bin/sh\n"
                                    "rbox run -- sh -c 'echo batch-step sandbox=$RBOX_SANDBOX'\n"
                                    "srun rbox run -- sh -c 'echo srun-step sandbox=$RBOX_SANDBOX; kill -9 $$'\n")
    r = run(["sbatch", "--parsable", "--wait", "-o", "out.txt", "job.sh"], bindir, workdir)
    job = r.stdout.strip().split(";")[0]
    out = (workdir / "out.txt").read_text()
    assert r.returncode == 137, r.stderr + out
    assert "batch-step sandbox=1" in out and "srun-step sandbox=1" in out, out
    assert "rbox:" not in out, out             # nothing from rbox itself: no warning, no error
    assert job_field(job, "ExitCode", bindir) == "137:0"


def test_salloc_then_srun(bindir: Path, workdir: Path) -> None:
    r = run(["salloc", "-n1", "srun", "rbox", "run", "--", "sh", "-c", "exit 4"], bindir, workdir)
    assert r.returncode == 4, r.stderr
    assert "rbox:" not in r.stderr, r.stderr


@pytest.mark.needs_tmux
def test_srun_pty_rbox_sh(bindir: Path, workdir: Path) -> None:
    """`srun --pty rbox sh`: Slurm's pty on the node, rbox's own inside; a prompt, a
    command, the exit code back at the caller's shell."""
    term = Terminal(str(workdir))
    try:
        env = slurm_env(bindir)
        term.line(" ".join(f"export {k}={shlex.quote(env[k])};" for k in ("PATH", "PYTHONPATH", "SLURM_CONF")))
        term.line("srun --pty rbox sh")
        term.line("tty; echo sandbox=$RBOX_SANDBOX host=$(hostname) $((6*7))")
        # The output, then the sandbox's shell's prompt under it.
        found = term.wait_for(r"^(/dev/pts/\d+)\n+sandbox=1 host=rbox 42\n(.*[$#])$")
        assert found.group(1) and found.group(2)
        term.line("exit 7")
        term.wait_for(r"^outer\$$")             # srun has returned: the caller's shell again
        term.line("echo rc=$((0+$?))")
        assert term.wait_for(r"^rc=(\d+)$").group(1) == "7"
        assert "rbox: warning" not in term.screen() and "rbox: error" not in term.screen()
    finally:
        term.close()


@pytest.mark.needs_slirp4netns
def test_no_runtime_dir_no_user_manager(bindir: Path, workdir: Path) -> None:
    """A job has no XDG_RUNTIME_DIR (or the login node's, which does not exist on the
    compute node): a run that needs state (-p: slirp4netns's API socket) keeps it in
    /tmp/rbox-UID, and says nothing about it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    quiet = run(["srun", "rbox", "run", "-p", f"{port}:80", "--", "sh", "-c", "echo ran"], bindir, workdir)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "ran\n", "")
    gone = "/run/user/not-on-this-node"
    traced = run(["srun", "rbox", "--debug", "run", "-p", f"{port}:80", "--", "true"], bindir, workdir,
                 extra={"XDG_RUNTIME_DIR": gone})
    assert traced.returncode == 0, traced.stderr
    assert re.search(rf"state in /tmp/rbox-{os.getuid()}/\d+-", traced.stderr), traced.stderr
    assert "warning" not in traced.stderr


def test_limits_are_refused_with_slurms_options(bindir: Path, workdir: Path) -> None:
    """No cgroup plugin here (task/none): rbox cannot nest limits under the job, and must
    not leave the job for a systemd scope. It refuses, naming what to ask Slurm for."""
    r = run(["srun", "rbox", "run", "--memory", "512M", "--cpus", "1.5", "--", "true"], bindir, workdir)
    assert r.returncode == 125, r.stderr
    job = r.stderr.split("inside Slurm job ")[1].split(":")[0] if "inside Slurm job " in r.stderr else None
    assert job and job.isdigit(), r.stderr
    assert "\nrbox: error: --memory, --cpus inside Slurm job " in "\n" + r.stderr, r.stderr
    assert "`srun --mem=512M --cpus-per-task=2 ...`" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.needs_slurm_memory
def test_a_kill_by_the_jobs_memory_limit_is_explained(bindir: Path, workdir: Path) -> None:
    """Slurm's task/cgroup enforces --mem=200M; a command that takes 400M is killed by the
    kernel. rbox says which limit it was, exits with 137 (srun itself then reports the step
    as Out Of Memory, status 1, as it does without rbox). The control: a command within
    the limit, and rbox says nothing."""
    hog = f"{shlex.quote(sys.executable)} -c 'b = bytes(1) * (400 << 20)'"
    r = run(["srun", "--mem=200M", "sh", "-c", f"rbox run -- {hog}; echo rbox=$?"], bindir, workdir)
    assert "rbox=137" in r.stdout, r.stdout + r.stderr
    assert ("rbox: the command was killed: the job's memory limit (200M) was reached; ask Slurm for more with --mem"
            in r.stderr.splitlines()), r.stderr
    small = f"{shlex.quote(sys.executable)} -c 'b = bytes(1) * (20 << 20)'"
    fits = run(["srun", "--mem=200M", "sh", "-c", f"rbox run -- {small}; echo rbox=$?"], bindir, workdir)
    assert (fits.returncode, fits.stdout, fits.stderr) == (0, "rbox=0\n", "")


def test_rbox_check_names_the_job(bindir: Path, workdir: Path) -> None:
    r = run(["srun", "rbox", "check"], bindir, workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    job = re.search(r"^ok    Slurm job: job (\d+) on \S+: Slurm sets its limits", r.stdout, re.M)
    assert job, r.stdout
    assert "systemd user manager" not in r.stdout and "\nwarn  XDG_RUNTIME_DIR" not in r.stdout


def test_a_warning_once_per_step(bindir: Path) -> None:
    """The same warning from every rank would be noise: the first rank says it."""
    home = Path.home()
    r = run(["srun", "-n2", "rbox", "run", "--", "true"], bindir, home)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("rbox: warning: not binding the current directory") == 1, r.stderr


def test_a_signal_reaches_the_command(bindir: Path, workdir: Path) -> None:
    """`scancel --signal=TERM`: Slurm signals the task, rbox; rbox forwards it to the
    sandboxed command, whose own exit status then ends the step."""
    proc = subprocess.Popen(["srun", "-J", "rbox-signal", "--unbuffered", "rbox", "run", "--", "sh", "-c",
                             "trap 'echo got-term; exit 42' TERM; echo ready; sleep 1000 & wait"],
                            cwd=workdir, env=slurm_env(bindir), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        r = run(["scancel", "--signal=TERM", "--name=rbox-signal", "--me"], bindir, workdir)
        assert r.returncode == 0, r.stderr
        out, err = proc.communicate(timeout=30)
        assert (proc.returncode, out) == (42, "got-term\n"), err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
