"""The TCP state machine against scripted segment sequences and a fake clock.

The remote side is played by hand (:class:`Peer`), so every number on the wire
and every timer instant is checked exactly. Sequence numbers in these tests are
32-bit wire values; ``P`` is the peer's ISS.
"""

from __future__ import annotations

import errno
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from netstack_helpers import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    Peer,
    PulledStack,
    make_stack,
    mss_option,
    ws_option,
)

from wireguard.errors import LocalProtocolError
from wireguard.netstack import (
    ConnectionRefused,
    ConnectionReset,
    ConnectionTimedOut,
    NetStack,
    TcpClosed,
    TcpConfig,
    TcpEstablished,
    TcpIncoming,
    TcpReadable,
    TcpState,
    TcpWritable,
)
from wireguard.netstack.ip import parse_ip
from wireguard.netstack.tcp import SegmentBuilder, parse_tcp

P = 1_000_000  # the scripted peer's ISS
M = 0xFFFFFFFF
S = TcpState


def events(stack: NetStack) -> list[object]:
    out = []
    while (ev := stack.next_event()) is not None:
        out.append(ev)
    return out


class Conn:
    """A stack, a scripted peer, the connection and both next sequence numbers."""

    def __init__(self, stack, peer, conn, snd: int, rcv: int) -> None:
        self.s = stack
        self.p = peer
        self.c = conn
        self.snd = snd  # the stack's next sequence number (what the peer acks)
        self.rcv = rcv  # the peer's next sequence number (what the stack acks)


def active(*, now: float = 0.0, rtt: float = 0.0, peer_wnd: int = 65535, **cfg) -> Conn:
    """Active open: connect, SYN-ACK after *rtt*, final ACK."""
    cfg.setdefault("delayed_ack", 0)
    s = make_stack("10.0.0.2", 1, **cfg)
    p = Peer(s, stack_port=50000)
    c = s.tcp_connect("10.0.0.1", 40000, now, local_port=50000)
    syn = p.take_one(now)
    assert syn.flags == SYN
    p.send(SYN | ACK, P, syn.seq + 1, wnd=peer_wnd, options=mss_option(1460), now=now + rtt)
    ack = p.take_one(now + rtt)
    assert ack.flags == ACK and ack.seq == syn.seq + 1 and ack.ack == P + 1
    assert c.state is S.ESTABLISHED
    return Conn(s, p, c, (syn.seq + 1) & M, P + 1)


def passive(*, peer_wnd: int = 65535, options: bytes | None = None, **cfg) -> Conn:
    """Passive open: listen, the peer's SYN, our SYN-ACK, the peer's ACK, accept."""
    cfg.setdefault("delayed_ack", 0)
    s = make_stack("10.0.0.2", 2, **cfg)
    listener = s.tcp_listen(80)
    p = Peer(s)
    p.send(SYN, P, options=mss_option(1460) if options is None else options, wnd=peer_wnd)
    synack = p.take_one()
    assert synack.flags == SYN | ACK and synack.ack == P + 1
    p.send(ACK, P + 1, synack.seq + 1, wnd=peer_wnd)
    c = listener.accept()
    assert c is not None and c.state is S.ESTABLISHED
    assert p.take() == []
    return Conn(s, p, c, (synack.seq + 1) & M, P + 1)


# --------------------------------------------------------------------- handshake


def test_active_open_handshake_and_options() -> None:
    s = make_stack("10.0.0.2", 1)
    p = Peer(s, stack_port=50000)
    c = s.tcp_connect("10.0.0.1", 40000, 0.0, local_port=50000)
    assert c.state is S.SYN_SENT
    syn = p.take_one()
    assert syn.flags == SYN and syn.ack == 0
    assert syn.mss == 1420 - 40  # derived from the MTU (RFC 9293 3.7.1)
    assert syn.wscale == 3  # 256 KiB buffer needs a shift of 3 (RFC 7323 2.3)
    assert syn.wnd == 65535
    assert events(s) == []
    p.send(SYN | ACK, P, syn.seq + 1, options=mss_option(1200) + ws_option(7), wnd=100)
    ack = p.take_one()
    assert (ack.flags, ack.seq, ack.ack) == (ACK, syn.seq + 1, P + 1)
    assert ack.wnd == (256 * 1024) >> 3  # our window is scaled from now on
    assert c.state is S.ESTABLISHED
    assert c.smss == 1200
    assert c.snd_wnd == 100  # the SYN-ACK's window is never scaled (RFC 7323 2.2)
    assert events(s) == [TcpEstablished(c)]
    # Later windows are scaled by the peer's shift.
    p.send(ACK, P + 1, syn.seq + 1, wnd=100)
    assert c.snd_wnd == 100 << 7


def test_passive_open_handshake() -> None:
    s = make_stack("10.0.0.2", 2)
    listener = s.tcp_listen(80)
    p = Peer(s)
    p.send(SYN, P, options=mss_option(1460) + ws_option(2))
    synack = p.take_one()
    assert synack.flags == SYN | ACK
    assert synack.ack == P + 1
    assert synack.mss == 1380 and synack.wscale == 3
    assert listener.accept() is None  # not established yet
    assert [c.state for c in s.tcp_connections] == [S.SYN_RECEIVED]
    p.send(ACK, P + 1, synack.seq + 1, wnd=1000)
    assert events(s) == [TcpIncoming(listener)]
    c = listener.accept()
    assert c is not None and c.state is S.ESTABLISHED
    assert c.snd_wnd == 1000 << 2
    assert c.remote_address == ("10.0.0.1", 40000)
    assert c.local_address == ("10.0.0.2", 80)


def test_passive_open_without_window_scale_answers_without_it() -> None:
    s = make_stack("10.0.0.2", 2)
    s.tcp_listen(80)
    p = Peer(s)
    p.send(SYN, P, options=mss_option(1460))
    synack = p.take_one()
    assert synack.wscale is None  # RFC 7323 2.2: only if the SYN had it
    assert synack.mss == 1380


def test_syn_without_mss_uses_default_536() -> None:
    x = passive(options=b"")
    assert x.c.smss == 536


@pytest.mark.parametrize("mss", [1, 8, 47, 48, 100])
def test_peer_mss_has_a_floor_of_48(mss: int) -> None:
    # A peer's MSS of a few octets would make us send (and keep a SACK
    # scoreboard of) a segment per octet or so; Linux raises a smaller one to
    # TCP_MIN_SND_MSS, 48 (CVE-2019-11479), and so do we, passive or active.
    want = max(mss, 48)
    x = passive(options=mss_option(mss))
    assert x.c.smss == want
    x.c.send(bytes(1000))
    assert {len(s.payload) for s in x.p.take(1.0)} <= {want, 1000 % want}
    s = make_stack("10.0.0.2", 1, delayed_ack=0)
    p = Peer(s, stack_port=50000)
    c = s.tcp_connect("10.0.0.1", 40000, 0.0, local_port=50000)
    syn = p.take_one()
    p.send(SYN | ACK, P, syn.seq + 1, options=mss_option(mss))
    assert c.state is S.ESTABLISHED and c.smss == want


def test_ipv6_mss() -> None:
    s = PulledStack(["fd00::2/128"], mtu=1420)
    c = s.tcp_connect("fd00::1", 80, 0.0)
    pkt = parse_ip(s.packets_to_send()[0])
    seg = parse_tcp(pkt)
    assert seg.mss == 1420 - 60
    assert c.rmss == 1360


def test_duplicate_syn_in_syn_received_resends_syn_ack() -> None:
    s = make_stack("10.0.0.2", 2)
    s.tcp_listen(80)
    p = Peer(s)
    p.send(SYN, P, options=mss_option(1460))
    first = p.take_one()
    p.send(SYN, P, options=mss_option(1460), now=0.5)
    again = p.take_one()
    assert again.flags == SYN | ACK and again.seq == first.seq


def test_simultaneous_open() -> None:
    s = make_stack("10.0.0.2", 1, delayed_ack=0)
    p = Peer(s, stack_port=50000)
    c = s.tcp_connect("10.0.0.1", 40000, 0.0, local_port=50000)
    syn = p.take_one()
    # The peer's own SYN crosses ours (RFC 9293 figure 7).
    p.send(SYN, P, options=mss_option(1460))
    synack = p.take_one()
    assert synack.flags == SYN | ACK and synack.seq == syn.seq and synack.ack == P + 1
    assert c.state is S.SYN_RECEIVED
    # The peer's SYN-ACK: its SYN is old news, its ACK completes the handshake.
    p.send(SYN | ACK, P, syn.seq + 1, options=mss_option(1460))
    assert c.state is S.ESTABLISHED
    assert p.take() == []
    assert TcpEstablished(c) in events(s)


