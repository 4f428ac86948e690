"""IP parsing and building, checksums, UDP and ICMP echo."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from netstack_helpers import PulledStack

from wireguard.errors import LocalProtocolError, RemoteProtocolError
from wireguard.netstack import EchoReplyReceived, MalformedPacketError, UdpReadable
from wireguard.netstack.icmp import (
    ICMP_DEST_UNREACHABLE,
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    ICMPV6_DEST_UNREACHABLE,
    ICMPV6_ECHO_REPLY,
    build_echo,
    build_icmp,
    parse_icmp,
)
from wireguard.netstack.ip import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    build_ipv4,
    build_ipv6,
    checksum,
    parse_ip,
    pseudo_header_sum,
    verify_checksum,
)
from wireguard.netstack.tcp import SYN, SegmentBuilder
from wireguard.netstack.udp import build_udp, parse_udp

A4 = ipaddress.ip_address("10.0.0.1").packed
B4 = ipaddress.ip_address("10.0.0.2").packed
A6 = ipaddress.ip_address("fd00::1").packed
B6 = ipaddress.ip_address("fd00::2").packed


def naive_checksum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 section 4.1, word by word, as the obviously-correct model."""
    if len(data) % 2:
        data += b"\x00"
    total = initial
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@given(st.binary(max_size=2000), st.integers(0, 0x3FFFF))
def test_checksum_matches_rfc1071_model(data: bytes, initial: int) -> None:
    ours = checksum(data, initial)
    model = naive_checksum(data, initial)
    # 0x0000 and 0xFFFF are the same number in ones' complement; we send 0xFFFF.
    assert ours == (model or 0xFFFF)
    # Inserting the checksum makes the data verify.
    padded = data + b"\x00" * (len(data) % 2)
    assert verify_checksum(padded + ours.to_bytes(2, "big"), initial)


def test_ipv4_header_checksum_known_value() -> None:
    # The classic example header from RFC 1071 discussions (checksum 0xB861).
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert naive_checksum(header) == 0xB861
    assert checksum(header) == 0xB861


def test_ipv4_roundtrip() -> None:
    packet = build_ipv4(A4, B4, IPPROTO_UDP, b"payload")
    assert naive_checksum(packet[:20]) == 0  # header verifies
    pkt = parse_ip(packet + b"\x00\x00")  # trailing link padding is ignored
    assert (pkt.version, pkt.src, pkt.dst, pkt.proto, pkt.payload) == (
        4,
        A4,
        B4,
        IPPROTO_UDP,
        b"payload",
    )
    assert packet[6] & 0x40  # DF: a packet within the MTU is never fragmented


def test_ipv6_roundtrip_and_extension_headers() -> None:
    packet = build_ipv6(A6, B6, IPPROTO_UDP, b"payload")
    pkt = parse_ip(packet)
    assert (pkt.version, pkt.src, pkt.dst, pkt.proto, pkt.payload) == (
        6,
        A6,
        B6,
        IPPROTO_UDP,
        b"payload",
    )
    # A hop-by-hop options header (next header 0) in front of UDP is skipped.
    hbh = bytes((IPPROTO_UDP, 0)) + b"\x01\x04\x00\x00\x00\x00"
    packet = build_ipv6(A6, B6, 0, hbh + b"payload")
    pkt = parse_ip(packet)
    assert pkt.proto == IPPROTO_UDP and pkt.payload == b"payload"


def _v4(**changes: int) -> bytearray:
    packet = bytearray(build_ipv4(A4, B4, IPPROTO_UDP, b"x" * 12))
    for offset, value in changes.items():
        packet[int(offset[1:])] = value
    return packet


