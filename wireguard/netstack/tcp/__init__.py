"""TCP (RFC 9293), sans-I/O: the connection's state machine and its parts,
one module each (see :mod:`.connection` for what is implemented)."""

from .config import TcpConfig
from .connection import (
    ConnectionRefused,
    ConnectionReset,
    ConnectionTimedOut,
    IcmpConnectionError,
    TcpClosed,
    TcpConnection,
    TcpConnectionError,
    TcpEstablished,
    TcpReadable,
    TcpState,
    TcpWritable,
)
from .listener import TcpIncoming, TcpListener
from .segment import ACK, FIN, PSH, RST, SYN, URG, SegmentBuilder, TcpSegment, parse_tcp

__all__ = [
    "ACK", "FIN", "PSH", "RST", "SYN", "URG",
    "ConnectionRefused", "ConnectionReset", "ConnectionTimedOut", "IcmpConnectionError",
    "SegmentBuilder",
    "TcpClosed", "TcpConfig", "TcpConnection", "TcpConnectionError", "TcpEstablished",
    "TcpIncoming", "TcpListener", "TcpReadable", "TcpSegment", "TcpState", "TcpWritable",
    "parse_tcp",
]  # fmt: skip
