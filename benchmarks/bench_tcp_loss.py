"""Bulk TCP transfers through lossy simulated links: the SACK sender against
NewReno, the same stacks with SACK switched off, in the same run.

    python benchmarks/bench_tcp_loss.py [--megabytes 8] [--seeds 3]

Two of our stacks joined by the tests' simulated link (seeded loss,
duplication, reordering, a bottleneck queue); time is simulated, so the
figures are transfer times in simulated seconds, the same on every machine.
Each profile runs with ``TcpConfig(sack=False)`` (RFC 5681/6582 NewReno, the
reference) and with SACK (RFC 6675 recovery, Early Retransmit, tail loss
probes); the ratio is NewReno's time over SACK's, so above 1 is faster.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "netstack"))

from netstack_helpers import Link, LinkConfig, make_stack

PROFILES = {
    # The interop tests' lossy relay on a LAN: sub-millisecond RTT, 2% loss,
    # 1% duplicates, 2% held back 5 ms (reordered past many segments).
    "relay-like LAN": LinkConfig(
        delay=0.0005, loss=0.02, duplicate=0.01, reorder=0.02, reorder_delay=0.005,
        rate=50e6, queue=1000,
    ),
    "WAN 40 ms RTT, 1% loss": LinkConfig(delay=0.02, loss=0.01, rate=12.5e6, queue=200),
    "WAN 40 ms RTT, 3% loss": LinkConfig(delay=0.02, loss=0.03, rate=12.5e6, queue=200),
}  # fmt: skip


def transfer(config: LinkConfig, sack: bool, seed: int, size: int) -> tuple[float, int]:
    """Simulated seconds to move *size* bytes one way, and the sender's RTOs."""
    a = make_stack("10.0.0.1", 11, min_rto=0.2, sack=sack)
    b = make_stack("10.0.0.2", 12, min_rto=0.2, sack=sack)
    link = Link(a, b, config, seed=seed)
    listener = b.tcp_listen(443)
    data = random.Random(seed).randbytes(size)
    client = a.tcp_connect("10.0.0.2", 443, 0.0)
    sent, got = 0, bytearray()
    server = None

    def app() -> None:
        nonlocal sent, server
        if client.established and client.can_send and sent < size:
            sent += client.send(data[sent : sent + 65536])
        if server is None:
            server = listener.accept()
        if server is not None:
            got.extend(server.receive())

    link.run(lambda: len(got) == size, app=app, limit=10_000)
    assert got == data
    return link.now, a.stats.tcp_timeouts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=float, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    size = int(args.megabytes * (1 << 20))
    print(f"{args.megabytes:g} MB one way, seeds 0-{args.seeds - 1}, simulated seconds (RTOs)")
    for name, config in PROFILES.items():
        row = {}
        for sack in (False, True):
            runs = [transfer(config, sack, seed, size) for seed in range(args.seeds)]
            row[sack] = runs
            label = "SACK   " if sack else "NewReno"
            shown = ", ".join(f"{t:6.2f} ({rto})" for t, rto in runs)
            print(f"{name:24s} {label} {shown}", flush=True)
        ratios = [r / s for (r, _), (s, _) in zip(row[False], row[True], strict=True)]
        print(f"{name:24s} NewReno/SACK time: median {statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}-{max(ratios):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
