"""Fixtures of the Slurm tests.

Runs in: the test runner."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import probe
from tests.slurm.jobs import shim_dir, slurm_env, wait_for_jobs_to_leave

SOURCE = Path(__file__).with_name("mpi_hello.c")


@pytest.fixture(scope="session")
def bindir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`rbox` for the tasks' PATH (this checkout)."""
    return shim_dir(tmp_path_factory.mktemp("slurm-bin"))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A project directory: the job's working directory, bound read-write in the sandbox."""
    d = tmp_path / "project"
    d.mkdir()
    return d


@pytest.fixture(autouse=True)
def no_job_left(bindir: Path):
    """Each test starts on a free node: jobs of an earlier test that are still completing
    (a cancelled job takes seconds) have left; and a test that failed half-way may leave
    a job running, which is cancelled after it (each test asserts its own leftovers)."""
    # Only where a cluster answers (the `slurm` capability): with none, squeue waits its
    # own timeout, and the MPI tests that run without Slurm would fail at setup.
    cluster = shutil.which("squeue") is not None and probe("slurm") is None
    if cluster:
        wait_for_jobs_to_leave(bindir)
    yield
    if cluster:
        subprocess.run(["scancel", "--me", "--quiet"], env=slurm_env(bindir), capture_output=True, timeout=30)


@pytest.fixture(scope="session")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mpi_hello, built in a project directory of its own (the ranks' working directory)."""
    d = tmp_path_factory.mktemp("mpi") / "project"
    d.mkdir()
    shutil.copy(SOURCE, d / "mpi_hello.c")
    r = subprocess.run(["mpicc", "-O2", "-o", "mpi_hello", "mpi_hello.c"], cwd=d, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return d
