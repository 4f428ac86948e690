"""Packet captures and key logs, for looking at WireGuard from the outside.

WireGuard is opaque on the wire by design, so a researcher who wants to see
what a tunnel carried needs two things the protocol never emits: a capture of
the UDP datagrams, and the secrets of one side. This module provides both, in
the formats the rest of the world already reads:

- :class:`PcapWriter` writes classic pcap (microsecond timestamps) with link
  type ``LINKTYPE_RAW``, so IPv4 and IPv6 packets share one file. Datagrams
  given as ``(src, dst, payload)`` get real outer IP and UDP headers with valid
  checksums, so Wireshark and tshark take them for what a NIC would have seen.
- :class:`PcapReader` reads classic pcap (either byte order, microsecond or
  nanosecond magic) and pcapng (section header, interface description, enhanced,
  simple and obsolete packet blocks, and decryption secrets blocks) over raw IP,
  Ethernet, Linux cooked (SLL and SLL2), each with VLAN tags, and BSD
  loopback link types, yielding ``(timestamp, ip_packet)``;
  :func:`udp_datagrams` turns those into UDP datagrams.
- :class:`KeyLogWriter` writes the key log that Wireshark's WireGuard dissector
  reads (preference ``wg.keylog_file``); :func:`parse_keylog` reads it back.

Everything that decides (parsing headers, building headers, checksums, parsing
key logs) is a pure function of bytes. The three classes are the only places
that touch files, and each takes either a path or an open binary file.

Keys are written only where the caller asks: there is no default key log, and a
key log is created readable by its owner only (mode 0600), as ``wg`` expects of
private key files.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import math
import os
import struct
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Final, NamedTuple, Self

from .address import Address
from .constants import KEY_LEN
from .crypto import DHPrivateKey
from .errors import CaptureCutShortError, CaptureFormatError, KeyFormatError
from .ipheader import (
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
from .keys import PresharedKey, PrivateKey, PublicKey
from .netstack.ip import checksum as internet_checksum
from .netstack.udp import build_udp

__all__ = [
    "LINKTYPE_ETHERNET",
    "LINKTYPE_IPV4",
    "LINKTYPE_IPV6",
    "LINKTYPE_LINUX_SLL",
    "LINKTYPE_LINUX_SLL2",
    "LINKTYPE_LOOP",
    "LINKTYPE_NULL",
    "LINKTYPE_RAW",
    "SECRETS_TYPE_WIREGUARD",
    "Address",
    "CaptureFormatError",
    "CapturedPacket",
    "IPLayer",
    "KeyLog",
    "KeyLogWriter",
    "PcapReader",
    "PcapWriter",
    "PcapngWriter",
    "UDPDatagram",
    "build_udp_packet",
    "canonical_keylog",
    "extract_udp",
    "format_address",
    "handshake_keylog",
    "internet_checksum",
    "ip_packet_length",
    "parse_ip",
    "parse_keylog",
    "read_keylog",
    "udp_datagrams",
    "unread_udp",
]


# Link types from https://www.tcpdump.org/linktypes.html.
LINKTYPE_NULL: Final = 0  # BSD loopback: 4-byte address family, host byte order
LINKTYPE_ETHERNET: Final = 1
LINKTYPE_RAW: Final = 101  # raw IPv4 or IPv6, told apart by the version nibble
LINKTYPE_LOOP: Final = 108  # OpenBSD loopback: 4-byte address family, network order
LINKTYPE_LINUX_SLL: Final = 113
LINKTYPE_IPV4: Final = 228
LINKTYPE_IPV6: Final = 229
LINKTYPE_LINUX_SLL2: Final = 276
# DLT_RAW as some systems numbered it before LINKTYPE_RAW (101) existed: 12 on
# most, 14 on OpenBSD. Old files carry these values; libpcap and Wireshark
# (wiretap's pcap-common.c) read both as raw IP.
_LINKTYPE_RAW_12: Final = 12
_LINKTYPE_RAW_14: Final = 14

SECRETS_TYPE_WIREGUARD: Final = 0x57474B4C
"""The pcapng Decryption Secrets Block type for a WireGuard key log ("WGKL"),
what ``editcap --inject-secrets wg,KEYLOG`` embeds."""

# pcapng block types (draft-ietf-opsawg-pcapng sections 4 and 10).
_PCAPNG_SHB: Final = 0x0A0D0D0A
_PCAPNG_IDB: Final = 0x00000001
_PCAPNG_OPB: Final = 0x00000002
_PCAPNG_SPB: Final = 0x00000003
_PCAPNG_EPB: Final = 0x00000006
_PCAPNG_DSB: Final = 0x0000000A
_PCAPNG_BOM: Final = 0x1A2B3C4D

_LINKTYPE_NAMES: Final = {
    LINKTYPE_NULL: "NULL",
    LINKTYPE_ETHERNET: "EN10MB",
    LINKTYPE_RAW: "RAW",
    LINKTYPE_LOOP: "LOOP",
    LINKTYPE_LINUX_SLL: "LINUX_SLL",
    LINKTYPE_IPV4: "IPV4",
    LINKTYPE_IPV6: "IPV6",
    LINKTYPE_LINUX_SLL2: "LINUX_SLL2",
    _LINKTYPE_RAW_12: "RAW (12)",
    _LINKTYPE_RAW_14: "RAW (14)",
}

IPPROTO_UDP: Final = 17
_ETHERTYPE_IPV4: Final = 0x0800
_ETHERTYPE_IPV6: Final = 0x86DD
_ETHERTYPE_VLAN: Final = frozenset({0x8100, 0x88A8, 0x9100})
_DEFAULT_TTL: Final = 64
_MAX_SNAPLEN: Final = 262144  # libpcap's MAXIMUM_SNAPLEN


# --- checksums and headers (pure) --------------------------------------------


_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(host: str | _IPAddress) -> _IPAddress:
    if isinstance(host, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return host
    try:
        # A scope id ("fe80::1%eth0") names an interface, not address bits.
        return ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        raise ValueError(f"not an IP address: {host!r}") from None


def build_udp_packet(src: Address, dst: Address, payload: bytes) -> bytes:
    """An IPv4 or IPv6 packet carrying one UDP datagram, with every length
    and checksum right (the userspace stack's builder: one place for it).

    The UDP checksum is computed even for IPv4 (where it is optional), because
    a capture with zero checksums looks like checksum offload to a reader and
    hides real corruption; for IPv6 it is mandatory (RFC 8200 section 8.1)."""
    s, d = _ip(src[0]), _ip(dst[0])
    if s.version != d.version:
        raise ValueError(f"source {src[0]} and destination {dst[0]} are not the same IP version")
    for port in (src[1], dst[1]):
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"UDP port {port} out of range")
    if 8 + len(payload) > 0xFFFF - (20 if s.version == 4 else 0):
        raise ValueError(f"UDP payload of {len(payload)} bytes does not fit in one IP packet")
    return build_udp(s.packed, d.packed, src[1], dst[1], payload)


# --- parsing IP and UDP (pure) -------------------------------------------------


class IPLayer(NamedTuple):
    """The network layer of a packet: enough to find UDP and to describe it."""

    version: int
    src: str
    dst: str
    protocol: int
    """The upper-layer protocol (after IPv6 extension headers)."""
    payload: bytes
    """The upper-layer bytes, cut to the length the IP header gives (so an
    Ethernet trailer or WireGuard padding is not part of it)."""
    fragment: bool
    """True when *payload* is a fragment (first or later) rather than whole."""


# RFC 8200 extension headers that carry (next header, length in 8-octet units - 1).
_IPV6_EXT: Final = frozenset({0, 43, 60, 135, 139, 140})
_IPV6_FRAGMENT: Final = 44
_IPV6_AH: Final = 51


def ip_packet_length(packet: bytes) -> int | None:
    """The length an IP packet claims for itself (IPv4 total length, IPv6
    payload length + 40), or None if *packet* does not start an IP header.

    This is how WireGuard's zero padding (whitepaper 5.4.6: plaintext padded to
    a multiple of 16) is removed after decryption: the tunnel carries whole IP
    packets, so the inner header knows where the packet ends."""
    if len(packet) < 1:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        return int.from_bytes(packet[2:4], "big")
    if version == 6 and len(packet) >= 40:
        return 40 + int.from_bytes(packet[4:6], "big")
    return None


def parse_ip(packet: bytes) -> IPLayer | None:
    """Parse an IPv4 or IPv6 header; None if *packet* is not a well-formed one.

    Captures hold whatever was on the wire, so a bad header is an ordinary
    outcome here (a reason to skip the packet), not an error."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < IPV4_HEADER_LEN:
            return None
        ihl = (packet[0] & 0x0F) * 4
        total = int.from_bytes(packet[IPV4_TOTAL_LENGTH : IPV4_TOTAL_LENGTH + 2], "big")
        if ihl < IPV4_HEADER_LEN or total < ihl or total > len(packet):
            return None
        flags_frag = int.from_bytes(packet[IPV4_FLAGS_FRAGMENT : IPV4_FLAGS_FRAGMENT + 2], "big")
        fragment = bool(flags_frag & 0x3FFF)  # MF set or a non-zero offset
        src = str(ipaddress.IPv4Address(packet[IPV4_SRC]))
        dst = str(ipaddress.IPv4Address(packet[IPV4_DST]))
        return IPLayer(4, src, dst, packet[IPV4_PROTOCOL], bytes(packet[ihl:total]), fragment)
    if version == 6:
        if len(packet) < IPV6_HEADER_LEN:
            return None
        length = int.from_bytes(packet[IPV6_PAYLOAD_LENGTH : IPV6_PAYLOAD_LENGTH + 2], "big")
        end = IPV6_HEADER_LEN + length
        if end > len(packet):
            return None
        nxt, off, fragment = packet[IPV6_NEXT_HEADER], IPV6_HEADER_LEN, False
        while nxt in _IPV6_EXT or nxt in (_IPV6_FRAGMENT, _IPV6_AH):
            if off + 8 > end:
                return None
            if nxt == _IPV6_FRAGMENT:
                frag = int.from_bytes(packet[off + 2 : off + 4], "big")
                fragment = fragment or bool(frag & 0xFFF9)  # offset or M flag
                length = 8
            elif nxt == _IPV6_AH:
                length = (packet[off + 1] + 2) * 4
            else:
                length = (packet[off + 1] + 1) * 8
            nxt, off = packet[off], off + length
        if off > end:
            return None
        src = str(ipaddress.IPv6Address(packet[IPV6_SRC]))
        dst = str(ipaddress.IPv6Address(packet[IPV6_DST]))
        return IPLayer(6, src, dst, nxt, bytes(packet[off:end]), fragment)
    return None