def test_syn_retransmission_and_rto_reset_to_three_seconds() -> None:
    s = make_stack("10.0.0.2", 1, delayed_ack=0)
    p = Peer(s, stack_port=50000)
    c = s.tcp_connect("10.0.0.1", 40000, 0.0, local_port=50000)
    syn = p.take_one(0.0)
    assert s.next_deadline() == 1.0  # RFC 6298 2.1: initial RTO 1 s
    s.handle_timer(1.0)
    again = p.take_one(1.0)
    assert again.flags == SYN and again.seq == syn.seq
    assert s.next_deadline() == 3.0
    p.send(SYN | ACK, P, syn.seq + 1, options=mss_option(1460), now=1.2)
    p.take()
    assert c.state is S.ESTABLISHED
    assert c.srtt is None  # Karn: the SYN was retransmitted, no sample
    assert c.rto == 3.0  # RFC 6298 5.7


def test_syn_gives_up_after_max_syn_retransmits() -> None:
    s = make_stack("10.0.0.2", 1, max_syn_retransmits=2)
    p = Peer(s, stack_port=50000)
    c = s.tcp_connect("10.0.0.1", 40000, 0.0, local_port=50000)
    times = []
    t = 0.0
    p.take(t)
    while (d := s.next_deadline()) is not None:
        t = d
        s.handle_timer(t)
        if p.take(t):
            times.append(t)
    assert times == [1.0, 3.0]  # then at 7.0 it gives up without sending anything
    assert c.state is S.CLOSED
    (ev,) = events(s)
    assert isinstance(ev, TcpClosed) and isinstance(ev.error, ConnectionTimedOut)
    assert isinstance(ev.error, TimeoutError)


# ------------------------------------------------------------------ data transfer


def test_data_both_ways_with_cumulative_acks() -> None:
    x = active()
    assert x.c.send(b"hello") == 5
    seg = x.p.take_one()
    assert seg.payload == b"hello" and seg.seq == x.snd and seg.has(ACK | PSH)
    x.p.send(ACK, x.rcv, x.snd + 5, payload=b"world")
    ack = x.p.take_one()
    assert ack.ack == x.rcv + 5 and ack.payload == b""
    assert x.c.receive() == b"world"
    assert x.c.receive() == b""
    assert x.c.send_buffered == 0
    assert events(x.s) == [TcpEstablished(x.c), TcpReadable(x.c)]


def test_large_send_is_segmented_to_mss_and_limited_by_cwnd() -> None:
    x = active()
    x.c.send(bytes(10_000))
    segs = x.p.take()
    # Initial window (RFC 5681 3.1): min(4*SMSS, max(2*SMSS, 4380)) = 3 segments of 1380.
    assert [len(s.payload) for s in segs] == [1380, 1380, 1380]
    x.p.send(ACK, x.rcv, x.snd + 2 * 1380)
    more = x.p.take()
    # Slow start: two ACKed segments' worth (one ACK -> +1 SMSS) opens 3 more slots.
    assert [s.seq for s in more] == [(x.snd + 1380 * k) & M for k in (3, 4, 5)]


def test_send_buffer_limit_and_writable_event() -> None:
    x = active(send_buffer=4000)
    events(x.s)
    assert x.c.send(bytes(10_000)) == 4000
    assert x.c.send(b"more") == 0
    assert x.c.send_space == 0
    segs = x.p.take()
    x.p.send(ACK, x.rcv, x.snd + len(segs[0].payload))
    assert events(x.s) == [TcpWritable(x.c)]
    assert x.c.send(bytes(10_000)) == 1380


def test_receive_window_closes_and_window_update_after_read() -> None:
    x = active(receive_buffer=8192)
    x.p.send(ACK, x.rcv, x.snd, payload=bytes(4096))
    assert x.p.take_one().wnd == 4096
    x.p.send(ACK, x.rcv + 4096, x.snd, payload=bytes(4096))
    assert x.p.take_one().wnd == 0
    assert len(x.c.receive(1000)) == 1000
    assert x.p.take() == []  # 1000 < min(buffer/2, MSS): no update (receiver SWS avoidance)
    x.c.receive(1000)
    upd = x.p.take_one()
    assert upd.flags == ACK and upd.wnd == 2000 and upd.ack == x.rcv + 8192


def test_zero_receive_window_drops_data_but_takes_the_ack() -> None:
    x = active(receive_buffer=2000)
    x.c.send(b"abc")
    x.p.take()
    x.p.send(ACK, x.rcv, x.snd, payload=bytes(2000))
    assert x.p.take_one().wnd == 0
    # Data into a zero window is dropped, but the ACK in it is processed (RFC 9293 3.10.7.4).
    x.p.send(ACK, x.rcv + 2000, x.snd + 3, payload=b"x")
    ack = x.p.take_one()
    assert ack.ack == x.rcv + 2000 and ack.wnd == 0
    assert x.c.send_buffered == 0


def test_delayed_ack_timer_and_every_second_segment() -> None:
    x = active(delayed_ack=0.04)
    x.p.send(ACK, x.rcv, x.snd, payload=b"a" * 100, now=1.0)
    assert x.p.take(1.0) == []
    assert x.s.next_deadline() == pytest.approx(1.04)
    x.s.handle_timer(1.04)
    assert x.p.take_one(1.04).ack == x.rcv + 100
    x.p.send(ACK, x.rcv + 100, x.snd, payload=b"b" * 100, now=2.0)
    x.p.send(ACK, x.rcv + 200, x.snd, payload=b"c" * 100, now=2.0)
    assert x.p.take_one(2.0).ack == x.rcv + 300  # RFC 1122 4.2.3.2: every second segment


def test_ack_piggybacks_on_data() -> None:
    x = active(delayed_ack=0.04)
    x.p.send(ACK, x.rcv, x.snd, payload=b"ping", now=1.0)
    x.c.send(b"pong")
    seg = x.p.take_one(1.0)
    assert seg.payload == b"pong" and seg.ack == x.rcv + 4


def test_sequence_numbers_wrap_around() -> None:
    def rnd(n: int) -> bytes:
        return b"\xff\xff\xfe\x00" if n == 4 else bytes(n)

    s = PulledStack(["10.0.0.2"], random=rnd, tcp_config=TcpConfig(delayed_ack=0))
    p = Peer(s, stack_port=50000)
    c = s.tcp_connect("10.0.0.1", 40000, 0.0, local_port=50000)
    syn = p.take_one()
    assert syn.seq == 0xFFFFFE00
    peer_iss = 0xFFFFFF00
    p.send(SYN | ACK, peer_iss, syn.seq + 1, options=mss_option(1460))
    p.take()
    data = bytes(range(256)) * 4
    c.send(data)
    got = b"".join(seg.payload for seg in p.take())
    assert got == data
    p.send(ACK, peer_iss + 1, (syn.seq + 1 + len(data)) & M, payload=data)
    ack = p.take_one()
    assert ack.ack == (peer_iss + 1 + len(data)) & M
    assert c.receive() == data
    assert c.send_buffered == 0


# ------------------------------------------------------ retransmission (RFC 6298)


def test_rto_backoff_exact_times_and_karn() -> None:
    # SYN at 0, SYN-ACK at 0.5: R = 0.5, SRTT = 0.5, RTTVAR = 0.25,
    # RTO = SRTT + max(G, 4*RTTVAR) = 1.5 (RFC 6298 2.2).
    x = active(rtt=0.5)
    assert x.c.srtt == 0.5 and x.c.rto == pytest.approx(1.5)
    x.c.send(b"x" * 100)
    first = x.p.take_one(1.0)
    assert x.s.next_deadline() == pytest.approx(2.5)
    x.s.handle_timer(2.49)
    assert x.p.take(2.49) == []
    sent_at = []
    for t in (2.5, 5.5, 11.5):  # 1.5, then doubled: 3, 6 (RFC 6298 5.5)
        assert x.s.next_deadline() == pytest.approx(t)
        x.s.handle_timer(t)
        seg = x.p.take_one(t)
        assert (seg.seq, seg.payload) == (first.seq, first.payload)
        sent_at.append(t)
    assert x.s.next_deadline() == pytest.approx(11.5 + 12.0)
    # The ACK of a retransmitted segment gives no RTT sample (Karn), and the
    # backed-off RTO stays until a new sample (RFC 6298 5.7 / Karn part two).
    x.p.send(ACK, x.rcv, x.snd + 100, now=12.0)
    assert x.c.srtt == 0.5
    assert x.s.next_deadline() is None  # everything acknowledged: timer off (5.2)
    x.c.send(b"y")
    x.p.take(13.0)
    assert x.s.next_deadline() == pytest.approx(13.0 + 12.0)
    x.p.send(ACK, x.rcv, x.snd + 101, now=13.1)
    # New sample 0.1: RTTVAR = 3/4*0.25 + 1/4*|0.5-0.1| = 0.2875, SRTT = 0.45.
    assert x.c.srtt == pytest.approx(0.45)
    assert x.c.rto == pytest.approx(0.45 + 4 * 0.2875)


