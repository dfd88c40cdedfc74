"""slirp4netns's API socket: publishing a port (add_hostfwd).

Runs in: parent, only when -p is given (socket and json cost 6 ms each to import).

The protocol (slirp4netns(1), API SOCKET): one JSON request per connection, the client
shuts down its write side, one JSON reply: {"return": {...}} or {"error": {"desc": ...}}.
"""

from __future__ import annotations

import errno
import json
import socket

from rootless import log, net
from rootless.errors import RboxError, resource_hint
from rootless.net.ports import Port

TIMEOUT = 5.0


def add_hostfwd(api_path: str, port: Port) -> None:
    check_free(port)
    request: dict[str, object] = {"execute": "add_hostfwd", "arguments": {
        "proto": port.proto, "host_addr": port.host_ip, "host_port": port.host_port,
        "guest_addr": net.GUEST_IP, "guest_port": port.guest_port}}
    log.step(f"publish {port} via {api_path}")
    reply = _call(api_path, request)
    if "error" in reply:
        error = reply["error"]
        desc = error.get("desc", error) if isinstance(error, dict) else error
        raise RboxError(f"cannot publish {port}: slirp4netns says: {desc}",
                        hint="choose another host port with -p HOST_PORT:SANDBOX_PORT")


def check_free(port: Port) -> None:
    """Fail before the command starts when the host port is taken (e.g. by another
    sandbox), with a message that says so; slirp4netns would only say `failed`."""
    kind = socket.SOCK_STREAM if port.proto == "tcp" else socket.SOCK_DGRAM
    family = socket.AF_INET6 if ":" in port.host_ip else socket.AF_INET
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((port.host_ip, port.host_port))
        except OSError as e:
            reason = "it is already in use" if e.errno == errno.EADDRINUSE else e.strerror
            hint = {errno.EACCES: "ports below 1024 need net.ipv4.ip_unprivileged_port_start lowered by an "
                                  "administrator",
                    errno.EADDRNOTAVAIL: "HOST_IP must be an address of this machine: 127.0.0.1 (the default), "
                                         "0.0.0.0 for all, or one of its interfaces' addresses",
                    }.get(e.errno or 0, resource_hint(e.errno or 0) or "choose another host port with "
                                                                      "-p HOST_PORT:SANDBOX_PORT")
            raise RboxError(f"cannot publish host port {port.host_ip}:{port.host_port}/{port.proto}: {reason}",
                            hint=hint) from None


def _call(api_path: str, request: dict[str, object]) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        try:
            s.connect(api_path)
            s.sendall(json.dumps(request).encode())
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        except OSError as e:
            raise RboxError(f"cannot talk to slirp4netns's API socket: {e.strerror or e}",
                            hint=resource_hint(e.errno or 0) or "try again; or publish with --net=pasta") from None
    try:
        reply = json.loads(data.decode() or "{}")
    except ValueError:
        raise RboxError(f"slirp4netns's API gave an unreadable reply: {data[:200]!r}",
                        hint="check the installed slirp4netns (`rbox check`), or publish with --net=pasta") from None
    assert isinstance(reply, dict)
    return reply