def extract_udp(packet: bytes) -> tuple[Address, Address, bytes] | None:
    """``(src, dst, payload)`` of the UDP datagram in an IP packet, or None.

    Checksums are not verified: captures taken on the sending host routinely
    hold packets whose checksum the NIC fills in later. Fragments are skipped
    (WireGuard sizes its datagrams to avoid them; reassembly is out of scope)."""
    ip = parse_ip(packet)
    if ip is None or ip.protocol != IPPROTO_UDP or ip.fragment or len(ip.payload) < 8:
        return None
    sport, dport, length = struct.unpack_from("!HHH", ip.payload)
    if length < 8 or length > len(ip.payload):
        return None
    return (ip.src, sport), (ip.dst, dport), ip.payload[8:length]


def unread_udp(packet: bytes) -> str | None:
    """Why :func:`extract_udp` gives nothing for an IP packet that does hold
    UDP: ``"cut short"`` when the capture kept fewer bytes than the IP header
    says the packet has (a snap length, ``tcpdump -s``), ``"fragment"`` when
    it is a fragment; None for anything else (not IP, not UDP, readable).
    Wireshark shows such packets (as truncated, or as fragments); a reader
    that skips them should say how many it skipped."""
    ip = parse_ip(packet)
    if ip is None:
        claimed = ip_packet_length(packet)
        if claimed is None or claimed <= len(packet):
            return None
        # Parse the header as if the missing bytes were there.
        ip = parse_ip(packet + bytes(claimed - len(packet)))
        if ip is None or ip.protocol != IPPROTO_UDP:
            return None
        return "fragment" if ip.fragment else "cut short"
    return "fragment" if ip.protocol == IPPROTO_UDP and ip.fragment else None


