"""Cryptokey routing: the allowed-IPs table (whitepaper section 2).

Every peer owns a set of IP prefixes. Sending, the destination address of a
packet from the tunnel picks the peer by longest-prefix match; receiving, a
decrypted packet is only let in if its source address maps back to the peer it
came from. The kernel keeps this as a compressed binary trie
(``drivers/net/wireguard/allowedips.c``); here it is one dict per prefix length
and address family, keyed by the network part of the address as an int, probed
from the longest length present to the shortest. In Python a handful of dict
probes is much faster than walking a trie bit by bit, and it only costs one
dict slot and one int per prefix.

Semantics follow the kernel and ``wg``:

- host bits are masked off on insert (``10.0.0.1/24`` is stored as
  ``10.0.0.0/24``), as ``wg_allowedips_insert_v4`` does;
- a prefix belongs to exactly one peer: inserting it for another peer moves it,
  and inserting it again moves it to the end of its peer's list;
- IPv4 and IPv6 are separate tables: ``::ffff:10.0.0.1`` is an IPv6 address and
  never matches ``10.0.0.0/8`` (an IPv6 packet is routed by its IPv6 header);
- values are compared by identity (``is``), never with ``==``, so a peer type
  with its own equality cannot make one peer's removal drop another's routes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Generic, TypeVar

from .errors import AddressFormatError, LocalProtocolError

__all__ = ["AddressFormatError", "AllowedIPs", "Network"]

V = TypeVar("V")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# Each prefix is also remembered per value, as one int, its tag: the table key
# shifted left by 8 bits, or'ed with a small int naming the family and length
# (v4: code = prefix length 0..32; v6: code = 33 + prefix length, 33..161).
# A value with one prefix (a server's client, most of the time) keeps just
# that tag; with more, a dict of tags (to None), which is ordered and moves
# a tag to its end in O(1): a peer with 100,000 prefixes is re-given one as
# cheaply as a peer with one.
_V6_CODE = 33
_CODE_BITS = 8
_CODE_MASK = (1 << _CODE_BITS) - 1
_MISS = object()
_CACHE_MAX = 4096

Tags = int | dict[int, None]


class _Family:
    """The tables of one address family."""

    __slots__ = ("bits", "scan", "tables")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        # prefix length -> {network part of the address: value}
        self.tables: dict[int, dict[int, object]] = {}
        # (shift, table) from the longest prefix length present to the shortest:
        # the hot path iterates this tuple and nothing else.
        self.scan: tuple[tuple[int, dict[int, object]], ...] = ()

    def rescan(self) -> None:
        bits = self.bits
        self.scan = tuple(
            (bits - length, self.tables[length]) for length in sorted(self.tables, reverse=True)
        )


class AllowedIPs(Generic[V]):
    """Longest-prefix-match table from IPv4/IPv6 prefixes to values (peers).

    ``lookup`` takes the 4 or 16 raw address bytes straight out of an IP header;
    that is the per-packet path and is kept short. Everything else (insert,
    remove, listing) is configuration time.
    """

    __slots__ = ("_by_value", "_cache", "_count", "_v4", "_v6")

    def __init__(self) -> None:
        self._v4 = _Family(32)
        self._v6 = _Family(128)
        # id(value) -> its tags (see above), in insertion order. A value is
        # here only while it has a prefix, so the tables hold it, and its id
        # cannot be reused while it is here.
        self._by_value: dict[int, Tags] = {}
        self._count = 0
        # address bytes -> result: a flow sends many packets to one address, so
        # most lookups are one dict probe. Any change to the table clears it.
        self._cache: dict[bytes, V | None] = {}

    # -- per packet -----------------------------------------------------------

    def lookup(self, address: bytes | str | IPAddress) -> V | None:
        """The value whose prefix is the longest match for ``address``, or None.

        ``address`` is normally the destination (sending) or source (receiving)
        address as 4 or 16 bytes, in network order; text and ``ipaddress``
        objects are accepted too.
        """
        if address.__class__ is bytes:
            cache = self._cache
            hit = cache.get(address, _MISS)
            if hit is not _MISS:
                return hit  # type: ignore[return-value]
            size = len(address)
            if size == 4:
                scan = self._v4.scan
            elif size == 16:
                scan = self._v6.scan
            else:
                raise AddressFormatError(f"an address is 4 or 16 bytes, got {size}")
            number = int.from_bytes(address)
            found = None
            for shift, table in scan:
                found = table.get(number >> shift)
                if found is not None:
                    break
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            cache[address] = found  # type: ignore[assignment]
            return found  # type: ignore[return-value]
        family, number = self._parse_address(address)
        for shift, table in family.scan:
            value = table.get(number >> shift)
            if value is not None:
                return value  # type: ignore[return-value]
        return None

    # -- configuration ----------------------------------------------------------

    def insert(self, network: str | Network, value: V) -> None:
        """Route ``network`` to ``value``, taking it from any other value.

        Host bits are masked off, as the kernel does (``10.0.0.1/24`` becomes
        ``10.0.0.0/24``). A prefix inserted again, for its own value or
        another, goes to the end of that value's :meth:`entries_for`, as the
        kernel's ``list_move_tail`` in allowedips.c and wireguard-go's
        ``insert`` do.
        """
        family, length, key, code = self._parse_network(network)
        self._insert(family, length, key, code, value)

    def insert_packed(self, address: bytes, length: int, value: V) -> None:
        """:meth:`insert` of the prefix ``address/length``, the address as its
        4 or 16 bytes (what ``socket.inet_pton`` gives): the fast way for a
        caller that parsed the prefix itself (the UAPI's ``allowed_ip=``)."""
        family, length, key, code = self._packed(address, length)
        self._insert(family, length, key, code, value)

    def _insert(self, family: _Family, length: int, key: int, code: int, value: V) -> None:
        if value is None:
            raise LocalProtocolError("None cannot be routed to: it means 'no match'")
        self._cache.clear()
        table = family.tables.get(length)
        if table is None:
            table = family.tables[length] = {}
            family.rescan()
        tag = key << _CODE_BITS | code
        old = table.get(key)
        table[key] = value
        by_value = self._by_value
        if old is None:
            self._count += 1
        elif old is not value:
            self._forget(old, tag)
        else:
            # Its own prefix again: to the end of its list.
            tags = by_value[id(value)]
            if tags.__class__ is dict:
                del tags[tag]
                tags[tag] = None
            return
        held = by_value.get(id(value))
        if held is None:
            by_value[id(value)] = tag
        elif held.__class__ is dict:
            held[tag] = None
        else:
            by_value[id(value)] = {held: None, tag: None}  # type: ignore[dict-item]

    def remove(self, network: str | Network, value: V | None = None) -> bool:
        """Remove the exact prefix ``network`` (host bits masked off).

        With ``value``, only if the prefix currently belongs to that value, as
        ``wg set ... allowed-ips -10.0.0.0/24`` removes a prefix from one peer
        only. Returns whether something was removed.
        """
        return self._remove(*self._parse_network(network), value)

    def remove_packed(self, address: bytes, length: int, value: V | None = None) -> bool:
        """:meth:`remove` of the prefix ``address/length`` given as for
        :meth:`insert_packed`."""
        return self._remove(*self._packed(address, length), value)

    def _remove(self, family: _Family, length: int, key: int, code: int, value: V | None) -> bool:
        self._cache.clear()
        table = family.tables.get(length)
        if table is None:
            return False
        old = table.get(key)
        if old is None or (value is not None and old is not value):
            return False
        del table[key]
        if not table:
            del family.tables[length]
            family.rescan()
        self._forget(old, key << _CODE_BITS | code)
        self._count -= 1
        return True

    def remove_value(self, value: V) -> int:
        """Remove every prefix of ``value`` (a peer being removed, or its
        allowed IPs being replaced). Returns how many were removed."""
        tags = self._by_value.pop(id(value), None)
        if tags is None:
            return 0
        self._cache.clear()
        if tags.__class__ is int:
            tags = (tags,)  # type: ignore[assignment]
        v4, v6 = self._v4, self._v6
        for tag in tags:  # type: ignore[union-attr]
            code = tag & _CODE_MASK
            family, length = (v4, code) if code < _V6_CODE else (v6, code - _V6_CODE)
            table = family.tables[length]
            del table[tag >> _CODE_BITS]
            if not table:
                del family.tables[length]
                family.rescan()
        removed = len(tags)  # type: ignore[arg-type]
        self._count -= removed
        return removed

    def clear(self) -> None:
        """Remove every prefix."""
        self._v4 = _Family(32)
        self._v6 = _Family(128)
        self._by_value.clear()
        self._count = 0
        self._cache.clear()

    # -- listing ---------------------------------------------------------------

    def entries_for(self, value: V) -> list[Network]:
        """The prefixes of ``value``, in the order they were given to it (what
        ``wg show allowed-ips`` and the UAPI ``get=1`` list for a peer)."""
        return list(self.iter_entries_for(value))

    def iter_entries_for(self, value: V) -> Iterator[Network]:
        """:meth:`entries_for` one prefix at a time, from a copy of the list
        taken when iteration starts: a listing of a value with very many
        prefixes can be handed out in slices, each slice making only its own
        objects."""
        network = self._network
        for bits, number, length in self.iter_packed_for(value):
            yield network(bits, number, length)

    def iter_packed_for(self, value: V) -> Iterator[tuple[int, int, int]]:
        """:meth:`iter_entries_for` as (32 or 128, the network address as an
        int, prefix length) triples, without making ``ipaddress`` objects."""
        tags = self._by_value.get(id(value))
        if tags is None:
            return
        for tag in (tags,) if tags.__class__ is int else list(tags):  # type: ignore[arg-type]
            code = tag & _CODE_MASK
            key = tag >> _CODE_BITS
            if code < _V6_CODE:
                yield 32, key << (32 - code), code
            else:
                length = code - _V6_CODE
                yield 128, key << (128 - length), length

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[tuple[Network, V]]:
        """Every (prefix, value), grouped by value in the order values first got
        a prefix, each value's prefixes as in :meth:`entries_for`."""
        for tags in list(self._by_value.values()):
            first = tags if isinstance(tags, int) else next(iter(tags))
            value = self._owner(first)
            for net in self.iter_entries_for(value):
                yield net, value

    def __repr__(self) -> str:
        return f"<AllowedIPs {self._count} prefixes, {len(self._by_value)} values>"

    # -- helpers -----------------------------------------------------------------

    def _forget(self, value: object, tag: int) -> None:
        """Drop *tag* from ``value``'s prefixes."""
        by_value = self._by_value
        tags = by_value[id(value)]
        if tags.__class__ is int:
            del by_value[id(value)]
            return
        del tags[tag]  # type: ignore[union-attr]
        if not tags:
            del by_value[id(value)]

    def _owner(self, tag: int) -> V:
        """The value that has the prefix *tag*."""
        code = tag & _CODE_MASK
        family, length = (self._v4, code) if code < _V6_CODE else (self._v6, code - _V6_CODE)
        return family.tables[length][tag >> _CODE_BITS]  # type: ignore[return-value]

    @staticmethod
    def _network(bits: int, number: int, length: int) -> Network:
        if bits == 32:
            return ipaddress.IPv4Network((number, length))
        return ipaddress.IPv6Network((number, length))

    def _packed(self, address: bytes, length: int) -> tuple[_Family, int, int, int]:
        """(family, prefix length, table key, code) for ``address/length``."""
        size = len(address)
        if size == 4:
            family, code_base = self._v4, 0
        elif size == 16:
            family, code_base = self._v6, _V6_CODE
        else:
            raise AddressFormatError(f"an address is 4 or 16 bytes, got {size}")
        bits = family.bits
        if length.__class__ is not int or not 0 <= length <= bits:
            raise AddressFormatError(f"bad prefix length for a {bits}-bit address: {length!r}")
        return family, length, int.from_bytes(address) >> (bits - length), code_base + length

    def _parse_network(self, network: str | Network) -> tuple[_Family, int, int, int]:
        """(family, prefix length, table key, code) for a prefix."""
        if isinstance(network, str):
            try:
                network = ipaddress.ip_network(network.strip(), strict=False)
            except ValueError as exc:
                raise AddressFormatError(f"not an IP prefix: {network!r}") from exc
        if isinstance(network, ipaddress.IPv4Network):
            family, code_base = self._v4, 0
        elif isinstance(network, ipaddress.IPv6Network):
            family, code_base = self._v6, _V6_CODE
        else:
            raise AddressFormatError(
                f"a prefix is a string or an ipaddress network, got {type(network).__name__}"
            )
        length = network.prefixlen
        # The network address of an IPvXNetwork is already masked; shifting
        # keeps only the network part, which is also the table key.
        key = int(network.network_address) >> (family.bits - length)
        return family, length, key, code_base + length

    def _parse_address(self, address: object) -> tuple[_Family, int]:
        if isinstance(address, (bytes, bytearray, memoryview)):
            size = len(address)
            if size == 4:
                return self._v4, int.from_bytes(address)
            if size == 16:
                return self._v6, int.from_bytes(address)
            raise AddressFormatError(f"an address is 4 or 16 bytes, got {size}")
        if isinstance(address, str):
            try:
                address = ipaddress.ip_address(address.strip())
            except ValueError as exc:
                raise AddressFormatError(f"not an IP address: {address!r}") from exc
        if isinstance(address, ipaddress.IPv4Address):
            return self._v4, int(address)
        if isinstance(address, ipaddress.IPv6Address):
            return self._v6, int(address)
        raise AddressFormatError(
            f"an address is bytes, a string or an ipaddress address, got {type(address).__name__}"
        )
