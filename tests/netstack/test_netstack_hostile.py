"""What a hostile remote can make the stack spend: SYN floods and out-of-order floods.

Remote WireGuard peers reach the stack, so whatever they send, the memory and
CPU it costs must stay bounded and every discard must be counted. The flood
runs in simulated time (time is an input), with segments crafted by hand.

The references are Linux's behaviour and defaults: a half-open connection's
SYN-ACK is retransmitted from the initial RTO of 1 s with exponential backoff
and given up after ``tcp_synack_retries`` = 5 (at 1+2+4+8+16+32 = 63 s); the
SYN queue and the accept queue are each bounded by the listen backlog; a
full SYN queue answers with SYN cookies (``tcp_syncookies`` = 1); a final ACK
that finds the accept queue full is dropped (``tcp_abort_on_overflow`` = 0).
Out-of-order data is charged with a per-segment overhead (as ``truesize``)
against a budget of twice the receive buffer (as SO_RCVBUF is doubled) and
pruned from the highest sequence down (``tcp_prune_ofo_queue``). SACK blocks
follow RFC 2018 section 4.
"""

from __future__ import annotations

import gc
import time
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from netstack_helpers import ACK, FIN, RST, SYN, Peer, Seg, make_stack, mss_option, ws_option
from test_netstack_tcp import P, events, passive, sack_active, sack_blocks, sack_option

from wireguard.netstack import NetStack, TcpIncoming, TcpState
from wireguard.netstack.ip import parse_ip
from wireguard.netstack.tcp import SegmentBuilder, parse_tcp
from wireguard.netstack.tcp.reassembly import OutOfOrder

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


# ------------------------------------------------------------- out-of-order data


def _ooo_connection(**cfg: object):
    return passive(options=mss_option(1460) + SACK_OK, **cfg)


def _flood_packets(x, n: int) -> list[bytes]:
    """*n* one-byte segments, each a byte above a one-byte hole (built
    beforehand, so that only the stack's work is measured)."""
    p = x.p
    builder = SegmentBuilder(p.addr, p.stack_addr, p.port, p.stack_port)
    return [builder.build((x.rcv + 2 * i + 1) & M, x.snd, ACK, 65535, b"x") for i in range(n)]


def _flood(x, packets: list[bytes]) -> None:
    receive, flush = x.s.receive_packet, x.s.packets_to_send
    for i, packet in enumerate(packets):
        receive(packet, 0.0)
        if i & 63 == 0:
            flush()
    flush()