class UDPDatagram(NamedTuple):
    timestamp: float
    src: Address
    dst: Address
    payload: bytes


def udp_datagrams(packets: Iterable[tuple[float, bytes]]) -> Iterator[UDPDatagram]:
    """The UDP datagrams among *packets* (``(timestamp, ip_packet)`` pairs, as
    :class:`PcapReader` yields them); everything else is passed over."""
    for timestamp, packet in packets:
        udp = extract_udp(packet)
        if udp is not None:
            yield UDPDatagram(timestamp, *udp)


def format_address(address: Address) -> str:
    """``host:port``, with IPv6 hosts in brackets (RFC 3986) so the port is
    not read as part of the address."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- pcap writer ---------------------------------------------------------------

_PCAP_MAGIC_US: Final = 0xA1B2C3D4
_PCAP_MAGIC_NS: Final = 0xA1B23C4D
_PCAP_END: Final = 2**32
"""The first Unix time classic pcap's unsigned 32-bit seconds cannot hold."""


def _describe_time(timestamp: float) -> str:
    """*timestamp* as an ISO 8601 UTC time, or as seconds where Python's
    dates end (year 1 to 9999)."""
    try:
        when = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return f"Unix time {timestamp!r}"
    return when.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _open_binary(target: str | os.PathLike[str] | IO[bytes], mode: str) -> tuple[IO[bytes], bool]:
    """(file, whether we own it): a path is opened here and closed by us; an
    open file belongs to the caller, who closes it."""
    if isinstance(target, (str, os.PathLike)):
        return open(target, mode), True  # closed by the owning class
    return target, False


class _Writer(ABC):
    """What the two capture writers share: UDP datagrams written as the IP
    packets they were on the wire, and closing (an open file given by the
    caller is only flushed: it is the caller's to close)."""

    _file: IO[bytes]
    _owned: bool

    @abstractmethod
    def write_ip(self, timestamp: float, packet: bytes) -> None:
        """One IP packet, as the capture format frames it."""

    def write_udp(self, timestamp: float, src: Address, dst: Address, payload: bytes) -> None:
        """One UDP datagram (a WireGuard message), wrapped in the outer IPv4 or
        IPv6 and UDP headers it would have had on the wire."""
        self.write_ip(timestamp, build_udp_packet(src, dst, payload))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if self._owned:
            self._file.close()
        else:
            self._file.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class PcapWriter(_Writer):
    """Write a classic pcap file (magic a1b2c3d4, microsecond timestamps,
    link type RAW) of IPv4 and IPv6 packets.

    Classic pcap rather than pcapng because every tool reads it, and
    LINKTYPE_RAW rather than Ethernet because there is no link layer to be
    truthful about: WireGuard is UDP in, IP packets out of the tunnel."""

    def __init__(
        self, target: str | os.PathLike[str] | IO[bytes], *, snaplen: int = _MAX_SNAPLEN
    ) -> None:
        self._file, self._owned = _open_binary(target, "wb")
        self.snaplen = snaplen
        self._file.write(struct.pack("<IHHiIII", _PCAP_MAGIC_US, 2, 4, 0, 0, snaplen, LINKTYPE_RAW))

    def write_ip(self, timestamp: float, packet: bytes) -> None:
        """One IP packet (an inner packet of the tunnel, or any other) at Unix
        time *timestamp*.

        Classic pcap holds the seconds in an unsigned 32-bit field, so times
        before 1970 or from 2106-02-07T06:28:16Z on raise
        :class:`CaptureFormatError` (a ``ValueError``) and write nothing.
        They are refused rather than clamped or wrapped round: newer
        Wireshark's pcap writer refuses them too (with the stricter signed
        limit of 2038), while Debian 12's editcap 4.0 wraps them round, which
        puts a 1960 packet in 2096. The unsigned range is the pcap draft's
        (draft-ietf-opsawg-pcap) and what libpcap 1.10.5 and tshark read."""
        seconds, micros = -1, 0
        if math.isfinite(timestamp):
            seconds = math.floor(timestamp)
            micros = round((timestamp - seconds) * 1_000_000)
            if micros >= 1_000_000:
                seconds, micros = seconds + 1, micros - 1_000_000
        if not 0 <= seconds < _PCAP_END:
            raise CaptureFormatError(
                f"{_describe_time(timestamp)} is outside the times classic pcap can hold "
                "(1970-01-01T00:00:00Z to 2106-02-07T06:28:15.999999Z)"
            )
        captured = packet[: self.snaplen]
        self._file.write(struct.pack("<IIII", seconds, micros, len(captured), len(packet)))
        self._file.write(captured)


