"""The FUSE daemons (fuse-overlayfs, squashfuse), kept out of the command's reach.

Runs in: stage-1 (`start`, `Keeper`), the keeper (a child of stage-1, `_keeper`) and
init (`mount`, `built`). Imported only when a sandbox needs a FUSE daemon.

A FUSE daemon serves a mount with the rights of whoever runs it, here the user namespace
that owns every mount (U1), with the capabilities overlaying needs. The command must not
be able to signal it, trace it or read its memory. So the daemons do not live in the
sandbox's PID namespace at all:

  1. stage-1, before it creates the sandbox's PID namespace, opens /dev/fuse once per
     daemon and forks the keeper: the keeper and the daemons it starts are in the host's
     PID namespace, where the command (in the sandbox's, below it) has no name for them:
     no /proc entry, no pid for kill(2), ptrace(2) or pidfd_open(2) (pid_namespaces(7)).
     They are in U1, which the command's user namespace (U2) is nested below; even a
     process it could name there, it could not trace (the kernel's capability check
     wants CAP_SYS_PTRACE in the tracee's user namespace) but could kill (same uid).
  2. init mounts each FUSE file system with the descriptor it inherited
     (`mount -t fuse -o fd=N`, allowed in a user namespace since Linux 4.18), with
     `default_permissions` (the kernel checks the command's own permissions against
     what the daemon reports: the daemon's capabilities cannot be borrowed through the
     file system) and `allow_other` (the command's user namespace is nested below the
     mount's), closes its descriptor, and tells the keeper over a pipe.
  3. the keeper starts the daemon with the mountpoint `/dev/fd/3` (libfuse 3.3: the
     descriptor is a /dev/fuse already mounted), in a session of its own (the terminal's
     keys do not reach it), every signal at its default, no_new_privs, only the
     capabilities of syscalls.keep_only_capabilities, and a death signal tied to the
     keeper, itself tied to stage-1: kill -9 of any rbox process ends them all.
  4. the daemons see the layers in the keeper's own mount namespace (Mf): the host's
     paths bound on a tmpfs, where the upper layers live too (a tmpfs of Mf: freed when
     the keeper and its daemons are gone). fuse-overlayfs over a SquashFS file uses a
     squashfuse mount the keeper made in Mf; with the kernel's overlayfs, init mounts
     squashfuse in its workspace instead, where the kernel's overlay can use it.

Only the daemon and nobody else holds a descriptor of a connection once it runs, so a
daemon that dies aborts its mount (ENOTCONN), never hangs it. The keeper notices, says
so, and exits; so does its lifeline, a pipe whose write end only the keeper holds: its
read end in stage-1 raises SIGIO at the keeper's end however it came (fcntl(2),
O_ASYNC), and stage-1 ends the sandbox (a file system gone under a running command
helps nobody). When init is gone (EOF on the control pipe), the keeper kills its
daemons, reaps them and exits; stage-1 waits for that, so rbox returns with nothing
left.
"""

from __future__ import annotations

import os
import select
import signal

from rootless import log, overlay, sync
from rootless import syscalls as sc
from rootless.errors import BUG_HINT, MountError, RboxError
from rootless.overlay import FUSE, Layer

TYPE_CHECKING = False  # not `from typing import ...`: typing costs 9 ms at start-up
if TYPE_CHECKING:
    from rootless.spec import Spec

PLACE = "/tmp"           # where the keeper's tmpfs goes in its own mount namespace
DAEMON_FD = 3            # the /dev/fuse descriptor, as the daemon sees it
CAPABILITIES = (sc.CAP_CHOWN, sc.CAP_DAC_OVERRIDE, sc.CAP_DAC_READ_SEARCH, sc.CAP_FOWNER, sc.CAP_FSETID,
                sc.CAP_MKNOD, sc.CAP_SETFCAP)
STOP_GRACE = 2.0

# Set in stage-1 before the forks, inherited by init: /dev/fuse descriptors by job name,
# the write end of the pipe to the keeper, and the read end of the keeper's answers (a
# daemon that ended during setup, after its words were printed).
FDS: dict[str, int] = {}
CONTROL = [-1]
ANSWERS = [-1]
ANSWER_WAIT = 2.0


