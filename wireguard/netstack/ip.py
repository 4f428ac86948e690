"""IPv4 and IPv6 headers: parse, build, and the Internet checksum.

Fields are read at the offsets :mod:`wireguard.ipheader` names for every
module that reads IP headers; the protocol numbers are its too.

The tunnel hands us whole IP packets (there is no link layer under WireGuard),
so this is the bottom of the stack. Addresses are kept as raw ``bytes`` (4 or 16
of them) on the hot path: building :mod:`ipaddress` objects per packet would
cost more than the rest of the header work; the socket API converts at its edge.

Checksums (RFC 1071) use one observation: the ones'-complement sum of 16-bit
words is the value of the big-endian integer modulo 0xFFFF (because
2**16 == 1 mod 0xFFFF), up to the +0/-0 ambiguity. So a whole segment is summed
by one ``int.from_bytes`` and one ``%``, both in C, with no per-word Python loop.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

from ..errors import RemoteProtocolError
from ..ipheader import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV4_DST,
    IPV4_FLAGS_FRAGMENT,
    IPV4_HEADER_LEN,
    IPV4_PROTOCOL,
    IPV4_SRC,
    IPV4_TOTAL_LENGTH,
    IPV6_DST,
    IPV6_HEADER_LEN,
    IPV6_NEXT_HEADER,
    IPV6_PAYLOAD_LENGTH,
    IPV6_SRC,
)

__all__ = [
    "IPPROTO_ICMP",
    "IPPROTO_ICMPV6",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "PARAM_PROBLEM_HEADER_FIELD",
    "PARAM_PROBLEM_NEXT_HEADER",
    "PARAM_PROBLEM_UNRECOGNISED_OPTION",
    "ExtensionHeaderDiscard",
    "FragmentArrived",
    "IPPacket",
    "MalformedPacketError",
    "NetstackError",
    "addr_bytes",
    "addr_str",
    "build_ip",
    "build_ipv4",
    "build_ipv6",
    "checksum",
    "header_template",
    "ipv6_upper_layer_pointer",
    "parse_ip",
    "pseudo_header_sum",
    "verify_checksum",
]

# RFC 8200 section 4: extension headers that may precede the upper layer and that
# we walk. A Fragment header (44) is walked only in an atomic fragment (offset
# 0, M 0), which RFC 6946 section 4 says to process as a whole packet; at a
# real fragment the walk stops and the fragment goes to reassembly.
_IPV6_HOP_BY_HOP: Final = 0
_IPV6_ROUTING: Final = 43
_IPV6_FRAGMENT: Final = 44
_IPV6_EXT_SKIPPABLE: Final = frozenset({_IPV6_HOP_BY_HOP, _IPV6_ROUTING, _IPV6_FRAGMENT, 60})
_IPV6_NO_NEXT_HEADER: Final = 59
_IPV6_FRAGMENT_HEADER_LEN: Final = 8  # fixed: its second octet is reserved, not a length

# Source addresses no single host has, dropped on receipt as RFC 1122 3.2.1.3
# says (a host MUST silently discard them) and as Linux does: IPv4 multicast,
# limited broadcast, 0/8 and loopback (net/ipv4/route.c ip_route_input_slow,
# "martian source"); IPv6 multicast (RFC 4291 2.7) and loopback (RFC 4291
# 2.5.3), both dropped by net/ipv6/ip6_input.c ip6_rcv_core. Anything sent
# back to such a source (an echo reply, a SYN-ACK, a RST) would go to a group,
# to every host, or to the receiver itself.
_IPV4_LIMITED_BROADCAST: Final = b"\xff\xff\xff\xff"
_IPV6_LOOPBACK: Final = bytes(15) + b"\x01"

# Bounds on the work an extension-header chain costs, Linux's (include/net/ipv6.h):
# IP6_MAX_EXT_HDRS_CNT, headers walked per packet; IP6_DEFAULT_MAX_HBH_OPTS_CNT and
# IP6_DEFAULT_MAX_DST_OPTS_CNT, non-padding options per header. Padding runs of
# more than 7 octets are refused as in Linux's ip6_parse_tlv (RFC 4942 2.1.9.5:
# padding only aligns, 7 octets at most).
_IPV6_MAX_EXT_HEADERS: Final = 12
_IPV6_MAX_OPTIONS: Final = 8
_IPV6_MAX_PADDING: Final = 7

# RFC 791 3.1: IPv4 options, End of Option List and No Operation one octet
# each; Loose (131) and Strict (137) Source and Record Route.
_IPOPT_END: Final = 0
_IPOPT_NOOP: Final = 1
_IPOPT_SOURCE_ROUTES: Final = frozenset({131, 137})

# RFC 4443 section 3.4: Parameter Problem codes.
PARAM_PROBLEM_HEADER_FIELD: Final = 0
PARAM_PROBLEM_NEXT_HEADER: Final = 1
PARAM_PROBLEM_UNRECOGNISED_OPTION: Final = 2

DEFAULT_TTL: Final = 64  # RFC 1700 / Linux default for both TTL and hop limit


class NetstackError(RemoteProtocolError):
    """A packet out of the tunnel cannot be accepted by the network stack."""


class MalformedPacketError(NetstackError):
    """Truncated, inconsistent lengths, bad checksum, unsupported version or
    fragment, IPv4 options that do not parse or route by source, or a source
    address no single host has."""


class FragmentArrived(NetstackError):
    """Not an error: *packet* is a fragment (RFC 791 2.3, RFC 8200 4.5), which
    :func:`parse_ip` does not take apart; the stack hands it to reassembly
    (:mod:`wireguard.netstack.fragment`) with what its header says.

    *ident* is the Identification (16 bits in IPv4, 32 in IPv6), *offset* the
    fragment's place in the datagram in octets, *more* its MF / M flag.
    *header_end* is where the part every fragment repeats ends (the IPv4
    header with its options; the IPv6 header and the extension headers before
    the Fragment header), *data* and *end* where this fragment's share of the
    datagram starts and ends in *packet*, *proto* the protocol it carries.
    For IPv6, *named_at* is the offset of the Next Header field that names the
    Fragment header (rewritten when the fragments are joined), else 0.
    """

    def __init__(
        self,
        packet: bytes,
        *,
        version: int,
        src: bytes,
        dst: bytes,
        proto: int,
        ident: int,
        offset: int,
        more: bool,
        header_end: int,
        data: int,
        end: int,
        named_at: int = 0,
    ) -> None:
        super().__init__("IP fragment")
        self.packet = packet
        self.version = version
        self.src = src
        self.dst = dst
        self.proto = proto
        self.ident = ident
        self.offset = offset
        self.more = more
        self.header_end = header_end
        self.data = data
        self.end = end
        self.named_at = named_at


class ExtensionHeaderDiscard(NetstackError):
    """An IPv6 packet its extension headers say to discard (RFC 8200 4.2, 4.4;
    section 4: a Hop-by-Hop Options header anywhere but first).

    *code* and *pointer* (the offset in the packet of the octet at fault) are
    those of the ICMPv6 Parameter Problem (RFC 4443 3.4) RFC 8200 asks for when
    *report* is true. *proto* and *upper* are the upper-layer protocol and its
    offset, *end* the end of the packet by its payload length: RFC 4443 2.4(e.1)
    forbids an error about an ICMPv6 error message.
    """

    def __init__(
        self,
        reason: str,
        src: bytes,
        dst: bytes,
        *,
        code: int,
        pointer: int,
        report: bool,
        proto: int,
        upper: int,
        end: int,
    ) -> None:
        super().__init__(reason)
        self.src = src
        self.dst = dst
        self.code = code
        self.pointer = pointer
        self.report = report
        self.proto = proto
        self.upper = upper
        self.end = end


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The Internet checksum (RFC 1071) of *data*, with *initial* already summed in.

    *initial* is any non-negative integer congruent to a partial sum (for example
    :func:`pseudo_header_sum`). The result is in 1..0xFFFF: a computed 0 is sent as
    0xFFFF, which is the same value in ones' complement and is what UDP requires
    (RFC 768: a transmitted 0 means "no checksum").
    """
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8  # pad with one zero byte at the end (RFC 1071 section 4.1)
    return 0xFFFF - ((value + initial) % 0xFFFF)


