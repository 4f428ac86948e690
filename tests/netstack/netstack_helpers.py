"""Test helpers for the network stack: a stack the tests pull from, a scripted
remote TCP and a simulated link."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from wireguard.netstack import Event, NetStack, StackEffects, TcpConfig, TcpConnection
from wireguard.netstack.ip import IPPROTO_TCP, addr_bytes, parse_ip
from wireguard.netstack.tcp import ACK, FIN, PSH, RST, SYN, SegmentBuilder, TcpSegment, parse_tcp

__all__ = ["ACK", "FIN", "PSH", "RST", "SYN", "Link", "Peer", "PulledStack", "Seg", "seeded"]


class PulledStack(NetStack):
    """A NetStack whose calls all collect into one accumulator, which the
    tests take from when they choose: the packets sent so far with
    :meth:`packets_to_send` (after a flush), the events one by one with
    :meth:`next_event`. A binding does the same with one accumulator per
    wake-up; here the test is the binding."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.pending = StackEffects()
        self.clock = 0.0  # the latest time given to the stack

    def receive_packets(self, packets, now, out=None):  # type: ignore[no-untyped-def]
        self.clock = now
        return super().receive_packets(packets, now, self.pending if out is None else out)

    def receive_packet(self, packet, now, out=None):  # type: ignore[no-untyped-def]
        self.clock = now
        return super().receive_packet(packet, now, self.pending if out is None else out)

    def handle_timer(self, now, out=None):  # type: ignore[no-untyped-def]
        self.clock = now
        return super().handle_timer(now, self.pending if out is None else out)

    def flush(self, now, out=None):  # type: ignore[no-untyped-def]
        self.clock = now
        return super().flush(now, self.pending if out is None else out)

    def tcp_connect(self, remote_addr, remote_port, now, *args, **kwargs) -> TcpConnection:  # type: ignore[no-untyped-def]
        self.clock = now
        return super().tcp_connect(remote_addr, remote_port, now, *args, **kwargs)

    def packets_to_send(self, now: float | None = None) -> list[bytes]:
        """Everything the stack sent since the last take, after a flush at
        *now* (default: the latest time it was given)."""
        self.flush(self.clock if now is None else now)
        packets, self.pending.packets = self.pending.packets, []
        return packets

    def next_event(self) -> Event | None:
        """The oldest event not yet taken, or None."""
        events = self.pending.events
        return events.pop(0) if events else None


def seeded(seed: int) -> Callable[[int], bytes]:
    """A deterministic random source for the stack."""
    rng = random.Random(seed)
    return rng.randbytes


def mss_option(mss: int) -> bytes:
    return b"\x02\x04" + mss.to_bytes(2, "big")


def ws_option(shift: int) -> bytes:
    return b"\x01\x03\x03" + bytes((shift,))


@dataclass
class Seg:
    """One segment the stack sent, with 32-bit numbers as on the wire."""

    seq: int
    ack: int
    flags: int
    wnd: int
    payload: bytes
    mss: int | None
    wscale: int | None
    raw: TcpSegment = field(repr=False)

    @property
    def names(self) -> str:
        bits = ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, "."))
        return "".join(c for b, c in bits if self.flags & b)

    def has(self, flags: int) -> bool:
        return self.flags & flags == flags


class Peer:
    """A hand-driven remote TCP at *addr*:*port* talking to *stack*.

    Tests play the remote side segment by segment and check exactly what the
    stack answers, with an explicit fake clock.
    """

    def __init__(
        self,
        stack: NetStack,
        addr: str = "10.0.0.1",
        port: int = 40000,
        stack_addr: str = "10.0.0.2",
        stack_port: int = 80,
    ) -> None:
        self.stack = stack
        self.addr = addr_bytes(addr)
        self.port = port
        self.stack_addr = addr_bytes(stack_addr)
        self.stack_port = stack_port

    def send(
        self,
        flags: int,
        seq: int,
        ack: int = 0,
        wnd: int = 65535,
        payload: bytes = b"",
        options: bytes = b"",
        now: float = 0.0,
    ) -> None:
        if len(options) % 4:
            options += b"\x00" * (4 - len(options) % 4)
        builder = SegmentBuilder(self.addr, self.stack_addr, self.port, self.stack_port)
        packet = builder.build(seq, ack, flags, wnd, payload, options)
        self.stack.receive_packet(packet, now)

    def take(self, now: float | None = None) -> list[Seg]:
        """Every TCP segment the stack sends now (to this peer)."""
        out = []
        for packet in self.stack.packets_to_send(now):
            pkt = parse_ip(packet)
            assert pkt.proto == IPPROTO_TCP
            assert pkt.dst == self.addr
            raw = parse_tcp(pkt)
            assert raw.dport == self.port
            out.append(
                Seg(raw.seq, raw.ack, raw.flags, raw.wnd, raw.payload, raw.mss, raw.wscale, raw)
            )
        return out

    def take_one(self, now: float | None = None) -> Seg:
        segs = self.take(now)
        assert len(segs) == 1, segs
        return segs[0]


