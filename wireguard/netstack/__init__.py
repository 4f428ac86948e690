"""A userspace, sans-I/O TCP/IP stack: reach services through a tunnel without a TUN device.

The tunnel hands over raw IP packets; :class:`NetStack` turns them into TCP
connections, UDP sockets and pings, and back into IP packets. Like the rest of
this package it never does I/O: time is an argument, randomness is injected,
and every call returns its effects (packets for the tunnel, events for the
application) in the Device's shape. The asyncio binding (``open_connection``
/ ``start_server`` over a :class:`NetStack`) is :mod:`wireguard.io.stackdriver`.

Layers (lower never imports higher): ``ip`` (IPv4/IPv6 and checksums), ``icmp``,
``events`` and ``context`` (what the stack lends its sockets: time, randomness,
callbacks), ``udp``, ``tcp`` (RFC 9293: the segment, RTT estimation,
congestion control, SACK, reassembly, timers, the connection's state machine,
listeners), ``stack`` (demultiplexing, timers, socket tables).

Why not an existing package: PyTCP (``pytcp`` on PyPI, the only maintained
pure-Python TCP/IP stack) was checked. Its TCP session runs on threads,
semaphores and a global stack object with its own timer thread, draws ISNs from
:mod:`random`, and expects a TAP/TUN device; it is GPL-3.0 while this project is
MIT. Its packet parsers could be lifted, but the protocol logic is not sans-I/O
and not importable as a library core, so the stack is written here, to the RFCs
cited in each module.
"""

from ..errors import LocalProtocolError
from .context import NetStackStats
from .events import EchoReplyReceived, Event
from .ip import MalformedPacketError, NetstackError
from .stack import NetStack, StackEffects
from .tcp import (
    ConnectionRefused,
    ConnectionReset,
    ConnectionTimedOut,
    IcmpConnectionError,
    TcpClosed,
    TcpConfig,
    TcpConnection,
    TcpConnectionError,
    TcpEstablished,
    TcpIncoming,
    TcpListener,
    TcpReadable,
    TcpState,
    TcpWritable,
)
from .udp import UdpError, UdpReadable, UdpSocket

__all__ = [
    "ConnectionRefused",
    "ConnectionReset",
    "ConnectionTimedOut",
    "EchoReplyReceived",
    "Event",
    "IcmpConnectionError",
    "LocalProtocolError",
    "MalformedPacketError",
    "NetStack",
    "NetStackStats",
    "NetstackError",
    "StackEffects",
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
    "UdpError",
    "UdpReadable",
    "UdpSocket",
]
