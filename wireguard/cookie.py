"""mac1, mac2 and the cookie reply (whitepaper section 5.4.4 and 5.4.7).

Two sides, as in the kernel's ``cookie.c``:

- :class:`CookieChecker` belongs to the device that *receives* handshake
  messages: it checks mac1 (keyed by our own static public key), checks mac2
  against the cookie it would give the sender's address, and makes cookie
  replies. Its secret is renewed every ``COOKIE_SECRET_MAX_AGE`` (120 s).
- :class:`CookieGenerator` belongs to each peer we *send* handshake messages
  to: it computes mac1 (keyed by the peer's public key), remembers the last
  mac1 it sent, takes the cookie out of a cookie reply, and uses it for mac2
  for 115 s after receiving it (COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY).

mac1 lets a responder drop garbage after one BLAKE2s, before any Curve25519;
mac2 proves the initiator can receive at its source address, which is what the
responder asks for when it is under load.
"""

from __future__ import annotations

import hmac
import ipaddress
import os

from .address import Address
from .constants import (
    COOKIE_LEN,
    COOKIE_NONCE_LEN,
    COOKIE_SECRET_LATENCY,
    COOKIE_SECRET_MAX_AGE,
    KEY_LEN,
    LABEL_COOKIE,
    LABEL_MAC1,
    MAC_LEN,
)
from .crypto import RandomSource, hash_, mac, xaead_decrypt, xaead_encrypt
from .errors import DecryptionError, MacError
from .messages import CookieReply


def mac1_key(public_key: bytes) -> bytes:
    """HASH(LABEL_MAC1 || S_pub) of the receiver of the message."""
    return hash_(LABEL_MAC1 + public_key)


def cookie_key(public_key: bytes) -> bytes:
    """HASH(LABEL_COOKIE || S_pub) of the sender of the cookie reply."""
    return hash_(LABEL_COOKIE + public_key)


def address_bytes(address: Address) -> bytes:
    """The bytes a cookie is bound to: the packed IP address then the port
    (big-endian). Only the responder that made the cookie ever reads them."""
    host, port = address[0], address[1]
    return ipaddress.ip_address(host.split("%", 1)[0]).packed + port.to_bytes(2, "big")


def _split_macs(message: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """(bytes covered by mac1, mac1, bytes covered by mac2, mac2)."""
    end1 = len(message) - 2 * MAC_LEN
    end2 = len(message) - MAC_LEN
    return message[:end1], message[end1:end2], message[:end2], message[end2:]


class CookieChecker:
    """The receiving side: mac1/mac2 checks and cookie replies."""

    def __init__(self, our_public_key: bytes, random: RandomSource = os.urandom) -> None:
        self._random = random
        self.set_public_key(our_public_key)
        self._secret = b""
        self._secret_birth: float | None = None

    def set_public_key(self, our_public_key: bytes) -> None:
        self._mac1_key = mac1_key(our_public_key)
        self._cookie_key = cookie_key(our_public_key)

    def check_mac1(self, message: bytes) -> bool:
        covered, mac1, _, _ = _split_macs(message)
        return hmac.compare_digest(mac(self._mac1_key, covered), mac1)

    def _current_secret(self, now: float) -> bytes:
        if self._secret_birth is None or now - self._secret_birth >= COOKIE_SECRET_MAX_AGE:
            self._secret = self._random(KEY_LEN)
            self._secret_birth = now
        return self._secret

    def make_cookie(self, source: Address, now: float) -> bytes:
        """Cookie = MAC(secret, source address and port)."""
        return mac(self._current_secret(now), address_bytes(source))

    def check_mac2(self, message: bytes, source: Address, now: float) -> bool:
        _, _, covered, mac2 = _split_macs(message)
        if mac2 == bytes(MAC_LEN):
            return False
        cookie = self.make_cookie(source, now)
        return hmac.compare_digest(mac(cookie, covered), mac2)

    def create_reply(
        self, message: bytes, sender_index: int, source: Address, now: float
    ) -> CookieReply:
        """A cookie reply to *message* (an initiation or response whose
        sender index was *sender_index*), encrypted under our cookie key with
        the message's mac1 as associated data, so only its sender can use it."""
        _, mac1, _, _ = _split_macs(message)
        nonce = self._random(COOKIE_NONCE_LEN)
        cookie = self.make_cookie(source, now)
        return CookieReply(
            sender_index, nonce, xaead_encrypt(self._cookie_key, nonce, cookie, mac1)
        )


_COOKIE_USE_TIME = COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY


class CookieGenerator:
    """The sending side, one per peer: adds mac1 and mac2, consumes cookies."""

    def __init__(self, peer_public_key: bytes) -> None:
        self._mac1_key = mac1_key(peer_public_key)
        self._cookie_key = cookie_key(peer_public_key)
        self._last_mac1: bytes | None = None
        self._cookie: bytes | None = None
        self._cookie_birth = 0.0

    @property
    def has_cookie(self) -> bool:
        return self._cookie is not None

    def add_macs(self, message: bytes, now: float) -> bytes:
        """Fill in mac1 and mac2 of a packed initiation or response (whose
        last 32 bytes are the two MAC fields)."""
        body = message[: len(message) - 2 * MAC_LEN]
        mac1 = mac(self._mac1_key, body)
        self._last_mac1 = mac1
        # A cookie is used a little less long than the responder's secret
        # lives, so it is never sent just as that secret changes (kernel
        # cookie.c wg_cookie_add_mac_to_packet).
        if self._cookie is not None and now - self._cookie_birth < _COOKIE_USE_TIME:
            mac2 = mac(self._cookie, body + mac1)
        else:
            self._cookie = None
            mac2 = bytes(MAC_LEN)
        return body + mac1 + mac2

    def consume_reply(self, reply: CookieReply, now: float) -> None:
        """Take the cookie out of *reply*. Raises MacError if we sent no
        message it could answer, DecryptionError if it does not open."""
        if self._last_mac1 is None:
            raise MacError("cookie reply, but no handshake message was sent")
        cookie = xaead_decrypt(
            self._cookie_key, reply.nonce, reply.encrypted_cookie, self._last_mac1
        )
        if len(cookie) != COOKIE_LEN:  # pragma: no cover - the tag covers the length
            raise DecryptionError("cookie has the wrong length")
        self._cookie = cookie
        self._cookie_birth = now
        # One cookie reply per message sent: a second copy cannot be replayed.
        self._last_mac1 = None
