"""The parent: plan, fork stage-1, map its user namespace, supervise, clean up.

Runs in: parent (the host's namespaces; it never enters the sandbox).

The sequence and its messages are in sync.py's table and docs/internals.md. The parent
blocks the forwarded signals before forking and reads them from a signalfd, so that a
signal during setup aborts cleanly (stage-1 gets SIGKILL, which takes init with it) and
one during the run is forwarded to PID 1, which forwards it to the command.
"""

from __future__ import annotations

import os
import select
import signal

from rootless import log, mounts, stage1, sync, userns
from rootless.errors import ProtocolError, waitstatus_to_code
from rootless.guard import run_child
from rootless.signals import FORWARDED, SI_KERNEL, TERMINATING, block, read_signalfd, signalfd
from rootless.spec import Spec

SETUP_TIMEOUT = 30.0


class Interrupted(Exception):
    def __init__(self, signo: int):
        super().__init__(signo)
        self.signo = signo


def run(spec: Spec) -> int:
    idmap = plan_idmap(spec)
    ops = mounts.optimize(mounts.plan(spec))
    if spec.dry_run:
        log.out("".join(line + "\n" for line in idmap.describe() + [op.describe() for op in ops]))
        return 0
    for line in idmap.describe() if log.debugging() else ():
        log.step(line)
    block(FORWARDED)
    sigfd = signalfd(FORWARDED)
    parent_end, child_end = sync.channel_pair()
    me = os.getpid()
    pid = os.fork()
    if pid == 0:
        parent_end.close()
        os.close(sigfd)
        run_child(child_end, "stage-1", lambda: stage1.run(spec, child_end, me))
    child_end.close()
    sandbox = Sandbox(spec, pid, parent_end, sigfd)
    try:
        sandbox.setup(idmap)
        return sandbox.wait()
    except Interrupted as e:
        return 128 + e.signo
    finally:
        sandbox.cleanup()


def plan_idmap(spec: Spec) -> userns.IdMapPlan:
    plan = userns.plan_idmap(spec.root, spec.uid, spec.gid, spec.user, os.environ.get("PATH"),
                             userns.no_new_privs_set())
    if plan.mode == "single":
        log.warn(f"mapping only your own uid and gid ({plan.reason}); see rbox(1), HOST SETUP")
    return plan


class Sandbox:
    """The parent's view of one running sandbox."""

    def __init__(self, spec: Spec, stage1_pid: int, chan: sync.Channel, sigfd: int):
        self.spec, self.stage1, self.chan, self.sigfd = spec, stage1_pid, chan, sigfd
        self.init_pid = 0
        self.status: int | None = None

    def setup(self, idmap: userns.IdMapPlan) -> None:
        """Steps 1-5 of the protocol: on return the command is running."""
        self.expect(sync.USERNS_READY)
        userns.apply_idmap(idmap, self.stage1)
        self.chan.send(sync.IDMAP_DONE)
        self.init_pid = int(self.expect(sync.INIT_STARTED)["pid"])
        log.step(f"PID 1 is host pid {self.init_pid}")
        self.chan.send(sync.NETWORK_DONE)
        self.expect(sync.RUNNING)

    def expect(self, kind: str) -> dict[str, str]:
        """chan.expect, aborting on a terminating signal (SIGINT, SIGTERM, ...)."""
        while not self._poll(SETUP_TIMEOUT):
            pass
        return self.chan.expect(kind, timeout=SETUP_TIMEOUT)

    def wait(self) -> int:
        """Forward signals until PID 1 is gone; the command's exit code."""
        while True:
            if self._poll(None):
                msg = self.chan.receive(timeout=SETUP_TIMEOUT)
                if msg is None:
                    break
                if msg[0] == sync.ERROR:
                    raise sync.error_from_fields(msg[1])
        log.step("PID 1 is gone")
        _, status = os.waitpid(self.stage1, 0)
        self.status = status
        log.step(f"stage-1 exited: {waitstatus_to_code(status)}")
        return waitstatus_to_code(status)

    def _poll(self, timeout: float | None) -> bool:
        """True when the channel is readable; handles any pending signals first."""
        poller = select.poll()
        poller.register(self.chan.rfd, select.POLLIN | select.POLLHUP)
        poller.register(self.sigfd, select.POLLIN)
        ready = dict(poller.poll(None if timeout is None else timeout * 1000))
        if not ready:
            raise ProtocolError(f"the sandbox did not finish setting up within {timeout:g} s")
        if self.sigfd in ready:
            self._on_signal(*read_signalfd(self.sigfd))
        return self.chan.rfd in ready

    def _on_signal(self, signo: int, code: int) -> None:
        log.step(f"got signal {signal.Signals(signo).name}")
        if not self.init_pid:
            if signo in TERMINATING:
                raise Interrupted(signo)
            return
        if code == SI_KERNEL and self._command_shares_terminal():
            return  # the terminal sent it to the whole foreground group, the command included
        try:
            os.kill(self.init_pid, signo)
        except ProcessLookupError:
            pass

    def _command_shares_terminal(self) -> bool:
        if not self.spec.tty:
            return False
        try:
            return os.tcgetpgrp(0) == os.getpgrp()
        except OSError:
            return False

    def cleanup(self) -> None:
        """Nothing outlives rbox: SIGKILL stage-1 (PID 1 follows by its death signal)."""
        if self.status is None:
            try:
                os.kill(self.stage1, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.stage1, 0)
        self.chan.close()
        os.close(self.sigfd)
