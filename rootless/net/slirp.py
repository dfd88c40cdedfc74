"""The slirp4netns driver: user-mode networking from outside the sandbox.

Runs in: parent.

slirp4netns joins PID 1's user and network namespaces, creates tap0 and configures it
(`--configure`), and relays its traffic through ordinary sockets of the host. rbox:
- detects what the installed version offers from its --help (rootlesskit's
  DetectFeatures); `detect_features` is pure and tested on several versions' texts;
- passes `--disable-host-loopback` unless --allow-host-loopback: otherwise 10.0.2.2
  reaches every service on the host's 127.0.0.1 (other users' notebooks, databases);
- passes `--enable-sandbox` and `--enable-seccomp` when offered;
- waits for `--ready-fd` with a deadline while watching the process (it may die first);
- holds the write end of `--exit-fd`: when rbox exits, even by SIGKILL, the kernel
  closes it and slirp4netns exits (slirp4netns(1): "exits when a poll(2) event happens
  on the FD"), so slirp4netns never outlives the sandbox;
- publishes ports through the API socket, in a locked directory of rbox's own state
  (state.py), which is removed as soon as that is done.
"""

from __future__ import annotations

import _signal as signal  # not `signal`: it imports enum (3 ms at start-up); signals.py says more
import errno
import os

from rootless import log, net, spawn, state
from rootless.errors import HostSetupError, NetworkError, resource_hint, resource_hint_in
from rootless.net.ports import Port
from rootless.signals import name as signal_name
from rootless.userns import which

KNOWN = ("--configure", "--ready-fd", "--exit-fd", "--mtu", "--api-socket", "--disable-host-loopback",
         "--enable-sandbox", "--enable-seccomp", "--netns-type", "--userns-path", "--disable-dns")
REQUIRED = ("--configure", "--ready-fd", "--exit-fd", "--mtu")
READY_FD, EXIT_FD = 3, 4
READY_TIMEOUT = 10.0


def detect_features(help_text: str) -> frozenset[str]:
    """The long options this slirp4netns offers, from its --help output (pure).

    Only an option that starts a line counts (`-c, --configure  bring up ...`): the
    descriptions mention other options, which a plain substring search would take for
    offered ones."""
    offered = set()
    for line in help_text.splitlines():
        for word in line.replace(",", " ").split()[:2]:
            if word.startswith("--"):
                offered.add(word.partition("=")[0])
    return frozenset(opt for opt in KNOWN if opt in offered)


def build_argv(binary: str, features: frozenset[str], init_pid: int, allow_host_loopback: bool,
               api_socket: str | None) -> list[str]:
    """The command line (pure): the issue's defaults, what the version supports."""
    argv = [binary, "--configure", f"--mtu={net.MTU}", f"--ready-fd={READY_FD}", f"--exit-fd={EXIT_FD}"]
    if not allow_host_loopback:
        argv.append("--disable-host-loopback")
    for hardening in ("--enable-sandbox", "--enable-seccomp"):
        if hardening in features:
            argv.append(hardening)
    if api_socket:
        argv.append(f"--api-socket={api_socket}")
    return [*argv, str(init_pid), net.TAP]


def check_features(features: frozenset[str], allow_host_loopback: bool, publish: bool) -> None:
    missing = [opt for opt in REQUIRED if opt not in features]
    if not allow_host_loopback and "--disable-host-loopback" not in features:
        # Without it, the host's loopback services are open to the sandbox: refuse.
        missing.append("--disable-host-loopback")
    if publish and "--api-socket" not in features:
        missing.append("--api-socket")
    if missing:
        raise HostSetupError(f"the installed slirp4netns is too old: it lacks {', '.join(missing)}",
                             hint="install slirp4netns 0.4.0 or later, or run with --net=pasta or --net=none")


def preflight(path: str | None) -> str:
    """The slirp4netns binary, after the host checks that can be made before forking."""
    binary = which("slirp4netns", path)
    if binary is None:
        raise HostSetupError("slirp4netns is not installed (Debian package `slirp4netns`)", hint=fix("slirp4netns"))
    check_tun()
    return binary


def fix(key: str) -> str:
    """hostcheck's fix text, loaded only for an error: hostcheck is `rbox check`'s module."""
    from rootless.hostcheck import FIX

    return FIX[key]


def check_tun(device: str = "/dev/net/tun") -> None:
    if not os.access(device, os.R_OK | os.W_OK):
        raise HostSetupError(f"cannot use `{device}`: permission denied (it is not mode 0666)",
                             hint=fix("tun").replace("/dev/net/tun", device) + "; --net=none runs without a network")


def probe_features(probe: spawn.Helper) -> frozenset[str]:
    """The features, from a `slirp4netns --help` started earlier (see SlirpDriver)."""
    status = probe.wait_exit(5.0)
    text = probe.output_text()
    probe.stop()
    if status is None:
        raise NetworkError(f"`{probe.argv[0]} --help` did not finish within 5 s",
                           hint="the machine may be overloaded: try again, or run with --net=none")
    return detect_features(text)


