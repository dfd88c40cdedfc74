"""Every example of the man page works as written (issue #13, item 12).

Runs in: the test runner, as the unprivileged user. Each example line of rbox(1)
EXAMPLES is run by bash exactly as printed, in a directory prepared for it, with `rbox`
on PATH (this checkout). Programs the machine does not have (jupyter) are stand-ins that
do what the example needs of them; everything else is real. An example without an entry
in CASES fails the suite, so a new example cannot go untested.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.helpers import rbox_env
from tests.integration.terminal import Terminal
from tests.slurm.jobs import slurm_conf

MAN = Path(__file__).resolve().parents[2] / "man" / "rbox.1"


def examples() -> list[str]:
    """The example lines of EXAMPLES and of SLURM AND MPI's examples (after `Examples:`)."""
    text = MAN.read_text()
    section = text.split("\n.SH EXAMPLES\n", 1)[1].split("\n.SH ", 1)[0]
    section += "\n" + text.split("\n.SH SLURM AND MPI\n", 1)[1].split("\n.SH ", 1)[0].split("\nExamples:\n", 1)[1]
    found = re.findall(r"^\.TP\n\.B (.+)$", section, re.M)
    return [line.replace("\\-", "-").replace("\\e", "\\") for line in found]


def run_example(line: str, workdir: Path, bindir: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = rbox_env({"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "SLURM_CONF": slurm_conf()})
    return subprocess.run(["bash", "-c", line], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def bindir(workdir: Path) -> Path:
    """`rbox` is this checkout; the stand-ins live beside it, in the working directory,
    which the sandbox shows (the host's /tmp, where tmp_path lies, it does not)."""
    d = workdir / ".bin"
    d.mkdir()
    (d / "rbox").write_text(f'#!/bin/sh\nexec {sys.executable} -m rootless "$@"\n')
    (d / "rbox").chmod(0o755)
    return d


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "project"
    d.mkdir()
    return d


def make_build(workdir: Path) -> None:
    (workdir / "Makefile").write_text("all: a b\na b:\n\techo built > $@\n")


def check_build(r: subprocess.CompletedProcess[str], workdir: Path) -> None:
    assert r.returncode == 0, r.stderr
    assert (workdir / "a").read_text() == "built\n" and (workdir / "b").read_text() == "built\n"


def make_tar(workdir: Path) -> None:
    with tarfile.open(workdir / "rootfs.tar", "w") as tar:
        for name, uid, kind in (("rootfs", 0, tarfile.DIRTYPE), ("rootfs/etc", 0, tarfile.DIRTYPE),
                                ("rootfs/etc/motd", 0, tarfile.REGTYPE), ("rootfs/home", 0, tarfile.DIRTYPE),
                                ("rootfs/home/user", 1000, tarfile.DIRTYPE),
                                ("rootfs/home/user/file", 1000, tarfile.REGTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.uid, info.gid = kind, uid, uid
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            tar.addfile(info, None if kind == tarfile.DIRTYPE else io.BytesIO(b""))


def check_tar(r: subprocess.CompletedProcess[str], workdir: Path) -> None:
    assert r.returncode == 0, r.stderr
    outer_root = os.stat(workdir / "rootfs" / "etc" / "motd").st_uid
    outer_user = os.stat(workdir / "rootfs" / "home" / "user" / "file").st_uid
    assert outer_root == os.getuid()           # uid 0 inside is you
    assert outer_user != os.getuid()           # uid 1000 inside is one of your subordinate ids


def make_unpacked(workdir: Path, bindir: Path) -> None:
    make_tar(workdir)
    r = run_example("rbox run --root -- tar xf rootfs.tar", workdir, bindir)
    assert r.returncode == 0, r.stderr
    os.chmod(workdir / "rootfs" / "home", 0o755)
    # Positive control: from outside, the subordinate id's files cannot be deleted.
    outside = subprocess.run(["rm", "-rf", "rootfs"], cwd=workdir, capture_output=True, text=True)
    assert outside.returncode != 0


def check_unshare(r: subprocess.CompletedProcess[str], workdir: Path) -> None:
    assert (r.returncode, r.stderr) == (0, "")
    assert not (workdir / "rootfs").exists()


def check_login_path(r: subprocess.CompletedProcess[str], workdir: Path) -> None:
    assert r.returncode == 0, r.stderr
    assert "/usr/bin" in r.stdout.split(":") or "/bin" in r.stdout.strip().split(":")


def make_untrusted(workdir: Path) -> None:
    (workdir / "untrusted").write_text('#!/bin/sh\necho "home:$(ls -A "$HOME" | wc -l)"\n'
                                       'tty >/dev/null && echo terminal || echo no-terminal\n'
                                       'ls "$HOME/.ssh" 2>&1 | wc -l\n')
    (workdir / "untrusted").chmod(0o755)


def check_untrusted_tmpfs(r: subprocess.CompletedProcess[str], workdir: Path) -> None:
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:2] == ["home:0", "no-terminal"]


@pytest.fixture
def ssh_dir() -> Path:
    ssh = Path.home() / ".ssh"
    created = not ssh.exists()
    ssh.mkdir(mode=0o700, exist_ok=True)
    marker = ssh / "rbox-test-marker"
    marker.write_text("secret\n")
    yield ssh
    marker.unlink()
    if created:
        ssh.rmdir()


def check_untrusted_hide(r: subprocess.CompletedProcess[str], workdir: Path) -> None:
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[2] == "0"     # ~/.ssh is empty inside (it has a file outside)


def check_batch_build(r: subprocess.CompletedProcess[str], workdir: Path) -> None:
    """sbatch returns at once: the job builds meanwhile, its output in slurm-ID.out."""
    assert r.returncode == 0 and r.stdout.startswith("Submitted batch job "), r.stderr
    job = r.stdout.split()[-1]
    env = dict(os.environ, SLURM_CONF=slurm_conf())

    def done() -> bool:
        queue = subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True, text=True, timeout=30)
        # Gone from the queue; after MinJobAge squeue forgets it altogether.
        return (queue.returncode == 0 and not queue.stdout.strip()) or "Invalid job id" in queue.stderr

    assert wait_for(done)
    check_build(subprocess.CompletedProcess(r.args, 0, "", ""), workdir)
    assert "rbox:" not in (workdir / f"slurm-{job}.out").read_text()


def wait_for(predicate: Callable[[], bool], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def check_pty_shell(r: subprocess.CompletedProcess[str], workdir: Path, bindir: Path) -> None:
    """Without a terminal srun ignores --pty and the shell reads end-of-file; in a real
    terminal (tmux) it is a shell with a prompt whose exit status comes back."""
    assert r.returncode == 0, r.stderr
    term = Terminal(str(workdir))
    try:
        env = rbox_env({"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "SLURM_CONF": slurm_conf()})
        term.line(" ".join(f"export {k}={shlex.quote(env[k])};" for k in ("PATH", "PYTHONPATH", "SLURM_CONF")))
        term.line("srun --pty rbox sh")
        term.line("echo sandbox=$RBOX_SANDBOX $((6*7))")
        term.wait_for(r"^sandbox=1 42\n.*[$#]$")
        term.line("exit 3")
        term.wait_for(r"^outer\$$")
        term.line("echo rc=$((0+$?))")
        assert term.wait_for(r"^rc=(\d+)$").group(1) == "3"
    finally:
        term.close()


MPI_SOURCE = Path(__file__).resolve().parents[1] / "slurm" / "mpi_hello.c"


def make_mpi(workdir: Path) -> None:
    shutil.copy(MPI_SOURCE, workdir / "mpi_hello.c")
    r = subprocess.run(["mpicc", "-O2", "-o", "mpi_hello", "mpi_hello.c"], cwd=workdir, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def check_mpi(r: subprocess.CompletedProcess[str], workdir: Path) -> None:
    assert r.returncode == 0, r.stdout + r.stderr
    lines = sorted(line.split(" pid ")[0] + " " + line.split(" pingpong ")[1].split()[0]
                   for line in r.stdout.splitlines() if line.startswith("rank "))
    assert lines == ["rank 0 of 2 ok", "rank 1 of 2 ok"], r.stdout


CASES: dict[str, tuple[list[str], Callable[..., None] | None, Callable[..., None]]] = {
    # example: (markers, setup(workdir[, bindir]), check(result, workdir))
    "rbox run -- make -j8": ([], make_build, check_build),
    "rbox run --memory 2G --cpus 1.5 --pids-limit 256 -- make -j": (["needs_vm"], make_build, check_build),
    "rbox run --root -- tar xf rootfs.tar": (["needs_subuid"], make_tar, check_tar),
    "rbox unshare -- rm -rf rootfs": (["needs_subuid"], make_unpacked, check_unshare),
    "rbox sh -l -c 'echo $PATH'": ([], None, check_login_path),
    "rbox run --home=tmpfs -- ./untrusted </dev/null": ([], make_untrusted, check_untrusted_tmpfs),
    "rbox run --hide ~/.ssh -- ./untrusted": ([], make_untrusted, check_untrusted_hide),
    # SLURM AND MPI, on the test cluster (tests/slurm/cluster).
    "srun --mem=2G --cpus-per-task=2 rbox run -- make -j2": (["needs_slurm"], make_build, check_build),
    "sbatch --wrap 'rbox run -- make -j8'": (["needs_slurm"], make_build, check_batch_build),
    "srun --pty rbox sh": (["needs_slurm", "needs_tmux"], None, check_pty_shell),
    "OMPI_MCA_btl=self,tcp srun -n2 --mpi=pmix sh -c 'exec rbox run --net=host --bind $PMIX_SERVER_TMPDIR -- "
    "./mpi_hello'": (["needs_slurm", "needs_mpi"], make_mpi, check_mpi),
    "OMPI_MCA_btl=self,tcp mpirun -n 2 sh -c 'exec rbox run --net=host --bind $PMIX_SERVER_TMPDIR -- ./mpi_hello'":
        (["needs_mpi"], make_mpi, check_mpi),
    "srun -n2 --mpi=pmix sh -c 'exec rbox run --join --net=host --bind $PMIX_SERVER_TMPDIR -- ./mpi_hello'":
        (["needs_slurm", "needs_mpi"], make_mpi, check_mpi),
    "mpirun -n 2 sh -c 'exec rbox run --join --net=host --bind $PMIX_SERVER_TMPDIR -- ./mpi_hello'":
        (["needs_mpi"], make_mpi, check_mpi),
}
PUBLISHED = "rbox run -p 8888:8888 -- jupyter lab --ip=0.0.0.0"


def test_every_example_has_a_case() -> None:
    assert set(examples()) == set(CASES) | {PUBLISHED}


def _params() -> list[object]:
    return [pytest.param(line, marks=[getattr(pytest.mark, m) for m in ["needs_userns", *markers]], id=line)
            for line, (markers, _, _) in CASES.items()]


@pytest.mark.parametrize("line", _params())
def test_example_works(line: str, workdir: Path, bindir: Path, request: pytest.FixtureRequest) -> None:
    _, setup, check = CASES[line]
    if "~/.ssh" in line:
        request.getfixturevalue("ssh_dir")
    if setup is make_unpacked:
        make_unpacked(workdir, bindir)
    elif setup is not None:
        setup(workdir)
    if check is check_pty_shell:
        check_pty_shell(run_example(line, workdir, bindir), workdir, bindir)
        return
    check(run_example(line, workdir, bindir), workdir)


@pytest.mark.needs_userns
@pytest.mark.needs_slirp4netns
def test_published_notebook_example(workdir: Path, bindir: Path) -> None:
    """jupyter is a stand-in that serves HTTP on the port it is told; the example's
    promise is that it is reachable from this machine at 127.0.0.1:8888."""
    (bindir / "jupyter").write_text(f'#!/bin/sh\ncd /tmp && echo notebook > index.html && '
                                    f'exec {sys.executable} -m http.server 8888 --bind 0.0.0.0\n')
    (bindir / "jupyter").chmod(0o755)
    env = rbox_env({"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"})
    proc = subprocess.Popen(["bash", "-c", f"exec {PUBLISHED}"], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        body = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and b"notebook" not in body:
            try:
                with socket.create_connection(("127.0.0.1", 8888), timeout=2) as s:
                    s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                    body = b"".join(iter(lambda: s.recv(4096), b""))
            except OSError:
                time.sleep(0.1)
        assert b"notebook" in body, proc.stderr.read() if proc.poll() is not None else "no answer"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
