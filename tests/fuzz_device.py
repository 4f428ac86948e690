"""Fuzz two talking Devices with random and mutated datagrams.

Two devices hold a real session and keep talking (data both ways, rekeys,
handshakes under load, cookie replies) in a simulated network. Between their
genuine exchanges, each one is fed datagrams of all four message kinds: random
bytes, and genuine messages captured on the wire with bits flipped, bytes
replaced, lengths changed, indices pointed at live sessions, and mac1
recomputed so the forgery reaches the Diffie-Hellman and AEAD checks.

Around each fuzzed call the receiving device's whole state is snapshotted
deeply (every peer: keypairs with their replay windows and counters, the
pending handshake's chaining key and hash, timers, staged packets, cookie
state, endpoint, counters; and the index table). A call must never raise, and
a datagram the device refused (one more drop counted) must leave that
snapshot exactly as it was: nothing changes before a message authenticates.

Run it by hand for the big count (``python -m tests.fuzz_device --count
1000000``); the test suite runs a small one (tests/test_fuzz_device.py).
"""

from __future__ import annotations

import argparse
import collections
import random
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.sim import Link, Network, Node
from wireguard.constants import (
    COOKIE_REPLY_LEN,
    INITIATION_LEN,
    MAC_LEN,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT_DATA,
    RESPONSE_LEN,
)
from wireguard.cookie import mac1_key
from wireguard.crypto import mac
from wireguard.device import Device

# Device attributes that legitimately move on unauthenticated input: the drop
# counters (a refusal is counted there), the under-load accounting and the
# per-source rate limiter (they exist to count what arrives), the cookie
# checker (its secret is renewed lazily when a cookie reply is made), and
# the handshake trace of a researcher. The timer heap is left out because it
# is cleaned lazily (stale entries stay until they surface); the deadlines
# themselves are in each peer's timers, which are compared.
_EXCLUDED = {
    "_timer_heap",
    "drops",
    "_ratelimiter",
    "_cookie_checker",
    "_handshake_window_start",
    "_handshakes_in_window",
    "_last_under_load",
    "last_trace",
    "_random",
    "on_ephemeral_key",
}


def snapshot(obj: object, _seen: dict[int, object] | None = None) -> object:
    """A comparable deep copy of *obj*'s state (objects walked through their
    __slots__ and __dict__; cycles and callables cut)."""
    seen = {} if _seen is None else _seen
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    key = id(obj)
    if key in seen:
        return ("<seen>", type(obj).__name__)
    seen[key] = obj
    if isinstance(obj, (list, tuple, collections.deque)):
        return (type(obj).__name__, tuple(snapshot(x, seen) for x in obj))
    if isinstance(obj, (set, frozenset)):
        return ("set", frozenset(repr(snapshot(x, seen)) for x in obj))
    if isinstance(obj, dict):
        return ("dict", tuple((repr(snapshot(k, seen)), snapshot(v, seen)) for k, v in obj.items()))
    if callable(obj) and not hasattr(obj, "__dict__") and not hasattr(obj, "__slots__"):
        return ("<callable>",)
    fields: dict[str, object] = {}
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if hasattr(obj, name):
                fields[name] = getattr(obj, name)
    fields.update(getattr(obj, "__dict__", {}))
    if not fields:
        # A library object with no Python-visible state (an AEAD or X25519
        # key object): its identity is what can change.
        return ("<opaque>", type(obj).__name__, key)
    out = []
    for name in sorted(fields):
        if isinstance(obj, Device) and name in _EXCLUDED:
            continue
        value = fields[name]
        if name == "_notify" or (callable(value) and not hasattr(value, "__slots__")
                                 and not hasattr(value, "__dict__")):  # fmt: skip
            continue
        out.append((name, snapshot(value, seen)))
    return (type(obj).__name__, tuple(out))


def device_state(device: Device) -> object:
    return snapshot(device)


@dataclass
class Report:
    datagrams: int = 0
    exceptions: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    accepted: int = 0
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    drops: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def ok(self) -> bool:
        return not self.exceptions and not self.changed


