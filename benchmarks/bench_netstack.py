"""Bulk TCP throughput between two NetStacks in one process, against the kernel.

Two stacks are joined back to back (every packet handed over directly, no loss)
and one connection carries a blob one way; the figure is application bytes per
second of wall time, covering both stacks' work (segmenting, checksums, ACKs).
The reference, measured in the same run, is the kernel's TCP over loopback
moving the same bytes between two threads of this process, so the ratio says
how far the pure-Python stack is from the C one on this machine.

    python benchmarks/bench_netstack.py [--mb 16] [--repeat 3]

With ``--hostile`` it measures instead what a hostile peer can make the stack
spend, in simulated time, with segments crafted by hand: the CPU per
out-of-order segment with 500 and 4,500 already held, the total for 10^5
one-byte segments with gaps (and the memory they pin), and whether a
legitimate connection still completes after 128 and 10,000 spoofed SYNs from
addresses that never answer (and what the half-open connections cost).

    python benchmarks/bench_netstack.py --hostile [--flood 100000]
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
import time
import tracemalloc

from wireguard.netstack import NetStack, StackEffects, TcpConfig
from wireguard.netstack.ip import addr_bytes, parse_ip
from wireguard.netstack.tcp import ACK, SYN, SegmentBuilder, parse_tcp

# One accumulator per stack, as a binding keeps one per wake-up: what the
# stack's calls hand over waits there until take() (events are not used).
_PENDING: dict[int, StackEffects] = {}


def _out(stack: NetStack) -> StackEffects:
    return _PENDING.setdefault(id(stack), StackEffects())


def take(stack: NetStack, now: float = 0.0) -> list[bytes]:
    """Flush *stack* at *now*: every packet it sent since the last take."""
    out = stack.flush(now, _out(stack))
    packets, out.packets = out.packets, []
    out.events.clear()
    return packets


def netstack_transfer(size: int, chunk: int = 256 * 1024) -> float:
    """Seconds to move *size* bytes from one stack to another."""
    cfg = TcpConfig()
    a = NetStack(["10.0.0.1"], tcp_config=cfg)
    b = NetStack(["10.0.0.2"], tcp_config=cfg)
    listener = b.tcp_listen(5001)
    now = 0.0
    client = a.tcp_connect("10.0.0.2", 5001, now)

    def pump() -> None:
        moved = True
        while moved:
            moved = False
            for src, dst in ((a, b), (b, a)):
                packets = take(src, now)
                if packets:
                    moved = True
                    dst.receive_packets(packets, now, _out(dst))

    pump()
    server = listener.accept()
    assert server is not None
    data = os.urandom(chunk)
    sent = received = 0
    start = time.perf_counter()
    while received < size:
        if sent < size:
            sent += client.send(data if size - sent >= chunk else data[: size - sent])
        pump()
        received += len(server.receive())
        now += 0.0005  # simulated time moves a little each round (RTT samples, timers)
        a.handle_timer(now, _out(a))
        b.handle_timer(now, _out(b))
    return time.perf_counter() - start


def kernel_transfer(size: int, chunk: int = 256 * 1024) -> float:
    """Seconds for the kernel to move *size* bytes over loopback TCP between threads."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    data = os.urandom(chunk)
    done = threading.Event()

    def sink() -> None:
        conn, _ = srv.accept()
        got = 0
        while got < size:
            got += len(conn.recv(1 << 20))
        conn.close()
        done.set()

    t = threading.Thread(target=sink)
    t.start()
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as c:
        left = size
        while left > 0:
            n = min(left, chunk)
            c.sendall(data[:n])
            left -= n
        done.wait()
    elapsed = time.perf_counter() - start
    t.join()
    srv.close()
    return elapsed


class _Remote:
    """A hand-driven remote TCP (address *addr*, port *port*) talking to *stack*:80."""

    SACK_OK = b"\x02\x04\x05\xb4\x01\x01\x04\x02"  # MSS 1460, NOP, NOP, SACK-permitted

    def __init__(self, stack: NetStack, addr: str = "10.0.0.1", port: int = 40000) -> None:
        self.stack = stack
        self.addr = addr_bytes(addr)
        self.port = port
        self.isn = 1_000_000
        self.ack = 0

    def send(
        self,
        flags: int,
        seq: int,
        ack: int = 0,
        payload: bytes = b"",
        options: bytes = b"",
        now: float = 0.0,
    ) -> None:
        builder = SegmentBuilder(self.addr, self.stack.addresses[0], self.port, 80)
        packet = builder.build(seq, ack, flags, 65535, payload, options)
        self.stack.receive_packet(packet, now, _out(self.stack))

    def handshake(self, now: float = 0.0) -> bool:
        """SYN, the stack's SYN-ACK, our ACK; True if the stack answered."""
        self.send(SYN, self.isn, options=self.SACK_OK, now=now)
        for packet in take(self.stack, now):
            pkt = parse_ip(packet)
            seg = parse_tcp(pkt)
            if pkt.dst == self.addr and seg.dport == self.port and seg.flags == SYN | ACK:
                self.ack = seg.seq + 1
                self.send(ACK, self.isn + 1, self.ack, now=now)
                return True
        return False


