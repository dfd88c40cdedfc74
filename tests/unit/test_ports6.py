"""-p with IPv6 host addresses (pure parsing)."""

from __future__ import annotations

import pytest

from rootless.errors import SpecError
from rootless.net.ports import parse


@pytest.mark.parametrize(("spec", "expected"), [
    ("[::1]:8080:80", ("::1", 8080, 80, "tcp")),
    ("[::]:53:53/udp", ("::", 53, 53, "udp")),
    ("[fe80::1]:1:2", ("fe80::1", 1, 2, "tcp")),
    ("127.0.0.1:8080:80", ("127.0.0.1", 8080, 80, "tcp")),
    ("8080:80", ("127.0.0.1", 8080, 80, "tcp")),
])
def test_parse(spec: str, expected: tuple[str, int, int, str]) -> None:
    p = parse(spec)
    assert (p.host_ip, p.host_port, p.guest_port, p.proto) == expected


@pytest.mark.parametrize("spec", ["[::1:8080:80", "[nothost]:1:2", "::1:8080:80", "[::1]8080:80", "[::1]:8080",
                                  "[::1]:1:2:3", "1.2.3.4.5:1:2"])
def test_refused(spec: str) -> None:
    with pytest.raises(SpecError) as info:
        parse(spec)
    assert info.value.hint


def test_repr_brackets_ipv6() -> None:
    assert repr(parse("[::1]:8080:80")) == "[::1]:8080->80/tcp"