def verify_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> bool:
    """True if *data* (checksum field included) sums to ones'-complement zero."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    return (value + initial) % 0xFFFF == 0


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """The partial sum of the TCP/UDP/ICMPv6 pseudo-header.

    RFC 9293 section 3.1 (IPv4: src, dst, zero, protocol, TCP length) and RFC 8200
    section 8.1 (IPv6: src, dst, 32-bit length, 24 zero bits, next header). Both
    add up to the same words: the addresses, the protocol and the length.
    """
    return int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto + length


class IPPacket:
    """One parsed IP packet. *payload* is the upper-layer bytes (exact length)."""

    __slots__ = ("dst", "payload", "proto", "src", "version")

    def __init__(self, version: int, src: bytes, dst: bytes, proto: int, payload: bytes) -> None:
        self.version = version
        self.src = src
        self.dst = dst
        self.proto = proto
        self.payload = payload

    def __repr__(self) -> str:
        return (
            f"IPPacket(v{self.version}, proto={self.proto}, "
            f"{self.src.hex()}->{self.dst.hex()}, {len(self.payload)} bytes)"
        )


def parse_ip(packet: bytes, reassembled: bool = False) -> IPPacket:
    """Parse an IPv4 or IPv6 packet; raise :class:`MalformedPacketError` if it is not one.

    Trailing bytes beyond the length in the header are ignored (RFC 1122 3.2.1.2
    permits link padding). A fragment raises :class:`FragmentArrived` for
    the stack to reassemble; an IPv6 atomic fragment (offset 0, M 0) is no
    fragment and is accepted (RFC 6946). A source address no single host
    has (multicast, broadcast, loopback, 0/8) is refused, as Linux refuses
    martian sources, and so are IPv4 options that do not parse or carry a
    source route. An IPv6 packet whose Routing header or options say to
    discard it, or whose Hop-by-Hop Options header is not first, raises
    :class:`ExtensionHeaderDiscard`, and so does a Fragment header after
    another (RFC 8200 4.1; Linux's ipv6_frag_rcv refuses one with a
    Parameter Problem), *reassembled* saying the packet was joined from
    fragments already.
    """
    if not packet:
        raise MalformedPacketError("empty packet")
    version = packet[0] >> 4
    if version == 4:
        return _parse_ipv4(packet)
    if version == 6:
        return _parse_ipv6(packet, reassembled)
    raise MalformedPacketError(f"unsupported IP version {version}")


def _parse_ipv4(packet: bytes) -> IPPacket:
    # RFC 791 section 3.1; the offsets are ipheader's.
    n = len(packet)
    if n < IPV4_HEADER_LEN:
        raise MalformedPacketError("IPv4 header truncated")
    ihl = (packet[0] & 0x0F) * 4
    if ihl < IPV4_HEADER_LEN:
        raise MalformedPacketError("IPv4 IHL below 5")
    total = (packet[IPV4_TOTAL_LENGTH] << 8) | packet[IPV4_TOTAL_LENGTH + 1]
    if total < ihl or total > n:
        raise MalformedPacketError("IPv4 total length inconsistent")
    if int.from_bytes(packet[:ihl], "big") % 0xFFFF != 0:
        raise MalformedPacketError("IPv4 header checksum mismatch")
    if ihl > IPV4_HEADER_LEN:  # rare: the fast path has no options
        _check_ipv4_options(packet, ihl)
    src = packet[IPV4_SRC]
    first = src[0]
    if first == 0 or first == 127 or 224 <= first < 240 or src == _IPV4_LIMITED_BROADCAST:
        raise MalformedPacketError("IPv4 source address is not a single host's")
    if (packet[IPV4_FLAGS_FRAGMENT] & 0x3F) | packet[IPV4_FLAGS_FRAGMENT + 1]:  # MF, or an offset
        flags = (packet[IPV4_FLAGS_FRAGMENT] << 8) | packet[IPV4_FLAGS_FRAGMENT + 1]
        raise FragmentArrived(
            packet,
            version=4,
            src=src,
            dst=packet[IPV4_DST],
            proto=packet[IPV4_PROTOCOL],
            ident=(packet[4] << 8) | packet[5],
            offset=(flags & 0x1FFF) * 8,
            more=bool(flags & 0x2000),
            header_end=ihl,
            data=ihl,
            end=total,
        )
    return IPPacket(4, src, packet[IPV4_DST], packet[IPV4_PROTOCOL], packet[ihl:total])


def _check_ipv4_options(packet: bytes, ihl: int) -> None:
    """Refuse an IPv4 header whose options (RFC 791 3.1) do not parse, or
    that carries a source route, as Linux does: ip_options_compile fails on
    a length below 2 or past the header, and ip_rcv_options drops a source
    route with accept_source_route off, its default on a host (RFC 7126 4.3
    and 4.4 advise the same). Other options are ignored."""
    pos = IPV4_HEADER_LEN
    while pos < ihl:
        kind = packet[pos]
        if kind == _IPOPT_END:
            return  # the rest of the header is padding
        if kind == _IPOPT_NOOP:
            pos += 1
            continue
        if pos + 2 > ihl:
            raise MalformedPacketError("IPv4 option truncated")
        length = packet[pos + 1]
        if length < 2 or pos + length > ihl:
            raise MalformedPacketError("IPv4 option length invalid")
        if kind in _IPOPT_SOURCE_ROUTES:
            raise MalformedPacketError("IPv4 source-routed packet")
        pos += length


def _parse_ipv6(packet: bytes, reassembled: bool = False) -> IPPacket:
    # RFC 8200 section 3; the offsets are ipheader's.
    if len(packet) < IPV6_HEADER_LEN:
        raise MalformedPacketError("IPv6 header truncated")
    plen = (packet[IPV6_PAYLOAD_LENGTH] << 8) | packet[IPV6_PAYLOAD_LENGTH + 1]
    end = IPV6_HEADER_LEN + plen
    if plen == 0 or end > len(packet):
        # A zero payload length means a jumbogram (RFC 2675), never on a tunnel.
        raise MalformedPacketError("IPv6 payload length inconsistent")
    src = packet[IPV6_SRC]
    if src[0] == 0xFF or src == _IPV6_LOOPBACK:
        raise MalformedPacketError("IPv6 source address is not a single node's")
    nxt = packet[IPV6_NEXT_HEADER]
    off = IPV6_HEADER_LEN
    if nxt in _IPV6_EXT_SKIPPABLE:  # rare: the fast path does not walk
        nxt, off = _ipv6_extension_headers(packet, nxt, end, reassembled)
    if nxt == _IPV6_NO_NEXT_HEADER:
        raise MalformedPacketError("IPv6 packet without upper-layer header")
    return IPPacket(6, src, packet[IPV6_DST], nxt, packet[off:end])


def _ipv6_extension_headers(
    packet: bytes, nxt: int, end: int, fragmented: bool = False
) -> tuple[int, int]:
    """Walk the extension headers from the IPv6 header on: the upper-layer
    protocol and its offset, or :class:`ExtensionHeaderDiscard` if a header
    says to discard the packet (the walk goes on to find the upper layer),
    or :class:`FragmentArrived` at a Fragment header of a real fragment (the
    headers after it are the datagram's, read once it is whole)."""
    off = IPV6_HEADER_LEN
    named_at = IPV6_NEXT_HEADER  # the Next Header field that named the header at off
    discard: tuple[str, int, int, bool] | None = None  # reason, code, pointer, report
    count = 0
    while nxt in _IPV6_EXT_SKIPPABLE:
        count += 1
        if count > _IPV6_MAX_EXT_HEADERS:
            raise MalformedPacketError("too many IPv6 extension headers")
        if nxt == _IPV6_HOP_BY_HOP and off != IPV6_HEADER_LEN and discard is None:
            # RFC 8200 4.3: Hop-by-Hop Options only right after the IPv6 header;
            # section 4: a Next Header of zero anywhere else is unrecognised:
            # discard, Parameter Problem code 1 at that field (as Linux, which
            # has no handler for 0 past the IPv6 header: ICMPV6_UNK_NEXTHDR).
            discard = (
                "IPv6 hop-by-hop options header not first",
                PARAM_PROBLEM_NEXT_HEADER,
                named_at,
                True,
            )
        if off + 8 > end:
            raise MalformedPacketError("IPv6 extension header truncated")
        if nxt == _IPV6_FRAGMENT:
            if fragmented:
                # A second Fragment header, or one in a joined datagram:
                # Linux's ipv6_frag_rcv (IP6SKB_FRAGMENTED) answers a
                # Parameter Problem code 0 at it, and joins nothing again.
                if discard is None:
                    discard = (
                        "IPv6 fragment header after another",
                        PARAM_PROBLEM_HEADER_FIELD,
                        off,
                        True,
                    )
                break
            fragmented = True
            field = packet[off + 2] << 8 | packet[off + 3]
            if field & 0xFFF9:  # an offset, or M: a real fragment
                if discard is not None:
                    break  # a header before it said discard
                raise FragmentArrived(
                    packet,
                    version=6,
                    src=packet[IPV6_SRC],
                    dst=packet[IPV6_DST],
                    proto=packet[off],
                    ident=int.from_bytes(packet[off + 4 : off + 8], "big"),
                    offset=field & 0xFFF8,
                    more=bool(field & 1),
                    header_end=off,
                    data=off + _IPV6_FRAGMENT_HEADER_LEN,
                    end=end,
                    named_at=named_at,
                )
            named_at = off
            nxt = packet[off]
            off += _IPV6_FRAGMENT_HEADER_LEN
            continue
        named_at = off
        header_end = off + (packet[off + 1] + 1) * 8
        if header_end > end:
            raise MalformedPacketError("IPv6 extension header truncated")
        if discard is None:
            if nxt == _IPV6_ROUTING:
                # RFC 8200 4.4: Segments Left non-zero and a Routing Type the node
                # does not process: discard, Parameter Problem code 0 at the type.
                # A host that forwards nothing processes none (type 0 counts as
                # unrecognised, RFC 5095 3); with Segments Left 0 the header is
                # ignored.
                if packet[off + 3]:
                    discard = (
                        "IPv6 routing header with segments left",
                        PARAM_PROBLEM_HEADER_FIELD,
                        off + 2,
                        True,
                    )
            else:
                discard = _ipv6_options(packet, off + 2, header_end)
        nxt = packet[off]
        off = header_end
    if discard is not None:
        reason, code, pointer, report = discard
        raise ExtensionHeaderDiscard(
            reason,
            packet[IPV6_SRC],
            packet[IPV6_DST],
            code=code,
            pointer=pointer,
            report=report,
            proto=nxt,
            upper=off,
            end=end,
        )
    return nxt, off


def ipv6_upper_layer_pointer(packet: bytes) -> int:
    """The offset of the Next Header field naming the upper layer of an IPv6
    packet :func:`parse_ip` accepted: the pointer of a Parameter Problem
    code 1 (RFC 8200 section 4, RFC 4443 3.4)."""
    pointer, nxt, off = IPV6_NEXT_HEADER, packet[IPV6_NEXT_HEADER], IPV6_HEADER_LEN
    while nxt in _IPV6_EXT_SKIPPABLE:
        length = _IPV6_FRAGMENT_HEADER_LEN if nxt == _IPV6_FRAGMENT else (packet[off + 1] + 1) * 8
        pointer, nxt = off, packet[off]
        off += length
    return pointer


def _ipv6_options(packet: bytes, pos: int, end: int) -> tuple[str, int, int, bool] | None:
    """Check the options of a Hop-by-Hop or Destination Options header
    (RFC 8200 4.2) from *pos* to *end*: None, or why and how to discard.

    Pad1 (type 0) and PadN (type 1) are the only options recognised; for any
    other the two high-order bits of its type say: 00 skip it, 01 discard the
    packet, 10 discard and send Parameter Problem code 2 pointing at the type,
    11 the same unless the destination is multicast.
    """
    padding = 0
    options = 0
    while pos < end:
        kind = packet[pos]
        if kind == 0:  # Pad1: one octet, no length
            padding += 1
            if padding > _IPV6_MAX_PADDING:
                raise MalformedPacketError("IPv6 option padding too long")
            pos += 1
            continue
        if pos + 2 > end:
            raise MalformedPacketError("IPv6 option truncated")
        option_end = pos + 2 + packet[pos + 1]
        if option_end > end:
            raise MalformedPacketError("IPv6 option overruns its header")
        if kind == 1:  # PadN: N-2 zero octets of data
            padding += option_end - pos
            if padding > _IPV6_MAX_PADDING or any(packet[pos + 2 : option_end]):
                raise MalformedPacketError("IPv6 PadN option invalid")
        else:
            padding = 0
            options += 1
            if options > _IPV6_MAX_OPTIONS:
                raise MalformedPacketError("too many IPv6 options")
            action = kind >> 6
            if action == 1:
                return ("IPv6 option says discard", PARAM_PROBLEM_UNRECOGNISED_OPTION, pos, False)
            if action:  # 10, or 11 with a destination not multicast (ff00::/8)
                report = action == 2 or packet[IPV6_DST.start] != 0xFF
                return ("IPv6 option says discard", PARAM_PROBLEM_UNRECOGNISED_OPTION, pos, report)
        pos = option_end
    return None


class IPv4HeaderTemplate:
    """A precomputed IPv4 header for one (src, dst, protocol) flow.

    Every field but the total length and the checksum is fixed for a connection,
    so their sum is computed once; per packet only the length is added. DF is set
    and the identification is 0, as RFC 6864 section 4.1 allows for atomic
    datagrams (a packet larger than the path MTU is cut by
    :func:`~wireguard.netstack.fragment.fragment`, which gives its fragments
    an identification and clears DF).
    """

    __slots__ = ("_addrs", "_fixed_sum", "_tail")

    def __init__(self, src: bytes, dst: bytes, proto: int, ttl: int = DEFAULT_TTL) -> None:
        head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0x4000, ttl, proto, 0, src, dst)
        self._fixed_sum = int.from_bytes(head, "big") % 0xFFFF
        self._tail = head[8:10]  # ttl, proto
        self._addrs = src + dst

    def build(self, payload: bytes, tail: bytes = b"") -> bytes:
        """The packet carrying *payload* followed by *tail* (saves a concatenation)."""
        total = 20 + len(payload) + len(tail)
        csum = 0xFFFF - ((self._fixed_sum + total) % 0xFFFF)
        return b"".join(
            (
                b"\x45\x00",
                total.to_bytes(2, "big"),
                b"\x00\x00\x40\x00",
                self._tail,
                csum.to_bytes(2, "big"),
                self._addrs,
                payload,
                tail,
            )
        )


