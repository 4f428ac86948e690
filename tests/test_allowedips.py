"""Cryptokey routing table against a linear-scan model, plus the kernel's edge cases."""

from __future__ import annotations

import ipaddress
import random
import tracemalloc
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wireguard.allowedips import AddressFormatError, AllowedIPs, Network
from wireguard.errors import LocalProtocolError


class Peer:
    """A value that compares equal to every other Peer: the table must use
    identity, or removing one peer would drop another's routes."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Peer)

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return f"Peer({self.name})"


PEERS = [Peer(name) for name in "ABCDE"]


class Model:
    """Obviously correct cryptokey routing: a list of (prefix, peer), scanned
    linearly; the longest matching prefix of the address's own family wins."""

    def __init__(self) -> None:
        self.entries: list[tuple[Network, Peer]] = []

    def insert(self, network: Network, peer: Peer) -> None:
        # Inserted again, for its own peer or another, a prefix goes to the
        # end of its peer's list (kernel allowedips.c add(): list_move_tail;
        # wireguard-go allowedips.go insert()).
        for index, (net, _) in enumerate(self.entries):
            if net == network:
                del self.entries[index]
                break
        self.entries.append((network, peer))

    def remove(self, network: Network, peer: Peer | None) -> bool:
        for index, (net, owner) in enumerate(self.entries):
            if net == network and (peer is None or owner is peer):
                del self.entries[index]
                return True
        return False

    def remove_value(self, peer: Peer) -> int:
        before = len(self.entries)
        self.entries = [(net, owner) for net, owner in self.entries if owner is not peer]
        return before - len(self.entries)

    def lookup(self, address: IPv4Address | IPv6Address) -> Peer | None:
        best: tuple[int, Peer] | None = None
        for net, owner in self.entries:
            if net.version != address.version or address not in net:
                continue
            if best is None or net.prefixlen > best[0]:
                best = (net.prefixlen, owner)
        return None if best is None else best[1]

    def entries_for(self, peer: Peer) -> list[Network]:
        return [net for net, owner in self.entries if owner is peer]


# Addresses cluster around a few bases so that prefixes overlap and nest.
V4_BASES = [0, 0x0A000000, 0x0A000001, 0x0A0001FF, 0xC0A80101, 0xFFFFFFFF]
V6_BASES = [
    0,
    int(IPv6Address("::ffff:10.0.0.1")),  # v4-mapped: must never match a v4 prefix
    int(IPv6Address("2001:db8::1")),
    int(IPv6Address("2001:db8:0:1::1")),
    int(IPv6Address("fe80::1")),
    2**128 - 1,
]


def near(bases: list[int], bits: int) -> st.SearchStrategy[int]:
    flipped = st.tuples(st.sampled_from(bases), st.integers(0, bits - 1)).map(
        lambda pair: pair[0] ^ (1 << pair[1])
    )
    return st.one_of(st.sampled_from(bases), flipped, st.integers(0, 2**bits - 1))


v4_ints = near(V4_BASES, 32)
v6_ints = near(V6_BASES, 128)


@st.composite
def networks(draw: st.DrawFn) -> tuple[Network, str | Network | tuple[bytes, int]]:
    """(the masked network, how it is given to the table: text with host bits
    left in, an ipaddress network, or (address bytes, length) for the
    insert_packed/remove_packed fast path)."""
    if draw(st.booleans()):
        number, length = draw(v4_ints), draw(st.integers(0, 32))
        text = f"{IPv4Address(number)}/{length}"
    else:
        number, length = draw(v6_ints), draw(st.integers(0, 128))
        text = f"{IPv6Address(number)}/{length}"
    network = ip_network(text, strict=False)
    # The packed form keeps the host bits too: insert_packed masks them.
    packed = (ipaddress.ip_address(text.split("/")[0]).packed, length)
    return network, draw(st.sampled_from([text, network, packed]))


addresses = st.one_of(v4_ints.map(IPv4Address), v6_ints.map(IPv6Address))
peers = st.sampled_from(PEERS)
operations = st.one_of(
    st.tuples(st.just("insert"), networks(), peers),
    st.tuples(st.just("insert"), networks(), peers),
    st.tuples(st.just("remove"), networks(), st.one_of(st.none(), peers)),
    st.tuples(st.just("remove_value"), st.none(), peers),
)


