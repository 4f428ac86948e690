"""The project's error types.

As in h11, errors are split by who is at fault: :class:`LocalProtocolError`
means the caller asked for something the protocol cannot do, everything under
:class:`RemoteProtocolError` means the bytes that arrived are not acceptable.
Every parser and every check raises only these (never ``IndexError``,
``struct.error`` or a library's own exception), so a binding can catch one type,
count the drop and carry on.
"""

from __future__ import annotations


class WireGuardError(Exception):
    """Base class of every error this package raises on purpose."""


class LocalProtocolError(WireGuardError):
    """The local side asked for something invalid (bad key, wrong state, ...)."""


class KeyFormatError(LocalProtocolError, ValueError):
    """A key is not 32 bytes or not valid base64 of 32 bytes."""


class AddressFormatError(LocalProtocolError, ValueError):
    """An address or prefix given to the allowed-IPs table is malformed (bad
    text, wrong length, prefix length out of range)."""


class CaptureFormatError(WireGuardError, ValueError):
    """A capture or key log file is not in a format we read, or is cut short.
    (Neither side's protocol fault: a file on disk.)"""


class CaptureCutShortError(CaptureFormatError):
    """A capture file ends in the middle of a header or a packet (a capture
    still being written, or a writer that was killed): what came before it
    is good."""


class RemoteProtocolError(WireGuardError):
    """What the remote side sent cannot be accepted."""


class MessageFormatError(RemoteProtocolError):
    """Wrong size, unknown type or non-zero reserved bytes."""


class DecryptionError(RemoteProtocolError):
    """An AEAD tag did not verify."""


class InvalidDHError(RemoteProtocolError):
    """A Diffie-Hellman result was all zeros (a low-order point)."""


class MacError(RemoteProtocolError):
    """mac1 or mac2 did not verify."""


class HandshakeError(RemoteProtocolError):
    """A handshake message was well formed but is not acceptable
    (unknown peer, replayed or stale timestamp, wrong state)."""


class ReplayError(RemoteProtocolError):
    """A transport counter was already seen or is too old."""
