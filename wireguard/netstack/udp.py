"""UDP (RFC 768): datagrams to and from bound ports."""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Final

from ..errors import LocalProtocolError
from ..ipheader import IPPROTO_UDP
from .context import Context
from .events import Event
from .icmp import IcmpError
from .ip import (
    IPPacket,
    MalformedPacketError,
    addr_bytes,
    addr_str,
    build_ip,
    checksum,
    pseudo_header_sum,
    verify_checksum,
)

__all__ = [
    "MAX_UDP_PAYLOAD_V4",
    "MAX_UDP_PAYLOAD_V6",
    "UdpError",
    "UdpReadable",
    "UdpSocket",
    "build_udp",
    "parse_udp",
]

_HDR = struct.Struct("!HHHH")

# The largest UDP payloads (what Linux's udp_sendmsg refuses with EMSGSIZE
# above): an IPv4 packet's 65,535 octets less its header and UDP's, and the
# 65,535 octets of an IPv6 payload less UDP's header.
MAX_UDP_PAYLOAD_V4: Final = 65535 - 20 - 8
MAX_UDP_PAYLOAD_V6: Final = 65535 - 8

DEFAULT_UDP_QUEUE: Final = 512
"""Datagrams a socket holds before dropping new ones (like a full SO_RCVBUF)."""


def parse_udp(packet: IPPacket) -> tuple[int, int, bytes]:
    """``(source port, destination port, data)`` of a checksum-verified datagram.

    An IPv4 checksum of zero means the sender did not compute one (RFC 768); in
    IPv6 the checksum is mandatory (RFC 8200 section 8.1) and zero is an error.
    """
    data = packet.payload
    if len(data) < 8:
        raise MalformedPacketError("UDP header truncated")
    sport, dport, length, csum = _HDR.unpack_from(data)
    if length < 8 or length > len(data):
        raise MalformedPacketError("UDP length inconsistent")
    data = data[:length]
    if csum == 0:
        if packet.version == 6:
            raise MalformedPacketError("UDP over IPv6 without checksum")
    elif not verify_checksum(data, pseudo_header_sum(packet.src, packet.dst, IPPROTO_UDP, length)):
        raise MalformedPacketError("UDP checksum mismatch")
    return sport, dport, data[8:]


def build_udp(src: bytes, dst: bytes, sport: int, dport: int, data: bytes) -> bytes:
    """A whole IP packet carrying one UDP datagram with its checksum."""
    length = 8 + len(data)
    csum = checksum(
        _HDR.pack(sport, dport, length, 0) + data,
        pseudo_header_sum(src, dst, IPPROTO_UDP, length),
    )
    return build_ip(src, dst, IPPROTO_UDP, _HDR.pack(sport, dport, length, csum) + data)


@dataclass(slots=True)
class UdpReadable(Event):
    """A UDP socket's receive queue became non-empty."""

    socket: UdpSocket


@dataclass(slots=True)
class UdpError(Event):
    """An ICMP error about a datagram this connected socket sent to its peer
    (Linux sets sk_err for it: ``errno`` ECONNREFUSED for port unreachable,
    ...), as asyncio reports it to a connected endpoint's ``error_received``."""

    socket: UdpSocket
    errno: int


class UdpSocket:
    """A UDP port bound on the stack: ``sendto`` and ``recvfrom``, never blocking.

    Received datagrams wait in a bounded queue; when it is full new ones are
    dropped and counted (in :attr:`dropped` and the stack's
    ``udp_queue_overflows``), as a kernel does when the socket buffer is full.
    """

    def __init__(self, ctx: Context, addr: bytes | None, port: int, queue_limit: int) -> None:
        self._ctx = ctx
        self.addr = addr  # None: all of the stack's addresses
        self.port = port
        self._queue: deque[tuple[bytes, tuple[str, int]]] = deque()
        self._queue_limit = queue_limit
        self.dropped = 0
        self.closed = False
        self.peer: tuple[bytes, int] | None = None  # set by connect()

    @property
    def local_address(self) -> tuple[str, int]:
        """The bound (address, port); the address is "" when bound to all of ours."""
        return (addr_str(self.addr) if self.addr else "", self.port)

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        """Queue one datagram to *address*; return its length.

        A datagram larger than the path MTU leaves in IP fragments, as from
        a kernel's UDP socket; one too large for any IP packet (more than
        65,507 octets over IPv4, 65,527 over IPv6) is refused, as the
        kernel refuses it with EMSGSIZE.
        """
        if self.closed:
            raise LocalProtocolError("socket is closed")
        dst = addr_bytes(address[0])
        port = address[1]
        if not 0 < port < 65536:
            raise LocalProtocolError(f"invalid port {port}")
        src = self.addr or self._ctx.source_address(dst)
        if len(src) != len(dst):
            raise LocalProtocolError("address family mismatch")
        largest = MAX_UDP_PAYLOAD_V4 if len(dst) == 4 else MAX_UDP_PAYLOAD_V6
        if len(data) > largest:
            raise LocalProtocolError(
                f"datagram of {len(data)} bytes exceeds the largest UDP datagram ({largest})"
            )
        self._ctx.emit_datagram(build_udp(src, dst, self.port, port, bytes(data)))
        return len(data)

    def connect(self, address: tuple[str, int]) -> None:
        """Name the socket's one peer, as ``connect()`` on a kernel UDP socket
        does for its errors: hard ICMP errors about datagrams to *address*
        come as :class:`UdpError` events (an unconnected socket hears none,
        as in Linux without IP_RECVERR). Sending and receiving are unchanged."""
        dst = addr_bytes(address[0])
        if not 0 < address[1] < 65536:
            raise LocalProtocolError(f"invalid port {address[1]}")
        self.peer = (dst, address[1])

    def recvfrom(self) -> tuple[bytes, tuple[str, int]] | None:
        """The oldest received datagram and its sender, or None if there is none."""
        if self._queue:
            return self._queue.popleft()
        return None

    @property
    def pending(self) -> int:
        """How many datagrams wait in the receive queue."""
        return len(self._queue)

    def close(self) -> None:
        """Unbind the port; queued datagrams are discarded (counted in the
        stack's ``udp_closed_unread``)."""
        if not self.closed:
            self.closed = True
            self._ctx.stats.udp_closed_unread += len(self._queue)
            self._queue.clear()
            self._ctx.closed(self)

    def deliver(self, data: bytes, src: bytes, sport: int) -> None:
        """A datagram for this socket came (the stack's side)."""
        if len(self._queue) >= self._queue_limit:
            self.dropped += 1
            self._ctx.stats.udp_queue_overflows += 1
            return
        was_empty = not self._queue
        self._queue.append((data, (addr_str(src), sport)))
        if was_empty:
            self._ctx.notify(UdpReadable(self))

    def icmp_error(self, error: IcmpError, dst: bytes, dport: int) -> bool:
        """An ICMP error quoting a datagram of ours to *dst*:*dport* came (the
        stack's side). Linux's __udp4_lib_err / __udp6_lib_err: only a hard
        error, and only to a connected socket whose peer it names. True if
        it was reported."""
        if self.closed or not error.fatal or self.peer != (dst, dport):
            return False
        self._ctx.notify(UdpError(self, error.errno))
        return True
