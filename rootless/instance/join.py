"""`rbox exec NAME -- COMMAND`: a command inside a running named sandbox, exactly as contained
as the sandbox's own command.

Runs in: parent (the caller's rbox: asks the supervisor, relays the pty, forwards signals,
waits) and the joiner (its forked child: enters the namespaces, starts the command as the
sandbox's init starts its command, reaps it). docs/internals.md, "Joining a running
sandbox", argues the design; in short:

    rbox exec (host)                       joiner (host PID namespace)          command
    supervisor's sock: EXEC  ◀── U1 net uts ipc cgroup pid (stage-1's), U2 M2 (init's)
    block signals, signalfd, pipes
    fork ────────────────────────────────▶ death signal; not dumpable; setsid
                                           [the sandbox's cgroup.procs, host path]
                                           setns(pidfd of stage-1, USER|NET|UTS|IPC|CGROUP)
                                             (Linux 5.8; else each fd, user first), checked
                                           setns(PID namespace: for the children)
                                           setns(U2), setns(M2): root and cwd are M2's
                                           new session keyring
                                           payload.start: cwd, bounding set, NO_NEW_PRIVS,
                                             keyring filter, pty of the sandbox's devpts,
                                             only 0 1 2, posix_spawn ──────────▶ in the PID ns
           ◀───────── RUNNING ─────────────
    relay, forward signals                 supervise: reap, forward
    exit code ◀──────────────────────────── its exit code

Every namespace comes from the supervisor, which opened them before the command existed:
none is one the sandbox's command made or chose. U1's capabilities are used only to
enter the namespaces U1 owns; the last step into U2 gives them up for good (a process
has no capability in a parent user namespace, user_namespaces(7)), and nothing of U1 or
of the host stays open past it.
"""

from __future__ import annotations

import errno
import os
import signal

from rootless import init, kernel, log, payload, sync
from rootless import syscalls as sc
from rootless.errors import ProtocolError, RboxError, SpecError
from rootless.fds import seal as seal_fds
from rootless.guard import run_child
from rootless.instance import commands, registry
from rootless.parent import Interrupted, Sandbox, fd_socket_pair
from rootless.signals import FORWARDED, block, signalfd
from rootless.spec import Spec, _pty, set_env

FLAGS = {"user": sc.CLONE_NEWUSER, "net": sc.CLONE_NEWNET, "uts": sc.CLONE_NEWUTS, "ipc": sc.CLONE_NEWIPC,
         "cgroup": sc.CLONE_NEWCGROUP}
USAGE = "usage: rbox exec [-t|-T] [-e K=V] [-w DIR] NAME [--] COMMAND [ARG...]"


def run(args: list[str], values: dict[str, object], environ: dict[str, str]) -> int:
    # First: the command gets 0, 1, 2 and nothing else of the caller's (fds.py).
    seal_fds([])
    if values.get("help"):
        from rootless import options

        log.out(options.help_text("exec"))
        return 0
    if not args or args[0] == "--":
        raise SpecError("`rbox exec` needs the name of a running sandbox", hint=USAGE)
    name, command = args[0], args[1:]
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise SpecError("`rbox exec` needs a COMMAND", hint=USAGE)
    registry.sweep(environ)
    env, fds, fields = namespaces(name, environ)
    try:
        spec = exec_spec(name, env, fields, command, values, environ)
        cgroup = fields.get("cgroup")
        if cgroup is not None:
            prepare_cgroup()
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return start(spec, fds, fields["kinds"].split(","), int(fields["stage1"]), cgroup)


def namespaces(name: str, environ: dict[str, str]) -> tuple[dict[str, str], list[int], dict[str, str]]:
    """The command's environment, and the sandbox's namespaces from its supervisor (with
    what they are, and how the command was started)."""
    entry = registry.find(name, environ)
    if entry is None:
        raise registry.not_found(name)
    try:
        status = entry.status()
        if status == "stale":
            raise registry.not_found(name)
        if status == "exited":
            raise RboxError(f"the sandbox `{name}` has ended (exit code {entry.exit_code()})",
                            hint=f"`rbox logs {name}` shows its output; start it again with `rbox run -d --name "
                                 f"{name} ...`")
        if status == "starting":
            raise RboxError(f"the sandbox `{name}` is still starting", hint="try again in a moment")
        env = entry.environment()
        kind, fields, fds = commands.request(entry, "EXEC")
    finally:
        entry.close()
    if kind == sync.ERROR:
        for fd in fds:
            os.close(fd)
        if fields.get("message") == "stopping":
            raise stopping(name)
        raise RboxError(f"the sandbox `{name}` refused: {fields.get('message')}",
                        hint="run `rbox exec` on the host, as the user who started the sandbox")
    if kind != "NAMESPACES" or len(fds) != len(fields.get("kinds", "").split(",")):
        for fd in fds:
            os.close(fd)
        raise ProtocolError(f"the sandbox `{name}` answered {kind} with {len(fds)} descriptors")
    return env, fds, fields


