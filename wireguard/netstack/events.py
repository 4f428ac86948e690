"""What the stack tells the application, as typed events (the h11/aioquic style).

The stack queues these while it processes packets and timers; a binding drains
them with :meth:`NetStack.next_event` after each call and reacts (wakes a
reader, resumes a writer, accepts a connection). Readiness events are edge
triggered: :class:`TcpReadable` comes when data or end-of-stream becomes
available after the buffer was drained, so a binding must read until
``receive()`` returns nothing, as with epoll's EPOLLET.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tcp import TcpConnection, TcpListener
    from .udp import UdpSocket

__all__ = [
    "EchoReplyReceived",
    "Event",
    "TcpClosed",
    "TcpEstablished",
    "TcpIncoming",
    "TcpReadable",
    "TcpWritable",
    "UdpReadable",
]


class Event:
    """Base class of every event."""

    __slots__ = ()


@dataclass(slots=True)
class TcpEstablished(Event):
    """The three-way handshake completed (RFC 9293 3.5): send and receive may start."""

    conn: TcpConnection


@dataclass(slots=True)
class TcpReadable(Event):
    """Data, or the peer's FIN (``conn.at_eof``), can be read with ``receive()``."""

    conn: TcpConnection


@dataclass(slots=True)
class TcpWritable(Event):
    """A ``send()`` was short earlier and the send buffer has room again."""

    conn: TcpConnection


@dataclass(slots=True)
class TcpClosed(Event):
    """The connection is gone from the application's point of view.

    *error* is None after an orderly close, else the reason: reset by the peer,
    refused, or timed out after too many retransmissions.
    """

    conn: TcpConnection
    error: Exception | None


@dataclass(slots=True)
class TcpIncoming(Event):
    """A listener's accept queue became non-empty."""

    listener: TcpListener


@dataclass(slots=True)
class UdpReadable(Event):
    """A UDP socket's receive queue became non-empty."""

    socket: UdpSocket


@dataclass(slots=True)
class EchoReplyReceived(Event):
    """An ICMP or ICMPv6 echo reply to one of our echo requests."""

    src: str
    ident: int
    seq: int
    data: bytes
    time: float
