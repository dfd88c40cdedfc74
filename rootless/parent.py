"""The parent: plan, fork stage-1, map its user namespace, supervise, clean up.

Runs in: parent (the host's namespaces; it never enters the sandbox).

The sequence and its messages are in sync.py's table and docs/internals.md. The parent
blocks the forwarded signals before forking and reads them from a signalfd, so that a
signal during setup aborts cleanly (stage-1 gets SIGKILL, which takes init with it) and
one during the run is forwarded to PID 1, which forwards it to the command.
"""

from __future__ import annotations

import _signal as signal  # not `signal`: it imports enum (3 ms at start-up); signals.py says more
import os
import select
import time

from rootless import log, mounts, stage1, state, sync, userns
from rootless.console import Console
from rootless.errors import BUG_HINT, SLOW_HINT, ProtocolError, RboxError, waitstatus_to_code
from rootless.guard import run_child
from rootless.signals import FORWARDED, TERMINATING, block, read_signalfd, signalfd
from rootless.signals import name as signal_name
from rootless.spawn import Aborted, readable
from rootless.spec import Spec

SETUP_TIMEOUT = 30.0
HANGUP_GRACE = 0.5       # after SIGHUP to the command's session: then the pty is hung up for real
DRAIN_TIMEOUT = 5.0      # after PID 1 is gone: how long the pty may take to report EIO

TYPE_CHECKING = False  # not `from typing import ...`: typing costs 9 ms at start-up
if TYPE_CHECKING:
    import socket

    from rootless import slurm
    from rootless.cgroups import Subtree
    from rootless.instance.supervisor import Instance
    from rootless.net.pasta import PastaDriver
    from rootless.net.slirp import SlirpDriver

    Driver = SlirpDriver | PastaDriver


class Interrupted(Exception):
    def __init__(self, signo: int):
        super().__init__(signo)
        self.signo = signo


def run(spec: Spec, instance: Instance | None = None) -> int:
    """`instance`: a named sandbox's supervisor hooks (rootless/instance/supervisor.py)."""
    if spec.cwd_warning and os.environ.get("RBOX_IN_SCOPE") != "1":   # once, not again in a scope
        warn_once_per_launch(spec.cwd_warning)
    idmap = plan_idmap(spec)
    ops = mounts.optimize(mounts.plan(spec))
    if spec.dry_run:
        # Every check the real run makes before its first side effect, and no side
        # effect: no systemd scope, no cgroup, no helper, not even its --help probe.
        dry_checks(spec)
        log.out("".join(line + "\n" for line in idmap.describe() + [op.describe() for op in ops]))
        return 0
    state.sweep()                     # what sandboxes killed during setup left (state.py)
    subtree = limits_subtree(spec)    # may re-exec rbox in a systemd scope: before any helper starts
    if instance is not None:
        instance.detach()             # -d: only the supervisor returns, and goes on from here
    driver = make_driver(spec)        # host checks for the network helper, before forking
    job_memory = job_memory_watch()   # None outside a Slurm job
    for line in idmap.describe() if log.debugging() else ():
        log.step(line)
    block(FORWARDED)
    sigfd = signalfd(FORWARDED)
    parent_end, child_end = sync.channel_pair()
    parent_sock, child_sock = fd_socket_pair() if spec.pty or spec.name else (None, None)
    me = os.getpid()
    pid = os.fork()
    if pid == 0:
        parent_end.close()
        os.close(sigfd)
        if parent_sock is not None:
            parent_sock.close()
        if instance is not None:
            instance.in_child()
        run_child(child_end, "stage-1", lambda: stage1.run(spec, child_end, me, idmap, child_sock))
    child_end.close()
    if child_sock is not None:
        child_sock.close()
    sandbox = Sandbox(spec, pid, parent_end, sigfd, parent_sock, driver, subtree, instance)
    try:
        sandbox.setup(idmap)
        code = sandbox.wait()
        for line in job_memory.report(code) if job_memory is not None and not sandbox.reported else ():
            log.say(line)
        return code
    except Interrupted as e:
        return 128 + e.signo
    finally:
        sandbox.cleanup()


