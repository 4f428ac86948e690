"""The TCP segment on the wire (RFC 9293 section 3.1): flags, options,
parsing and building, and sequence numbers.

One builder makes every segment: :class:`SegmentBuilder` holds what is
fixed for a flow (the IP header template, the pseudo-header sum, the ports),
so a connection builds its segments with one sum per segment; a segment of
no connection (a RST, :func:`rst_for_unexpected`; a SYN cookie; a test's
peer) is one builder's one segment.

Sequence numbers are kept *unwrapped* by the connection: unbounded Python
integers that start at the 32-bit ISS/IRS and only grow; :func:`unwrap`
turns an incoming 32-bit number into the one closest to a reference, so
comparisons are plain ``<`` and a whole class of modulo bugs is gone.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Final

from ...ipheader import IPPROTO_TCP
from ..ip import IPPacket, MalformedPacketError, header_template, pseudo_header_sum, verify_checksum

__all__ = [
    "ACK",
    "FIN",
    "PSH",
    "RST",
    "SYN",
    "URG",
    "SegmentBuilder",
    "TcpSegment",
    "mss_for_mtu",
    "parse_tcp",
    "rst_for_unexpected",
    "sack_option",
    "syn_options",
    "unwrap",
]

FIN: Final = 0x01
SYN: Final = 0x02
RST: Final = 0x04
PSH: Final = 0x08
ACK: Final = 0x10
URG: Final = 0x20

MASK: Final = 0xFFFFFFFF
_HALF: Final = 0x80000000
_WRAP: Final = 0x100000000

_HDR = struct.Struct("!HHIIBBHHH")
_SACK_BLOCK = struct.Struct("!II")

# RFC 9293 3.7.1: without an MSS option the peer accepts 536 (IPv4) or 1220 (IPv6).
DEFAULT_MSS_V4: Final = 536
DEFAULT_MSS_V6: Final = 1220


def unwrap(value: int, reference: int) -> int:
    """The unbounded sequence number closest to *reference* whose low 32 bits are *value*."""
    d = (value - reference) & MASK
    if d & _HALF:
        d -= _WRAP
    return reference + d


def mss_for_mtu(mtu: int, v4: bool) -> int:
    """The largest segment we accept on a path of *mtu* (RFC 9293 3.7.1: the
    MTU less the IP and TCP headers), what our MSS option advertises."""
    return mtu - (20 if v4 else 40) - 20


class TcpSegment:
    """A parsed TCP header and its payload (RFC 9293 3.1). Numbers are still 32-bit."""

    __slots__ = (
        "ack",
        "dport",
        "flags",
        "mss",
        "payload",
        "sack",
        "sack_ok",
        "seq",
        "sport",
        "wnd",
        "wscale",
    )

    def __init__(
        self,
        sport: int,
        dport: int,
        seq: int,
        ack: int,
        flags: int,
        wnd: int,
        payload: bytes,
        mss: int | None = None,
        wscale: int | None = None,
        sack_ok: bool = False,
    ) -> None:
        self.sport = sport
        self.dport = dport
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.wnd = wnd
        self.payload = payload
        self.mss = mss
        self.wscale = wscale
        self.sack_ok = sack_ok  # SACK-permitted (RFC 2018 2), SYNs only
        # SACK blocks (RFC 2018 3) as 32-bit (left, right) pairs, non-SYNs only.
        self.sack: list[tuple[int, int]] | None = None

    def __repr__(self) -> str:
        names = "".join(c for bit, c in ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"),
                                         (ACK, "."), (URG, "U")) if self.flags & bit)  # fmt: skip
        return (
            f"TcpSegment({self.sport}->{self.dport} [{names}] seq={self.seq} ack={self.ack} "
            f"wnd={self.wnd} len={len(self.payload)} mss={self.mss} ws={self.wscale})"
        )


def _options(data: bytes, end: int) -> Iterator[tuple[int, int, int]]:
    """(kind, offset, length) of each option in the header's option list
    (RFC 9293 3.1), up to end-of-list; MalformedPacketError if it overruns."""
    i = 20
    while i < end:
        kind = data[i]
        if kind == 0:  # end of option list
            return
        if kind == 1:  # no-operation
            i += 1
            continue
        if i + 1 >= end:
            raise MalformedPacketError("TCP option truncated")
        length = data[i + 1]
        if length < 2 or i + length > end:
            raise MalformedPacketError("TCP option length invalid")
        yield kind, i, length
        i += length


def _parse_options(data: bytes, end: int) -> tuple[int | None, int | None, bool]:
    """MSS, window scale and SACK-permitted from the option list (RFC 9293 3.2,
    RFC 7323 2.2, RFC 2018 2)."""
    mss = wscale = None
    sack_ok = False
    for kind, i, length in _options(data, end):
        if kind == 2 and length == 4:
            mss = (data[i + 2] << 8) | data[i + 3]
        elif kind == 3 and length == 3:
            wscale = data[i + 2]
        elif kind == 4 and length == 2:
            sack_ok = True
    return mss, wscale, sack_ok


def _parse_sack(data: bytes, end: int) -> list[tuple[int, int]] | None:
    """The SACK blocks of a non-SYN segment (RFC 2018 3), None if it has none.
    A malformed option list yields no blocks (the segment itself stands)."""
    try:
        for kind, i, length in _options(data, end):
            if kind == 5 and length >= 10 and (length - 2) % 8 == 0:
                return [_SACK_BLOCK.unpack_from(data, j) for j in range(i + 2, i + length, 8)]
    except MalformedPacketError:
        pass
    return None


def parse_tcp(packet: IPPacket) -> TcpSegment:
    """Parse and checksum-verify the TCP segment in *packet* (RFC 9293 3.1).

    Options are only decoded on SYN segments: MSS and window scale mean nothing
    elsewhere (RFC 7323 2.2), and skipping them keeps the data path short.
    """
    data = packet.payload
    n = len(data)
    if n < 20:
        raise MalformedPacketError("TCP header truncated")
    if not verify_checksum(data, pseudo_header_sum(packet.src, packet.dst, IPPROTO_TCP, n)):
        raise MalformedPacketError("TCP checksum mismatch")
    sport, dport, seq, ack, off, flags, wnd, _csum, _urp = _HDR.unpack_from(data)
    hlen = (off >> 4) << 2
    if hlen < 20 or hlen > n:
        raise MalformedPacketError("TCP data offset invalid")
    mss = wscale = None
    sack_ok = False
    if hlen > 20 and flags & SYN:
        mss, wscale, sack_ok = _parse_options(data, hlen)
    seg = TcpSegment(sport, dport, seq, ack, flags, wnd, data[hlen:], mss, wscale, sack_ok)
    if hlen > 20 and not flags & SYN and flags & ACK:
        seg.sack = _parse_sack(data, hlen)
    return seg


class SegmentBuilder:
    """Builds the IP packets of one flow's TCP segments (src, dst and ports
    fixed): the IP header from a precomputed template, the checksum from the
    pseudo-header sum computed once and one ``int.from_bytes`` per segment
    (see :mod:`wireguard.netstack.ip`)."""

    __slots__ = ("_dport", "_ip", "_pseudo", "_sport")

    def __init__(self, src: bytes, dst: bytes, sport: int, dport: int) -> None:
        self._ip = header_template(src, dst, IPPROTO_TCP)
        self._pseudo = int.from_bytes(src, "big") + int.from_bytes(dst, "big") + IPPROTO_TCP
        self._sport = sport
        self._dport = dport

    def build(
        self, seq: int, ack: int, flags: int, wnd: int, payload: bytes = b"", options: bytes = b""
    ) -> bytes:
        """The packet of one segment; *seq* and *ack* may be unwrapped, *options*
        padded to 4 bytes."""
        hlen = 20 + len(options)
        if hlen & 3:
            raise ValueError("TCP options must be padded to 4 bytes")
        head = _HDR.pack(
            self._sport, self._dport, seq & MASK, ack & MASK, hlen << 2, flags, wnd, 0, 0
        )
        if options:
            head += options
        plen = len(payload)
        value = int.from_bytes(head, "big") + self._pseudo + hlen + plen
        if plen:
            value += int.from_bytes(payload, "big") << (8 if plen & 1 else 0)
        csum = 0xFFFF - value % 0xFFFF
        return self._ip.build(head[:16] + csum.to_bytes(2, "big") + head[18:], payload)


def rst_for_unexpected(packet: IPPacket, seg: TcpSegment) -> bytes | None:
    """The RST answering a segment for which no connection exists (RFC 9293 3.10.7.1).

    An incoming RST is never answered (that could loop). If the segment had an
    ACK, the RST takes its sequence number from it so the peer finds it
    acceptable; otherwise it acknowledges everything the segment occupied.
    """
    flags = seg.flags
    if flags & RST:
        return None
    builder = SegmentBuilder(packet.dst, packet.src, seg.dport, seg.sport)
    if flags & ACK:
        return builder.build(seg.ack, 0, RST, 0)
    seg_len = len(seg.payload) + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
    return builder.build(0, seg.seq + seg_len, RST | ACK, 0)


def syn_options(mss: int, wscale: int | None = None, sack: bool = False) -> bytes:
    """The options of a SYN: MSS (RFC 9293 3.7.1), window scale (RFC 7323
    2.2) and SACK-permitted (RFC 2018 2), each padded with NOPs."""
    opts = b"\x02\x04" + mss.to_bytes(2, "big")
    if wscale is not None:
        opts += b"\x01\x03\x03" + bytes((wscale,))
    if sack:
        opts += b"\x01\x01\x04\x02"  # NOP, NOP, SACK-permitted
    return opts


def sack_option(blocks: list[tuple[int, int]]) -> bytes:
    """A SACK option (RFC 2018 3) with *blocks* (at most 4; the sequence
    numbers may be unwrapped), after two NOPs."""
    out = bytearray(b"\x01\x01\x05")
    out.append(2 + 8 * len(blocks))
    for left, right in blocks:
        out += _SACK_BLOCK.pack(left & MASK, right & MASK)
    return bytes(out)
