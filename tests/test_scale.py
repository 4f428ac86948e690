"""Scale (issue 15, item 5): memory and CPU grow linearly with peers and
allowed IPs. No timing: CPU is counted as Python lines executed in the
package (``sys.settrace``), which a busy machine does not change, and memory
with tracemalloc."""

from __future__ import annotations

import gc
import random
import sys
import tracemalloc
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path
from types import FrameType
from typing import Any

from wireguard.allowedips import AllowedIPs
from wireguard.device import Device
from wireguard.keys import PrivateKey, PublicKey

PACKAGE = str(Path(__file__).resolve().parents[1] / "wireguard")


def lines_run(fn: Callable[[], Any]) -> int:
    """How many lines of the package's Python code one call of *fn* runs."""
    count = 0

    def local(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def global_(frame: FrameType, event: str, arg: object) -> Any:
        if frame.f_code.co_filename.startswith(PACKAGE):
            return local
        return None

    old = sys.gettrace()
    sys.settrace(global_)
    try:
        fn()
    finally:
        sys.settrace(old)
    return count


class Value:
    __slots__ = ()


def test_readding_a_prefix_costs_the_same_however_many_a_peer_has() -> None:
    # Re-adding a prefix a peer owns moves it to the end of its list (as
    # wireguard-go): once a scan of the whole list, now one dict move. Also a
    # prefix moving from a peer with many prefixes to another.
    def costs(n: int) -> tuple[int, int, int]:
        table: AllowedIPs[Value] = AllowedIPs()
        big, other = Value(), Value()
        for i in range(n):
            table.insert(IPv4Network((10 << 24 | i << 8, 24)), big)
        # The middle one: a scan of the list would go half way.
        first = IPv4Network((10 << 24 | n // 2 << 8, 24))
        second = IPv4Network("10.0.1.0/24")
        readd = lines_run(lambda: table.insert(first, big))
        assert table.entries_for(big)[-1] == first
        move = lines_run(lambda: table.insert(second, other))
        assert table.lookup("10.0.1.1") is other and len(table.entries_for(big)) == n - 1
        remove = lines_run(lambda: table.remove(first, big))
        assert len(table.entries_for(big)) == n - 2
        return readd, move, remove

    assert costs(100) == costs(20_000)


def device_memory_per_peer(count: int) -> float:
    rng = random.Random(count)
    keys = [PublicKey(rng.randbytes(32)) for _ in range(count)]
    device = Device(PrivateKey(rng.randbytes(32)).clamped())
    endpoints = [(f"198.51.{i >> 8 & 255}.{i & 255}", 51820) for i in range(count)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, key in enumerate(keys):
            device.add_peer(key, allowed_ips=[f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32"],
                            endpoint=endpoints[i])  # fmt: skip
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(device.peers) == count
    return used / count


def test_memory_per_configured_peer_is_linear_and_below_the_old_figure() -> None:
    # Issue 15 measured 1,352 bytes per peer (public key, one allowed IP, an
    # endpoint: bench_transport.py); the handshake-only state (cookie keys)
    # is now made at the first handshake, the timer callback is one bound
    # method, the allowed-IPs bookkeeping one int per single-prefix peer.
    # The endpoints are the caller's and not counted here.
    small, large = device_memory_per_peer(1_000), device_memory_per_peer(10_000)
    assert large < 1.15 * small, (small, large)
    assert large < 1_000, large


def test_lazy_cookie_state_is_made_once_and_only_when_used() -> None:
    a, b = Device(PrivateKey.generate()), Device(PrivateKey.generate())
    peer = a.add_peer(b.public_key, endpoint=("192.0.2.2", 51820))
    b.add_peer(a.public_key, endpoint=("192.0.2.1", 51820))
    assert peer._cookies is None
    out = a.initiate_handshake(b.public_key, 1.0)
    cookies = peer.cookies
    assert cookies is peer.cookies is not None
    (init, _), = out.datagrams
    (resp, _), = b.receive_datagram(init, ("192.0.2.1", 51820), 1.0).datagrams
    a.receive_datagram(resp, ("192.0.2.2", 51820), 1.0)
    assert peer.current is not None and peer.cookies is cookies