class IPv6HeaderTemplate:
    """A precomputed IPv6 header for one (src, dst, next header) flow."""

    __slots__ = ("_addrs", "_head")

    def __init__(self, src: bytes, dst: bytes, proto: int, hop_limit: int = DEFAULT_TTL) -> None:
        self._head = b"\x60\x00\x00\x00"
        self._addrs = bytes((proto, hop_limit)) + src + dst

    def build(self, payload: bytes, tail: bytes = b"") -> bytes:
        """The packet carrying *payload* followed by *tail* (saves a concatenation)."""
        return b"".join(
            (self._head, (len(payload) + len(tail)).to_bytes(2, "big"), self._addrs, payload, tail)
        )


def header_template(
    src: bytes, dst: bytes, proto: int, ttl: int = DEFAULT_TTL
) -> IPv4HeaderTemplate | IPv6HeaderTemplate:
    """The header builder for the family of *src* (4 or 16 bytes)."""
    if len(src) == 4:
        return IPv4HeaderTemplate(src, dst, proto, ttl)
    return IPv6HeaderTemplate(src, dst, proto, ttl)


def build_ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, ttl: int = DEFAULT_TTL) -> bytes:
    """One IPv4 packet (RFC 791) with DF set and a correct header checksum."""
    if len(payload) > 65535 - 20:
        raise ValueError("IPv4 payload too large")
    return IPv4HeaderTemplate(src, dst, proto, ttl).build(payload)


