"""ICMP and ICMPv6 errors about packets we sent: path MTU discovery for TCP
(RFC 1191, RFC 8201), hard errors on a connect and on a connected UDP socket,
and the checks against forged errors (RFC 5927), each as Linux acts on them
(net/ipv4/tcp_ipv4.c tcp_v4_err, net/ipv6/tcp_ipv6.c tcp_v6_err,
net/ipv4/udp.c __udp4_lib_err, net/ipv6/udp.c __udp6_lib_err).

The errno an ICMP error maps to is Linux's: icmp_err_convert in
net/ipv4/icmp.c and icmpv6_err_convert in net/ipv6/icmp.c.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct

import pytest
from netstack_helpers import ACK, FIN, SYN, Peer, PulledStack, make_stack, mss_option

from wireguard.io.stackdriver import StackDriver
from wireguard.netstack import NetStack, TcpClosed, TcpConnection, TcpState, udp
from wireguard.netstack.icmp import build_icmp
from wireguard.netstack.ip import IPPROTO_TCP, IPPROTO_UDP, addr_bytes, parse_ip
from wireguard.netstack.stack import PMTU_CACHE_SIZE
from wireguard.netstack.tcp import SegmentBuilder, parse_tcp
from wireguard.netstack.udp import build_udp

P = 1_000_000  # the scripted peer's ISS
STACK = {4: "10.0.0.2", 6: "fd00::2"}
PEER = {4: "10.0.0.1", 6: "fd00::1"}
ROUTER = {4: addr_bytes("192.0.2.1"), 6: addr_bytes("2001:db8::1")}  # a hop on the path
HEADERS = {4: 20 + 20, 6: 40 + 20}  # IP and TCP headers, no options


class Conn:
    def __init__(self, stack: PulledStack, peer: Peer, conn: TcpConnection, family: int) -> None:
        self.s = stack
        self.p = peer
        self.c = conn
        self.family = family


def established(family: int = 4, **cfg: object) -> Conn:
    """An active open to a peer whose MSS option (1460) is above ours (MTU 1420)."""
    cfg.setdefault("delayed_ack", 0)
    s = make_stack(STACK[family], 1, **cfg)
    p = Peer(s, addr=PEER[family], stack_addr=STACK[family], stack_port=50000)
    c = s.tcp_connect(PEER[family], 40000, 0.0, local_port=50000)
    syn = p.take_one(0.0)
    p.send(SYN | ACK, P, syn.seq + 1, options=mss_option(1460), now=0.01)
    p.take_one(0.01)
    assert c.state is TcpState.ESTABLISHED and c.smss == 1420 - HEADERS[family]
    return Conn(s, p, c, family)


def sent(stack: NetStack, now: float) -> list[bytes]:
    return stack.packets_to_send(now)  # type: ignore[attr-defined,no-any-return]


def tcp_of(packet: bytes):  # type: ignore[no-untyped-def]
    pkt = parse_ip(packet)
    assert pkt.proto == IPPROTO_TCP
    return parse_tcp(pkt)


def frag_needed(original: bytes, mtu: int, quote: int = 576 - 28) -> bytes:
    """What a router sends (RFC 1191 section 4, RFC 1812 4.3.2.3): type 3
    code 4, the next-hop MTU in the low 16 bits of the second word."""
    dst = parse_ip(original).src
    return build_icmp(ROUTER[4], dst, 3, 4, struct.pack("!HH", 0, mtu), original[:quote])


def packet_too_big(original: bytes, mtu: int) -> bytes:
    """RFC 4443 3.2: type 2, the MTU in the second word, as much of the
    packet as fits in 1280 octets."""
    dst = parse_ip(original).src
    return build_icmp(ROUTER[6], dst, 2, 0, struct.pack("!I", mtu), original[: 1280 - 48])


def too_big(family: int, original: bytes, mtu: int) -> bytes:
    return frag_needed(original, mtu) if family == 4 else packet_too_big(original, mtu)


def unreachable(family: int, original: bytes, code: int, type_: int | None = None) -> bytes:
    """A destination unreachable (or *type_*) from the hop, quoting *original*."""
    dst = parse_ip(original).src
    if type_ is None:
        type_ = 3 if family == 4 else 1
    quote = original[: 576 - 28] if family == 4 else original[: 1280 - 48]
    return build_icmp(ROUTER[family], dst, type_, code, bytes(4), quote)


# ------------------------------------------------------------ path MTU for TCP


@pytest.mark.parametrize("family, mtu", [(4, 1000), (6, 1280)])
def test_too_big_lowers_the_mss_and_retransmits_the_flight_at_once(family: int, mtu: int) -> None:
    """RFC 1191 / RFC 8201 and Linux's tcp_v4_mtu_reduced / tcp_v6_mtu_reduced:
    the send MSS becomes the reported MTU less the IP and TCP headers
    (tcp_mtu_to_mss), and what is outstanding goes again in that size at once
    (tcp_simple_retransmit), the congestion window untouched."""
    t = established(family)
    una = t.c.snd_una
    t.c.send(bytes(range(256)) * 16)  # 4096 octets: three segments fit the initial window
    flight = sent(t.s, 0.02)
    assert [len(p) for p in flight][:2] == [1420, 1420]
    cwnd, ssthresh = t.c.cwnd, t.c.ssthresh

    t.s.receive_packet(too_big(family, flight[0], mtu), 0.03)
    again = sent(t.s, 0.03)  # at once: no retransmission timer ran
    assert again and all(len(p) <= mtu for p in again)
    segs = [tcp_of(p) for p in again]
    assert segs[0].seq == una & 0xFFFFFFFF
    assert max(len(s.payload) for s in segs) == mtu - HEADERS[family]
    resent = b"".join(s.payload for s in segs)
    outstanding = b"".join(tcp_of(p).payload for p in flight)
    assert outstanding.startswith(resent) and resent  # the flight from SND.UNA, in order
    assert t.c.smss == mtu - HEADERS[family]
    assert (t.c.cwnd, t.c.ssthresh) == (cwnd, ssthresh)  # not a loss: no window cut
    assert t.s.stats.tcp_timeouts == 0
    assert t.s.stats.icmp_pmtu_reductions == 1
    # The peer acknowledges all; what follows keeps the new size.
    t.p.send(ACK, P + 1, (una + 4096) & 0xFFFFFFFF, now=0.05)
    t.c.send(bytes(5000))
    assert all(len(p) <= mtu for p in sent(t.s, 0.05))


def test_an_ipv4_mtu_below_552_is_raised_to_552() -> None:
    """Linux's ip_rt_min_pmtu (net/ipv4/route.c __ip_rt_update_pmtu): a report
    below 552, or the 0 of an RFC 1191-unaware router, is taken as 552."""
    for mtu in (68, 0):
        t = established(4)
        t.c.send(bytes(3000))
        flight = sent(t.s, 0.02)
        t.s.receive_packet(frag_needed(flight[0], mtu), 0.03)
        assert t.c.smss == 552 - 40
        assert all(len(p) <= 552 for p in sent(t.s, 0.03))


def test_an_ipv6_mtu_below_1280_is_ignored() -> None:
    """Linux's tcp_v6_err: a Packet Too Big below IPV6_MIN_MTU is dropped
    (RFC 8200 section 5: every link takes 1280)."""
    t = established(6)
    t.c.send(bytes(3000))
    flight = sent(t.s, 0.02)
    t.s.receive_packet(packet_too_big(flight[0], 1000), 0.03)
    assert t.c.smss == 1420 - 60
    assert sent(t.s, 0.03) == []
    assert t.s.stats.icmp_errors_ignored == 1


@pytest.mark.parametrize("family", [4, 6])
def test_an_mtu_report_not_below_ours_is_ignored(family: int) -> None:
    """RFC 1191 section 6.3 / RFC 8201 section 4: a report of a larger MTU does
    not raise the estimate (Linux: __ip_rt_update_pmtu, tcp_v6_mtu_reduced)."""
    t = established(family)
    t.c.send(bytes(3000))
    flight = sent(t.s, 0.02)
    for mtu in (1420, 1500, 9000):
        t.s.receive_packet(too_big(family, flight[0], mtu), 0.03)
    assert t.c.smss == 1420 - HEADERS[family]
    assert sent(t.s, 0.03) == []
    assert t.s.stats.icmp_errors_ignored == 3 and t.s.stats.icmp_pmtu_reductions == 0


@pytest.mark.parametrize("family", [4, 6])
def test_forged_too_big_errors_are_ignored_and_counted(family: int) -> None:
    """RFC 5927 section 4.1 and Linux's tcp_v4_err/tcp_v6_err: the quoted
    segment must be of an existing connection (our address and port, the
    peer's) with a sequence number within SND.UNA..SND.NXT; anything else is
    dropped (LINUX_MIB_OUTOFWINDOWICMPS, ICMP_MIB_INERRORS), and never
    answered."""
    t = established(family)
    t.c.send(bytes(3000))
    flight = sent(t.s, 0.02)
    seg = tcp_of(flight[0])
    src, dst = addr_bytes(STACK[family]), addr_bytes(PEER[family])
    other = addr_bytes("10.0.0.77" if family == 4 else "fd00::77")

    def forged(seq: int, sport: int = 50000, s: bytes = src, d: bytes = dst) -> bytes:
        # The error always comes to our address; only the quote varies.
        quote = SegmentBuilder(s, d, sport, 40000).build(seq, seg.ack, ACK, 1000, bytes(1380))
        if family == 4:
            return build_icmp(ROUTER[4], src, 3, 4, struct.pack("!HH", 0, 600), quote[:548])
        return build_icmp(ROUTER[6], src, 2, 0, struct.pack("!I", 1280), quote[:1232])

    cases = [
        forged(seg.seq - 1),  # below SND.UNA: already acknowledged
        forged(seg.seq + 3000 + 1),  # beyond SND.NXT: never sent
        forged(seg.seq + 0x80000000),  # half the sequence space away
        forged(seg.seq, sport=50001),  # no such connection
        forged(seg.seq, d=other),  # no such connection
        forged(seg.seq, s=other),  # not our packet
    ]
    for error in cases:
        t.s.receive_packet(error, 0.03)
    assert t.c.smss == 1420 - HEADERS[family]
    assert sent(t.s, 0.03) == []
    assert t.s.stats.icmp_errors_ignored == len(cases)
    # The edges are in the window: SND.UNA and SND.NXT themselves (between() is inclusive).
    t.s.receive_packet(forged(seg.seq + 3000), 0.04)
    assert t.c.smss < 1420 - HEADERS[family]


def test_a_truncated_or_garbled_quote_is_counted_not_raised() -> None:
    """Quotes shorter than the IP header and 8 octets (the least RFC 792 asks
    for), of another IP version, or of a fragment, match nothing of ours."""
    t = established(4)
    t.c.send(bytes(3000))
    flight = sent(t.s, 0.02)
    dst = addr_bytes(STACK[4])
    quotes = [
        flight[0][:27],
        flight[0][:20],
        b"",
        bytes(28),
        b"\x60" + flight[0][1:28],
        flight[0][:6] + b"\x20\x01" + flight[0][8:28],  # a fragment (offset 1)
        b"\x4f" + flight[0][1:28],  # IHL 15: the header would be longer than the quote
    ]
    for q in quotes:
        t.s.receive_packet(build_icmp(ROUTER[4], dst, 3, 4, struct.pack("!HH", 0, 600), q), 0.03)
    assert t.s.stats.icmp_errors_ignored == len(quotes)
    assert t.s.stats.malformed == 0 and t.c.smss == 1380
    assert sent(t.s, 0.03) == []


@pytest.mark.parametrize("family", [4, 6])
def test_the_path_mtu_is_remembered_for_the_destination(family: int) -> None:
    """Linux keeps a reduced path MTU per destination (a route exception) for
    ip_rt_mtu_expires = 10 minutes: a new connection to the same host sends
    segments that fit from the start, and after the expiry probes the full
    size again (RFC 1191 section 6.3, RFC 8201 section 4)."""
    mtu = 1000 if family == 4 else 1280
    t = established(family)
    t.c.send(bytes(3000))
    flight = sent(t.s, 0.02)
    t.s.receive_packet(too_big(family, flight[0], mtu), 0.03)
    sent(t.s, 0.03)

    def new_connection(now: float) -> TcpConnection:
        p = Peer(t.s, addr=PEER[family], port=40001, stack_addr=STACK[family], stack_port=50001)
        c = t.s.tcp_connect(PEER[family], 40001, now, local_port=50001)
        syn = p.take_one(now)
        p.send(SYN | ACK, P, syn.seq + 1, options=mss_option(1460), now=now)
        p.take_one(now)
        return c

    c = new_connection(1.0)
    assert c.smss == mtu - HEADERS[family]
    c.abort()
    sent(t.s, 1.0)
    c = new_connection(1.0 + 601.0)
    assert c.smss == 1420 - HEADERS[family]


@pytest.mark.parametrize("family", [4, 6])
def test_a_lowered_mss_rises_again_when_the_path_mtu_expires(family: int) -> None:
    """Linux's tcp_current_mss compares the route's MTU with the one the
    connection's MSS was computed for (icsk_pmtu_cookie) on every send and
    re-syncs (tcp_sync_mss): once the learned path MTU expires, a connection
    that lives on sends full-size segments again, up to the peer's MSS."""
    mtu = 1000 if family == 4 else 1280
    t = established(family)
    t.c.send(bytes(3000))
    flight = sent(t.s, 0.02)
    t.s.receive_packet(too_big(family, flight[0], mtu), 0.03)
    sent(t.s, 0.03)
    t.p.send(ACK, P + 1, (t.c.snd_una + 3000) & 0xFFFFFFFF, now=0.05)
    assert t.c.snd_una == t.c.snd_max
    t.c.send(bytes(3000))  # before the expiry: still the small size
    assert all(len(p) <= mtu for p in sent(t.s, 300.0))
    t.p.send(ACK, P + 1, t.c.snd_max & 0xFFFFFFFF, now=300.1)
    t.c.send(bytes(3000))
    later = sent(t.s, 0.03 + 601.0)
    assert max(len(p) for p in later) == 1420
    assert t.c.smss == 1420 - HEADERS[family]


def test_the_path_mtu_cache_is_bounded() -> None:
    """Whatever errors come, the stack remembers at most PMTU_CACHE_SIZE
    destinations (and only destinations it has connections to)."""
    s = make_stack("10.0.0.2", 1, delayed_ack=0)
    for i in range(PMTU_CACHE_SIZE + 50):
        host = f"10.{1 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"
        p = Peer(s, addr=host, stack_addr="10.0.0.2", stack_port=50000)
        c = s.tcp_connect(host, 40000, float(i), local_port=50000)
        syn = p.take_one(float(i))
        p.send(SYN | ACK, P, syn.seq + 1, options=mss_option(1460), now=float(i))
        p.take_one(float(i))
        c.send(bytes(2000))
        (first, *_) = sent(s, float(i))
        s.receive_packet(frag_needed(first, 1000), float(i))
        c.abort()
        sent(s, float(i))
    assert s.stats.icmp_pmtu_reductions == PMTU_CACHE_SIZE + 50
    assert s.path_mtu_entries <= PMTU_CACHE_SIZE


# ------------------------------------------------------------- hard and soft errors


V4_CONNECT = [
    # (code, errno) from icmp_err_convert (net/ipv4/icmp.c)
    (0, errno.ENETUNREACH),
    (1, errno.EHOSTUNREACH),
    (2, errno.ENOPROTOOPT),
    (3, errno.ECONNREFUSED),
    (6, errno.ENETUNREACH),
    (7, errno.EHOSTDOWN),
    (9, errno.ENETUNREACH),
    (10, errno.EHOSTUNREACH),
    (13, errno.EHOSTUNREACH),  # communication administratively prohibited (RFC 1812)
]
V6_CONNECT = [
    # (code, errno) from icmpv6_err_convert's tab_unreach (net/ipv6/icmp.c)
    (0, errno.ENETUNREACH),  # no route
    (1, errno.EACCES),  # administratively prohibited
    (3, errno.EHOSTUNREACH),  # address unreachable
    (4, errno.ECONNREFUSED),  # port unreachable
    (5, errno.EACCES),  # source address failed ingress/egress policy
    (6, errno.EACCES),  # reject route
]


def connecting(family: int) -> tuple[PulledStack, TcpConnection, bytes]:
    s = make_stack(STACK[family], 1)
    c = s.tcp_connect(PEER[family], 40000, 0.0, local_port=50000)
    (syn,) = sent(s, 0.0)
    return s, c, syn


@pytest.mark.parametrize(
    "family, code, expected",
    [(4, c, e) for c, e in V4_CONNECT] + [(6, c, e) for c, e in V6_CONNECT],
)
def test_a_destination_unreachable_aborts_a_connect(family: int, code: int, expected: int) -> None:
    """tcp_v4_err / tcp_v6_err: in SYN-SENT an ICMP destination unreachable
    ends the connect with the errno Linux maps it to; nothing is sent back."""
    s, c, syn = connecting(family)
    s.receive_packet(unreachable(family, syn, code), 0.1)
    assert c.state is TcpState.CLOSED
    events = [e for e in s.pending.events if isinstance(e, TcpClosed)]
    assert len(events) == 1 and isinstance(events[0].error, OSError)
    assert events[0].error.errno == expected
    if expected == errno.ECONNREFUSED:
        assert isinstance(events[0].error, ConnectionRefusedError)
    assert sent(s, 0.1) == []  # no RST, and never an ICMP error about an ICMP error
    assert s.next_deadline() is None


@pytest.mark.parametrize(
    "family, type_, expected",
    [(4, 11, errno.EHOSTUNREACH), (4, 12, errno.EPROTO), (6, 3, errno.EHOSTUNREACH),
     (6, 4, errno.EPROTO)],
)  # fmt: skip
def test_time_exceeded_and_parameter_problem_abort_a_connect(
    family: int, type_: int, expected: int
) -> None:
    """tcp_v4_err: ICMP_TIME_EXCEEDED is EHOSTUNREACH, ICMP_PARAMETERPROB
    EPROTO; icmpv6_err_convert the same for ICMPv6's; both end a connect."""
    s, c, syn = connecting(family)
    s.receive_packet(unreachable(family, syn, 0, type_), 0.1)
    assert c.state is TcpState.CLOSED
    assert c.error is not None and getattr(c.error, "errno", None) == expected


def test_errors_linux_ignores_leave_a_connect_alone() -> None:
    """tcp_v4_err: source quench and redirects do nothing, nor does a
    destination unreachable code above NR_ICMP_UNREACH (15); counted."""
    s, c, syn = connecting(4)
    for type_, code in ((4, 0), (5, 1), (3, 16)):
        s.receive_packet(unreachable(4, syn, code, type_), 0.1)
    assert c.state is TcpState.SYN_SENT
    assert s.stats.icmp_unhandled + s.stats.icmp_errors_ignored == 3


def test_an_error_quoting_another_sequence_number_does_not_abort_a_connect() -> None:
    """RFC 5927 4.1: the SYN's sequence number (SND.UNA) or nothing."""
    s, c, syn = connecting(4)
    forged = bytearray(syn)
    seq = struct.unpack_from("!I", forged, 24)[0]
    struct.pack_into("!I", forged, 24, (seq + 5) & 0xFFFFFFFF)
    s.receive_packet(unreachable(4, bytes(forged), 3), 0.1)
    assert c.state is TcpState.SYN_SENT
    assert s.stats.icmp_errors_ignored == 1


@pytest.mark.parametrize("family", [4, 6])
def test_errors_on_an_established_connection_are_soft(family: int) -> None:
    """tcp_v4_err / tcp_v6_err default case: outside a handshake an error is
    only remembered (sk_err_soft); if the connection then times out, that is
    the error it reports instead of ETIMEDOUT (tcp_write_err)."""
    t = established(family, max_retransmits=2)
    t.c.send(bytes(1000))
    (seg,) = sent(t.s, 0.02)
    t.s.receive_packet(unreachable(family, seg, 3 if family == 4 else 0), 0.03)
    assert t.c.state is TcpState.ESTABLISHED
    assert sent(t.s, 0.03) == []
    now = 0.03
    while (d := t.s.next_deadline()) is not None and t.c.state is not TcpState.CLOSED:
        now = d
        t.s.handle_timer(now)
        sent(t.s, now)
    expected = errno.ECONNREFUSED if family == 4 else errno.ENETUNREACH
    assert isinstance(t.c.error, OSError) and t.c.error.errno == expected


def test_an_acknowledgment_clears_a_soft_error() -> None:
    """Linux's tcp_ack: data acknowledged, "something worked": the soft error
    is forgotten, a later timeout is ETIMEDOUT again."""
    t = established(4, max_retransmits=2)
    t.c.send(bytes(1000))
    (seg,) = sent(t.s, 0.02)
    t.s.receive_packet(unreachable(4, seg, 1), 0.03)
    t.p.send(ACK, P + 1, (t.c.snd_una + 1000) & 0xFFFFFFFF, now=0.04)
    t.c.send(bytes(1000))
    sent(t.s, 0.04)
    now = 0.04
    while (d := t.s.next_deadline()) is not None and t.c.state is not TcpState.CLOSED:
        now = d
        t.s.handle_timer(now)
        sent(t.s, now)
    assert isinstance(t.c.error, TimeoutError) and t.c.error.errno == errno.ETIMEDOUT


def test_an_error_about_a_time_wait_connection_is_ignored() -> None:
    """tcp_v4_err: a TIME-WAIT socket takes no ICMP."""
    t = established(4)
    t.c.send(b"x")
    sent(t.s, 0.02)
    t.c.shutdown()
    (fin,) = sent(t.s, 0.02)
    snd = (tcp_of(fin).seq + 1) & 0xFFFFFFFF
    t.p.send(FIN | ACK, P + 1, snd, now=0.03)
    sent(t.s, 0.03)
    assert t.c.state is TcpState.TIME_WAIT
    t.s.receive_packet(unreachable(4, fin, 3), 0.04)
    t.s.receive_packet(frag_needed(fin, 600), 0.04)
    assert t.c.state is TcpState.TIME_WAIT
    assert t.s.stats.icmp_errors_ignored == 2


# --------------------------------------------------------------------------- UDP


@pytest.mark.parametrize("family", [4, 6])
def test_port_unreachable_reaches_a_connected_udp_socket(family: int) -> None:
    """__udp4_lib_err / __udp6_lib_err: a hard error (port unreachable:
    ECONNREFUSED) is reported to a connected socket, and only to one whose
    peer is the quoted destination; an unconnected socket hears nothing."""
    s = make_stack(STACK[family], 1)
    connected = s.udp_bind(5000)
    connected.connect((PEER[family], 53))
    loose = s.udp_bind(5001)
    connected.sendto(b"query", (PEER[family], 53))
    loose.sendto(b"query", (PEER[family], 53))
    a, b = sent(s, 0.0)
    code = 3 if family == 4 else 4
    s.receive_packet(unreachable(family, a, code), 0.1)
    s.receive_packet(unreachable(family, b, code), 0.1)
    errors = [e for e in s.pending.events if isinstance(e, udp.UdpError)]
    assert [(e.socket, e.errno) for e in errors] == [(connected, errno.ECONNREFUSED)]
    assert s.stats.icmp_errors_ignored == 1
    assert sent(s, 0.1) == []
    # A datagram of ours to another peer of the same port is not the connected one.
    other = build_udp(addr_bytes(STACK[family]), addr_bytes(PEER[family]), 5000, 54, b"x")
    s.receive_packet(unreachable(family, other, code), 0.2)
    assert len([e for e in s.pending.events if isinstance(e, udp.UdpError)]) == 1
    assert s.stats.icmp_errors_ignored == 2


def test_a_soft_error_is_not_reported_to_a_udp_socket() -> None:
    """__udp4_lib_err: only "fatal" errors (icmp_err_convert's .fatal) reach
    a connected socket without IP_RECVERR: host unreachable does not."""
    s = make_stack(STACK[4], 1)
    sock = s.udp_bind(5000)
    sock.connect((PEER[4], 53))
    sock.sendto(b"q", (PEER[4], 53))
    (d,) = sent(s, 0.0)
    s.receive_packet(unreachable(4, d, 1), 0.1)
    assert not [e for e in s.pending.events if isinstance(e, udp.UdpError)]
    assert s.stats.icmp_errors_ignored == 1
    assert parse_ip(d).proto == IPPROTO_UDP


def _kernel_connected_udp_error() -> type[BaseException] | None:
    """What asyncio hands a connected datagram endpoint over a kernel socket
    after a datagram to a closed port on loopback (the reference)."""

    async def main() -> type[BaseException] | None:
        loop = asyncio.get_running_loop()
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # nobody listens there now
        got: asyncio.Future[type[BaseException]] = loop.create_future()

        class P(asyncio.DatagramProtocol):
            def error_received(self, exc: Exception) -> None:
                if not got.done():
                    got.set_result(type(exc))

        transport, _ = await loop.create_datagram_endpoint(P, remote_addr=("127.0.0.1", port))
        try:
            for _ in range(20):
                transport.sendto(b"x")
                try:
                    return await asyncio.wait_for(asyncio.shield(got), 0.1)
                except TimeoutError:
                    continue
            return None
        finally:
            transport.close()

    return asyncio.run(main())


def test_a_connected_datagram_endpoint_hears_port_unreachable_as_asyncio_does() -> None:
    """Over the binding, a connected endpoint's protocol gets error_received
    with the exception asyncio gives it over a kernel socket."""
    reference = _kernel_connected_udp_error()
    assert reference is ConnectionRefusedError

    async def main() -> type[BaseException]:
        a = NetStack(["10.0.0.1"])
        b = NetStack(["10.0.0.2"])  # nothing bound: it answers port unreachable
        loop = asyncio.get_running_loop()
        drivers: list[StackDriver] = []
        drivers.append(StackDriver(a, lambda p: loop.call_soon(drivers[1].deliver_ip, p)))
        drivers.append(StackDriver(b, lambda p: loop.call_soon(drivers[0].deliver_ip, p)))
        got: asyncio.Future[type[BaseException]] = loop.create_future()

        class P(asyncio.DatagramProtocol):
            def error_received(self, exc: Exception) -> None:
                if not got.done():
                    got.set_result(type(exc))

        transport, _ = await drivers[0].create_datagram_endpoint(P, remote_addr=("10.0.0.2", 9999))
        transport.sendto(b"hello")
        result = await asyncio.wait_for(got, 10)
        transport.close()
        for d in drivers:
            d.close()
        return result

    assert asyncio.run(main()) is reference