def warn_once_per_launch(text: str) -> None:
    """A warning every rank of `srun -n 64 rbox ...` (or mpirun) would print alike: the
    first rank prints it (slurm.py)."""
    from rootless import slurm

    if slurm.first_rank():
        log.warn(text)


def job_memory_watch() -> slurm.MemoryWatch | None:
    """Inside a Slurm job: its memory limit and OOM kill count, to explain a kill by it
    (slurm.py). Outside one, one environment lookup and nothing imported."""
    if "SLURMD_NODENAME" not in os.environ:
        return None
    from rootless import slurm

    job = slurm.job_id()
    return slurm.memory_watch(job) if job else None


def dry_checks(spec: Spec) -> None:
    """What --dry-run refuses, as the real run would: limits this host cannot enforce, a
    network helper that is missing or cannot work."""
    if spec.limits is not None:
        from rootless import cgroups

        cgroups.check(spec.limits)
    path = os.environ.get("PATH")
    if spec.net == "slirp4netns":
        from rootless.net import slirp

        slirp.preflight(path)
    elif spec.net == "pasta":
        from rootless.net import pasta

        pasta.preflight(path)


def limits_subtree(spec: Spec) -> Subtree | None:
    """The delegated cgroup subtree for the limits, set up before forking; None (and no
    systemd call at all) when no limit was asked for."""
    if spec.limits is None:
        return None
    from rootless import cgroups

    subtree = cgroups.prepare(spec.limits, spec.argv)
    subtree.setup(spec.limits)
    return subtree


def make_driver(spec: Spec) -> Driver | None:
    """The parent half of the network driver; None for --net=none and --net=host."""
    path = os.environ.get("PATH")
    if spec.net == "slirp4netns":
        from rootless.net import slirp

        return slirp.SlirpDriver(slirp.preflight(path), spec.allow_host_loopback, spec.ports)
    if spec.net == "pasta":
        from rootless.net import pasta

        return pasta.PastaDriver(pasta.preflight(path), spec.allow_host_loopback, spec.ports)
    return None


def fd_socket_pair() -> tuple[socket.socket, socket.socket]:
    """A socketpair for passing the pty master from init (SCM_RIGHTS). `socket` costs
    6 ms to import, so only pty mode (an interactive terminal) loads it."""
    import socket

    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def plan_idmap(spec: Spec) -> userns.IdMapPlan:
    plan = userns.plan_idmap(spec.root, spec.uid, spec.gid, spec.user, os.environ.get("PATH"),
                             userns.no_new_privs_set(), groups=os.getgroups(), image=bool(spec.rootfs))
    if plan.mode == "single":
        log.warn(f"mapping only your own uid and gid ({plan.reason}); see rbox(1), HOST SETUP")
    return plan


