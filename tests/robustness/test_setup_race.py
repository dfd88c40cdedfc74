"""When PID 1 fails during set-up, its ERROR is what rbox reports, whatever its death
made fail in the parent meanwhile: a helper that finds PID 1's namespaces gone
("/proc/N/ns/net: No such file"), a broken pipe to PID 1 (NETWORK_DONE).

The order of those events is a race in a real sandbox (many --tmpfs, a --hide of a
missing path, the default network: about one run in a hundred went wrong). Here it is
made certain: a real child process plays stage-1 and PID 1 over the real protocol,
sends its ERROR and exits; the driver (the one stand-in) fails only after that, or
succeeds so that the parent's next write hits the dead child's pipe.
"""

from __future__ import annotations

import os
import select

import pytest

from rootless import parent, sync, userns
from rootless.errors import MountError, NetworkError, RboxError

PID1_ERROR = MountError("cannot hide `/no/such`: No such file or directory in the sandbox", hint="check the path")


class Driver:
    """Waits until the child is gone, then fails like a helper that lost its namespaces
    (or, with fail=False, reports success)."""

    def __init__(self, child: int, fail: bool):
        self.child, self.fail = child, fail
        self.watch_fd = None

    def start(self, init_pid: int, abort_fd: int | None = None) -> None:
        pidfd = os.pidfd_open(self.child)
        select.select([pidfd], [], [], 10)
        os.close(pidfd)
        if self.fail:
            raise NetworkError(f"slirp4netns exited with status 1 before becoming ready: "
                               f"open /proc/{init_pid}/ns/net: No such file or directory", hint="a helper's hint")


def play_pid1(chan: sync.Channel) -> None:
    """The child: stage-1's and PID 1's part of the protocol, up to PID 1's failure."""
    chan.send(sync.USERNS_READY)
    chan.expect(sync.IDMAP_DONE)
    chan.send(sync.INIT_STARTED, pid=os.getpid())
    chan.send_error(PID1_ERROR)


@pytest.mark.parametrize("helper", ["fails after PID 1 died", "succeeds after PID 1 died"])
def test_pid1_s_error_wins_over_what_its_death_made_fail(monkeypatch, helper: str) -> None:
    parent_end, child_end = sync.channel_pair()
    child = os.fork()
    if child == 0:
        code = 125
        try:
            parent_end.close()
            play_pid1(child_end)
        except BaseException:  # noqa: BLE001 - a forked child must never return into pytest
            code = 1
        finally:
            os._exit(code)
    child_end.close()
    quiet_r, quiet_w = os.pipe()          # stands for the signalfd: no signal comes
    monkeypatch.setattr(userns, "apply_idmap", lambda plan, pid: None)
    driver = Driver(child, fail=helper.startswith("fails"))
    sandbox = parent.Sandbox(None, child, parent_end, quiet_r, driver=driver)  # type: ignore[arg-type]
    try:
        with pytest.raises(RboxError) as info:
            sandbox.setup(userns.IdMapPlan("single", [], []))
        assert (info.value.message, info.value.hint) == (PID1_ERROR.message, PID1_ERROR.hint)
    finally:
        os.waitpid(child, 0)
        parent_end.close()
        os.close(quiet_r)
        os.close(quiet_w)


def test_pending_error_finds_an_error_already_sent_and_does_not_wait() -> None:
    parent_end, child_end = sync.channel_pair()
    try:
        assert parent_end.pending_error() is None
        child_end.send(sync.RUNNING)
        child_end.send_error(RboxError("boom", hint="do this"))
        err = parent_end.pending_error()
        assert err is not None and (err.message, err.hint) == ("boom", "do this")
    finally:
        parent_end.close()
        child_end.close()
