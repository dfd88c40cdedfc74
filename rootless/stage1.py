"""Stage-1: create the user namespace, wait to be mapped, create the others, start PID 1,
map the command's nested user namespace.

Runs in: stage-1 (the parent's child; in the new user namespace after its first step).

Why stage-1 stays alive instead of exiting after the fork: PR_SET_PDEATHSIG fires when
the *parent* of a process exits (prctl(2)), so init's death signal is tied to stage-1 and
stage-1's to rbox. `kill -9` of rbox then takes down stage-1, which takes down PID 1,
which takes down the whole PID namespace (pid_namespaces(7)): nothing survives rbox.

Why stage-1 maps init's nested user namespace (U2): the maps of U2 may list many ids only
when written by a process with CAP_SETUID/CAP_SETGID in U1, the parent namespace
(user_namespaces(7), "Defining user and group ID mappings"). Stage-1 created U1 and keeps
every capability there; init gives its own up by entering U2. U2's maps go through the
host's /proc, which stage-1 opens before forking init: init's pivot_root moves the root
of stage-1 too (they share a mount namespace), after which `/proc` is the sandbox's.

While it waits, stage-1 is the watcher of mounts the host makes after the start
(latemounts.py): it shows them in the sandbox, read-only.
"""

from __future__ import annotations

import _signal as signal  # not `signal`: it imports enum (3 ms at start-up); signals.py says more
import errno
import os

from rootless import init, latemounts, log, sync
from rootless import syscalls as sc
from rootless.errors import BUG_HINT, NamespaceError, ProtocolError, RboxError, resource_hint, waitstatus_to_code
from rootless.guard import run_child
from rootless.spec import Spec
from rootless.userns import IdMapPlan, map_text

TYPE_CHECKING = False  # not `from typing import ...`: typing costs 9 ms at start-up
if TYPE_CHECKING:
    from rootless import fusekeeper


def run(spec: Spec, chan: sync.Channel, parent_pid: int, idmap: IdMapPlan, fd_sock: object = None) -> int:
    arm_death_signal(parent_pid)
    unshare_user()
    chan.send(sync.USERNS_READY)
    chan.expect(sync.IDMAP_DONE)
    # The setuid newuidmap ran against us; re-arm the death signal in case the credential
    # change cleared it (rootlesskit#65, fixed there the same way in PR #66).
    arm_death_signal(parent_pid)
    watcher = latemounts.prepare()      # before the sandbox's mount namespace is copied
    keeper = start_fuse(spec)           # before the sandbox's PID namespace: its daemons stay out of it
    unshare_rest(spec)
    host_proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    link, init_link = sync.channel_pair(child="init", parent="stage-1")
    if watcher:
        watcher.keep_sandbox_ns()
    pid = os.fork()
    if pid == 0:
        os.close(host_proc)
        link.close()
        if watcher:
            watcher.in_init()
        run_child(chan, "init", lambda: init.run(spec, chan, init_link, fd_sock))
    init_link.close()
    if keeper:
        keeper.init_forked(pid)
    chan.send(sync.INIT_STARTED, pid=pid)
    # From here on only init holds the pipes, so the parent sees EOF when PID 1 is gone.
    chan.close()
    if fd_sock is not None:
        fd_sock.close()  # type: ignore[attr-defined]
    serve_nested_map(link, host_proc, pid, idmap)
    code = wait_for_init(pid, watcher, spec)
    if keeper:
        keeper.finish()
    return code


def start_fuse(spec: Spec) -> fusekeeper.Keeper | None:
    """With overlays or a SquashFS image: lock the directories writes are kept in, and
    start the FUSE keeper when a daemon is needed (fusekeeper.py). Both modules were
    loaded by the parent while it built the spec; nothing of this runs otherwise."""
    if not spec.overlay_driver and not spec.squashfs:
        return None
    from rootless import fusekeeper, overlay

    found = overlay.layers(spec)
    overlay.lock_keep(found, spec.overlay_driver)
    return fusekeeper.start(spec, found)


def serve_nested_map(link: sync.Channel, host_proc: int, pid: int, idmap: IdMapPlan) -> None:
    """Wait for init to ask, write the maps of its nested user namespace, answer.

    EOF instead of the request: init failed earlier and told the parent itself. A failure
    here goes to init as ERROR, and init reports it (the parent's pipe is init's now)."""
    try:
        msg = link.receive(timeout=None)
        if msg is None:
            return
        if msg[0] != sync.NESTED_USERNS:
            raise ProtocolError(f"expected {sync.NESTED_USERNS} from init, got {msg[0]}")
        write_nested_maps(host_proc, pid, idmap)
        link.send(sync.NESTED_MAPPED)
    except RboxError as e:
        try:
            link.send_error(e)
        except OSError:
            pass            # init is gone; so is its error's audience
    finally:
        link.close()
        os.close(host_proc)


def write_nested_maps(host_proc: int, pid: int, idmap: IdMapPlan) -> None:
    """setgroups first: `deny` must precede gid_map (user_namespaces(7)); then the maps,
    each in one write(2), as the kernel requires."""
    for name, text in (("setgroups", idmap.nested_setgroups), ("uid_map", map_text(idmap.nested_uid_map)),
                       ("gid_map", map_text(idmap.nested_gid_map))):
        log.step(f"write /proc/{pid}/{name}: {text.strip()}")
        try:
            fd = os.open(f"{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC, dir_fd=host_proc)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        except OSError as e:
            raise NamespaceError(f"cannot write `/proc/{pid}/{name}` of the command's user namespace: "
                                 f"{e.strerror}", hint=BUG_HINT) from None


def wait_for_init(pid: int, watcher: latemounts.Watcher | None, spec: Spec) -> int:
    """Stay alive while PID 1 runs (see the module docstring), watching the host's late
    mounts meanwhile; its exit code."""
    status = watcher.wait(pid, spec) if watcher else os.waitpid(pid, 0)[1]
    return waitstatus_to_code(status)


def arm_death_signal(parent_pid: int) -> None:
    sc.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent_pid:
        # The parent died before the death signal was armed (bubblewrap#633).
        raise ProtocolError("rbox exited during setup", hint="nothing to do: rbox itself was ended")


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
    apparmor = apparmor_hint()
    if apparmor:
        return apparmor
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
        raise NamespaceError(f"cannot create the {names} namespaces: {e.strerror}",
                             hint=resource_hint(e.errno or 0) or apparmor_hint()
                             or "a limit such as user.max_net_namespaces may be reached or 0; see rbox(1), HOST SETUP"
                             ) from None


def apparmor_hint() -> str | None:
    """The administrator's fix when Ubuntu's AppArmor restriction is what failed us (the
    user namespace is made, but without capabilities): hostcheck decides, from the host's
    /proc, which stage-1 still sees here."""
    from rootless import hostcheck

    if hostcheck.apparmor_userns_restricted() is None:
        return None
    return "Ubuntu's AppArmor restriction on user namespaces is in the way: " + hostcheck.FIX["apparmor"]
