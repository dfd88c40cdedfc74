"""`rbox unshare`: a command as uid 0 of a user namespace with your id map, nothing else.

Runs in: parent (maps the child's user namespace, forwards signals, waits) and its child
(creates the user namespace, then executes the command).

What `rbox run --root` makes inside belongs to your subordinate ids on the host, and you
cannot remove it from outside (`rm: Permission denied`). In a user namespace with the same
map as `--root`, you are uid 0 over those ids, so `rbox unshare -- rm -rf rootfs` works
(podman unshare does the same). No other namespace is created: files, processes and the
network are the host's, and so are the working directory, environment and descriptors.
"""

from __future__ import annotations

import os
import pwd
import signal

from rootless import log, payload, sync, userns
from rootless import syscalls as sc
from rootless.errors import ProtocolError, SpecError, waitstatus_to_code
from rootless.guard import run_child

# Sent to rbox by another process (kill, a batch system): passed on to the command.
# SIGINT and SIGQUIT from the terminal reach the command directly (same process group);
# rbox ignores them and waits for the command's own status, as system(3) does.
PASSED_ON = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT)


def run(argv: list[str]) -> int:
    if not argv:
        raise SpecError("`rbox unshare` needs a COMMAND", hint="for example `rbox unshare -- rm -rf rootfs`")
    plan = plan_root_map()
    parent_end, child_end = sync.channel_pair()
    me = os.getpid()
    pid = os.fork()
    if pid == 0:
        parent_end.close()
        run_child(child_end, "unshare", lambda: child(argv, child_end, me))
    child_end.close()
    try:
        parent_end.expect(sync.USERNS_READY)
        userns.apply_idmap(plan, pid)
        parent_end.send(sync.IDMAP_DONE)
        wait_for_exec(parent_end)
        return wait_for(pid)
    except BaseException:
        _kill(pid)
        os.waitpid(pid, 0)
        raise
    finally:
        parent_end.close()


def plan_root_map() -> userns.IdMapPlan:
    """The map `rbox run --root` uses: you are 0, your subordinate ids follow from 1."""
    uid, gid = os.getuid(), os.getgid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    plan = userns.plan_idmap(True, uid, gid, name, os.environ.get("PATH"), userns.no_new_privs_set())
    if plan.mode == "single":
        log.warn(f"mapping only your own uid and gid ({plan.reason}): files of your subordinate ids "
                 "stay out of reach; see rbox(1), HOST SETUP")
    return plan


def child(argv: list[str], chan: sync.Channel, parent_pid: int) -> int:
    """In the child: a new user namespace, mapped by the parent, then exec."""
    sc.set_pdeathsig(signal.SIGKILL)      # nothing outlives rbox (prctl(2))
    if os.getppid() != parent_pid:
        raise ProtocolError("rbox exited during setup")
    sc.unshare(sc.CLONE_NEWUSER)
    chan.send(sync.USERNS_READY)
    chan.expect(sync.IDMAP_DONE)
    # The setuid newuidmap ran against us: re-arm, as stage-1 does.
    sc.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent_pid:
        raise ProtocolError("rbox exited during setup")
    # Python ignores SIGPIPE and SIGXFSZ at start; exec would pass that on to the command.
    for signo in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(signo, signal.SIG_DFL)
    path = os.environ.get("PATH")
    try:
        os.execve(payload.find_command(argv[0], path), argv, os.environ)
    except OSError as e:
        raise payload.command_error(argv[0], e.errno or 0, os.getcwd(), path or os.defpath, "the host") from None


def wait_for_exec(chan: sync.Channel) -> None:
    """EOF on the channel: the child executed the command (the pipe is close-on-exec).
    An ERROR instead is its failure to start, raised here."""
    msg = chan.receive(timeout=30.0)
    if msg is not None:
        kind, fields = msg
        if kind == sync.ERROR:
            raise sync.error_from_fields(fields)
        raise ProtocolError(f"unexpected {kind} from the child")


def wait_for(pid: int) -> int:
    for signo in PASSED_ON:
        signal.signal(signo, lambda s, _f: _kill(pid, s))
    for signo in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(signo, signal.SIG_IGN)
    _, status = os.waitpid(pid, 0)       # retried after a handler ran (PEP 475)
    return waitstatus_to_code(status)


def _kill(pid: int, signo: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, signo)
    except ProcessLookupError:
        pass
