"""Where the TUN path's CPU goes, stage by stage, in-process (no root, no
system calls): per-packet CPU time of each Python stage a full-size TCP
segment passes through, against the raw AEAD call, measured alternately.

Batches of 64 TCP segments of one flow (1,420-byte IP packets, MTU 1420),
as one TUN read or one UDP GRO read gives them:

* A->B (we send): ``Device.send_packets`` (route, seal), the GSO send's join
  of a run of datagrams into one buffer;
* B->A (we receive): the split of a GRO buffer into datagrams,
  ``Device.receive_datagrams`` (open, replay window, inner checks), and the
  TUN write's :class:`Coalescer` (join into super-packets);
* the raw ChaCha20-Poly1305 ``encrypt`` and ``decrypt`` of the same sizes.

    python benchmarks/bench_stages.py [--rounds 5] [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import struct
import sys
import time
from collections.abc import Callable

from bench_transport import established_pair
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from wireguard.crypto import aead_backend
from wireguard.io.tun import Coalescer

BATCH = 64
MTU = 1420


def tcp_segments(count: int) -> list[bytes]:
    """In-order full-size segments of one IPv4 TCP flow 10.0.0.1 -> 10.0.0.2."""
    out = []
    payload = bytes(MTU - 40)
    for i in range(count):
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, MTU, i, 0x4000, 64, 6, 0,
                         bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))  # fmt: skip
        tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000 + i * len(payload), 1, 0x50, 0x10,
                          65535, 0, 0)  # fmt: skip
        out.append(ip + tcp + payload)
    return out


def stages() -> dict[str, Callable[[], None]]:
    a, b, addr_a, now = established_pair()
    segments = tcp_segments(BATCH)
    sealed = [d for d, _ in a.send_packets(segments, now).datagrams]
    gro_buffer = b"".join(sealed)
    size = len(sealed[0])
    opened = b.receive_datagrams([(d, addr_a) for d in sealed], now).packets
    assert opened == segments
    aead = ChaCha20Poly1305(bytes(32))
    nonce = struct.Struct("<4xQ").pack
    ciphertexts = [aead.encrypt(nonce(i), s, None) for i, s in enumerate(segments)]
    state = {"now": now}

    def send() -> None:
        a.send_packets(segments, state["now"])

    def gso_join() -> None:
        b"".join(sealed)

    def gro_split() -> None:
        view = memoryview(gro_buffer)
        [(bytes(view[i : i + size]), addr_a) for i in range(0, len(gro_buffer), size)]

    def receive() -> None:
        # Fresh counters each time: seal a batch outside the timed part.
        b.receive_datagrams(fresh.pop(), now)

    fresh: list[list[tuple[bytes, tuple[str, int]]]] = []

    def refill() -> None:
        while len(fresh) < 4:
            fresh.append([(d, addr_a) for d, _ in a.send_packets(segments, now).datagrams])

    def coalesce() -> None:
        Coalescer.join(opened)

    def encrypt() -> None:
        for i, s in enumerate(segments):
            aead.encrypt(nonce(i), s, None)

    def decrypt() -> None:
        for i, c in enumerate(ciphertexts):
            aead.decrypt(nonce(i), c, None)

    receive.refill = refill  # type: ignore[attr-defined]
    return {
        "A->B Device.send_packets (route + seal)": send,
        "A->B GSO join of the datagrams": gso_join,
        "B->A GRO split into datagrams": gro_split,
        "B->A Device.receive_datagrams (open + checks)": receive,
        "B->A Coalescer.join (TUN write)": coalesce,
        "raw AEAD encrypt": encrypt,
        "raw AEAD decrypt": decrypt,
    }


def per_packet_us(fn: Callable[[], None], seconds: float) -> float:
    refill = getattr(fn, "refill", None)
    spent, n = 0.0, 0
    while spent < seconds:
        if refill is not None:
            refill()
        start = time.process_time()
        fn()
        spent += time.process_time() - start
        n += BATCH
    return spent / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.5, help="CPU time per stage and round")
    args = parser.parse_args()
    fns = stages()
    got: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            got[name].append(per_packet_us(fn, args.seconds))
    print(f"{args.rounds} rounds, medians, CPU us per 1,420-byte packet ({BATCH} per batch); "
          f"python {platform.python_version()}, {aead_backend()}")  # fmt: skip
    print("| stage | us per packet |")
    print("| --- | --- |")
    for name, values in got.items():
        print(f"| {name} | {statistics.median(values):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
