"""The FUSE daemons (fuse-overlayfs, squashfuse) live as long as the sandbox and die with
it: `kill -9` of rbox, of stage-1, of the FUSE keeper or of a daemon ends everything,
and nothing is left: no process, no mount, no user namespace (fusekeeper.py). A normal
end leaves nothing either, not even for a moment: rbox returns after its daemons are
gone. The old-kernel tier runs this file too.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.integration.helpers import RBOX, children, descendants, kill_all, live_processes, rbox_env, run_rbox
from tests.integration.test_overlay import busybox_tree
from tests.robustness.leftovers import Snapshot, wait_clean

pytestmark = [pytest.mark.needs_userns, pytest.mark.needs_fuse_overlayfs, pytest.mark.needs_squashfuse]
DAEMONS = ("fuse-overlayfs", "squashfuse")


@pytest.fixture(scope="module")
def sqfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    top = tmp_path_factory.mktemp("fuse-death")
    path = top / "image.sqfs"
    subprocess.run(["mksquashfs", str(busybox_tree(top / "rootfs")), str(path), "-quiet", "-noappend", "-no-progress",
                    "-all-root"], check=True, capture_output=True, timeout=60)
    return path


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_a_normal_end_leaves_nothing_behind(sqfs: Path, tmp_path: Path) -> None:
    before = Snapshot([])
    r = run_rbox("run", "--net=none", "--root", "--image", str(sqfs), "--", "/bin/sh", "-c",
                 "echo data > /written; cat /written", cwd=tmp_path, env={"RBOX_OVERLAY": "fuse"})
    assert (r.returncode, r.stdout) == (0, "data\n"), r.stderr
    # At once: rbox waited for its daemons (a zombie reaped late by the host's PID 1 aside).
    assert not [cmd for cmd in live_processes().values() if os.path.basename(cmd.split(" ")[0]) in DAEMONS]
    assert not wait_clean(before)


@pytest.mark.parametrize("victim", ["rbox", "stage-1", "keeper", "fuse-overlayfs", "squashfuse"])
def test_kill_9_of_any_of_its_processes_leaves_nothing(victim: str, sqfs: Path, tmp_path: Path) -> None:
    before = Snapshot([])
    daemons: dict[str, int] = {}
    proc = subprocess.Popen([*RBOX, "run", "--net=none", "--image", str(sqfs), "--", "/bin/sh", "-c",
                             "echo up; exec sleep 60"], cwd=tmp_path, env=rbox_env({"RBOX_OVERLAY": "fuse"}),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == b"up\n", proc.stderr.read1(65536)
        stage1 = next(iter(children(proc.pid)))
        daemons = {comm(pid): pid for pid in descendants(proc.pid) if comm(pid) in DAEMONS}
        assert sorted(daemons) == sorted(DAEMONS), daemons
        keeper = next(pid for pid in children(stage1) if daemons["squashfuse"] in children(pid))
        target = {"rbox": proc.pid, "stage-1": stage1, "keeper": keeper}.get(victim) or daemons[victim]
        os.kill(target, signal.SIGKILL)
        proc.wait(timeout=10)          # the command sleeps 60 s: only the sandbox's end stops it
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = wait_clean(before)
        kill_all(set(daemons.values()))       # a failing check must not leave them to the next test
    if victim in DAEMONS:
        # The sandbox ends, and says why.
        assert proc.returncode == 128 + signal.SIGKILL
        assert f"rbox: warning: {victim} for the image ended (killed by signal 9); the sandbox ends" in err, err
    elif victim == "keeper":
        assert proc.returncode == 128 + signal.SIGKILL
        assert f"rbox: warning: rbox's FUSE keeper (pid {keeper}) was killed by signal 9" in err, err
    assert not left