def test_min_rto_is_one_second_by_default_and_configurable() -> None:
    x = active(rtt=0.01)
    assert x.c.rto == 1.0
    y = active(rtt=0.01, min_rto=0.2)
    assert y.c.rto == pytest.approx(0.2)


def test_rto_timer_restarts_on_partial_ack() -> None:
    x = active(rtt=0.5, initial_window=4)
    x.c.send(bytes(2760))
    x.p.take(1.0)
    assert x.s.next_deadline() == pytest.approx(2.5)
    x.p.send(ACK, x.rcv, x.snd + 1380, now=2.0)
    assert x.s.next_deadline() == pytest.approx(2.0 + x.c.rto)  # RFC 6298 5.3


def test_abort_after_too_many_retransmissions() -> None:
    x = active(rtt=0.5, max_retransmits=3)
    events(x.s)
    x.c.send(b"z")
    x.p.take(1.0)
    for t in (2.5, 5.5, 11.5):
        x.s.handle_timer(t)
        assert x.p.take_one(t).payload == b"z"
    x.s.handle_timer(23.5)
    rst = x.p.take_one(23.5)
    assert rst.has(RST)
    assert x.c.state is S.CLOSED
    (ev,) = events(x.s)
    assert isinstance(ev, TcpClosed) and isinstance(ev.error, ConnectionTimedOut)
    assert ev.error.errno == errno.ETIMEDOUT  # what Linux's tcp_write_timeout reports
    assert x.s.tcp_connections == []
    with pytest.raises(ConnectionTimedOut):
        x.c.send(b"again")


def test_rto_collapses_cwnd_and_goes_back() -> None:
    x = active(rtt=0.5, initial_window=4)
    x.c.send(bytes(4 * 1380))
    segs = x.p.take(1.0)
    assert len(segs) == 4
    x.s.handle_timer(2.5)
    (re,) = x.p.take(2.5)
    assert re.seq == segs[0].seq
    assert x.c.cwnd == 1380  # loss window (RFC 5681 eq. 4)
    assert x.c.ssthresh == 2 * 1380  # max(FlightSize/2, 2*SMSS)
    # The receiver had the rest: a cumulative ACK jumps past the go-back point.
    x.p.send(ACK, x.rcv, x.snd + 4 * 1380, now=2.6)
    assert x.p.take(2.6) == []
    assert x.c.send_buffered == 0


# -------------------------------------------------------- fast retransmit (5681)


