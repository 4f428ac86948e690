"""Bulk TCP throughput between two NetStacks in one process, against the kernel.

Two stacks are joined back to back (every packet handed over directly, no loss)
and one connection carries a blob one way; the figure is application bytes per
second of wall time, covering both stacks' work (segmenting, checksums, ACKs).
The reference, measured in the same run, is the kernel's TCP over loopback
moving the same bytes between two threads of this process, so the ratio says
how far the pure-Python stack is from the C one on this machine.

    python benchmarks/bench_netstack.py [--mb 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
import time

from wireguard.netstack import NetStack, TcpConfig


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
                packets = src.packets_to_send(now)
                if packets:
                    moved = True
                    for p in packets:
                        dst.receive_packet(p, now)

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
        a.handle_timer(now)
        b.handle_timer(now)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=16, help="megabytes per transfer")
    parser.add_argument("--repeat", type=int, default=3, help="best of N")
    args = parser.parse_args()
    size = args.mb * 1024 * 1024
    ours = min(netstack_transfer(size) for _ in range(args.repeat))
    ref = min(kernel_transfer(size) for _ in range(args.repeat))
    mb = size / 1e6
    print(f"netstack in-process bulk TCP: {mb / ours:8.1f} MB/s ({args.mb} MiB in {ours:.3f} s)")
    print(f"kernel loopback TCP (ref):    {mb / ref:8.1f} MB/s ({args.mb} MiB in {ref:.3f} s)")
    print(f"ratio netstack/kernel:        {ref / ours:8.4f}")


if __name__ == "__main__":
    main()
