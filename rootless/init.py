"""PID 1 of the sandbox: build the filesystem, start the command, reap, forward signals.

Runs in: init (PID 1 in the new PID namespace, all namespaces created).

The loop is systemd-nspawn's stub_pid1: all interesting signals are blocked, taken with
sigwaitinfo(), and forwarded to the command; every zombie is reaped. When the command
ends, whatever it left behind gets SIGTERM, a short grace period, then the kernel's
SIGKILL when PID 1 exits (pid_namespaces(7)). init's exit code is the command's.

Before the command starts, init locks the sandbox (`contain`): a user namespace nested
below the one that made the mounts (stage-1 writes its maps), a mount namespace of that
user namespace, in which every mount rbox made is locked (mount_namespaces(7):
MNT_LOCKED, MNT_LOCK_READONLY; no unmount, move or read-write remount even for uid 0
there), no dumpable state (the command cannot open /proc/1/fd, /proc/1/mem, nor ptrace
init, whose pipe to rbox it could otherwise write), and a session keyring of its own.

Every module init needs is imported at module load: after pivot_root the
host's site-packages may be gone (mkosi imports `warnings` eagerly for this reason).
"""

from __future__ import annotations

import _signal as signal  # not `signal`: it imports enum (3 ms at start-up); signals.py says more
import errno
import os
import time

from rootless import latemounts, log, mounts, net, payload, rootfs, sync
from rootless import syscalls as sc
from rootless.errors import NamespaceError, resource_hint, waitstatus_to_code
from rootless.net import loopback  # noqa: F401 - imported before pivot_root (see above)
from rootless.signals import FORWARDED, block
from rootless.spec import Spec

LEFTOVER_GRACE = 2.0


def run(spec: Spec, chan: sync.Channel, link: sync.Channel, fd_sock: object = None) -> int:
    sc.set_pdeathsig(signal.SIGKILL)           # tied to stage-1, which never exits first
    # A session (and so a process group) of its own: a key of rbox's terminal (Ctrl-C
    # under -T) then reaches rbox only, which forwards it. Were init in rbox's group too,
    # the terminal's copy and rbox's copy could merge into one pending signal (standard
    # signals do not queue) and nothing could tell which one to drop: Ctrl-C would
    # sometimes be lost. Leading a session inside the sandbox also lets the command's pty
    # be this session's terminal, with the command in a process group that is not
    # orphaned, so job control works (payload.spawn).
    os.setsid()
    block(FORWARDED + (signal.SIGCHLD,))
    rootfs.build(mounts.optimize(mounts.plan(spec)))
    latemounts.tree_built()                   # stage-1 may now show the host's later mounts
    if spec.squashfs or spec.overlay_driver == "fuse":
        from rootless import fusekeeper  # loaded by stage-1 before the fork

        fusekeeper.built()                    # a FUSE daemon's death now ends the sandbox
    set_hostname(spec.hostname)
    net.configure(spec.net)
    chan.expect(sync.NETWORK_DONE)
    contain(link)
    if spec.name is not None:
        send_namespaces(fd_sock, keep_open=spec.pty)
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


