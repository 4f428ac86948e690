"""IP fragmentation: datagrams joined from fragments, and cut into them.

A peer's kernel fragments what does not fit its path MTU: a UDP datagram
larger than the tunnel MTU (a large DNS answer, a syslog message), an ICMP
echo with a large payload (``ping -s 3000``). :class:`Reassembler` joins the
fragments of one IP version back into whole packets (RFC 791 3.2, RFC 815;
RFC 8200 4.5 and RFC 5722 for IPv6), and :func:`fragment` cuts a packet of
ours that exceeds the path MTU (RFC 791 3.2, RFC 8200 4.5), as a kernel's UDP
socket does by default.

What the reassembler does is Linux's (net/ipv4/inet_fragment.c,
ip_fragment.c, net/ipv6/reassembly.c):

- Fragments are matched by source, destination, Identification and (IPv4)
  protocol; a datagram waits at most 30 s (IPv4, Linux's ``ipfrag_time``)
  or 60 s (IPv6, RFC 8200 4.5 and Linux's ``IPV6_FRAG_TIMEOUT``) from its first
  fragment, and if its first fragment came, its sender gets a Time Exceeded
  (code 1, "fragment reassembly time exceeded").
- Fragments are held in runs: one that continues the last run joins it, any
  other starts a run. A fragment within one run is a duplicate and dropped
  alone; one that overlaps held data otherwise drops the whole datagram (RFC
  5722 4 with erratum 3089, which Linux applies to IPv4 as well); so does a
  last fragment that disagrees with the length known, data past a known end,
  or a fragment with no data. A datagram longer than 65,535 octets, or whose
  fragments mix Not-ECT with ECT or CE (RFC 3168 5.3), is dropped when it is
  complete; CE in any fragment is CE in the datagram.
- A datagram whose time is up is abandoned when the next fragment or timer
  call comes after its deadline, whichever is first.
- A fragment that is not the last carries a multiple of 8 octets: IPv4 data
  past one is cut off, as Linux does; an IPv6 one is refused with a
  Parameter Problem (RFC 8200 4.5), as is one that would make the datagram
  longer than 65,535 octets, or a first fragment that does not hold the whole
  header chain up to the upper-layer header (RFC 7112, code 3).
- Memory is bounded: every held fragment is charged its data (the first one
  also the start of its packet, kept for the header and the quote) and a
  fixed overhead against :data:`REASSEMBLY_MEMORY` per IP version (Linux's
  ``ipfrag_high_thresh``, 4 MiB), and a fragment that would go over it is
  dropped (a datagram already started included), as Linux's inet_frag_find
  refuses fragments over the threshold.

Each fragment costs a binary search over the runs of contiguous data held and
at most one copy of the datagram's data (at most 64 KiB), however many
fragments a sender cuts it into. Every drop is counted in
:class:`~wireguard.netstack.context.NetStackStats`.
"""

from __future__ import annotations

import bisect
import struct
from typing import Final

from ..ipheader import IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP
from .context import NetStackStats
from .icmp import is_icmp_error
from .ip import FragmentArrived, checksum

__all__ = [
    "IPV4_REASSEMBLY_TIMEOUT",
    "IPV6_REASSEMBLY_TIMEOUT",
    "REASSEMBLY_MEMORY",
    "FirstFragment",
    "Reassembler",
    "fragment",
    "ipv6_fragment_problem",
]

IPV4_REASSEMBLY_TIMEOUT: Final = 30.0  # Linux's ipfrag_time (IP_FRAG_TIME)
IPV6_REASSEMBLY_TIMEOUT: Final = 60.0  # RFC 8200 4.5; Linux's IPV6_FRAG_TIMEOUT
REASSEMBLY_MEMORY: Final = 4 * 1024 * 1024  # Linux's ipfrag_high_thresh default

# What a held fragment and a datagram under reassembly are charged beyond
# their data (the objects that hold them; Linux charges an skb's truesize),
# so that many tiny fragments cannot hold more than the budget says.
# Measured with tracemalloc (tests/netstack/test_netstack_fragments_linux.py):
# a datagram's objects (its queue entry, key, runs and first fragment's
# record) take about 750 octets besides the data.
FRAGMENT_OVERHEAD: Final = 64
DATAGRAM_OVERHEAD: Final = 768
_FIRST_KEPT: Final = 1280  # what of a first fragment is kept: the most an error quotes

_IPV4_MAX: Final = 65535  # total length, header included (RFC 791)
_IPV6_MAX_PAYLOAD: Final = 65535  # payload length without a jumbogram (RFC 8200 4.5)