class PcapngWriter(_Writer):
    """Write a pcapng file (draft-ietf-opsawg-pcapng): one section, one
    interface of link type RAW with microsecond timestamps, Enhanced Packet
    Blocks, and Decryption Secrets Blocks of type WireGuard key log
    (:meth:`write_secrets`, :meth:`log_handshake`), so that one file opens
    decrypted in Wireshark with no key log to configure, as a capture made
    with ``editcap --inject-secrets wg,KEYLOG`` does.

    Its timestamps are 64 bits, so unlike classic pcap it holds any time from
    1970 on. A file with secrets in it holds private keys: it is as
    sensitive as a key log, and is opened as one when given a path: owner-only
    (an existing file is made so before anything is written), and a symbolic
    link is refused rather than followed."""

    def __init__(
        self, target: str | os.PathLike[str] | IO[bytes], *, snaplen: int = _MAX_SNAPLEN
    ) -> None:
        if isinstance(target, (str, os.PathLike)):
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(target, flags, 0o600)
            with contextlib.suppress(AttributeError, OSError):
                os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
            self._file: IO[bytes] = os.fdopen(fd, "wb")
            self._owned = True
        else:
            self._file, self._owned = target, False
        self.snaplen = snaplen
        # Section Header Block: byte-order magic, version 1.0, length unknown.
        self._block(_PCAPNG_SHB, struct.pack("<IHHq", _PCAPNG_BOM, 1, 0, -1))
        # Interface Description Block: LINKTYPE_RAW; default if_tsresol (10^-6 s).
        self._block(_PCAPNG_IDB, struct.pack("<HHI", LINKTYPE_RAW, 0, snaplen))

    def _block(self, kind: int, body: bytes) -> None:
        padded = body + bytes(-len(body) % 4)
        length = len(padded) + 12
        self._file.write(struct.pack("<II", kind, length) + padded + struct.pack("<I", length))

    def write_ip(self, timestamp: float, packet: bytes) -> None:
        """One IP packet at Unix time *timestamp* (from 1970 on: pcapng's
        timestamps are unsigned; a time before, or not a number, raises
        :class:`CaptureFormatError` and writes nothing)."""
        micros = round(timestamp * 1_000_000) if math.isfinite(timestamp) else -1
        if not 0 <= micros < 2**64:
            raise CaptureFormatError(
                f"{_describe_time(timestamp)} is outside the times pcapng can hold (from 1970)"
            )
        captured = packet[: self.snaplen]
        high, low = micros >> 32, micros & 0xFFFFFFFF
        head = struct.pack("<IIIII", 0, high, low, len(captured), len(packet))
        self._block(_PCAPNG_EPB, head + captured)

    def write_secrets(self, keylog: str) -> None:
        """A Decryption Secrets Block holding *keylog* (``TYPE = base64``
        lines). Wireshark reads secrets as it meets them, so write them
        before the packets they open."""
        data = keylog.encode("ascii")
        self._block(_PCAPNG_DSB, struct.pack("<II", SECRETS_TYPE_WIREGUARD, len(data)) + data)

    def log_handshake(
        self,
        *,
        local_static_private: bytes | PrivateKey | DHPrivateKey,
        remote_static_public: bytes | PublicKey,
        local_ephemeral_private: bytes | PrivateKey | DHPrivateKey,
        preshared_key: bytes | PresharedKey | None = None,
    ) -> None:
        """What :meth:`KeyLogWriter.log_handshake` writes, as a secrets block
        of this capture: a tap writes it when the ephemeral key is made,
        before the initiation or response that uses it."""
        self.write_secrets(
            handshake_keylog(
                local_static_private=local_static_private,
                remote_static_public=remote_static_public,
                local_ephemeral_private=local_ephemeral_private,
                preshared_key=preshared_key,
            )
        )
        self._file.flush()

    def log_local_static_private_key(self, key: bytes | PrivateKey | DHPrivateKey) -> None:
        """A secrets block of the endpoint's static private key alone: what
        opens an initiation sent to it, before it has made an ephemeral key
        (a tap writes it first, so a session the peer starts opens too)."""
        self.write_secrets(_keylog_text([("LOCAL_STATIC_PRIVATE_KEY", key)]))
        self._file.flush()


# --- pcap and pcapng reader ------------------------------------------------------


