"""The network drivers, for real, as the unprivileged user (rootlesskit's conformance
suite idea: the same tests over every driver).

Traffic never leaves the machine: servers listen on the host's 127.0.0.1, clients run in
the sandbox's own network namespace, and 10.0.2.2 is probed without --allow-host-loopback
on the real host only under slirp4netns, which answers it itself. Under pasta without
that option, 10.0.2.2 is an ordinary address on the host's network: there it is probed
only from inside a private "host" network namespace whose one outbound interface leads
nowhere (privnet.py), so the probe cannot leave.

Isolation is asserted on what a probe from inside gets, with the exact outcome per
backend, and each probe has a positive control (--allow-host-loopback) that reaches the
same service, so a probe that could never succeed would be noticed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.integration.helpers import (
    PAYLOAD,
    children,
    descendants,
    kill_all,
    live_processes,
    py,
    rbox_env,
    run_rbox,
    wait_until,
)
from tests.integration.privnet import SECRET, Services
from tests.integration.test_identity import facts

pytestmark = pytest.mark.needs_userns
DRIVERS = [pytest.param("slirp4netns", marks=pytest.mark.needs_slirp4netns),
           pytest.param("pasta", marks=pytest.mark.needs_pasta)]
HELPER_NAMES = ("slirp4netns", "pasta", "passt", "passt.avx2")
PRIVNET = str(Path(__file__).with_name("privnet.py"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.read().decode()
    except OSError:
        return None


def helpers_running() -> list[str]:
    return [cmd for cmd in live_processes().values()
            if os.path.basename(cmd.split(" ", 1)[0]) in HELPER_NAMES or " rbox-pasta " in cmd]


@pytest.mark.parametrize("driver", DRIVERS)
def test_interface_address_gateway_and_dns_config(driver: str) -> None:
    code = ("import fcntl, socket, struct\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "addr = fcntl.ioctl(s.fileno(), 0x8915, struct.pack('256s', b'tap0'))[20:24]\n"
            "print('address=' + socket.inet_ntoa(addr))\n"
            "gw = [l.split()[2] for l in open('/proc/net/route') if l.split()[1] == '00000000'][0]\n"
            "print('gateway=' + socket.inet_ntoa(struct.pack('<I', int(gw, 16))))\n")
    payload = " ".join(py("netdevs")[1:])
    r = run_rbox("run", f"--net={driver}", "--hostname", "netbox", "--", "sh", "-c",
                 f"{payload}; {sys.executable} -c \"{code}\"; grep ^nameserver /etc/resolv.conf; tail -n1 /etc/hosts")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == ["netdevs=lo tap0", "address=10.0.2.100", "gateway=10.0.2.2"]
    assert lines[3:] == ["nameserver 10.0.2.3", "10.0.2.100\tnetbox"]


@pytest.fixture
def services():
    found = Services()
    yield found
    found.close()


@pytest.mark.needs_slirp4netns
def test_host_loopback_is_refused_by_default_with_slirp4netns(services: Services) -> None:
    # slirp4netns answers for 10.0.2.2 and 10.0.2.3 itself: with --disable-host-loopback
    # it rejects connections meant for the host's loopback (ICMP net unreachable); the
    # sandbox's own 127.0.0.1 has nothing listening (RST).
    probes = [f"tcp:10.0.2.2:{services.tcp}", f"tcp:10.0.2.3:{services.tcp}", f"tcp:127.0.0.1:{services.tcp}",
              f"udp:127.0.0.1:{services.udp}"]
    r = run_rbox("run", "--net=slirp4netns", *py("connect", *probes))
    assert r.returncode == 0, r.stderr
    expected = ["ENETUNREACH", "ENETUNREACH", "ECONNREFUSED", "ECONNREFUSED"]
    assert facts(r.stdout) == dict(zip(probes, expected, strict=True))


@pytest.mark.needs_pasta
def test_host_loopback_ports_are_not_forwarded_into_the_sandbox_with_pasta(services: Services) -> None:
    # pasta's default `-T auto -U auto` would make the host's 127.0.0.1 ports appear on
    # the sandbox's 127.0.0.1. With `none`, nothing listens there: RST for TCP, ICMP
    # port unreachable for UDP. (10.0.2.2 is probed in the private network below.)
    probes = [f"tcp:127.0.0.1:{services.tcp}", f"udp:127.0.0.1:{services.udp}"]
    r = run_rbox("run", "--net=pasta", *py("connect", *probes))
    assert r.returncode == 0, r.stderr
    assert facts(r.stdout) == dict(zip(probes, ["ECONNREFUSED", "ECONNREFUSED"], strict=True))


@pytest.mark.parametrize("driver", DRIVERS)
def test_allow_host_loopback_reaches_the_host_at_10_0_2_2(services: Services, driver: str) -> None:
    probe = f"tcp:10.0.2.2:{services.tcp}"
    r = run_rbox("run", f"--net={driver}", "--allow-host-loopback", *py("connect", probe))
    assert r.returncode == 0, r.stderr
    assert facts(r.stdout) == {probe: f"open {SECRET}"}


def in_private_host_network(*args: str) -> tuple[int, dict[str, str], str]:
    """rbox ARGS run inside a user and network namespace of the test's own, with the
    services on that namespace's 127.0.0.1 (privnet.py): (returncode, facts, stderr)."""
    r = subprocess.run(["unshare", "-Urn", sys.executable, PRIVNET, *args], env=rbox_env(None),
                       capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    return result["returncode"], facts(result["stdout"]), result["stderr"]


# Outcomes of a probe of the host's loopback at 10.0.2.2, per backend, in the private
# network. Without the option, slirp4netns refuses it itself (ENETUNREACH); pasta treats
# 10.0.2.2 as a real address and sends the connection out of the private namespace's
# only interface, which leads nowhere, so it times out (on a real host: it would leave).
GATEWAY_PROBES = [
    pytest.param("slirp4netns", False, "ENETUNREACH", marks=[pytest.mark.needs_slirp4netns]),
    pytest.param("slirp4netns", True, f"open {SECRET}", marks=[pytest.mark.needs_slirp4netns]),
    pytest.param("pasta", False, "timeout", marks=[pytest.mark.needs_pasta]),
    pytest.param("pasta", True, f"open {SECRET}", marks=[pytest.mark.needs_pasta]),
]


@pytest.mark.needs_iproute2
@pytest.mark.parametrize(("driver", "allow", "expected"), GATEWAY_PROBES)
def test_the_gateway_reaches_the_host_loopback_only_when_allowed(driver: str, allow: bool, expected: str) -> None:
    # --root: in the private user namespace the caller is its uid 0 with no subordinate
    # ids; rbox maps that one id (with a warning).
    options = ["--allow-host-loopback"] if allow else []
    code, found, err = in_private_host_network("run", "--root", f"--net={driver}", *options, "--", sys.executable,
                                               PAYLOAD, "connect", "tcp:10.0.2.2:{tcp}", "tcp:127.0.0.1:{tcp}")
    assert code == 0, err
    assert list(found.values()) == [expected, "ECONNREFUSED"], found


@pytest.mark.parametrize("driver", DRIVERS)
def test_published_port_serves_the_host(tmp_path, spawn, driver: str) -> None:
    (tmp_path / "index.html").write_text("from-the-sandbox")
    port = free_port()
    proc = spawn("run", f"--net={driver}", "-p", f"{port}:8000", "--", sys.executable, "-m", "http.server", "8000",
                 cwd=tmp_path)
    assert wait_until(lambda: _get(f"http://127.0.0.1:{port}/") == "from-the-sandbox", timeout=30), \
        proc.stderr.read() if proc.poll() is not None and proc.stderr else "no answer"
    proc.terminate()
    proc.communicate(timeout=30)


@pytest.mark.parametrize("driver", DRIVERS)
def test_second_sandbox_publishing_the_same_port_fails_clearly(tmp_path, spawn, driver: str) -> None:
    port = free_port()
    first = spawn("run", f"--net={driver}", "-p", f"{port}:8000", "--", sys.executable, "-m", "http.server",
                  "8000", cwd=tmp_path)
    assert wait_until(lambda: _get(f"http://127.0.0.1:{port}/") is not None, timeout=30)
    r = run_rbox("run", f"--net={driver}", "-p", f"{port}:8000", "--", "true", cwd=tmp_path)
    assert r.returncode == 125
    assert r.stderr == (f"rbox: error: cannot publish host port 127.0.0.1:{port}/tcp: it is already in use\n"
                        "hint: choose another host port with -p HOST_PORT:SANDBOX_PORT\n")
    first.terminate()


@pytest.mark.needs_dns_stub
@pytest.mark.parametrize("driver", DRIVERS)
def test_names_resolve_through_a_loopback_stub_resolver(driver: str) -> None:
    # CI runs a resolver on 127.0.0.53 (like systemd-resolved) that knows this name.
    r = run_rbox("run", f"--net={driver}", "--", "getent", "hosts", "rbox-test.internal")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["198.51.100.7", "rbox-test.internal"]


@pytest.mark.parametrize("net", [*DRIVERS, "none"])
def test_abstract_unix_sockets_of_the_host_are_unreachable(net: str) -> None:
    name = f"rbox-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind("\0" + name)
        listener.listen(1)
        code = (f"import socket\ns = socket.socket(socket.AF_UNIX)\n"
                f"try:\n    s.connect('\\0{name}'); print('open')\n"
                f"except OSError as e:\n    print('closed', type(e).__name__)\n")
        r = run_rbox("run", f"--net={net}", "--", sys.executable, "-c", code)
        host_side = socket.socket(socket.AF_UNIX)
        host_side.connect("\0" + name)       # the socket is really there for the host
        host_side.close()
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "closed"


@pytest.mark.parametrize("driver", DRIVERS)
def test_no_helper_is_left_after_exit_kill_or_sigkill_of_rbox(tmp_path, spawn, driver: str) -> None:
    assert helpers_running() == []
    assert run_rbox("run", f"--net={driver}", "--", "true").returncode == 0
    assert wait_until(lambda: helpers_running() == [], timeout=10), helpers_running()
    assert run_rbox("run", f"--net={driver}", *py("kill-self", "SIGKILL")).returncode == 137
    assert wait_until(lambda: helpers_running() == [], timeout=10), helpers_running()
    # kill -9 once the command runs: the helper then serves the sandbox (before, the
    # one running might be slirp4netns --help, asked for its features).
    proc = spawn("run", f"--net={driver}", "--", "sh", "-c", "echo running; exec sleep 300", cwd=tmp_path)
    assert proc.stdout is not None and proc.stdout.readline() == "running\n"
    tree = descendants(proc.pid)
    serving = [cmd for pid, cmd in live_processes().items()
               if pid in tree and ("--configure" in cmd.split() or "--config-net" in cmd.split())]
    assert serving, {pid: live_processes().get(pid) for pid in tree}
    proc.kill()
    proc.wait()
    try:
        assert wait_until(lambda: helpers_running() == [], timeout=5), helpers_running()
    finally:
        kill_all(tree)


def root_filesystem(pid: str) -> str:
    with open(f"/proc/{pid}/mountinfo") as f:
        return next(line.split(" - ")[1].split()[0] for line in f if line.split()[4] == "/")


@pytest.mark.needs_slirp4netns
def test_slirp4netns_runs_confined(tmp_path, spawn) -> None:
    # --enable-sandbox: its own mount namespace whose root is an empty tmpfs (no host
    # files); --enable-seccomp: a seccomp filter (Seccomp: 2, filter mode). Read from the
    # kernel's view of the running helper (proc(5)), not from its command line.
    # Once the command runs, slirp4netns has said it is ready, which it does after
    # confining itself.
    proc = spawn("run", "--net=slirp4netns", "--", "sh", "-c", "echo running; exec sleep 60", cwd=tmp_path)
    assert proc.stdout is not None and proc.stdout.readline() == "running\n"
    helper = [pid for pid, cmd in children(proc.pid).items() if "slirp4netns" in cmd.split(" ", 1)[0]]
    assert len(helper) == 1, children(proc.pid)
    with open(f"/proc/{helper[0]}/status") as f:
        status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    assert status["Seccomp"] == "2"
    assert root_filesystem(str(helper[0])) == "tmpfs"
    assert root_filesystem("self") != "tmpfs"        # the probe tells the host's root apart


def test_missing_slirp4netns_is_a_clear_error_not_a_hang(tmp_path) -> None:
    start = time.monotonic()
    r = run_rbox("run", "--", "true", env={"PATH": f"{tmp_path}:/nonexistent"})
    assert r.returncode == 125
    from rootless.hostcheck import FIX

    assert r.stderr.splitlines()[-2:] == [
        "rbox: error: slirp4netns is not installed (Debian package `slirp4netns`)", "hint: " + FIX["slirp4netns"]]
    assert time.monotonic() - start < 10