class SlirpDriver:
    """One slirp4netns process serving one sandbox."""

    def __init__(self, binary: str, allow_host_loopback: bool, ports: list[Port]):
        self.binary, self.allow_host_loopback, self.ports = binary, allow_host_loopback, ports
        self.helper: spawn.Helper | None = None
        self.exit_w: int | None = None
        # Asked now, answered while the id maps are written: off the critical path.
        self.probe: spawn.Helper | None = spawn.Helper([binary, "--help"])

    def start(self, init_pid: int, abort_fd: int | None = None) -> None:
        assert self.probe is not None
        features = probe_features(self.probe)
        self.probe = None
        check_features(features, self.allow_host_loopback, bool(self.ports))
        api_dir = state.create() if self.ports else None
        api = f"{api_dir.path}/slirp.sock" if api_dir else None
        ready_r, ready_w = os.pipe()
        exit_r, self.exit_w = os.pipe()
        try:
            argv = build_argv(self.binary, features, init_pid, self.allow_host_loopback, api)
            # With --enable-sandbox, slirp4netns creates the API socket as root of the
            # sandbox's user namespace, which is a subordinate uid in the own-identity
            # map: with the usual umask, rbox could not connect to it. The socket's
            # directory is private (0700), so a permissive mode on the socket is safe.
            umask = os.umask(0) if api else None
            try:
                self.helper = spawn.Helper(argv, {ready_w: READY_FD, exit_r: EXIT_FD})
            finally:
                if umask is not None:
                    os.umask(umask)
            os.close(ready_w)
            os.close(exit_r)
            self._wait_ready(ready_r, abort_fd)
            if api:
                from rootless.net import api as slirp_api

                for port in self.ports:
                    slirp_api.add_hostfwd(api, port)
        finally:
            os.close(ready_r)
            if api_dir:
                api_dir.remove()

    def _wait_ready(self, ready_r: int, abort_fd: int | None) -> None:
        assert self.helper is not None
        answered = self.helper.wait_readable(ready_r, READY_TIMEOUT, abort_fd)
        if answered and os.read(ready_r, 1) == b"1":
            log.step("slirp4netns is ready")
            return
        # The ready descriptor closed without `1` (slirp4netns gave up), or it exited,
        # or the deadline passed: each said as what it is.
        status = self.helper.wait_exit(1.0) if answered else self.helper.poll_exit()
        output = self.helper.output_tail()
        if status is not None:
            raise NetworkError(f"slirp4netns {exit_words(status)} before becoming ready: {output}",
                               hint=failure_hint(output))
        if answered:
            raise NetworkError(f"slirp4netns gave up before becoming ready: {output}", hint=failure_hint(output))
        raise NetworkError(f"slirp4netns did not become ready within {READY_TIMEOUT:g} s: {output}",
                           hint=resource_hint_in(output) or "the machine may be overloaded: try again, or run "
                           "with --net=none")

    # -- while the command runs (parent.py watches watch_fd) ----------------------------

    @property
    def watch_fd(self) -> int | None:
        """Readable once slirp4netns has exited (spawn.Helper.exit_fd); None before it started."""
        return self.helper.exit_fd if self.helper is not None else None

    def death_note(self) -> str:
        """What happened to slirp4netns, once watch_fd is readable."""
        assert self.helper is not None
        status = self.helper.wait_exit(1.0)
        return f"slirp4netns (pid {self.helper.pid}) {exit_words(status)}{_said(status, self.helper)}"

    def stop(self) -> None:
        """The sandbox is gone: nothing is left for slirp4netns to finish, so it is
        killed at once (see spawn.Helper.kill_now)."""
        if self.probe is not None:
            self.probe.stop(signo=signal.SIGKILL)
            self.probe = None
        if self.helper is not None:
            self.helper.kill_now()
            self.helper = None
        if self.exit_w is not None:
            os.close(self.exit_w)
            self.exit_w = None


def exit_words(status: int | None) -> str:
    """`exited with status 1`, `was killed by signal 9 (SIGKILL)` (from a wait status)."""
    if status is None:
        return "ended"
    if os.WIFSIGNALED(status):
        signo = os.WTERMSIG(status)
        try:
            name = f" ({signal_name(signo)})"
        except ValueError:
            name = ""
        return f"was killed by signal {signo}{name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _said(status: int | None, helper: spawn.Helper) -> str:
    """The helper's last words, when it exited by itself (a signal leaves none)."""
    if status is None or not os.WIFEXITED(status) or os.WEXITSTATUS(status) > 128:
        return ""
    output = helper.output_tail(200)
    return f" (it said: {output})" if output != "no output" else ""


def failure_hint(output: str) -> str:
    """What to do about a helper that failed, from what it said (slirp4netns, pasta)."""
    if "/dev/net/tun" in output:
        return "an administrator can run `chmod 0666 /dev/net/tun`; --net=none runs without a network"
    hint = resource_hint_in(output)
    if hint is None and near_process_limit():
        # pasta says only "Failed to get netlink socket" when its clone() fails.
        hint = resource_hint(errno.EAGAIN)
    return hint or "run `rbox check` to see what this host lacks; --net=none runs without a network"


def near_process_limit(margin: int = 4) -> bool:
    """Whether this uid's processes and threads are within `margin` of RLIMIT_NPROC
    (which counts them all, by real uid)."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    if limit == resource.RLIM_INFINITY or limit > 4096:
        return False              # not worth counting: no one sets a limit that high by mistake
    count = 0
    uid = str(os.getuid())
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/status") as f:
                if entry.isdigit() and next(line for line in f if line.startswith("Uid:")).split()[1] == uid:
                    count += len(os.listdir(f"/proc/{entry}/task"))
        except (OSError, StopIteration):
            continue
    return count + margin >= limit
