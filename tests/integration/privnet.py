"""Stand-in services on a host's loopback, and a private "host" network for probing.

Runs in: the test runner (`Services`, as a fixture), or as a script under
`unshare -Urn` (user and network namespaces of the test's own), where it makes a network
that looks like a host's: `lo` up, and an outbound interface with a default route (a
tap device nobody reads, so nothing sent there goes anywhere; pasta refuses to start
without a routable interface). There it starts the services on 127.0.0.1 and runs rbox.

Why: under pasta without --allow-host-loopback, 10.0.2.2 is forwarded as a real
address, to the host's network; probing it on the real host could leave this machine.
In the private namespace the same probe tests the same code and stays here.

    python privnet.py RBOX_ARG...    ({tcp} and {udp} in the arguments become the ports)

prints one JSON object: rbox's returncode, stdout and stderr.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

SECRET = "host-secret"


class Services:
    """A TCP service that answers SECRET to every connection and a UDP service that
    answers SECRET to every datagram, on 127.0.0.1 (another user's notebook, say)."""

    def __init__(self) -> None:
        self.tcp_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp_sock.bind(("127.0.0.1", 0))
        self.tcp_sock.listen(16)
        self.udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp_sock.bind(("127.0.0.1", 0))
        self.tcp, self.udp = self.tcp_sock.getsockname()[1], self.udp_sock.getsockname()[1]
        for target in (self._serve_tcp, self._serve_udp):
            threading.Thread(target=target, daemon=True).start()

    def _serve_tcp(self) -> None:
        while True:
            try:
                conn, _ = self.tcp_sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(SECRET.encode())

    def _serve_udp(self) -> None:
        while True:
            try:
                _, peer = self.udp_sock.recvfrom(64)
                if peer is None:      # shut down by close()
                    return
                self.udp_sock.sendto(SECRET.encode(), peer)
            except OSError:
                return

    def close(self) -> None:
        for sock in (self.tcp_sock, self.udp_sock):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def make_host_network() -> None:
    for cmd in ("ip link set lo up", "ip tuntap add dev rbox-out mode tap", "ip addr add 192.0.2.1/24 dev rbox-out",
                "ip link set rbox-out up", "ip route add default via 192.0.2.254"):
        subprocess.run(cmd.split(), check=True, capture_output=True, timeout=30)


def main(args: list[str]) -> None:
    make_host_network()
    services = Services()
    argv = [a.replace("{tcp}", str(services.tcp)).replace("{udp}", str(services.udp)) for a in args]
    r = subprocess.run([sys.executable, "-m", "rootless", *argv], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    services.close()
    print(json.dumps({"returncode": r.returncode, "stdout": r.stdout, "stderr": r.stderr,
                      "tcp": services.tcp, "udp": services.udp}))


if __name__ == "__main__":
    main(sys.argv[1:])
