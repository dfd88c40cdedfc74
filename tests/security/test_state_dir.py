"""Issue #10, class 6: runtime state in shared directories.

rbox used to put a helper's directory straight into /tmp as `rbox-PID-RANDOM` and, at
the next start, empty every such name whose pid was gone, following symlinks: another
local user could plant `/tmp/rbox-PID-x -> /home/you/important` and rbox emptied it.
Now state lives only in a directory of rbox's own (state.py), checked before use, and
is swept with directory descriptors and locks.

The attacks use a second real local user (RBOX_TEST_OTHER_USER, default rboxother,
acted as through `sudo -n -u`). The positive control is the bait itself: a stale sandbox
directory that the sweep removes when it is in rbox's own directory, and leaves alone
when it is only reachable through another user's plant.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from rootless import state
from rootless.errors import HostSetupError
from tests.conftest import other_user
from tests.integration.helpers import live_processes, run_rbox, start_rbox, wait_until

BASE = f"/tmp/rbox-{os.getuid()}"
NO_XDG = {"XDG_RUNTIME_DIR": ""}     # the state directory is then BASE
BAIT = "4242-0badf00d"               # looks like a killed sandbox's directory


def as_other(*cmd: str) -> None:
    subprocess.run(["sudo", "-n", "-u", other_user(), *cmd], check=True, capture_output=True, timeout=30,
                   stdin=subprocess.DEVNULL)


@pytest.fixture
def no_base():
    """BASE absent before the test and afterwards, whoever made it."""
    def clear() -> None:
        try:
            st = os.lstat(BASE)
        except FileNotFoundError:
            return
        if st.st_uid == os.getuid():
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(BASE)
            else:
                os.unlink(BASE)
        else:
            as_other("rm", "-rf", BASE)

    clear()
    yield
    clear()


def make_bait(where: Path) -> Path:
    """A directory shaped like a killed sandbox's state: no lock held on it."""
    bait = where / BAIT
    bait.mkdir()
    (bait / "lock").write_text("")
    (bait / "ready").write_text("")
    return bait


@pytest.mark.needs_userns
def test_positive_control_the_sweep_empties_stale_state_in_its_own_directory(no_base) -> None:
    os.mkdir(BASE, 0o700)
    make_bait(Path(BASE))
    r = run_rbox("run", "--net=none", "--", "true", env=NO_XDG)
    assert r.returncode == 0, r.stderr
    assert os.listdir(BASE) == []


@pytest.mark.needs_userns
@pytest.mark.needs_pasta
@pytest.mark.needs_two_users
@pytest.mark.parametrize("net", ["pasta", "none"])
def test_a_planted_symlink_is_refused_and_its_target_untouched(tmp_path, no_base, net: str) -> None:
    target = tmp_path / "important"
    target.mkdir()
    (target / "keep").write_text("mine")
    make_bait(target)                # what a sweep through the link would remove
    as_other("ln", "-s", str(target), BASE)
    r = run_rbox("run", f"--net={net}", "--", "true", env=NO_XDG)
    if net == "pasta":               # needs state: refused, with who and what to do
        assert r.returncode == 125
        assert r.stderr.startswith(f"rbox: error: `{BASE}` is a symbolic link of {other_user()} (uid ")
        assert "not rbox's own state directory" in r.stderr
        assert r.stderr.splitlines()[1].startswith("hint: ask its owner or an administrator to remove")
    else:                            # needs none: the plant is ignored
        assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(target)) == [BAIT, "keep"]
    assert sorted(os.listdir(target / BAIT)) == ["lock", "ready"]
    assert (target / "keep").read_text() == "mine"


@pytest.mark.needs_userns
@pytest.mark.needs_pasta
@pytest.mark.needs_two_users
def test_a_planted_directory_is_refused_and_left_alone(no_base) -> None:
    as_other("mkdir", "-m", "0777", BASE)
    as_other("touch", f"{BASE}/{BAIT}")      # removable by us: the directory is 0777
    r = run_rbox("run", "--net=pasta", "--", "true", env=NO_XDG)
    assert r.returncode == 125
    assert r.stderr.startswith(f"rbox: error: `{BASE}` is a directory of {other_user()} (uid ")
    assert os.listdir(BASE) == [BAIT]
    r = run_rbox("run", "--net=none", "--", "true", env=NO_XDG)
    assert r.returncode == 0, r.stderr
    assert os.listdir(BASE) == [BAIT]


@pytest.mark.needs_userns
@pytest.mark.needs_pasta
@pytest.mark.needs_two_users
def test_the_old_names_in_tmp_are_not_touched(tmp_path, no_base) -> None:
    """The original attack: a link named like a dead rbox's directory of the old scheme."""
    target = tmp_path / "important"
    target.mkdir()
    (target / "keep").write_text("mine")
    planted = "/tmp/rbox-99999999-x"        # above any pid_max: its "owner" is always dead
    as_other("ln", "-sfn", str(target), planted)
    try:
        r = run_rbox("run", "--net=pasta", "--", "true", env=NO_XDG)
        assert r.returncode == 0, r.stderr
    finally:
        as_other("rm", "-f", planted)
    assert os.listdir(target) == ["keep"]


