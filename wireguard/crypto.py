"""The primitives of whitepaper section 5.4, exactly as defined there.

- ``dh`` / ``dh_generate`` / ``dh_public``: X25519 (``cryptography``); an
  all-zero shared secret raises :class:`InvalidDHError`.
- ``aead_encrypt`` / ``aead_decrypt``: ChaCha20-Poly1305 with the nonce
  32 zero bits || 64-bit little-endian counter.
- ``xaead_encrypt`` / ``xaead_decrypt``: XChaCha20-Poly1305 (PyNaCl), for
  cookie replies.
- ``hash_`` (HASH): BLAKE2s-256; ``mac`` (MAC): keyed BLAKE2s-128;
  ``hmac_`` (HMAC): HMAC over BLAKE2s-256; ``kdf1``/``kdf2``/``kdf3``: the
  HKDF-style chain of the paper.
- ``tai64n``: the 12-byte timestamp, from a time given as input.
- ``aead_backend`` / ``slow_aead_note``: which ``cryptography`` and OpenSSL
  do the AEAD, and whether that release is one of the slow ones.

Nothing here reads a clock or draws random bytes except ``dh_generate`` when no
private key is given, and that takes the random source as an argument.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Callable
from typing import Any

import cryptography
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
    crypto_scalarmult,
    crypto_scalarmult_base,
)
from nacl.exceptions import CryptoError

from .constants import KEY_LEN, MAC_LEN
from .errors import DecryptionError, InvalidDHError, KeyFormatError, LocalProtocolError

RandomSource = Callable[[int], bytes]
"""Where randomness comes from: a function returning *n* random bytes."""

_blake2s = hashlib.blake2s
_RAW = Encoding.Raw
_RAW_PUB = PublicFormat.Raw


def seeded_random(seed: bytes) -> RandomSource:
    """A deterministic random source (BLAKE2s in counter mode) for
    reproducible walkthroughs, tests and simulations. Never for real keys."""
    counter = 0
    buffer = b""

    def draw(n: int) -> bytes:
        nonlocal counter, buffer
        while len(buffer) < n:
            buffer += _blake2s(counter.to_bytes(8, "little"), key=_blake2s(seed).digest()).digest()
            counter += 1
        out, buffer = buffer[:n], buffer[n:]
        return out

    return draw


# --- Diffie-Hellman ---------------------------------------------------------


def clamp(private: bytes) -> bytes:
    """Curve25519 clamping (RFC 7748 section 5), as ``wg genkey`` applies it."""
    if len(private) != KEY_LEN:
        raise KeyFormatError(f"a private key is {KEY_LEN} bytes, got {len(private)}")
    b = bytearray(private)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def dh_generate(random: RandomSource = os.urandom) -> bytes:
    """DH-GENERATE: a fresh clamped private key from *random*."""
    return clamp(random(KEY_LEN))


class DHPrivateKey:
    """An X25519 private key held as the library's key object.

    Loading raw bytes into ``cryptography`` costs as much as the exchange
    itself (it derives the public key), so a key that is used more than once,
    a device's static key or an ephemeral used for two DHs, is loaded once."""

    __slots__ = ("_key", "public", "raw")

    def __init__(self, raw: bytes) -> None:
        try:
            self._key = X25519PrivateKey.from_private_bytes(bytes(raw))
        except (ValueError, TypeError) as exc:
            raise KeyFormatError(f"X25519 private key: {exc}") from None
        self.raw = bytes(raw)
        self.public: bytes = self._key.public_key().public_bytes(_RAW, _RAW_PUB)

    def exchange(self, public: bytes) -> bytes:
        """DH(self, public); an all-zero result raises InvalidDHError."""
        try:
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(public))
        except TypeError:
            raise KeyFormatError("X25519 keys are bytes") from None
        except ValueError:
            # cryptography refuses an all-zero result itself; a wrong length too.
            if len(public) != KEY_LEN:
                raise KeyFormatError("X25519 keys are 32 bytes") from None
            raise InvalidDHError("X25519 result is all zeros (low-order point)") from None
        if shared == _ZERO_KEY:  # pragma: no cover - defence in depth
            raise InvalidDHError("X25519 result is all zeros (low-order point)")
        return shared

    def __repr__(self) -> str:
        return "DHPrivateKey(<secret>)"


_ZERO_KEY = bytes(KEY_LEN)


