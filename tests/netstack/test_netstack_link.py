"""Two stacks back to back over a simulated lossy link, with a fake clock.

The link drops, duplicates, reorders and delays packets from a seeded random
generator, so each run is reproducible; time jumps from event to event, so a run
with dozens of retransmission timeouts takes a fraction of a second of real time.
"""

from __future__ import annotations

import hashlib
import random

import pytest
from netstack_helpers import Link, LinkConfig, make_stack

from wireguard.netstack import NetStack, TcpClosed, TcpConnection, TcpState


class Transfer:
    """One connection's application on both ends: send a blob each way, read all, close."""

    def __init__(self, client: TcpConnection, server_side: NetStack, up: bytes, down: bytes):
        self.client = client
        self.server: TcpConnection | None = None
        self.server_stack = server_side
        self.up = up
        self.down = down
        self.up_sent = 0
        self.down_sent = 0
        self.got_up = bytearray()
        self.got_down = bytearray()

    def pump(self) -> None:
        c, s = self.client, self.server
        if c.established and c.can_send:
            self.up_sent += c.send(self.up[self.up_sent : self.up_sent + 65536])
            if self.up_sent == len(self.up):
                c.shutdown()
        self.got_down += c.receive()
        if s is None:
            return
        if s.can_send:
            self.down_sent += s.send(self.down[self.down_sent : self.down_sent + 65536])
            if self.down_sent == len(self.down):
                s.shutdown()
        self.got_up += s.receive()

    @property
    def done(self) -> bool:
        return (
            self.server is not None
            and self.client.at_eof
            and self.server.at_eof
            and len(self.got_up) == len(self.up)
            and len(self.got_down) == len(self.down)
        )


def _run(link: Link, transfers: list[Transfer], listener, *, limit: float) -> None:
    pending = list(transfers)

    def app() -> None:
        while (conn := listener.accept()) is not None:
            for t in pending:
                if t.server is None and t.client.local_port == conn.remote_port:
                    t.server = conn
        for t in transfers:
            t.pump()

    link.run(lambda: all(t.done for t in transfers), app=app, limit=limit)


def _check(t: Transfer) -> None:
    assert hashlib.sha256(t.got_up).digest() == hashlib.sha256(t.up).digest()
    assert hashlib.sha256(t.got_down).digest() == hashlib.sha256(t.down).digest()


LOSSY = LinkConfig(delay=0.02, jitter=0.005, loss=0.05, duplicate=0.02, reorder=0.05)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_one_megabyte_each_way_over_lossy_link(family: str) -> None:
    a_addr, b_addr = ("10.0.0.1", "10.0.0.2") if family == "ipv4" else ("fd00::1", "fd00::2")
    a = make_stack(a_addr, 11, min_rto=0.2)
    b = make_stack(b_addr, 12, min_rto=0.2)
    link = Link(a, b, LOSSY, seed=7)
    listener = b.tcp_listen(443)
    rng = random.Random(3)
    up, down = rng.randbytes(1 << 20), rng.randbytes(1 << 20)
    t = Transfer(a.tcp_connect(b_addr, 443, link.now), b, up, down)
    _run(link, [t], listener, limit=600.0)
    _check(t)
    assert link.dropped > 50  # the link really was lossy
    assert t.client.retransmits > 0 and t.server is not None and t.server.retransmits > 0
    # Both ends finish the close: one in TIME-WAIT, everything gone after 2*MSL.
    link.run(lambda: not a.tcp_connections and not b.tcp_connections, limit=link.now + 200)


def test_many_parallel_connections_over_lossy_link() -> None:
    a = make_stack("10.0.0.1", 21, min_rto=0.2)
    b = make_stack("10.0.0.2", 22, min_rto=0.2)
    link = Link(a, b, LOSSY, seed=9)
    listener = b.tcp_listen(80)
    rng = random.Random(5)
    transfers = [
        Transfer(
            a.tcp_connect("10.0.0.2", 80, 0.0),
            b,
            rng.randbytes(rng.randrange(1, 40_000)),
            rng.randbytes(rng.randrange(1, 40_000)),
        )
        for _ in range(40)
    ]
    _run(link, transfers, listener, limit=600.0)
    for t in transfers:
        _check(t)
    closed = []
    while (ev := a.next_event()) is not None:
        if isinstance(ev, TcpClosed):
            closed.append(ev)
    assert all(ev.error is None for ev in closed)