def as_input(address: IPv4Address | IPv6Address, form: int) -> object:
    return [address.packed, str(address), address, bytearray(address.packed)][form % 4]


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(operations, max_size=60),
    probes=st.lists(st.tuples(addresses, st.integers(0, 3)), max_size=40),
)
def test_matches_model(
    ops: list[tuple[str, tuple[Network, str | Network] | None, Peer | None]],
    probes: list[tuple[IPv4Address | IPv6Address, int]],
) -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    model = Model()
    for op, network, peer in ops:
        if op == "insert":
            assert network is not None and peer is not None
            if isinstance(network[1], tuple):
                table.insert_packed(*network[1], peer)
            else:
                table.insert(network[1], peer)
            model.insert(network[0], peer)
        elif op == "remove":
            assert network is not None
            if isinstance(network[1], tuple):
                removed = table.remove_packed(*network[1], peer)
            else:
                removed = table.remove(network[1], peer)
            assert removed == model.remove(network[0], peer)
        else:
            assert peer is not None
            assert table.remove_value(peer) == model.remove_value(peer)
        assert len(table) == len(model.entries)
        # Probe the inserted networks' own edges too, where off-by-one lives.
        edges = [n[0] for _, n, _ in ops if n is not None]
        for net in edges[-5:]:
            for address in (net.network_address, net.broadcast_address):
                assert table.lookup(address.packed) is model.lookup(address)
        for address, form in probes:
            assert table.lookup(as_input(address, form)) is model.lookup(address)
    for peer in PEERS:
        assert table.entries_for(peer) == model.entries_for(peer)
        assert list(table.iter_packed_for(peer)) == [
            (net.max_prefixlen, int(net.network_address), net.prefixlen)
            for net in model.entries_for(peer)
        ]
    assert sorted((str(net), id(peer)) for net, peer in table) == sorted(
        (str(net), id(peer)) for net, peer in model.entries
    )


def test_default_routes_per_family() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    v4, v6 = Peer("v4"), Peer("v6")
    table.insert("0.0.0.0/0", v4)
    assert table.lookup(b"\x01\x02\x03\x04") is v4
    assert table.lookup(bytes(16)) is None
    table.insert("::/0", v6)
    assert table.lookup(bytes(4)) is v4
    assert table.lookup(b"\xff" * 4) is v4
    assert table.lookup(b"\xff" * 16) is v6
    assert table.lookup("2001:db8::1") is v6
    assert table.entries_for(v4) == [IPv4Network("0.0.0.0/0")]
    assert table.entries_for(v6) == [IPv6Network("::/0")]


def test_host_routes_beat_shorter_prefixes() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    wide, host = Peer("wide"), Peer("host")
    table.insert("10.0.0.0/8", wide)
    table.insert("10.1.2.3/32", host)
    table.insert("2001:db8::/32", wide)
    table.insert("2001:db8::7/128", host)
    assert table.lookup("10.1.2.3") is host
    assert table.lookup("10.1.2.4") is wide
    assert table.lookup("11.1.2.3") is None
    assert table.lookup(IPv6Address("2001:db8::7")) is host
    assert table.lookup(IPv6Address("2001:db8::8")) is wide
    assert table.lookup(IPv4Address("10.1.2.3")) is host


def test_host_bits_are_masked_like_the_kernel() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    peer = Peer("p")
    table.insert("10.0.0.1/24", peer)
    table.insert("2001:db8::1:2:3/64", peer)
    assert table.entries_for(peer) == [IPv4Network("10.0.0.0/24"), IPv6Network("2001:db8::/64")]
    assert table.lookup("10.0.0.200") is peer
    assert table.lookup("2001:db8::ffff") is peer
    table.insert("10.0.0.77/24", peer)  # same prefix again: nothing changes
    assert len(table) == 2
    assert table.remove("10.0.0.99/24")
    assert table.lookup("10.0.0.200") is None
    assert len(table) == 1


def test_overwrite_moves_the_prefix() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    first, second = Peer("first"), Peer("second")
    table.insert("192.168.0.0/16", first)
    table.insert("10.0.0.0/8", first)
    table.insert("192.168.7.7/16", second)
    assert table.lookup("192.168.1.1") is second
    assert table.entries_for(first) == [IPv4Network("10.0.0.0/8")]
    assert table.entries_for(second) == [IPv4Network("192.168.0.0/16")]
    assert len(table) == 2
    # The old owner can no longer remove it.
    assert not table.remove("192.168.0.0/16", first)
    assert table.remove("192.168.0.0/16", second)
    assert table.entries_for(second) == []


def test_v4_mapped_addresses_are_not_v4() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    v4, mapped = Peer("v4"), Peer("mapped")
    table.insert("10.0.0.0/8", v4)
    assert table.lookup("::ffff:10.0.0.1") is None
    assert table.lookup(IPv6Address("::ffff:10.0.0.1").packed) is None
    table.insert("::ffff:0:0/96", mapped)
    assert table.lookup("10.0.0.1") is v4
    assert table.lookup(IPv6Address("::ffff:10.0.0.1").packed) is mapped
    assert table.lookup(IPv6Address("::ffff:11.0.0.1")) is mapped
    # 0.0.0.0/0 and ::/0 are different prefixes even though both are all zeros.
    table.insert("0.0.0.0/0", v4)
    table.insert("::/0", mapped)
    assert len(table) == 4
    assert table.lookup("11.0.0.1") is v4
    assert table.lookup("2001:db8::1") is mapped


