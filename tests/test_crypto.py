"""Primitives against published vectors: RFC 7748, Wycheproof, BLAKE2 KAT."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import load_vector
from wireguard import crypto
from wireguard.errors import DecryptionError, InvalidDHError, WireGuardError

RFC7748 = load_vector("rfc7748_x25519.json")
X25519_CASES = [
    t for g in load_vector("wycheproof_x25519_test.json")["testGroups"] for t in g["tests"]
]
CHACHA = load_vector("wycheproof_chacha20_poly1305_test.json")
XCHACHA = load_vector("wycheproof_xchacha20_poly1305_test.json")
BLAKE2S = load_vector("blake2s_kat.json")["vectors"]


def _cases(doc):
    return [t for g in doc["testGroups"] for t in g["tests"]]


def test_vector_counts():
    # Every case, not a sample: the counts are the published ones.
    assert len(X25519_CASES) == 518
    assert len(_cases(CHACHA)) == CHACHA["numberOfTests"]
    assert len(_cases(XCHACHA)) == XCHACHA["numberOfTests"]
    assert len(BLAKE2S) == 512


def test_rfc7748_scalar_mult():
    for case in RFC7748["scalar_mult"]:
        out = crypto.dh(bytes.fromhex(case["scalar"]), bytes.fromhex(case["u"]))
        assert out.hex() == case["out"]


def test_rfc7748_iterated():
    k = u = (9).to_bytes(32, "little")
    done = 0
    for case in sorted(RFC7748["iterated"], key=lambda c: c["iterations"]):
        while done < case["iterations"]:
            k, u = crypto.dh(k, u), k
            done += 1
        assert k.hex() == case["out"]


def test_rfc7748_diffie_hellman():
    d = RFC7748["diffie_hellman"]
    a, b = bytes.fromhex(d["alice_private"]), bytes.fromhex(d["bob_private"])
    assert crypto.dh_public(a).hex() == d["alice_public"]
    assert crypto.dh_public(b).hex() == d["bob_public"]
    assert crypto.dh(a, bytes.fromhex(d["bob_public"])).hex() == d["shared"]
    assert crypto.dh(b, bytes.fromhex(d["alice_public"])).hex() == d["shared"]


@pytest.mark.parametrize("case", X25519_CASES, ids=lambda c: f"tc{c['tcId']}")
def test_wycheproof_x25519(case):
    private, public = bytes.fromhex(case["private"]), bytes.fromhex(case["public"])
    # Both implementations: cryptography's (static keys) and libsodium's
    # (ephemeral keys, see crypto.EphemeralDHKey).
    for key in (crypto.DHPrivateKey(private), crypto.EphemeralDHKey(private)):
        if case["shared"] == "00" * 32:
            # Low-order point: WireGuard must refuse an all-zero shared secret.
            with pytest.raises(InvalidDHError):
                key.exchange(public)
        else:
            # valid and acceptable (twist points, non-canonical u) give the secret.
            assert key.exchange(public).hex() == case["shared"]
    assert crypto.DHPrivateKey(private).public == crypto.EphemeralDHKey(private).public


@pytest.mark.parametrize("case", _cases(CHACHA), ids=lambda c: f"tc{c['tcId']}")
def test_wycheproof_chacha20_poly1305(case):
    key, nonce = bytes.fromhex(case["key"]), bytes.fromhex(case["iv"])
    aad, msg = bytes.fromhex(case["aad"]), bytes.fromhex(case["msg"])
    sealed = bytes.fromhex(case["ct"] + case["tag"])
    if case["result"] == "valid":
        assert crypto.chacha20poly1305_seal(key, nonce, msg, aad) == sealed
        assert crypto.chacha20poly1305_open(key, nonce, sealed, aad) == msg
        if len(nonce) == 12 and nonce[:4] == bytes(4):
            # WireGuard's nonce: 32 zero bits, then the little-endian counter.
            counter = int.from_bytes(nonce[4:], "little")
            assert crypto.aead_encrypt(key, counter, msg, aad) == sealed
            assert crypto.aead_decrypt(key, counter, sealed, aad) == msg
    else:
        with pytest.raises(WireGuardError):
            crypto.chacha20poly1305_open(key, nonce, sealed, aad)


@pytest.mark.parametrize("case", _cases(XCHACHA), ids=lambda c: f"tc{c['tcId']}")
def test_wycheproof_xchacha20_poly1305(case):
    key, nonce = bytes.fromhex(case["key"]), bytes.fromhex(case["iv"])
    aad, msg = bytes.fromhex(case["aad"]), bytes.fromhex(case["msg"])
    sealed = bytes.fromhex(case["ct"] + case["tag"])
    if case["result"] == "valid":
        assert crypto.xaead_encrypt(key, nonce, msg, aad) == sealed
        assert crypto.xaead_decrypt(key, nonce, sealed, aad) == msg
    else:
        with pytest.raises(WireGuardError):
            crypto.xaead_decrypt(key, nonce, sealed, aad)


def test_blake2s_kat():
    for case in BLAKE2S:
        data, key = bytes.fromhex(case["in"]), bytes.fromhex(case["key"])
        got = hashlib.blake2s(data, key=key).digest() if key else crypto.hash_(data)
        assert got.hex() == case["out"]


def test_mac_is_keyed_blake2s_128():
    # MAC(key, input) = Keyed-BLAKE2s(key, input, 16): a 16-byte digest is a
    # different function from a truncated 32-byte one (digest length is a parameter).
    key, data = bytes(range(32)), b"abc"
    assert crypto.mac(key, data) == hashlib.blake2s(data, key=key, digest_size=16).digest()
    assert crypto.mac(key, data) != hashlib.blake2s(data, key=key).digest()[:16]


@given(st.binary(max_size=100), st.binary(max_size=300))
def test_hmac_matches_stdlib(key, data):
    assert crypto.hmac_(key, data) == hmac.digest(key, data, "blake2s")


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=64))
def test_kdf_chain(key, data):
    t0 = hmac.digest(key, data, "blake2s")
    t1 = hmac.digest(t0, b"\x01", "blake2s")
    t2 = hmac.digest(t0, t1 + b"\x02", "blake2s")
    t3 = hmac.digest(t0, t2 + b"\x03", "blake2s")
    assert crypto.kdf1(key, data) == t1
    assert crypto.kdf2(key, data) == (t1, t2)
    assert crypto.kdf3(key, data) == (t1, t2, t3)


def test_aead_nonce_layout():
    assert crypto.aead_nonce(1) == bytes(4) + b"\x01" + bytes(7)
    assert crypto.aead_nonce(2**64 - 1) == bytes(4) + b"\xff" * 8


def test_aead_rejects_tampering():
    key = bytes(range(32))
    sealed = crypto.aead_encrypt(key, 7, b"hello", b"ad")
    with pytest.raises(DecryptionError):
        crypto.aead_decrypt(key, 8, sealed, b"ad")
    with pytest.raises(DecryptionError):
        crypto.aead_decrypt(key, 7, sealed, b"AD")


def test_tai64n():
    # The kernel and wireguard-go label Unix time t as 2**62 + 10 + t.
    stamp = crypto.tai64n(1_700_000_000.5, whiten=False)
    assert stamp == (0x400000000000000A + 1_700_000_000).to_bytes(8, "big") + (
        500_000_000
    ).to_bytes(4, "big")
    # Whitening rounds nanoseconds down to a multiple of 2**24.
    whitened = crypto.tai64n(1_700_000_000.5)
    assert int.from_bytes(whitened[8:], "big") == 500_000_000 - 500_000_000 % (1 << 24)
    assert crypto.tai64n(1.0) < crypto.tai64n(2.0)
    assert crypto.tai64n_to_unix(crypto.tai64n(12345.0)) == 12345.0


@given(st.floats(min_value=0, max_value=2**33, allow_nan=False))
def test_tai64n_monotonic(t):
    assert crypto.tai64n(t) <= crypto.tai64n(t + 1.0)


def test_clamp_and_generate():
    key = crypto.dh_generate(lambda n: b"\xff" * n)
    assert key[0] & 7 == 0 and key[31] & 0x80 == 0 and key[31] & 0x40
    assert crypto.dh_public(key) == crypto.dh_public(b"\xff" * 32)
