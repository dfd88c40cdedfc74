"""Stage-1: create the user namespace, wait to be mapped, create the others, start PID 1.

Runs in: stage-1 (the parent's child; in the new user namespace after its first step).

Why stage-1 stays alive instead of exiting after the fork: PR_SET_PDEATHSIG fires when
the *parent* of a process exits (prctl(2)), so init's death signal is tied to stage-1 and
stage-1's to rbox. `kill -9` of rbox then takes down stage-1, which takes down PID 1,
which takes down the whole PID namespace (pid_namespaces(7)): nothing survives rbox.

While it waits, stage-1 is the watcher of mounts the host makes after the start
(latemounts.py): it shows them in the sandbox, read-only.
"""

from __future__ import annotations

import errno
import os
import signal

from rootless import init, latemounts, log, sync
from rootless import syscalls as sc
from rootless.errors import NamespaceError, ProtocolError, waitstatus_to_code
from rootless.guard import run_child
from rootless.spec import Spec


def run(spec: Spec, chan: sync.Channel, parent_pid: int, fd_sock: object = None,
        nested: tuple[int, int] | None = None) -> int:
    arm_death_signal(parent_pid)
    unshare_user()
    chan.send(sync.USERNS_READY)
    chan.expect(sync.IDMAP_DONE)
    # The setuid newuidmap ran against us; re-arm the death signal in case the credential
    # change cleared it (rootlesskit#65, fixed there the same way in PR #66).
    arm_death_signal(parent_pid)
    watcher = latemounts.prepare()      # before the sandbox's mount namespace is copied
    unshare_rest(spec)
    if watcher:
        watcher.keep_sandbox_ns()
    pid = os.fork()
    if pid == 0:
        if watcher:
            watcher.in_init()
        run_child(chan, "init", lambda: init.run(spec, chan, fd_sock, nested))
    chan.send(sync.INIT_STARTED, pid=pid)
    # From here on only init holds the pipes, so the parent sees EOF when PID 1 is gone.
    chan.close()
    if fd_sock is not None:
        fd_sock.close()  # type: ignore[attr-defined]
    status = watcher.wait(pid, spec) if watcher else os.waitpid(pid, 0)[1]
    return waitstatus_to_code(status)


def arm_death_signal(parent_pid: int) -> None:
    sc.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent_pid:
        # The parent died before the death signal was armed (bubblewrap#633).
        raise ProtocolError("rbox exited during setup")


def unshare_user() -> None:
    log.step("unshare user namespace")
    try:
        sc.unshare(sc.CLONE_NEWUSER)
    except OSError as e:
        reason = e.strerror
        if e.errno == errno.ENOSPC:
            # The kernel's words for this, "No space left on device", mislead.
            reason = "the limit on user namespaces is reached (ENOSPC)"
        raise NamespaceError(f"cannot create a user namespace: {reason}", hint=_userns_hint(e.errno)) from None


def _userns_hint(err: int | None) -> str:
    if err == errno.ENOSPC:
        return "the limit user.max_user_namespaces is reached or 0; see rbox(1), HOST SETUP"
    if err == errno.EINVAL:
        return "rbox must be single-threaded here; report this as a bug"
    return ("unprivileged user namespaces are restricted on this host (sysctls "
            "kernel.unprivileged_userns_clone or kernel.apparmor_restrict_unprivileged_userns); "
            "see rbox(1), HOST SETUP")


def unshare_rest(spec: Spec) -> None:
    flags = sc.CLONE_NEWNS | sc.CLONE_NEWPID | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWCGROUP
    names = "mount pid uts ipc cgroup"
    if spec.net != "host":
        flags |= sc.CLONE_NEWNET
        names += " net"
    log.step(f"unshare {names}")
    try:
        sc.unshare(flags)
    except OSError as e:
        raise NamespaceError(f"cannot create the {names} namespaces: {e.strerror}") from None