# The fixed part of an upper-layer header a first fragment must hold (RFC
# 7112; Linux's ipv6_frag_thdr_truncated): TCP's 20 octets, UDP's and
# ICMPv6's 8, one of anything else.
_UPPER_HEADER: Final = {IPPROTO_TCP: 20, IPPROTO_UDP: 8, IPPROTO_ICMPV6: 8}
_IPV6_NO_NEXT_HEADER: Final = 59
_IPV6_AH: Final = 51
_IPV6_OPTIONS_OR_ROUTING: Final = frozenset({0, 43, 60})

# RFC 3168 5.3 / Linux's IPFRAG_ECN_*: a bit per ECN codepoint seen.
_ECN_NOT_ECT: Final = 1 << 0
_ECN_CE: Final = 1 << 3


class FirstFragment:
    """What is kept of a datagram's fragment at offset 0: the start of its
    packet (never link padding) and where its parts are (see
    :class:`~wireguard.netstack.ip.FragmentArrived`), for the joined
    header and a Time Exceeded's quote."""

    __slots__ = ("data", "dst", "header_end", "named_at", "packet", "proto", "src", "version")

    def __init__(self, frag: FragmentArrived) -> None:
        # Its header and what a Time Exceeded quotes (at most 1,280 octets).
        self.packet = frag.packet[: max(frag.header_end, min(frag.end, _FIRST_KEPT))]
        self.version = frag.version
        self.src = frag.src
        self.dst = frag.dst
        self.proto = frag.proto
        self.header_end = frag.header_end
        self.data = frag.data
        self.named_at = frag.named_at

    def quotes_icmp_error(self) -> bool:
        """Whether the datagram is an ICMP or ICMPv6 error message, about
        which no error is sent (RFC 1122 3.2.2, RFC 4443 2.4(e.1)); IPv6
        extension headers after the Fragment header are walked to find out,
        as Linux's is_ineligible does."""
        return quotes_icmp_error(self.version, self.packet, self.proto, self.data, len(self.packet))


def quotes_icmp_error(version: int, packet: bytes, proto: int, off: int, end: int) -> bool:
    """Whether the upper layer that starts, after any IPv6 extension
    headers, at *off* with protocol *proto* is an ICMP error message."""
    if version == 6:
        upper = _upper_layer(packet, proto, off, end)
        if upper is None:
            return False
        proto, off = upper
    return is_icmp_error(version, proto, packet[off : off + 1])


class _Datagram:
    """One datagram under reassembly: the runs of data it holds, as Linux's
    (inet_frag_queue_insert): a fragment that continues the last run joins
    it, any other starts a run of its own, and a fragment is a duplicate only
    if it lies within one run."""

    __slots__ = ("charged", "deadline", "ecn", "end", "first", "received", "runs", "starts")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.starts: list[int] = []  # where each run begins, ascending
        self.runs: list[bytearray] = []  # the data of each run
        self.received = 0  # octets held (runs never overlap)
        self.end: int | None = None  # the datagram's length, once its last fragment came
        self.first: FirstFragment | None = None  # once the fragment at offset 0 came
        self.charged = DATAGRAM_OVERHEAD
        self.ecn = 0  # one bit per ECN codepoint seen (Linux's IPFRAG_ECN_*)


