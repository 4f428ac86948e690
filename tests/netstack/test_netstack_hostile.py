"""What a hostile remote can make the stack spend: SYN floods.

Remote WireGuard peers reach the stack, so whatever they send, the memory and
CPU it costs must stay bounded and every discard must be counted. The flood
runs in simulated time (time is an input), with segments crafted by hand.

The references are Linux's behaviour and defaults: a half-open connection's
SYN-ACK is retransmitted from the initial RTO of 1 s with exponential backoff
and given up after ``tcp_synack_retries`` = 5 (at 1+2+4+8+16+32 = 63 s); the
SYN queue and the accept queue are each bounded by the listen backlog; a
full SYN queue answers with SYN cookies (``tcp_syncookies`` = 1); a final ACK
that finds the accept queue full is dropped (``tcp_abort_on_overflow`` = 0).
"""

from __future__ import annotations

import gc
import tracemalloc

from netstack_helpers import ACK, RST, SYN, Peer, Seg, make_stack, mss_option, ws_option
from test_netstack_tcp import P, events

from wireguard.netstack import NetStack, TcpIncoming, TcpState
from wireguard.netstack.ip import parse_ip
from wireguard.netstack.tcp import parse_tcp

S = TcpState
M = 0xFFFFFFFF
SACK_OK = b"\x01\x01\x04\x02"


def wire(stack: NetStack, now: float | None = None) -> list[tuple[bytes, Seg]]:
    """Every TCP segment the stack sends now, with its destination address."""
    out = []
    for packet in stack.packets_to_send(now):
        pkt = parse_ip(packet)
        raw = parse_tcp(pkt)
        out.append((pkt.dst, Seg(raw.seq, raw.ack, raw.flags, raw.wnd, raw.payload, raw.mss,
                                 raw.wscale, raw)))  # fmt: skip
    return out


def run_timers(stack: NetStack, until: float) -> list[tuple[float, Seg]]:
    """Advance simulated time to *until*, timer by timer; what was sent, when."""
    sent = []
    while (t := stack.next_deadline()) is not None and t <= until:
        stack.handle_timer(t)
        sent += [(t, seg) for _, seg in wire(stack, t)]
    return sent


def spoofed(stack: NetStack, i: int, now: float, dport: int = 80) -> None:
    """A SYN from an address and port that will never answer (the i-th of a flood)."""
    addr = f"10.{1 + (i >> 16) % 200}.{(i >> 8) & 255}.{i & 255}"
    Peer(stack, addr=addr, port=1024 + i % 60000, stack_port=dport).send(
        SYN, (i * 2654435761) & M, options=mss_option(1460) + ws_option(7) + SACK_OK, now=now
    )


def handshake_and_data(stack: NetStack, port: int, now: float, data: bytes) -> Seg:
    """A legitimate client: SYN, the stack's SYN-ACK, the final ACK, then *data*.
    Returns the SYN-ACK."""
    p = Peer(stack, port=port)
    p.send(SYN, P, options=mss_option(1460) + ws_option(7) + SACK_OK, now=now)
    (synack,) = [s for s in p.take(now) if s.flags == SYN | ACK]
    assert synack.ack == P + 1
    p.send(ACK, P + 1, synack.seq + 1, now=now)
    p.send(ACK | 0x08, P + 1, synack.seq + 1, payload=data, now=now)
    return synack


def accepted(stack: NetStack, listener, port: int):
    while (conn := listener.accept()) is not None:
        if conn.remote_port == port:
            return conn
    return None


# ------------------------------------------------------------------- SYN-RECEIVED