class CapturedPacket(NamedTuple):
    """One packet of a capture, its link-layer header removed."""

    timestamp: float
    packet: bytes


def _strip_link_layer(linktype: int, frame: bytes) -> bytes | None:
    """The IP packet inside a link-layer frame, or None if it holds none."""
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, _LINKTYPE_RAW_12, _LINKTYPE_RAW_14):
        packet = frame
    elif linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            return None
        return _after_ethertype(frame, int.from_bytes(frame[12:14], "big"), 14)
    elif linktype == LINKTYPE_LINUX_SLL:
        if len(frame) < 16:
            return None
        return _after_ethertype(frame, int.from_bytes(frame[14:16], "big"), 16)
    elif linktype == LINKTYPE_LINUX_SLL2:
        if len(frame) < 20:
            return None
        return _after_ethertype(frame, int.from_bytes(frame[0:2], "big"), 20)
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        # The family value differs between systems (AF_INET6 is 10, 24, 28 or
        # 30); the IP version nibble below says the same thing portably.
        packet = frame[4:]
    else:
        return None
    if not packet or packet[0] >> 4 not in (4, 6):
        return None
    return bytes(packet)


def _after_ethertype(frame: bytes, ethertype: int, offset: int) -> bytes | None:
    """The IP packet at *offset* of *frame*, whose protocol is *ethertype*,
    after any VLAN tags (each a 2-byte TCI and the next ethertype). Linux
    cooked captures carry them too: libpcap puts the tag the kernel took off
    back in at the SLL header's protocol field, which then reads 0x8100, and
    an SLL2 frame holds one where the kernel left it in; Wireshark reads both."""
    while ethertype in _ETHERTYPE_VLAN and len(frame) >= offset + 4:
        ethertype = int.from_bytes(frame[offset + 2 : offset + 4], "big")
        offset += 4
    if ethertype not in (_ETHERTYPE_IPV4, _ETHERTYPE_IPV6):
        return None
    packet = frame[offset:]
    if not packet or packet[0] >> 4 not in (4, 6):
        return None
    return bytes(packet)


def _linktype_name(linktype: int) -> str:
    return _LINKTYPE_NAMES.get(linktype, str(linktype))


_MAX_BLOCK: Final = 16 * 1024 * 1024  # a sanity bound, as libpcap has one


@dataclass
class _Interface:
    linktype: int
    snaplen: int
    units_per_second: int = 1_000_000
    offset: int = 0


def _pcapng_interface(body: bytes, endian: str) -> _Interface:
    if len(body) < 8:
        raise CaptureFormatError("pcapng interface description block is too short")
    linktype, _, snaplen = struct.unpack_from(endian + "HHI", body)
    iface = _Interface(linktype, snaplen)
    pos = 8
    while pos + 4 <= len(body):
        code, length = struct.unpack_from(endian + "HH", body, pos)
        if pos + 4 + length > len(body):
            # As Wireshark refuses it ("option goes past the end of the block").
            raise CaptureFormatError(
                f"pcapng interface description block: option {code} overruns the block"
            )
        value = body[pos + 4 : pos + 4 + length]
        pos += 4 + length + (-length % 4)
        if code == 0:  # opt_endofopt
            break
        if code == 9 and length >= 1:  # if_tsresol
            resol = value[0]
            iface.units_per_second = 2 ** (resol & 0x7F) if resol & 0x80 else 10**resol
        elif code == 14 and length >= 8:  # if_tsoffset, seconds
            iface.offset = struct.unpack_from(endian + "q", value)[0]
    return iface


