"""PID 1 of the sandbox: build the filesystem, start the command, reap, forward signals.

Runs in: init (PID 1 in the new PID namespace, all namespaces created).

The loop is systemd-nspawn's stub_pid1: all interesting signals are blocked, taken with
sigwaitinfo(), and forwarded to the command; every zombie is reaped. When the command
ends, whatever it left behind gets SIGTERM, a short grace period, then the kernel's
SIGKILL when PID 1 exits (pid_namespaces(7)). init's exit code is the command's.

Every module init needs is imported at module load: after pivot_root the
host's site-packages may be gone (mkosi imports `warnings` eagerly for this reason).
"""

from __future__ import annotations

import os
import signal
import time

from rootless import latemounts, log, mounts, net, payload, rootfs, sync
from rootless import syscalls as sc
from rootless.errors import NamespaceError, waitstatus_to_code
from rootless.net import loopback  # noqa: F401 - imported before pivot_root (see above)
from rootless.signals import FORWARDED, block
from rootless.spec import Spec

LEFTOVER_GRACE = 2.0


def run(spec: Spec, chan: sync.Channel, fd_sock: object = None, nested: tuple[int, int] | None = None) -> int:
    sc.set_pdeathsig(signal.SIGKILL)           # tied to stage-1, which never exits first
    # A process group of its own: a key of rbox's terminal (Ctrl-C under -T) then
    # reaches rbox only, which forwards it. Were init in rbox's group too, the terminal's
    # copy and rbox's copy could merge into one pending signal (standard signals do not
    # queue) and nothing could tell which one to drop: Ctrl-C would sometimes be lost.
    os.setpgid(0, 0)
    block(FORWARDED + (signal.SIGCHLD,))
    rootfs.build(mounts.optimize(mounts.plan(spec)))
    latemounts.tree_built()                   # stage-1 may now show the host's later mounts
    set_hostname(spec.hostname)
    net.configure(spec.net)
    chan.expect(sync.NETWORK_DONE)
    if nested:
        enter_nested_userns(*nested)
    pid, master = payload.start(spec)
    if master is not None:
        send_master(fd_sock, master)
    chan.send(sync.RUNNING)
    code = supervise(pid, chan if spec.pty else None)
    log.step(f"command exited: {code}")
    kill_leftovers()
    return code


def send_master(sock: object, master: int) -> None:
    """Hand the pty master to the parent (SCM_RIGHTS); init keeps no copy, so the
    parent sees EIO on it once the command and its children have closed the slave."""
    import socket  # loaded by the parent before the fork, only in pty mode

    assert isinstance(sock, socket.socket)
    socket.send_fds(sock, [b"M"], [master])
    os.close(master)
    sock.close()


def enter_nested_userns(uid: int, gid: int) -> None:
    """Become `uid`/`gid` again in a user namespace of our own (see userns.plan_idmap).

    As its creator, init may write a single-line map of its own outer id, 0, after
    denying setgroups (user_namespaces(7)). The mounts are done; what follows (spawning
    the command, reaping, signals) needs no capability in the outer namespace."""
    log.step(f"nested user namespace: uid {uid}, gid {gid}")
    try:
        sc.unshare(sc.CLONE_NEWUSER)
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} 0 1\n"), ("gid_map", f"{gid} 0 1\n")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    except OSError as e:
        raise NamespaceError(f"cannot create the nested user namespace: {e.strerror}") from None


def set_hostname(name: str) -> None:
    log.step(f"hostname {name}")
    try:
        sc.sethostname(name)
    except OSError as e:
        raise NamespaceError(f"cannot set the host name: {e.strerror}") from None


def supervise(command: int, chan: sync.Channel | None = None) -> int:
    """Reap children and forward signals until the command exits; its exit code.

    With a pty (`chan` given), a command that stops itself (vim, less: they catch
    SIGTSTP and send themselves SIGSTOP) is reported to the parent, which gives the
    terminal back and stops too, so that the caller's shell can `fg` it. Without that,
    nobody could continue it: its process group is orphaned (it leads its own session)."""
    waited = FORWARDED + (signal.SIGCHLD,)
    while True:
        code = reap(command, chan)
        if code is not None:
            return code
        info = signal.sigwaitinfo(waited)
        if info.si_signo != signal.SIGCHLD:
            try:
                os.kill(command, info.si_signo)
            except ProcessLookupError:
                pass


def reap(command: int, chan: sync.Channel | None = None) -> int | None:
    """Reap every zombie; the command's exit code once it is among them."""
    code = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG | (os.WUNTRACED if chan else 0))
        except ChildProcessError:
            return code
        if pid == 0:
            return code
        if os.WIFSTOPPED(status):
            if pid == command and chan is not None:
                log.step("the command stopped itself")
                chan.send(sync.STOPPED)
            continue
        if pid == command:
            code = waitstatus_to_code(status)


def kill_leftovers() -> None:
    """SIGTERM to everything left in the namespace, then wait a little for it to go."""
    try:
        os.kill(-1, signal.SIGTERM)            # from PID 1: every other process in the ns
    except ProcessLookupError:
        return
    deadline = time.monotonic() + LEFTOVER_GRACE
    while time.monotonic() < deadline:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return
        signal.sigtimedwait((signal.SIGCHLD,), max(0.0, deadline - time.monotonic()))
    log.step("leftover processes did not exit after SIGTERM; PID 1 exits, the kernel kills them")