def test_synack_is_retransmitted_with_backoff_and_the_slot_freed() -> None:
    """Linux: SYN-ACK again at 1, 3, 7, 15 and 31 s (RTO 1 s doubling, 5
    retries), the half-open connection dropped at 63 s without a RST."""
    s = make_stack("10.0.0.2", 1)
    listener = s.tcp_listen(80)
    p = Peer(s)
    p.send(SYN, P, options=mss_option(1460))
    first = p.take_one(0.0)
    assert first.flags == SYN | ACK
    sent = run_timers(s, 200.0)
    assert [t for t, _ in sent] == [1.0, 3.0, 7.0, 15.0, 31.0]
    assert all(seg.flags == SYN | ACK and seg.seq == first.seq for _, seg in sent)
    assert s.tcp_connections == [] and listener.accept() is None
    assert s.stats.synack_timeouts == 1
    assert s.next_deadline() is None
    # The slot is free: the next client completes.
    handshake_and_data(s, 40001, 200.0, b"hi")
    conn = accepted(s, listener, 40001)
    assert conn is not None and conn.receive() == b"hi"


def test_backlog_of_spoofed_syns_no_longer_disables_the_listener() -> None:
    """The issue's case: 128 SYNs that are never answered filled the listener
    for good. A legitimate client must get through at once (SYN cookies) and
    with full options once the half-open connections have timed out."""
    s = make_stack("10.0.0.2", 1)
    listener = s.tcp_listen(80)
    for i in range(128):
        spoofed(s, i, 0.0)
    assert len(wire(s, 0.0)) == 128
    synack = handshake_and_data(s, 50000, 0.5, b"during")
    assert synack.wscale is None and not synack.raw.sack_ok  # a cookie carries neither
    conn = accepted(s, listener, 50000)
    assert conn is not None and conn.state is S.ESTABLISHED and conn.receive() == b"during"
    assert s.stats.syncookies_sent == 1 and s.stats.syncookies_accepted == 1
    run_timers(s, 70.0)
    assert s.stats.synack_timeouts == 128
    synack = handshake_and_data(s, 50001, 70.0, b"after")
    assert synack.wscale is not None and synack.raw.sack_ok  # a real SYN queue entry again
    conn = accepted(s, listener, 50001)
    assert conn is not None and conn.receive() == b"after"


def test_syn_flood_of_ten_thousand_bounded_counted_and_still_serving() -> None:
    """10,000 spoofed SYNs over 10 simulated seconds: legitimate handshakes
    (three-way, then data) complete during and after the flood, the half-open
    connections never exceed the backlog, memory stops growing, and every SYN
    is accounted for in the counters."""
    s = make_stack("10.0.0.2", 1)
    listener = s.tcp_listen(80)
    backlog = listener.backlog
    gc.collect()
    tracemalloc.start()
    synacks = 0
    served = []
    half_open_max = 0
    at_2000 = 0
    n = 10_000
    for i in range(n):
        now = i * 0.001
        spoofed(s, i, now)
        if (t := s.next_deadline()) is not None and t <= now:
            s.handle_timer(now)
        synacks += sum(seg.flags == SYN | ACK for _, seg in wire(s, now))
        if i % 2500 == 1250:
            handshake_and_data(s, 50000 + i, now, b"during %d" % i)
            conn = accepted(s, listener, 50000 + i)
            assert conn is not None and conn.receive() == b"during %d" % i
            served.append(i)
            conn.abort()
            wire(s, now)
        if i % 100 == 0:
            half_open_max = max(
                half_open_max, sum(c.state is S.SYN_RECEIVED for c in s.tcp_connections)
            )
        if i == 2000:
            gc.collect()
            at_2000 = tracemalloc.get_traced_memory()[0]
    gc.collect()
    at_end, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert served == [1250, 3750, 6250, 8750]
    assert half_open_max <= backlog
    assert peak < 8 * 1024 * 1024
    assert at_end < at_2000 + 256 * 1024  # 8,000 more SYNs pinned next to nothing
    st = s.stats
    # Every spoofed SYN got a SYN-ACK from a SYN queue entry or a cookie, or
    # was counted as dropped; every retransmission and give-up is counted.
    assert synacks == n + st.tcp_retransmits
    assert st.syncookies_sent >= n - 2 * backlog
    run_timers(s, 100.0)
    assert sum(c.state is S.SYN_RECEIVED for c in s.tcp_connections) == 0
    # Each spoofed SYN made a SYN queue entry (given up since), or got a
    # cookie that never came back, or was dropped.
    assert n == (
        st.syncookies_sent - st.syncookies_accepted + st.synack_timeouts + st.syn_queue_overflows
    )
    handshake_and_data(s, 60000, 100.0, b"after")
    conn = accepted(s, listener, 60000)
    assert conn is not None and conn.receive() == b"after"