def build_ipv6(
    src: bytes, dst: bytes, proto: int, payload: bytes, hop_limit: int = DEFAULT_TTL
) -> bytes:
    """One IPv6 packet (RFC 8200) without extension headers."""
    if len(payload) > 65535:
        raise ValueError("IPv6 payload too large")
    return IPv6HeaderTemplate(src, dst, proto, hop_limit).build(payload)


def build_ip(src: bytes, dst: bytes, proto: int, payload: bytes, ttl: int = DEFAULT_TTL) -> bytes:
    """One IPv4 or IPv6 packet, by the length of *src*."""
    if len(src) == 4:
        return build_ipv4(src, dst, proto, payload, ttl)
    return build_ipv6(src, dst, proto, payload, ttl)


def addr_bytes(addr: str | ipaddress.IPv4Address | ipaddress.IPv6Address | bytes) -> bytes:
    """The packed form of an address given as text, an :mod:`ipaddress` object or bytes."""
    if isinstance(addr, bytes):
        if len(addr) not in (4, 16):
            raise ValueError("a packed address is 4 or 16 bytes")
        return addr
    if isinstance(addr, str):
        addr = ipaddress.ip_address(addr.split("%", 1)[0])
    return addr.packed


def addr_str(addr: bytes) -> str:
    """The text form of a packed address."""
    return str(ipaddress.ip_address(addr))
