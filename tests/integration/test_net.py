"""The network drivers, for real, as the unprivileged user (rootlesskit's conformance
suite idea: the same tests over every driver).

Traffic never leaves the machine: servers listen on the host's 127.0.0.1, clients run in
the sandbox's own network namespace, and 10.0.2.2 is probed without --allow-host-loopback
only under slirp4netns, which answers it itself. (Under pasta without that option,
10.0.2.2 is an ordinary address on the host's network: probing it would leave.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from tests.integration.helpers import live_processes, our_uids, py, run_rbox, wait_until

pytestmark = pytest.mark.needs_userns
DRIVERS = [pytest.param("slirp4netns", marks=pytest.mark.needs_slirp4netns),
           pytest.param("pasta", marks=pytest.mark.needs_pasta)]
HELPER_NAMES = ("slirp4netns", "pasta", "passt", "passt.avx2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def host_server(tmp_path):
    """An HTTP server on the host's 127.0.0.1 (a stand-in for another user's notebook)."""
    port = free_port()
    (tmp_path / "index.html").write_text("host-secret")
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_until(lambda: _get(f"http://127.0.0.1:{port}/") == "host-secret", timeout=10)
    yield port
    server.kill()
    server.wait()


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.read().decode()
    except OSError:
        return None


def helpers_running() -> list[str]:
    return [cmd for cmd in live_processes(our_uids()).values()
            if os.path.basename(cmd.split(" ", 1)[0]) in HELPER_NAMES or " rbox-pasta " in cmd]


CONNECT = ("import socket, sys\n"
           "for host, port in [a.rsplit(':', 1) for a in sys.argv[1:]]:\n"
           "    s = socket.socket(); s.settimeout(3)\n"
           "    try:\n"
           "        s.connect((host, int(port))); print(host, 'open')\n"
           "    except OSError as e:\n"
           "        print(host, 'closed', type(e).__name__)\n")


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


@pytest.mark.needs_slirp4netns
def test_host_loopback_is_unreachable_by_default_with_slirp4netns(host_server: int) -> None:
    start = time.monotonic()
    r = run_rbox("run", "--", sys.executable, "-c", CONNECT, f"10.0.2.2:{host_server}", f"10.0.2.3:{host_server}",
                 f"127.0.0.1:{host_server}")
    assert r.returncode == 0, r.stderr
    assert [line.split()[1] for line in r.stdout.splitlines()] == ["closed", "closed", "closed"]
    assert time.monotonic() - start < 20


@pytest.mark.needs_pasta
def test_host_ports_are_not_forwarded_into_the_sandbox_with_pasta(host_server: int) -> None:
    # pasta's default `-T auto` would make the host's 127.0.0.1 ports appear inside.
    r = run_rbox("run", "--net=pasta", "--", sys.executable, "-c", CONNECT, f"127.0.0.1:{host_server}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[1] == "closed"


@pytest.mark.parametrize("driver", DRIVERS)
def test_allow_host_loopback_reaches_the_host_at_10_0_2_2(host_server: int, driver: str) -> None:
    fetch = f"import urllib.request; print(urllib.request.urlopen('http://10.0.2.2:{host_server}/', timeout=5).read())"
    r = run_rbox("run", f"--net={driver}", "--allow-host-loopback", "--", sys.executable, "-c", fetch)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "b'host-secret'"


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


@pytest.mark.parametrize("net", ["slirp4netns", "pasta", "none"])
def test_abstract_unix_sockets_of_the_host_are_unreachable(net: str) -> None:
    from tests.conftest import probe

    if net in ("slirp4netns", "pasta") and probe(net) is not None:
        pytest.skip(probe(net) or "")
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
    proc = spawn("run", f"--net={driver}", "--", "sleep", "300", cwd=tmp_path)
    assert wait_until(lambda: len(helpers_running()) >= 1, timeout=30)
    proc.kill()
    proc.wait()
    assert wait_until(lambda: helpers_running() == [], timeout=10), helpers_running()


def test_missing_slirp4netns_is_a_clear_error_not_a_hang(tmp_path) -> None:
    start = time.monotonic()
    r = run_rbox("run", "--", "true", env={"PATH": f"{tmp_path}:/nonexistent"})
    assert r.returncode == 125
    from rootless.hostcheck import FIX

    assert r.stderr.splitlines()[-2:] == [
        "rbox: error: slirp4netns is not installed (Debian package `slirp4netns`)", "hint: " + FIX["slirp4netns"]]
    assert time.monotonic() - start < 10