class Reassembler:
    """The fragments of one IP version waiting for the rest of their datagram.

    :meth:`add` takes a fragment for one of our addresses and returns the
    whole packet once its last piece came (a packet :func:`~wireguard.netstack.
    ip.parse_ip` reads as if it had never been cut). :meth:`expire` abandons
    the datagrams whose time is up and returns the first fragments of those
    that had one, for the stack to answer with a Time Exceeded.
    """

    def __init__(
        self,
        version: int,
        stats: NetStackStats,
        *,
        timeout: float | None = None,
        memory: int = REASSEMBLY_MEMORY,
    ) -> None:
        if version not in (4, 6):
            raise ValueError(f"IP version {version}")
        self.version = version
        self.timeout = (
            timeout
            if timeout is not None
            else (IPV4_REASSEMBLY_TIMEOUT if version == 4 else IPV6_REASSEMBLY_TIMEOUT)
        )
        self.memory_limit = memory
        self.memory = 0  # charged now
        self._stats = stats
        # In the order the datagrams began, which is the order of their
        # deadlines (one timeout for all): the first one expires first.
        self._datagrams: dict[tuple[bytes, bytes, int, int], _Datagram] = {}

    def __len__(self) -> int:
        """Datagrams under reassembly."""
        return len(self._datagrams)

    def next_deadline(self) -> float | None:
        """When the oldest datagram under reassembly is abandoned, or None."""
        for d in self._datagrams.values():
            return d.deadline
        return None

    def expire(self, now: float) -> list[FirstFragment]:
        """Abandon the datagrams whose time is up at *now* (counted in
        ``reassembly_timeouts``); the first fragments of those that had one."""
        firsts: list[FirstFragment] = []
        datagrams = self._datagrams
        while datagrams:
            key = next(iter(datagrams))
            d = datagrams[key]
            if d.deadline > now:
                break
            self._drop(key)
            self._stats.reassembly_timeouts += 1
            if d.first is not None:
                firsts.append(d.first)
        return firsts

    def add(self, frag: FragmentArrived, now: float) -> bytes | None:
        """Take *frag*; the whole packet if it was the last piece missing."""
        stats = self._stats
        stats.fragments_received += 1
        version = self.version
        offset = frag.offset
        end = offset + frag.end - frag.data
        if frag.more:
            end &= ~7  # IPv4: data past a multiple of 8 is cut off (IPv6 refused it before)
        key = (frag.src, frag.dst, frag.ident, frag.proto if version == 4 else 0)
        d = self._datagrams.get(key)
        if d is not None and d.deadline <= now:
            # Its time is up, and the timer has not run yet (Linux's timer
            # would have killed the queue): abandoned, this one begins anew.
            self._drop(key)
            stats.reassembly_timeouts += 1
            d = None
        # IPv4 past 65,535 octets is refused only when joining, as Linux's
        # ip_frag_reasm; the datagram is held until then, or its time is up.
        # (IPv6 refused it with a Parameter Problem before, RFC 8200 4.5.)
        cost = end - offset + FRAGMENT_OVERHEAD
        if offset == 0:
            cost += max(frag.header_end, min(frag.end, _FIRST_KEPT))  # FirstFragment.packet
        if self.memory + cost + (0 if d is not None else DATAGRAM_OVERHEAD) > self.memory_limit:
            stats.fragments_memory_full += 1
            return None
        if d is None:
            d = self._datagrams[key] = _Datagram(now + self.timeout)
            self.memory += DATAGRAM_OVERHEAD
        if self._inconsistent(d, offset, end, frag.more):
            self._drop(key)
            stats.reassembly_failures += 1
            return None
        placed = self._place(d, offset, end, frag)
        if placed is None:
            self._drop(key)
            stats.reassembly_failures += 1  # an overlap (RFC 5722)
            return None
        if not placed:
            stats.fragments_duplicate += 1
            return None
        d.charged += cost
        self.memory += cost
        d.received += end - offset
        # RFC 3168 5.3: the ECN codepoint, IPv4's TOS or IPv6's traffic class.
        d.ecn |= 1 << ((frag.packet[1] if version == 4 else frag.packet[1] >> 4) & 3)
        if offset == 0:
            d.first = FirstFragment(frag)
        if d.end is None or d.first is None or d.received != d.end:
            return None
        self._drop(key)
        if d.first.header_end + d.end > (_IPV4_MAX if version == 4 else 40 + _IPV6_MAX_PAYLOAD):
            stats.reassembly_failures += 1  # longer than an IP packet can be ("oversized")
            return None
        if d.ecn & _ECN_NOT_ECT and d.ecn != _ECN_NOT_ECT:
            # RFC 3168 5.3: Not-ECT with ECT or CE fragments; Linux's
            # ip_frag_ecn_table says drop.
            stats.reassembly_failures += 1
            return None
        return self._join(d.first, d.runs, bool(d.ecn & _ECN_CE))

    @staticmethod
    def _inconsistent(d: _Datagram, offset: int, end: int, more: bool) -> bool:
        """Whether *frag* contradicts what the datagram's fragments said of
        its length (Linux's ip_frag_queue / ip6_frag_queue), recording the
        length a last fragment gives."""
        if end == offset:
            return True  # no data
        held_end = d.starts[-1] + len(d.runs[-1]) if d.runs else 0
        if not more:
            if end < held_end or (d.end is not None and end != d.end):
                return True
            d.end = end
        elif d.end is not None and end > d.end:
            return True
        return False

    @staticmethod
    def _place(d: _Datagram, offset: int, end: int, frag: FragmentArrived) -> bool | None:
        """Put the fragment's data in its run: True if placed, False if it
        is a duplicate of data held, None if it overlaps held data otherwise."""
        starts, runs = d.starts, d.runs
        i = bisect.bisect_right(starts, offset) - 1  # the run starting at or before offset
        if i >= 0:
            run_end = starts[i] + len(runs[i])
            if offset < run_end:
                return False if end <= run_end else None
        j = i + 1  # the run after it
        if j < len(starts) and end > starts[j]:
            return None
        data = frag.packet[frag.data : frag.data + end - offset]
        if j == len(starts) and i >= 0 and starts[i] + len(runs[i]) == offset:
            runs[i] += data  # continues the last run
        else:
            starts.insert(j, offset)
            runs.insert(j, bytearray(data))
        return True

    def _join(self, first: FirstFragment, runs: list[bytearray], ce: bool) -> bytes:
        """The whole packet: the first fragment's header, the data joined
        (CE set if a fragment had it, RFC 3168 5.3)."""
        head = bytearray(first.packet[: first.header_end])
        data = b"".join(runs)
        self._stats.datagrams_reassembled += 1
        if self.version == 4:
            if ce:
                head[1] |= 3
            total = len(head) + len(data)
            head[2:4] = total.to_bytes(2, "big")
            head[6:8] = b"\x00\x00"  # no fragment: flags and offset clear (RFC 791 3.2)
            head[10:12] = b"\x00\x00"
            head[10:12] = checksum(head).to_bytes(2, "big")
        else:
            # RFC 8200 4.5: the Next Header field that named the Fragment
            # header names what it carried; the payload length covers the
            # extension headers before it and the data.
            if ce:
                head[1] |= 0x30
            head[first.named_at] = first.proto
            head[4:6] = (len(head) - 40 + len(data)).to_bytes(2, "big")
        return bytes(head) + data

    def _drop(self, key: tuple[bytes, bytes, int, int]) -> None:
        d = self._datagrams.pop(key)
        self.memory -= d.charged


