"""Noise_IKpsk2 (and plain Noise_IK) with a trace of every step.

The handshake is written once, for any protocol name, prologue, static keys,
ephemeral keys and PSK, so the same code runs the generic Noise test vectors
(cacophony) and WireGuard (whitepaper section 5.4.2 - 5.4.4). WireGuard's
choices are: protocol name :data:`~wireguard.constants.CONSTRUCTION`, prologue
:data:`~wireguard.constants.IDENTIFIER`, first payload the TAI64N timestamp,
second payload empty, and a PSK of 32 zero bytes when none is configured.

Pattern (Noise section 7.5 and 9)::

    IKpsk2:
      <- s
      ...
      -> e, es, s, ss
      <- e, ee, se, psk

Nothing here reads a clock or draws randomness: the ephemeral private key is
an argument. A :class:`Trace`, when given, records every token as it is
processed: the chaining key ``ck``, the hash ``h``, any derived key ``k``, and
the DH inputs named by role, so a researcher can lay it beside the paper.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .constants import CONSTRUCTION, HASH_LEN, IDENTIFIER, KEY_LEN, TAG_LEN
from .crypto import (
    DHPrivateKey,
    EphemeralDHKey,
    aead_decrypt,
    aead_encrypt,
    aead_nonce,
    hash_,
    kdf1,
    kdf2,
    kdf3,
)
from .errors import DecryptionError, LocalProtocolError, MessageFormatError

# --- trace ------------------------------------------------------------------


@dataclass(frozen=True)
class TraceStep:
    """One step of the handshake: its name (as in the paper) and the values it
    produced or used, in the order they appear."""

    name: str
    values: tuple[tuple[str, bytes], ...]

    def __repr__(self) -> str:
        # The values are secrets (keys, DH results): shown by format(), on
        # purpose, never by a repr that lands in a log or a traceback.
        return f"<TraceStep {self.name!r}: {', '.join(k for k, _ in self.values)}>"

    def get(self, key: str) -> bytes | None:
        for k, v in self.values:
            if k == key:
                return v
        return None


@dataclass
class Trace:
    """An ordered record of :class:`TraceStep`. Pass one to a handshake to
    watch it; leave it out and nothing is recorded (the fast path)."""

    role: str = ""
    steps: list[TraceStep] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"<Trace {self.role!r}, {len(self.steps)} steps>"

    def add(self, name: str, **values: bytes) -> None:
        self.steps.append(TraceStep(name, tuple(values.items())))

    def format(self, *, width: int = 64) -> str:
        lines = []
        for i, step in enumerate(self.steps, 1):
            lines.append(f"{i:2d}. {step.name}")
            for key, value in step.values:
                lines.append(f"      {key:<11} {value.hex()}")
        return "\n".join(lines)

    def __iter__(self) -> Iterator[TraceStep]:
        return iter(self.steps)


# --- symmetric state (Noise section 5.2) -------------------------------------


def initial_chaining_key(protocol_name: bytes) -> bytes:
    """Noise InitializeSymmetric: the name padded to HASHLEN, or its hash."""
    if len(protocol_name) <= HASH_LEN:
        return protocol_name + bytes(HASH_LEN - len(protocol_name))
    return hash_(protocol_name)


@dataclass(repr=False)
class SymmetricState:
    """ck, h and the current cipher key with its nonce (Noise CipherState
    folded in: in this pattern every key is used at nonce 0 only, but the
    nonce is kept so the generic rules hold)."""

    ck: bytes
    h: bytes
    k: bytes | None = None
    n: int = 0
    trace: Trace | None = None

    def __repr__(self) -> str:
        # ck and k are secrets; h is not, but is of no use in a log either.
        return f"<SymmetricState n={self.n} key={'set' if self.k is not None else 'none'}>"

    def copy(self) -> SymmetricState:
        """An independent copy, to try a message on without touching this
        state (bytes are immutable, so a shallow copy is a full one)."""
        return SymmetricState(self.ck, self.h, self.k, self.n, self.trace)

    @classmethod
    def initialize(
        cls, protocol_name: bytes, prologue: bytes, trace: Trace | None = None
    ) -> SymmetricState:
        ck = initial_chaining_key(protocol_name)
        state = cls(ck=ck, h=ck, trace=trace)
        if trace is not None:
            trace.add("initialize: ck = h = HASH(construction)", ck=state.ck, h=state.h)
        state.mix_hash(prologue)
        if trace is not None:
            trace.add("h = HASH(h || prologue)", prologue=prologue, h=state.h)
        return state

    def mix_hash(self, data: bytes) -> None:
        self.h = hash_(self.h + data)

    def mix_key(self, ikm: bytes) -> None:
        self.ck, self.k = kdf2(self.ck, ikm)
        self.n = 0

    def mix_key_and_hash(self, ikm: bytes) -> bytes:
        self.ck, temp_h, self.k = kdf3(self.ck, ikm)
        self.n = 0
        self.mix_hash(temp_h)
        return temp_h

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self.k is None:
            ciphertext = plaintext
        else:
            ciphertext = aead_encrypt(self.k, self.n, plaintext, self.h)
            self.n += 1
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        if self.k is None:
            plaintext = ciphertext
        else:
            plaintext = aead_decrypt(self.k, self.n, ciphertext, self.h)
            self.n += 1
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        """(key of the initiator's sending direction, key of the responder's)."""
        return kdf2(self.ck, b"")


# --- the handshake -----------------------------------------------------------


@dataclass(frozen=True, repr=False)
class TransportKeys:
    """The outcome of a handshake for one side: what it sends and receives
    with, and the final handshake hash (Noise's channel binding)."""

    sending_key: bytes
    receiving_key: bytes
    handshake_hash: bytes

    def __repr__(self) -> str:
        return f"<TransportKeys handshake_hash={self.handshake_hash.hex()}>"


class CipherState:
    """Noise CipherState for the generic transport phase (nonces 0, 1, 2...).
    WireGuard's own transport uses explicit counters instead (session.py)."""

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self.n = 0

    def encrypt(self, plaintext: bytes, ad: bytes = b"") -> bytes:
        ct = self._aead.encrypt(aead_nonce(self.n), plaintext, ad)
        self.n += 1
        return ct

    def decrypt(self, ciphertext: bytes, ad: bytes = b"") -> bytes:
        try:
            pt = self._aead.decrypt(aead_nonce(self.n), ciphertext, ad)
        except InvalidTag:
            raise DecryptionError("transport tag did not verify") from None
        self.n += 1
        return pt


class _Same:
    """The default of :meth:`Initiator.read_response`'s *trace*: keep recording
    into the initiator's own trace."""


_SAME = _Same()


def _as_key(key: bytes | DHPrivateKey) -> DHPrivateKey:
    if isinstance(key, DHPrivateKey):
        return key
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_LEN:
        raise LocalProtocolError("an X25519 private key is 32 bytes")
    return DHPrivateKey(key)


class _Handshake:
    """Shared state of both roles."""

    def __init__(
        self,
        *,
        static_private: bytes | DHPrivateKey,
        protocol_name: bytes,
        prologue: bytes,
        psk: bytes | None,
        trace: Trace | None,
    ) -> None:
        if psk is not None and len(psk) != KEY_LEN:
            raise LocalProtocolError("preshared key must be 32 bytes")
        self.protocol_name = protocol_name
        self.prologue = prologue
        self.psk = psk
        self.trace = trace
        self.s = _as_key(static_private)
        self.s_pub = self.s.public
        self.e: DHPrivateKey | EphemeralDHKey | None = None
        self.e_pub: bytes | None = None
        self.re: bytes | None = None
        self.rs: bytes | None = None
        self.state: SymmetricState | None = None

    # Each token is one method so the trace shows the pattern as in the paper.

    def _t(self, name: str, **values: bytes) -> None:
        if self.trace is not None:
            st = self.state
            assert st is not None
            self.trace.add(name, **values, ck=st.ck, h=st.h)

    def _token_e_out(self, ephemeral_private: bytes | DHPrivateKey) -> bytes:
        st = self.state
        assert st is not None
        self.e = (
            EphemeralDHKey(ephemeral_private)
            if isinstance(ephemeral_private, (bytes, bytearray))
            else ephemeral_private
        )
        self.e_pub = self.e.public
        st.mix_hash(self.e_pub)
        if self.psk is not None:
            st.ck = kdf1(st.ck, self.e_pub)
        self._t("e: h = HASH(h || E_pub); ck = KDF1(ck, E_pub)", e_pub=self.e_pub)
        return self.e_pub

    def _token_e_in(self, e_pub: bytes) -> None:
        st = self.state
        assert st is not None
        self.re = e_pub
        st.mix_hash(e_pub)
        if self.psk is not None:
            st.ck = kdf1(st.ck, e_pub)
        self._t("e: h = HASH(h || E_pub); ck = KDF1(ck, E_pub)", e_pub=e_pub)

    def _token_dh(
        self, token: str, private: DHPrivateKey | EphemeralDHKey, public: bytes, roles: str
    ) -> None:
        st = self.state
        assert st is not None
        shared = private.exchange(public)
        st.mix_key(shared)
        assert st.k is not None
        pub_name, priv_name = roles.split("/")
        self._t(
            f"{token}: (ck, k) = KDF2(ck, DH({priv_name}, {pub_name}))",
            **{f"{pub_name}": public},
            dh=shared,
            k=st.k,
        )

    def _token_psk(self) -> None:
        st = self.state
        assert st is not None and self.psk is not None
        tau = st.mix_key_and_hash(self.psk)
        assert st.k is not None
        self._t("psk: (ck, tau, k) = KDF3(ck, Q); h = HASH(h || tau)", tau=tau, k=st.k)

    def _split(self, initiator: bool) -> TransportKeys:
        st = self.state
        assert st is not None
        k1, k2 = st.split()
        if self.trace is not None:
            self.trace.add("split: (T_send_i, T_recv_i) = KDF2(ck, empty)", t_i2r=k1, t_r2i=k2)
        # Ephemeral secrets are not needed any more (forward secrecy).
        self.e = None
        if initiator:
            return TransportKeys(k1, k2, st.h)
        return TransportKeys(k2, k1, st.h)


class Initiator(_Handshake):
    """The initiator of IK: knows the responder's static public key up front.

    ``write_initiation(ephemeral_private, payload)`` -> message 1,
    ``read_response(message)`` -> payload; then ``transport_keys``.
    """

    def __init__(
        self,
        static_private: bytes | DHPrivateKey,
        remote_static: bytes,
        *,
        psk: bytes | None = bytes(KEY_LEN),
        protocol_name: bytes = CONSTRUCTION,
        prologue: bytes = IDENTIFIER,
        trace: Trace | None = None,
        precomputed_ss: bytes | None = None,
    ) -> None:
        super().__init__(
            static_private=static_private,
            protocol_name=protocol_name,
            prologue=prologue,
            psk=psk,
            trace=trace,
        )
        if len(remote_static) != KEY_LEN:
            raise LocalProtocolError("remote static public key must be 32 bytes")
        self.rs = remote_static
        self._precomputed_ss = precomputed_ss
        self.transport_keys: TransportKeys | None = None

    def write_initiation(self, ephemeral_private: bytes | DHPrivateKey, payload: bytes) -> bytes:
        """-> e, es, s, ss, then the payload: returns E_pub || enc(S_pub) || enc(payload)."""
        assert self.rs is not None
        self.state = st = SymmetricState.initialize(self.protocol_name, self.prologue, self.trace)
        st.mix_hash(self.rs)
        self._t("pre-message <- s: h = HASH(h || S_pub_r)", s_pub_r=self.rs)
        e_pub = self._token_e_out(ephemeral_private)
        assert self.e is not None
        self._token_dh("es", self.e, self.rs, "S_pub_r/E_priv_i")
        enc_static = st.encrypt_and_hash(self.s_pub)
        self._t(
            "s: enc_static = AEAD(k, 0, S_pub_i, h); h = HASH(h || enc_static)",
            s_pub_i=self.s_pub,
            enc_static=enc_static,
        )
        if self._precomputed_ss is not None:
            st.mix_key(self._precomputed_ss)
            self._t(
                "ss: (ck, k) = KDF2(ck, DH(S_priv_i, S_pub_r))  [precomputed]",
                dh=self._precomputed_ss,
                k=st.k or b"",
            )
        else:
            self._token_dh("ss", self.s, self.rs, "S_pub_r/S_priv_i")
        enc_payload = st.encrypt_and_hash(payload)
        self._t(
            "payload: enc = AEAD(k, 0, payload, h); h = HASH(h || enc)",
            payload=payload,
            enc_payload=enc_payload,
        )
        return e_pub + enc_static + enc_payload

    def read_response(self, message: bytes, *, trace: Trace | _Same | None = _SAME) -> bytes:
        """<- e, ee, se, psk, then the payload. Raises on any failure and then
        leaves this initiator exactly as it was, so the genuine response can
        still be read after a forged one (the kernel's
        ``wg_noise_handshake_consume_response`` works on copies of the hash
        and chaining key, and writes them back only once the tag verified).
        *trace* records this attempt (default: the initiator's own trace,
        which a failed attempt leaves as it was)."""
        if self.state is None or self.e is None:
            raise LocalProtocolError("no initiation was written")
        if len(message) < KEY_LEN + TAG_LEN:
            raise MessageFormatError("handshake response too short")
        message = bytes(message)
        saved_state, saved_re, saved_trace = self.state, self.re, self.trace
        record = saved_trace if isinstance(trace, _Same) else trace
        recorded = len(record.steps) if record is not None else 0
        self.state = st = saved_state.copy()
        st.trace = self.trace = record
        try:
            self._token_e_in(message[:KEY_LEN])
            self._token_dh("ee", self.e, message[:KEY_LEN], "E_pub_r/E_priv_i")
            self._token_dh("se", self.s, message[:KEY_LEN], "E_pub_r/S_priv_i")
            if self.psk is not None:
                self._token_psk()
            payload = st.decrypt_and_hash(message[KEY_LEN:])
        except BaseException:
            self.state, self.re, self.trace = saved_state, saved_re, saved_trace
            if record is not None and record is saved_trace:
                del record.steps[recorded:]
            raise
        self._t(
            "payload: AEAD-open(k, 0, enc, h); h = HASH(h || enc)", enc_payload=message[KEY_LEN:]
        )
        self.transport_keys = self._split(initiator=True)
        return payload


class Responder(_Handshake):
    """The responder of IK: learns the initiator's static key from message 1.

    ``read_initiation(message)`` -> payload (check ``remote_static`` against
    the peers you know, and the payload, before answering);
    ``write_response(ephemeral_private, payload)`` -> message 2.
    """

    def __init__(
        self,
        static_private: bytes | DHPrivateKey,
        *,
        psk: bytes | None = bytes(KEY_LEN),
        protocol_name: bytes = CONSTRUCTION,
        prologue: bytes = IDENTIFIER,
        trace: Trace | None = None,
    ) -> None:
        super().__init__(
            static_private=static_private,
            protocol_name=protocol_name,
            prologue=prologue,
            psk=psk,
            trace=trace,
        )
        self.transport_keys: TransportKeys | None = None

    @property
    def remote_static(self) -> bytes | None:
        return self.rs

    def read_initiation(
        self,
        message: bytes,
        *,
        static_static: dict[bytes, bytes] | None = None,
    ) -> bytes:
        """Process message 1. *static_static* may map a known initiator's
        static public key to the precomputed DH(S_priv_r, S_pub_i)."""
        if len(message) < KEY_LEN + KEY_LEN + TAG_LEN + TAG_LEN:
            raise MessageFormatError("handshake initiation too short")
        message = bytes(message)
        self.state = st = SymmetricState.initialize(self.protocol_name, self.prologue, self.trace)
        st.mix_hash(self.s_pub)
        self._t("pre-message <- s: h = HASH(h || S_pub_r)", s_pub_r=self.s_pub)
        e_pub = message[:KEY_LEN]
        self._token_e_in(e_pub)
        self._token_dh("es", self.s, e_pub, "E_pub_i/S_priv_r")
        enc_static = message[KEY_LEN : 2 * KEY_LEN + TAG_LEN]
        self.rs = rs = st.decrypt_and_hash(enc_static)
        self._t(
            "s: S_pub_i = AEAD-open(k, 0, enc_static, h); h = HASH(h || enc_static)",
            s_pub_i=rs,
            enc_static=enc_static,
        )
        pre = static_static.get(rs) if static_static is not None else None
        if pre is not None:
            st.mix_key(pre)
            self._t(
                "ss: (ck, k) = KDF2(ck, DH(S_priv_r, S_pub_i))  [precomputed]",
                dh=pre,
                k=st.k or b"",
            )
        else:
            self._token_dh("ss", self.s, rs, "S_pub_i/S_priv_r")
        enc_payload = message[2 * KEY_LEN + TAG_LEN :]
        payload = st.decrypt_and_hash(enc_payload)
        self._t(
            "payload: AEAD-open(k, 0, enc, h); h = HASH(h || enc)",
            payload=payload,
            enc_payload=enc_payload,
        )
        return payload

    def write_response(
        self,
        ephemeral_private: bytes | DHPrivateKey,
        payload: bytes = b"",
        *,
        psk: bytes | None = None,
    ) -> bytes:
        """<- e, ee, se, psk, then the payload. In IKpsk2 the PSK is first
        needed here, so a responder that learns who the initiator is from
        message 1 passes that peer's *psk* now."""
        st = self.state
        if st is None or self.rs is None:
            raise LocalProtocolError("no initiation was read")
        if psk is not None:
            if self.psk is None or len(psk) != KEY_LEN:
                raise LocalProtocolError("a 32-byte psk, and only in a psk pattern")
            self.psk = psk
        e_pub = self._token_e_out(ephemeral_private)
        assert self.re is not None and self.e is not None
        self._token_dh("ee", self.e, self.re, "E_pub_i/E_priv_r")
        self._token_dh("se", self.e, self.rs, "S_pub_i/E_priv_r")
        if self.psk is not None:
            self._token_psk()
        enc_payload = st.encrypt_and_hash(payload)
        self._t(
            "payload: enc = AEAD(k, 0, payload, h); h = HASH(h || enc)",
            payload=payload,
            enc_payload=enc_payload,
        )
        self.transport_keys = self._split(initiator=False)
        return e_pub + enc_payload


__all__ = [
    "CipherState",
    "Initiator",
    "Responder",
    "SymmetricState",
    "Trace",
    "TraceStep",
    "TransportKeys",
]