def test_keys_of_different_lengths_do_not_collide() -> None:
    # 10.0.0.0/8 and 0.0.0.10/32 ... have different table keys per length; and
    # a /8 key equal to a /16 key as ints must stay separate in entries_for.
    table: AllowedIPs[Peer] = AllowedIPs()
    a, b = Peer("a"), Peer("b")
    table.insert("1.0.0.0/8", a)  # key 1 at length 8
    table.insert("0.1.0.0/16", a)  # key 1 at length 16
    table.insert("0.1.0.0/16", b)
    assert table.entries_for(a) == [IPv4Network("1.0.0.0/8")]
    assert table.entries_for(b) == [IPv4Network("0.1.0.0/16")]


def test_remove_value_uses_identity() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    a, b = Peer("a"), Peer("b")
    assert a == b  # deliberately: equality must not matter
    table.insert("10.0.0.0/24", a)
    table.insert("fd00::/8", a)
    table.insert("10.0.1.0/24", b)
    assert not table.remove("10.0.1.0/24", a)
    assert table.remove_value(a) == 2
    assert table.remove_value(a) == 0
    assert table.lookup("10.0.0.1") is None
    assert table.lookup("10.0.1.1") is b
    assert list(table) == [(IPv4Network("10.0.1.0/24"), b)]
    assert len(table) == 1
    table.clear()
    assert len(table) == 0 and table.lookup("10.0.1.1") is None


def test_remove_missing_prefix() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    peer = Peer("p")
    assert not table.remove("10.0.0.0/8")
    table.insert("10.0.0.0/8", peer)
    assert not table.remove("10.0.0.0/9")
    assert not table.remove("10.0.0.0/7")
    assert table.remove(IPv4Network("10.0.0.0/8"), peer)
    assert not table.remove("10.0.0.0/8")


def test_entries_for_keeps_insertion_order() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    peer = Peer("p")
    given_order = ["fd00::/8", "10.0.0.0/8", "192.168.1.0/24", "10.0.0.0/16", "::/0"]
    for text in given_order:
        table.insert(text, peer)
    assert [str(net) for net in table.entries_for(peer)] == given_order
    assert table.entries_for(Peer("nobody")) == []


@pytest.mark.parametrize(
    "bad", ["10.0.0.1/33", "::/129", "10.0.0/8x", "", "peer", "10.0.0.0/-1", 5, None, b"\n"]
)
def test_bad_prefixes_raise_a_project_error(bad: object) -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    with pytest.raises(AddressFormatError):
        table.insert(bad, Peer("p"))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        table.remove(bad)  # type: ignore[arg-type]
    assert issubclass(AddressFormatError, ValueError)


@pytest.mark.parametrize(
    "bad", [b"", b"\x01\x02\x03", b"\x00" * 5, b"\x00" * 15, b"\x00" * 17, "10.0.0.256", 7, None]
)
def test_bad_addresses_raise_a_project_error(bad: object) -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert("0.0.0.0/0", Peer("p"))
    with pytest.raises(AddressFormatError):
        table.lookup(bad)  # type: ignore[arg-type]


def test_none_cannot_be_a_value() -> None:
    with pytest.raises(LocalProtocolError):
        AllowedIPs().insert("10.0.0.0/8", None)


def test_lookup_accepts_buffers() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    peer = Peer("p")
    table.insert("10.0.0.0/8", peer)
    packet = bytes([0x45, 0, 0, 20]) + bytes(12) + bytes([10, 9, 8, 7])
    assert table.lookup(memoryview(packet)[16:20]) is peer
    assert table.lookup(bytearray(packet[16:20])) is peer


def test_many_peers_memory_per_peer() -> None:
    # Device goal: at most 4 KiB per peer in total; the routing share of it
    # (one /32 and one /128 per peer, like a typical road-warrior setup)
    # must stay a small part of that.
    count = 10_000
    rng = random.Random(7)
    peers = [Peer(str(i)) for i in range(count)]
    v4 = [ipaddress.IPv4Network((rng.getrandbits(32), 32)) for _ in range(count)]
    v6 = [ipaddress.IPv6Network((rng.getrandbits(128), 128)) for _ in range(count)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        table: AllowedIPs[Peer] = AllowedIPs()
        for peer, net4, net6 in zip(peers, v4, v6, strict=True):
            table.insert(net4, peer)
            table.insert(net6, peer)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(table) == 2 * count
    per_peer = used / count
    assert per_peer < 512, per_peer
    for peer, net4, net6 in zip(peers[:100], v4, v6, strict=False):
        assert table.lookup(net4.network_address.packed) is peer
        assert table.lookup(net6.network_address.packed) is peer