@pytest.mark.needs_userns
@pytest.mark.needs_pasta
def test_state_left_by_kill_9_during_pasta_setup_is_gone_after_the_next_start(tmp_path) -> None:
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    base = runtime / "rbox"
    stale_seen = 0
    deadline = time.monotonic() + 60
    for i in range(30):
        proc = start_rbox("run", "--net=pasta", "--", "true", env=env)
        if i % 2 == 0:
            # Right when this sandbox's own directory exists: pasta is being set up.
            mine = f"{proc.pid}-"
            wait_until(lambda: base.is_dir() and any(n.startswith(mine) for n in os.listdir(base)),  # noqa: B023
                       timeout=5, interval=0.001)
        else:
            time.sleep(random.uniform(0, 0.15))
        proc.kill()
        proc.communicate(timeout=30)
        if base.is_dir() and os.listdir(base):
            stale_seen += 1
        assert time.monotonic() < deadline, "30 starts of pasta took more than a minute"
    assert stale_seen > 0        # the kills did land during setup: the check below is not vacuous
    r = run_rbox("run", "--net=none", "--", "true", env=env)
    assert r.returncode == 0, r.stderr
    assert os.listdir(base) == []
    assert wait_until(lambda: not [c for c in live_processes().values() if "pasta" in c], timeout=10)


# state.py itself, on real directories of the test user's own.

@pytest.fixture
def xdg(tmp_path):
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    return {"XDG_RUNTIME_DIR": str(runtime)}


def test_a_locked_sandbox_directory_survives_a_sweep_and_is_swept_once_unlocked(xdg) -> None:
    mine = state.create(xdg)
    assert Path(mine.path).parent == Path(xdg["XDG_RUNTIME_DIR"], "rbox")
    assert stat.S_IMODE(os.stat(Path(mine.path).parent).st_mode) == 0o700
    state.sweep(xdg)
    assert os.path.isdir(mine.path)       # a running sandbox's: its lock is held
    os.close(mine.lock_fd)                # as a kill -9 would
    mine.lock_fd = os.open("/dev/null", os.O_RDONLY)
    state.sweep(xdg)
    assert not os.path.exists(mine.path)
    mine.remove()                         # harmless after the sweep


def test_remove_takes_the_directory_and_its_contents(xdg) -> None:
    mine = state.create(xdg)
    os.mkfifo("ready", dir_fd=mine.fd)
    mine.remove()
    mine.remove()
    assert os.listdir(Path(mine.path).parent) == []


def test_the_sweep_removes_links_as_links(xdg, tmp_path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep").write_text("mine")
    base = Path(xdg["XDG_RUNTIME_DIR"], "rbox")
    state.create(xdg).remove()
    (base / "1-aa").symlink_to(target)                    # a link in place of a directory
    bait = make_bait(base)
    (bait / "sub").symlink_to(target)                     # a link inside a stale directory
    (base / "2-bb").mkdir()                               # killed between mkdir and its lock
    state.sweep(xdg)
    assert os.listdir(base) == []
    assert os.listdir(target) == ["keep"]


def test_a_sweep_creates_nothing(xdg) -> None:
    state.sweep(xdg)
    assert os.listdir(xdg["XDG_RUNTIME_DIR"]) == []


def test_a_state_directory_of_the_wrong_mode_is_refused(xdg) -> None:
    base = Path(xdg["XDG_RUNTIME_DIR"], "rbox")
    base.mkdir(mode=0o755)
    os.chmod(base, 0o755)
    with pytest.raises(HostSetupError) as info:
        state.create(xdg)
    assert info.value.message == f"rbox's state directory `{base}` has mode 0755, not 0700"
    assert info.value.hint == f"`chmod 0700 {base}`, or remove it (rbox creates it again)"
    make_bait(base)
    state.sweep(xdg)                                      # not rbox's own: left alone
    assert os.listdir(base) == [BAIT]


def test_a_link_of_ones_own_is_refused_too(xdg, tmp_path) -> None:
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    base = Path(xdg["XDG_RUNTIME_DIR"], "rbox")
    base.symlink_to(real)
    with pytest.raises(HostSetupError, match="is a symbolic link, not rbox's own state directory"):
        state.create(xdg)
    assert os.listdir(real) == []


def test_xdg_runtime_dir_is_used_only_when_it_is_a_real_directory_of_ones_own(tmp_path) -> None:
    fallback = f"/tmp/rbox-{os.getuid()}"
    assert state.base_path({}) == fallback
    assert state.base_path({"XDG_RUNTIME_DIR": ""}) == fallback
    assert state.base_path({"XDG_RUNTIME_DIR": "relative"}) == fallback
    assert state.base_path({"XDG_RUNTIME_DIR": str(tmp_path / "missing")}) == fallback
    (tmp_path / "link").symlink_to(tmp_path)
    assert state.base_path({"XDG_RUNTIME_DIR": str(tmp_path / "link")}) == fallback
    assert state.base_path({"XDG_RUNTIME_DIR": "/"}) == fallback          # root's
    assert state.base_path({"XDG_RUNTIME_DIR": str(tmp_path)}) == f"{tmp_path}/rbox"


def test_in_a_user_namespace_the_name_carries_the_outer_uid() -> None:
    """uid 0 of `unshare -r` is a different user for each caller: /tmp/rbox-0 would make
    one user's runs refuse another's directory (found on a shared CI machine)."""
    import subprocess
    import sys

    code = "from rootless import state; print(state.base_path({}))"
    r = subprocess.run(["unshare", "-Ur", sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"/tmp/rbox-0-{os.getuid()}"
    # Control: in the host's user namespace, the plain uid.
    assert state.base_path({}) == f"/tmp/rbox-{os.getuid()}"