def stopping(name: str) -> RboxError:
    return RboxError(f"the sandbox `{name}` is stopping", hint=f"once `rbox ps` no longer lists it, start it "
                     f"again with `rbox run -d --name {name} ...`")


def exec_spec(name: str, env: dict[str, str], fields: dict[str, str], command: list[str],
              values: dict[str, object], environ: dict[str, str]) -> Spec:
    """What payload.start needs, from the sandbox's record and exec's options: the sandbox's
    environment and working directory (as its command got them), -e and -w on top."""
    set_env(env, [str(item) for _, item in values.get("env") or []], environ)  # type: ignore[attr-defined]
    workdir = values.get("workdir") or fields.get("workdir") or "/"
    if not str(workdir).startswith("/"):
        raise SpecError(f"-w/--workdir must be an absolute path inside the sandbox, not `{workdir}`",
                        hint="for example -w /tmp")
    spec = Spec.__new__(Spec)
    for slot in Spec.__slots__:
        setattr(spec, slot, None)
    tty = all(os.isatty(fd) for fd in (0, 1, 2))
    spec.command, spec.env, spec.workdir, spec.root = command, env, str(workdir), fields.get("root") == "1"
    spec.tty, spec.pty, spec.pass_fds, spec.name, spec.detach = tty, _pty(values, tty), [], name, False
    spec.net = fields.get("net", "none")
    return spec


def prepare_cgroup() -> None:
    """The sandbox has limits: the joiner will move itself into the sandbox's cgroup, which
    cgroup v2 allows only when the common ancestor's cgroup.procs is writable: not from a
    login session's scope (root's). Then rbox exec first asks the user manager for a scope
    of its own, as `rbox run` does for limits (cgroups.move_into_scope)."""
    from rootless import cgroups
    from rootless.instance import systemd

    uid = os.getuid()
    own = cgroups.parse_proc_cgroup(cgroups.read("/proc/self/cgroup")) or "/"
    if own.startswith(f"/user.slice/user-{uid}.slice/user@{uid}.service/"):
        return
    bus = systemd.user_bus()
    if bus is None:
        return            # the joiner's write fails and says so
    files = cgroups.delegate_files(cgroups.read(cgroups.DELEGATE_LIST)) if os.path.exists(cgroups.DELEGATE_LIST) \
        else ["cgroup.procs"]
    cgroups.move_into_scope(bus, files, cgroups.Limits())


class Joined(Sandbox):
    """parent.Sandbox's relay, signal forwarding and waiting, around the joiner."""

    def _setup(self, idmap: object) -> None:
        self.expect(sync.RUNNING)
        self.init_pid = self.stage1        # signals go to the joiner, which passes them on
        if self.spec.pty:
            from rootless.console import Console

            self.console = Console(self.receive_master(), on_hangup=self._hang_up)
            self.console.make_raw()


def start(spec: Spec, fds: list[int], kinds: list[str], stage1: int, cgroup: str | None) -> int:
    block(FORWARDED)
    sigfd = signalfd(FORWARDED)
    parent_end, child_end = sync.channel_pair(child="the joining process", parent="rbox exec")
    parent_sock, child_sock = fd_socket_pair() if spec.pty else (None, None)
    me = os.getpid()
    pid = os.fork()
    if pid == 0:
        parent_end.close()
        os.close(sigfd)
        if parent_sock is not None:
            parent_sock.close()
        namespaces = dict(zip(kinds, fds, strict=True))
        run_child(child_end, "exec", lambda: enter(spec, namespaces, stage1, cgroup, child_end, child_sock, me))
    for fd in fds:
        os.close(fd)
    child_end.close()
    if child_sock is not None:
        child_sock.close()
    joined = Joined(spec, pid, parent_end, sigfd, parent_sock)
    try:
        joined.setup(None)  # type: ignore[arg-type]
        return joined.wait()
    except Interrupted as e:
        return 128 + e.signo
    finally:
        joined.cleanup()