class Sandbox:
    """The parent's view of one running sandbox."""

    def __init__(self, spec: Spec, stage1_pid: int, chan: sync.Channel, sigfd: int,
                 fd_sock: socket.socket | None = None, driver: Driver | None = None,
                 subtree: Subtree | None = None, instance: Instance | None = None):
        self.spec, self.stage1, self.chan, self.sigfd = spec, stage1_pid, chan, sigfd
        self.fd_sock, self.driver, self.subtree, self.instance = fd_sock, driver, subtree, instance
        self.console: Console | None = None
        self.init_pid = 0
        self.chan_open = True
        self.status: int | None = None
        self.hangup_at: float | None = None
        self.helper_gone = False
        self.reported = False     # the limits' report said something (then a Slurm job's says nothing)

    def setup(self, idmap: userns.IdMapPlan) -> None:
        """Steps 1-5 of the protocol: on return the command is running.

        A child that fails sends its ERROR before it exits, and its exit can make
        something here fail too (a broken pipe, a helper that finds PID 1's namespaces
        gone): the child's ERROR is the news, whatever failed here after it."""
        try:
            self._setup(idmap)
        except (RboxError, OSError) as e:
            first = self.chan.pending_error()
            if first is None:
                raise
            log.step(f"after the sandbox's own error: {type(e).__name__}: {e}")
            raise first from None

    def _setup(self, idmap: userns.IdMapPlan) -> None:
        self.expect(sync.USERNS_READY)
        if self.subtree is not None:
            # Before stage-1 creates its cgroup namespace: it is rooted at `payload`.
            self.subtree.attach(self.stage1)
        userns.apply_idmap(idmap, self.stage1)
        self.chan.send(sync.IDMAP_DONE)
        self.init_pid = int(self.expect(sync.INIT_STARTED)["pid"])
        log.step(f"PID 1 is host pid {self.init_pid}")
        if self.driver is not None:
            # While init builds the filesystem, the helper attaches to its namespaces.
            # If init fails meanwhile, its ERROR is the news, not the helper's failure.
            try:
                self.driver.start(self.init_pid, abort_fd=self.chan.rfd)
            except Aborted:
                self.expect(sync.RUNNING)   # raises init's ERROR, or says it died
                raise ProtocolError("PID 1 spoke out of turn while the network was set up", hint=BUG_HINT) from None
        self.chan.send(sync.NETWORK_DONE)
        self.expect(sync.RUNNING)
        if self.instance is not None:
            self.instance.running(self)    # first: init sent the namespaces before the pty
        if self.spec.pty:
            self.console = Console(self.receive_master(), on_hangup=self._hang_up)
            self.console.make_raw()

    def receive_master(self) -> int:
        import socket  # already loaded by fd_socket_pair()

        assert self.fd_sock is not None
        if not readable([self.fd_sock.fileno()], SETUP_TIMEOUT):
            raise ProtocolError("init did not pass the pseudo-terminal")
        _, fds, _, _ = socket.recv_fds(self.fd_sock, 16, 1)
        if not fds:
            raise ProtocolError("init did not pass the pseudo-terminal")
        return fds[0]

    def expect(self, kind: str) -> dict[str, str]:
        """chan.expect, aborting on a terminating signal (SIGINT, SIGTERM, ...)."""
        while not self._poll(SETUP_TIMEOUT):
            pass
        return self.chan.expect(kind, timeout=SETUP_TIMEOUT)

    def wait(self) -> int:
        """Relay the pty and forward signals until PID 1 is gone; the command's exit code."""
        deadline = None
        while self.chan_open or (self.console and self.console.master_open):
            if not self.chan_open:
                # PID 1 is gone; the pty reports EIO once the last process holding it is.
                deadline = deadline or time.monotonic() + DRAIN_TIMEOUT
                if time.monotonic() > deadline:
                    break
            timeout = None if self.chan_open else 0.2
            if self.instance is not None:
                timeout = self.instance.tick(timeout)
            if self.hangup_at is not None and self.console is not None:
                if time.monotonic() >= self.hangup_at:
                    self.console.hang_up()
                    self.hangup_at = None
                else:
                    timeout = min(timeout or HANGUP_GRACE, max(0.0, self.hangup_at - time.monotonic()))
            if self._poll(timeout, may_time_out=True):
                msg = self.chan.receive(timeout=SETUP_TIMEOUT)
                if msg is None:
                    self.chan_open = False
                    log.step("PID 1 is gone")
                elif msg[0] == sync.ERROR:
                    raise sync.error_from_fields(msg[1])
                elif msg[0] == sync.STOPPED:
                    self._stop_with_the_command()
        _, status = os.waitpid(self.stage1, 0)
        self.status = status
        log.step(f"stage-1 exited: {waitstatus_to_code(status)}")
        if self.subtree is not None and self.spec.limits is not None:
            for line in self.subtree.report(self.spec.limits):
                log.say(line)
                self.reported = True
        return waitstatus_to_code(status)

    def _stop_with_the_command(self) -> None:
        """The command stopped itself (a Ctrl-Z in its pty): give the caller's terminal
        back and stop rbox too, as the command would stop if run outside; when the shell
        continues rbox (`fg`), take the terminal again and continue the command."""
        if self.console is None:
            return
        self.console.restore()
        os.kill(os.getpid(), signal.SIGTSTP)   # discarded in an orphaned process group
        self.console.make_raw()
        self.console.copy_window_size()
        try:
            os.kill(self.init_pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def _poll(self, timeout: float | None, may_time_out: bool = False) -> bool:
        """True when the channel is readable; handles signals and the pty meanwhile."""
        poller = select.poll()
        if self.chan_open:
            poller.register(self.chan.rfd, select.POLLIN | select.POLLHUP)
        poller.register(self.sigfd, select.POLLIN)
        for fd, events in self.console.poll_events() if self.console else ():
            poller.register(fd, events)
        helper = self.driver.watch_fd if self.driver is not None and not self.helper_gone else None
        if helper is not None:
            poller.register(helper, select.POLLIN)
        extra = self.instance.watched() if self.instance is not None else {}
        for fd in extra:
            poller.register(fd, select.POLLIN)
        ready = dict(poller.poll(None if timeout is None else timeout * 1000))
        for fd in extra.keys() & ready.keys():
            extra[fd]()
        if not ready and not may_time_out:
            raise ProtocolError(f"the sandbox did not finish setting up within {timeout:g} s", hint=SLOW_HINT)
        if self.sigfd in ready:
            self._on_signal(read_signalfd(self.sigfd))
        if helper is not None and helper in ready:
            self._on_helper_exit()
        if self.console:
            for fd, events in ready.items():
                if fd not in (self.chan.rfd, self.sigfd, helper) and fd not in extra:
                    self.console.on_ready(fd, events)
        return self.chan_open and self.chan.rfd in ready

    def _on_helper_exit(self) -> None:
        """The network helper died (killed, crashed, out of memory) while PID 1 lives:
        one warning; the command keeps running, without a network (rbox(1), NETWORK)."""
        assert self.driver is not None
        self.helper_gone = True
        init_gone = select.poll()
        init_gone.register(self.chan.rfd, 0)     # POLLHUP only: PID 1 exited, the sandbox is ending
        if self.chan_open and not init_gone.poll(0):
            log.warn(f"{self.driver.death_note()}; the sandbox has no network from now on")

    def _on_signal(self, signo: int) -> None:
        log.step(f"got signal {signal_name(signo)}")
        if not self.init_pid:
            if signo in TERMINATING:
                raise Interrupted(signo)
            return
        if self.console:
            if signo == signal.SIGCONT:
                # `fg` or `bg` in the caller's shell: take the terminal if it is ours now.
                self.console.make_raw()
                self.console.copy_window_size()
            if signo == signal.SIGWINCH:
                # The command's pty gets the new size; the kernel sends it SIGWINCH.
                self.console.copy_window_size()
                return
            if signo in (signal.SIGHUP, signal.SIGTERM):
                # rbox is going away: hang up the pty, as a closed terminal window does.
                self._hang_up()
                if signo == signal.SIGHUP:
                    return
        try:
            os.kill(self.init_pid, signo)
        except ProcessLookupError:
            pass

    def _hang_up(self) -> None:
        """What a closed terminal window does to the command's session: SIGHUP to its
        process group first (init leads the session, so the kernel's own hang-up would
        reach only init, after the command may already have read end-of-file and exited
        with 0), then, a moment later, the pty itself is hung up (wait())."""
        if self.hangup_at is not None or self.console is None or not self.console.master_open:
            return
        self.console.stdin_open = False
        self.hangup_at = time.monotonic() + HANGUP_GRACE
        try:
            os.kill(self.init_pid, signal.SIGHUP)
        except ProcessLookupError:
            pass

    def cleanup(self) -> None:
        """Nothing outlives rbox: SIGKILL stage-1 (PID 1 follows by its death signal).
        The caller's terminal gets its settings back whatever happened."""
        if self.console:
            self.console.drain_output()
            self.console.restore()
            self.console.close()
        if self.status is None:
            try:
                os.kill(self.stage1, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.stage1, 0)
        if self.driver is not None:
            self.driver.stop()
        if self.subtree is not None:
            self.subtree.cleanup()
        self.chan.close()
        os.close(self.sigfd)
        if self.fd_sock is not None:
            self.fd_sock.close()
        if self.instance is not None:
            self.instance.finish(None if self.status is None else waitstatus_to_code(self.status))
