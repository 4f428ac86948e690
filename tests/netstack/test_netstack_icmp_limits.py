"""The limits on what the stack answers: the ICMP error rate (RFC 4443 2.4(f),
RFC 1812 4.3.2.8), IPv6 extension headers it must not skip (RFC 8200 4.2 and
4.4), and replies that would not fit the MTU."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from netstack_helpers import PulledStack, seeded

from wireguard.netstack.icmp import build_echo, build_icmp, parse_icmp
from wireguard.netstack.ip import (
    IPPROTO_ICMPV6,
    IPPROTO_UDP,
    build_ipv6,
    checksum,
    parse_ip,
    pseudo_header_sum,
)
from wireguard.netstack.udp import UdpSocket, build_udp

A4 = ipaddress.ip_address("10.0.0.1").packed
B4 = ipaddress.ip_address("10.0.0.2").packed
A6 = ipaddress.ip_address("fd00::1").packed
B6 = ipaddress.ip_address("fd00::2").packed

# Linux's defaults (net/ipv4/icmp.c, icmp_sk_init): net.ipv4.icmp_msgs_per_sec
# = 1000 and net.ipv4.icmp_msgs_burst = 50, one budget for ICMP and ICMPv6 errors.
LINUX_MSGS_PER_SEC = 1000
LINUX_MSGS_BURST = 50

ICMPV6_PARAM_PROBLEM = 4  # RFC 4443 3.4


def _stack(seed: int = 1) -> PulledStack:
    return PulledStack(["10.0.0.2", "fd00::2"], mtu=1420, random=seeded(seed))

# Each error costs 0, 1 or 2 tokens at random, one on average (Linux's fix of
# CVE-2020-25705, "SAD DNS": with a cost of exactly one, counting the errors of
# a burst tells a spoofing sender how many of its probes found an open port).
# So a burst is about 50 errors, not exactly: the bounds below allow for that.
BURST_MAX = 2 * LINUX_MSGS_BURST


def _closed_port(family: int, src: bytes | None = None) -> bytes:
    if family == 4:
        return build_udp(src or A4, B4, 40000, 9999, b"x" * 100)
    return build_udp(src or A6, B6, 40000, 9999, b"x" * 100)


def _errors(stack: PulledStack, now: float) -> list[bytes]:
    return [p for p in stack.packets_to_send(now) if parse_ip(p).proto in (1, 58)]


# ------------------------------------------------------- ICMP error rate limit


@pytest.mark.parametrize("family", [4, 6])
def test_icmp_errors_at_one_instant_are_limited_to_a_burst(family: int) -> None:
    """RFC 4443 2.4(f): a node MUST limit the rate of ICMPv6 errors it
    originates (RFC 1812 4.3.2.8 for IPv4); 10,000 datagrams to a closed port
    in one instant get at most Linux's burst of errors, and every error not sent
    is counted. After an hour of quiet the budget is still one burst, not more."""
    stack = _stack()
    for _ in range(10_000):
        stack.receive_packet(_closed_port(family), 0.0)
    sent = len(_errors(stack, 0.0))
    assert LINUX_MSGS_BURST // 2 <= sent <= BURST_MAX
    assert stack.stats.udp_no_socket == 10_000
    assert stack.stats.icmp_errors_rate_limited == 10_000 - sent
    for _ in range(10_000):
        stack.receive_packet(_closed_port(family), 3600.0)
    again = len(_errors(stack, 3600.0))
    assert LINUX_MSGS_BURST // 2 <= again <= BURST_MAX
    assert stack.stats.icmp_errors_rate_limited == 20_000 - sent - again


def test_icmp_error_rate_over_time_is_linux_default() -> None:
    """Over two seconds of datagrams every 0.1 ms, the errors sent are bounded
    by the burst plus 1000 a second, and the limit does not starve either."""
    stack = _stack()
    sent = 0
    for i in range(20_000):
        now = i * 0.0001
        stack.receive_packet(_closed_port(4), now)
        sent += len(_errors(stack, now))
    elapsed = 19_999 * 0.0001
    assert sent <= BURST_MAX + 1.1 * LINUX_MSGS_PER_SEC * elapsed
    assert sent >= 0.9 * LINUX_MSGS_PER_SEC * elapsed
    assert stack.stats.icmp_errors_rate_limited == 20_000 - sent


def test_icmp_error_budget_is_shared_by_both_families() -> None:
    """One global budget (as Linux's icmp_global_allow, used by ICMPv6 too):
    per-destination state would be memory a remote peer controls."""
    stack = _stack()
    for _ in range(5_000):
        stack.receive_packet(_closed_port(4), 0.0)
        stack.receive_packet(_closed_port(6), 0.0)
    sent = len(_errors(stack, 0.0))
    assert LINUX_MSGS_BURST // 2 <= sent <= BURST_MAX
    assert stack.stats.icmp_errors_rate_limited == 10_000 - sent


def test_the_size_of_a_burst_is_not_a_constant() -> None:
    """CVE-2020-25705: a sender that can count the errors of a burst learns, from
    a fixed budget, how many of the probes it spoofed before them reached open
    ports. Each error costs a random 0-2 tokens (Linux's icmp_global_allow), so
    bursts vary around the budget."""
    sizes = []
    for seed in range(40):
        stack = _stack(seed)
        for _ in range(500):
            stack.receive_packet(_closed_port(4), 0.0)
        sizes.append(len(_errors(stack, 0.0)))
    assert len(set(sizes)) > 5
    assert LINUX_MSGS_BURST - 10 <= sum(sizes) / len(sizes) <= LINUX_MSGS_BURST + 10
    assert all(LINUX_MSGS_BURST // 2 <= n <= BURST_MAX for n in sizes)


@pytest.mark.parametrize(
    "source",
    [
        "0.0.0.0",  # RFC 1122 3.2.2: a zero address
        "255.255.255.255",  # broadcast
        "224.0.0.1",  # multicast
        "127.0.0.1",  # loopback
        "240.0.0.1",  # class E
        "::",  # RFC 4443 2.4(e.6): the unspecified address
        "ff02::1",  # a multicast address
        "::1",  # loopback (RFC 4291 2.5.3: never the source of a packet from the wire)
    ],
)
def test_no_icmp_error_to_a_source_that_is_not_one_host(source: str) -> None:
    """RFC 1122 3.2.2 and RFC 4443 2.4(e.6): no ICMP error for a datagram whose
    source does not identify a single node. The sources Linux drops on receipt
    as martians (all but class E and the unspecified address) are counted as
    malformed before UDP sees them; the others reach UDP unanswered."""
    stack = _stack()
    src = ipaddress.ip_address(source).packed
    stack.receive_packet(_closed_port(4 if len(src) == 4 else 6, src), 0.0)
    assert stack.stats.udp_no_socket + stack.stats.malformed == 1
    assert _errors(stack, 0.0) == []


# ---------------------------------------------------- IPv6 extension headers


def _udp6(data: bytes, dport: int = 5353) -> bytes:
    length = 8 + len(data)
    head = struct.pack("!HHHH", 40000, dport, length, 0)
    csum = checksum(head + data, pseudo_header_sum(A6, B6, IPPROTO_UDP, length))
    return struct.pack("!HHHH", 40000, dport, length, csum) + data


def _options_header(nxt: int, options: bytes) -> bytes:
    """A Hop-by-Hop or Destination Options header (RFC 8200 4.3, 4.6)."""
    assert (2 + len(options)) % 8 == 0
    return bytes((nxt, (2 + len(options)) // 8 - 1)) + options


def _routing_header(nxt: int, type_: int, segments_left: int) -> bytes:
    # RFC 8200 4.4: next header, length (units of 8 octets beyond the first 8),
    # routing type, segments left, 4 octets type-specific, then one address.
    return bytes((nxt, 2, type_, segments_left)) + bytes(4) + bytes(16)


_UDP0 = _udp6(b"")
_NINE_OPTIONS = b"\x1e\x00" * 9 + b"\x01\x02\x00\x00"  # nine empty type-00 options, PadN


def _bound_stack() -> tuple[PulledStack, UdpSocket]:
    stack = _stack()
    return stack, stack.udp_bind(5353)


def _param_problem(stack: PulledStack) -> list[tuple[int, int, bytes]]:
    """(code, pointer, quoted packet) of every Parameter Problem sent."""
    out = []
    for packet in stack.packets_to_send():
        pkt = parse_ip(packet)
        assert pkt.proto == IPPROTO_ICMPV6 and pkt.dst == A6 and pkt.src == B6
        msg = parse_icmp(pkt)
        assert msg.type == ICMPV6_PARAM_PROBLEM
        out.append((msg.code, (msg.ident << 16) | msg.seq, msg.body))
    return out


@pytest.mark.parametrize("routing_type", [0, 2, 3, 4, 253])
def test_routing_header_with_segments_left_is_not_delivered(routing_type: int) -> None:
    """RFC 8200 4.4: a Routing header this node does not process (type 0 is
    to be treated as unrecognised, RFC 5095 3) with Segments Left non-zero:
    discard, and send Parameter Problem code 0 pointing at the Routing Type.
    This host forwards nothing, so it processes no routing type."""
    stack, sock = _bound_stack()
    packet = build_ipv6(A6, B6, 43, _routing_header(IPPROTO_UDP, routing_type, 1) + _udp6(b"r"))
    stack.receive_packet(packet, 0.0)
    assert sock.recvfrom() is None
    assert stack.stats.ipv6_option_discarded == 1
    assert _param_problem(stack) == [(0, 40 + 2, packet)]


def test_routing_header_with_no_segments_left_is_skipped() -> None:
    """RFC 8200 4.4: Segments Left zero: ignore the header, go on to the next."""
    stack, sock = _bound_stack()
    packet = build_ipv6(A6, B6, 43, _routing_header(IPPROTO_UDP, 0, 0) + _udp6(b"r"))
    stack.receive_packet(packet, 0.0)
    assert sock.recvfrom() == (b"r", ("fd00::1", 40000))
    assert stack.stats.ipv6_option_discarded == 0


@pytest.mark.parametrize("header", [0, 60], ids=["hop-by-hop", "destination"])
@pytest.mark.parametrize(
    ("option", "delivered", "code"),
    [
        (0x1E, True, None),  # 00: skip the option
        (0x7E, False, None),  # 01: discard
        (0xBE, False, 2),  # 10: discard, Parameter Problem code 2
        (0xFE, False, 2),  # 11: the same, the destination not being multicast
    ],
)
def test_unrecognised_option_follows_its_action_bits(
    header: int, option: int, delivered: bool, code: int | None
) -> None:
    """RFC 8200 4.2: the two high-order bits of an unrecognised option's type
    say what to do; the Parameter Problem points at the option's type octet."""
    stack, sock = _bound_stack()
    # PadN (two octets of padding), then the option with 2 octets of data.
    ext = _options_header(IPPROTO_UDP, b"\x01\x00" + bytes((option, 2)) + b"\x00\x00")
    packet = build_ipv6(A6, B6, header, ext + _udp6(b"o"))
    stack.receive_packet(packet, 0.0)
    got = sock.recvfrom()
    assert (got is not None) == delivered
    assert stack.stats.ipv6_option_discarded == (0 if delivered else 1)
    assert stack.stats.malformed == 0
    expected = [] if code is None else [(code, 40 + 2 + 2, packet)]
    assert _param_problem(stack) == expected


def test_pad1_and_padn_are_recognised() -> None:
    """RFC 8200 4.2: Pad1 (type 0) and PadN (type 1) are the options every
    node recognises (their type's high bits would say discard-and-report)."""
    stack, sock = _bound_stack()
    # Pad1, PadN (1 octet), Router Alert (RFC 2711, action 00), PadN (4 octets).
    options = b"\x00" + b"\x01\x01\x00" + b"\x05\x02\x00\x00" + b"\x01\x04" + bytes(4)
    ext = _options_header(IPPROTO_UDP, options)
    stack.receive_packet(build_ipv6(A6, B6, 60, ext + _udp6(b"p")), 0.0)
    assert sock.recvfrom() == (b"p", ("fd00::1", 40000))


def test_parameter_problems_go_through_the_rate_limit() -> None:
    stack, _ = _bound_stack()
    ext = _options_header(IPPROTO_UDP, bytes((0xBE, 4)) + bytes(4))
    for _ in range(10_000):
        stack.receive_packet(build_ipv6(A6, B6, 60, ext + _udp6(b"o")), 0.0)
    sent = len(_param_problem(stack))
    assert LINUX_MSGS_BURST // 2 <= sent <= BURST_MAX
    assert stack.stats.ipv6_option_discarded == 10_000
    assert stack.stats.icmp_errors_rate_limited == 10_000 - sent


def test_no_parameter_problem_about_an_icmpv6_error() -> None:
    """RFC 4443 2.4(e.1): no ICMPv6 error in response to an ICMPv6 error message."""
    stack, _ = _bound_stack()
    error = build_icmp(A6, B6, 1, 4, bytes(4), bytes(48))  # destination unreachable
    ext = _options_header(IPPROTO_ICMPV6, bytes((0xBE, 4)) + bytes(4))
    stack.receive_packet(build_ipv6(A6, B6, 60, ext + parse_ip(error).payload), 0.0)
    assert stack.stats.ipv6_option_discarded == 1
    assert stack.packets_to_send() == []


@pytest.mark.parametrize(
    "packet",
    [
        # An option whose length runs past the end of its header.
        build_ipv6(A6, B6, 60, _options_header(IPPROTO_UDP, b"\x1e\x05" + bytes(4)) + _udp6(b"")),
        # A header ending in the middle of an option's type and length.
        build_ipv6(A6, B6, 60, _options_header(IPPROTO_UDP, bytes(5) + b"\x1e") + _udp6(b"")),
        # More than 7 octets of consecutive padding (Linux ip6_parse_tlv, RFC 4942 2.1.9.5).
        build_ipv6(A6, B6, 60, _options_header(IPPROTO_UDP, bytes(14)) + _udp6(b"")),
        # PadN with non-zero contents (RFC 4942 2.1.9.5).
        build_ipv6(A6, B6, 60, _options_header(IPPROTO_UDP, b"\x01\x04\x00\x01\x00\x00") + _UDP0),
        # More than 8 non-padding options (Linux IP6_DEFAULT_MAX_DST_OPTS_CNT).
        build_ipv6(A6, B6, 60, _options_header(IPPROTO_UDP, _NINE_OPTIONS) + _UDP0),
    ],
    ids=[
        "option-overrun",
        "option-truncated",
        "padding-over-7",
        "padn-not-zero",
        "options-over-8",
    ],
)
def test_malformed_extension_headers_are_counted_as_malformed(packet: bytes) -> None:
    stack, sock = _bound_stack()
    stack.receive_packet(packet, 0.0)
    assert sock.recvfrom() is None
    assert stack.stats.malformed == 1
    assert stack.packets_to_send() == []


@pytest.mark.parametrize("before", [1, 2])
def test_hop_by_hop_header_not_first_gets_parameter_problem_code_1(before: int) -> None:
    """RFC 8200 section 4: Hop-by-Hop Options only right after the IPv6
    header (4.3); a Next Header value of zero in any other header is treated
    as unrecognised: discard, and Parameter Problem code 1 pointing at that
    Next Header field (Linux: ip6_protocol_deliver_rcu has no handler for 0
    and sends ICMPV6_UNK_NEXTHDR at nhoff)."""
    stack, sock = _bound_stack()
    pad = bytes((1, 4)) + bytes(4)
    chain = _options_header(60, pad) * (before - 1) + _options_header(0, pad)
    packet = build_ipv6(A6, B6, 60, chain + _options_header(IPPROTO_UDP, pad) + _udp6(b"h"))
    stack.receive_packet(packet, 0.0)
    assert sock.recvfrom() is None
    assert stack.stats.malformed == 0
    assert stack.stats.ipv6_option_discarded == 1
    assert _param_problem(stack) == [(1, 40 + 8 * (before - 1), packet)]


def test_extension_header_chain_is_bounded() -> None:
    """At most 12 extension headers are walked (Linux IP6_MAX_EXT_HDRS_CNT):
    the work per packet stays bounded whatever the chain."""
    stack, sock = _bound_stack()
    dest = _options_header(60, bytes((1, 4)) + bytes(4))
    last = _options_header(IPPROTO_UDP, bytes((1, 4)) + bytes(4))
    stack.receive_packet(build_ipv6(A6, B6, 60, dest * 11 + last + _udp6(b"12")), 0.0)
    assert sock.recvfrom() == (b"12", ("fd00::1", 40000))
    stack.receive_packet(build_ipv6(A6, B6, 60, dest * 12 + last + _udp6(b"13")), 0.0)
    assert sock.recvfrom() is None
    assert stack.stats.malformed == 1


# ------------------------------------------------------------- MTU bounds


@pytest.mark.parametrize("family", [4, 6])
def test_echo_reply_larger_than_the_mtu_leaves_in_fragments(family: int) -> None:
    """The MTU bounds every packet the stack sends (NetStack's contract): an
    echo request that came whole but larger than it (a peer with a larger
    MTU) is answered as large (RFC 792 / RFC 4443 4.2), in fragments of at
    most the MTU, as Linux answers it."""
    a, b = (A4, B4) if family == 4 else (A6, B6)
    header = 20 if family == 4 else 40
    stack = _stack()
    fits = build_echo(a, b, 1, 1, bytes(1420 - header - 8), reply=False)
    assert len(fits) == 1420
    stack.receive_packet(fits, 0.0)
    (reply,) = stack.packets_to_send()
    assert len(reply) == 1420
    stack.receive_packet(build_echo(a, b, 1, 2, bytes(1420 - header - 8 + 1), reply=False), 0.0)
    stack.receive_packet(build_echo(a, b, 1, 3, bytes(60000), reply=False), 0.0)
    sent = stack.packets_to_send()
    assert all(len(p) <= 1420 for p in sent)
    assert len(sent) == 2 + -(-(60008) // ((1420 - header - (8 if family == 6 else 0)) & ~7))
    assert stack.stats.datagrams_fragmented == 2
    assert stack.stats.icmp_echo_answered == 3


@pytest.mark.parametrize(("family", "bound"), [(4, 576), (6, 1280)])
def test_icmp_error_fits_the_minimum_mtu(family: int, bound: int) -> None:
    """RFC 1812 4.3.2.3 (576 octets) and RFC 4443 2.4(c) (1280): an error
    quoting the largest datagram stays within the protocol's minimum MTU,
    which is no more than any MTU the stack accepts."""
    stack = PulledStack(["10.0.0.2"] if family == 4 else ["fd00::2"], mtu=bound)
    data = bytes(65535 - (20 if family == 4 else 0) - 8)
    stack.receive_packet(
        build_udp(A4, B4, 1, 9, data) if family == 4 else build_udp(A6, B6, 1, 9, data), 0.0
    )
    (error,) = stack.packets_to_send()
    assert len(error) == bound <= stack.mtu


# ------------------------------------------------- a protocol nothing here speaks


def test_unknown_protocol_gets_protocol_unreachable_over_ipv4() -> None:
    """RFC 1122 3.2.2.1: a host SHOULD send Protocol Unreachable (type 3 code
    2) for a transport protocol it does not have (as Linux does), quoting the
    invoking packet, through the rate limit; counted as unknown_protocol."""
    from wireguard.netstack.ip import build_ipv4

    stack = _stack()
    packet = build_ipv4(A4, B4, 132, bytes(20))  # SCTP: not ours
    stack.receive_packet(packet, 0.0)
    assert stack.stats.unknown_protocol == 1
    (error,) = _errors(stack, 0.0)
    pkt = parse_ip(error)
    msg = parse_icmp(pkt)
    assert (pkt.src, pkt.dst, msg.type, msg.code) == (B4, A4, 3, 2)
    assert msg.body == packet


def test_unknown_next_header_gets_parameter_problem_over_ipv6() -> None:
    """RFC 8200 section 4: an unrecognised Next Header value SHOULD get a
    Parameter Problem code 1 pointing at that field (offset 6 without
    extension headers, else the last extension header's first octet)."""
    stack = _stack()
    plain = build_ipv6(A6, B6, 132, bytes(20))
    stack.receive_packet(plain, 0.0)
    ext = _options_header(132, bytes(6))  # a Destination Options header, then SCTP
    behind = build_ipv6(A6, B6, 60, ext + bytes(20))
    stack.receive_packet(behind, 0.0)
    assert stack.stats.unknown_protocol == 2
    assert _param_problem(stack) == [(1, 6, plain), (1, 40, behind)]


@pytest.mark.parametrize("family", [4, 6])
def test_port_unreachable_quotes_the_packet_not_the_link_padding(family: int) -> None:
    """RFC 1122 3.2.1.2 lets a link pad a packet past its IP length; the error
    quotes the invoking packet (RFC 792, RFC 4443 2.4(c)), not the padding."""
    stack = _stack()
    packet = _closed_port(family)
    stack.receive_packet(packet + b"PAD" * 4, 0.0)
    (error,) = _errors(stack, 0.0)
    assert parse_icmp(parse_ip(error)).body == packet


@pytest.mark.parametrize("byte", [0x00, 0xFF])
def test_a_constant_random_source_does_not_hang_the_error_limit(byte: int) -> None:
    """Randomness is an input, and a deterministic run may pass a source that
    repeats one byte: the random cost of an error (0-2 tokens) is taken from
    one draw, never by drawing again until a value fits."""
    stack = PulledStack(["10.0.0.2", "fd00::2"], mtu=1420, random=lambda n: bytes([byte]) * n)
    for family in (4, 6):
        stack.receive_packet(_closed_port(family), 0.0)
    assert len(_errors(stack, 0.0)) == 2