def test_fast_retransmit_on_exactly_three_duplicate_acks() -> None:
    x = active(initial_window=10)
    x.c.send(bytes(10 * 1380))
    segs = x.p.take(1.0)
    assert len(segs) == 10
    x.p.send(ACK, x.rcv, x.snd + 1380, now=1.1)  # the second segment was lost
    assert x.p.take(1.1) == []  # no new data to send
    x.p.send(ACK, x.rcv, x.snd + 1380, now=1.11)
    x.p.send(ACK, x.rcv, x.snd + 1380, now=1.12)
    assert x.p.take(1.12) == []  # two duplicates: nothing yet
    x.p.send(ACK, x.rcv, x.snd + 1380, now=1.13)
    (re,) = x.p.take(1.13)
    assert re.seq == segs[1].seq and re.payload == segs[1].payload
    flight = 9 * 1380
    assert x.c.ssthresh == flight // 2  # RFC 5681 eq. (4)
    assert x.c.cwnd == flight // 2 + 3 * 1380  # RFC 5681 3.2 step 3
    x.p.send(ACK, x.rcv, x.snd + 1380, now=1.14)
    assert x.c.cwnd == flight // 2 + 4 * 1380  # inflated per further duplicate
    # A full acknowledgment ends recovery (RFC 6582 3.2 step 3).
    x.p.send(ACK, x.rcv, x.snd + 10 * 1380, now=1.2)
    assert x.c.cwnd == min(flight // 2, 1380 + 1380)
    assert x.c.send_buffered == 0


def test_limited_transmit_sends_one_new_segment_per_first_two_duplicates() -> None:
    """RFC 3042: with more data waiting, each of the first two duplicate ACKs lets
    one new segment out beyond cwnd, so a small window still reaches three."""
    x = active(initial_window=4)
    x.c.send(bytes(10 * 1380))
    segs = x.p.take(1.0)
    assert len(segs) == 4  # cwnd
    x.p.send(ACK, x.rcv, x.snd + 1380, now=1.1)  # the second segment was lost
    new = x.p.take(1.1)  # slow start: the ACK of the first lets two more go
    assert len(new) == 2
    x.p.send(ACK, x.rcv, x.snd + 1380, now=1.11)
    (lt1,) = x.p.take(1.11)
    assert lt1.seq == new[-1].seq + 1380 and len(lt1.payload) == 1380
    x.p.send(ACK, x.rcv, x.snd + 1380, now=1.12)
    (lt2,) = x.p.take(1.12)
    assert lt2.seq == lt1.seq + 1380
    assert x.c.cwnd == 5 * 1380  # limited transmit leaves cwnd alone
    x.p.send(ACK, x.rcv, x.snd + 1380, now=1.13)
    (re,) = x.p.take(1.13)  # the third: fast retransmit, nothing new
    assert re.seq == segs[1].seq


def test_newreno_partial_ack_retransmits_next_hole() -> None:
    x = active(initial_window=10)
    x.c.send(bytes(10 * 1380))
    segs = x.p.take(1.0)
    for _ in range(4):  # the first segment was lost: 1 new... no, all duplicates
        x.p.send(ACK, x.rcv, x.snd, now=1.1)
    (re,) = x.p.take(1.1)
    assert re.seq == segs[0].seq
    # Segments 1 and 4 were lost: the retransmission fills 1, the ACK stops at 4.
    x.p.send(ACK, x.rcv, x.snd + 4 * 1380, now=1.2)
    out = x.p.take(1.2)
    assert out[0].seq == segs[4].seq  # partial ACK: retransmit the next hole at once


def test_no_fast_retransmit_when_window_changes_or_data_carried() -> None:
    x = active(initial_window=10)
    x.c.send(bytes(10 * 1380))
    x.p.take(1.0)
    x.p.send(ACK, x.rcv, x.snd + 1380, wnd=60000)
    x.p.send(ACK, x.rcv, x.snd + 1380, wnd=50000)  # window update, not a duplicate
    x.p.send(ACK, x.rcv, x.snd + 1380, wnd=50000, payload=b"d")  # carries data
    x.p.send(ACK, x.rcv + 1, x.snd + 1380, wnd=50000)
    assert all(s.payload == b"" for s in x.p.take())


# --------------------------------------------------- zero window and persist timer


def test_zero_window_persist_probe_backoff_and_reopen() -> None:
    x = active(peer_wnd=2760)
    x.c.send(bytes(10_000))
    segs = x.p.take(1.0)
    assert [len(s.payload) for s in segs] == [1380, 1380]  # the peer's window is the limit
    x.p.send(ACK, x.rcv, x.snd + 2760, wnd=0, now=1.1)
    assert x.p.take(1.1) == []
    rto = x.c.rto
    assert rto == 1.0
    assert x.s.next_deadline() == pytest.approx(1.1 + rto)
    x.s.handle_timer(1.1 + rto)
    probe = x.p.take_one(1.1 + rto)
    # RFC 9293 3.8.6.1: one octet of new data beyond the closed window.
    assert probe.seq == (x.snd + 2760) & M and len(probe.payload) == 1
    x.p.send(ACK, x.rcv, x.snd + 2760, wnd=0, now=2.2)  # still closed: probe dropped
    assert x.p.take(2.2) == []
    assert x.s.next_deadline() == pytest.approx(2.1 + 2 * rto)  # backed off
    x.s.handle_timer(2.1 + 2 * rto)
    assert len(x.p.take_one(2.1 + 2 * rto).payload) == 1
    assert x.c.state is S.ESTABLISHED  # probes never count against the connection
    # The window reopens: sending resumes where it stopped.
    x.p.send(ACK, x.rcv, x.snd + 2760, wnd=65535, now=5.0)
    resumed = x.p.take(5.0)
    assert resumed[0].seq == (x.snd + 2760) & M
    assert x.s.next_deadline() == pytest.approx(5.0 + x.c.rto)  # RTO, not persist
    # Everything arrives eventually.
    acked = 2760
    t = 5.0
    while acked < 10_000:
        acked = min(10_000, acked + sum(len(s.payload) for s in resumed))
        t += 0.1
        x.p.send(ACK, x.rcv, x.snd + acked, now=t)
        resumed = x.p.take(t)
    assert x.c.send_buffered == 0


def test_probe_accepted_when_window_reopened_silently() -> None:
    x = active(peer_wnd=1380)
    x.c.send(bytes(2000))
    x.p.take(1.0)
    x.p.send(ACK, x.rcv, x.snd + 1380, wnd=0, now=1.1)
    assert x.p.take(1.1) == []
    x.s.handle_timer(2.1)
    probe = x.p.take_one(2.1)
    # The window update got lost; the peer takes the probe octet and acknowledges it.
    x.p.send(ACK, x.rcv, x.snd + 1381, wnd=10000, now=2.2)
    rest = x.p.take(2.2)
    assert probe.payload and rest[0].seq == (x.snd + 1381) & M
    assert sum(len(s.payload) for s in rest) == 2000 - 1381


def _shut_window() -> Conn:
    """An established connection with data waiting and the peer's window shut."""
    x = active(peer_wnd=1380)
    x.c.send(bytes(5000))
    assert len(x.p.take(1.0)) == 1
    x.p.send(ACK, x.rcv, x.snd + 1380, wnd=0, now=1.1)
    assert x.p.take(1.1) == []
    return x


def test_window_shut_for_days_probes_at_max_rto_and_stays_open() -> None:
    # RFC 1122 4.2.2.17: the receiver may keep its window shut indefinitely, and
    # the sender stays open while its probes are acknowledged; the interval is
    # the backed-off RTO, bounded by max_rto (RFC 6298 2.5). (It used to grow
    # 2**n unbounded until the float overflowed, about 17 hours in.)
    x = _shut_window()
    t, probes, last = 1.1, 0, None
    while t < 3 * 86400:
        t = x.s.next_deadline()
        x.s.handle_timer(t)
        for seg in x.p.take(t):
            assert len(seg.payload) == 1
            if last is not None:
                assert t - last <= 60.0 + 1e-6
            probes, last = probes + 1, t
            x.p.send(ACK, x.rcv, x.snd + 1380, wnd=0, now=t)  # answered: still shut
    assert probes > 3 * 86400 // 60 - 10
    assert t - last == pytest.approx(0.0) and x.s.next_deadline() == pytest.approx(t + 60.0)
    assert x.c.state is S.ESTABLISHED and x.c.error is None


def test_unanswered_window_probes_time_out_after_max_retransmits() -> None:
    # RFC 9293 3.8.6.1 keeps the connection open only while the probes are
    # acknowledged; unanswered, they count like retransmissions against R2
    # (3.8.3): max_retransmits probes, then the connection times out, as Linux's
    # tcp_probe_timer aborts after tcp_retries2 unanswered probes.
    x = _shut_window()
    limit = x.s.tcp_config.max_retransmits

    def probe(answer: bool) -> None:
        t = x.s.next_deadline()
        x.s.handle_timer(t)
        (seg,) = x.p.take(t)
        assert len(seg.payload) == 1 and x.c.state is S.ESTABLISHED
        if answer:
            x.p.send(ACK, x.rcv, x.snd + 1380, wnd=0, now=t)

    for _ in range(limit - 1):
        probe(answer=False)
    probe(answer=True)  # an acknowledged probe starts the count again
    for _ in range(limit):
        probe(answer=False)
    t = x.s.next_deadline()
    x.s.handle_timer(t)
    (rst,) = x.p.take(t)
    assert rst.flags & RST
    assert x.c.state is S.CLOSED and isinstance(x.c.error, ConnectionTimedOut)


# ----------------------------------------------------------- out-of-order arrival


def test_out_of_order_reassembly_and_duplicate_acks() -> None:
    x = active()
    x.p.send(ACK, x.rcv + 100, x.snd, payload=b"B" * 100)
    dup = x.p.take_one()
    assert dup.ack == x.rcv  # immediate duplicate ACK (RFC 5681 4.2)
    x.p.send(ACK, x.rcv + 200, x.snd, payload=b"C" * 100)
    assert x.p.take_one().ack == x.rcv
    assert x.c.receive() == b""
    x.p.send(ACK, x.rcv, x.snd, payload=b"A" * 100)
    assert x.p.take_one().ack == x.rcv + 300  # gap filled: ACK at once
    assert x.c.receive() == b"A" * 100 + b"B" * 100 + b"C" * 100


def sack_blocks(x: Conn) -> list[list[tuple[int, int]] | None]:
    """For each segment the stack sends now: its SACK blocks (None: no option)."""
    out: list[list[tuple[int, int]] | None] = []
    for packet in x.s.packets_to_send():
        data = parse_ip(packet).payload
        end = (data[12] >> 4) * 4
        i, blocks = 20, None
        while i < end and data[i] != 0:
            if data[i] == 1:
                i += 1
                continue
            kind, length = data[i], data[i + 1]
            if kind == 5:
                body = data[i + 2 : i + length]
                blocks = [
                    (
                        int.from_bytes(body[j : j + 4], "big"),
                        int.from_bytes(body[j + 4 : j + 8], "big"),
                    )
                    for j in range(0, len(body), 8)
                ]
            i += length
        out.append(blocks)
    return out


def test_sack_permitted_is_offered_and_answered_only_when_offered() -> None:
    s = make_stack("10.0.0.2", 1)
    p = Peer(s, stack_port=50000)
    s.tcp_connect("10.0.0.1", 40000, 0.0, local_port=50000)
    assert p.take_one().raw.sack_ok  # RFC 2018 2: in our SYN
    s = make_stack("10.0.0.2", 2)
    s.tcp_listen(80)
    p = Peer(s)
    p.send(SYN, P, options=mss_option(1460) + b"\x01\x01\x04\x02")
    assert p.take_one().raw.sack_ok
    p = Peer(s, port=40001)
    p.send(SYN, P, options=mss_option(1460))
    assert not p.take_one().raw.sack_ok  # only if the SYN had it
    s = make_stack("10.0.0.2", 3, sack=False)
    s.tcp_listen(80)
    p = Peer(s)
    p.send(SYN, P, options=mss_option(1460) + b"\x01\x01\x04\x02")
    assert not p.take_one().raw.sack_ok


def test_sack_blocks_report_out_of_order_data_most_recent_first() -> None:
    x = passive(options=mss_option(1460) + b"\x01\x01\x04\x02")
    r = x.rcv
    x.p.send(ACK, r + 100, x.snd, payload=b"B" * 100)
    assert sack_blocks(x) == [[(r + 100, r + 200)]]
    x.p.send(ACK, r + 300, x.snd, payload=b"D" * 100)
    assert sack_blocks(x) == [[(r + 300, r + 400), (r + 100, r + 200)]]  # RFC 2018 4
    x.p.send(ACK, r + 200, x.snd, payload=b"C" * 100)  # joins both blocks into one
    assert sack_blocks(x) == [[(r + 100, r + 400)]]
    for k in range(5):  # more holes than blocks fit: at most 4, the latest first
        x.p.send(ACK, r + 500 + 200 * k, x.snd, payload=b"E" * 100)
        x.s.packets_to_send()
    x.p.send(ACK, r + 1500, x.snd, payload=b"F" * 100)
    (blocks,) = sack_blocks(x)
    assert blocks is not None and len(blocks) == 4 and blocks[0] == (r + 1500, r + 1600)
    x.p.send(ACK, r, x.snd, payload=b"A" * 100)  # the first hole filled
    assert sack_blocks(x) == [[(r + 1500, r + 1600), (r + 1300, r + 1400), (r + 1100, r + 1200),
                               (r + 900, r + 1000)]]  # fmt: skip
    assert x.c.receive() == b"A" * 100 + b"B" * 100 + b"C" * 100 + b"D" * 100


def test_no_sack_blocks_without_agreement() -> None:
    x = passive()  # the peer's SYN had no SACK-permitted
    x.p.send(ACK, x.rcv + 100, x.snd, payload=b"B" * 100)
    assert sack_blocks(x) == [None]


def test_overlapping_retransmissions_are_trimmed() -> None:
    x = active()
    data = bytes(range(250))
    x.p.send(ACK, x.rcv + 50, x.snd, payload=data[50:150])
    x.p.send(ACK, x.rcv + 100, x.snd, payload=data[100:250])
    x.p.send(ACK, x.rcv, x.snd, payload=data[0:120])
    x.p.send(ACK, x.rcv, x.snd, payload=data[0:60])  # old duplicate
    assert x.c.receive() == data
    assert x.p.take()[-1].ack == x.rcv + 250


@settings(max_examples=60, deadline=None)
@given(
    cuts=st.lists(st.integers(1, 2999), max_size=25, unique=True),
    order=st.randoms(use_true_random=False),
    dups=st.lists(st.integers(0, 30), max_size=6),
)
def test_reassembly_property(cuts: list[int], order, dups: list[int]) -> None:
    """Any segmentation, any arrival order, with duplicates: the bytes come out whole."""
    x = active()
    data = bytes((i * 7) & 0xFF for i in range(3000))
    bounds = [0, *sorted(cuts), 3000]
    pieces = [(a, data[a:b]) for a, b in itertools.pairwise(bounds)]
    pieces += [pieces[d % len(pieces)] for d in dups]
    order.shuffle(pieces)
    for off, chunk in pieces:
        x.p.send(ACK, x.rcv + off, x.snd, payload=chunk)
    assert x.c.receive() == data
    assert x.p.take()[-1].ack == (x.rcv + 3000) & M


# ----------------------------------------------------------------- FIN sequences


def test_active_close_through_time_wait_expiry() -> None:
    x = active()
    events(x.s)
    x.c.shutdown()
    fin = x.p.take_one(1.0)
    assert fin.flags == FIN | ACK and fin.seq == x.snd
    assert x.c.state is S.FIN_WAIT_1
    x.p.send(ACK, x.rcv, x.snd + 1, now=1.1)
    assert x.c.state is S.FIN_WAIT_2
    # Half close: the peer can still send.
    x.p.send(ACK, x.rcv, x.snd + 1, payload=b"late", now=1.2)
    x.p.take(1.2)
    assert x.c.receive() == b"late"
    x.p.send(FIN | ACK, x.rcv + 4, x.snd + 1, now=2.0)
    ack = x.p.take_one(2.0)
    assert ack.flags == ACK and ack.ack == x.rcv + 5
    assert x.c.state is S.TIME_WAIT
    assert x.c.at_eof
    assert TcpClosed(x.c, None) in events(x.s)
    assert x.s.next_deadline() == pytest.approx(2.0 + 60.0)  # 2*MSL, MSL = 30 s
    x.s.handle_timer(61.9)
    assert x.c.state is S.TIME_WAIT
    x.s.handle_timer(62.0)
    assert x.c.state is S.CLOSED
    assert x.s.tcp_connections == []


def test_retransmitted_fin_in_time_wait_is_acked_and_restarts_timer() -> None:
    x = active(msl=10.0)
    x.c.shutdown()
    x.p.take()
    x.p.send(FIN | ACK, x.rcv, x.snd + 1, now=1.0)
    x.p.take(1.0)
    assert x.s.next_deadline() == pytest.approx(21.0)
    x.p.send(FIN | ACK, x.rcv, x.snd + 1, now=5.0)
    assert x.p.take_one(5.0).ack == x.rcv + 1
    assert x.s.next_deadline() == pytest.approx(25.0)


def test_passive_close() -> None:
    x = active()
    events(x.s)
    x.p.send(FIN | ACK, x.rcv, x.snd, payload=b"bye")
    ack = x.p.take_one()
    assert ack.ack == x.rcv + 4
    assert x.c.state is S.CLOSE_WAIT
    assert events(x.s) == [TcpReadable(x.c)]
    assert x.c.receive() == b"bye" and x.c.at_eof
    assert x.c.send(b"reply") == 5  # CLOSE-WAIT may still send
    x.c.shutdown()
    segs = x.p.take()
    assert segs[-1].has(FIN) and x.c.state is S.LAST_ACK
    assert b"".join(s.payload for s in segs) == b"reply"
    x.p.send(ACK, x.rcv + 4, x.snd + 6)
    assert x.c.state is S.CLOSED
    assert events(x.s) == [TcpClosed(x.c, None)]
    assert x.s.tcp_connections == []


def test_simultaneous_close() -> None:
    x = active()
    x.c.shutdown()
    fin = x.p.take_one()
    # The peer's FIN crosses ours: it does not acknowledge our FIN.
    x.p.send(FIN | ACK, x.rcv, x.snd, now=1.0)
    ack = x.p.take_one(1.0)
    assert ack.ack == x.rcv + 1 and ack.seq == (fin.seq + 1) & M
    assert x.c.state is S.CLOSING
    x.p.send(ACK, x.rcv + 1, x.snd + 1, now=1.1)
    assert x.c.state is S.TIME_WAIT


def test_out_of_order_fin() -> None:
    x = active()
    x.p.send(FIN | ACK, x.rcv + 3, x.snd, payload=b"def")
    assert x.p.take_one().ack == x.rcv
    assert x.c.state is S.ESTABLISHED
    x.p.send(ACK, x.rcv, x.snd, payload=b"abc")
    assert x.p.take_one().ack == x.rcv + 7
    assert x.c.state is S.CLOSE_WAIT
    assert x.c.receive() == b"abcdef" and x.c.at_eof


def test_fin_waits_for_queued_data() -> None:
    x = active(peer_wnd=1000)
    x.c.send(bytes(1500))
    x.c.shutdown()
    segs = x.p.take()
    assert len(segs) == 1 and not segs[0].has(FIN)  # window-limited: FIN waits
    x.p.send(ACK, x.rcv, x.snd + 1000, wnd=1000)
    (last,) = x.p.take()
    assert len(last.payload) == 500 and last.has(FIN)


def test_close_with_unread_data_resets() -> None:
    x = active()
    x.p.send(ACK, x.rcv, x.snd, payload=b"unread")
    x.p.take()
    x.c.close()
    rst = x.p.take_one()
    assert rst.has(RST) and x.c.state is S.CLOSED  # RFC 1122 4.2.2.13


def test_data_after_close_resets() -> None:
    x = active()
    x.c.close()
    x.p.take()
    x.p.send(ACK, x.rcv, x.snd + 1, payload=b"too late")
    assert x.p.take_one().has(RST)
    assert x.c.state is S.CLOSED


def test_fin_wait_2_timeout_after_close() -> None:
    x = active(fin_wait_2_timeout=5.0)
    x.c.close()
    x.p.take(1.0)
    x.p.send(ACK, x.rcv, x.snd + 1, now=1.0)
    assert x.c.state is S.FIN_WAIT_2
    x.s.handle_timer(6.0)
    assert x.c.state is S.CLOSED


def test_send_after_shutdown_is_a_local_error() -> None:
    x = active()
    x.c.shutdown()
    with pytest.raises(LocalProtocolError):
        x.c.send(b"x")


def test_abort_sends_rst() -> None:
    x = active()
    x.c.abort()
    rst = x.p.take_one()
    assert rst.has(RST) and rst.seq == x.snd
    assert x.s.tcp_connections == []


# --------------------------------------------------------- RST in every state


def _to_state(state: S) -> Conn:
    """A connection in *state*, with ``snd``/``rcv`` the next sequence numbers."""
    if state is S.SYN_RECEIVED:
        s = make_stack("10.0.0.2", 2, delayed_ack=0)
        s.tcp_listen(80)
        p = Peer(s)
        p.send(SYN, P, options=mss_option(1460))
        synack = p.take_one()
        (c,) = s.tcp_connections
        return Conn(s, p, c, (synack.seq + 1) & M, P + 1)
    x = passive()
    if state is S.ESTABLISHED:
        pass
    elif state in (S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSING, S.TIME_WAIT):
        x.c.shutdown()
        x.p.take()
        if state is S.FIN_WAIT_2 or state is S.TIME_WAIT:
            x.p.send(ACK, x.rcv, x.snd + 1)
            if state is S.TIME_WAIT:
                x.p.send(FIN | ACK, x.rcv, x.snd + 1)
                x.rcv += 1
        elif state is S.CLOSING:
            x.p.send(FIN | ACK, x.rcv, x.snd)
            x.rcv += 1
        x.snd += 1
    elif state in (S.CLOSE_WAIT, S.LAST_ACK):
        x.p.send(FIN | ACK, x.rcv, x.snd)
        x.rcv += 1
        if state is S.LAST_ACK:
            x.c.shutdown()
            x.snd += 1
    x.p.take()
    assert x.c.state is state
    events(x.s)
    return x


SYNCHRONIZED = [
    S.SYN_RECEIVED,
    S.ESTABLISHED,
    S.FIN_WAIT_1,
    S.FIN_WAIT_2,
    S.CLOSE_WAIT,
    S.CLOSING,
    S.LAST_ACK,
    S.TIME_WAIT,
]


@pytest.mark.parametrize("state", SYNCHRONIZED, ids=lambda s: s.value)
def test_rst_exact_sequence_closes(state: S) -> None:
    x = _to_state(state)
    before = x.s.stats.tcp_segments_rejected
    x.p.send(RST, x.rcv)
    assert x.c.state is S.CLOSED
    assert x.s.stats.tcp_segments_rejected == before  # accepted
    assert x.p.take() == []  # never answer a RST
    assert x.s.tcp_connections == []
    evs = events(x.s)
    if state in (S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSE_WAIT):
        (ev,) = evs
        assert isinstance(ev, TcpClosed) and isinstance(ev.error, ConnectionReset)
        assert isinstance(ev.error, ConnectionResetError)
    elif state is S.SYN_RECEIVED:
        assert evs == []  # an embryo from a listener just goes away (back to LISTEN)
    elif state is S.TIME_WAIT:
        assert evs == []  # already reported closed on entering TIME-WAIT
    else:
        assert evs == [TcpClosed(x.c, None)]


@pytest.mark.parametrize("state", SYNCHRONIZED, ids=lambda s: s.value)
def test_rst_in_window_gets_challenge_ack(state: S) -> None:
    x = _to_state(state)
    before = x.s.stats.tcp_segments_rejected
    x.p.send(RST, x.rcv + 10)
    ack = x.p.take_one()  # RFC 5961 3.2: a challenge ACK, the connection stays
    assert ack.flags == ACK and ack.ack == x.rcv and ack.seq == x.snd
    assert x.c.state is state
    assert x.s.stats.tcp_segments_rejected == before + 1


@pytest.mark.parametrize("state", SYNCHRONIZED, ids=lambda s: s.value)
@pytest.mark.parametrize("offset", [-5000, 10_000_000])
def test_rst_out_of_window_is_ignored(state: S, offset: int) -> None:
    x = _to_state(state)
    before = x.s.stats.tcp_segments_rejected
    x.p.send(RST, x.rcv + offset)
    assert x.p.take() == []
    assert x.c.state is state
    assert x.s.stats.tcp_segments_rejected == before + 1  # ignored, but counted


@pytest.mark.parametrize("state", SYNCHRONIZED[1:], ids=lambda s: s.value)
def test_syn_in_synchronized_state_gets_challenge_ack(state: S) -> None:
    x = _to_state(state)
    before = x.s.stats.tcp_segments_rejected
    x.p.send(SYN, x.rcv + 5)
    ack = x.p.take_one()  # RFC 5961 4.2 (RFC 9293 3.10.7.4 fourth)
    assert ack.flags == ACK and ack.ack == x.rcv
    assert x.c.state is state
    assert x.s.stats.tcp_segments_rejected == before + 1


def test_segments_not_accepted_are_counted() -> None:
    # RFC 9293 3.10.7.4: each of these is discarded (some answered with an
    # ACK); none may go uncounted.
    x = passive()
    rejected = x.s.stats.tcp_segments_rejected
    cases = [
        (PSH, x.rcv, 0, b"hello"),  # fifth check: no ACK bit, dropped
        (ACK, x.rcv, x.snd + 5000, b""),  # acknowledges what was never sent
        (ACK, x.rcv, x.snd - 300_000, b""),  # RFC 5961 5.2: far too old
        (ACK | PSH, x.rcv + 10_000_000, x.snd, b"x"),  # outside the window
        (ACK | PSH, x.rcv - 100, x.snd, b"x" * 10),  # all of it came before
    ]
    for n, (flags, seq, ack, payload) in enumerate(cases, 1):
        x.p.send(flags, seq, ack, payload=payload)
        x.p.take()
        assert x.s.stats.tcp_segments_rejected == rejected + n, flags
    assert x.c.readable_bytes == 0 and x.c.state is S.ESTABLISHED
    # A RST to a listener is ignored (3.10.7.2), and counted.
    x.p.port += 1
    x.p.send(RST, 12345)
    assert x.p.take() == [] and x.s.stats.tcp_segments_rejected == rejected + len(cases) + 1


def test_data_beyond_the_receive_window_is_counted() -> None:
    # What lies past the window's right edge is trimmed off, and a full
    # buffer takes no data at all (RFC 9293 3.10.7.4): counted in octets.
    x = passive(receive_buffer=4096)
    x.p.send(ACK | PSH, x.rcv, x.snd, payload=bytes(6000))
    assert x.c.readable_bytes == 4096
    assert x.s.stats.tcp_octets_beyond_window == 6000 - 4096
    x.p.take()
    x.p.send(ACK | PSH, x.rcv + 4096, x.snd, payload=bytes(1000))  # the window is 0
    assert x.c.readable_bytes == 4096
    assert x.s.stats.tcp_octets_beyond_window == 6000 - 4096 + 1000
    assert x.s.stats.tcp_segments_rejected == 0  # accepted, only trimmed


def test_rst_in_syn_sent_with_acceptable_ack_refuses() -> None:
    s = make_stack("10.0.0.2", 1)
    p = Peer(s, stack_port=50000)
    c = s.tcp_connect("10.0.0.1", 40000, 0.0, local_port=50000)
    syn = p.take_one()
    p.send(RST | ACK, 0, syn.seq + 1)
    assert c.state is S.CLOSED
    (ev,) = events(s)
    assert isinstance(ev, TcpClosed) and isinstance(ev.error, ConnectionRefused)


@pytest.mark.parametrize("flags, ack_off", [(RST | ACK, 5), (RST | ACK, 0), (RST, 1)])
def test_rst_in_syn_sent_unacceptable_is_ignored(flags: int, ack_off: int) -> None:
    s = make_stack("10.0.0.2", 1)
    p = Peer(s, stack_port=50000)
    c = s.tcp_connect("10.0.0.1", 40000, 0.0, local_port=50000)
    syn = p.take_one()
    p.send(flags, 0, syn.seq + ack_off)
    assert c.state is S.SYN_SENT
    assert p.take() == []
    assert s.stats.tcp_segments_rejected == 1


def test_bad_ack_in_syn_sent_gets_rst() -> None:
    s = make_stack("10.0.0.2", 1)
    p = Peer(s, stack_port=50000)
    c = s.tcp_connect("10.0.0.1", 40000, 0.0, local_port=50000)
    syn = p.take_one()
    p.send(SYN | ACK, P, syn.seq + 77)
    rst = p.take_one()
    assert rst.flags == RST and rst.seq == (syn.seq + 77) & M
    assert c.state is S.SYN_SENT
    assert s.stats.tcp_segments_rejected == 1


def test_rst_in_active_syn_received_refuses() -> None:
    s = make_stack("10.0.0.2", 1)
    p = Peer(s, stack_port=50000)
    c = s.tcp_connect("10.0.0.1", 40000, 0.0, local_port=50000)
    p.take()
    p.send(SYN, P)
    p.take()
    assert c.state is S.SYN_RECEIVED
    p.send(RST, P + 1)
    (ev,) = events(s)
    assert isinstance(ev.error, ConnectionRefused)


def test_bad_ack_in_syn_received_gets_rst() -> None:
    x = _to_state(S.SYN_RECEIVED)
    x.p.send(ACK, x.rcv, x.snd + 1000)
    rst = x.p.take_one()
    assert rst.flags == RST and rst.seq == (x.snd + 1000) & M
    assert x.c.state is S.SYN_RECEIVED


def test_ack_beyond_snd_nxt_is_answered_and_dropped() -> None:
    x = active()
    x.p.send(ACK, x.rcv, x.snd + 50, payload=b"data")
    ack = x.p.take_one()
    assert ack.ack == x.rcv  # the data was not taken
    assert x.c.receive() == b""


# ------------------------------------------------------------ no connection


def test_rst_for_syn_to_closed_port() -> None:
    s = make_stack("10.0.0.2", 1)
    p = Peer(s, stack_port=81)
    p.send(SYN, 5000)
    rst = p.take_one()
    # RFC 9293 3.10.7.1: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>
    assert rst.flags == RST | ACK and rst.seq == 0 and rst.ack == 5001
    assert s.stats.tcp_no_connection == 1


def test_rst_for_ack_to_closed_port_and_to_listener() -> None:
    s = make_stack("10.0.0.2", 1)
    s.tcp_listen(80)
    for port in (80, 81):
        p = Peer(s, stack_port=port)
        p.send(ACK, 5000, 123456, payload=b"x")
        rst = p.take_one()
        assert rst.flags == RST and rst.seq == 123456  # <SEQ=SEG.ACK><CTL=RST>


def test_no_rst_for_rst() -> None:
    s = make_stack("10.0.0.2", 1)
    s.tcp_listen(80)
    for port in (80, 81):
        Peer(s, stack_port=port).send(RST | ACK, 5000, 1)
    assert s.packets_to_send() == []


def test_listener_backlog_drops_syns_silently_without_cookies() -> None:
    # With the SYN queue full and SYN cookies off, Linux drops the SYN unanswered
    # (the client retries); with cookies (the default) see test_netstack_hostile.
    s = make_stack("10.0.0.2", 1, syn_cookies=False)
    listener = s.tcp_listen(80, backlog=1)
    Peer(s, port=1000).send(SYN, 1)
    assert len(s.packets_to_send()) == 1
    Peer(s, port=1001).send(SYN, 1)
    assert s.packets_to_send() == []
    assert s.stats.syn_queue_overflows == 1
    listener.close()
    assert s.tcp_connections == []


def test_listener_close_resets_unaccepted() -> None:
    x = passive()
    listener = next(iter(x.s._tcp_listeners.values()))
    # A second client completes the handshake but is never accepted.
    p2 = Peer(x.s, port=40001)
    p2.send(SYN, 7)
    synack = p2.take_one()
    p2.send(ACK, 8, synack.seq + 1)
    listener.close()
    assert p2.take_one().has(RST)
    Peer(x.s, port=40002).send(SYN, 9)
    assert parse_tcp(parse_ip(x.s.packets_to_send()[0])).flags == RST | ACK


def test_ephemeral_ports_are_distinct_and_in_range() -> None:
    s = make_stack("10.0.0.2", 1)
    ports = {s.tcp_connect("10.0.0.1", 80, 0.0).local_port for _ in range(200)}
    assert len(ports) == 200
    assert all(49152 <= p <= 65535 for p in ports)


def test_connect_requires_own_address_family() -> None:
    s = make_stack("10.0.0.2", 1)
    with pytest.raises(LocalProtocolError):
        s.tcp_connect("fd00::1", 80, 0.0)
    with pytest.raises(LocalProtocolError):
        s.tcp_listen(80, "10.9.9.9")


def test_checksum_failure_is_counted_and_dropped() -> None:
    x = active()
    pkt = bytearray(
        SegmentBuilder(x.p.addr, x.p.stack_addr, 40000, 50000).build(
            x.rcv, x.snd, ACK, 1000, payload=b"abc"
        )
    )
    pkt[-1] ^= 1
    x.s.receive_packet(bytes(pkt), 0.0)
    assert x.s.stats.malformed == 1
    assert x.c.receive() == b""


def test_pure_ack_after_go_back_carries_snd_max() -> None:
    """After an RTO rewinds SND.NXT, ACK-only segments must still carry the highest
    sequence number sent (as BSD does): the peer may already have everything up
    to there, and would find an older sequence number unacceptable and ignore the
    ACK, so two stacks in go-back would deadlock."""
    x = active(rtt=0.5, initial_window=4)
    x.c.send(bytes(4 * 1380))
    x.p.take(1.0)
    x.s.handle_timer(2.5)
    (re,) = x.p.take(2.5)
    assert re.seq == x.snd
    x.p.send(ACK, x.rcv, x.snd, payload=b"peer data", now=2.6)
    ack = x.p.take_one(2.6)
    assert ack.payload == b"" and ack.seq == (x.snd + 4 * 1380) & M


def test_window_update_only_when_window_doubles() -> None:
    x = active(receive_buffer=64 * 1024, delayed_ack=0)
    x.p.send(ACK, x.rcv, x.snd, payload=bytes(1380))
    x.p.send(ACK, x.rcv + 1380, x.snd, payload=bytes(1380))
    x.p.take()
    x.c.receive()
    assert x.p.take() == []  # the window is still wide open: no extra ACK
    big = bytes(60 * 1024 - 2760)
    off = 2760
    for i in range(0, len(big), 1380):
        x.p.send(ACK, x.rcv + off + i, x.snd, payload=big[i : i + 1380])
    assert x.p.take()[-1].wnd < 8 * 1024
    x.c.receive()
    upd = x.p.take_one()  # from under 8 KiB to 64 KiB: worth an update
    assert upd.wnd == 65535  # no window scaling negotiated: capped


def test_rto_into_a_zero_window_still_retransmits() -> None:
    """A lost segment, then the window shuts: the RTO retransmission goes out anyway
    (RFC 9293 3.8.6.1), else the connection would wait for a window it never gets."""
    x = active(rtt=0.5)
    x.c.send(bytes(2760))
    _first, second = x.p.take(1.0)
    x.p.send(ACK, x.rcv, x.snd + 1380, wnd=0, now=1.1)  # the second one was lost
    assert x.p.take(1.1) == []
    deadline = x.s.next_deadline()
    assert deadline == pytest.approx(1.1 + x.c.rto)  # restarted by the ACK (RFC 6298 5.3)
    x.s.handle_timer(deadline)
    (re,) = x.p.take(deadline)
    assert re.seq == second.seq and re.payload == second.payload


def test_retransmission_never_carries_octets_past_snd_max() -> None:
    """A retransmission repeats what was sent and nothing more: octets never
    sent would be acknowledged beyond SND.MAX, an ACK the sender must treat as
    unacceptable (RFC 9293 3.10.7.4), which wedged both ends for good."""
    x = active(rtt=0.5, peer_wnd=1000)
    x.c.send(bytes(5000))
    (first,) = x.p.take(1.0)
    assert len(first.payload) == 1000  # the peer's window is the limit
    x.p.send(ACK, x.rcv, x.snd, wnd=0, now=1.1)  # lost, and the window shuts
    deadline = x.s.next_deadline()
    x.s.handle_timer(deadline)
    (re,) = x.p.take(deadline)
    assert re.seq == first.seq and re.payload == first.payload
    assert x.c.snd_max == x.snd + 1000


# ------------------------------------------------ SACK sender (RFC 6675, RFC 8985)

L = 1380  # the MSS the scripted peer's 1460 gives over IPv4 with our options


def sack_option(blocks: list[tuple[int, int]]) -> bytes:
    """A SACK option (RFC 2018 3) for 32-bit (left, right) edges."""
    body = b"".join(
        (left & M).to_bytes(4, "big") + (right & M).to_bytes(4, "big") for left, right in blocks
    )
    return b"\x01\x01\x05" + bytes([2 + len(body)]) + body


def sack_active(*, mss: int = 1460, **cfg) -> Conn:
    """Active open whose SYN-ACK agrees to SACK (with MSS *mss*), a measured RTT of 10 ms."""
    cfg.setdefault("delayed_ack", 0)
    s = make_stack("10.0.0.2", 1, **cfg)
    p = Peer(s, stack_port=50000)
    c = s.tcp_connect("10.0.0.1", 40000, 0.0, local_port=50000)
    syn = p.take_one(0.0)
    p.send(SYN | ACK, P, syn.seq + 1, options=mss_option(mss) + b"\x01\x01\x04\x02", now=0.01)
    p.take_one(0.01)
    assert c._sack and c.srtt == pytest.approx(0.01)
    return Conn(s, p, c, (syn.seq + 1) & M, P + 1)


def sacks_of(x: Conn, held: list[int]) -> list[tuple[int, int]]:
    """The SACK blocks a receiver holding segments *held* (indices from
    x.snd) reports: contiguous runs, the highest first, at most three."""
    runs: list[list[int]] = []
    for i in sorted(held):
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return [(x.snd + a * L, x.snd + b * L) for a, b in reversed(runs)][:3]


def dupack(x: Conn, held: list[int], now: float, wnd: int = 65535) -> list[int]:
    """The peer still expects segment 0 and holds *held*: what goes out now,
    as segment indices."""
    x.p.send(ACK, x.rcv, x.snd, wnd=wnd, options=sack_option(sacks_of(x, held)), now=now)
    return [((s.seq - x.snd) & M) // L for s in x.p.take(now)]


def test_sack_recovery_repairs_every_reported_hole_in_one_round_trip() -> None:
    """Segments 0, 4 and 8 of 20 lost: after the fast retransmit of 0, holes 4
    and 8 go out as soon as the pipe allows (RFC 6675 NextSeg rule 1), before
    any partial ACK, where NewReno would repair one hole per round trip; no
    SACKed segment is sent again, and new data follows within the window."""
    x = sack_active(initial_window=20)
    x.c.send(bytes(40 * L))
    assert len(x.p.take(1.0)) == 20
    held: list[int] = []
    sent: list[int] = []
    for i in [n for n in range(20) if n not in (0, 4, 8)]:
        held.append(i)
        sent += dupack(x, held, 1.0 + i / 1000)
    # Limited Transmit on the first two duplicates, the fast retransmit on the third.
    assert sent[:3] == [20, 21, 0]
    assert x.c.ssthresh == 11 * L  # half of the 22 segments then in flight
    assert 4 in sent and 8 in sent
    assert not set(sent) & set(held)  # nothing the peer holds is sent again
    assert [n for n in sent if n >= 20] == list(range(20, 20 + len(sent) - 3))
    assert x.c.retransmits == 3


def test_sack_hole_is_not_retransmitted_until_three_segments_are_sacked_above() -> None:
    """IsLost (RFC 6675 section 4): a hole with two segments or less SACKed
    above it may be reordering, not loss."""
    x = sack_active(initial_window=20)
    x.c.send(bytes(20 * L))
    x.p.take(1.0)
    held = [n for n in range(1, 12)]  # 0 lost: recovery
    for k in range(3, len(held) + 1):
        dupack(x, held[:k], 1.01)
    assert x.c._cc.in_recovery
    held += [13, 14]  # 12 missing, two above it: not lost yet
    assert 12 not in dupack(x, held, 1.02)
    held += [15]  # three above: lost
    assert 12 in dupack(x, held, 1.03)


def test_sack_duplicates_count_whatever_the_window() -> None:
    """RFC 6675 section 2: an ACK that newly SACKs data is a duplicate even if
    its window moved (Linux's does as it queues out-of-order data), where
    RFC 5681 alone would not count it."""
    x = sack_active(initial_window=10)
    x.c.send(bytes(10 * L))
    x.p.take(1.0)
    for k, wnd in ((1, 60000), (2, 58000), (3, 56000)):
        out = dupack(x, list(range(1, k + 1)), 1.0 + k / 1000, wnd=wnd)
    assert out[0] == 0 and x.c._cc.in_recovery


def test_sack_lost_retransmission_is_sent_again() -> None:
    """The retransmission of segment 0 is lost too: once three segments sent
    after it are SACKed it goes again, without waiting for the RTO (the idea
    of RACK, RFC 8985, by sequence instead of time)."""
    x = sack_active(initial_window=10)
    x.c.send(bytes(30 * L))
    x.p.take(1.0)
    held: list[int] = []
    out: list[int] = []
    for i in range(1, 10):
        held.append(i)
        out += dupack(x, held, 1.0 + i / 1000)
    assert out.count(0) == 1
    new = out[out.index(0) + 1 :]  # sent after the retransmission
    assert len(new) >= 3
    for n in new[:2]:
        held.append(n)
        assert 0 not in dupack(x, held, 1.02)
    held.append(new[2])
    assert 0 in dupack(x, held, 1.03)
    assert x.c._timers.rto is not None and x.c._timers.rto > 1.03


def test_early_retransmit_with_three_segments_outstanding() -> None:
    """RFC 5827: nothing more to send and three segments out, the first lost:
    two duplicates are all that can come, and they are enough."""
    x = sack_active()
    x.c.send(bytes(3 * L))
    assert len(x.p.take(1.0)) == 3
    assert dupack(x, [1], 1.01) == []
    assert dupack(x, [1, 2], 1.02) == [0]


def test_tail_loss_probe_sends_new_data_when_acks_stop() -> None:
    """RFC 8985 7: no ACK for two round trips (20 ms here) while the window
    holds more data: one new segment goes out as a probe, long before the
    RTO (1 s), and only one until an ACK moves SND.UNA."""
    x = sack_active(initial_window=4)
    x.c.send(bytes(10 * L))
    first = x.p.take(1.0)
    assert len(first) == 4
    deadline = x.s.next_deadline()
    assert deadline == pytest.approx(1.0 + 2 * 0.01)
    x.s.handle_timer(deadline)
    (probe,) = x.p.take(deadline)
    assert probe.seq == (x.snd + 4 * L) & M and len(probe.payload) == L
    assert x.s.stats.tcp_loss_probes == 1
    assert x.s.next_deadline() == pytest.approx(deadline + x.c.rto)  # then only the RTO
    # The probe's ACK acknowledges everything: only the ACKs had been lost.
    x.p.send(ACK, x.rcv, x.snd + 5 * L, now=deadline + 0.01)
    assert x.p.take(deadline + 0.01)  # the next flight
    assert x.c._timers.tlp is not None  # and a probe armed for it


def test_tail_loss_probe_repeats_the_last_segment_when_nothing_is_new() -> None:
    x = sack_active()
    x.c.send(bytes(3 * L))
    segs = x.p.take(1.0)
    deadline = x.s.next_deadline()
    assert deadline == pytest.approx(1.02)
    x.s.handle_timer(deadline)
    (probe,) = x.p.take(deadline)
    assert probe.seq == segs[-1].seq and probe.payload == segs[-1].payload


def test_one_segment_out_waits_for_a_delayed_ack_before_probing() -> None:
    x = sack_active()
    x.c.send(bytes(100))
    x.p.take(1.0)
    assert x.s.next_deadline() == pytest.approx(1.0 + 2 * 0.01 + 0.2)


def test_no_loss_probe_without_sack() -> None:
    x = active(rtt=0.01)
    x.c.send(bytes(3 * L))
    x.p.take(1.0)
    assert x.s.next_deadline() == pytest.approx(1.0 + x.c.rto)


def _spurious_recovery(x: Conn, lost: tuple[int, ...]) -> tuple[int, int, list[int]]:
    """Ten segments out; the peer SACKs all but *lost*, so the stack recovers.
    Returns cwnd and ssthresh from before, and what was retransmitted."""
    x.c.send(bytes(10 * L))
    assert len(x.p.take(1.0)) == 10
    before = (x.c.cwnd, x.c.ssthresh)
    held: list[int] = []
    out: list[int] = []
    for i in [n for n in range(10) if n not in lost]:
        held.append(i)
        out += dupack(x, held, 1.0 + i / 1000)
    assert x.c._cc.in_recovery and x.c.ssthresh < before[0]
    return before[0], before[1], [n for n in out if n in lost]


def test_recovery_shown_spurious_by_dsack_is_undone() -> None:
    """Segment 0 was only late: the ACK of everything ends the recovery, then
    the peer reports the retransmission as a duplicate (a D-SACK block below
    the cumulative ACK, RFC 2883). The window reduction is taken back
    (RFC 3708, as Linux's undo)."""
    x = sack_active(initial_window=10)
    cwnd, ssthresh, retransmitted = _spurious_recovery(x, (0,))
    assert retransmitted == [0]
    top = x.snd + 10 * L
    x.p.send(ACK, x.rcv, top, now=1.02)  # the late original filled the hole
    assert not x.c._cc.in_recovery and x.c.cwnd < cwnd
    x.p.send(ACK, x.rcv, top, options=sack_option([(x.snd, x.snd + L)]), now=1.03)
    assert (x.c.cwnd, x.c.ssthresh) == (cwnd, ssthresh)
    assert x.s.stats.tcp_recoveries_undone == 1


def test_recovery_with_a_real_loss_is_not_undone() -> None:
    """Two segments retransmitted, only one reported twice: the other was
    really lost, so the reduction stands."""
    x = sack_active(initial_window=10)
    cwnd, _, retransmitted = _spurious_recovery(x, (0, 4))
    assert sorted(retransmitted) == [0, 4]
    top = x.snd + 10 * L
    x.p.send(ACK, x.rcv, top, now=1.02)
    x.p.send(ACK, x.rcv, top, options=sack_option([(x.snd, x.snd + L)]), now=1.03)
    assert x.c.cwnd < cwnd and x.s.stats.tcp_recoveries_undone == 0


def test_duplicate_data_is_reported_in_a_dsack_block() -> None:
    """RFC 2883 4: a segment that arrives again is reported, once, in the
    first SACK block of the ACK it causes (below the cumulative ACK), ahead
    of the blocks for out-of-order data; a partly old one, for its old part."""
    x = passive(options=mss_option(1460) + b"\x01\x01\x04\x02")
    r = x.rcv
    x.p.send(ACK, r, x.snd, payload=b"A" * 100)
    x.s.packets_to_send()
    x.p.send(ACK, r + 300, x.snd, payload=b"C" * 100)
    assert sack_blocks(x) == [[(r + 300, r + 400)]]
    x.p.send(ACK, r, x.snd, payload=b"A" * 100)  # again
    assert sack_blocks(x) == [[(r, r + 100), (r + 300, r + 400)]]
    x.p.send(ACK, r + 50, x.snd, payload=b"A" * 50 + b"B" * 100)  # half old
    assert sack_blocks(x) == [[(r + 50, r + 100), (r + 300, r + 400)]]
    x.p.send(ACK, r + 200, x.snd, payload=b"B" * 100)  # fills the hole
    assert sack_blocks(x) == [None]  # nothing out of order, no D-SACK left over
    assert x.c.receive() == b"A" * 100 + b"B" * 200 + b"C" * 100