class Job:
    """One daemon: `sqN` (squashfuse) or `ovN` (fuse-overlayfs) for layer N."""

    __slots__ = ("name", "tool", "layer", "by_init")

    def __init__(self, name: str, tool: str, layer: Layer, by_init: bool):
        self.name, self.tool, self.layer, self.by_init = name, tool, layer, by_init


def jobs(found: list[Layer], driver: str) -> list[Job]:
    """The daemons a sandbox needs (pure). `by_init`: init mounts it (in the sandbox's
    tree or workspace); else the keeper does (squashfuse under fuse-overlayfs)."""
    out = []
    for layer in found:
        fuse_overlay = layer.overlay and driver == FUSE
        if layer.sqfs:
            out.append(Job(f"sq{layer.n}", "squashfuse", layer, by_init=not fuse_overlay))
        if fuse_overlay:
            out.append(Job(f"ov{layer.n}", "fuse-overlayfs", layer, by_init=True))
    return out


# --- stage-1 ------------------------------------------------------------------------------

class Keeper:
    """Stage-1's handle on the keeper."""

    def __init__(self, pid: int, lifeline: int):
        self.pid, self.lifeline, self.init_pid = pid, lifeline, 0

    def init_forked(self, init_pid: int) -> None:
        """After init is forked: it has its copies; stage-1 drops its own, so that only
        the daemons hold a connection and only init holds the pipe (EOF: init is gone).
        From now on the keeper's end ends the sandbox."""
        for fd in (*FDS.values(), CONTROL[0], ANSWERS[0]):
            os.close(fd)
        FDS.clear()
        CONTROL[0] = ANSWERS[0] = -1
        self.init_pid = init_pid
        import fcntl

        signal.signal(signal.SIGIO, self._keeper_gone)
        fcntl.fcntl(self.lifeline, fcntl.F_SETOWN, os.getpid())
        fcntl.fcntl(self.lifeline, fcntl.F_SETFL, fcntl.fcntl(self.lifeline, fcntl.F_GETFL) | os.O_ASYNC)
        self._keeper_gone(signal.SIGIO, None)     # in case it ended before O_ASYNC was set

    def _keeper_gone(self, signo: int, frame: object) -> None:
        """SIGIO: the lifeline's state changed. When the keeper has ended and init still
        runs, its file systems are gone: end the sandbox. init is looked at without
        reaping it (WNOWAIT): only stage-1 reaps it, so the pid cannot name another."""
        try:
            if select.select([self.lifeline], [], [], 0)[0] == [] or os.read(self.lifeline, 1) != b"":
                return
            if os.waitid(os.P_PID, self.init_pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return                  # init has ended: the keeper's end is the normal one
            # Its descriptors close before it is a zombie: wait the moment for that.
            keeper = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        except (ChildProcessError, OSError):
            return
        if keeper is not None and keeper.si_code == os.CLD_KILLED:
            log.warn(f"rbox's FUSE keeper (pid {self.pid}) was killed by signal {keeper.si_status}: the sandbox's "
                     "file systems are gone; the sandbox ends")
        os.kill(self.init_pid, signal.SIGKILL)

    def finish(self) -> None:
        """After init exited: the keeper kills and reaps its daemons; wait for it."""
        import time

        signal.signal(signal.SIGIO, signal.SIG_IGN)
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline:
            if os.waitpid(self.pid, os.WNOHANG)[0] == self.pid:
                return
            time.sleep(0.002)
        log.step("the FUSE keeper did not end: killed")
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


def start(spec: Spec, found: list[Layer]) -> Keeper | None:
    """In stage-1, in U1, before the sandbox's PID namespace exists: the keeper, ready
    (its mount namespace and layers set up), or None when no daemon is needed."""
    todo = jobs(found, spec.overlay_driver)
    if not todo:
        return None
    for job in todo:
        try:
            FDS[job.name] = os.open(overlay.FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise MountError(f"cannot open {overlay.FUSE_DEVICE} for {job.tool}: {e.strerror}",
                             hint="an administrator can run `chmod 0666 /dev/fuse` (udev's default on Debian)"
                             ) from None
    control_r, CONTROL[0] = os.pipe()
    ANSWERS[0], answers_w = os.pipe()
    lifeline, keeper_end = os.pipe()
    ours, theirs = sync.channel_pair(child="the FUSE keeper", parent="stage-1")
    stage1 = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ours.close()
            os.close(CONTROL[0])
            os.close(ANSWERS[0])
            os.close(lifeline)
            code = _keeper(spec, found, todo, control_r, answers_w, theirs, stage1, keeper_end)
        except BaseException as e:  # noqa: BLE001 - a forked child must never return
            log.write_raw(f"rbox: error: the FUSE keeper: {type(e).__name__}: {e}\n")
        finally:
            os._exit(code)
    os.close(control_r)
    os.close(answers_w)
    os.close(keeper_end)
    theirs.close()
    try:
        ours.expect("READY", timeout=30.0)
    finally:
        ours.close()
    for job in todo:
        if not job.by_init:         # the keeper's own mount: its daemon alone holds it now
            os.close(FDS.pop(job.name))
    log.step(f"FUSE keeper: host pid {pid}, outside the sandbox's PID namespace")
    return Keeper(pid, lifeline)


# --- init -----------------------------------------------------------------------------

def mount(name: str, target: str, tool: str, flags: int, what: str) -> None:
    """Mount FUSE job `name` at `target` with its descriptor, have the keeper start its
    daemon, and wait until the daemon answers (the kernel queues requests until then)."""
    fd = FDS.pop(name)
    data = (f"fd={fd},rootmode=40000,user_id={os.geteuid()},group_id={os.getegid()},"
            "default_permissions,allow_other")
    try:
        sc.mount(tool, target, f"fuse.{tool}", flags, data)
    except OSError as e:
        raise MountError(f"cannot mount {tool} for {what}: {e.strerror}",
                         hint="FUSE mounts in a user namespace need Linux 4.18; run `rbox check`") from None
    finally:
        os.close(fd)
    _tell(f"start {name}", f"cannot start {tool} for {what}")
    try:
        os.stat(target)
    except OSError as e:
        _await_answer(name)         # its words first: the parent ends everything after this error
        raise MountError(f"{tool} for {what} did not start: {e.strerror}",
                         hint=f"its own message is above; run `{tool}` by hand to see why") from None
    log.step(f"{tool} serves {what}")


def built() -> None:
    """In init, once the tree is complete: from now on a daemon's death ends the sandbox."""
    if CONTROL[0] >= 0:
        _tell("built", "cannot reach the FUSE keeper")


def _await_answer(name: str) -> None:
    """Wait (a moment at most) until the keeper has reported the end of daemon `name`."""
    import time

    deadline, got = time.monotonic() + ANSWER_WAIT, b""
    while f"ended {name}\n".encode() not in got:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([ANSWERS[0]], [], [], left)[0]:
            return
        chunk = os.read(ANSWERS[0], 4096)
        if not chunk:
            return
        got += chunk


def _tell(line: str, what: str) -> None:
    try:
        os.write(CONTROL[0], (line + "\n").encode())
    except OSError as e:
        raise MountError(f"{what}: rbox's FUSE keeper is gone ({e.strerror})",
                         hint="its message is above; run again with --debug") from None


# --- the keeper ---------------------------------------------------------------------------

def _keeper(spec: Spec, found: list[Layer], todo: list[Job], control: int, answers: int, chan: sync.Channel,
            stage1: int, lifeline: int) -> int:
    log.set_role("fuse")
    sc.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != stage1:
        return 1
    os.setsid()                # no terminal: Ctrl-C is for the command, not the file systems
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)           # the command's input and output are none of its business;
    os.dup2(null, 1)           # only its warnings go to rbox's stderr
    keep = {0, 1, 2, control, answers, chan.rfd, chan.wfd, lifeline, *FDS.values()}
    for name in os.listdir("/proc/self/fd"):
        if int(name) not in keep:
            try:
                os.close(int(name))
            except OSError:
                pass
    try:
        ready = _setup(found, todo, spec)
    except RboxError as e:
        chan.send_error(e)
        return 1
    except OSError as e:
        chan.send_error(RboxError(f"cannot prepare the FUSE daemons' layers: {e.strerror} ({e.filename})",
                                  hint=BUG_HINT))
        return 1
    daemons = _Daemons(spec, ready, answers)
    for job in todo:
        if not job.by_init:
            daemons.start(job)
    chan.send("READY")
    chan.close()
    return daemons.serve(control, {job.name: job for job in todo})


def _setup(found: list[Layer], todo: list[Job], spec: Spec) -> dict[int, str]:
    """The keeper's mount namespace: a tmpfs at PLACE with, for layer N, `N/lower` (the
    host directory, bound) or `N/archive` (the SquashFS file, bound), and `N/rw` (on the
    tmpfs, or the kept directory bound). Returns layer number -> its directory."""
    needed = {job.layer.n for job in todo}
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    sources = {}
    for layer in found:
        if layer.n in needed:
            for path in (layer.lower, layer.sqfs, layer.keep):
                if path is not None:
                    # Opened before the tmpfs may cover them, in this namespace (a bind's
                    # source must be a mount of the caller's own: EINVAL otherwise).
                    sources[path] = os.open(path, os.O_PATH | os.O_CLOEXEC)
    sc.mount("tmpfs", PLACE, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=0700")
    dirs = {}
    for layer in found:
        if layer.n not in needed:
            continue
        base = dirs[layer.n] = f"{PLACE}/{layer.n}"
        os.makedirs(f"{base}/lower")
        os.mkdir(f"{base}/rw")
        if layer.lower is not None:
            _bind(sources[layer.lower], f"{base}/lower")
        if layer.sqfs is not None:
            open(f"{base}/archive", "w").close()
            _bind(sources[layer.sqfs], f"{base}/archive")
        if layer.keep is not None:
            _bind(sources[layer.keep], f"{base}/rw")
    for fd in sources.values():
        os.close(fd)
    return dirs


def _bind(fd: int, target: str) -> None:
    sc.mount(f"/proc/self/fd/{fd}", target, None, sc.MS_BIND)


class _Daemons:
    def __init__(self, spec: Spec, dirs: dict[int, str], answers: int):
        self.spec, self.dirs, self.answers = spec, dirs, answers
        self.running: dict[int, tuple[Job, int]] = {}      # pid -> (job, its output memfd)
        self.built = False
        self.stopping = False

    def argv(self, job: Job) -> list[str]:
        base = self.dirs[job.layer.n]
        program = self.spec.fuse_programs[job.tool]
        if job.tool == "squashfuse":
            return [program, "-f", f"{base}/archive", f"/dev/fd/{DAEMON_FD}"]
        upper, work = overlay.prepare_upper(f"{base}/rw", f"{base}/lower", FUSE, job.layer.keep is not None)
        # writeback=0: every write reaches the upper layer before write(2) returns, so
        # nothing is lost when the daemon is killed at the end (a kept upper layer).
        # noacl over squashfuse, which answers EOPNOTSUPP for ACLs: the kernel would
        # refuse every access that needs one (all but the owner's); the mode bits decide.
        noacl = ",noacl" if job.layer.sqfs else ""
        return [program, "-f", "-o", f"lowerdir={base}/lower,upperdir={upper},workdir={work},writeback=0{noacl}",
                f"/dev/fd/{DAEMON_FD}"]

    def start(self, job: Job) -> None:
        if not job.by_init:
            # squashfuse under fuse-overlayfs: mounted here, in the keeper's namespace.
            target = f"{self.dirs[job.layer.n]}/lower"
            sc.mount("squashfuse", target, "fuse.squashfuse", sc.MS_NODEV | sc.MS_NOSUID | sc.MS_RDONLY,
                     f"fd={FDS[job.name]},rootmode=40000,user_id={os.geteuid()},group_id={os.getegid()},"
                     "default_permissions,allow_other")
        argv = self.argv(job)
        fd = FDS.pop(job.name)
        output = os.memfd_create(f"rbox-{job.tool}", os.MFD_CLOEXEC)
        keeper = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                _exec_daemon(argv, fd, output, keeper)
            finally:
                os._exit(127)
        os.close(fd)
        self.running[pid] = (job, output)
        log.step(f"{job.tool} for {job.layer.what}: host pid {pid}: {' '.join(argv)}")

    def serve(self, control: int, by_name: dict[str, Job]) -> int:
        """Start daemons as init asks; when one dies, say so, and once the sandbox is
        built, exit (stage-1 then ends it: Keeper._keeper_gone); stop them all when init
        is gone."""
        signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGCHLD,))
        from rootless.signals import signalfd

        children = signalfd((signal.SIGCHLD,))
        poller = select.poll()
        poller.register(control, select.POLLIN)
        poller.register(children, select.POLLIN)
        pending = b""
        while True:
            ready = dict(poller.poll())
            if children in ready:       # first: a daemon that died says so, even as init ends
                os.read(children, 128)
                if self.reap() and self.built:
                    return self.stop(1)
            if control in ready:
                chunk = os.read(control, 4096)
                if not chunk:
                    return self.stop()
                pending += chunk
                while b"\n" in pending:
                    line, _, pending = pending.partition(b"\n")
                    self.order(line.decode(errors="replace"), by_name)

    def order(self, line: str, by_name: dict[str, Job]) -> None:
        word, _, arg = line.partition(" ")
        if word == "built":
            self.built = True
        elif word == "start" and arg in by_name:
            try:
                self.start(by_name[arg])
            except OSError as e:
                self.reap_soon()            # a squashfuse under it that died first says so first
                log.warn(f"cannot start {by_name[arg].tool} for {by_name[arg].layer.what}: {e.strerror}")
                self.answer(f"ended {arg}")
                if arg in FDS:
                    # The connection's last descriptor: init's wait for the daemon fails
                    # at once (ENOTCONN) and says so, instead of waiting for nobody.
                    os.close(FDS.pop(arg))

    def reap(self) -> bool:
        """Reap the daemons that ended; whether one ended on its own (said so)."""
        died = False
        while self.running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            job, output = self.running.pop(pid, (None, -1))
            if job is None:
                continue
            if not self.stopping and status != 0:       # 0: its mount went away, as at the end
                died = True
                how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                       else f"exit status {os.waitstatus_to_exitcode(status)}")
                said = _tail(output)
                end = "; the sandbox ends" if self.built else ""
                log.warn(f"{job.tool} for {job.layer.what} ended ({how}){': ' + said if said else ''}{end}")
                self.answer(f"ended {job.name}")
            os.close(output)
        return died

    def reap_soon(self) -> None:
        """Reap what is ending right now (a connection aborts when its daemon's
        descriptors close, a moment before the daemon is a zombie)."""
        import time

        deadline = time.monotonic() + 0.5
        while self.running and not self.reap() and time.monotonic() < deadline:
            time.sleep(0.01)

    def answer(self, line: str) -> None:
        try:
            os.write(self.answers, (line + "\n").encode())
        except OSError:
            pass                        # init is gone, or not listening any more

    def stop(self, code: int = 0) -> int:
        self.reap()                     # those that died on their own say so first
        self.stopping = True
        for pid in self.running:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while self.running:
            pid, _ = os.waitpid(-1, 0)
            self.running.pop(pid, None)
        return code


def _exec_daemon(argv: list[str], fd: int, output: int, keeper: int) -> None:
    """In the daemon's child: descriptors, signals, privileges, then exec (never returns
    but by an exception)."""
    sc.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != keeper:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(output, 1)
    os.dup2(output, 2)
    if fd != DAEMON_FD:
        os.dup2(fd, DAEMON_FD)          # inheritable; everything else stays close-on-exec
    else:
        os.set_inheritable(fd, True)
    from rootless.signals import ALL_SIGNALS

    for sig in ALL_SIGNALS:
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    sc.keep_only_capabilities(CAPABILITIES)
    sc.set_no_new_privs()
    os.execv(argv[0], argv)


def _tail(output: int) -> str:
    try:
        os.lseek(output, 0, os.SEEK_SET)
        text = os.read(output, 65536).decode(errors="replace")
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if line.strip() and "unknown argument ignored" not in line]
    return " / ".join(lines[-3:])

