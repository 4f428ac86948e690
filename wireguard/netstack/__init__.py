"""A userspace, sans-I/O TCP/IP stack: reach services through a tunnel without a TUN device.

The tunnel hands over raw IP packets; :class:`NetStack` turns them into TCP
connections, UDP sockets and pings, and back into IP packets. Like the rest of
this package it never does I/O: time is an argument, randomness is injected,
and :mod:`wireguard.netstack.aio` is the asyncio binding (``open_connection`` /
``start_server`` over a :class:`NetStack`).

Layers (lower never imports higher): ``ip`` (IPv4/IPv6 and checksums), ``icmp``,
``udp``, ``tcp`` (RFC 9293 state machine), ``stack`` (demultiplexing, timers,
sockets), ``aio`` (asyncio streams).

Why not an existing package: PyTCP (``pytcp`` on PyPI, the only maintained
pure-Python TCP/IP stack) was checked. Its TCP session runs on threads,
semaphores and a global stack object with its own timer thread, draws ISNs from
:mod:`random`, and expects a TAP/TUN device; it is GPL-3.0 while this project is
MIT. Its packet parsers could be lifted, but the protocol logic is not sans-I/O
and not importable as a library core, so the stack is written here, to the RFCs
cited in each module.
"""

from ..errors import LocalProtocolError
from .events import (
    EchoReplyReceived,
    Event,
    TcpClosed,
    TcpEstablished,
    TcpIncoming,
    TcpReadable,
    TcpWritable,
    UdpReadable,
)
from .ip import MalformedPacketError, NetstackError
from .stack import NetStack, NetStackStats
from .tcp import (
    ConnectionRefused,
    ConnectionReset,
    ConnectionTimedOut,
    TcpConfig,
    TcpConnection,
    TcpConnectionError,
    TcpListener,
    TcpState,
)
from .udp import UdpSocket

__all__ = [
    "ConnectionRefused",
    "ConnectionReset",
    "ConnectionTimedOut",
    "EchoReplyReceived",
    "Event",
    "LocalProtocolError",
    "MalformedPacketError",
    "NetStack",
    "NetStackStats",
    "NetstackError",
    "TcpClosed",
    "TcpConfig",
    "TcpConnection",
    "TcpConnectionError",
    "TcpEstablished",
    "TcpIncoming",
    "TcpListener",
    "TcpReadable",
    "TcpState",
    "TcpWritable",
    "UdpReadable",
    "UdpSocket",
]
