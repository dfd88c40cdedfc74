"""Class 2 of issue #10: the caller's descriptors reach neither the command nor a helper,
except those passed on purpose with --pass-fd; a closed 0, 1 or 2 does not break rbox.

Each attack has a positive control: the same probe, run with the same descriptors but
without rbox, finds and uses them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.integration.helpers import RBOX, rbox_env, run_rbox
from tests.security.probes import PROBE, facts

pytestmark = pytest.mark.needs_userns



def probe(*args: str) -> list[str]:
    return [sys.executable, PROBE, *args]


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=rbox_env(env), capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, **kw)


def test_the_command_sees_only_0_1_2_of_1000_inherited_descriptors(tmp_path) -> None:
    marker = tmp_path / "marker"
    marker.touch()
    r = run(probe("with-fds", "1000", str(marker), "--", *RBOX, "run", "--net=none", *["--", *probe("fds")]),
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert facts(r.stdout)["fds"] == ["0 1 2"]


def test_control_without_rbox_the_1000_descriptors_are_there(tmp_path) -> None:
    marker = tmp_path / "marker"
    marker.touch()
    r = run(probe("with-fds", "1000", str(marker), "--", *probe("fds")), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(facts(r.stdout)["fds"][0].split()) >= 1003


@pytest.fixture
def home_dir():
    """A directory in the home: read-only in the sandbox, writable on the host."""
    path = Path(tempfile.mkdtemp(prefix=".rbox-security-", dir=os.path.expanduser("~")))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_directory_descriptor_of_a_read_only_path_is_not_a_way_out(tmp_path, home_dir) -> None:
    r = run(probe("with-dirfd", str(home_dir), "--", *RBOX, "run", "--net=none", "--",
                  *probe("write-through", "planted")), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert facts(r.stdout)["written_through"] == ["none"]
    assert not (home_dir / "planted").exists()


def test_control_an_inherited_directory_descriptor_writes_where_it_points(tmp_path, home_dir) -> None:
    r = run(probe("with-dirfd", str(home_dir), "--", *probe("write-through", "planted")), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert facts(r.stdout)["written_through"] != ["none"]
    assert (home_dir / "planted").exists()


def test_pass_fd_passes_a_pipe_at_its_own_number(tmp_path) -> None:
    read_end, write_end = os.pipe()
    try:
        r = run([*RBOX, "run", "--net=none", "--pass-fd", str(write_end), "--",
                 *probe("fds", "--", "fd-write", str(write_end), "through the pipe")],
                cwd=tmp_path, pass_fds=(write_end,))
        assert r.returncode == 0, r.stderr
        assert facts(r.stdout)["fds"] == [f"0 1 2 {write_end}"]
        os.close(write_end)
        write_end = -1
        assert os.read(read_end, 100) == b"through the pipe"
        # EOF: nothing is left holding the write end (no helper, no PID 1).
        assert os.read(read_end, 100) == b""
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


@pytest.mark.parametrize(("value", "message"), [
    ("2", "--pass-fd 2: 0, 1 and 2 are always passed"),
    ("987", "--pass-fd 987: file descriptor 987 is not open"),
    ("x", "invalid value `x` for `--pass-fd`: not a number"),
])
def test_pass_fd_refuses_what_cannot_be_passed(value: str, message: str) -> None:
    r = run_rbox("run", "--net=none", "--pass-fd", value, "--", "true")
    assert r.returncode == 125
    lines = r.stderr.splitlines()
    assert lines[0] == f"rbox: error: {message}" and lines[1].startswith("hint: ")


SPY = """#!/bin/sh
# Records the descriptors this helper was started with, then becomes the real one.
ls -l /proc/$$/fd/ > "$SPY_LOG/$(basename "$0").$$" 2>&1
exec {real} "$@"
"""


def _spies(tmp_path: Path) -> tuple[Path, Path]:
    bindir, logs = tmp_path / "spy-bin", tmp_path / "spy-logs"
    bindir.mkdir()
    logs.mkdir()
    for tool in ("slirp4netns", "newuidmap", "newgidmap"):
        real = shutil.which(tool)
        if real:
            (bindir / tool).write_text(SPY.format(real=real))
            (bindir / tool).chmod(0o755)
    return bindir, logs


@pytest.mark.needs_slirp4netns
def test_helpers_get_none_of_the_callers_descriptors(tmp_path) -> None:
    bindir, logs = _spies(tmp_path)
    marker = tmp_path / "caller-marker"
    marker.touch()
    read_end, write_end = os.pipe()
    pipe = f"pipe:[{os.fstat(write_end).st_ino}]"
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "SPY_LOG": str(logs)}
    try:
        # 50 descriptors of a marker file, plus a pipe passed on purpose with --pass-fd:
        # a helper gets neither.
        r = run(probe("with-fds", "50", str(marker), "--", *RBOX, "run", "--pass-fd", str(write_end), "--",
                      "true"), cwd=tmp_path, env=env, pass_fds=(write_end,))
        assert r.returncode == 0, r.stderr
    finally:
        os.close(read_end)
        os.close(write_end)
    records = {p.name: p.read_text() for p in logs.iterdir()}
    # The slirp4netns --help probe and the real one ran as spies (newuidmap and
    # newgidmap too, with subordinate ids).
    assert len([name for name in records if name.startswith("slirp4netns.")]) == 2, records
    for name, text in records.items():
        assert "caller-marker" not in text, (name, text)
        assert pipe not in text, (name, text)


@pytest.mark.needs_slirp4netns
def test_control_the_spy_sees_descriptors_it_inherits(tmp_path) -> None:
    bindir, logs = _spies(tmp_path)
    marker = tmp_path / "caller-marker"
    marker.touch()
    r = run(probe("with-fds", "3", str(marker), "--", str(bindir / "slirp4netns"), "--help"), cwd=tmp_path,
            env={"SPY_LOG": str(logs)})
    assert r.returncode == 0, r.stderr
    (record,) = logs.iterdir()
    assert record.read_text().count("caller-marker") == 3


@pytest.mark.needs_slirp4netns
@pytest.mark.parametrize("closed", ["0", "0 1 2"])
def test_rbox_works_with_standard_descriptors_closed(tmp_path, closed: str) -> None:
    # The default network: slirp4netns' --help probe is what a closed stdin used to break.
    redirect = " ".join(f"{fd}>&-" for fd in closed.split())
    script = f'exec "$@" {redirect}'
    record = "import os; open('std.txt', 'w').write(' '.join(os.readlink(f'/proc/self/fd/{n}') for n in range(3)))"
    argv = ["sh", "-c", script, "sh", *RBOX, "run", "--", sys.executable, "-c", record]
    r = subprocess.run(argv, cwd=tmp_path, env=rbox_env(None), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    # The command got /dev/null where rbox's own descriptor was closed.
    std = (tmp_path / "std.txt").read_text().split()
    for fd in closed.split():
        assert std[int(fd)] == "/dev/null", std


def test_before_close_range_every_descriptor_is_marked_one_by_one(tmp_path) -> None:
    # Linux < 5.11 has no close_range: fds.seal falls back to /proc/self/fd.
    code = ("import errno, os\n"
            "from rootless import fds, syscalls\n"
            "def missing(first, last): raise OSError(errno.ENOSYS, 'no close_range')\n"
            "syscalls.close_range_cloexec = missing\n"
            "r, w = os.pipe(); os.set_inheritable(r, True); os.set_inheritable(w, True)\n"
            "fds.seal([w])\n"
            "print(os.get_inheritable(r), os.get_inheritable(w), os.get_inheritable(2))\n")
    r = run([sys.executable, "-c", code], cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "False False True\n"), r.stderr
