"""The setup protocol: codec round trips, and a channel over real in-process pipes."""

from __future__ import annotations

import os

import pytest

from rootless import sync
from rootless.errors import ProtocolError, RboxError


@pytest.mark.parametrize("fields", [
    {},
    {"pid": 1234},
    {"message": "cannot bind `/a b`: No such file", "hint": "100% sure\nsecond line=yes"},
    {"empty": ""},
])
def test_encode_decode_round_trip(fields) -> None:
    line = sync.encode("ERROR", fields)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    kind, got = sync.decode(line.rstrip(b"\n"))
    assert kind == "ERROR"
    assert got == {k: str(v) for k, v in fields.items()}


@pytest.mark.parametrize("line", [b"lowercase x=1", b"RUNNING novalue", b"\xff\xfe"])
def test_malformed_lines_raise_protocol_error(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        sync.decode(line)


@pytest.fixture
def pair():
    parent, child = sync.channel_pair()
    yield parent, child
    parent.close()
    child.close()


def test_messages_cross_in_both_directions(pair) -> None:
    parent, child = pair
    child.send(sync.INIT_STARTED, pid=77)
    assert parent.expect(sync.INIT_STARTED) == {"pid": "77"}
    parent.send(sync.IDMAP_DONE)
    assert child.expect(sync.IDMAP_DONE) == {}


def test_two_messages_in_one_read_are_both_delivered(pair) -> None:
    parent, child = pair
    os.write(child.wfd, sync.encode(sync.USERNS_READY) + sync.encode(sync.RUNNING))
    parent.expect(sync.USERNS_READY)
    parent.expect(sync.RUNNING)


def test_error_message_is_raised_with_its_hint_and_code(pair) -> None:
    parent, child = pair
    child.send_error(RboxError("command not found: `x`", hint="check PATH", exit_code=127))
    with pytest.raises(RboxError) as info:
        parent.expect(sync.RUNNING)
    assert (info.value.message, info.value.hint, info.value.exit_code) == ("command not found: `x`", "check PATH", 127)


def test_unexpected_message_names_both_types(pair) -> None:
    parent, child = pair
    child.send(sync.INIT_STARTED, pid=1)
    with pytest.raises(ProtocolError, match="expected USERNS_READY from stage-1, got INIT_STARTED"):
        parent.expect(sync.USERNS_READY)


def test_eof_means_the_peer_died(pair) -> None:
    parent, child = pair
    os.close(child.wfd)
    child.wfd = os.open(os.devnull, os.O_WRONLY)
    with pytest.raises(ProtocolError, match="stage-1 exited during setup"):
        parent.expect(sync.USERNS_READY)


def test_silence_times_out(pair) -> None:
    parent, _ = pair
    with pytest.raises(ProtocolError, match="did not answer within 0.05 s"):
        parent.expect(sync.USERNS_READY, timeout=0.05)
