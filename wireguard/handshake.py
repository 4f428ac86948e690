"""WireGuard's handshake messages: Noise_IKpsk2 (noise.py) inside the wire
format (messages.py) with mac1/mac2 (cookie.py), whitepaper section 5.4.2-5.4.4.

This is the hand-off between the protocol core and the endpoint: a completed
handshake yields a :class:`HandshakeResult` with the two transport keys and the
index pair, from which session.py builds a keypair.
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import TAI64N_LEN
from .cookie import CookieGenerator
from .crypto import DHPrivateKey
from .errors import HandshakeError, MessageFormatError
from .messages import Initiation, Response
from .noise import Initiator, Responder, Trace


@dataclass(frozen=True, slots=True, repr=False)
class HandshakeResult:
    """Transport keys and indices of one side after the handshake.

    ``local_index`` is what the remote puts in the receiver field of the
    messages it sends us; ``remote_index`` is what we put in ours."""

    sending_key: bytes
    receiving_key: bytes
    local_index: int
    remote_index: int
    is_initiator: bool
    handshake_hash: bytes

    def __repr__(self) -> str:
        # The two keys are the session: never in a log or a traceback.
        return (
            f"<HandshakeResult local_index={self.local_index} remote_index={self.remote_index}"
            f" is_initiator={self.is_initiator} handshake_hash={self.handshake_hash.hex()}>"
        )


def create_initiation(
    *,
    static_private: bytes | DHPrivateKey,
    peer_public: bytes,
    psk: bytes,
    sender_index: int,
    ephemeral_private: bytes | DHPrivateKey,
    timestamp: bytes,
    cookies: CookieGenerator,
    now: float,
    trace: Trace | None = None,
    precomputed_ss: bytes | None = None,
) -> tuple[bytes, Initiator]:
    """Message 1 (148 bytes, macs filled in) and the initiator state that
    reads the response."""
    if len(timestamp) != TAI64N_LEN:
        raise ValueError("a TAI64N timestamp is 12 bytes")
    initiator = Initiator(
        static_private, peer_public, psk=psk, trace=trace, precomputed_ss=precomputed_ss
    )
    body = initiator.write_initiation(ephemeral_private, timestamp)
    msg = Initiation(sender_index, body[:32], body[32:80], body[80:108]).pack()
    return cookies.add_macs(msg, now), initiator


@dataclass(slots=True)
class ConsumedInitiation:
    """What the responder learned from message 1, before it knows whether to
    answer: who the initiator claims to be, its timestamp, its index. The
    caller checks the peer and the timestamp, then calls :func:`create_response`."""

    responder: Responder
    initiator_static: bytes
    timestamp: bytes
    sender_index: int


def consume_initiation(
    data: bytes,
    *,
    static_private: bytes | DHPrivateKey,
    trace: Trace | None = None,
    static_static: dict[bytes, bytes] | None = None,
) -> ConsumedInitiation:
    """Open message 1 (mac1 is the caller's to check first, since it is a
    device-wide decision). Raises a RemoteProtocolError if it does not open."""
    msg = Initiation.parse(data)
    responder = Responder(static_private, trace=trace)
    timestamp = responder.read_initiation(msg.noise_body, static_static=static_static)
    if len(timestamp) != TAI64N_LEN:  # pragma: no cover - fixed by the message size
        raise MessageFormatError("timestamp has the wrong length")
    assert responder.remote_static is not None
    return ConsumedInitiation(responder, responder.remote_static, timestamp, msg.sender_index)


def create_response(
    consumed: ConsumedInitiation,
    *,
    psk: bytes,
    sender_index: int,
    ephemeral_private: bytes | DHPrivateKey,
    cookies: CookieGenerator,
    now: float,
) -> tuple[bytes, HandshakeResult]:
    """Message 2 (92 bytes, macs filled in) and the responder's keys."""
    responder = consumed.responder
    body = responder.write_response(ephemeral_private, b"", psk=psk)
    msg = Response(sender_index, consumed.sender_index, body[:32], body[32:48]).pack()
    keys = responder.transport_keys
    assert keys is not None
    result = HandshakeResult(
        keys.sending_key,
        keys.receiving_key,
        local_index=sender_index,
        remote_index=consumed.sender_index,
        is_initiator=False,
        handshake_hash=keys.handshake_hash,
    )
    return cookies.add_macs(msg, now), result


def consume_response(
    data: bytes, initiator: Initiator, local_index: int, *, trace: Trace | None = None
) -> HandshakeResult:
    """Open message 2 with the state of our initiation; raises on failure,
    and *initiator* is then unchanged (a forged response costs nothing).
    *trace*, if given, records the attempt (else the initiator's own trace)."""
    msg = Response.parse(data)
    if msg.receiver_index != local_index:
        raise HandshakeError("response is not for our initiation")
    payload = (
        initiator.read_response(msg.noise_body)
        if trace is None
        else initiator.read_response(msg.noise_body, trace=trace)
    )
    if payload:  # pragma: no cover - the message size fixes an empty payload
        raise HandshakeError("response payload must be empty")
    keys = initiator.transport_keys
    assert keys is not None
    return HandshakeResult(
        keys.sending_key,
        keys.receiving_key,
        local_index=local_index,
        remote_index=msg.sender_index,
        is_initiator=True,
        handshake_hash=keys.handshake_hash,
    )


__all__ = [
    "ConsumedInitiation",
    "HandshakeResult",
    "consume_initiation",
    "consume_response",
    "create_initiation",
    "create_response",
]