def ipv6_fragment_problem(frag: FragmentArrived) -> tuple[int, int] | None:
    """The Parameter Problem (code, pointer) RFC 8200 4.5 asks for an IPv6
    fragment to be refused with, or None if reassembly may take it, checked
    in Linux's order (ipv6_frag_rcv, then ip6_frag_queue): a first fragment
    that does not hold the header chain up to the upper-layer header (RFC
    7112, code 3, pointer 0), one that would make the datagram longer than
    65,535 octets (code 0, at its fragment offset), one not the last whose
    data is not a multiple of 8 octets (code 0, at the payload length)."""
    length = frag.end - frag.data
    if frag.offset == 0 and _upper_layer(frag.packet, frag.proto, frag.data, frag.end) is None:
        return 3, 0
    if frag.offset + length > _IPV6_MAX_PAYLOAD:
        return 0, frag.header_end + 2
    if frag.more and length & 7:
        return 0, 4
    return None


def _upper_layer(packet: bytes, nxt: int, off: int, end: int) -> tuple[int, int] | None:
    """The upper-layer protocol and its offset, past the IPv6 extension
    headers from *off* (protocol *nxt*) to *end*, or None if the chain up to
    the upper-layer header's fixed part does not fit (RFC 7112)."""
    for _ in range(16):  # more headers than parse_ip walks: refused after joining anyway
        if nxt in _IPV6_OPTIONS_OR_ROUTING or nxt == _IPV6_AH:
            if off + 2 > end:
                return None
            length = (packet[off + 1] + 2) * 4 if nxt == _IPV6_AH else (packet[off + 1] + 1) * 8
            nxt = packet[off]
            off += length
            if off > end:
                return None
            continue
        if nxt != _IPV6_NO_NEXT_HEADER and off + _UPPER_HEADER.get(nxt, 1) > end:
            return None
        return nxt, off
    return nxt, off


_FRAGMENT_HEADER: Final = struct.Struct("!BBHI")


def fragment(packet: bytes, mtu: int, ident: int) -> list[bytes]:
    """*packet*, one of ours with no IPv4 options or IPv6 extension headers,
    cut into fragments of at most *mtu* octets with Identification *ident*
    (16 bits for IPv4, 32 for IPv6); every fragment's data but the last's is
    a multiple of 8 octets (RFC 791 3.2, RFC 8200 4.5). IPv4 fragments have
    DF clear."""
    if packet[0] >> 4 == 4:
        header, data = packet[:20], packet[20:]
        step = (mtu - 20) & ~7
        out = []
        fixed = bytearray(header)
        fixed[4:6] = ident.to_bytes(2, "big")
        for start in range(0, len(data), step):
            chunk = data[start : start + step]
            more = start + step < len(data)
            h = bytearray(fixed)
            h[2:4] = (20 + len(chunk)).to_bytes(2, "big")
            h[6:8] = ((0x2000 if more else 0) | (start >> 3)).to_bytes(2, "big")
            h[10:12] = b"\x00\x00"
            h[10:12] = checksum(h).to_bytes(2, "big")
            out.append(bytes(h) + chunk)
        return out
    header, data = packet[:40], packet[40:]
    step = (mtu - 48) & ~7
    proto = header[6]
    fixed = bytearray(header)
    fixed[6] = 44  # Next Header: a Fragment header
    out = []
    for start in range(0, len(data), step):
        chunk = data[start : start + step]
        more = start + step < len(data)
        h = bytearray(fixed)
        h[4:6] = (8 + len(chunk)).to_bytes(2, "big")
        out.append(bytes(h) + _FRAGMENT_HEADER.pack(proto, 0, start | more, ident) + chunk)
    return out
