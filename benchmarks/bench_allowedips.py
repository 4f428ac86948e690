"""Allowed-IPs lookups per second with 10,000 prefixes, against a plain dict.

Run with ``pytest benchmarks/bench_allowedips.py --benchmark-enable``. Each
round looks up the same 10,000 addresses (4 or 16 raw bytes, as the device
takes them out of IP headers); half fall inside a routed prefix, half are
random. The reference is ``dict.get`` on a dict with as many keys as the table
has prefixes, measured in the same run, so the ratio says what the longest
prefix match costs beyond one hash probe. The ops/s pytest-benchmark prints are
rounds per second: multiply by 10,000, or read ``lookups_per_second`` in the
extra info (``--benchmark-verbose`` or ``--benchmark-json``).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable

import pytest

from wireguard.allowedips import AllowedIPs, Network

PREFIXES = 10_000
LOOKUPS = 10_000


class Peer:
    __slots__ = ("number",)

    def __init__(self, number: int) -> None:
        self.number = number


def random_network(rng: random.Random, lengths: Callable[[random.Random, int], int]) -> Network:
    if rng.random() < 0.6:
        length = lengths(rng, 4)
        return ipaddress.IPv4Network((rng.getrandbits(32), length), strict=False)
    length = lengths(rng, 6)
    return ipaddress.IPv6Network((rng.getrandbits(128), length), strict=False)


def typical_lengths(rng: random.Random, version: int) -> int:
    """Mostly host routes, as on a server with one address per client, plus
    some site prefixes and a default route's worth of short ones."""
    if version == 4:
        return rng.choices([32, 24, 16, 8], weights=[85, 10, 4, 1])[0]
    return rng.choices([128, 64, 56, 48], weights=[85, 10, 3, 2])[0]


def any_lengths(rng: random.Random, version: int) -> int:
    """Every prefix length equally likely: the worst case for one dict per
    length (33 IPv4 and 129 IPv6 tables to probe on a miss)."""
    return rng.randint(0, 32 if version == 4 else 128)


def build(
    lengths: Callable[[random.Random, int], int],
) -> tuple[AllowedIPs[Peer], list[Network], list[bytes]]:
    """The table, its prefixes, and the addresses every round looks up."""
    rng = random.Random(2024)
    table: AllowedIPs[Peer] = AllowedIPs()
    networks: list[Network] = []
    while len(table) < PREFIXES:  # a repeated prefix only moves, so count the table
        network = random_network(rng, lengths)
        table.insert(network, Peer(len(networks)))
        networks.append(network)
    addresses = []
    for index in range(LOOKUPS):
        if index % 2:
            network = rng.choice(networks)
            offset = rng.getrandbits(network.max_prefixlen - network.prefixlen)
            addresses.append((network.network_address + offset).packed)
        elif rng.random() < 0.6:
            addresses.append(rng.getrandbits(32).to_bytes(4))
        else:
            addresses.append(rng.getrandbits(128).to_bytes(16))
    return table, networks, addresses


def lookup_all(lookup: Callable[[bytes], object], addresses: list[bytes]) -> int:
    found = 0
    for address in addresses:
        if lookup(address) is not None:
            found += 1
    return found


def record(benchmark, name: str) -> None:  # type: ignore[no-untyped-def]
    if benchmark.stats is None:  # --benchmark-disable (the default): ran once, no timing
        return
    per_second = LOOKUPS / benchmark.stats.stats.mean
    benchmark.extra_info["lookups_per_second"] = round(per_second)
    print(f"\n{name}: {per_second:,.0f} lookups/s")


@pytest.mark.parametrize("lengths", [typical_lengths, any_lengths], ids=["typical", "any-length"])
def test_allowedips_lookup(benchmark, lengths) -> None:  # type: ignore[no-untyped-def]
    table, _, addresses = build(lengths)
    found = benchmark(lookup_all, table.lookup, addresses)
    assert found >= LOOKUPS // 2
    record(benchmark, f"AllowedIPs.lookup ({lengths.__name__})")


def test_dict_reference(benchmark) -> None:  # type: ignore[no-untyped-def]
    # As many keys as the table has prefixes (their network addresses), probed
    # with the very same addresses: one hash probe per lookup.
    table, networks, addresses = build(typical_lengths)
    reference = {network.network_address.packed: Peer(0) for network in networks}
    rng = random.Random(1)
    while len(reference) < len(table):
        reference[rng.getrandbits(32).to_bytes(4)] = Peer(0)
    benchmark(lookup_all, reference.get, addresses)
    record(benchmark, "dict.get reference")