def _established(receive_buffer: int = 256 * 1024) -> tuple[NetStack, _Remote]:
    cfg = TcpConfig(delayed_ack=0, receive_buffer=receive_buffer)
    stack = NetStack(["10.0.0.2"], tcp_config=cfg)
    listener = stack.tcp_listen(80)
    remote = _Remote(stack)
    assert remote.handshake()
    assert listener.accept() is not None
    take(stack)
    return stack, remote


def ooo_cost(held: int, probe: int = 200) -> float:
    """Microseconds per one-byte out-of-order segment with *held* already held
    (each segment leaves a one-byte hole below it, so nothing merges). The
    receive buffer is 4 MiB, so that the stack's memory budget for
    out-of-order data holds them all."""
    stack, remote = _established(4 * 1024 * 1024)
    base = remote.isn + 1
    for i in range(held):
        remote.send(ACK, base + 2 * i + 1, remote.ack, b"x")
        take(stack)
    start = time.perf_counter()
    for i in range(held, held + probe):
        remote.send(ACK, base + 2 * i + 1, remote.ack, b"x")
        take(stack)
    return (time.perf_counter() - start) / probe * 1e6


def ooo_flood(n: int, memory: bool = False) -> tuple[float, int]:
    """Seconds for *n* one-byte out-of-order segments with gaps, and the peak
    of memory allocated meanwhile (traced only if *memory*: tracing is slow)."""
    stack, remote = _established()
    base = remote.isn + 1
    if memory:
        tracemalloc.start()
    start = time.perf_counter()
    for i in range(n):
        remote.send(ACK, base + 2 * i + 1, remote.ack, b"x")
        take(stack)
    elapsed = time.perf_counter() - start
    peak = 0
    if memory:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return elapsed, peak


def syn_flood(n: int) -> tuple[bool, bool, int, int]:
    """*n* spoofed SYNs (distinct addresses and ports, never answered), a
    legitimate handshake and data at once, and again after 64 simulated
    seconds. Returns (completed during, completed after, half-open
    connections at the end of the flood, peak memory in bytes)."""
    stack = NetStack(["10.0.0.2"])
    listener = stack.tcp_listen(80)
    tracemalloc.start()
    now = 0.0
    for i in range(n):
        now = i * 1e-4
        addr = f"10.{1 + (i >> 16) % 200}.{(i >> 8) & 255}.{i & 255}"
        _Remote(stack, addr, 1024 + i % 60000).send(SYN, i * 7919, now=now)
        take(stack, now)
        if (deadline := stack.next_deadline()) is not None and deadline <= now:
            stack.handle_timer(now, _out(stack))
            take(stack, now)
    half_open = sum(c.state.value == "SYN-RECEIVED" for c in stack.tcp_connections)

    def legit(port: int, t: float) -> bool:
        remote = _Remote(stack, "10.0.0.1", port)
        if not remote.handshake(t):
            return False
        remote.send(ACK, remote.isn + 1, remote.ack, b"hello", now=t)
        take(stack, t)
        while (conn := listener.accept()) is not None:
            if conn.remote_address == ("10.0.0.1", port):
                return conn.receive() == b"hello"
        return False

    during = legit(50000, now)
    t = now
    while t < now + 64.0:
        t += 0.5
        stack.handle_timer(t, _out(stack))
        take(stack, t)
    after = legit(50001, t)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return during, after, half_open, peak


def hostile(flood: int) -> None:
    for held in (500, 4500):
        print(f"out-of-order segment with {held:5d} held: {ooo_cost(held):8.1f} us")
    for n in sorted({10_000, flood}):
        elapsed, _ = ooo_flood(n)
        _, peak = ooo_flood(n, memory=True)
        print(
            f"{n:7d} one-byte segments with gaps:  {elapsed:8.2f} s, "
            f"peak memory {peak / 1e6:6.1f} MB"
        )
    for n in (128, 10_000):
        during, after, half_open, peak = syn_flood(n)
        print(
            f"{n:6d} spoofed SYNs: legitimate connection during {during}, after {after}; "
            f"{half_open} half-open, peak memory {peak / 1e6:.1f} MB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=16, help="megabytes per transfer")
    parser.add_argument("--repeat", type=int, default=3, help="best of N")
    parser.add_argument("--hostile", action="store_true", help="what a hostile peer costs")
    parser.add_argument("--flood", type=int, default=100_000, help="--hostile flood segments")
    args = parser.parse_args()
    if args.hostile:
        hostile(args.flood)
        return
    size = args.mb * 1024 * 1024
    ours = min(netstack_transfer(size) for _ in range(args.repeat))
    ref = min(kernel_transfer(size) for _ in range(args.repeat))
    mb = size / 1e6
    print(f"netstack in-process bulk TCP: {mb / ours:8.1f} MB/s ({args.mb} MiB in {ours:.3f} s)")
    print(f"kernel loopback TCP (ref):    {mb / ref:8.1f} MB/s ({args.mb} MiB in {ref:.3f} s)")
    print(f"ratio netstack/kernel:        {ref / ours:8.4f}")


if __name__ == "__main__":
    main()