class PcapReader:
    """Read ``(timestamp, ip_packet)`` from a classic pcap or pcapng file.

    The format is recognised by its magic number, not its name: tshark and
    dumpcap write pcapng by default, tcpdump writes pcap. Frames that hold no IP
    packet (ARP, say) are passed over and counted in :attr:`skipped`.
    WireGuard key logs that a pcapng file carries in Decryption Secrets Blocks
    are collected in :attr:`secrets` as the reading reaches them."""

    def __init__(self, source: str | os.PathLike[str] | IO[bytes]) -> None:
        self.name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "capture"
        self._file, self._owned = _open_binary(source, "rb")
        self.skipped = 0
        self.frames = 0
        """Packet records read so far, skipped ones included: the number of the
        packet last yielded, counted as Wireshark counts ``frame.number``."""
        self.secrets: list[tuple[int, bytes]] = []
        """``(secrets type, data)`` of every Decryption Secrets Block read so far."""
        try:
            head = self._file.read(4)
            if len(head) < 4:
                raise CaptureFormatError(f"{self.name}: not a pcap or pcapng file (too short)")
            self.format: str
            self.linktype: int | None = None
            """The link type of a classic pcap file (pcapng has one per interface)."""
            if int.from_bytes(head, "big") == _PCAPNG_SHB:
                self.format = "pcapng"
                self._iter = self._pcapng_blocks(head)
            else:
                self.format = "pcap"
                self._iter = self._pcap(head)
        except BaseException:
            self.close()
            raise

    # classic pcap

    def _pcap(self, head: bytes) -> Iterator[CapturedPacket]:
        for endian in ("<", ">"):
            (magic,) = struct.unpack(endian + "I", head)
            if magic in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS):
                break
        else:
            raise CaptureFormatError(f"{self.name}: not a pcap or pcapng file")
        rest = self._file.read(20)
        if len(rest) < 20:
            raise CaptureCutShortError(f"{self.name}: pcap file header is cut short")
        _, _, _, _, _, network = struct.unpack(endian + "HHiIII", rest)
        # The upper bits of the link-type field carry FCS information.
        self.linktype = linktype = network & 0x03FFFFFF
        if linktype not in _LINKTYPE_NAMES:
            raise CaptureFormatError(
                f"{self.name}: link type {linktype} is not supported "
                "(raw IP, Ethernet, Linux cooked and loopback are)"
            )
        divisor = 1_000_000_000 if magic == _PCAP_MAGIC_NS else 1_000_000
        record = struct.Struct(endian + "IIII")
        return self._pcap_records(record, divisor, linktype)

    def _pcap_records(
        self, record: struct.Struct, divisor: int, linktype: int
    ) -> Iterator[CapturedPacket]:
        number = 0
        while True:
            header = self._file.read(16)
            if not header:
                return
            number += 1
            self.frames = number
            if len(header) < 16:
                raise CaptureCutShortError(
                    f"{self.name}: cut short in the header of packet {number}"
                )
            seconds, fraction, caplen, _ = record.unpack(header)
            if caplen > _MAX_BLOCK:
                raise CaptureFormatError(f"{self.name}: packet {number} claims {caplen} bytes")
            frame = self._file.read(caplen)
            if len(frame) < caplen:
                raise CaptureCutShortError(
                    f"{self.name}: cut short in the middle of packet {number}"
                )
            packet = _strip_link_layer(linktype, frame)
            if packet is None:
                self.skipped += 1
                continue
            yield CapturedPacket(seconds + fraction / divisor, packet)

    # pcapng

    def _pcapng_blocks(self, head: bytes | None) -> Iterator[CapturedPacket]:
        endian = "<"
        interfaces: list[_Interface | None] = []
        last_time = 0.0
        offset = 0  # of the block being read, for errors to say where
        while True:
            start = head if head is not None else self._file.read(4)
            head = None
            if not start:
                return
            rest = self._file.read(4)
            if len(start) < 4 or len(rest) < 4:
                raise CaptureCutShortError(f"{self.name}: pcapng file is cut short")
            if int.from_bytes(start, "big") == _PCAPNG_SHB:
                # A new section: its byte-order magic decides how to read it.
                bom = self._file.read(4)
                if len(bom) < 4:
                    raise CaptureCutShortError(f"{self.name}: pcapng file is cut short")
                if struct.unpack("<I", bom)[0] == _PCAPNG_BOM:
                    endian = "<"
                elif struct.unpack(">I", bom)[0] == _PCAPNG_BOM:
                    endian = ">"
                else:
                    raise CaptureFormatError(f"{self.name}: bad pcapng byte-order magic")
                interfaces = []
                (length,) = struct.unpack(endian + "I", rest)
                body_prefix = bom
                block_type = _PCAPNG_SHB
            else:
                (block_type,) = struct.unpack(endian + "I", start)
                (length,) = struct.unpack(endian + "I", rest)
                body_prefix = b""
            shortest = 28 if block_type == _PCAPNG_SHB else 12
            if length < shortest or length % 4 or length > _MAX_BLOCK:
                raise CaptureFormatError(
                    f"{self.name}: bad pcapng block length {length} at offset {offset}"
                )
            remaining = length - 12 - len(body_prefix)
            data = self._file.read(remaining + 4)
            if len(data) < remaining + 4:
                raise CaptureCutShortError(f"{self.name}: pcapng file is cut short")
            body = body_prefix + data[:remaining]
            (trailer,) = struct.unpack(endian + "I", data[remaining:])
            if trailer != length:
                # The two copies of the length disagree: one of them is wrong,
                # and what follows cannot be trusted (Wireshark: "damaged").
                raise CaptureFormatError(
                    f"{self.name}: pcapng block at offset {offset} gives its length as "
                    f"{length} at its start and {trailer} at its end"
                )
            where, offset = offset, offset + length
            if block_type == _PCAPNG_SHB:
                if len(body) < 8 or struct.unpack_from(endian + "H", body, 4)[0] != 1:
                    raise CaptureFormatError(f"{self.name}: unsupported pcapng version")
            elif block_type == _PCAPNG_IDB:
                try:
                    iface = _pcapng_interface(body, endian)
                except CaptureFormatError as exc:
                    raise CaptureFormatError(f"{self.name}: {exc} at offset {where}") from None
                interfaces.append(iface if iface.linktype in _LINKTYPE_NAMES else None)
            elif block_type in (_PCAPNG_EPB, _PCAPNG_OPB, _PCAPNG_SPB):
                self.frames += 1
                got = self._pcapng_packet(block_type, body, endian, interfaces, last_time)
                if got is None:
                    self.skipped += 1
                    continue
                last_time = got.timestamp
                yield got
            elif block_type == _PCAPNG_DSB:
                secrets_type, secrets_len = struct.unpack_from(endian + "II", body + bytes(8))
                if len(body) < 8 or 8 + secrets_len > len(body):
                    # Cut secrets would be a key log cut mid-line (Wireshark
                    # refuses the file).
                    raise CaptureFormatError(
                        f"{self.name}: decryption secrets block at offset {where} "
                        "overruns its block"
                    )
                self.secrets.append((secrets_type, bytes(body[8 : 8 + secrets_len])))
            # Other blocks (name resolution, statistics, custom) say nothing we use.

    def _pcapng_packet(
        self,
        block_type: int,
        body: bytes,
        endian: str,
        interfaces: list[_Interface | None],
        last_time: float,
    ) -> CapturedPacket | None:
        if block_type == _PCAPNG_SPB:
            # No interface id and no timestamp: interface 0, and the time of the
            # packet before it (the format leaves it unknown).
            if len(body) < 4 or not interfaces:
                raise CaptureFormatError(f"{self.name}: simple packet block before any interface")
            (origlen,) = struct.unpack_from(endian + "I", body)
            iface = interfaces[0]
            if iface is None:
                return None
            caplen = min(origlen, len(body) - 4, iface.snaplen or origlen)
            packet = _strip_link_layer(iface.linktype, body[4 : 4 + caplen])
            return None if packet is None else CapturedPacket(last_time, packet)
        if block_type == _PCAPNG_EPB:
            if len(body) < 20:
                raise CaptureFormatError(f"{self.name}: enhanced packet block is too short")
            iface_id, high, low, caplen, _ = struct.unpack_from(endian + "IIIII", body)
            start = 20
        else:  # obsolete packet block
            if len(body) < 20:
                raise CaptureFormatError(f"{self.name}: packet block is too short")
            iface_id, _, high, low, caplen, _ = struct.unpack_from(endian + "HHIIII", body)
            start = 20
        if iface_id >= len(interfaces):
            raise CaptureFormatError(f"{self.name}: packet on undeclared interface {iface_id}")
        iface = interfaces[iface_id]
        if iface is None:
            return None
        if start + caplen > len(body):
            raise CaptureFormatError(f"{self.name}: packet data overruns its block")
        whole, part = divmod((high << 32) | low, iface.units_per_second)
        timestamp = iface.offset + whole + part / iface.units_per_second
        packet = _strip_link_layer(iface.linktype, body[start : start + caplen])
        return None if packet is None else CapturedPacket(timestamp, packet)

    def __iter__(self) -> Iterator[CapturedPacket]:
        return self._iter

    def udp_datagrams(self) -> Iterator[UDPDatagram]:
        """The UDP datagrams of the capture (see :func:`udp_datagrams`)."""
        return udp_datagrams(self)

    def close(self) -> None:
        if self._owned:
            self._file.close()

    def __enter__(self) -> PcapReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- key log ---------------------------------------------------------------------