def test_congestion_control_through_a_bottleneck() -> None:
    """A 2 MB/s bottleneck with a 20-packet drop-tail queue: losses come from the
    queue overflowing, so the transfer only finishes efficiently if the sender
    backs off (RFC 5681) and recovers without waiting for timeouts (RFC 6582)."""
    a = make_stack("10.0.0.1", 31, min_rto=0.2)
    b = make_stack("10.0.0.2", 32, min_rto=0.2)
    link = Link(a, b, LinkConfig(delay=0.01, rate=2e6, queue=20), seed=1)
    listener = b.tcp_listen(80)
    data = random.Random(1).randbytes(4 << 20)
    t = Transfer(a.tcp_connect("10.0.0.2", 80, 0.0), b, data, b"")
    _run(link, [t], listener, limit=600.0)
    _check(t)
    elapsed = link.now
    goodput = len(data) / elapsed
    assert goodput > 0.6 * 2e6, f"goodput {goodput:.0f} B/s in {elapsed:.1f} s"
    assert link.dropped > 0  # the queue did overflow
    assert t.client.retransmits < 0.05 * len(data) / 1380


def test_transfer_survives_a_long_blackout() -> None:
    """All packets lost for 20 s mid-transfer: RTO backs off (1, 2, 4, 8 s ...) and
    the transfer completes once the path is back, within one backed-off RTO."""
    a = make_stack("10.0.0.1", 41)
    b = make_stack("10.0.0.2", 42)
    link = Link(a, b, LinkConfig(delay=0.01, blackouts=[(0.05, 20.05)]), seed=2)
    listener = b.tcp_listen(80)
    data = random.Random(2).randbytes(200_000)
    t = Transfer(a.tcp_connect("10.0.0.2", 80, 0.0), b, data, b"")

    def app() -> None:
        while (conn := listener.accept()) is not None:
            t.server = conn
        t.pump()

    link.run(lambda: t.done, app=app, limit=600.0)
    _check(t)
    # Retransmissions at about 1, 3, 7, 15 and 31 s: the one at 31 s gets through.
    assert 31.0 < link.now < 32.0
    assert t.client.retransmits >= 5
    assert t.client.state in (TcpState.TIME_WAIT, TcpState.FIN_WAIT_2, TcpState.CLOSED)


@pytest.mark.parametrize("seed", range(12))
def test_random_link_and_stack_profiles(seed: int) -> None:
    """Random mixes of delay, loss (up to 15 %), duplication, reordering, bottleneck
    rate, buffer sizes, Nagle, delayed ACKs and window scaling: every transfer
    completes intact and every connection is gone after TIME-WAIT."""
    rng = random.Random(seed)
    cfg = LinkConfig(
        delay=rng.choice([0.001, 0.02, 0.1]),
        jitter=rng.random() * 0.02,
        loss=rng.choice([0.0, 0.02, 0.05, 0.15]),
        duplicate=rng.random() * 0.05,
        reorder=rng.random() * 0.2,
        rate=rng.choice([None, 1e6, 5e6]),
        queue=rng.choice([8, 30, 100]),
    )
    tcp = dict(
        min_rto=rng.choice([0.2, 1.0]),
        delayed_ack=rng.choice([0, 0.04]),
        receive_buffer=rng.choice([8192, 65536, 262144]),
        send_buffer=rng.choice([4096, 65536, 262144]),
        nagle=rng.choice([False, True]),
        window_scaling=rng.choice([True, False]),
    )
    addrs = rng.choice([("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2")])
    a = make_stack(addrs[0], seed * 2, **tcp)
    b = make_stack(addrs[1], seed * 2 + 1, **tcp)
    link = Link(a, b, cfg, seed=seed)
    listener = b.tcp_listen(80)
    transfers = [
        Transfer(
            a.tcp_connect(addrs[1], 80, 0.0),
            b,
            rng.randbytes(rng.randrange(0, 300_000)),
            rng.randbytes(rng.randrange(0, 300_000)),
        )
        for _ in range(rng.choice([1, 3]))
    ]
    _run(link, transfers, listener, limit=3000.0)
    for t in transfers:
        _check(t)
    link.run(lambda: not a.tcp_connections and not b.tcp_connections, limit=link.now + 400)
