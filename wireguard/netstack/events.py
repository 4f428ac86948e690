"""What the stack tells the application, as typed events (the h11/aioquic style).

Every call of the stack hands over the events it caused (in
:attr:`~wireguard.netstack.stack.StackEffects.events`, in order); a binding
reacts to each (wakes a reader, resumes a writer, accepts a connection).
Each event is defined by the module of the socket that raises it:
:class:`~.tcp.connection.TcpEstablished`, :class:`~.tcp.connection.TcpReadable`,
:class:`~.tcp.connection.TcpWritable`, :class:`~.tcp.connection.TcpClosed`,
:class:`~.tcp.listener.TcpIncoming`, :class:`~.udp.UdpReadable` and
:class:`~.udp.UdpError` (an ICMP error for a connected UDP socket); the
stack's own is :class:`EchoReplyReceived`. All but :class:`~.udp.UdpError`
are importable from :mod:`wireguard.netstack` (it is in :mod:`~.udp`).

Readiness events are edge triggered: :class:`~.tcp.connection.TcpReadable`
comes when data or end-of-stream becomes available after the buffer was
drained, so a binding must read until ``receive()`` returns nothing, as with
epoll's EPOLLET.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EchoReplyReceived", "Event"]


class Event:
    """Base class of every event."""

    __slots__ = ()


@dataclass(slots=True)
class EchoReplyReceived(Event):
    """An ICMP or ICMPv6 echo reply to one of our echo requests."""

    src: str
    ident: int
    seq: int
    data: bytes
    time: float