@dataclass
class LinkConfig:
    delay: float = 0.01
    jitter: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay: float = 0.02
    rate: float | None = None
    """Bottleneck bytes per second (None: infinite)."""
    queue: int = 64
    """Packets the bottleneck queue holds before dropping (drop-tail)."""
    blackouts: list[tuple[float, float]] = field(default_factory=list)
    """Intervals of time in which every packet sent is lost."""


class Link:
    """Two stacks joined by a simulated path with loss, duplication, reordering and delay.

    Time is simulated: :meth:`run` jumps from event to event (a packet arrival or
    a stack deadline), so seconds of retransmission timeouts cost nothing.
    """

    def __init__(self, a: NetStack, b: NetStack, config: LinkConfig, seed: int = 0) -> None:
        self.a = a
        self.b = b
        self.cfg = config
        self.rng = random.Random(seed)
        self.now = 0.0
        self._heap: list[tuple[float, int, NetStack, bytes]] = []
        self._n = 0
        self._busy_until = {id(a): 0.0, id(b): 0.0}
        self.delivered = 0
        self.dropped = 0

    def _transmit(self, src: NetStack, dst: NetStack, packet: bytes) -> None:
        cfg = self.cfg
        rng = self.rng
        depart = self.now
        if cfg.rate is not None:
            # A serialising bottleneck with a drop-tail queue.
            start = max(self.now, self._busy_until[id(src)])
            if (start - self.now) * cfg.rate > cfg.queue * 1500:
                self.dropped += 1
                return
            depart = start + len(packet) / cfg.rate
            self._busy_until[id(src)] = depart
        if rng.random() < cfg.loss or any(a <= depart < b for a, b in cfg.blackouts):
            self.dropped += 1
            return
        copies = 2 if rng.random() < cfg.duplicate else 1
        for _ in range(copies):
            t = depart + cfg.delay + rng.random() * cfg.jitter
            if rng.random() < cfg.reorder:
                t += rng.random() * cfg.reorder_delay
            self._n += 1
            heapq.heappush(self._heap, (t, self._n, dst, packet))

    def flush(self) -> None:
        for src, dst in ((self.a, self.b), (self.b, self.a)):
            for packet in src.packets_to_send(self.now):
                self._transmit(src, dst, packet)

    def step(self) -> bool:
        """Advance to the next event; False when nothing at all is pending."""
        self.flush()
        times = [t for t in (self.a.next_deadline(), self.b.next_deadline()) if t is not None]
        if self._heap:
            times.append(self._heap[0][0])
        if not times:
            return False
        t = min(times)
        if t > self.now:
            self.now = t
        while self._heap and self._heap[0][0] <= self.now:
            _, _, dst, packet = heapq.heappop(self._heap)
            dst.receive_packet(packet, self.now)
            self.delivered += 1
        for s in (self.a, self.b):
            d = s.next_deadline()
            if d is not None and d <= self.now:
                s.handle_timer(self.now)
        self.flush()
        return True

    def run(self, until: Callable[[], bool], *, limit: float = 10_000.0, app=None) -> None:
        """Step until *until()* is true, calling *app()* between steps."""
        while not until():
            if app is not None:
                app()
                self.flush()
            if not self.step() and not until():
                # Nothing in flight and no timer: only the application can move on.
                if app is not None:
                    app()
                if not self.step():
                    raise AssertionError(f"simulation stalled at {self.now:.3f} s")
            if self.now > limit:
                raise AssertionError(f"simulation exceeded {limit} simulated seconds")


def make_stack(addr: str, seed: int, **tcp: object) -> PulledStack:
    return PulledStack([addr], random=seeded(seed), tcp_config=TcpConfig(**tcp))  # type: ignore[arg-type]
