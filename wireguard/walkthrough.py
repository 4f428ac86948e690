"""One full WireGuard handshake, step by step, for reading beside the
whitepaper (section 5.4). Used by ``python -m wireguard walkthrough`` and by
``docs/walkthrough.md``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .cookie import CookieChecker, CookieGenerator
from .crypto import RandomSource, dh_generate, tai64n, tai64n_to_unix
from .handshake import (
    HandshakeResult,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
)
from .keys import PresharedKey, PrivateKey
from .noise import Trace


@dataclass
class Walkthrough:
    """Everything a walkthrough produced, for printing or for tests."""

    initiator_key: PrivateKey
    responder_key: PrivateKey
    psk: PresharedKey
    initiation: bytes
    response: bytes
    traces: list[tuple[str, Trace]]
    initiator_result: HandshakeResult
    responder_result: HandshakeResult
    timestamp: bytes

    @property
    def keys_agree(self) -> bool:
        i, r = self.initiator_result, self.responder_result
        return (
            i.sending_key == r.receiving_key
            and i.receiving_key == r.sending_key
            and i.handshake_hash == r.handshake_hash
        )


def run(
    initiator_key: PrivateKey | None = None,
    responder_key: PrivateKey | None = None,
    psk: PresharedKey | None = None,
    *,
    now: float = 0.0,
    random: RandomSource = os.urandom,
    initiator_index: int | None = None,
    responder_index: int | None = None,
) -> Walkthrough:
    """Run a handshake in memory with every step traced. Keys, indices and
    ephemerals come from *random* unless given; *now* is the Unix time put
    in the TAI64N timestamp."""
    ik = initiator_key or PrivateKey.generate(random)
    rk = responder_key or PrivateKey.generate(random)
    q = psk or PresharedKey.zero()
    i_index = (
        initiator_index if initiator_index is not None else int.from_bytes(random(4), "little")
    )
    r_index = (
        responder_index if responder_index is not None else int.from_bytes(random(4), "little")
    )
    timestamp = tai64n(now)

    t1, t2, t3, t4 = (Trace(role) for role in ("initiator", "responder", "responder", "initiator"))
    initiation, initiator = create_initiation(
        static_private=ik.raw,
        peer_public=rk.public_key.raw,
        psk=q.raw,
        sender_index=i_index,
        ephemeral_private=dh_generate(random),
        timestamp=timestamp,
        cookies=CookieGenerator(rk.public_key.raw),
        now=now,
        trace=t1,
    )
    checker = CookieChecker(rk.public_key.raw, random)
    if not checker.check_mac1(initiation):
        raise AssertionError("mac1 of our own initiation does not verify")
    consumed = consume_initiation(initiation, static_private=rk.raw, trace=t2)
    # The responder continues the same symmetric state; trace the rest apart.
    consumed.responder.trace = t3
    response, responder_result = create_response(
        consumed,
        psk=q.raw,
        sender_index=r_index,
        ephemeral_private=dh_generate(random),
        cookies=CookieGenerator(ik.public_key.raw),
        now=now,
    )
    initiator.trace = t4
    initiator_result = consume_response(response, initiator, i_index)
    return Walkthrough(
        ik,
        rk,
        q,
        initiation,
        response,
        [
            ("Initiator creates the handshake initiation (message 1)", t1),
            ("Responder consumes the handshake initiation", t2),
            ("Responder creates the handshake response (message 2)", t3),
            ("Initiator consumes the handshake response", t4),
        ],
        initiator_result,
        responder_result,
        timestamp,
    )


def _hexblock(data: bytes, indent: str) -> str:
    hx = data.hex()
    return "\n".join(indent + hx[i : i + 64] for i in range(0, len(hx), 64))


def format_walkthrough(w: Walkthrough) -> str:
    psk_note = "(none: 32 zero bytes)" if w.psk == PresharedKey.zero() else "(set)"
    out = [
        "WireGuard handshake walkthrough (Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s)",
        "",
        f"initiator static public  {w.initiator_key.public_key}",
        f"responder static public  {w.responder_key.public_key}",
        "preshared key            " + psk_note,
        f"timestamp (TAI64N)       {w.timestamp.hex()}  = Unix {tai64n_to_unix(w.timestamp):.6f}",
        "",
    ]
    for title, trace in w.traces:
        out += [f"== {title} ==", trace.format(), ""]
    out += [
        f"initiation message ({len(w.initiation)} bytes):",
        _hexblock(w.initiation, "  "),
        f"response message ({len(w.response)} bytes):",
        _hexblock(w.response, "  "),
        "",
        "== Transport keys ==",
        f"initiator  index {w.initiator_result.local_index:#010x}  "
        f"send {w.initiator_result.sending_key.hex()}",
        f"                              recv {w.initiator_result.receiving_key.hex()}",
        f"responder  index {w.responder_result.local_index:#010x}  "
        f"send {w.responder_result.sending_key.hex()}",
        f"                              recv {w.responder_result.receiving_key.hex()}",
        f"handshake hash   {w.initiator_result.handshake_hash.hex()}",
        "",
        "keys agree: yes" if w.keys_agree else "keys agree: NO",
    ]
    return "\n".join(out)