# -- the joiner ----------------------------------------------------------------------------

def enter(spec: Spec, ns: dict[str, int], stage1: int, cgroup: str | None, chan: sync.Channel,
          fd_sock: object, parent_pid: int) -> int:
    """Into the sandbox, step by step (see the module docstring), then its command."""
    sc.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent_pid:
        raise ProtocolError("rbox exec exited while it started", hint="nothing to do: rbox itself was ended")
    # Never dumpable: it holds the caller's descriptors and, for a moment, capabilities
    # over the sandbox's namespaces; the sandbox's processes cannot see it anyway (it
    # stays in the host's PID namespace), and the command it starts is a new image.
    sc.set_dumpable(False)
    os.setsid()
    block((signal.SIGCHLD,))           # init.supervise takes it with sigwaitinfo, as init does
    if cgroup is not None:
        join_cgroup(cgroup)
    enter_sandbox_namespaces(ns, stage1, str(spec.name))
    sc.setns(ns["pid"], sc.CLONE_NEWPID)
    enter_command_namespaces(ns)
    for fd in ns.values():
        os.close(fd)
    init.new_session_keyring()
    try:
        pid, master = payload.start(spec)
    except RboxError:
        if not os.path.exists("/proc/1"):
            # The PID namespace has no init any more: fork fails with ENOMEM there.
            raise stopping(str(spec.name)) from None
        raise
    if master is not None:
        init.send_master(fd_sock, master)
    chan.send(sync.RUNNING)
    return init.supervise(pid, chan if spec.pty else None)


def enter_sandbox_namespaces(ns: dict[str, int], stage1: int, name: str) -> None:
    """U1 and what it owns: network (not with --net=host), UTS, IPC, cgroup. In one call
    with a pidfd of stage-1 where the kernel takes one (5.8), then checked against the
    supervisor's descriptors (a pid is only a number: had stage-1 gone and its pid been
    reused, we would be in other namespaces, and stop); else file by file, user first:
    its capabilities are what the others' setns require (CAP_SYS_ADMIN over their owner)."""
    kinds = [k for k in FLAGS if k in ns]
    if kernel.setns_pidfd() and os.environ.get("RBOX_TEST_NO_SETNS_PIDFD") != "1":
        try:
            fd = kernel.pidfd_open(stage1)
        except ProcessLookupError:
            raise stopping(name) from None
        assert fd is not None
        try:
            flags = 0
            for kind in kinds:
                flags |= FLAGS[kind]
            sc.setns(fd, flags)
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise stopping(name) from None
            raise
        finally:
            os.close(fd)
        for kind in kinds:
            here, given = os.stat(f"/proc/self/ns/{kind}"), os.fstat(ns[kind])
            if (here.st_dev, here.st_ino) != (given.st_dev, given.st_ino):
                raise ProtocolError(f"the sandbox `{name}` is gone (its stage-1's pid is another process's now)",
                                    hint=f"`rbox ps` shows whether `{name}` still runs")
        log.step(f"joined {' '.join(kinds)} of stage-1 (pidfd)")
        return
    for kind in kinds:
        sc.setns(ns[kind], FLAGS[kind])
    log.step(f"joined {' '.join(kinds)} (namespace files)")


def enter_command_namespaces(ns: dict[str, int]) -> None:
    """The command's own: U2, then M2, where every mount of the sandbox is locked. After
    setns(U2) no capability in U1 is left (user_namespaces(7)); setns(M2) also moves the
    root and the working directory into M2 (setns(2)): nothing of the host's tree stays."""
    sc.setns(ns["user2"], sc.CLONE_NEWUSER)
    sc.setns(ns["mnt2"], sc.CLONE_NEWNS)
    log.step("joined the command's user and mount namespaces")


def join_cgroup(path: str) -> None:
    """Into the sandbox's cgroup (its limits apply), by its host path, before any namespace."""
    from rootless.errors import CgroupError

    try:
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    except OSError as e:
        raise CgroupError(f"cannot put the command into the sandbox's cgroup `{path}`: {e.strerror}",
                          hint="run `rbox exec` from a login session with a systemd user manager (as `rbox run` "
                               "with limits needs one); see rbox(1), RESOURCE LIMITS") from None
