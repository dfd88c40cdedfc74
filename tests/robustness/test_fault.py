"""The fault suite: `kill -9` of rbox at random moments of its first 150 ms, in every
network mode and with a pseudo-terminal, and after each round a check that nothing of
the user's is left (leftovers.py: processes of every uid of the user's, helpers, user
namespaces, mounts, runtime directories).

A SIGKILL gives rbox no chance to clean up: what must end everything is the kernel
(PR_SET_PDEATHSIG down the chain, slirp4netns's --exit-fd, pasta's lifeline pipe; see
docs/internals.md). Kills run a few at a time to keep the suite within its time budget;
the moments are random on every run and printed when a round fails.
"""

from __future__ import annotations

import os
import random
import subprocess
import time

import pytest

from tests.integration.helpers import RBOX, rbox_env, run_rbox
from tests.robustness.leftovers import Snapshot, wait_clean

pytestmark = pytest.mark.needs_userns
MODES = [pytest.param("none"), pytest.param("slirp4netns", marks=pytest.mark.needs_slirp4netns),
         pytest.param("pasta", marks=pytest.mark.needs_pasta)]
KILLS = 30          # per network mode
AT_ONCE = 5
WINDOW = 0.150      # seconds after the start


def kill_at(moments: list[float], argv: list[str], env: dict[str, str], **popen: object) -> None:
    """Start one rbox per moment, SIGKILL each that many seconds after its own start."""
    started = []
    for moment in moments:
        proc = subprocess.Popen(argv, env=env, **popen)  # type: ignore[call-overload]
        started.append((time.monotonic() + moment, proc))
    for deadline, proc in sorted(started, key=lambda item: item[0]):
        time.sleep(max(0.0, deadline - time.monotonic()))
        proc.kill()
    for _, proc in started:
        proc.wait(timeout=30)


@pytest.mark.parametrize("mode", MODES)
def test_kill_9_at_random_moments_leaves_nothing(tmp_path, mode: str) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = rbox_env({"XDG_RUNTIME_DIR": str(runtime)})
    before = Snapshot([str(runtime)])
    moments = [random.uniform(0, WINDOW) for _ in range(KILLS)]
    argv = [*RBOX, "run", f"--net={mode}", "--", "sleep", "30"]
    quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    for first in range(0, KILLS, AT_ONCE):
        batch = moments[first:first + AT_ONCE]
        kill_at(batch, argv, env, **quiet)
        left = wait_clean(before, runtime=False)
        assert not left, f"left after kill -9 at {[round(m * 1000) for m in batch]} ms: {left}"
    # A directory a killed rbox had made for its helper is removed by the next rbox.
    r = run_rbox("run", f"--net={mode}", "--", "true", env={"XDG_RUNTIME_DIR": str(runtime)})
    assert r.returncode == 0, r.stderr
    assert not wait_clean(before), f"left after kill -9 at {[round(m * 1000) for m in moments]} ms"


def test_kill_9_with_a_pseudo_terminal_leaves_nothing(tmp_path) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = rbox_env({"XDG_RUNTIME_DIR": str(runtime)})
    before = Snapshot([str(runtime)])
    master, slave = os.openpty()
    try:
        # rbox's stdin is a terminal: the command gets a pty of its own (console.py).
        moments = [random.uniform(0, WINDOW) for _ in range(3)] + [0.5]
        kill_at(moments, [*RBOX, "run", "--net=none", "--", "sleep", "30"], env, stdin=slave, stdout=slave,
                stderr=slave, start_new_session=True)
        left = wait_clean(before)
        assert not left, f"left after kill -9 at {[round(m * 1000) for m in moments]} ms: {left}"
    finally:
        os.close(master)
        os.close(slave)
