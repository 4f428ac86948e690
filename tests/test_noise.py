"""The Noise layer: cacophony vectors (every message, every transport message,
the handshake hash) and a cross-check against the independent `noiseprotocol`
package in both directions, with WireGuard's construction and identifier."""

from __future__ import annotations

import os

import pytest
from noise.connection import Keypair, NoiseConnection

from tests.conftest import load_vector
from wireguard.constants import CONSTRUCTION, IDENTIFIER
from wireguard.crypto import dh_generate, dh_public, tai64n
from wireguard.errors import DecryptionError, InvalidDHError, LocalProtocolError
from wireguard.noise import CipherState, Initiator, Responder, Trace

VECTORS = load_vector("noise_ik_blake2s.json")["vectors"]


def _psk(v, side):
    psks = v.get(f"{side}_psks")
    return bytes.fromhex(psks[0]) if psks else None


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v["protocol_name"])
def test_cacophony(v):
    name = v["protocol_name"].encode()
    initiator = Initiator(
        bytes.fromhex(v["init_static"]),
        bytes.fromhex(v["init_remote_static"]),
        psk=_psk(v, "init"),
        protocol_name=name,
        prologue=bytes.fromhex(v["init_prologue"]),
    )
    responder = Responder(
        bytes.fromhex(v["resp_static"]),
        psk=_psk(v, "resp"),
        protocol_name=name,
        prologue=bytes.fromhex(v["resp_prologue"]),
    )
    msgs = v["messages"]
    assert len(msgs) == 6
    c1 = initiator.write_initiation(
        bytes.fromhex(v["init_ephemeral"]), bytes.fromhex(msgs[0]["payload"])
    )
    assert c1.hex() == msgs[0]["ciphertext"]
    assert responder.read_initiation(c1).hex() == msgs[0]["payload"]
    assert responder.remote_static == dh_public(bytes.fromhex(v["init_static"]))
    c2 = responder.write_response(
        bytes.fromhex(v["resp_ephemeral"]), bytes.fromhex(msgs[1]["payload"])
    )
    assert c2.hex() == msgs[1]["ciphertext"]
    assert initiator.read_response(c2).hex() == msgs[1]["payload"]
    ik, rk = initiator.transport_keys, responder.transport_keys
    assert ik is not None and rk is not None
    assert ik.handshake_hash.hex() == v["handshake_hash"] == rk.handshake_hash.hex()

    # Transport: the initiator writes messages 2 and 4, the responder 3 and 5,
    # with Noise's implicit nonces 0, 1, ...
    i_send, i_recv = CipherState(ik.sending_key), CipherState(ik.receiving_key)
    r_send, r_recv = CipherState(rk.sending_key), CipherState(rk.receiving_key)
    for n, m in enumerate(msgs[2:]):
        payload, ct = bytes.fromhex(m["payload"]), bytes.fromhex(m["ciphertext"])
        send, recv = (i_send, r_recv) if n % 2 == 0 else (r_send, i_recv)
        assert send.encrypt(payload) == ct
        assert recv.decrypt(ct) == payload


def _reference(initiator: bool, static: bytes, remote: bytes | None, psk: bytes, e: bytes):
    conn = NoiseConnection.from_name(CONSTRUCTION)
    conn.set_as_initiator() if initiator else conn.set_as_responder()
    conn.set_psks(psk)
    conn.set_prologue(IDENTIFIER)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static)
    conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, e)
    if remote is not None:
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote)
    conn.start_handshake()
    return conn


@pytest.mark.parametrize("psk", [bytes(32), os.urandom(32)], ids=["zero-psk", "psk"])
def test_our_initiator_their_responder(psk):
    si, sr, ei, er = (dh_generate() for _ in range(4))
    ours = Initiator(si, dh_public(sr), psk=psk)
    theirs = _reference(False, sr, None, psk, er)
    stamp = tai64n(1_700_000_000.25)
    m1 = ours.write_initiation(ei, stamp)
    assert len(m1) == 108
    assert theirs.read_message(m1) == stamp
    m2 = theirs.write_message(b"")
    assert len(m2) == 48
    assert ours.read_response(m2) == b""
    keys = ours.transport_keys
    assert keys is not None
    assert keys.handshake_hash == theirs.get_handshake_hash()
    # Both directions of the transport agree with the reference's cipher states.
    assert theirs.decrypt(CipherState(keys.sending_key).encrypt(b"ping")) == b"ping"
    assert CipherState(keys.receiving_key).decrypt(theirs.encrypt(b"pong")) == b"pong"


