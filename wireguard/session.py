"""A transport keypair (whitepaper section 5.4.6): the two keys a handshake
derived, the send counter, padding and encryption, the replay window, age and
limits.

Written for the per-packet path: one ChaCha20-Poly1305 object per direction
for the life of the keypair and the header packed with one struct call. The
receive side is driven by ``Device._receive_transport``, which opens the
packet with :attr:`Keypair.receiving` and only then moves :attr:`Keypair.replay`
(a forged packet must not move the window).
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .constants import (
    MESSAGE_PADDING_MULTIPLE,
    MESSAGE_TRANSPORT_DATA,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
)
from .crypto import aead_nonce
from .errors import LocalProtocolError
from .handshake import HandshakeResult
from .replay import ReplayWindow

_header = struct.Struct("<IIQ")
_pack_header = _header.pack
_ZEROS = bytes(MESSAGE_PADDING_MULTIPLE)


def padding_length(n: int, mtu: int | None) -> int:
    """Zero bytes to add to an *n*-byte packet: up to a multiple of 16, but
    never beyond the MTU (kernel send.c calculate_skb_padding), so padding
    cannot make a packet that fits the tunnel too big for it."""
    pad = -n & 15
    if pad and mtu is not None and n + pad > mtu >= n:
        pad = mtu - n
    return pad


class KeypairExhausted(LocalProtocolError):
    """The keypair may not send any more (too old or too many messages)."""


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
        pad = padding_length(len(packet), mtu)
        if pad:
            packet += _ZEROS[:pad]
        return _pack_header(
            MESSAGE_TRANSPORT_DATA, self.remote_index, counter
        ) + self.sending.encrypt(aead_nonce(counter), packet, None)

    # --- receiving -------------------------------------------------------

    def can_receive(self, now: float) -> bool:
        """REJECT_AFTER_TIME: a keypair this old accepts nothing more. (The
        message limit needs no check here: the replay window never accepts a
        counter at or above REJECT_AFTER_MESSAGES.)"""
        # Pure: a refused datagram must leave the keypair as it was.
        return self.receiving_valid and now - self.created < REJECT_AFTER_TIME