def _fix_v4_checksum(packet: bytearray) -> bytes:
    packet[10:12] = b"\x00\x00"
    ihl = (packet[0] & 0xF) * 4
    packet[10:12] = checksum(bytes(packet[:ihl])).to_bytes(2, "big")
    return bytes(packet)


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x45",
        bytes(19),
        b"\x75" + bytes(30),  # version 7
        _fix_v4_checksum(_v4(b0=0x44)),  # IHL 4
        _fix_v4_checksum(_v4(b3=200)),  # total length beyond the data
        bytes(_v4(b12=11)),  # header checksum wrong
        build_ipv6(A6, B6, IPPROTO_UDP, b"x")[:39],
        build_ipv6(A6, B6, IPPROTO_UDP, b"xyz")[:42],  # payload length beyond the data
        build_ipv6(A6, B6, 0, bytes((IPPROTO_UDP, 5)) + bytes(6)),  # ext header overrun
    ],
)
def test_malformed_ip_is_rejected_with_project_error(packet: bytes) -> None:
    with pytest.raises(MalformedPacketError) as info:
        parse_ip(packet)
    assert isinstance(info.value, RemoteProtocolError)
    stack = PulledStack(["10.0.0.2", "fd00::2"])
    stack.receive_packet(packet, 0.0)  # never raises: counted and dropped
    assert stack.stats.malformed + stack.stats.not_for_us == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_escapes_as_another_exception(data: bytes) -> None:
    stack = PulledStack(["10.0.0.2", "fd00::2"])
    stack.tcp_listen(80)
    stack.udp_bind(53)
    stack.receive_packet(data, 0.0)
    for version in (0x45, 0x60):
        stack.receive_packet(bytes((version,)) + data, 0.0)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 59), st.integers(1, 255))
def test_any_corrupted_byte_of_a_tcp_packet_is_caught(index: int, xor: int) -> None:
    stack = PulledStack(["10.0.0.2"])
    stack.tcp_listen(80)
    builder = SegmentBuilder(A4, B4, 1234, 80)
    packet = bytearray(builder.build(99, 0, SYN, 1000, b"0123456789abcdefghij"))
    packet[index] ^= xor
    stack.receive_packet(bytes(packet), 0.0)
    assert stack.stats.malformed + stack.stats.not_for_us + stack.stats.unknown_protocol == 1


def test_packets_for_other_addresses_are_dropped() -> None:
    stack = PulledStack(["10.0.0.2/32"])
    stack.receive_packet(SegmentBuilder(A4, A4, 1, 80).build(0, 0, SYN, 100), 0.0)
    assert stack.stats.not_for_us == 1
    assert stack.packets_to_send() == []


def test_addresses_in_wg_quick_form_and_mtu_limits() -> None:
    s = PulledStack(["10.0.0.2/24", "fd00::2/64"], mtu=1280)
    assert s.addresses == (B4, B6)
    with pytest.raises(ValueError):
        PulledStack(["fd00::2"], mtu=1000)
    with pytest.raises(ValueError):
        PulledStack([])


# --------------------------------------------------------------------- UDP


def test_udp_receive_and_send() -> None:
    stack = PulledStack(["10.0.0.2"])
    sock = stack.udp_bind(53)
    assert sock.local_address == ("", 53)
    stack.receive_packet(build_udp(A4, B4, 5000, 53, b"query"), 1.0)
    assert stack.next_event() == UdpReadable(sock)
    stack.receive_packet(build_udp(A4, B4, 5000, 53, b"again"), 1.0)
    assert stack.next_event() is None  # edge triggered
    assert sock.recvfrom() == (b"query", ("10.0.0.1", 5000))
    assert sock.recvfrom() == (b"again", ("10.0.0.1", 5000))
    assert sock.recvfrom() is None
    assert sock.sendto(b"answer", ("10.0.0.1", 5000)) == 6
    (out,) = stack.packets_to_send()
    pkt = parse_ip(out)
    assert (pkt.src, pkt.dst) == (B4, A4)
    assert parse_udp(pkt) == (53, 5000, b"answer")


def test_udp_ipv6_and_ephemeral_port() -> None:
    stack = PulledStack(["fd00::2"])
    sock = stack.udp_bind()
    assert 49152 <= sock.port <= 65535
    sock.sendto(b"hi", ("fd00::1", 9))
    pkt = parse_ip(stack.packets_to_send()[0])
    assert pkt.version == 6 and parse_udp(pkt)[2] == b"hi"


def test_udp_checksum_rules() -> None:
    stack = PulledStack(["10.0.0.2", "fd00::2"])
    sock = stack.udp_bind(53)
    # IPv4: zero means "no checksum" (RFC 768).
    no_csum = struct.pack("!HHHH", 1, 53, 10, 0) + b"ok"
    stack.receive_packet(build_ipv4(A4, B4, IPPROTO_UDP, no_csum), 0.0)
    assert sock.recvfrom() == (b"ok", ("10.0.0.1", 1))
    # IPv6: zero is invalid (RFC 8200 8.1).
    stack.receive_packet(build_ipv6(A6, B6, IPPROTO_UDP, no_csum), 0.0)
    assert sock.recvfrom() is None and stack.stats.malformed == 1
    bad = bytearray(build_udp(A4, B4, 1, 53, b"data"))
    bad[-1] ^= 0xFF
    stack.receive_packet(bytes(bad), 0.0)
    assert stack.stats.malformed == 2


