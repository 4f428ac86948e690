"""The walkthrough (``python -m wireguard walkthrough``, wireguard.walkthrough):
every value it prints is the one the whitepaper's formulas give, recomputed
here with hashlib and ``cryptography`` alone, and its runs repeat."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import wireguard.walkthrough as walkthrough
from tests.conftest import load_vector
from wireguard.crypto import seeded_random
from wireguard.keys import PresharedKey, PrivateKey

GOLDEN = load_vector("wireguard_golden.json")

# Whitepaper section 5.4: CONSTRUCTION, IDENTIFIER, LABEL-MAC1.
CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"


def _hash(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def _kdf(n: int, key: bytes, data: bytes) -> list[bytes]:
    # Whitepaper 5.4: tau0 = HMAC(key, input), tau_i = HMAC(tau0, tau_{i-1} || i).
    t0 = hmac.new(key, data, hashlib.blake2s).digest()
    out, prev = [], b""
    for i in range(1, n + 1):
        prev = hmac.new(t0, prev + bytes([i]), hashlib.blake2s).digest()
        out.append(prev)
    return out


def _pub(private: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(private).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _dh(private: bytes, public: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(public)
    )


def _aead(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(bytes(12), plaintext, ad)


def _whitepaper(s_i: bytes, s_r: bytes, q: bytes, e_i: bytes, e_r: bytes, ts: bytes):
    """The four traces as the walkthrough lays them out, from section 5.4.2
    to 5.4.5 step by step: (name, value) pairs per step."""
    si_pub, sr_pub, ei_pub, er_pub = _pub(s_i), _pub(s_r), _pub(e_i), _pub(e_r)
    c = h = _hash(CONSTRUCTION)
    m1 = [[("ck", c), ("h", h)]]
    h = _hash(h + IDENTIFIER)
    m1.append([("prologue", IDENTIFIER), ("h", h)])
    h = _hash(h + sr_pub)
    m1.append([("s_pub_r", sr_pub), ("ck", c), ("h", h)])
    (c,) = _kdf(1, c, ei_pub)
    h = _hash(h + ei_pub)
    m1.append([("e_pub", ei_pub), ("ck", c), ("h", h)])
    dh = _dh(e_i, sr_pub)
    c, k = _kdf(2, c, dh)
    m1.append([("S_pub_r", sr_pub), ("dh", dh), ("k", k), ("ck", c), ("h", h)])
    enc_static = _aead(k, si_pub, h)
    h = _hash(h + enc_static)
    m1.append([("s_pub_i", si_pub), ("enc_static", enc_static), ("ck", c), ("h", h)])
    dh = _dh(s_i, sr_pub)
    c, k = _kdf(2, c, dh)
    m1.append([("S_pub_r", sr_pub), ("dh", dh), ("k", k), ("ck", c), ("h", h)])
    enc_ts = _aead(k, ts, h)
    h = _hash(h + enc_ts)
    m1.append([("payload", ts), ("enc_payload", enc_ts), ("ck", c), ("h", h)])

    (c,) = _kdf(1, c, er_pub)
    h = _hash(h + er_pub)
    m2 = [[("e_pub", er_pub), ("ck", c), ("h", h)]]
    dh = _dh(e_r, ei_pub)
    c, k = _kdf(2, c, dh)  # the paper's KDF1: the same first output
    m2.append([("E_pub_i", ei_pub), ("dh", dh), ("k", k), ("ck", c), ("h", h)])
    dh = _dh(e_r, si_pub)
    c, k = _kdf(2, c, dh)
    m2.append([("S_pub_i", si_pub), ("dh", dh), ("k", k), ("ck", c), ("h", h)])
    c, tau, k = _kdf(3, c, q)
    h = _hash(h + tau)
    m2.append([("tau", tau), ("k", k), ("ck", c), ("h", h)])
    enc_empty = _aead(k, b"", h)
    h = _hash(h + enc_empty)
    m2.append([("payload", b""), ("enc_payload", enc_empty), ("ck", c), ("h", h)])
    m2.append(list(zip(("t_i2r", "t_r2i"), _kdf(2, c, b""), strict=True)))

    consumed1 = [list(step) for step in m1]
    consumed1[4][0] = ("E_pub_i", ei_pub)  # the responder's DH(S_priv_r, E_pub_i)
    consumed1[6][0] = ("S_pub_i", si_pub)  # DH(S_priv_r, S_pub_i)
    consumed2 = [list(step) for step in m2]
    consumed2[1][0] = consumed2[2][0] = ("E_pub_r", er_pub)
    consumed2[4] = consumed2[4][1:]  # the opened payload is empty: not shown
    return [m1, consumed1, m2, consumed2], ei_pub + enc_static + enc_ts, er_pub + enc_empty, h


def _recording(monkeypatch: pytest.MonkeyPatch, forced: list[bytes] | None = None) -> list[bytes]:
    """The ephemeral private keys the walkthrough draws (or *forced* ones)."""
    drawn: list[bytes] = []
    original = walkthrough.dh_generate

    def dh_generate(random):  # type: ignore[no-untyped-def]
        key = forced.pop(0) if forced else original(random)
        drawn.append(key)
        return key

    monkeypatch.setattr(walkthrough, "dh_generate", dh_generate)
    return drawn


@pytest.mark.parametrize("psk", [None, b"\x5a" * 32], ids=["no psk", "psk"])
def test_every_value_shown_is_the_whitepapers(monkeypatch: pytest.MonkeyPatch, psk) -> None:
    drawn = _recording(monkeypatch)
    w = walkthrough.run(
        psk=PresharedKey(psk) if psk else None, now=1_700_000_000.5, random=seeded_random(b"t")
    )
    traces, body1, body2, final_h = _whitepaper(
        w.initiator_key.raw, w.responder_key.raw, psk or bytes(32), *drawn, w.timestamp
    )
    for (title, got), expected in zip(w.traces, traces, strict=True):
        assert [list(step.values) for step in got] == expected, title
    # The messages printed carry exactly these values, and mac1 is keyed with
    # the receiver's static public key (5.4.4: HASH(LABEL-MAC1 || S_m'^pub)).
    assert w.initiation[8:][: len(body1)] == body1
    assert w.response[12:][: len(body2)] == body2
    for message, receiver in ((w.initiation, w.responder_key), (w.response, w.initiator_key)):
        mac_key = _hash(LABEL_MAC1 + receiver.public_key.raw)
        mac1 = hashlib.blake2s(message[:-32], key=mac_key, digest_size=16).digest()
        assert message[-32:] == mac1 + bytes(16)
    assert w.initiator_result.handshake_hash == w.responder_result.handshake_hash == final_h


def test_the_golden_handshake_walks_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the inputs of vectors/wireguard_golden.json (noiseprotocol and
    hashlib), the walkthrough prints the vector's messages and keys."""
    inputs = {k: bytes.fromhex(v) for k, v in GOLDEN["inputs"].items() if isinstance(v, str)}
    _recording(
        monkeypatch,
        [inputs["initiator_ephemeral_private"], inputs["responder_ephemeral_private"]],
    )
    tai64_label = int.from_bytes(inputs["timestamp"][:8], "big")
    w = walkthrough.run(
        PrivateKey(inputs["initiator_static_private"]),
        PrivateKey(inputs["responder_static_private"]),
        PresharedKey(inputs["preshared_key"]),
        now=tai64_label - (1 << 62) - 10,
        initiator_index=GOLDEN["inputs"]["initiator_index"],
        responder_index=GOLDEN["inputs"]["responder_index"],
    )
    assert w.timestamp == inputs["timestamp"]
    assert w.initiation.hex() == GOLDEN["initiation"]
    assert w.response.hex() == GOLDEN["response"]
    text = walkthrough.format_walkthrough(w)
    for key in ("handshake_hash", "transport_key_initiator_to_responder",
                "transport_key_responder_to_initiator"):  # fmt: skip
        assert GOLDEN[key] in text, key


def test_a_seed_is_its_bytes_as_given() -> None:
    """``--seed TEXT`` draws from TEXT's bytes, as given on the command line:
    one that is not UTF-8 (argv is bytes on Linux) is a seed like any other,
    not a traceback."""
    seed = b"caf\xe9"  # Latin-1, not UTF-8
    done = subprocess.run(
        [sys.executable, "-m", "wireguard", "walkthrough", b"--seed=" + seed],
        capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    expected = walkthrough.format_walkthrough(
        walkthrough.run(now=1_700_000_000.0, random=seeded_random(seed))
    )
    assert done.stdout.decode() == expected + "\n"
