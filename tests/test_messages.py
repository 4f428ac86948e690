"""Wire messages: round trips, and nothing but the project's errors on junk."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wireguard import messages as m
from wireguard.errors import MessageFormatError

u32 = st.integers(min_value=0, max_value=2**32 - 1)


def b(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


initiations = st.builds(m.Initiation, u32, b(32), b(48), b(28), b(16), b(16))
responses = st.builds(m.Response, u32, u32, b(32), b(16), b(16), b(16))
cookie_replies = st.builds(m.CookieReply, u32, b(24), b(32))
transports = st.builds(
    m.TransportData, u32, st.integers(min_value=0, max_value=2**64 - 1), st.binary(min_size=16)
)


@given(st.one_of(initiations, responses, cookie_replies, transports))
def test_round_trip(msg):
    packed = msg.pack()
    assert m.parse(packed) == msg
    assert type(msg).parse(packed) == msg


def test_sizes_and_types():
    assert len(m.Initiation(1, bytes(32), bytes(48), bytes(28)).pack()) == 148
    assert len(m.Response(1, 2, bytes(32), bytes(16)).pack()) == 92
    assert len(m.CookieReply(1, bytes(24), bytes(32)).pack()) == 64
    assert len(m.TransportData(1, 0, bytes(16)).pack()) == 32
    packed = m.Initiation(0x01020304, bytes(32), bytes(48), bytes(28)).pack()
    assert packed[:8] == b"\x01\x00\x00\x00\x04\x03\x02\x01"


PARSERS = [m.parse, m.Initiation.parse, m.Response.parse, m.CookieReply.parse,
           m.TransportData.parse, m.parse_transport_header, m.message_type]  # fmt: skip


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_our_errors(data):
    for parser in PARSERS:
        with contextlib.suppress(MessageFormatError):
            parser(data)


@given(st.one_of(initiations, responses, cookie_replies, transports), st.data())
def test_mutations_raise_only_our_errors(msg, data):
    packed = bytearray(msg.pack())
    choice = data.draw(st.sampled_from(["truncate", "extend", "reserved", "type"]))
    if choice == "truncate":
        # transport data of any length >= 32 is well formed
        shortest = 31 if isinstance(msg, m.TransportData) else len(packed) - 1
        packed = packed[: data.draw(st.integers(0, shortest))]
    elif choice == "extend":
        packed += data.draw(st.binary(min_size=1, max_size=20))
    elif choice == "reserved":
        packed[data.draw(st.integers(1, 3))] = data.draw(st.integers(1, 255))
    else:
        packed[0] = data.draw(st.sampled_from([0, 5, 6, 255]))
    packed = bytes(packed)
    if choice == "extend" and isinstance(msg, m.TransportData):
        assert m.parse(packed).encrypted_packet.startswith(msg.encrypted_packet)
        return
    with pytest.raises(MessageFormatError):
        m.parse(packed)


@pytest.mark.parametrize("bad", [
    m.Initiation(2**32, bytes(32), bytes(48), bytes(28)),
    m.Initiation(1, bytes(31), bytes(48), bytes(28)),
    m.Response(1, -1, bytes(32), bytes(16)),
    m.CookieReply(1, bytes(23), bytes(32)),
    m.TransportData(1, 2**64, bytes(16)),
    m.TransportData(1, 0, bytes(15)),
])  # fmt: skip
def test_pack_refuses_bad_fields(bad):
    with pytest.raises(MessageFormatError):
        bad.pack()
