"""A pure-Python, sans-I/O implementation of the WireGuard protocol."""

from .errors import (
    AddressFormatError,
    CaptureCutShortError,
    CaptureFormatError,
    DecryptionError,
    HandshakeError,
    InvalidDHError,
    KeyFormatError,
    LocalProtocolError,
    MacError,
    MessageFormatError,
    RemoteProtocolError,
    ReplayError,
    WireGuardError,
)
from .keys import PresharedKey, PrivateKey, PublicKey

__all__ = [
    "AddressFormatError",
    "CaptureCutShortError",
    "CaptureFormatError",
    "DecryptionError",
    "HandshakeError",
    "InvalidDHError",
    "KeyFormatError",
    "LocalProtocolError",
    "MacError",
    "MessageFormatError",
    "PresharedKey",
    "PrivateKey",
    "PublicKey",
    "RemoteProtocolError",
    "ReplayError",
    "WireGuardError",
]
