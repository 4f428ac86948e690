"""Can a second core help the data path? Prototypes of issue 15's two designs,
measured against one process in the same run (no root, no network).

A batch is 64 packets of 1,420 bytes (one TUN wake-up's worth), sealed with
ChaCha20-Poly1305 as :meth:`Keypair.seal_batch` seals them. Each round runs,
for ``--seconds`` of wall-clock time each, in rotating order:

* **one**: one process sealing batches (today's shape);
* **two**: two independent processes sealing batches at the same time: the
  ceiling of the multi-queue TUN + ``SO_REUSEPORT`` design, where each worker
  owns a queue and a socket and nothing is handed over (the keypair state
  shared or partitioned is not modelled: it can only cost more);
* **split**: the crypto-worker pipeline: the main process copies half of each
  batch into shared memory, wakes a worker process through a pipe, seals the
  other half itself, waits for the worker's half and copies it out. What this
  adds to a batch's latency is its round trip (``split_rtt_us``).

Prints packets per second (medians), the ratios to **one**, and the median
batch time of **one** and **split**. The machine's other load weighs on all
three alike only if it is steady: read the ratios, with the load noted.

    python benchmarks/bench_cores.py [--rounds 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import struct
import sys
import time
from multiprocessing import shared_memory

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

BATCH = 64
SIZE = 1420
SLOT = SIZE + 16  # a sealed packet: the ciphertext and its tag
KEY = bytes(range(32))
_nonce = struct.Struct("<4xQ").pack
STOP = (1 << 64) - 1


def seal_loop(seconds: float, result: mp.Queue) -> None:  # type: ignore[type-arg]
    """Seal batches for *seconds*; put (packets, [batch times])."""
    aead = ChaCha20Poly1305(KEY)
    packets = [os.urandom(SIZE) for _ in range(BATCH)]
    counter = done = 0
    times: list[float] = []
    end = time.perf_counter() + seconds
    while (start := time.perf_counter()) < end:
        out = []
        for packet in packets:
            out.append(aead.encrypt(_nonce(counter), packet, None))
            counter += 1
        done += BATCH
        times.append(time.perf_counter() - start)
    result.put((done, times))


def worker(name: str, wake: int, back: int) -> None:
    """The crypto worker: seals the packets in shared memory slot by slot."""
    shm = shared_memory.SharedMemory(name)
    buf = shm.buf
    aead = ChaCha20Poly1305(KEY)
    half = BATCH // 2
    out_at = half * SIZE
    try:
        while True:
            msg = os.read(wake, 8)
            if len(msg) < 8:
                return
            counter = struct.unpack("<Q", msg)[0]
            if counter == STOP:
                return
            for i in range(half):
                sealed = aead.encrypt(_nonce(counter + i), buf[i * SIZE : (i + 1) * SIZE], None)
                buf[out_at + i * SLOT : out_at + (i + 1) * SLOT] = sealed
            os.write(back, b"x")
    finally:
        buf.release()
        shm.close()


def split_loop(seconds: float) -> tuple[int, list[float]]:
    half = BATCH // 2
    shm = shared_memory.SharedMemory(create=True, size=half * (SIZE + SLOT))
    to_worker, wake = os.pipe()[::-1]
    back, from_worker = os.pipe()
    proc = mp.Process(target=worker, args=(shm.name, wake, from_worker))
    proc.start()
    aead = ChaCha20Poly1305(KEY)
    packets = [os.urandom(SIZE) for _ in range(BATCH)]
    buf = shm.buf
    out_at = half * SIZE
    counter = done = 0
    times: list[float] = []
    try:
        end = time.perf_counter() + seconds
        while (start := time.perf_counter()) < end:
            buf[:out_at] = b"".join(packets[:half])
            os.write(to_worker, struct.pack("<Q", counter))
            out = [aead.encrypt(_nonce(counter + half + i), p, None)
                   for i, p in enumerate(packets[half:])]  # fmt: skip
            os.read(back, 1)
            theirs = bytes(buf[out_at:])
            out = [theirs[i * SLOT : (i + 1) * SLOT] for i in range(half)] + out
            counter += BATCH
            done += BATCH
            times.append(time.perf_counter() - start)
    finally:
        os.write(to_worker, struct.pack("<Q", STOP))
        proc.join(5)
        os.close(to_worker)
        buf.release()
        shm.close()
        shm.unlink()
        for fd in (wake, back, from_worker):
            os.close(fd)
    return done, times


def run_processes(count: int, seconds: float) -> tuple[int, list[float]]:
    result: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    procs = [mp.Process(target=seal_loop, args=(seconds, result)) for _ in range(count)]
    for p in procs:
        p.start()
    got = [result.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(g[0] for g in got), [t for g in got for t in g[1]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    modes = ["one", "two", "split"]
    rates: dict[str, list[float]] = {m: [] for m in modes}
    batch: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.rounds):
        for mode in modes[r % 3 :] + modes[: r % 3]:
            if mode == "split":
                done, times = split_loop(args.seconds)
            else:
                done, times = run_processes(1 if mode == "one" else 2, args.seconds)
            rates[mode].append(done / args.seconds)
            batch[mode].append(statistics.median(times) * 1e6)
            took = statistics.median(times) * 1e6
            print(f"round {r + 1} {mode:>5}: {done / args.seconds:10.0f} packets/s, "
                  f"median batch {took:7.1f} us", file=sys.stderr)  # fmt: skip
    one = statistics.median(rates["one"])
    print(f"\n{args.rounds} rounds of {args.seconds:g} s, medians; {BATCH} x {SIZE} B per batch; "
          f"load average at the end {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("| design | packets/s | ratio to one | median batch, us |")
    print("| --- | --- | --- | --- |")
    for mode in modes:
        rate = statistics.median(rates[mode])
        print(f"| {mode} | {rate:,.0f} | {rate / one:.2f} | {statistics.median(batch[mode]):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
