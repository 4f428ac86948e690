"""WireGuard's handshake messages: the golden transcript (computed by the
independent noiseprotocol package), macs, cookies, bit flips."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import load_vector
from tests.tools.make_golden import compute
from wireguard.cookie import CookieChecker, CookieGenerator
from wireguard.crypto import aead_encrypt, dh_generate, dh_public, tai64n
from wireguard.errors import MacError, RemoteProtocolError
from wireguard.handshake import (
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
)
from wireguard.messages import CookieReply, pack_transport_header
from wireguard.walkthrough import run

GOLDEN = load_vector("wireguard_golden.json")
INPUTS = GOLDEN["inputs"]


def h(name: str) -> bytes:
    return bytes.fromhex(INPUTS[name])


def test_golden_file_is_what_the_reference_computes():
    # The stored transcript is re-derived from noiseprotocol + hashlib, so it is
    # never checked only against this project's own output.
    assert compute(INPUTS) == GOLDEN


def _golden_handshake():
    r_pub = dh_public(h("responder_static_private"))
    initiation, initiator = create_initiation(
        static_private=h("initiator_static_private"),
        peer_public=r_pub,
        psk=h("preshared_key"),
        sender_index=INPUTS["initiator_index"],
        ephemeral_private=h("initiator_ephemeral_private"),
        timestamp=h("timestamp"),
        cookies=CookieGenerator(r_pub),
        now=0.0,
    )
    return initiation, initiator


def test_golden_initiation_and_response():
    initiation, initiator = _golden_handshake()
    assert initiation.hex() == GOLDEN["initiation"]
    assert CookieChecker(dh_public(h("responder_static_private"))).check_mac1(initiation)

    consumed = consume_initiation(initiation, static_private=h("responder_static_private"))
    assert consumed.initiator_static.hex() == GOLDEN["initiator_static_public"]
    assert consumed.timestamp == h("timestamp")
    assert consumed.sender_index == INPUTS["initiator_index"]
    response, r_result = create_response(
        consumed,
        psk=h("preshared_key"),
        sender_index=INPUTS["responder_index"],
        ephemeral_private=h("responder_ephemeral_private"),
        cookies=CookieGenerator(dh_public(h("initiator_static_private"))),
        now=0.0,
    )
    assert response.hex() == GOLDEN["response"]
    i_result = consume_response(response, initiator, INPUTS["initiator_index"])
    assert i_result.sending_key.hex() == GOLDEN["transport_key_initiator_to_responder"]
    assert i_result.receiving_key.hex() == GOLDEN["transport_key_responder_to_initiator"]
    assert r_result.sending_key == i_result.receiving_key
    assert r_result.receiving_key == i_result.sending_key
    assert i_result.handshake_hash.hex() == GOLDEN["handshake_hash"]
    assert (i_result.local_index, i_result.remote_index) == (
        INPUTS["initiator_index"],
        INPUTS["responder_index"],
    )
    assert (r_result.local_index, r_result.remote_index) == (
        INPUTS["responder_index"],
        INPUTS["initiator_index"],
    )
    # Transport messages: header, then AEAD of the zero-padded packet.
    for t, expect in zip(INPUTS["transport"], GOLDEN["transport_messages"], strict=True):
        res = i_result if t["from"] == "initiator" else r_result
        payload = bytes.fromhex(t["payload"])
        padded = payload + bytes(-len(payload) % 16)
        msg = pack_transport_header(res.remote_index, t["counter"]) + aead_encrypt(
            res.sending_key, t["counter"], padded, b""
        )
        assert msg.hex() == expect


def _fresh_pair():
    si, sr = dh_generate(), dh_generate()
    initiation, initiator = create_initiation(
        static_private=si,
        peer_public=dh_public(sr),
        psk=bytes(32),
        sender_index=1,
        ephemeral_private=dh_generate(),
        timestamp=tai64n(1000.0),
        cookies=CookieGenerator(dh_public(sr)),
        now=0.0,
    )
    return si, sr, initiation, initiator


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=148 * 8 - 1))
def test_any_bit_flip_in_initiation_is_rejected(bit):
    _, sr, initiation, _ = _fresh_pair()
    flipped = bytearray(initiation)
    flipped[bit // 8] ^= 1 << (bit % 8)
    flipped = bytes(flipped)
    checker = CookieChecker(dh_public(sr))
    # mac1 covers everything before it, mac2 is checked against a cookie, and
    # the Noise body is authenticated: no flip leaves an acceptable message.
    if bit < 116 * 8 or bit < 132 * 8:
        assert not checker.check_mac1(flipped)
    else:
        assert not checker.check_mac2(flipped, ("192.0.2.1", 51820), 0.0)
    if 8 * 8 <= bit < 116 * 8:
        with pytest.raises(RemoteProtocolError):
            consume_initiation(flipped, static_private=sr)
    if bit < 4 * 8:
        with pytest.raises(RemoteProtocolError):
            consume_initiation(flipped, static_private=sr)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=92 * 8 - 1))
def test_any_bit_flip_in_response_is_rejected(bit):
    si, sr, initiation, initiator = _fresh_pair()
    consumed = consume_initiation(initiation, static_private=sr)
    response, _ = create_response(
        consumed,
        psk=bytes(32),
        sender_index=2,
        ephemeral_private=dh_generate(),
        cookies=CookieGenerator(dh_public(si)),
        now=0.0,
    )
    flipped = bytearray(response)
    flipped[bit // 8] ^= 1 << (bit % 8)
    flipped = bytes(flipped)
    checker = CookieChecker(dh_public(si))
    if bit < 76 * 8:
        assert not checker.check_mac1(flipped)
    else:
        assert not checker.check_mac2(flipped, ("192.0.2.1", 51820), 0.0)
    if bit < 60 * 8 and not 4 * 8 <= bit < 8 * 8:
        # Flipping the sender index changes only what we will address; the
        # rest is bound to our initiation or authenticated.
        with pytest.raises(RemoteProtocolError):
            consume_response(flipped, initiator, 1)


def test_cookie_round_trip_gives_mac2():
    _si, sr, initiation, _ = _fresh_pair()
    source = ("2001:db8::7", 40000)
    checker = CookieChecker(dh_public(sr))
    assert checker.check_mac1(initiation)
    assert not checker.check_mac2(initiation, source, 10.0)
    reply = checker.create_reply(initiation, 1, source, 10.0)
    packed = reply.pack()
    assert len(packed) == 64
    gen = CookieGenerator(dh_public(sr))
    gen.add_macs(initiation, 10.0)  # the initiation the reply answers
    gen.consume_reply(CookieReply.parse(packed), 11.0)
    # A second copy of the reply is refused: one reply per message sent.
    with pytest.raises(MacError):
        gen.consume_reply(CookieReply.parse(packed), 11.5)
    again = gen.add_macs(initiation, 12.0)
    assert checker.check_mac1(again) and checker.check_mac2(again, source, 12.0)
    # A cookie is bound to the address and port.
    assert not checker.check_mac2(again, ("2001:db8::7", 40001), 12.0)
    # The initiator stops using the cookie 120 s after receiving it.
    late = gen.add_macs(initiation, 11.0 + 120.0)
    assert late[-16:] == bytes(16)


def test_cookie_secret_rotates_every_120s():
    secrets = iter([b"a" * 32, b"b" * 32, b"c" * 32])
    checker = CookieChecker(dh_public(dh_generate()), random=lambda n: next(secrets)[:n])
    src = ("192.0.2.1", 1)
    c0 = checker.make_cookie(src, 0.0)
    assert checker.make_cookie(src, 119.9) == c0
    assert checker.make_cookie(src, 120.0) != c0


def test_cookie_reply_for_someone_else_does_not_open():
    _, sr, initiation, _ = _fresh_pair()
    checker = CookieChecker(dh_public(sr))
    reply = checker.create_reply(initiation, 1, ("192.0.2.1", 1), 0.0)
    other = CookieGenerator(dh_public(sr))
    # The reply's associated data is the mac1 of the answered message; one
    # who sent a different message cannot open it.
    other.add_macs(os.urandom(116) + bytes(32), 0.0)
    with pytest.raises(RemoteProtocolError):
        other.consume_reply(reply, 0.0)


def test_walkthrough_keys_agree():
    w = run(now=1_700_000_000.0)
    assert w.keys_agree
    assert len(w.initiation) == 148 and len(w.response) == 92


def test_handshake_objects_keep_their_keys_out_of_repr():
    """A HandshakeResult, the states and the keypair built from it may end up
    in a log line or a traceback: none of their reprs shows a key."""
    from wireguard.session import Keypair

    initiation, initiator = _golden_handshake()
    consumed = consume_initiation(initiation, static_private=h("responder_static_private"))
    response, r_result = create_response(
        consumed,
        psk=h("preshared_key"),
        sender_index=INPUTS["responder_index"],
        ephemeral_private=h("responder_ephemeral_private"),
        cookies=CookieGenerator(dh_public(h("initiator_static_private"))),
        now=0.0,
    )
    i_result = consume_response(response, initiator, INPUTS["initiator_index"])
    secrets = [
        bytes.fromhex(GOLDEN["transport_key_initiator_to_responder"]),
        bytes.fromhex(GOLDEN["transport_key_responder_to_initiator"]),
        h("preshared_key"),
        h("initiator_static_private"),
        h("responder_static_private"),
        h("responder_ephemeral_private"),
        initiator.state.ck,
    ]
    objects = [i_result, r_result, initiator.transport_keys, initiator.state, consumed,
               consumed.responder.state, Keypair(i_result, 0.0)]  # fmt: skip
    for obj in objects:
        text = repr(obj)
        for secret in secrets:
            assert secret.hex() not in text and repr(secret)[2:-1] not in text, (obj, text)