def test_udp_to_closed_port_gets_port_unreachable() -> None:
    stack = PulledStack(["10.0.0.2", "fd00::2"])
    original = build_udp(A4, B4, 5000, 99, b"hello")
    stack.receive_packet(original, 0.0)
    original6 = build_udp(A6, B6, 5000, 99, b"hello")
    stack.receive_packet(original6, 0.0)
    v4, v6 = (parse_ip(p) for p in stack.packets_to_send())
    m4, m6 = parse_icmp(v4), parse_icmp(v6)
    assert (m4.type, m4.code) == (ICMP_DEST_UNREACHABLE, 3)
    assert m4.body == original  # the invoking packet is quoted (RFC 1122 3.2.2.1)
    assert (m6.type, m6.code) == (ICMPV6_DEST_UNREACHABLE, 4)
    assert m6.body == original6


def test_udp_limits() -> None:
    stack = PulledStack(["10.0.0.2"], mtu=1420, udp_queue_limit=2)
    sock = stack.udp_bind(53)
    with pytest.raises(LocalProtocolError):
        sock.sendto(bytes(65507 + 1), ("10.0.0.1", 1))
    sock.sendto(bytes(65507), ("10.0.0.1", 1))  # in fragments (test_netstack_fragments)
    with pytest.raises(LocalProtocolError):
        stack.udp_bind(53)
    for _ in range(3):
        stack.receive_packet(build_udp(A4, B4, 1, 53, b"x"), 0.0)
    assert sock.pending == 2 and sock.dropped == 1
    sock.close()
    stack.udp_bind(53)  # the port is free again


def test_udp_discards_are_counted_by_the_stack() -> None:
    """What a full receive queue drops, and what a socket still held when it
    closed, is counted in the stack's stats, which outlive the socket."""
    stack = PulledStack(["10.0.0.2"], udp_queue_limit=2)
    sock = stack.udp_bind(53)
    for _ in range(5):
        stack.receive_packet(build_udp(A4, B4, 1, 53, b"x"), 0.0)
    assert sock.pending == 2 and sock.dropped == 3
    assert stack.stats.udp_queue_overflows == 3
    sock.close()
    assert stack.stats.udp_closed_unread == 2
    assert stack.stats.udp_queue_overflows == 3  # not lost with the socket


# -------------------------------------------------------------------- ICMP


@pytest.mark.parametrize("family", [4, 6])
def test_echo_request_is_answered(family: int) -> None:
    a, b = (A4, B4) if family == 4 else (A6, B6)
    stack = PulledStack(["10.0.0.2", "fd00::2"])
    stack.receive_packet(build_echo(a, b, 0x1234, 7, b"ping data", reply=False), 0.0)
    (out,) = stack.packets_to_send()
    pkt = parse_ip(out)
    msg = parse_icmp(pkt)
    assert (pkt.src, pkt.dst) == (b, a)
    assert msg.type == (ICMP_ECHO_REPLY if family == 4 else ICMPV6_ECHO_REPLY)
    assert (msg.ident, msg.seq, msg.body) == (0x1234, 7, b"ping data")
    assert stack.stats.icmp_echo_answered == 1


def test_ping_from_the_application() -> None:
    stack = PulledStack(["10.0.0.2"])
    stack.ping("10.0.0.1", 42, 1, b"abc")
    request = parse_ip(stack.packets_to_send()[0])
    msg = parse_icmp(request)
    assert (msg.type, msg.ident, msg.seq, msg.body) == (ICMP_ECHO_REQUEST, 42, 1, b"abc")
    stack.receive_packet(build_echo(A4, B4, 42, 1, b"abc", reply=True), 3.5)
    assert stack.next_event() == EchoReplyReceived("10.0.0.1", 42, 1, b"abc", 3.5)


