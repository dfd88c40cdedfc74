"""The pasta driver (Debian package passt): the same network as slirp4netns, faster.

Runs in: parent.

pasta joins PID 1's user and network namespaces and configures the interface itself
(`--config-net`) with the same addresses as slirp4netns. It runs in the foreground
under a watchdog shell that rbox starts:

    "$@" 4>&- & p=$!; (read _ <&3; kill -TERM "$p") 4>&- & wait "$p"

Fd 3 is a pipe whose write end only rbox holds. When rbox exits, even by SIGKILL and even
in the middle of setting up, the kernel closes that end, the read returns and pasta is
stopped: pasta has no --exit-fd, and the version in Debian 12 does not exit when the
sandbox's namespaces go away. The shell itself exits when pasta does, so a pasta that
fails at once is noticed at once.

pasta's `--pid FILE` is a FIFO that rbox holds open for reading: pasta writes its pid
there once the namespace is configured, which makes it a ready fd (EOF means pasta
failed first). The FIFO lives in a locked directory of rbox's own state (state.py),
removed right after.
Choices, after podman's (options/network.md): `-T none -U none` (no automatic forwarding
of the host's ports into the sandbox, which would open the host's loopback services),
`--no-map-gw` unless --allow-host-loopback (the gateway would reach the host's loopback),
`--dns-forward` so that 10.0.2.3 answers DNS as under slirp4netns.
"""

from __future__ import annotations

import _signal as signal  # not `signal`: it imports enum (3 ms at start-up); signals.py says more
import os

from rootless import kernel, log, net, spawn, state
from rootless.errors import HostSetupError, NetworkError, resource_hint_in
from rootless.net.ports import Port
from rootless.net.slirp import READY_TIMEOUT, _said, check_tun, exit_words, failure_hint
from rootless.userns import which


def preflight(path: str | None) -> str:
    binary = which("pasta", path)
    if binary is None:
        raise HostSetupError("pasta is not installed (Debian package `passt`)",
                             hint="an administrator can install it; --net=slirp4netns (the default) or "
                                  "--net=none run without it")
    check_tun()
    return binary


def port_spec(ports: list[Port], proto: str) -> str:
    """pasta's -t/-u SPEC for our ports: ADDR/HOST_PORT:GUEST_PORT,... or `none` (pure)."""
    chosen = [f"{p.host_ip}/{p.host_port}:{p.guest_port}" for p in ports if p.proto == proto]
    return ",".join(chosen) or "none"


def build_argv(binary: str, init_pid: int, allow_host_loopback: bool, ports: list[Port],
               pid_path: str) -> list[str]:
    argv = [binary, "--config-net", "--quiet", "--ns-ifname", net.TAP, "--address", net.GUEST_IP,
            "--netmask", str(net.PREFIX), "--gateway", net.GATEWAY, "--mtu", str(net.MTU),
            "--dns-forward", net.DNS, "--tcp-ports", port_spec(ports, "tcp"),
            "--udp-ports", port_spec(ports, "udp"), "--tcp-ns", "none", "--udp-ns", "none",
            "--pid", pid_path]
    if not allow_host_loopback:
        argv.append("--no-map-gw")
    return [*argv, str(init_pid)]


# Fd 4: the watchdog's exit pipe before Linux 5.3 (spawn.Helper), kept from its children
# so that it closes when the watchdog exits; where it is not open, `4>&-` does nothing.
WATCHDOG = '"$@" 4>&- & p=$!; (read _ <&3; kill -TERM "$p" 2>/dev/null) 4>&- & wait "$p"'


class PastaDriver:
    def __init__(self, binary: str, allow_host_loopback: bool, ports: list[Port]):
        self.binary, self.allow_host_loopback, self.ports = binary, allow_host_loopback, ports
        self.watchdog: spawn.Helper | None = None
        self.lifeline: int | None = None
        self.pid = 0
        self.pidfd: int | None = None       # pasta's own, to notice at once when it dies

    def start(self, init_pid: int, abort_fd: int | None = None) -> None:
        if self.ports:
            from rootless.net import api

            for port in self.ports:
                api.check_free(port)
        private = state.create()
        try:
            os.mkfifo("ready", 0o600, dir_fd=private.fd)
            # Opened before pasta opens it to write.
            ready = os.open("ready", os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=private.fd)
        except OSError as e:
            private.remove()
            raise NetworkError(f"cannot make pasta's FIFO in `{private.path}`: {e.strerror}",
                               hint=resource_hint_in(e.strerror or "") or "--net=slirp4netns (the default) needs "
                                    "no FIFO") from None
        fifo = f"{private.path}/ready"
        lifeline_r, self.lifeline = os.pipe()
        try:
            argv = build_argv(self.binary, init_pid, self.allow_host_loopback, self.ports, fifo)
            self.watchdog = spawn.Helper(["/bin/sh", "-c", WATCHDOG, "rbox-pasta", argv[0], "--foreground",
                                          *argv[1:]], {lifeline_r: 3}, exit_pipe_at=4)
            os.close(lifeline_r)
            self._wait_ready(ready, abort_fd)
        finally:
            os.close(ready)
            private.remove()

    def _wait_ready(self, ready: int, abort_fd: int | None) -> None:
        assert self.watchdog is not None
        pid = b""
        if self.watchdog.wait_readable(ready, READY_TIMEOUT, abort_fd):
            pid = os.read(ready, 64).strip()
        if pid.isdigit():
            self.pid = int(pid)
            log.step(f"pasta is ready (pid {self.pid})")
            try:
                self.pidfd = kernel.pidfd_open(self.pid)      # None before Linux 5.3: the watchdog's tells
            except ProcessLookupError:
                self.pidfd = None           # gone already: the watchdog's exit tells
            return
        status = self.watchdog.wait_exit(1.0)
        output = self.watchdog.output_tail()
        if status is None:
            raise NetworkError(f"pasta did not finish setting up within {READY_TIMEOUT:g} s: {output}",
                               hint=resource_hint_in(output) or "the machine may be overloaded: try again, or run "
                               "with --net=slirp4netns")
        raise NetworkError(f"pasta failed with status {os.waitstatus_to_exitcode(status)}: {output}",
                           hint=failure_hint(output))

    # -- while the command runs (parent.py watches watch_fd) ----------------------------

    @property
    def watch_fd(self) -> int | None:
        """Readable once pasta has exited (its pidfd, else its watchdog's exit_fd)."""
        if self.pidfd is not None:
            return self.pidfd
        return self.watchdog.exit_fd if self.watchdog is not None else None

    def death_note(self) -> str:
        """What happened to pasta, once watch_fd is readable. The watchdog shell waits
        for pasta and exits with its status (128+N when a signal N killed it)."""
        assert self.watchdog is not None
        status = self.watchdog.wait_exit(1.0)
        if status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) > 128:
            words = exit_words(os.WEXITSTATUS(status) - 128)     # as a wait status: killed by that signal
        else:
            words = exit_words(status)
        return f"pasta (pid {self.pid}) {words}{_said(status, self.watchdog)}"

    def stop(self) -> None:
        """The sandbox is gone: kill pasta at once; its watchdog shell then exits."""
        if self.pid:
            try:
                if self.pidfd is not None:
                    signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)    # never a reused pid
                else:
                    os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.pid = 0
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        if self.lifeline is not None:
            os.close(self.lifeline)        # the watchdog's reader exits too
            self.lifeline = None
        if self.watchdog is not None:
            self.watchdog.kill_now()       # its pasta is dead; it would only wait for it
            self.watchdog = None
