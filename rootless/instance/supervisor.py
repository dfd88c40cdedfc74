"""The supervisor of a named sandbox: what it does beyond parent.run.

Runs in: parent. For a foreground `rbox run --name` the supervisor is the caller's rbox
itself; with -d it is a child of it (`detach`), forked after the limits' cgroup is set up
and before anything else starts, in a session of its own with no terminal. It stays
stage-1's parent for the sandbox's whole life, so the chain of death signals holds as for
any run: `kill -9` of the supervisor takes stage-1, PID 1 and the PID namespace with it.

parent.run calls, in order: `detach`, `in_child` (in stage-1, right after the fork),
`running` (once the command runs), `watched`/`tick` (in its wait loop), `finish` (last in
its cleanup). Meanwhile the supervisor
- holds the sandbox's namespaces, opened before the command existed: U1, network, UTS, IPC,
  cgroup and the PID namespace from stage-1 (its own child, which never runs foreign code),
  the command's user and mount namespaces (U2, M2) from init, sent right after it made them
  (init.send_namespaces). `rbox exec` gets them over `sock` (docs/internals.md, "Joining a
  running sandbox", says why from here and from nowhere else);
- takes stop requests on `sock`: SIGTERM to PID 1, which passes it to the command; SIGKILL
  of stage-1 (and cgroup.kill) when the grace time is over;
- copies a detached command's output to its log (logfile.py).
"""

from __future__ import annotations

import os
import signal
import struct
import time

from rootless import log, sync
from rootless import syscalls as sc
from rootless.errors import ProtocolError
from rootless.instance import logfile, registry
from rootless.spawn import readable

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

    from rootless.parent import Sandbox
    from rootless.spec import Spec

SO_PEERCRED = 17
REQUEST_TIMEOUT = 2.0
# stage-1's namespaces exec joins (U1 first), then the PID namespace of its children.
STAGE1_NAMESPACES = ("user", "net", "uts", "ipc", "cgroup")