KeyLike = bytes | PrivateKey | PublicKey | PresharedKey | DHPrivateKey

_KEYLOG_TYPES: Final = (
    "LOCAL_STATIC_PRIVATE_KEY",
    "REMOTE_STATIC_PUBLIC_KEY",
    "LOCAL_EPHEMERAL_PRIVATE_KEY",
    "PRESHARED_KEY",
)


def _raw_key(key: KeyLike) -> bytes:
    raw = key.raw if isinstance(key, DHPrivateKey) else bytes(key)
    if len(raw) != KEY_LEN:
        raise KeyFormatError(f"a key is {KEY_LEN} bytes, got {len(raw)}")
    return raw


def _keylog_text(lines: Iterable[tuple[str, KeyLike]]) -> str:
    return "".join(
        f"{kind} = {base64.b64encode(_raw_key(key)).decode('ascii')}\n" for kind, key in lines
    )


def handshake_keylog(
    *,
    local_static_private: bytes | PrivateKey | DHPrivateKey,
    remote_static_public: bytes | PublicKey,
    local_ephemeral_private: bytes | PrivateKey | DHPrivateKey,
    preshared_key: bytes | PresharedKey | None = None,
) -> str:
    """The key log lines of one side of one handshake, in the order
    Wireshark's dissector needs them. An all-zero preshared key is left out:
    it is what "no preshared key" means, and the dissector tries it anyway."""
    lines: list[tuple[str, KeyLike]] = [
        ("LOCAL_STATIC_PRIVATE_KEY", local_static_private),
        ("REMOTE_STATIC_PUBLIC_KEY", remote_static_public),
        ("LOCAL_EPHEMERAL_PRIVATE_KEY", local_ephemeral_private),
    ]
    if preshared_key is not None and any(_raw_key(preshared_key)):
        lines.append(("PRESHARED_KEY", preshared_key))
    return _keylog_text(lines)