@pytest.mark.parametrize("psk", [bytes(32), os.urandom(32)], ids=["zero-psk", "psk"])
def test_their_initiator_our_responder(psk):
    si, sr, ei, er = (dh_generate() for _ in range(4))
    theirs = _reference(True, si, dh_public(sr), psk, ei)
    ours = Responder(sr, psk=psk)
    stamp = tai64n(1_700_000_001.0)
    m1 = theirs.write_message(stamp)
    assert ours.read_initiation(m1) == stamp
    assert ours.remote_static == dh_public(si)
    m2 = ours.write_response(er)
    assert theirs.read_message(m2) == b""
    keys = ours.transport_keys
    assert keys is not None
    assert keys.handshake_hash == theirs.get_handshake_hash()
    assert theirs.decrypt(CipherState(keys.sending_key).encrypt(b"ping")) == b"ping"
    assert CipherState(keys.receiving_key).decrypt(theirs.encrypt(b"pong")) == b"pong"


def test_responder_psk_given_late_must_match():
    si, sr = dh_generate(), dh_generate()
    psk = os.urandom(32)
    ours = Initiator(si, dh_public(sr), psk=psk)
    responder = Responder(sr)  # psk unknown until the initiator is identified
    responder.read_initiation(ours.write_initiation(dh_generate(), b"x" * 12))
    m2 = responder.write_response(dh_generate(), psk=psk)
    ours.read_response(m2)
    wrong = Responder(sr)
    ours2 = Initiator(si, dh_public(sr), psk=psk)
    wrong.read_initiation(ours2.write_initiation(dh_generate(), b"x" * 12))
    with pytest.raises(DecryptionError):
        ours2.read_response(wrong.write_response(dh_generate(), psk=os.urandom(32)))


def test_trace_records_every_token_with_chaining_key_and_hash():
    si, sr = dh_generate(), dh_generate()
    t_init, t_resp = Trace("initiator"), Trace("responder")
    initiator = Initiator(si, dh_public(sr), trace=t_init)
    responder = Responder(sr, trace=t_resp)
    responder.read_initiation(initiator.write_initiation(dh_generate(), b"t" * 12))
    initiator.read_response(responder.write_response(dh_generate()))
    names = [s.name.split(":")[0] for s in t_init]
    assert names == [
        "initialize", "h = HASH(h || prologue)", "pre-message <- s", "e", "es", "s", "ss",
        "payload", "e", "ee", "se", "psk", "payload", "split",
    ]  # fmt: skip
    # Both sides computed the same chaining key and hash at each step they share.
    for a, b in zip(t_init.steps[:8], t_resp.steps[:8], strict=True):
        assert a.get("ck") == b.get("ck") and a.get("h") == b.get("h")
    assert t_init.steps[-1].get("t_i2r") == t_resp.steps[-1].get("t_i2r")
    assert "ck" in t_init.format()


def test_read_response_without_initiation():
    with pytest.raises(LocalProtocolError):
        Initiator(dh_generate(), dh_public(dh_generate())).read_response(bytes(48))


@pytest.mark.parametrize("psk", [bytes(32), os.urandom(32)], ids=["zero-psk", "psk"])
def test_a_failed_response_leaves_the_initiator_as_it_was(psk):
    """A forged message 2 (anyone can send one) must not cost the genuine
    response: the kernel's consume_response works on copies of hash and
    chaining key. The genuine answer comes from the independent reference."""
    si, sr, ei, er = (dh_generate() for _ in range(4))
    trace = Trace("initiator")
    ours = Initiator(si, dh_public(sr), psk=psk, trace=trace)
    theirs = _reference(False, sr, None, psk, er)
    theirs.read_message(ours.write_initiation(ei, tai64n(1_700_000_002.0)))
    before = (ours.state.ck, ours.state.h, ours.state.k, ours.state.n, ours.re, len(trace.steps))
    for forged in (dh_public(dh_generate()) + os.urandom(16), bytes(48)):
        with pytest.raises(Exception) as info:
            ours.read_response(forged)
        assert isinstance(info.value, (DecryptionError, InvalidDHError))
        after = (ours.state.ck, ours.state.h, ours.state.k, ours.state.n, ours.re)
        assert (*after, len(trace.steps)) == before
        assert ours.transport_keys is None and ours.trace is trace
    assert ours.read_response(theirs.write_message(b"")) == b""
    assert ours.transport_keys.handshake_hash == theirs.get_handshake_hash()


def test_reprs_show_no_secrets():
    si, sr = dh_generate(), dh_generate()
    trace = Trace("initiator")
    ours = Initiator(si, dh_public(sr), psk=os.urandom(32), trace=trace)
    responder = Responder(sr)
    responder.read_initiation(ours.write_initiation(dh_generate(), b"x" * 12))
    state = ours.state
    secrets = [state.ck, state.k, si]
    for step in trace:
        secrets += [v for k, v in step.values if k in ("k", "dh", "ck")]
    texts = [repr(state), repr(trace), *(repr(step) for step in trace)]
    for text in texts:
        for secret in secrets:
            assert secret.hex() not in text and repr(secret) not in text