class EphemeralDHKey:
    """An X25519 key used for one handshake: its public key and two DHs.

    Same interface as :class:`DHPrivateKey`, on libsodium (PyNaCl) instead:
    its fixed-base multiplication for the public key takes about half the
    time of loading a key into ``cryptography`` (which derives the public key
    the slow way), and with only two exchanges per key that saves more than
    ``cryptography``'s faster exchange gains (measured in
    benchmarks/bench_handshake.py)."""

    __slots__ = ("public", "raw")

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != KEY_LEN:
            raise KeyFormatError("an X25519 private key is 32 bytes")
        self.raw = bytes(raw)
        self.public: bytes = crypto_scalarmult_base(self.raw)

    def exchange(self, public: bytes) -> bytes:
        if not isinstance(public, (bytes, bytearray)) or len(public) != KEY_LEN:
            raise KeyFormatError("X25519 keys are 32 bytes")
        try:
            shared = crypto_scalarmult(self.raw, bytes(public))
        except CryptoError:
            # libsodium refuses an all-zero result (a low-order point).
            raise InvalidDHError("X25519 result is all zeros (low-order point)") from None
        if shared == _ZERO_KEY:  # pragma: no cover - defence in depth
            raise InvalidDHError("X25519 result is all zeros (low-order point)")
        return shared

    def __repr__(self) -> str:
        return "EphemeralDHKey(<secret>)"


def dh_public(private: bytes) -> bytes:
    """The public key of *private* (X25519 of the base point)."""
    return DHPrivateKey(private).public


def dh(private: bytes | DHPrivateKey, public: bytes) -> bytes:
    """DH(private, public): X25519. An all-zero result means *public* is a
    low-order point; the paper requires rejecting it (it would let an attacker
    force a known shared secret)."""
    if not isinstance(private, DHPrivateKey):
        if not isinstance(private, (bytes, bytearray)) or len(private) != KEY_LEN:
            raise KeyFormatError("X25519 keys are 32 bytes")
        private = DHPrivateKey(private)
    return private.exchange(public)


# --- AEAD -------------------------------------------------------------------


aead_nonce = struct.Struct("<4xQ").pack
"""aead_nonce(counter): 32 zero bits followed by the 64-bit little-endian
counter (one struct call: it runs for every transport packet)."""


FAST_AEAD_FROM = (45, 0)
"""The ``cryptography`` release from which a ChaCha20-Poly1305 call costs
about 1 us of fixed work. Measured on one machine, PyPI's wheels
(docs/performance.md, "The cryptography release"): 42.0.8 pays 7-8 us per
call, 44.0.3 2-4 us, 45.0.7 and later 0.8-1.4 us; 43.0.3 is as slow as 44,
and 45.0.0 as fast as 45.0.7. The step is cryptography's own: 44.0.3 and
45.0.0 bring the same OpenSSL (3.4.1)."""


def aead_backend() -> str:
    """What does the AEAD: ``"cryptography 48.0.0 (OpenSSL 4.0.0 14 Apr 2026)"``."""
    from cryptography.hazmat.backends.openssl import backend

    return f"cryptography {cryptography.__version__} ({backend.openssl_version_text()})"


def slow_aead_note(version: str | None = None) -> str | None:
    """One line for the log when the installed ``cryptography`` (or
    *version*) is older than :data:`FAST_AEAD_FROM`, else None. Such a
    release works, but every transport packet pays 2-4 times the AEAD's
    fixed cost; nothing about the tunnel changes except its speed."""
    installed = version is None
    version = cryptography.__version__ if version is None else version
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None or (int(found[1]), int(found[2])) >= FAST_AEAD_FROM:
        return None
    fast = ".".join(map(str, FAST_AEAD_FROM))
    shown = aead_backend() if installed else f"cryptography {version}"
    return (
        f"{shown}: each ChaCha20-Poly1305 call costs 2-4 times what it does"
        f" from {fast} on, so throughput is lower; `pip install 'cryptography>={fast}'`"
        " (see docs/performance.md)"
    )


def chacha20poly1305_seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """ChaCha20-Poly1305 (RFC 8439) with an explicit 12-byte nonce."""
    try:
        return ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)
    except ValueError as exc:
        raise LocalProtocolError(f"ChaCha20-Poly1305: {exc}") from None


def chacha20poly1305_open(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """The inverse of :func:`chacha20poly1305_seal`; raises DecryptionError."""
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError):
        raise DecryptionError("ChaCha20-Poly1305 tag did not verify") from None


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, aad: bytes) -> bytes:
    """AEAD(key, counter, plain text, auth text): ChaCha20-Poly1305."""
    return chacha20poly1305_seal(key, aead_nonce(counter), plaintext, aad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, aad: bytes) -> bytes:
    """The inverse of :func:`aead_encrypt`; a bad tag raises DecryptionError."""
    return chacha20poly1305_open(key, aead_nonce(counter), ciphertext, aad)


