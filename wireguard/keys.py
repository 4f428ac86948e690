"""Private, public and preshared keys, printed and parsed exactly as ``wg``
does: standard base64 of 32 bytes, 44 characters with one ``=``.

Comparison is constant-time; ``repr`` of a secret never shows it.
"""

from __future__ import annotations

import binascii
import hmac
import os
import re
from typing import TypeVar

from .constants import KEY_LEN
from .crypto import RandomSource, clamp, dh_public
from .errors import KeyFormatError

__all__ = ["PresharedKey", "PrivateKey", "PublicKey", "looks_like_key"]

_K = TypeVar("_K", bound="_Key")

# A key, or a good part of one, in base64 or hex: 20 characters in a row of
# those alphabets. Host names, addresses and numbers are broken up by dots,
# colons and hyphens long before that.
_KEY_LIKE = re.compile(r"[A-Za-z0-9+/=]{20,}")

# char_is_space() in wireguard-tools src/ctype.h; str.strip() would also take
# Unicode spaces (U+00A0, U+2003, ...) and \x1c..\x1f, which wg refuses.
_ASCII_SPACE = " \t\n\v\f\r"


def looks_like_key(text: str) -> bool:
    """Whether *text* could hold a key or a good part of one (20 base64 or
    hex characters in a row). Error messages leave such a value out: it may
    be a private key pasted into the wrong place, and messages end up in
    logs."""
    return _KEY_LIKE.search(text) is not None


class _Key:
    __slots__ = ("_raw",)
    _secret = False

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise KeyFormatError(f"a key is {KEY_LEN} bytes, got {type(raw).__name__}")
        raw = bytes(raw)
        if len(raw) != KEY_LEN:
            raise KeyFormatError(f"a key is {KEY_LEN} bytes, got {len(raw)}")
        self._raw = raw

    @classmethod
    def from_base64(cls: type[_K], text: str) -> _K:
        """Parse a key as ``wg`` prints it (surrounding ASCII whitespace allowed:
        space, tab, CR, LF, VT, FF, what wg's ``char_is_space()`` skips; any
        other space, such as U+00A0, makes it not a key, as for wg)."""
        text = text.strip(_ASCII_SPACE)
        if len(text) != 44 or text[43] != "=" or text[42] not in _LAST_CHARS:
            raise KeyFormatError(
                "a key is 44 characters of base64 ending in '=' (as `wg genkey` prints it)"
            )
        try:
            raw = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise KeyFormatError("a key is 44 characters of base64") from None
        return cls(raw)

    @classmethod
    def from_hex(cls: type[_K], text: str) -> _K:
        """Parse 64 hex digits (the form of the ``wg`` control socket)."""
        try:
            raw = bytes.fromhex(text.strip(_ASCII_SPACE))
        except ValueError:
            raise KeyFormatError("a key is 64 hexadecimal digits") from None
        return cls(raw)

    def __bytes__(self) -> bytes:
        return self._raw

    @property
    def raw(self) -> bytes:
        return self._raw

    def to_base64(self) -> str:
        return binascii.b2a_base64(self._raw, newline=False).decode("ascii")

    def to_hex(self) -> str:
        return self._raw.hex()

    def __str__(self) -> str:
        return self.to_base64()

    def __repr__(self) -> str:
        if self._secret:
            return f"{type(self).__name__}(<secret>)"
        return f"{type(self).__name__}.from_base64({self.to_base64()!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._raw))


# In 44-character base64 of 32 bytes the 43rd character carries 2 padding bits
# that must be zero: only these 16 characters can stand there.
_LAST_CHARS = frozenset("AEIMQUYcgkosw048")


class PublicKey(_Key):
    """A Curve25519 public key."""

    __slots__ = ()


class PrivateKey(_Key):
    """A Curve25519 private key. X25519 clamps on use, so an unclamped key
    works and has the same public key as its clamped form."""

    __slots__ = ("_public",)
    _secret = True

    def __init__(self, raw: bytes) -> None:
        super().__init__(raw)
        self._public: PublicKey | None = None

    @classmethod
    def generate(cls, random: RandomSource = os.urandom) -> PrivateKey:
        """A new clamped key, as ``wg genkey`` makes."""
        return cls(clamp(random(KEY_LEN)))

    def clamped(self) -> PrivateKey:
        return PrivateKey(clamp(self._raw))

    @property
    def public_key(self) -> PublicKey:
        if self._public is None:
            self._public = PublicKey(dh_public(self._raw))
        return self._public


class PresharedKey(_Key):
    """A symmetric 32-byte key mixed into the handshake (the ``psk`` token)."""

    __slots__ = ()
    _secret = True

    @classmethod
    def generate(cls, random: RandomSource = os.urandom) -> PresharedKey:
        return cls(random(KEY_LEN))

    @classmethod
    def zero(cls) -> PresharedKey:
        """The all-zero key WireGuard uses when no preshared key is set."""
        return cls(bytes(KEY_LEN))