def test_forged_ack_to_a_listener_is_refused_and_counted() -> None:
    """An ACK that carries no valid cookie is answered with a RST, as any ACK
    to a listener (RFC 9293 3.10.7.2), and counted once cookies are in use."""
    s = make_stack("10.0.0.2", 1)
    s.tcp_listen(80, backlog=1)
    spoofed(s, 0, 0.0)
    spoofed(s, 1, 0.0)  # the SYN queue is full: a cookie
    ((_, cookie_synack),) = wire(s, 0.0)[1:]
    p = Peer(s, port=40000)
    p.send(ACK, P + 1, (cookie_synack.seq + 1) & M, now=0.1)  # not the cookie's 4-tuple
    (rst,) = p.take(0.1)
    assert rst.has(RST)
    assert s.stats.syncookies_failed == 1
    assert [c.state for c in s.tcp_connections] == [S.SYN_RECEIVED]


def test_syn_queue_full_without_cookies_drops_syns_counted() -> None:
    s = make_stack("10.0.0.2", 1, syn_cookies=False)
    s.tcp_listen(80, backlog=2)
    for i in range(5):
        spoofed(s, i, 0.0)
    assert len(wire(s, 0.0)) == 2
    assert s.stats.syn_queue_overflows == 3 and s.stats.syncookies_sent == 0


def test_full_accept_queue_drops_syns_and_final_acks_until_accepted() -> None:
    """Linux: a SYN that finds the accept queue full is dropped (ListenOverflows),
    and so is a final ACK; the half-open connection stays, and the client's
    next segment completes it once the application has accepted."""
    s = make_stack("10.0.0.2", 1)
    listener = s.tcp_listen(80, backlog=1)
    a = Peer(s, port=40001)
    b = Peer(s, port=40002)
    a.send(SYN, P)
    b.send(SYN, P)  # the SYN queue (1) is full: b gets a cookie
    (sa_a, sa_b) = [seg for _, seg in wire(s)]
    a.send(ACK, P + 1, sa_a.seq + 1)
    assert events(s) == [TcpIncoming(listener)]
    # The accept queue (1) is full now: b's cookie ACK and c's SYN are dropped.
    b.send(ACK, P + 1, sa_b.seq + 1)
    c = Peer(s, port=40003)
    c.send(SYN, P)
    assert wire(s) == []
    assert s.stats.listen_overflows == 2
    # A half-open connection whose final ACK finds the queue full stays half-open.
    first = listener.accept()
    assert first is not None and first.remote_port == 40001
    d = Peer(s, port=40004)
    d.send(SYN, P)
    (sa_d,) = d.take()
    e = Peer(s, port=40005)
    e.send(SYN, P)  # a cookie (the SYN queue holds d)
    (sa_e,) = e.take()
    e.send(ACK, P + 1, sa_e.seq + 1)  # takes the free accept queue slot
    d.send(ACK, P + 1, sa_d.seq + 1)  # finds the queue full: dropped
    assert s.stats.listen_overflows == 3
    assert [c.state for c in s.tcp_connections if c.remote_port == 40004] == [S.SYN_RECEIVED]
    assert accepted(s, listener, 40005) is not None
    d.send(ACK, P + 1, sa_d.seq + 1, payload=b"late")  # its next segment gets in
    conn = accepted(s, listener, 40004)
    assert conn is not None and conn.receive() == b"late"
