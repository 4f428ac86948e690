"""ICMP (RFC 792) and ICMPv6 (RFC 4443): echo both ways, "port unreachable" and
"parameter problem", and what the errors others send about our packets mean.

Only what a host behind a tunnel needs: answer pings to our own addresses, let
the application ping through the tunnel, report a closed UDP port and an IPv6
extension header that says so (RFC 8200 4.2, 4.4), at a limited rate. The
errors that come back about our own packets are read by :func:`icmp_error`
and :func:`parse_quote` (which socket, what errno, a path MTU) and acted on
by the stack as Linux does. There is no link layer under WireGuard, so no ARP
and no Neighbor Discovery: every other ICMPv6 message (router advertisements,
MLD, NDP) is dropped.
"""

from __future__ import annotations

import errno
import struct
from typing import Final

from ..ipheader import IPPROTO_ICMP, IPPROTO_ICMPV6
from .ip import (
    IPPacket,
    MalformedPacketError,
    build_ipv4,
    build_ipv6,
    checksum,
    pseudo_header_sum,
    verify_checksum,
)

__all__ = [
    "ICMPV6_DEST_UNREACHABLE",
    "ICMPV6_ECHO_REPLY",
    "ICMPV6_ECHO_REQUEST",
    "ICMPV6_PARAM_PROBLEM",
    "ICMP_DEST_UNREACHABLE",
    "ICMP_ECHO_REPLY",
    "ICMP_ECHO_REQUEST",
    "ICMP_ERRORS_BURST",
    "ICMP_ERRORS_PER_SEC",
    "IPV4_MIN_PMTU",
    "IPV6_MIN_MTU",
    "IcmpError",
    "IcmpErrorLimit",
    "IcmpMessage",
    "build_echo",
    "build_icmp",
    "build_parameter_problem",
    "build_port_unreachable",
    "build_protocol_unreachable",
    "build_reassembly_time_exceeded",
    "echo_reply_for",
    "echo_reply_length",
    "icmp_error",
    "is_icmp_error",
    "is_single_host",
    "parse_icmp",
    "parse_quote",
]

ICMP_ECHO_REPLY: Final = 0
ICMP_DEST_UNREACHABLE: Final = 3
ICMP_PROTOCOL_UNREACHABLE: Final = 2  # code
ICMP_PORT_UNREACHABLE: Final = 3  # code
ICMP_FRAG_NEEDED: Final = 4  # code (RFC 1191 4: the next-hop MTU in the header)
ICMP_ECHO_REQUEST: Final = 8
ICMP_TIME_EXCEEDED: Final = 11
ICMP_PARAMETER_PROBLEM: Final = 12

ICMPV6_DEST_UNREACHABLE: Final = 1
ICMPV6_PORT_UNREACHABLE: Final = 4  # code
ICMPV6_PACKET_TOO_BIG: Final = 2
ICMPV6_TIME_EXCEEDED: Final = 3
ICMPV6_PARAM_PROBLEM: Final = 4
ICMPV6_ECHO_REQUEST: Final = 128
ICMPV6_ECHO_REPLY: Final = 129

# The rate of ICMP errors we originate, both families together: a token bucket
# of ICMP_ERRORS_BURST errors refilled at ICMP_ERRORS_PER_SEC. RFC 4443 2.4(f):
# an IPv6 node MUST limit the rate of the ICMPv6 errors it originates (token
# bucket suggested); RFC 1812 4.3.2.8 the same for IPv4. The values are Linux's
# defaults, net.ipv4.icmp_msgs_per_sec = 1000 and net.ipv4.icmp_msgs_burst = 50
# (net/ipv4/icmp.c, icmp_sk_init), a budget icmp_global_allow() keeps for ICMPv6
# errors too. One global bucket: per-destination state, as Linux's inetpeer
# icmp_ratelimit keeps, would be memory whose size a remote peer chooses. An
# error costs 0, 1 or 2 tokens at random, one on average, as in Linux since the
# fix of CVE-2020-25705 ("SAD DNS"): with a fixed cost, a sender that counts the
# errors of a burst learns how many of the probes it spoofed before them found
# an open UDP port.
ICMP_ERRORS_PER_SEC: Final = 1000
ICMP_ERRORS_BURST: Final = 50
_REFILL_STEP: Final = 0.02  # seconds: Linux refills when at least HZ / 50 passed