def send_namespaces(sock: object, keep_open: bool) -> None:
    """A named sandbox: the command's user and mount namespaces (U2, M2) to the parent, the
    supervisor, which gives them to `rbox exec`. Now, before the command exists: they are
    the ones init made, never ones the command could have made (docs/internals.md)."""
    import socket  # loaded by the parent before the fork for a named sandbox

    assert isinstance(sock, socket.socket)
    fds = [os.open(f"/proc/self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC) for kind in ("user", "mnt")]
    socket.send_fds(sock, [b"N"], fds)
    for fd in fds:
        os.close(fd)
    if not keep_open:
        sock.close()


def contain(link: sync.Channel) -> None:
    """The steps between a finished sandbox and its command (see the module docstring).

    The mounts, the host name and the network are done: what follows (spawning the
    command, reaping, signals) needs no capability in stage-1's user namespace."""
    enter_nested_userns(link)
    # Not dumpable before anything else: init's descriptors are out of the command's
    # reach from here on (proc(5): /proc/PID/fd needs ptrace access, which a
    # non-dumpable process refuses to anyone without CAP_SYS_PTRACE over rbox's own
    # user namespace, the host's).
    sc.set_dumpable(False)
    lock_mounts()
    new_session_keyring()


def enter_nested_userns(link: sync.Channel) -> None:
    """A user namespace below stage-1's, mapped by stage-1 (userns.plan_idmap says how).

    init stays dumpable until the maps are written: stage-1 writes them through
    /proc/PID, whose files belong to root of the host while a process is not dumpable."""
    log.step("unshare user namespace (nested: the command's)")
    try:
        sc.unshare(sc.CLONE_NEWUSER)
    except OSError as e:
        reason = "the limit on user namespaces is reached (ENOSPC)" if e.errno == errno.ENOSPC else e.strerror
        raise NamespaceError(f"cannot create the nested user namespace: {reason}",
                             hint="end other sandboxes or containers of yours, or an administrator can raise "
                                  "user.max_user_namespaces; with subordinate ids no nested namespace is needed "
                                  "(see rbox(1), HOST SETUP)") from None
    link.send(sync.NESTED_USERNS)
    link.expect(sync.NESTED_MAPPED)
    link.close()


def lock_mounts() -> None:
    """A mount namespace owned by the nested user namespace: the kernel copies every
    mount into it locked (mount_namespaces(7), "Restrictions on mount namespaces")."""
    log.step("unshare mount namespace (nested: every mount so far is locked)")
    try:
        sc.unshare(sc.CLONE_NEWNS)
    except OSError as e:
        raise NamespaceError(f"cannot create the command's mount namespace: {e.strerror}",
                             hint=resource_hint(e.errno or 0) or "an administrator can raise user.max_mnt_namespaces "
                                  "(`rbox check` shows the namespace limits)") from None


def new_session_keyring() -> None:
    """A new, empty session keyring (keyrings(7)), as OCI runtimes give a container: the
    caller's holds Kerberos (KEYRING: ccaches) and AFS tokens. Without keyrings in the
    kernel (ENOSYS) there is nothing to leak."""
    try:
        serial = sc.join_session_keyring()
    except OSError as e:
        if e.errno == errno.ENOSYS:
            log.step("no kernel keyrings (ENOSYS)")
            return
        raise NamespaceError(f"cannot give the sandbox a session keyring of its own: {e.strerror}",
                             hint="the kernel's key quota (kernel.keys.maxkeys) may be used up; "
                                  "see /proc/key-users") from None
    log.step(f"new session keyring {serial}")


def set_hostname(name: str) -> None:
    log.step(f"hostname {name}")
    try:
        sc.sethostname(name)
    except OSError as e:
        raise NamespaceError(f"cannot set the host name: {e.strerror}",
                             hint="choose another --hostname (letters, digits, `-` and `.`)") from None


def supervise(command: int, chan: sync.Channel | None = None) -> int:
    """Reap children and forward signals until the command exits; its exit code.

    With a pty (`chan` given), a command that stops (Ctrl-Z in its pty stops its process
    group; vim and less stop themselves) is reported to the parent, which gives the
    terminal back and stops too, so that the caller's shell can `fg` it; `fg` continues
    rbox, which continues the command's whole group."""
    waited = FORWARDED + (signal.SIGCHLD,)
    started = {"settled": False}
    while True:
        code = reap(command, chan, started)
        if code is not None:
            return code
        info = signal.sigwaitinfo(waited)
        if info.si_signo != signal.SIGCHLD:
            try:
                if info.si_signo in (signal.SIGCONT, signal.SIGHUP) and chan is not None:
                    # `fg`: the whole stopped job goes on; a hang-up reaches the whole
                    # foreground job, as the kernel's would (the command's pty is ours).
                    os.killpg(command, info.si_signo)
                else:
                    os.kill(command, info.si_signo)
            except ProcessLookupError:
                pass


def reap(command: int, chan: sync.Channel | None = None, started: dict[str, bool] | None = None) -> int | None:
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
                settled, started = (started or {}).get("settled", True), started or {}
                started["settled"] = True
                if not settled and os.WSTOPSIG(status) in (signal.SIGTTIN, signal.SIGTTOU):
                    # Its first stop: it touched the pty a moment before it became the
                    # foreground group (payload.spawn); it is the foreground now: go on.
                    log.step("the command was stopped by its terminal before it owned it; continued")
                    os.killpg(command, signal.SIGCONT)
                    continue
                log.step("the command stopped")
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
