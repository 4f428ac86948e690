"""The four wire messages (whitepaper section 5.4): parse and pack.

Every message starts with a one-byte type and three reserved zero bytes, which
little-endian readers see as one 32-bit type word. All integers are little
endian. A wrong size, an unknown type or a non-zero reserved byte raises
:class:`~wireguard.errors.MessageFormatError`, nothing else.

=================  =====  ===============================================
message            bytes  layout
=================  =====  ===============================================
initiation         148    type, sender, ephemeral(32), static(48),
                          timestamp(28), mac1(16), mac2(16)
response            92    type, sender, receiver, ephemeral(32),
                          empty(16), mac1(16), mac2(16)
cookie reply        64    type, receiver, nonce(24), cookie(32)
transport data     >=32   type, receiver, counter(8), packet(+16)
=================  =====  ===============================================
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from .constants import (
    COOKIE_REPLY_LEN,
    INITIATION_LEN,
    MAC_LEN,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT_DATA,
    RESPONSE_LEN,
    TRANSPORT_HEADER_LEN,
    TRANSPORT_MIN_LEN,
)
from .errors import MessageFormatError

_u32 = struct.Struct("<I")
_head = struct.Struct("<II")  # type word, one index
_transport_head = struct.Struct("<IIQ")
_response_head = struct.Struct("<III")

MAC1_OFFSET_INITIATION = INITIATION_LEN - 2 * MAC_LEN  # 116
MAC1_OFFSET_RESPONSE = RESPONSE_LEN - 2 * MAC_LEN  # 60


def _check_index(name: str, value: int) -> None:
    if not 0 <= value < 2**32:
        raise MessageFormatError(f"{name} {value} does not fit in 32 bits")


@dataclass(frozen=True, slots=True)
class Initiation:
    sender_index: int
    unencrypted_ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes = bytes(MAC_LEN)
    mac2: bytes = bytes(MAC_LEN)

    @property
    def noise_body(self) -> bytes:
        """The Noise message 1: ephemeral || static || timestamp (108 bytes)."""
        return self.unencrypted_ephemeral + self.encrypted_static + self.encrypted_timestamp

    def pack(self) -> bytes:
        _check_index("sender index", self.sender_index)
        out = (
            _head.pack(MESSAGE_INITIATION, self.sender_index)
            + self.noise_body
            + self.mac1
            + self.mac2
        )
        if len(out) != INITIATION_LEN:
            raise MessageFormatError("initiation fields have the wrong sizes")
        return out

    @classmethod
    def parse(cls, data: bytes) -> Initiation:
        if len(data) != INITIATION_LEN:
            raise MessageFormatError(f"initiation is {INITIATION_LEN} bytes, got {len(data)}")
        kind, sender = _head.unpack_from(data)
        if kind != MESSAGE_INITIATION:
            raise MessageFormatError("not an initiation (type or reserved bytes)")
        data = bytes(data)
        return cls(sender, data[8:40], data[40:88], data[88:116], data[116:132], data[132:148])


@dataclass(frozen=True, slots=True)
class Response:
    sender_index: int
    receiver_index: int
    unencrypted_ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes = bytes(MAC_LEN)
    mac2: bytes = bytes(MAC_LEN)

    @property
    def noise_body(self) -> bytes:
        """The Noise message 2: ephemeral || empty payload's tag (48 bytes)."""
        return self.unencrypted_ephemeral + self.encrypted_nothing

    def pack(self) -> bytes:
        _check_index("sender index", self.sender_index)
        _check_index("receiver index", self.receiver_index)
        out = (
            _response_head.pack(MESSAGE_RESPONSE, self.sender_index, self.receiver_index)
            + self.noise_body
            + self.mac1
            + self.mac2
        )
        if len(out) != RESPONSE_LEN:
            raise MessageFormatError("response fields have the wrong sizes")
        return out

    @classmethod
    def parse(cls, data: bytes) -> Response:
        if len(data) != RESPONSE_LEN:
            raise MessageFormatError(f"response is {RESPONSE_LEN} bytes, got {len(data)}")
        kind, sender, receiver = _response_head.unpack_from(data)
        if kind != MESSAGE_RESPONSE:
            raise MessageFormatError("not a response (type or reserved bytes)")
        data = bytes(data)
        return cls(sender, receiver, data[12:44], data[44:60], data[60:76], data[76:92])


