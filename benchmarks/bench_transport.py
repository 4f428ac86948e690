"""Transport data path and per-peer memory of the sans-I/O Device.

1. 1420-byte packets encrypted by one Device and decrypted by another,
   in-process, packets/s, against raw `cryptography` ChaCha20-Poly1305
   encrypt + decrypt of the same size measured in the same run.
2. Memory per configured peer at 10,000 peers (tracemalloc): a public key,
   an allowed IP and an endpoint each, as a server would be configured.

    python benchmarks/bench_transport.py [--seconds 3] [--rounds 3] [--peers 10000]

Times are CPU time of this process (time.process_time), so other load on
the machine slows the clock less than it slows wall time. Both sides of each
round's ratio are measured in the same run, alternating in slices (10 per
round by default), so a change of the machine's speed during a round affects
both alike; the ratio reported is the median of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from wireguard.crypto import aead_backend
from wireguard.device import Device
from wireguard.keys import PrivateKey, PublicKey
from wireguard.netstack.ip import IPPROTO_UDP, addr_bytes, build_ipv4


def ipv4_packet(src: str, dst: str, payload: bytes) -> bytes:
    return build_ipv4(addr_bytes(src), addr_bytes(dst), IPPROTO_UDP, payload)


SIZE = 1420


def established_pair():
    a, b = Device(PrivateKey.generate()), Device(PrivateKey.generate())
    addr_a, addr_b = ("192.0.2.1", 51820), ("192.0.2.2", 51820)
    a.add_peer(b.public_key, allowed_ips=["10.0.0.2/32"], endpoint=addr_b)
    b.add_peer(a.public_key, allowed_ips=["10.0.0.1/32"], endpoint=addr_a)
    now = 1000.0
    out = a.initiate_handshake(b.public_key, now)
    for _ in range(3):
        nxt = []
        for data, dst in out.datagrams:
            target, src = (b, addr_a) if dst == addr_b else (a, addr_b)
            nxt.append((target, target.receive_datagram(data, src, now)))
        out_list = [o for _, o in nxt]
        if not out_list:
            break
        out = out_list[0]
        for o in out_list[1:]:
            out.datagrams.extend(o.datagrams)
    assert a.peers[b.public_key].current is not None
    return a, b, addr_a, now


def device_runner(batch: int = 32) -> Callable[[float], tuple[int, float]]:
    """Packets through both devices, *batch* packets per wake-up with one
    Effects each way (``send_packets``, ``receive_datagrams``): what the
    asyncio/TUN bindings do (read until the socket would block, then act).
    Returns a function that runs for some seconds and says how many packets
    went through in how much CPU time."""
    a, b, addr_a, now = established_pair()
    packet = ipv4_packet("10.0.0.1", "10.0.0.2", bytes(SIZE - 20))
    packets = [packet] * batch

    def run(seconds: float) -> tuple[int, float]:
        n, start = 0, time.process_time()
        while (elapsed := time.process_time() - start) < seconds:
            sent = a.send_packets(packets, now)
            got = b.receive_datagrams([(data, addr_a) for data, _ in sent.datagrams], now)
            n += batch
        assert got.packets == packets
        return n, elapsed

    return run


def raw_runner() -> Callable[[float], tuple[int, float]]:
    """Raw ChaCha20-Poly1305 encrypt + decrypt of SIZE bytes, the same shape."""
    aead = ChaCha20Poly1305(os.urandom(32))
    payload = bytes(SIZE)
    nonce = struct.Struct("<4xQ").pack
    counter = 0

    def run(seconds: float) -> tuple[int, float]:
        nonlocal counter
        n, start = 0, time.process_time()
        while (elapsed := time.process_time() - start) < seconds:
            for i in range(counter, counter + 100):
                aead.decrypt(nonce(i), aead.encrypt(nonce(i), payload, None), None)
            counter += 100
            n += 100
        return n, elapsed

    return run


def rates(seconds: float, slices: int) -> tuple[float, float]:
    """Packets/s of the device path and of raw AEAD over *seconds* each, in
    *slices* alternating slices, so that a change in the machine's speed
    during the round (other load on shared cores) affects both alike."""
    device, raw = device_runner(), raw_runner()
    totals = {device: [0, 0.0], raw: [0, 0.0]}
    for _ in range(slices):
        for runner, total in totals.items():
            n, elapsed = runner(seconds / slices)
            total[0] += n
            total[1] += elapsed
    (dn, dt), (rn, rt) = totals[device], totals[raw]
    return dn / dt, rn / rt


def memory_per_peer(peers: int) -> float:
    keys = [PublicKey(os.urandom(32)) for _ in range(peers)]
    device = Device(PrivateKey.generate())
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i, key in enumerate(keys):
        device.add_peer(
            key,
            allowed_ips=[f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32"],
            endpoint=(f"198.51.{i >> 8 & 255}.{i & 255}", 51820),
        )
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / peers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slices", type=int, default=10, help="alternations per round")
    parser.add_argument("--peers", type=int, default=10_000)
    args = parser.parse_args()
    ours, raw = [], []
    for r in range(args.rounds):
        device, reference = rates(args.seconds, args.slices)
        ours.append(device)
        raw.append(reference)
        print(
            f"round {r + 1}: device {ours[-1]:8.0f}/s  raw AEAD {raw[-1]:8.0f}/s", file=sys.stderr
        )
    o, w = statistics.median(ours), statistics.median(raw)
    mbit = o * SIZE * 8 / 1e6
    print(aead_backend())
    print(f"device -> device, {SIZE}-byte packets: {o:8.0f} packets/s ({mbit:.0f} Mbit/s)")
    print(f"raw ChaCha20-Poly1305 enc+dec:        {w:8.0f} packets/s")
    ratios = sorted(x / y for x, y in zip(ours, raw, strict=True))
    print(f"ratio:                                {statistics.median(ratios):8.2f} "
          f"(median of the rounds' ratios; {ratios[0]:.2f}-{ratios[-1]:.2f})")  # fmt: skip
    per_peer = memory_per_peer(args.peers)
    print(f"memory per configured peer at {args.peers} peers: {per_peer:.0f} bytes")


if __name__ == "__main__":
    main()