def test_out_of_order_flood_costs_linear_cpu_and_bounded_memory() -> None:
    """10^5 one-byte segments with gaps: the memory allocated stays within the
    connection's budget (twice the receive buffer, plus a little for the
    connection itself) and does not grow with the count, every segment is
    held or counted as dropped, and the cost per segment does not grow with
    what is held: 10x the segments cost well under 20x the CPU (both sizes
    measured in this run, both under tracemalloc)."""
    budget = 2 * 256 * 1024
    cpu = {}
    peak = {}
    for n in (10_000, 100_000):
        x = _ooo_connection()
        packets = _flood_packets(x, n)
        gc.collect()
        tracemalloc.start()
        start = time.process_time()
        _flood(x, packets)
        cpu[n] = time.process_time() - start
        peak[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak[n] < budget + 512 * 1024, (n, peak[n])
        st = x.s.stats
        assert x.c._ooo.segments + st.tcp_ofo_dropped + st.tcp_ofo_pruned == n
    assert peak[100_000] < peak[10_000] + 64 * 1024, peak
    assert cpu[100_000] < 20 * cpu[10_000], cpu


def test_out_of_order_budget_prunes_from_the_top_and_data_stays_whole() -> None:
    """Small segments past the budget: new ones above everything held are
    dropped, a segment below held data prunes from the highest sequence down
    (tcp_prune_ofo_queue), SACK blocks never report what was dropped, and
    once the sender repeats what was lost the stream comes out whole."""
    x = _ooo_connection(receive_buffer=8192)
    r = x.rcv
    data = bytes((i * 13) & 0xFF for i in range(8000))
    # Every other 16-byte piece of the window, from 16 on, arrives out of order.
    for off in range(16, 8000, 32):
        x.p.send(ACK, (r + off) & M, x.snd, payload=data[off : off + 16])
        x.s.packets_to_send()
    st = x.s.stats
    assert st.tcp_ofo_dropped > 0  # 250 pieces cost far more than 16 KiB with overhead
    held_top = x.c._ooo.end - r
    # SACK blocks report only held data.
    x.p.send(ACK, (r + held_top + 100) & M, x.snd, payload=b"?")
    (blocks,) = sack_blocks(x)
    assert blocks and all(((right - r) & M) <= held_top for _, right in blocks)
    # A piece below the held data prunes from the top to make room.
    before = x.c._ooo.end
    x.p.send(ACK, (r + 8) & M, x.snd, payload=data[8:12])
    assert st.tcp_ofo_pruned > 0 and x.c._ooo.end < before
    # The sender repeats everything in order: the stream is whole and the
    # stack's cumulative ACK says so.
    got = b""
    for off in range(0, 8000, 500):
        x.p.send(ACK, (r + off) & M, x.snd, payload=data[off : off + 500])
        got += x.c.receive()
    got += x.c.receive()
    assert got == data
    assert [s.ack for s in x.p.take()][-1] == (r + 8000) & M


def test_advertised_window_is_never_more_than_the_budget_holds() -> None:
    """With the out-of-order budget used up by tiny segments, reading the
    in-order data must not move the window's right edge on (the budget could
    not hold what it would invite); once the holes are filled and read, the
    whole buffer is offered again."""
    x = _ooo_connection(receive_buffer=8192)
    r = x.rcv
    x.p.send(ACK, r, x.snd, payload=b"a" * 4000)
    x.s.packets_to_send()
    for off in range(4001, 8192, 2):
        x.p.send(ACK, (r + off) & M, x.snd, payload=b"b")
        x.s.packets_to_send()
    assert x.c.receive() == b"a" * 4000
    x.s.packets_to_send()
    x.p.send(ACK, r, x.snd, payload=b"a")  # a duplicate: answered with the window now
    (ack,) = x.p.take()
    assert ack.ack == (r + 4000) & M
    assert ((ack.ack + ack.wnd - r) & M) <= 8192  # the edge of the first window, no further
    data = bytes(range(256)) * 17
    for off in range(4000, 8192, 1000):
        x.p.send(ACK, (r + off) & M, x.snd, payload=data[off - 4000 : min(off + 1000, 8192) - 4000])
        x.c.receive()
    x.s.packets_to_send()
    x.p.send(ACK, r, x.snd, payload=b"a")
    (ack,) = x.p.take()
    assert ack.ack == (r + 8192) & M and ack.wnd == 8192


def test_sack_blocks_repeat_the_most_recently_reported_first() -> None:
    """RFC 2018 section 4: the first block holds the latest segment, the
    others repeat the most recently reported blocks (not the highest)."""
    x = _ooo_connection()
    r = x.rcv
    x.p.send(ACK, r + 500, x.snd, payload=b"C" * 100)  # C, the highest, first
    assert sack_blocks(x) == [[(r + 500, r + 600)]]
    x.p.send(ACK, r + 100, x.snd, payload=b"A" * 100)  # then A, the lowest
    assert sack_blocks(x) == [[(r + 100, r + 200), (r + 500, r + 600)]]
    x.p.send(ACK, r + 300, x.snd, payload=b"B" * 100)  # then B, in between
    assert sack_blocks(x) == [[(r + 300, r + 400), (r + 100, r + 200), (r + 500, r + 600)]]
    x.p.send(ACK, r + 550, x.snd, payload=b"C" * 100)  # extends C: C first again
    assert sack_blocks(x) == [[(r + 500, r + 650), (r + 300, r + 400), (r + 100, r + 200)]]


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from("aaaapx"), st.integers(0, 300), st.integers(1, 40)),
        max_size=60,
    )
)
def test_out_of_order_structure_against_a_model(ops: list[tuple[str, int, int]]) -> None:
    """The held ranges against a model that keeps every byte by position:
    same bytes, first arrival kept, sorted disjoint non-adjacent ranges with
    consistent counts, pruning only from the top, and the latest segment's
    range in the first SACK block."""
    q = OutOfOrder()
    model: dict[int, int] = {}  # position -> byte, what is held
    rcv_nxt = 1000
    for stamp, (op, off, length) in enumerate(ops):
        if op == "a":  # a segment above RCV.NXT
            seq = rcv_nxt + 1 + off
            payload = bytes((stamp + i) & 0xFF for i in range(length))
            q.add(seq, payload)
            for i, b in enumerate(payload):
                model.setdefault(seq + i, b)
            assert q.sack_blocks(4)[0][0] <= seq < q.sack_blocks(4)[0][1]
        elif op == "p":  # in-order data up to somewhere, then what it reached
            rcv_nxt += off // 4 + 1
            pieces, new = q.pull(rcv_nxt)
            expect = []
            while rcv_nxt in model or any(p < rcv_nxt for p in model):
                for p in [p for p in model if p < rcv_nxt]:
                    del model[p]
                while rcv_nxt in model:
                    expect.append(model.pop(rcv_nxt))
                    rcv_nxt += 1
            assert b"".join(pieces) == bytes(expect) and new == rcv_nxt
        else:  # prune to half of what is charged, none below a floor
            floor = rcv_nxt + off
            before = dict(model)
            q.prune(q.memory // 2, floor)
            kept = {p for r in zip(q.starts, q.ends, strict=True) for p in range(*r)}
            gone = set(before) - kept
            assert kept <= set(before)
            assert not gone or min(gone) > max(kept, default=0)
            assert not gone or min(gone) >= floor
            model = {p: before[p] for p in kept}
        # Invariants, and the bytes themselves.
        assert all(a < b for a, b in zip(q.ends, q.starts[1:], strict=False))
        assert all(s < e for s, e in zip(q.starts, q.ends, strict=True))
        held = {}
        for s, e, chunks in zip(q.starts, q.ends, q.chunks, strict=True):
            assert all(chunks) and sum(map(len, chunks)) == e - s
            held.update(zip(range(s, e), b"".join(chunks), strict=True))
        assert held == model
        assert q.octets == len(model)
        assert q.segments == sum(len(c) for c in q.chunks)
        blocks = q.sack_blocks(4)
        assert len(blocks) == min(4, len(q.starts)) and len(set(blocks)) == len(blocks)
        assert all(b in zip(q.starts, q.ends, strict=True) for b in blocks)


@pytest.mark.parametrize("mss", [1460, 48])
def test_sack_scoreboard_of_scraps_stays_bounded_and_linear(mss: int) -> None:
    """A receiver that SACKs one-byte scraps of what we sent, four fresh ones
    per ACK: the scoreboard would grow with every ACK and each ACK walk it
    all. It is capped (the highest ranges forgotten, counted), so 10x the
    ACKs cost well under 20x the CPU. The cap counts segments of at least
    536 octets whatever MSS the peer gave: with 48 it used to be 5,469
    ranges, a walk of them per ACK."""
    cpu = {}
    for n in (500, 5000):
        x = sack_active(initial_window=60, mss=mss)
        x.c.send(bytes(65535))
        x.p.take(0.02)
        start = time.process_time()
        for i in range(n):
            blocks = [(x.snd + 2 * (4 * i + j) + 1, x.snd + 2 * (4 * i + j) + 2) for j in range(4)]
            x.p.send(ACK, x.rcv, x.snd, options=sack_option(blocks), now=0.03)
            x.s.packets_to_send(0.03)
        cpu[n] = time.process_time() - start
        assert x.c.smss == min(mss, x.c.rmss)
        assert len(x.c._sacked) <= x.s.tcp_config.send_buffer // 536 + 8
    assert x.s.stats.tcp_sack_ranges_dropped > 0
    assert cpu[5000] < 20 * cpu[500], cpu


def test_time_wait_is_bounded_and_counted() -> None:
    """Each connection the stack closes first lingers 2*MSL in TIME-WAIT; a
    peer opening and letting us close connections at a high rate would pile
    them up. Past max_time_wait a connection closes at once (Linux's
    tcp_max_tw_buckets), after acknowledging the peer's FIN, and is counted."""
    s = make_stack("10.0.0.2", 1, max_time_wait=2, delayed_ack=0)
    listener = s.tcp_listen(80)
    acks = []
    for port in (40001, 40002, 40003):
        p = Peer(s, port=port)
        p.send(SYN, P)
        synack = p.take_one()
        p.send(ACK, P + 1, synack.seq + 1)
        conn = accepted(s, listener, port)
        assert conn is not None
        conn.close()
        fin = p.take_one()
        p.send(FIN | ACK, P + 1, fin.seq + 1)
        acks.append(p.take_one())
    assert all(a.flags == ACK and a.ack == P + 2 for a in acks)
    assert sorted(c.remote_port for c in s.tcp_connections) == [40001, 40002]
    assert all(c.state is S.TIME_WAIT for c in s.tcp_connections)
    assert s.stats.tcp_time_wait_overflows == 1
    run_timers(s, 61.0)
    assert s.tcp_connections == [] and s.time_wait == 0