class KeyLogWriter:
    """Append secrets to a key log in the format of Wireshark's WireGuard
    dissector (preference ``wg.keylog_file``) and of the kernel's
    ``contrib/extract-handshakes``: one ``TYPE = base64`` line per key.

    What Wireshark needs to decrypt a session, from one side's log alone
    (``packet-wireguard.c``, ``wg_process_initiation`` and
    ``wg_process_response``):

    - initiator's log: its static private key, the responder's static public
      key (found by mac1), its ephemeral private key;
    - responder's log: its static private key and its ephemeral private key;
    - either way the preshared key, if one is set, written *after* the
      ephemeral key of the same handshake: the dissector ties each
      ``PRESHARED_KEY`` line to the ``LOCAL_EPHEMERAL_PRIVATE_KEY`` line before
      it, and tries the all-zero key by itself.

    :meth:`log_handshake` writes one handshake's lines in that order. Each
    write is flushed, because Wireshark re-reads a growing key log while it
    captures. The file is created with mode 0600 and opened without following
    a symbolic link, since it holds private keys."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags, 0o600)
        # An existing file keeps its mode on open; a key log must not be
        # readable by others whatever it was before (fchmod is POSIX only).
        with contextlib.suppress(AttributeError, OSError):
            os.fchmod(fd, 0o600)
        self.path = os.fspath(path)
        self._file = os.fdopen(fd, "a", encoding="ascii", newline="\n")

    def _write(self, lines: Iterable[tuple[str, KeyLike]]) -> None:
        self._file.write(_keylog_text(lines))
        self._file.flush()

    def log_local_static_private_key(self, key: bytes | PrivateKey | DHPrivateKey) -> None:
        self._write([("LOCAL_STATIC_PRIVATE_KEY", key)])

    def log_remote_static_public_key(self, key: bytes | PublicKey) -> None:
        self._write([("REMOTE_STATIC_PUBLIC_KEY", key)])

    def log_local_ephemeral_private_key(self, key: bytes | PrivateKey | DHPrivateKey) -> None:
        self._write([("LOCAL_EPHEMERAL_PRIVATE_KEY", key)])

    def log_preshared_key(self, key: bytes | PresharedKey) -> None:
        """Log a preshared key; Wireshark ties it to the ephemeral key logged
        just before, so log that first (or use :meth:`log_handshake`)."""
        self._write([("PRESHARED_KEY", key)])

    def log_handshake(
        self,
        *,
        local_static_private: bytes | PrivateKey | DHPrivateKey,
        remote_static_public: bytes | PublicKey,
        local_ephemeral_private: bytes | PrivateKey | DHPrivateKey,
        preshared_key: bytes | PresharedKey | None = None,
    ) -> None:
        """Everything one side knows of one handshake, in the order the
        dissector needs (see :func:`handshake_keylog`)."""
        self._file.write(
            handshake_keylog(
                local_static_private=local_static_private,
                remote_static_public=remote_static_public,
                local_ephemeral_private=local_ephemeral_private,
                preshared_key=preshared_key,
            )
        )
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> KeyLogWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass
class KeyLog:
    """The keys of a key log, grouped as Wireshark groups them."""

    static_private: list[bytes] = field(default_factory=list)
    remote_static_public: list[bytes] = field(default_factory=list)
    ephemeral_private: list[bytes] = field(default_factory=list)
    psk_by_ephemeral: dict[bytes, list[bytes]] = field(default_factory=dict)
    """Preshared keys by the *public* key of the ephemeral logged before them."""
    orphan_psks: list[bytes] = field(default_factory=list)
    """Preshared keys with no ephemeral key before them (Wireshark ignores
    these; a decryptor may still try them)."""

    def __len__(self) -> int:
        return (
            len(self.static_private)
            + len(self.remote_static_public)
            + len(self.ephemeral_private)
            + sum(len(v) for v in self.psk_by_ephemeral.values())
            + len(self.orphan_psks)
        )


def _keylog_entries(text: str, name: str) -> Iterator[tuple[str, bytes]]:
    """``(type, key)`` of each key line of *text*, in order."""
    for number, line in enumerate(text.splitlines(), 1):
        kind, sep, value = line.strip(" \r\t").partition("=")
        kind = kind.strip(" ")
        if not sep or kind not in _KEYLOG_TYPES:
            continue
        try:
            raw = PublicKey.from_base64(value.strip(" ")).raw
        except KeyFormatError as exc:
            raise CaptureFormatError(f"{name}, line {number}: {kind}: {exc}") from None
        yield kind, raw


def canonical_keylog(text: str, *, name: str = "key log") -> str:
    """The key lines of *text* (as :func:`parse_keylog` reads them), in their
    order, each written ``TYPE = base64`` as Wireshark reads it.

    :func:`parse_keylog` is more lenient than Wireshark: it also takes tabs
    and trailing spaces, which make Wireshark ignore a line. A key log copied
    into a capture for Wireshark to read is written this way instead."""
    return _keylog_text(_keylog_entries(text, name))


def parse_keylog(text: str, *, name: str = "key log") -> KeyLog:
    """Parse a key log as Wireshark does: ``TYPE = base64`` per line, leading
    spaces and spaces around ``=`` ignored, other lines (such as the
    ``New handshake session:`` headers of ``extract-handshakes.sh``) skipped.

    Unlike Wireshark, a line of a known type whose key does not decode is an
    error naming the line, because silently dropping it is how a wrong paste
    turns into an afternoon of "why does nothing decrypt"."""
    log = KeyLog()
    last_ephemeral_public: bytes | None = None
    for kind, raw in _keylog_entries(text, name):
        if kind == "LOCAL_STATIC_PRIVATE_KEY":
            log.static_private.append(raw)
        elif kind == "REMOTE_STATIC_PUBLIC_KEY":
            log.remote_static_public.append(raw)
        elif kind == "LOCAL_EPHEMERAL_PRIVATE_KEY":
            log.ephemeral_private.append(raw)
            last_ephemeral_public = DHPrivateKey(raw).public
        elif last_ephemeral_public is not None:
            log.psk_by_ephemeral.setdefault(last_ephemeral_public, []).append(raw)
            last_ephemeral_public = None
        else:
            log.orphan_psks.append(raw)
    return log


def read_keylog(path: str | os.PathLike[str]) -> KeyLog:
    """Read and parse the key log at *path*."""
    with open(path, encoding="ascii", errors="replace") as f:
        return parse_keylog(f.read(), name=os.fspath(path))