class Fuzzer:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.net = net = Network(seed, Link(delay=0.01))
        self.a = net.add("a", 1)
        self.b = net.add("b", 2, under_load_threshold=40)
        net.connect(self.a, self.b)
        self.ident = 0
        self.captured: dict[int, collections.deque[bytes]] = {
            k: collections.deque(maxlen=32) for k in range(1, 5)
        }
        self._tap_seen = 0

    # -- the genuine conversation --------------------------------------------

    def talk(self, seconds: float) -> None:
        net = self.net
        for _ in range(3):
            self.ident += 1
            net.send(self.a, self.b, self.ident, size=self.rng.choice((8, 60, 500, 1400)))
            self.ident += 1
            net.send(self.b, self.a, self.ident, size=self.rng.choice((8, 60, 500)))
        if self.rng.random() < 0.05:
            # A fresh handshake now and then, so pending initiations and
            # responder keypairs exist to be attacked.
            peer = self.a.device.peers[self.b.device.public_key]
            peer.last_sent_handshake = None
            net.apply(self.a, self.a.device.initiate_handshake(self.b.device.public_key, net.now))
        net.run_for(seconds)
        for _, _, _, data in net.tap[self._tap_seen :]:
            kind = data[0]
            if kind in self.captured:
                self.captured[kind].append(data)
        self._tap_seen = len(net.tap)
        if len(net.tap) > 4096:
            del net.tap[:2048]
            self._tap_seen = len(net.tap)

    def make_cookie_reply(self) -> None:
        """Put b under load for a moment so it answers with cookie replies."""
        net, a, b = self.net, self.a, self.b
        peer = a.device.peers[b.device.public_key]
        for _ in range(60):
            peer.last_sent_handshake = None
            out = a.device.initiate_handshake(b.device.public_key, net.now)
            for data, _ in out.datagrams:
                self.captured[MESSAGE_INITIATION].append(data)
                got = b.device.receive_datagram(data, a.address, net.now)
                for reply, _ in got.datagrams:
                    self.captured[reply[0]].append(reply)
        net.run_for(1.5)

    # -- forgeries -------------------------------------------------------------

    def _live_indices(self, device: Device) -> list[int]:
        return list(device._index)

    def forge(self, target: Node) -> tuple[str, bytes]:
        rng = self.rng
        r = rng.random()
        if r < 0.15:
            n = rng.choice((rng.randrange(0, 40), rng.randrange(0, 200), rng.randrange(0, 1600)))
            data = bytearray(rng.randbytes(n))
            if n >= 4 and rng.random() < 0.7:
                data[:4] = struct.pack("<I", rng.randrange(1, 5))
            return "random", bytes(data)
        if r < 0.25:
            kind = rng.randrange(1, 4)
            size = {1: INITIATION_LEN, 2: RESPONSE_LEN, 3: COOKIE_REPLY_LEN}[kind]
            data = bytearray(rng.randbytes(size))
            data[:4] = struct.pack("<I", kind)
            return f"sized-{kind}", self._maybe_fix(target, data)
        kind = rng.choice((1, 2, 3, 4, 4))
        pool = self.captured[kind]
        if not pool:
            return "random", rng.randbytes(rng.randrange(0, 200))
        data = bytearray(rng.choice(pool))
        how = rng.random()
        if how < 0.45:
            for _ in range(rng.randrange(1, 9)):
                bit = rng.randrange(len(data) * 8)
                data[bit // 8] ^= 1 << (bit % 8)
        elif how < 0.65:
            for _ in range(rng.randrange(1, 5)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif how < 0.75:
            data = data[: rng.randrange(len(data))] if rng.random() < 0.5 else data + bytearray(
                rng.randbytes(rng.randrange(1, 64))
            )
        elif how < 0.9 and len(data) >= 8:
            # Point it at a live session or pending handshake of the target,
            # and garble the rest.
            live = self._live_indices(target.device)
            if live:
                offset = 8 if kind == MESSAGE_RESPONSE else 4  # the receiver index
                struct.pack_into("<I", data, offset, rng.choice(live))
                start = 16 if kind == MESSAGE_TRANSPORT_DATA else 12
                for _ in range(rng.randrange(1, 4)):
                    if len(data) > start:
                        data[rng.randrange(start, len(data))] ^= 1 << rng.randrange(8)
        else:
            pass  # a plain replay of a genuine message
        return f"mutated-{kind}", self._maybe_fix(target, data)

    def _maybe_fix(self, target: Node, data: bytearray) -> bytes:
        """Recompute mac1 (it needs only the target's public key) so the
        forgery gets past the cheap check to the expensive ones."""
        kind = data[0] if data else 0
        size = {MESSAGE_INITIATION: INITIATION_LEN, MESSAGE_RESPONSE: RESPONSE_LEN}.get(kind)
        if size is not None and len(data) == size and self.rng.random() < 0.8:
            end1 = size - 2 * MAC_LEN
            data[end1 : end1 + MAC_LEN] = mac(mac1_key(target.device.public_key.raw), data[:end1])
            if self.rng.random() < 0.5:
                data[end1 + MAC_LEN :] = bytes(MAC_LEN)
        return bytes(data)

    # -- one fuzzed call -------------------------------------------------------

    def feed(self, target: Node, report: Report) -> None:
        label, data = self.forge(target)
        other = self.b if target is self.a else self.a
        source = other.address if self.rng.random() < 0.8 else (
            f"203.0.113.{self.rng.randrange(1, 255)}", self.rng.randrange(1, 65536)
        )
        device = target.device
        before = device_state(device)
        dropped = sum(device.drops.values())
        self.net.now += 1e-6
        report.datagrams += 1
        report.by_kind[label] += 1
        try:
            out = device.receive_datagram(data, source, self.net.now)
        except Exception as exc:  # what the fuzzer is looking for
            report.exceptions.append(f"{label} {data.hex()}: {type(exc).__name__}: {exc}")
            return
        refused = sum(device.drops.values()) - dropped
        if refused == 1:
            after = device_state(device)
            if after != before:
                report.changed.append(f"{label} {data.hex()}")
            for reason, n in device.drops.items():
                report.drops[reason] = n
        elif refused == 0:
            # Accepted: a genuine message we had not seen (a replay of one not
            # yet delivered, or a cookie reply the target was waiting for).
            report.accepted += 1
            self.net.apply(target, out)
        else:
            report.changed.append(f"{label} counted {refused} drops for one datagram")


def run(count: int, seed: int = 1, progress: Callable[[Report], None] | None = None) -> Report:
    fuzzer = Fuzzer(seed)
    fuzzer.talk(1.0)
    fuzzer.make_cookie_reply()
    report = Report()
    step = 0
    while report.datagrams < count:
        step += 1
        if step % 50 == 0:
            fuzzer.talk(fuzzer.rng.choice((0.01, 0.5, 5.0, 30.0)))
            if step % 5000 == 0:
                fuzzer.make_cookie_reply()
        if step % 20_000 == 0 and progress is not None:
            progress(report)
        target = fuzzer.a if fuzzer.rng.random() < 0.5 else fuzzer.b
        fuzzer.feed(target, report)
        if len(report.exceptions) + len(report.changed) > 20:
            break
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    start = time.monotonic()

    def progress(report: Report) -> None:
        rate = report.datagrams / max(time.monotonic() - start, 1e-9)
        print(f"{report.datagrams:>9} datagrams, {rate:,.0f}/s, "
              f"{len(report.exceptions)} exceptions, {len(report.changed)} state changes",
              file=sys.stderr, flush=True)  # fmt: skip

    report = run(args.count, args.seed, progress)
    elapsed = time.monotonic() - start
    print(f"{report.datagrams} datagrams in {elapsed:.0f} s (seed {args.seed}): "
          f"{len(report.exceptions)} exceptions, {len(report.changed)} state changes "
          f"before authentication, {report.accepted} accepted")  # fmt: skip
    print("by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(report.by_kind.items())))
    print("drops: " + ", ".join(f"{k} {v}" for k, v in sorted(report.drops.items())))
    for line in report.exceptions[:10] + report.changed[:10]:
        print("  " + line[:300])
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