_HDR = struct.Struct("!BBHHH")

# RFC 4443 section 2.4 (c): an ICMPv6 error carries as much of the invoking packet
# as fits in the minimum IPv6 MTU (1280); RFC 1812 4.3.2.3 lets IPv4 quote more
# than 8 bytes but 576 is the classic bound.
_V4_ERROR_QUOTE: Final = 576 - 20 - 8
_V6_ERROR_QUOTE: Final = 1280 - 40 - 8

# The unspecified address and loopback (RFC 4291 2.5.2, 2.5.3).
_V6_NOT_A_HOST: Final = frozenset({bytes(16), bytes(15) + b"\x01"})


class IcmpErrorLimit:
    """The token bucket limiting the ICMP errors a stack originates (see
    ICMP_ERRORS_PER_SEC). Time is the caller's *now*; no clock is read.

    As Linux's icmp_global_allow and icmp_global_consume: an error may go while
    the bucket holds a token; it then costs what the caller drew (0-2), which
    may leave the bucket owing up to a token, so the rate is the configured one
    on average; the bucket is refilled in steps of at least 20 ms (HZ / 50).
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float = ICMP_ERRORS_PER_SEC, burst: int = ICMP_ERRORS_BURST) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp: float | None = None

    def allow(self, now: float, cost: int = 1) -> bool:
        """One error at *now*, if a token is left; it then costs *cost* tokens."""
        stamp = self._stamp
        if stamp is None:
            self._stamp = now
        elif now - stamp >= _REFILL_STEP:  # a clock that goes back refills nothing
            self._tokens = min(float(self.burst), self._tokens + (now - stamp) * self.rate)
            self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= cost
            return True
        return False


def is_single_host(addr: bytes) -> bool:
    """Whether *addr* may be sent an ICMP error about a packet from it.

    RFC 1122 3.2.2: never about a datagram whose source does not define a single
    host (a zero, loopback, broadcast, multicast or Class E address); RFC 4443
    2.4(e.6): nor an IPv6 source that does not identify a single node (the
    unspecified address, a multicast one), nor, RFC 4291 2.5.3, loopback.
    """
    if len(addr) == 4:
        first = addr[0]
        return first != 0 and first != 127 and first < 224  # 224/4 multicast, 240/4 class E
    return addr[0] != 0xFF and addr not in _V6_NOT_A_HOST


class IcmpMessage:
    """A parsed ICMP or ICMPv6 message; *ident*/*seq* are meaningful for echo only."""

    __slots__ = ("body", "code", "ident", "seq", "type")

    def __init__(self, type_: int, code: int, ident: int, seq: int, body: bytes) -> None:
        self.type = type_
        self.code = code
        self.ident = ident
        self.seq = seq
        self.body = body


def parse_icmp(packet: IPPacket) -> IcmpMessage:
    """Parse and checksum-verify the ICMP(v6) payload of *packet*.

    ICMPv6 includes the pseudo-header in its checksum (RFC 4443 section 2.3),
    ICMPv4 does not (RFC 792).
    """
    data = packet.payload
    if len(data) < 8:
        raise MalformedPacketError("ICMP message truncated")
    if packet.version == 4:
        ok = verify_checksum(data)
    else:
        ok = verify_checksum(
            data, pseudo_header_sum(packet.src, packet.dst, IPPROTO_ICMPV6, len(data))
        )
    if not ok:
        raise MalformedPacketError("ICMP checksum mismatch")
    type_, code, _csum, ident, seq = _HDR.unpack_from(data)
    return IcmpMessage(type_, code, ident, seq, data[8:])


def build_icmp(src: bytes, dst: bytes, type_: int, code: int, rest: bytes, body: bytes) -> bytes:
    """A whole IP packet carrying one ICMP (4-byte *src*) or ICMPv6 (16-byte) message."""
    msg = bytes((type_, code)) + b"\x00\x00" + rest + body
    if len(src) == 4:
        csum = checksum(msg)
        return build_ipv4(src, dst, IPPROTO_ICMP, msg[:2] + csum.to_bytes(2, "big") + msg[4:])
    csum = checksum(msg, pseudo_header_sum(src, dst, IPPROTO_ICMPV6, len(msg)))
    return build_ipv6(src, dst, IPPROTO_ICMPV6, msg[:2] + csum.to_bytes(2, "big") + msg[4:])


def build_echo(src: bytes, dst: bytes, ident: int, seq: int, data: bytes, *, reply: bool) -> bytes:
    """An echo request or reply (RFC 792 / RFC 4443 sections 4.1 and 4.2)."""
    if len(src) == 4:
        type_ = ICMP_ECHO_REPLY if reply else ICMP_ECHO_REQUEST
    else:
        type_ = ICMPV6_ECHO_REPLY if reply else ICMPV6_ECHO_REQUEST
    return build_icmp(src, dst, type_, 0, struct.pack("!HH", ident, seq), data)


def echo_reply_length(packet: IPPacket, msg: IcmpMessage) -> int | None:
    """The length of the reply :func:`echo_reply_for` builds, or None if *msg*
    is not an echo request: known before the reply is built and checksummed."""
    request = ICMP_ECHO_REQUEST if packet.version == 4 else ICMPV6_ECHO_REQUEST
    if msg.type != request or msg.code != 0:
        return None
    return (20 if packet.version == 4 else 40) + 8 + len(msg.body)


def echo_reply_for(packet: IPPacket, msg: IcmpMessage) -> bytes | None:
    """The reply to an echo request addressed to us, or None if *msg* is not one.

    The reply echoes identifier, sequence number and data unchanged and is sent
    from the address the request was sent to (RFC 1122 3.2.2.6, RFC 4443 4.2).
    """
    if echo_reply_length(packet, msg) is None:
        return None
    return build_echo(packet.dst, packet.src, msg.ident, msg.seq, msg.body, reply=True)


def build_port_unreachable(original: bytes, packet: IPPacket) -> bytes:
    """ "Port unreachable" for a UDP datagram to a port nobody has bound.

    *original* is the invoking IP packet as received; its start is quoted so the
    sender can match the error to its socket (RFC 1122 3.2.2.1, RFC 4443 3.1).
    """
    v4 = packet.version == 4
    return build_icmp(
        packet.dst,
        packet.src,
        ICMP_DEST_UNREACHABLE if v4 else ICMPV6_DEST_UNREACHABLE,
        ICMP_PORT_UNREACHABLE if v4 else ICMPV6_PORT_UNREACHABLE,
        b"\x00\x00\x00\x00",
        _quote(original),
    )


def _quote(original: bytes) -> bytes:
    """What an error quotes of the IP packet *original*: as much as fits in
    576 (IPv4) or 1280 (IPv6) octets, up to its IP length, not the link
    padding after it (RFC 1122 3.2.1.2 lets a link pad)."""
    if original[0] >> 4 == 4:
        return original[: min(int.from_bytes(original[2:4], "big"), _V4_ERROR_QUOTE)]
    return original[: min(40 + int.from_bytes(original[4:6], "big"), _V6_ERROR_QUOTE)]


def build_protocol_unreachable(original: bytes, packet: IPPacket) -> bytes:
    """ "Protocol unreachable" (RFC 792; RFC 1122 3.2.2.1: a host SHOULD send
    it) for an IPv4 packet of a transport protocol this stack does not have;
    IPv6 says so with a Parameter Problem instead (RFC 8200 section 4)."""
    return build_icmp(
        packet.dst,
        packet.src,
        ICMP_DEST_UNREACHABLE,
        ICMP_PROTOCOL_UNREACHABLE,
        b"\x00\x00\x00\x00",
        _quote(original),
    )


def build_parameter_problem(
    original: bytes, src: bytes, dst: bytes, code: int, pointer: int
) -> bytes:
    """ICMPv6 Parameter Problem (RFC 4443 3.4) about *original*, an IPv6 packet
    from *src* to *dst*; *pointer* is the offset in it of the octet at fault.

    As much of the invoking packet is quoted as fits in 1280 octets (RFC 4443
    2.4(c)), not the link padding after its payload length.
    """
    rest = pointer.to_bytes(4, "big")
    return build_icmp(dst, src, ICMPV6_PARAM_PROBLEM, code, rest, _quote(original))


def build_reassembly_time_exceeded(first_fragment: bytes, src: bytes, dst: bytes) -> bytes:
    """Time Exceeded, code 1 "fragment reassembly time exceeded" (RFC 792;
    RFC 4443 3.3), to *src*, the sender of a datagram whose fragments did not
    all come in time; it quotes the first fragment (RFC 8200 4.5)."""
    return build_icmp(
        dst,
        src,
        ICMP_TIME_EXCEEDED if len(src) == 4 else ICMPV6_TIME_EXCEEDED,
        1,
        b"\x00\x00\x00\x00",
        _quote(first_fragment),
    )


# ICMP error message types (RFC 792, RFC 1812 4.3.2.4): destination
# unreachable, source quench, redirect, time exceeded, parameter problem. In
# ICMPv6 every type below 128 is one (RFC 4443 2.1).
_ICMP_ERROR_TYPES: Final = frozenset({3, 4, 5, 11, 12})


def is_icmp_error(version: int, proto: int, message: bytes) -> bool:
    """Whether *message*, the start of an upper-layer payload of *proto*, is
    an ICMP or ICMPv6 error message, about which no error is sent (RFC 1122
    3.2.2, RFC 4443 2.4(e.1))."""
    if not message:
        return False
    if version == 4:
        return proto == IPPROTO_ICMP and message[0] in _ICMP_ERROR_TYPES
    return proto == IPPROTO_ICMPV6 and message[0] < ICMPV6_ECHO_REQUEST


# ------------------------------------------------------------ errors about our packets

# The least path MTUs a report can bring us to: IPv4's is Linux's ip_rt_min_pmtu
# (net/ipv4/route.c: 512 + 20 + 20; a report below it, or the 0 of a router
# older than RFC 1191, is taken as 552); IPv6's is the minimum link MTU (RFC
# 8200 section 5), below which Linux's tcp_v6_err ignores a Packet Too Big.
IPV4_MIN_PMTU: Final = 552
IPV6_MIN_MTU: Final = 1280

# Linux's icmp_err_convert (net/ipv4/icmp.c): the errno of each destination
# unreachable code 0-15 (NR_ICMP_UNREACH), and whether it is "fatal", i.e.
# reported to a connected UDP socket (__udp4_lib_err). Code 4 (fragmentation
# needed) is the path MTU's, handled apart.
_V4_UNREACH: Final = (
    (errno.ENETUNREACH, False),  # net unreachable
    (errno.EHOSTUNREACH, False),  # host unreachable
    (errno.ENOPROTOOPT, True),  # protocol unreachable
    (errno.ECONNREFUSED, True),  # port unreachable
    (errno.EMSGSIZE, False),  # fragmentation needed and DF set
    (errno.EOPNOTSUPP, False),  # source route failed
    (errno.ENETUNREACH, True),  # destination network unknown
    (errno.EHOSTDOWN, True),  # destination host unknown
    (errno.ENONET, True),  # source host isolated
    (errno.ENETUNREACH, True),  # network administratively prohibited
    (errno.EHOSTUNREACH, True),  # host administratively prohibited
    (errno.ENETUNREACH, False),  # network unreachable for TOS
    (errno.EHOSTUNREACH, False),  # host unreachable for TOS
    (errno.EHOSTUNREACH, True),  # communication administratively prohibited
    (errno.EHOSTUNREACH, True),  # host precedence violation
    (errno.EHOSTUNREACH, True),  # precedence cutoff in effect
)
# Linux's icmpv6_err_convert (net/ipv6/icmp.c), tab_unreach: codes 0-6.
_V6_UNREACH: Final = (
    (errno.ENETUNREACH, False),  # no route to destination
    (errno.EACCES, True),  # administratively prohibited
    (errno.EHOSTUNREACH, False),  # beyond the scope of the source address
    (errno.EHOSTUNREACH, False),  # address unreachable
    (errno.ECONNREFUSED, True),  # port unreachable
    (errno.EACCES, True),  # source address failed ingress/egress policy
    (errno.EACCES, True),  # reject route to destination
)


class IcmpError:
    """What an ICMP or ICMPv6 error means for the socket whose packet it quotes.

    *errno* is Linux's for it; *fatal* is whether Linux reports it to a
    connected UDP socket (a "hard" error); *mtu* is the MTU a "fragmentation
    needed" or Packet Too Big reports (None for the others); *abort_request*
    whether it ends a half-open passive connection (Linux's tcp_req_err).
    """

    __slots__ = ("abort_request", "errno", "fatal", "mtu")

    def __init__(
        self, err: int, fatal: bool, mtu: int | None = None, abort_request: bool = False
    ) -> None:
        self.errno = err
        self.fatal = fatal
        self.mtu = mtu
        self.abort_request = abort_request


def icmp_error(version: int, msg: IcmpMessage) -> IcmpError | None:
    """The error *msg* (an ICMP message of IP *version*) reports, or None if
    it is not an error any socket acts on (Linux's tcp_v4_err and
    __udp4_lib_err ignore source quench, redirects, unreachable codes above
    15; there are no routes here for a redirect to change)."""
    type_, code = msg.type, msg.code
    if version == 4:
        if type_ == ICMP_DEST_UNREACHABLE:
            if code == ICMP_FRAG_NEEDED:
                # RFC 1191 4: the next-hop MTU is the low 16 bits of the second word.
                return IcmpError(errno.EMSGSIZE, True, msg.seq)
            if code < len(_V4_UNREACH):
                err, fatal = _V4_UNREACH[code]
                return IcmpError(err, fatal, None, code <= 1)
            return None
        if type_ == ICMP_TIME_EXCEEDED:
            return IcmpError(errno.EHOSTUNREACH, False, None, True)
        if type_ == ICMP_PARAMETER_PROBLEM:
            return IcmpError(errno.EPROTO, True, None, True)
        return None
    if type_ >= ICMPV6_ECHO_REQUEST:
        return None  # informational (RFC 4443 2.1)
    if type_ == ICMPV6_PACKET_TOO_BIG:
        return IcmpError(errno.EMSGSIZE, True, (msg.ident << 16) | msg.seq)  # RFC 4443 3.2
    if type_ == ICMPV6_DEST_UNREACHABLE:
        err, fatal = _V6_UNREACH[code] if code < len(_V6_UNREACH) else (errno.EPROTO, True)
    elif type_ == ICMPV6_TIME_EXCEEDED:
        err, fatal = errno.EHOSTUNREACH, False
    elif type_ == ICMPV6_PARAM_PROBLEM:
        err, fatal = errno.EPROTO, True
    else:
        # RFC 4443 2.4(b): an error of unknown type goes to the upper layer.
        err, fatal = errno.EPROTO, False
    return IcmpError(err, fatal, None, fatal)


def parse_quote(version: int, quote: bytes) -> tuple[bytes, bytes, int, bytes] | None:
    """(source, destination, protocol, transport octets) of the packet an
    ICMP error of IP *version* quotes, or None if the quote cannot be one of
    ours: shorter than its IP header and 8 octets (the least RFC 792 and RFC
    4443 2.4(c) quote; Linux needs as much), of the other version, a
    fragment other than the first (none of ours), or with IPv6 extension
    headers (we send none)."""
    if version == 4:
        if len(quote) < 28 or quote[0] >> 4 != 4:
            return None
        ihl = (quote[0] & 0x0F) << 2
        if ihl < 20 or len(quote) < ihl + 8 or (quote[6] & 0x1F) | quote[7]:
            return None
        return quote[12:16], quote[16:20], quote[9], quote[ihl:]
    if len(quote) < 48 or quote[0] >> 4 != 6:
        return None
    return quote[8:24], quote[24:40], quote[6], quote[40:]