def test_icmp_bad_checksum_and_other_types_are_dropped() -> None:
    stack = PulledStack(["10.0.0.2", "fd00::2"])
    bad = bytearray(build_echo(A4, B4, 1, 1, b"x", reply=False))
    bad[-1] ^= 1
    stack.receive_packet(bytes(bad), 0.0)
    assert stack.stats.malformed == 1
    # An ICMPv6 router advertisement (134): no link layer here, ignored.
    stack.receive_packet(build_icmp(A6, B6, 134, 0, bytes(4), bytes(8)), 0.0)
    assert stack.packets_to_send() == []
    # ... and counted; an ICMP error (destination unreachable) for us that
    # quotes no packet of ours (all zeros) is counted apart.
    stack.receive_packet(build_icmp(A4, B4, ICMP_DEST_UNREACHABLE, 1, bytes(4), bytes(28)), 0.0)
    assert stack.stats.icmp_unhandled == 1
    assert stack.stats.icmp_errors_ignored == 1
    assert stack.packets_to_send() == []


def test_pseudo_header_sum_is_family_independent_in_form() -> None:
    # Both pseudo-headers reduce to: addresses + protocol + length (RFC 9293 3.1, RFC 8200 8.1).
    v6 = A6 + B6 + (20).to_bytes(4, "big") + bytes(3) + bytes((IPPROTO_TCP,))
    assert int.from_bytes(v6, "big") % 0xFFFF == pseudo_header_sum(A6, B6, IPPROTO_TCP, 20) % 0xFFFF


# ------------------------------------------------------- martian sources


@pytest.mark.parametrize(
    "source",
    [
        "224.0.0.1",  # multicast (Linux ip_route_input_slow: ipv4_is_multicast(saddr))
        "239.255.255.250",
        "255.255.255.255",  # limited broadcast (ipv4_is_lbcast)
        "0.0.0.0",  # "this network" (ipv4_is_zeronet)
        "0.1.2.3",
        "127.0.0.1",  # loopback (ipv4_is_loopback, route_localnet off)
        "127.9.9.9",
        "ff02::1",  # multicast (RFC 4291 2.7; Linux ip6_rcv_core)
        "ff0e::1",
        "::1",  # loopback (RFC 4291 2.5.3; Linux ip6_rcv_core)
    ],
)
def test_packets_from_a_source_no_host_has_are_dropped_unanswered(source: str) -> None:
    """A source address no single host can have (RFC 1122 3.2.1.3: a host MUST
    silently discard such a datagram; RFC 4291 2.7 and 2.5.3 for IPv6) is
    dropped before any socket sees it, as Linux drops martian sources: no
    echo reply, SYN-ACK or RST goes to a group, the broadcast address or
    loopback, and the drop is counted."""
    src = ipaddress.ip_address(source).packed
    dst = B4 if len(src) == 4 else B6
    stack = PulledStack(["10.0.0.2", "fd00::2"])
    stack.tcp_listen(80)
    sock = stack.udp_bind(53)
    stack.receive_packet(build_echo(src, dst, 1, 1, b"ping", reply=False), 0.0)
    stack.receive_packet(SegmentBuilder(src, dst, 1234, 80).build(1, 0, SYN, 1000), 0.0)
    stack.receive_packet(SegmentBuilder(src, dst, 1234, 81).build(1, 0, SYN, 1000), 0.0)
    stack.receive_packet(build_udp(src, dst, 5000, 53, b"query"), 0.0)
    assert stack.packets_to_send() == []
    assert sock.recvfrom() is None
    assert stack.stats.malformed == 4


# ------------------------------------------------------- atomic fragments


def _fragment_header(nxt: int, offset: int = 0, more: bool = False, ident: int = 0x1234) -> bytes:
    # RFC 8200 4.5: next header, reserved, offset (13 bits) | res (2) | M, identification.
    return bytes((nxt, 0)) + ((offset << 3) | more).to_bytes(2, "big") + ident.to_bytes(4, "big")


