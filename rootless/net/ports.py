"""-p/--publish: parsing and checking, before anything starts.

Runs in: parent.
"""

from __future__ import annotations

from rootless.errors import SpecError

DEFAULT_HOST_IP = "127.0.0.1"   # a login node is shared: 0.0.0.0 must be asked for


class Port:
    __slots__ = ("host_ip", "host_port", "guest_port", "proto")

    def __init__(self, host_ip: str, host_port: int, guest_port: int, proto: str):
        self.host_ip, self.host_port, self.guest_port, self.proto = host_ip, host_port, guest_port, proto

    def __repr__(self) -> str:
        host = f"[{self.host_ip}]" if ":" in self.host_ip else self.host_ip
        return f"{host}:{self.host_port}->{self.guest_port}/{self.proto}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Port) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))


def parse(spec: str) -> Port:
    """[HOST_IP:]HOST_PORT:SANDBOX_PORT[/tcp|/udp] -> Port."""
    body, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise SpecError(f"invalid protocol `{_short(proto)}` in -p {_short(spec)}", hint="use /tcp or /udp")
    host_ip = DEFAULT_HOST_IP
    if body.startswith("["):
        # An IPv6 host address, bracketed as in a URL (RFC 3986): [::1]:8080:80.
        address, sep, body = body[1:].partition("]:")
        if not sep or not _is_ipv6(address):
            raise SpecError(f"invalid host address in -p {_short(spec)}",
                            hint="write an IPv6 address in brackets: -p [::1]:8080:80")
        host_ip = address
        parts = body.split(":")
    else:
        parts = body.split(":")
        if len(parts) == 3:
            host_ip = parts.pop(0) or DEFAULT_HOST_IP
            if not _is_ipv4(host_ip):
                raise SpecError(f"invalid host address `{_short(host_ip)}` in -p {_short(spec)}",
                                hint="an IPv4 address such as 127.0.0.1 (the default) or 0.0.0.0 for every "
                                     "interface, or an IPv6 address in brackets: [::1]")
    if len(parts) != 2:
        raise SpecError(f"invalid -p {_short(spec)}", hint="use [HOST_IP:]HOST_PORT:SANDBOX_PORT[/tcp|/udp]")
    return Port(host_ip, _port(parts[0], spec), _port(parts[1], spec), proto)


def _port(text: str, spec: str) -> int:
    if not _digits(text) or not 0 < int(text) < 65536:
        raise SpecError(f"invalid port `{_short(text)}` in -p {_short(spec)}", hint="ports are 1 to 65535")
    return int(text)


def _is_ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(_digits(p) and int(p) < 256 for p in parts)


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:40] + "..."


def _digits(text: str) -> bool:
    # str.isdigit() is true for other scripts' digits too (`٣`), which int() accepts
    # but slirp4netns and pasta would not.
    return text.isascii() and text.isdigit() and len(text) <= 5


def _is_ipv6(text: str) -> bool:
    """An IPv6 address in any of its text forms (inet_pton(3) decides)."""
    import socket  # only for a bracketed address: socket costs 6 ms to import

    try:
        socket.inet_pton(socket.AF_INET6, text)
    except OSError:
        return False
    return True


def is_ipv6(port: Port) -> bool:
    return ":" in port.host_ip


def check_unique(ports: list[Port]) -> None:
    seen = set()
    for p in ports:
        key = (p.host_ip, p.host_port, p.proto)
        if key in seen:
            raise SpecError(f"host port {p.host_ip}:{p.host_port}/{p.proto} is published twice",
                            hint="give each -p its own host port (or a different HOST_IP or protocol)")
        seen.add(key)