@dataclass(frozen=True, slots=True)
class CookieReply:
    receiver_index: int
    nonce: bytes
    encrypted_cookie: bytes

    def pack(self) -> bytes:
        _check_index("receiver index", self.receiver_index)
        out = (
            _head.pack(MESSAGE_COOKIE_REPLY, self.receiver_index)
            + self.nonce
            + self.encrypted_cookie
        )
        if len(out) != COOKIE_REPLY_LEN:
            raise MessageFormatError("cookie reply fields have the wrong sizes")
        return out

    @classmethod
    def parse(cls, data: bytes) -> CookieReply:
        if len(data) != COOKIE_REPLY_LEN:
            raise MessageFormatError(f"cookie reply is {COOKIE_REPLY_LEN} bytes, got {len(data)}")
        kind, receiver = _head.unpack_from(data)
        if kind != MESSAGE_COOKIE_REPLY:
            raise MessageFormatError("not a cookie reply (type or reserved bytes)")
        data = bytes(data)
        return cls(receiver, data[8:32], data[32:64])


@dataclass(frozen=True, slots=True)
class TransportData:
    receiver_index: int
    counter: int
    encrypted_packet: bytes

    def pack(self) -> bytes:
        _check_index("receiver index", self.receiver_index)
        if not 0 <= self.counter < 2**64:
            raise MessageFormatError("counter does not fit in 64 bits")
        if len(self.encrypted_packet) < TRANSPORT_MIN_LEN - TRANSPORT_HEADER_LEN:
            raise MessageFormatError("encrypted packet shorter than its tag")
        return pack_transport_header(self.receiver_index, self.counter) + self.encrypted_packet

    @classmethod
    def parse(cls, data: bytes) -> TransportData:
        receiver, counter = parse_transport_header(data)
        return cls(receiver, counter, bytes(data[TRANSPORT_HEADER_LEN:]))


def pack_transport_header(receiver_index: int, counter: int) -> bytes:
    """The 16-byte header of a transport data message (hot path: no checks
    beyond what :mod:`struct` does)."""
    return _transport_head.pack(MESSAGE_TRANSPORT_DATA, receiver_index, counter)


def parse_transport_header(data: bytes) -> tuple[int, int]:
    """(receiver index, counter) of a transport data message."""
    if len(data) < TRANSPORT_MIN_LEN:
        raise MessageFormatError(
            f"transport data is at least {TRANSPORT_MIN_LEN} bytes, got {len(data)}"
        )
    kind, receiver, counter = _transport_head.unpack_from(data)
    if kind != MESSAGE_TRANSPORT_DATA:
        raise MessageFormatError("not transport data (type or reserved bytes)")
    return receiver, counter


Message = Initiation | Response | CookieReply | TransportData

_PARSERS: dict[int, Callable[[bytes], Message]] = {
    MESSAGE_INITIATION: Initiation.parse,
    MESSAGE_RESPONSE: Response.parse,
    MESSAGE_COOKIE_REPLY: CookieReply.parse,
    MESSAGE_TRANSPORT_DATA: TransportData.parse,
}


def message_type(data: bytes) -> int:
    """The type of a datagram, checking that the three reserved bytes are zero."""
    if len(data) < 4:
        raise MessageFormatError(f"a message is at least 4 bytes, got {len(data)}")
    word: int = _u32.unpack_from(data)[0]
    if word not in _PARSERS:
        raise MessageFormatError(f"unknown message type word {word:#010x}")
    return word


def parse(data: bytes) -> Message:
    """Parse any WireGuard datagram into its message object."""
    return _PARSERS[message_type(data)](data)