def test_ipv6_atomic_fragment_is_processed_as_a_whole_packet() -> None:
    """RFC 6946 section 4: a Fragment header with offset 0 and M 0 (an atomic
    fragment) MUST be processed in isolation, as the packet it carries (Linux
    ipv6_frag_rcv: "It is not a fragmented frame"). The reserved octet is
    ignored on receipt (RFC 8200 4.5), not read as a length."""
    stack = PulledStack(["fd00::2"])
    sock = stack.udp_bind(53)
    udp = parse_ip(build_udp(A6, B6, 5000, 53, b"atomic")).payload
    stack.receive_packet(build_ipv6(A6, B6, 44, _fragment_header(IPPROTO_UDP) + udp), 0.0)
    assert sock.recvfrom() == (b"atomic", ("fd00::1", 5000))
    reserved = bytearray(_fragment_header(60))
    reserved[1] = 0xFF
    dest = bytes((IPPROTO_UDP, 0, 1, 4)) + bytes(4)  # Destination Options: PadN
    stack.receive_packet(build_ipv6(A6, B6, 44, bytes(reserved) + dest + udp), 0.0)
    assert sock.recvfrom() == (b"atomic", ("fd00::1", 5000))
    echo = parse_ip(build_echo(A6, B6, 7, 8, b"ping", reply=False)).payload
    stack.receive_packet(build_ipv6(A6, B6, 44, _fragment_header(58) + echo), 0.0)
    (reply,) = stack.packets_to_send()
    assert parse_icmp(parse_ip(reply)).type == ICMPV6_ECHO_REPLY
    assert stack.stats.malformed == 0


def test_unknown_protocol_behind_an_atomic_fragment_is_pointed_at() -> None:
    """RFC 8200 section 4: Parameter Problem code 1 points at the Next Header
    field naming the protocol, here the Fragment header's (offset 40)."""
    stack = PulledStack(["fd00::2"])
    packet = build_ipv6(A6, B6, 44, _fragment_header(132) + bytes(20))
    stack.receive_packet(packet, 0.0)
    assert stack.stats.unknown_protocol == 1
    (error,) = stack.packets_to_send()
    msg = parse_icmp(parse_ip(error))
    assert (msg.type, msg.code, (msg.ident << 16) | msg.seq) == (4, 1, 40)


# ------------------------------------------------------------ IPv4 options


def _with_options(packet: bytes, options: bytes) -> bytes:
    """*packet* (an IPv4 packet without options) with *options* in its header."""
    assert len(options) % 4 == 0
    ihl = (20 + len(options)) // 4
    head = bytearray(packet[:20])
    head[0] = 0x40 | ihl
    head[2:4] = (len(packet) + len(options)).to_bytes(2, "big")
    return _fix_v4_checksum(head + options) + packet[20:]


def test_ipv4_options_that_parse_are_skipped() -> None:
    """RFC 791 3.1: options are NOP (1), End of Option List (0, after which
    the rest is padding), or type, length (counting both), data. Router Alert
    (RFC 2113) and NOPs are no reason to drop a datagram."""
    stack = PulledStack(["10.0.0.2"])
    sock = stack.udp_bind(53)
    udp = build_udp(A4, B4, 5000, 53, b"opts")
    stack.receive_packet(_with_options(udp, b"\x94\x04\x00\x00" + b"\x01\x01\x00\x07"), 0.0)
    assert sock.recvfrom() == (b"opts", ("10.0.0.1", 5000))
    assert stack.stats.malformed == 0


@pytest.mark.parametrize(
    "options",
    [
        b"\x07\x00\x00\x00",  # length 0 (Linux ip_options_compile: optlen < 2)
        b"\x07\x01\x00\x00",  # length 1
        b"\x01\x01\x44\x0c",  # a timestamp option running past the header (optlen > l)
        b"\x01\x01\x01\x07",  # a type with no room for its length (l < 2)
        b"\x83\x07\x04\x0a\x00\x00\x09\x01",  # loose source route (RFC 7126 4.3)
        b"\x89\x07\x04\x0a\x00\x00\x09\x01",  # strict source route (RFC 7126 4.4)
    ],
    ids=["length-0", "length-1", "overrun", "truncated", "lsrr", "ssrr"],
)
def test_ipv4_bad_or_source_route_options_are_dropped_and_counted(options: bytes) -> None:
    """Linux drops a datagram whose options do not parse (ip_options_compile
    fails: counted in InHdrErrors) and, with accept_source_route off as on
    every host, one carrying a source route (ip_rcv_options); RFC 7126 4.3
    and 4.4 advise the same. Neither reaches a socket; both are counted."""
    stack = PulledStack(["10.0.0.2"])
    sock = stack.udp_bind(53)
    packet = _with_options(build_udp(A4, B4, 5000, 53, b"opts"), options)
    with pytest.raises(MalformedPacketError):
        parse_ip(packet)
    stack.receive_packet(packet, 0.0)
    assert sock.recvfrom() is None
    assert stack.stats.malformed == 1
    assert stack.packets_to_send() == []
