"""A transport keypair (whitepaper section 5.4.6): the two keys a handshake
derived, counters, padding, encrypt, decrypt, age and limits.

The hot path of the library lives here, so it is written for it: one
ChaCha20-Poly1305 object per direction for the life of the keypair, the
header packed with one struct call, and the replay window checked before
the tag (cheap rejection) but updated only after the tag verified (a forged
packet must not move the window).
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .constants import (
    MESSAGE_PADDING_MULTIPLE,
    MESSAGE_TRANSPORT_DATA,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    TRANSPORT_HEADER_LEN,
    TRANSPORT_MIN_LEN,
)
from .errors import DecryptionError, LocalProtocolError, MessageFormatError, ReplayError
from .handshake import HandshakeResult
from .replay import ReplayWindow

_header = struct.Struct("<IIQ")
_pack_header = _header.pack
_unpack_header = _header.unpack_from
_nonce = struct.Struct("<4xQ").pack  # 32 zero bits, then the 64-bit LE counter
_ZEROS = bytes(MESSAGE_PADDING_MULTIPLE)


class KeypairExhausted(LocalProtocolError):
    """The keypair may not send any more (too old or too many messages)."""


def padded_length(length: int, mtu: int | None = None) -> int:
    """Plaintext is zero-padded to a multiple of 16, but never beyond the MTU
    (kernel send.c ``calculate_skb_padding``), so padding cannot make a packet
    that fits the tunnel too big for it."""
    padded = -(-length // MESSAGE_PADDING_MULTIPLE) * MESSAGE_PADDING_MULTIPLE
    if mtu is not None and padded > mtu >= length:
        return mtu
    return padded


class Keypair:
    """One direction pair of transport keys, with its indices and birthdate.

    ``local_index`` is the receiver index the peer puts on what it sends us;
    ``remote_index`` the one we put on what we send."""

    __slots__ = (
        "created",
        "is_initiator",
        "local_index",
        "receiving",
        "receiving_valid",
        "remote_index",
        "replay",
        "send_counter",
        "sending",
        "sending_valid",
    )

    def __init__(self, result: HandshakeResult, now: float) -> None:
        self.sending = ChaCha20Poly1305(result.sending_key)
        self.receiving = ChaCha20Poly1305(result.receiving_key)
        self.local_index = result.local_index
        self.remote_index = result.remote_index
        self.is_initiator = result.is_initiator
        self.created = now
        self.send_counter = 0
        self.replay = ReplayWindow()
        self.sending_valid = True
        self.receiving_valid = True

    # --- sending ---------------------------------------------------------

    def can_send(self, now: float) -> bool:
        """REJECT_AFTER_TIME and REJECT_AFTER_MESSAGES (whitepaper 6.2): a
        keypair past either never sends again."""
        if self.sending_valid and (
            now - self.created >= REJECT_AFTER_TIME or self.send_counter >= REJECT_AFTER_MESSAGES
        ):
            self.sending_valid = False
        return self.sending_valid

    def encrypt(self, packet: bytes, mtu: int | None = None) -> bytes:
        """A complete transport data message carrying *packet* (empty for a
        keepalive). The caller checks :meth:`can_send` first."""
        counter = self.send_counter
        if counter >= REJECT_AFTER_MESSAGES or not self.sending_valid:
            self.sending_valid = False
            raise KeypairExhausted("keypair may not send any more")
        self.send_counter = counter + 1
        n = len(packet)
        if n & 15:
            # Zero padding to a multiple of 16, but not beyond the MTU (see
            # padded_length; written out because this runs for every packet).
            pad = 16 - (n & 15)
            if mtu is not None and n + pad > mtu >= n:
                pad = mtu - n
            packet += _ZEROS[:pad]
        return _pack_header(
            MESSAGE_TRANSPORT_DATA, self.remote_index, counter
        ) + self.sending.encrypt(_nonce(counter), packet, None)

    # --- receiving -------------------------------------------------------

    def can_receive(self, now: float) -> bool:
        if self.receiving_valid and (
            now - self.created >= REJECT_AFTER_TIME or self.replay.counter >= REJECT_AFTER_MESSAGES
        ):
            self.receiving_valid = False
        return self.receiving_valid

    def open(self, counter: int, message: bytes) -> bytes:
        """AEAD-open the body of a transport message; raises InvalidTag.
        Nothing else: the caller owns the replay window (see :meth:`decrypt`)."""
        return self.receiving.decrypt(_nonce(counter), message[TRANSPORT_HEADER_LEN:], None)

    def decrypt(self, message: bytes, counter: int) -> bytes:
        """The padded plaintext of a transport data message whose header was
        already parsed (*counter* from it). Raises ReplayError or
        DecryptionError; the replay window moves only on success."""
        replay = self.replay
        if not replay.check(counter):
            raise ReplayError(f"counter {counter} replayed or too old")
        try:
            plain = self.receiving.decrypt(_nonce(counter), message[TRANSPORT_HEADER_LEN:], None)
        except InvalidTag:
            raise DecryptionError("transport data tag did not verify") from None
        if not replay.update(counter):  # pragma: no cover - checked just above
            raise ReplayError(f"counter {counter} replayed")
        return plain


def parse_header(message: bytes) -> tuple[int, int]:
    """(receiver index, counter) of a transport data message."""
    if len(message) < TRANSPORT_MIN_LEN:
        raise MessageFormatError("transport data shorter than header and tag")
    kind, receiver, counter = _unpack_header(message)
    if kind != MESSAGE_TRANSPORT_DATA:
        raise MessageFormatError("not transport data (type or reserved bytes)")
    return receiver, counter