def record_of(spec: Spec, image: str | None) -> dict[str, object]:
    """What `ps`, `exec`, `stats` and `stop` need to know, written when the name is taken."""
    limits = None
    if spec.limits is not None:
        limits = {k: getattr(spec.limits, k) for k in spec.limits.__slots__ if getattr(spec.limits, k) is not None}
    return {"name": spec.name, "detached": spec.detach, "supervisor": os.getpid(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": spec.command, "workdir": spec.workdir,
            "root": spec.root, "hostname": spec.hostname, "net": spec.net, "ports": [repr(p) for p in spec.ports],
            "image": image, "rootfs": spec.rootfs, "limits": limits}


class Instance:
    def __init__(self, spec: Spec, entry: registry.Entry, record: dict[str, object]):
        self.spec, self.entry, self.record = spec, entry, record
        self.relay = logfile.Relay(entry.fd) if spec.detach else None
        self.report = -1                  # -d: the caller's rbox waits on this pipe for `running`
        self.listener: socket.socket | None = None
        self.namespaces: list[int] = []
        self.kinds: list[str] = []
        self.sandbox: Sandbox | None = None
        self.deadline: float | None = None     # when a stop's grace time is over
        self.stopping = False

    # -- before the sandbox exists --------------------------------------------------------

    def detach(self) -> None:
        """-d: fork the supervisor. This rbox, the caller's, waits until the command runs,
        prints the name and exits (with the error's code if setup fails: the supervisor
        prints it on the same terminal). The supervisor returns and goes on with parent.run,
        tied to the caller's rbox by a death signal until the command runs, so a Ctrl-C
        during setup ends it."""
        if not self.spec.detach:
            return
        from rootless.instance import systemd

        systemd.warn_if_logout_ends_it(self.spec.user)
        read_end, self.report = os.pipe()
        caller = os.getpid()
        pid = os.fork()
        if pid != 0:
            os.close(self.report)
            os._exit(_wait_for_supervisor(pid, read_end, str(self.spec.name)))
        os.close(read_end)
        os.setsid()                        # no terminal, no job control: the shell's signals stay the shell's
        sc.set_pdeathsig(signal.SIGKILL)
        if os.getppid() != caller:
            os._exit(125)
        self.record["supervisor"] = os.getpid()
        self.entry.write_record(self.record)
        assert self.relay is not None
        self.relay.open()
        _close_all_but({0, 1, 2, self.report, self.entry.fd, self.entry.lock_fd, self.entry.named_fd,
                        self.relay.read_end, self.relay.write_end, self.relay.out, *self.spec.pass_fds})
        if self.spec.limits is None:
            systemd.own_scope(str(self.spec.name))

    def in_child(self) -> None:
        """In stage-1, right after the fork: nothing of the registry stays open in the
        sandbox's processes (the lock must end with the supervisor); a detached command's
        stdin is /dev/null, its stdout and stderr the log's pipe."""
        for fd in (self.report, self.entry.lock_fd, self.entry.fd, self.entry.named_fd):
            if fd >= 0:
                os.close(fd)
        if self.relay is not None:
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(self.relay.write_end, 1)
            os.dup2(self.relay.write_end, 2)
            for fd in (null, self.relay.write_end, self.relay.read_end, self.relay.out):
                os.close(fd)

    # -- the sandbox runs -----------------------------------------------------------------

    def running(self, sandbox: Sandbox) -> None:
        """The command runs: take the namespaces, open the socket, complete the record, and
        with -d let the caller's rbox go (the supervisor then holds no terminal)."""
        self.sandbox = sandbox
        if self.relay is not None:
            self.relay.started()
        self._take_namespaces(sandbox)
        self._listen()
        self.record.update(init=sandbox.init_pid, stage1=sandbox.stage1, started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        if sandbox.subtree is not None:
            self.record.update(cgroup=sandbox.subtree.payload, supervisor_cgroup=sandbox.subtree.supervisor)
        self.entry.write_record(self.record)
        if self.report >= 0:
            os.chdir("/")
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            assert self.relay is not None
            os.dup2(self.relay.out, 1)
            os.dup2(self.relay.out, 2)
            # Untied from the caller's rbox before it hears `R` and exits: the sandbox lives on.
            sc.set_pdeathsig(0)
            os.write(self.report, b"R")
            os.close(self.report)
            self.report = -1

    def _take_namespaces(self, sandbox: Sandbox) -> None:
        import socket

        assert sandbox.fd_sock is not None
        if not readable([sandbox.fd_sock.fileno()], 30.0):
            raise ProtocolError("init did not pass the sandbox's namespaces")
        _, fds, _, _ = socket.recv_fds(sandbox.fd_sock, 1, 2, socket.MSG_CMSG_CLOEXEC)
        if len(fds) != 2:
            raise ProtocolError("init did not pass the sandbox's namespaces")
        kinds = [k for k in STAGE1_NAMESPACES if k != "net" or self.spec.net != "host"]
        own = [os.open(f"/proc/{sandbox.stage1}/ns/{k}", os.O_RDONLY | os.O_CLOEXEC) for k in kinds]
        own.append(os.open(f"/proc/{sandbox.stage1}/ns/pid_for_children", os.O_RDONLY | os.O_CLOEXEC))
        self.namespaces = own + fds
        self.kinds = [*kinds, "pid", "user2", "mnt2"]

    def _listen(self) -> None:
        import socket

        registry_dir = f"/proc/self/fd/{self.entry.fd}"     # short, whatever the runtime directory's length
        try:
            os.unlink(registry.SOCK, dir_fd=self.entry.fd)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.bind(f"{registry_dir}/{registry.SOCK}")
        sock.listen(16)
        sock.setblocking(False)
        self.listener = sock

    def watched(self) -> dict[int, Callable[[], None]]:
        """Descriptors for parent.Sandbox's poll loop, each with what to do when readable."""
        found: dict[int, Callable[[], None]] = {}
        if self.listener is not None:
            found[self.listener.fileno()] = self._serve
        if self.relay is not None and self.relay.read_end >= 0:
            found[self.relay.read_end] = self._relay
        return found

    def _relay(self) -> None:
        assert self.relay is not None
        if not self.relay.on_readable():
            os.close(self.relay.read_end)
            self.relay.read_end = -1

    def tick(self, timeout: float | None) -> float | None:
        """A stop's grace time: over, SIGKILL (stage-1 takes PID 1 and the PID namespace
        with it; the cgroup's processes go too). The poll's timeout, shortened to it."""
        if self.deadline is None:
            return timeout
        left = self.deadline - time.monotonic()
        if left > 0:
            return left if timeout is None else min(timeout, left)
        self.deadline = None
        self.kill()
        return timeout

    def kill(self) -> None:
        assert self.sandbox is not None
        log.step("stop: the grace time is over: SIGKILL")
        try:
            os.kill(self.sandbox.stage1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.sandbox.subtree is not None:
            self.sandbox.subtree.cleanup()

    # -- the socket ---------------------------------------------------------------------

    def _serve(self) -> None:
        import socket

        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        with conn:
            conn.setblocking(True)
            conn.settimeout(REQUEST_TIMEOUT)
            try:
                refusal = _refusal(conn)
                if refusal is not None:
                    conn.sendall(sync.encode(sync.ERROR, {"message": refusal, "code": 125}))
                    return
                request = _read_line(conn)
                if request is None:
                    return
                kind, fields = request
                if kind == "STOP":
                    self.stop(float(fields.get("grace", "10")))
                    conn.sendall(sync.encode("STOPPING"))
                elif self.stopping or self.sandbox is None or not self.sandbox.chan_open:
                    conn.sendall(sync.encode(sync.ERROR, {"message": "stopping", "code": 125}))
                elif kind == "EXEC":
                    socket.send_fds(conn, [self._namespaces_line()], self.namespaces)
            except (OSError, ValueError, ProtocolError) as e:
                log.step(f"exec socket: {e}")

    def _namespaces_line(self) -> bytes:
        """What exec needs besides the descriptors: what they are, and how the command was
        started (its working directory, identity, network mode, cgroup)."""
        assert self.sandbox is not None
        fields: dict[str, str | int] = {"kinds": ",".join(self.kinds), "stage1": self.sandbox.stage1,
                                        "init": self.sandbox.init_pid, "workdir": self.spec.workdir,
                                        "root": int(self.spec.root), "net": self.spec.net}
        if self.sandbox.subtree is not None:
            fields["cgroup"] = self.sandbox.subtree.payload
        return sync.encode("NAMESPACES", fields)

    def stop(self, grace: float) -> None:
        """`rbox stop`: SIGTERM to PID 1, which passes it to the command; SIGKILL after the
        grace time (tick). From now on exec is refused."""
        if self.stopping or self.sandbox is None:
            return
        self.stopping = True
        log.step(f"stop: SIGTERM, {grace:g} s of grace")
        self.entry.write(registry.STOPPING, b"")
        self.deadline = time.monotonic() + max(0.0, grace)
        try:
            os.kill(self.sandbox.init_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    # -- the end ------------------------------------------------------------------------

    def finish(self, code: int | None) -> None:
        """Last in parent.Sandbox.cleanup: helpers, cgroup and stage-1 are gone. A detached
        command that ended by itself keeps its record and log (`ps -a`, `rbox logs`), with
        its exit code; anything else (stopped, foreground, failed to start) goes. The lock
        goes last, with the process."""
        if self.relay is not None and self.relay.read_end >= 0:
            self.relay.on_readable()
        for fd in self.namespaces:
            os.close(fd)
        self.namespaces = []
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            try:
                os.unlink(registry.SOCK, dir_fd=self.entry.fd)
            except OSError:
                pass
        if self.spec.detach and not self.stopping and self.sandbox is not None and code is not None \
                and self.sandbox.init_pid:
            self.entry.write(registry.EXIT, str(code).encode())
        else:
            self.entry.remove()
        if self.relay is not None:
            self.relay.close()

    def abandon(self) -> None:
        """Setup failed before parent.Sandbox existed: the name is free again."""
        self.entry.remove()


def _refusal(conn: socket.socket) -> str | None:
    """Why this peer may not have the namespaces, or None. Only processes of the
    supervisor's own user and user namespace: the socket's directory is the user's, and a
    process inside a sandbox (which could reach it through a bind of the runtime directory)
    is in another user namespace, where the descriptors would be of no use anyway."""
    import socket

    pid, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, SO_PEERCRED, 12))
    if uid != os.getuid():
        return "refused: another user"
    try:
        if os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user"):
            return "refused: rbox exec must run outside the sandbox (in the user namespace of its rbox)"
    except OSError:
        return "refused: rbox exec must run outside the sandbox"
    return None


def _read_line(conn: socket.socket) -> tuple[str, dict[str, str]] | None:
    data = b""
    while not data.endswith(b"\n") and len(data) < 4096:
        chunk = conn.recv(4096 - len(data))
        if not chunk:
            return None
        data += chunk
    return sync.decode(data.rstrip(b"\n"))


def _wait_for_supervisor(pid: int, read_end: int, name: str) -> int:
    """The caller's rbox after the fork: `R` means the command runs (print the name, exit
    0); the pipe's end without it means the supervisor failed and said why on the shared
    terminal: its exit code is ours."""
    try:
        got = os.read(read_end, 1)
    except OSError:
        got = b""
    if got == b"R":
        log.out(name + "\n")
        return 0
    _, status = os.waitpid(pid, 0)
    from rootless.errors import waitstatus_to_code

    return waitstatus_to_code(status)


def _close_all_but(keep: set[int]) -> None:
    """The detached supervisor keeps nothing of its caller's but what it needs: no pipe of a
    `$(rbox run -d ...)` or an ssh session stays open through it."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def run(spec: Spec, image: str | None) -> int:
    """`rbox run --name NAME [-d]`: take the name, then parent.run with the supervisor's hooks."""
    from rootless import parent

    if spec.dry_run:
        return parent.run(spec)
    registry.sweep()
    record = record_of(spec, image)
    entry = registry.reserve(str(spec.name), record)
    # The command's environment apart, as /proc/PID/environ has it: only exec reads it.
    entry.write(registry.ENV, b"".join(os.fsencode(f"{k}={v}") + b"\0" for k, v in spec.env.items()))
    instance = Instance(spec, entry, record)
    try:
        return parent.run(spec, instance)
    except BaseException:
        instance.abandon()       # setup failed: the name is free again (finish may have done it)
        raise