def xaead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """XAEAD(key, nonce, plain text, auth text): XChaCha20-Poly1305, 24-byte nonce."""
    if len(key) != KEY_LEN or len(nonce) != 24:
        raise LocalProtocolError("XChaCha20-Poly1305 takes a 32-byte key and a 24-byte nonce")
    return crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key)


def xaead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """The inverse of :func:`xaead_encrypt`; a bad tag raises DecryptionError."""
    try:
        return crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, aad, nonce, key)
    except (CryptoError, ValueError, TypeError):
        raise DecryptionError("XChaCha20-Poly1305 tag did not verify") from None


# --- BLAKE2s: HASH, MAC, HMAC, KDF -------------------------------------------


def hash_(data: bytes) -> bytes:
    """HASH(input): BLAKE2s with a 32-byte digest."""
    return _blake2s(data).digest()


def mac(key: bytes, data: bytes) -> bytes:
    """MAC(key, input): keyed BLAKE2s with a 16-byte digest."""
    return _blake2s(data, digest_size=MAC_LEN, key=key).digest()


_BLOCK = 64
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def hmac_(key: bytes, data: bytes) -> bytes:
    """HMAC(key, input): RFC 2104 over BLAKE2s-256 (64-byte block).

    Written out rather than through :mod:`hmac` because the handshake calls it
    a dozen times and the stdlib wrapper costs four times as much per call; the
    tests check it against :func:`hmac.digest` on random keys and inputs.
    """
    if len(key) > _BLOCK:
        key = _blake2s(key).digest()
    key = key + bytes(_BLOCK - len(key))
    inner = _blake2s(key.translate(_IPAD) + data).digest()
    return _blake2s(key.translate(_OPAD) + inner).digest()


def _hmac_pads(key: bytes) -> tuple[Any, Any]:
    """The inner and outer BLAKE2s states of HMAC(key, .), to be copied for
    each message under the same key (KDF2/KDF3 use tau0 two or three times)."""
    if len(key) > _BLOCK:
        key = _blake2s(key).digest()
    key = key + bytes(_BLOCK - len(key))
    return _blake2s(key.translate(_IPAD)), _blake2s(key.translate(_OPAD))


def _hmac_with(pads: tuple[Any, Any], data: bytes) -> bytes:
    inner, outer = pads[0].copy(), pads[1].copy()
    inner.update(data)
    outer.update(inner.digest())
    digest: bytes = outer.digest()
    return digest


def kdf1(key: bytes, data: bytes) -> bytes:
    """KDF1(key, input) = tau1, with tau0 = HMAC(key, input)."""
    t0 = hmac_(key, data)
    return hmac_(t0, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    """KDF2(key, input) = (tau1, tau2)."""
    pads = _hmac_pads(hmac_(key, data))
    t1 = _hmac_with(pads, b"\x01")
    return t1, _hmac_with(pads, t1 + b"\x02")


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    """KDF3(key, input) = (tau1, tau2, tau3)."""
    pads = _hmac_pads(hmac_(key, data))
    t1 = _hmac_with(pads, b"\x01")
    t2 = _hmac_with(pads, t1 + b"\x02")
    return t1, t2, _hmac_with(pads, t2 + b"\x03")


# --- TAI64N -----------------------------------------------------------------

TAI64_EPOCH = 0x400000000000000A
"""2**62 + 10: the label of 1970-01-01 00:00:10 TAI, which is what the kernel and
wireguard-go add to the Unix time."""

TIMESTAMP_WHITENING = 1 << 24
"""The kernel rounds nanoseconds down to a power of two no finer than
1 s / INITIATIONS_PER_SECOND (2**24 ns), so the timestamp does not leak a
precise clock."""

_pack_tai64n = struct.Struct(">QI").pack
_unpack_tai64n = struct.Struct(">QI").unpack


def tai64n(unix_time: float, *, whiten: bool = True) -> bytes:
    """TAI64N(): 12 bytes, big-endian seconds label then nanoseconds, for a
    Unix time given in seconds."""
    seconds = int(unix_time // 1)
    nanos = round((unix_time - seconds) * 1e9)
    if nanos >= 1_000_000_000:
        seconds, nanos = seconds + 1, nanos - 1_000_000_000
    if whiten:
        nanos -= nanos % TIMESTAMP_WHITENING
    return _pack_tai64n(TAI64_EPOCH + seconds, nanos)


def tai64n_to_unix(stamp: bytes) -> float:
    """The Unix time a TAI64N label stands for (for display)."""
    seconds, nanos = _unpack_tai64n(stamp)
    return float(seconds - TAI64_EPOCH + nanos / 1e9)
