"""Follow WireGuard handshakes in a capture and decrypt what they protect.

Which secrets open what is fixed by Noise_IKpsk2 (whitepaper 5.4.2-5.4.4), and
this follows the same rules as Wireshark's dissector (``packet-wireguard.c``):

================================  ============================================
message                           opens with
================================  ============================================
initiation (static, timestamp)    the responder's static private key; or the
                                  initiator's ephemeral and static private keys
response, hence transport keys    the initiator's ephemeral and static private
                                  keys; or the responder's ephemeral private
                                  key once the initiation was opened
transport data                    the transport keys of its handshake
cookie reply                      nothing secret: the responder's public key
                                  and the mac1 it answers
================================  ============================================

So the key log one endpoint writes (its static private key, the peer's static
public key, each of its ephemeral private keys, the preshared key) opens every
session it took part in, from either role.

Every handshake computation is the core's own (:mod:`wireguard.noise` and
:mod:`wireguard.handshake`): a passive observer holding one side's secrets
*replays* that side. The responder's side is replayed by reading the initiation
and writing the response again with the logged ephemeral key; the result must
equal the captured response byte for byte, which authenticates it. The
initiator's side is replayed by writing the initiation again; the one input
the observer lacks, the timestamp, is recovered first because ChaCha20 is a
stream cipher (the encryption of 12 zero bytes under the same key and nonce is
the keystream), and the replayed message must again equal the captured one,
tag included.

:class:`CaptureDecryptor` is sans-I/O (datagrams in, :class:`Record` out); the
command (:mod:`wireguard.cli.decrypt`) owns the files.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import itertools
import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from .capture import (
    Address,
    KeyLog,
    format_address,
    ip_packet_length,
    parse_ip,
)
from .constants import KEY_LEN, MAC_LEN, TAG_LEN, TAI64N_LEN
from .cookie import cookie_key, mac1_key
from .crypto import DHPrivateKey, aead_decrypt, mac, tai64n_to_unix, xaead_decrypt
from .errors import DecryptionError, WireGuardError
from .handshake import consume_initiation
from .keys import PrivateKey
from .messages import (
    MAC1_OFFSET_INITIATION,
    MAC1_OFFSET_RESPONSE,
    CookieReply,
    Initiation,
    Response,
    TransportData,
    parse,
)
from .noise import Initiator, Responder, Trace

__all__ = [
    "CaptureDecryptor",
    "KeyRing",
    "Record",
    "decrypt_datagrams",
    "describe_packet",
    "gso_segments",
]


# --- keys ------------------------------------------------------------------------


class KeyRing:
    """The secrets an observer holds, indexed the way the handshake looks
    them up: static and ephemeral private keys by their public key, static
    public keys for finding a message's receiver by its mac1, preshared keys
    by the ephemeral key logged with them."""

    def __init__(self) -> None:
        self.static_private: dict[bytes, DHPrivateKey] = {}
        self.ephemeral_private: dict[bytes, DHPrivateKey] = {}
        self.psk_by_ephemeral: dict[bytes, list[bytes]] = {}
        self.psks: list[bytes] = []
        self._mac1_keys: dict[bytes, bytes] = {}

    def __len__(self) -> int:
        return len(self._mac1_keys) + len(self.ephemeral_private) + len(self.psks)

    def add_static_private(self, raw: bytes) -> None:
        key = DHPrivateKey(raw)
        self.static_private[key.public] = key
        self.add_static_public(key.public)

    def add_static_public(self, public: bytes) -> None:
        if public not in self._mac1_keys:
            self._mac1_keys[public] = mac1_key(public)

    def add_ephemeral_private(self, raw: bytes) -> bytes:
        key = DHPrivateKey(raw)
        self.ephemeral_private[key.public] = key
        return key.public

    def add_psk(self, psk: bytes, ephemeral_public: bytes | None = None) -> None:
        if ephemeral_public is None:
            if psk not in self.psks:
                self.psks.append(psk)
        else:
            self.psk_by_ephemeral.setdefault(ephemeral_public, []).append(psk)

    def add_keylog(self, log: KeyLog) -> None:
        for raw in log.static_private:
            self.add_static_private(raw)
        for raw in log.remote_static_public:
            self.add_static_public(raw)
        for raw in log.ephemeral_private:
            self.add_ephemeral_private(raw)
        for public, psks in log.psk_by_ephemeral.items():
            for psk in psks:
                self.add_psk(psk, public)
        for psk in log.orphan_psks:
            self.add_psk(psk)

    def mac1_owner(self, message: bytes, mac1_offset: int) -> bytes | None:
        """The static public key whose mac1 key authenticates *message*: the
        receiver it was sent to (mac1 is keyed by the receiver's public key,
        whitepaper 5.4.4), if that key is known."""
        covered, tag = message[:mac1_offset], message[mac1_offset : mac1_offset + MAC_LEN]
        for public, key in self._mac1_keys.items():
            if mac(key, covered) == tag:
                return public
        return None

    def psk_candidates(self, *ephemeral_publics: bytes | None) -> list[bytes]:
        """Preshared keys to try, in Wireshark's order: those logged with the
        initiator's ephemeral, then the responder's, then any given without an
        ephemeral, then the all-zero key that means "none"."""
        out: list[bytes] = []
        for public in ephemeral_publics:
            if public is not None:
                out += self.psk_by_ephemeral.get(public, [])
        out += self.psks
        out.append(bytes(KEY_LEN))
        return list(dict.fromkeys(out))


# --- records -----------------------------------------------------------------------


@dataclass
class Record:
    """What one WireGuard datagram showed, with what the keys opened."""

    frame: int
    timestamp: float
    src: Address
    dst: Address
    kind: str
    """"initiation", "response", "cookie reply", "transport data" or "keepalive"."""
    sender_index: int | None = None
    receiver_index: int | None = None
    counter: int | None = None
    initiator_public: bytes | None = None
    responder_public: bytes | None = None
    tai64n: bytes | None = None
    handshake_ok: bool | None = None
    """For a response: True if the transport keys were derived, False if the
    keys at hand did not open it, None if there were none to try."""
    cookie: bytes | None = None
    inner: bytes | None = None
    """The decrypted inner IP packet with WireGuard's padding removed (empty
    for a keepalive), None if the message was not decrypted."""
    note: str = ""
    traces: list[tuple[str, Trace]] = field(default_factory=list)

    def describe(self, start: float = 0.0) -> str:
        """One line: frame, time since *start*, addresses, message, contents."""
        head = (
            f"{self.frame:>4} {self.timestamp - start:10.6f} "
            f"{format_address(self.src)} -> {format_address(self.dst)} {self.kind}"
        )
        parts: list[str] = []
        if self.sender_index is not None:
            parts.append(f"sender={self.sender_index:#010x}")
        if self.receiver_index is not None:
            parts.append(f"receiver={self.receiver_index:#010x}")
        if self.counter is not None:
            parts.append(f"counter={self.counter}")
        if self.kind == "initiation":
            if self.initiator_public is not None:
                parts.append(f"initiator={_b64(self.initiator_public)}")
            if self.tai64n is not None:
                parts.append(f"timestamp={_format_tai64n(self.tai64n)}")
        elif self.kind == "response" and self.handshake_ok:
            parts.append("handshake ok, transport keys derived")
        elif self.kind == "cookie reply" and self.cookie is not None:
            parts.append(f"cookie={self.cookie.hex()}")
        elif self.kind == "transport data" and self.inner is not None:
            parts.append(describe_packet(self.inner))
        if self.note:
            parts.append(f"({self.note})")
        return " ".join([head, *parts])


def _b64(raw: bytes) -> str:
    return PrivateKey(raw).to_base64()


def _format_tai64n(stamp: bytes) -> str:
    seconds = tai64n_to_unix(stamp)
    try:
        when = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return f"TAI64N:{stamp.hex()}"
    return when.isoformat(timespec="microseconds").replace("+00:00", "Z")


# --- describing inner packets ------------------------------------------------------------

_ICMP_NAMES = {
    0: "echo reply",
    3: "destination unreachable",
    5: "redirect",
    8: "echo request",
    11: "time exceeded",
    12: "parameter problem",
}
_ICMPV6_NAMES = {
    1: "destination unreachable",
    2: "packet too big",
    3: "time exceeded",
    4: "parameter problem",
    128: "echo request",
    129: "echo reply",
    133: "router solicitation",
    134: "router advertisement",
    135: "neighbor solicitation",
    136: "neighbor advertisement",
}
_TCP_FLAGS = ((0x02, "SYN"), (0x10, "ACK"), (0x01, "FIN"), (0x04, "RST"), (0x08, "PSH"))


def describe_packet(packet: bytes) -> str:
    """A one-line summary of an inner IP packet, in the spirit of tshark's
    Info column: ``ICMP echo request 10.0.0.1 -> 10.0.0.2 id=1 seq=1``."""
    if not packet:
        return "keepalive"
    ip = parse_ip(packet)
    if ip is None:
        return f"not an IP packet ({len(packet)} bytes)"
    body = ip.payload
    if ip.fragment:
        return f"IPv{ip.version} fragment {ip.src} -> {ip.dst} proto={ip.protocol}"
    if ip.protocol in (1, 58) and len(body) >= 4:
        names = _ICMP_NAMES if ip.protocol == 1 else _ICMPV6_NAMES
        label = "ICMP" if ip.protocol == 1 else "ICMPv6"
        name = names.get(body[0], f"type {body[0]} code {body[1]}")
        text = f"{label} {name} {ip.src} -> {ip.dst}"
        if body[0] in (0, 8, 128, 129) and len(body) >= 8:
            ident, seq = struct.unpack_from("!HH", body, 4)
            text += f" id={ident} seq={seq}"
        return text
    if ip.protocol in (6, 17) and len(body) >= 8:
        sport, dport = struct.unpack_from("!HH", body)
        src, dst = format_address((ip.src, sport)), format_address((ip.dst, dport))
        if ip.protocol == 17:
            return f"UDP {src} -> {dst} len={len(body) - 8}"
        if len(body) >= 20:
            flags = body[13]
            flag_names = ", ".join(n for bit, n in _TCP_FLAGS if flags & bit)
            data = len(body) - (body[12] >> 4) * 4
            return f"TCP {src} -> {dst} [{flag_names}] len={max(data, 0)}"
    return f"IPv{ip.version} {ip.src} -> {ip.dst} proto={ip.protocol} len={len(body)}"


# --- following handshakes ------------------------------------------------------------

_H = TypeVar("_H", Initiator, Responder)


def _fork(handshake: _H, psk: bytes, trace: Trace | None) -> _H:
    """A copy of a handshake state that can be driven on without touching the
    original, so each candidate preshared key starts from the same point."""
    twin = copy.copy(handshake)
    assert handshake.state is not None
    twin.state = dataclasses.replace(handshake.state)
    twin.psk = psk
    twin.trace = trace
    return twin


def _replay_initiation(
    static: DHPrivateKey,
    responder_public: bytes,
    ephemeral: DHPrivateKey,
    message: Initiation,
    trace: Trace | None,
) -> tuple[Initiator, bytes] | None:
    """Write the initiation again as its initiator did, from the initiator's
    static and ephemeral private keys; return the initiator state and the
    timestamp if the result is the captured message, byte for byte."""
    body = message.noise_body
    head = KEY_LEN + KEY_LEN + TAG_LEN  # ephemeral, then encrypted static
    try:
        probe = Initiator(static, responder_public).write_initiation(ephemeral, bytes(TAI64N_LEN))
        if probe[:head] != body[:head]:
            return None  # not this static key (or not this responder)
        # Same key, nonce 0, same length: the ciphertext of zeros is the keystream.
        stream = probe[head : head + TAI64N_LEN]
        timestamp = bytes(a ^ b for a, b in zip(stream, body[head:], strict=False))
        initiator = Initiator(static, responder_public, trace=trace)
        if initiator.write_initiation(ephemeral, timestamp) != body:
            return None
    except WireGuardError:
        return None
    return initiator, timestamp


MAX_PENDING: Final = 4096
"""Unanswered initiations a :class:`CaptureDecryptor` holds for their
response, and mac1s of messages a cookie reply may answer; beyond that the
oldest are forgotten (and counted). A real capture has a few at a time: a
response follows its initiation within a round trip, and an unanswered
initiator retries every 5 seconds (REKEY_TIMEOUT) with a new index."""

MAX_SESSIONS: Final = 65536
"""Transport keys a :class:`CaptureDecryptor` holds, two per handshake
followed; beyond that the oldest are forgotten (and counted). Keys are
rejected after 180 seconds (REJECT_AFTER_TIME), so only a capture with
hundreds of handshakes a second would need more."""

PER_INDEX: Final = 8
"""Pending initiations, or transport keys, held for one index: more than one
is a duplicate frame or a chance collision of random indices; many are a
replay, which would otherwise make every later message try them all."""

_T = TypeVar("_T")


class _Held(Generic[_T]):
    """Values by 32-bit index, a few per index, at most *limit* in all: the
    oldest is forgotten (and counted in :attr:`forgotten`) to make room."""

    def __init__(self, limit: int, per_index: int = PER_INDEX) -> None:
        self.limit = limit
        self.per_index = per_index
        self.forgotten = 0
        self._by_index: dict[int, list[tuple[int, _T]]] = {}
        self._order: OrderedDict[int, int] = OrderedDict()  # serial -> index
        self._serials = itertools.count()

    def __len__(self) -> int:
        return len(self._order)

    def get(self, index: int) -> list[_T]:
        """The values held for *index*, oldest first."""
        return [value for _, value in self._by_index.get(index, ())]

    def add(self, index: int, value: _T) -> None:
        serial = next(self._serials)
        held = self._by_index.setdefault(index, [])
        held.append((serial, value))
        self._order[serial] = index
        if len(held) > self.per_index:
            self._forget(index)
        if len(self._order) > self.limit:
            # Serials grow, so the oldest of all is the first of its index.
            self._forget(next(iter(self._order.values())))

    def remove(self, index: int, value: _T) -> None:
        held = self._by_index[index]
        position = next(i for i, (_, v) in enumerate(held) if v is value)
        del self._order[held[position][0]]
        del held[position]
        if not held:
            del self._by_index[index]

    def _forget(self, index: int) -> None:
        self.remove(index, self._by_index[index][0][1])
        self.forgotten += 1


@dataclass(eq=False)
class _Pending:
    """A handshake seen up to its initiation, waiting for the response."""

    sender_index: int
    ephemeral: bytes
    initiator_public: bytes | None = None
    responder_public: bytes | None = None
    responder: Responder | None = None
    initiator: Initiator | None = None


@dataclass
class _Keys:
    key: bytes
    initiator_public: bytes | None
    responder_public: bytes | None


class CaptureDecryptor:
    """Datagrams in, :class:`Record` out: the handshakes it can follow with
    the keys of its :class:`KeyRing`, and the transport data of those.

    Sans-I/O, and the order of datagrams is the only state: feed them in
    capture order. Keys may be added to the key ring between datagrams (a
    pcapng carries its key log in blocks among the packets)."""

    def __init__(
        self,
        keys: KeyRing,
        *,
        trace: bool = False,
        max_pending: int | None = None,
        max_sessions: int | None = None,
    ) -> None:
        self.keys = keys
        self.trace = trace
        self._pending: _Held[_Pending] = _Held(MAX_PENDING if max_pending is None else max_pending)
        self._sessions: _Held[_Keys] = _Held(MAX_SESSIONS if max_sessions is None else max_sessions)
        self._mac1_sent: _Held[tuple[bytes, bytes]] = _Held(self._pending.limit, per_index=1)
        self._stats = {
            "messages": 0, "handshakes": 0, "transport": 0, "decrypted": 0, "gso datagrams": 0,
        }  # fmt: skip

    @property
    def stats(self) -> dict[str, int]:
        """Counts so far: WireGuard messages, handshakes followed, transport
        data messages and how many were decrypted, UDP GSO datagrams split
        (:meth:`feed_all`); and what the bounds made
        it forget: unanswered initiations, transport keys, and mac1s of
        messages a cookie reply might answer (see :data:`MAX_PENDING`,
        :data:`MAX_SESSIONS`, :data:`PER_INDEX`)."""
        return {
            **self._stats,
            "forgotten initiations": self._pending.forgotten,
            "forgotten sessions": self._sessions.forgotten,
            "forgotten mac1s": self._mac1_sent.forgotten,
        }

    def feed_all(
        self, frame: int, timestamp: float, src: Address, dst: Address, payload: bytes
    ) -> list[Record]:
        """Process one captured UDP payload: a record per WireGuard message in
        it. That is one, but for a UDP GSO send captured before the kernel
        cut it into datagrams (:func:`gso_segments`): then each of its
        messages, noted as a segment of it."""
        segments = gso_segments(payload)
        if segments is None:
            record = self.feed(frame, timestamp, src, dst, payload)
            return [] if record is None else [record]
        self._stats["gso datagrams"] += 1
        records = []
        for i, segment in enumerate(segments, 1):
            record = self.feed(frame, timestamp, src, dst, segment)
            if record is not None:
                where = f"segment {i} of {len(segments)} of a UDP GSO datagram"
                record.note = f"{where}; {record.note}" if record.note else where
                records.append(record)
        return records

    def feed(
        self, frame: int, timestamp: float, src: Address, dst: Address, payload: bytes
    ) -> Record | None:
        """Process one UDP payload as one datagram; None if it is not a
        WireGuard message (:meth:`feed_all` also splits UDP GSO sends).

        A datagram counts as WireGuard when its type, reserved bytes and size
        fit one of the four messages, as in Wireshark's heuristic."""
        try:
            message = parse(payload)
        except WireGuardError:
            return None
        self._stats["messages"] += 1
        record = Record(frame, timestamp, src, dst, "")
        if isinstance(message, Initiation):
            self._initiation(record, message, bytes(payload))
        elif isinstance(message, Response):
            self._response(record, message, bytes(payload))
        elif isinstance(message, CookieReply):
            self._cookie_reply(record, message)
        else:
            self._transport(record, message)
        return record

    def _new_trace(self, role: str) -> Trace | None:
        return Trace(role) if self.trace else None

    def _initiation(self, record: Record, msg: Initiation, data: bytes) -> None:
        record.kind = "initiation"
        record.sender_index = msg.sender_index
        keys = self.keys
        r_pub = keys.mac1_owner(data, MAC1_OFFSET_INITIATION)
        record.responder_public = r_pub
        if r_pub is not None:
            self._remember_mac1(msg.sender_index, data[MAC1_OFFSET_INITIATION:], r_pub)
        pending = _Pending(msg.sender_index, msg.unencrypted_ephemeral, responder_public=r_pub)
        # The responder's way: its static private key opens the message.
        if r_pub is not None and r_pub in keys.static_private:
            trace = self._new_trace("responder")
            try:
                consumed = consume_initiation(
                    data, static_private=keys.static_private[r_pub], trace=trace
                )
            except WireGuardError as exc:
                record.note = f"does not open with the responder's key: {exc}"
            else:
                pending.responder = consumed.responder
                pending.initiator_public = consumed.initiator_static
                record.tai64n = consumed.timestamp
                if trace is not None:
                    record.traces.append(("Responder consumes the handshake initiation", trace))
        # The initiator's way: replay it from its ephemeral and static keys.
        ephemeral = keys.ephemeral_private.get(msg.unencrypted_ephemeral)
        if ephemeral is not None and r_pub is not None:
            for public, static in keys.static_private.items():
                if pending.initiator_public not in (None, public):
                    continue
                trace = None if record.traces else self._new_trace("initiator")
                replayed = _replay_initiation(static, r_pub, ephemeral, msg, trace)
                if replayed is not None:
                    pending.initiator, record.tai64n = replayed
                    pending.initiator_public = public
                    record.note = ""
                    if trace is not None:
                        record.traces.append(
                            ("Initiator creates the handshake initiation (replayed)", trace)
                        )
                    break
        record.initiator_public = pending.initiator_public
        if pending.responder is None and pending.initiator is None and not record.note:
            record.note = _initiation_hint(r_pub, ephemeral is not None)
        self._pending.add(msg.sender_index, pending)

    def _remember_mac1(self, index: int, mac1: bytes, receiver: bytes) -> None:
        # A later message with the same index replaces the earlier (as before).
        for old in self._mac1_sent.get(index):
            self._mac1_sent.remove(index, old)
        self._mac1_sent.add(index, (mac1[:MAC_LEN], receiver))

    def _response(self, record: Record, msg: Response, data: bytes) -> None:
        record.kind = "response"
        record.sender_index = msg.sender_index
        record.receiver_index = msg.receiver_index
        i_pub = self.keys.mac1_owner(data, MAC1_OFFSET_RESPONSE)
        if i_pub is not None:
            self._remember_mac1(msg.sender_index, data[MAC1_OFFSET_RESPONSE:], i_pub)
        candidates = self._pending.get(msg.receiver_index)
        if not candidates:
            record.note = "no initiation with this index in the capture"
            if self._pending.forgotten:
                record.note += (
                    f", or it was forgotten (as {self._pending.forgotten} unanswered were: "
                    f"only the last {self._pending.limit} are held)"
                )
            return
        tried = False
        for pending in reversed(candidates):
            found, attempted = self._open_response(record, msg, pending)
            tried = tried or attempted
            if found is None:
                continue
            send_i, recv_i = found
            # Messages to the responder carry its index; to the initiator, theirs.
            who = (pending.initiator_public, pending.responder_public)
            self._add_session(msg.sender_index, _Keys(send_i, *who))
            self._add_session(pending.sender_index, _Keys(recv_i, *who))
            self._pending.remove(msg.receiver_index, pending)
            record.initiator_public, record.responder_public = who
            record.handshake_ok = True
            self._stats["handshakes"] += 1
            return
        record.handshake_ok = False if tried else None
        record.note = (
            "does not open with the keys given"
            if tried
            else "needs the initiator's static and ephemeral private keys, "
            "or the responder's ephemeral private key"
        )

    def _add_session(self, index: int, keys: _Keys) -> None:
        # The same handshake captured again derives the same key: hold it once.
        if all(held.key != keys.key for held in self._sessions.get(index)):
            self._sessions.add(index, keys)

    def _open_response(
        self, record: Record, msg: Response, pending: _Pending
    ) -> tuple[tuple[bytes, bytes] | None, bool]:
        """((initiator's sending key, its receiving key) or None, whether any
        key could be tried)."""
        psks = self.keys.psk_candidates(pending.ephemeral, msg.unencrypted_ephemeral)
        tried = False
        if pending.initiator is not None:
            tried = True
            for psk in psks:
                trace = self._new_trace("initiator")
                twin = _fork(pending.initiator, psk, trace)
                try:
                    twin.read_response(msg.noise_body)
                except WireGuardError:
                    continue
                assert twin.transport_keys is not None
                if trace is not None:
                    record.traces.append(("Initiator consumes the handshake response", trace))
                return (twin.transport_keys.sending_key, twin.transport_keys.receiving_key), True
        ephemeral = self.keys.ephemeral_private.get(msg.unencrypted_ephemeral)
        if pending.responder is not None and ephemeral is not None:
            tried = True
            for psk in psks:
                trace = self._new_trace("responder")
                responder = _fork(pending.responder, psk, trace)
                try:
                    replayed = responder.write_response(ephemeral, b"", psk=psk)
                except WireGuardError:
                    continue
                if replayed != msg.noise_body:
                    continue
                assert responder.transport_keys is not None
                if trace is not None:
                    record.traces.append(
                        ("Responder creates the handshake response (replayed)", trace)
                    )
                keys = responder.transport_keys
                return (keys.receiving_key, keys.sending_key), True
        return None, tried

    def _cookie_reply(self, record: Record, msg: CookieReply) -> None:
        # The cookie is encrypted under HASH("cookie--" || responder's public
        # key) with the answered message's mac1 as associated data (5.4.7):
        # nothing secret, only what an observer of that message saw.
        record.kind = "cookie reply"
        record.receiver_index = msg.receiver_index
        sent = self._mac1_sent.get(msg.receiver_index)
        if not sent:
            record.note = "the message it answers is not in the capture, or its receiver unknown"
            if self._mac1_sent.forgotten:
                record.note += ", or it was forgotten"
            return
        mac1, public = sent[-1]
        try:
            record.cookie = xaead_decrypt(cookie_key(public), msg.nonce, msg.encrypted_cookie, mac1)
        except DecryptionError:
            record.note = "cookie does not open"

    def _transport(self, record: Record, msg: TransportData) -> None:
        record.kind = "transport data"
        record.receiver_index = msg.receiver_index
        record.counter = msg.counter
        self._stats["transport"] += 1
        if len(msg.encrypted_packet) == TAG_LEN:
            record.kind = "keepalive"
        sessions = self._sessions.get(msg.receiver_index)
        if not sessions and self._sessions.forgotten:
            record.note = "no transport keys for this receiver, or they were forgotten"
            return
        if not sessions:
            record.note = "no transport keys for this receiver"
            return
        for session in reversed(sessions):
            try:
                # Nonce: 32 zero bits || 64-bit little-endian counter; no
                # associated data (whitepaper 5.4.6).
                plain = aead_decrypt(session.key, msg.counter, msg.encrypted_packet, b"")
            except DecryptionError:
                continue
            self._stats["decrypted"] += 1
            length = ip_packet_length(plain)
            record.inner = plain[:length] if length is not None and length <= len(plain) else plain
            return
        record.note = "does not decrypt with this receiver's transport keys"


_TRANSPORT_HEADER: Final = b"\x04\x00\x00\x00"
_MIN_TRANSPORT: Final = 32  # header (16) and the tag of an empty packet (16)


def gso_segments(payload: bytes) -> list[bytes] | None:
    """The transport data messages of one UDP GSO send, if *payload* is one.

    A sender using UDP_SEGMENT (wireguard-go and this project do) hands the
    kernel a run of equal-size datagrams to one endpoint in one buffer; a
    capture on a link that takes the buffer whole (``lo``, veth) records it
    as one UDP datagram holding them back to back, which no dissector reads
    as WireGuard. It is recognised by its structure: transport messages of
    one size (a multiple of 16, the last one possibly shorter), each with
    the first's receiver index and a greater counter than the one before.
    None for anything else (a single message among them)."""
    size = len(payload)
    if size < 2 * _MIN_TRANSPORT or payload[:4] != _TRANSPORT_HEADER:
        return None
    head = payload[:8]  # type, reserved, receiver index
    first = int.from_bytes(payload[8:16], "little")
    at = payload.find(head, _MIN_TRANSPORT)
    while at != -1:
        if at % 16 == 0 and int.from_bytes(payload[at + 8 : at + 16], "little") > first:
            segments = _cut(payload, at, head)
            if segments is not None:
                return segments
        at = payload.find(head, at + 1)
    return None


def _cut(payload: bytes, step: int, head: bytes) -> list[bytes] | None:
    """*payload* cut every *step* bytes, if every piece is a transport
    message with *head* and counters that increase; else None."""
    last = len(payload) % step or step
    if last < _MIN_TRANSPORT or last % 16:
        return None
    pieces = [payload[at : at + step] for at in range(0, len(payload), step)]
    counter = -1
    for piece in pieces:
        if piece[:8] != head:
            return None
        value = int.from_bytes(piece[8:16], "little")
        if value <= counter:
            return None
        counter = value
    return pieces


def _initiation_hint(responder_public: bytes | None, have_ephemeral: bool) -> str:
    if responder_public is None:
        return "receiver's static key unknown (no key matches mac1)"
    if have_ephemeral:
        return "needs the initiator's static private key with its ephemeral"
    return "needs the responder's static private key, or the initiator's ephemeral private key"


def decrypt_datagrams(
    keys: KeyRing,
    datagrams: Iterable[tuple[float, Address, Address, bytes]],
    *,
    trace: bool = False,
) -> list[Record]:
    """Decrypt a sequence of ``(timestamp, src, dst, payload)`` datagrams in
    memory (frames numbered from 1): the library form of the command."""
    decryptor = CaptureDecryptor(keys, trace=trace)
    records = []
    for number, (timestamp, src, dst, payload) in enumerate(datagrams, 1):
        records += decryptor.feed_all(number, timestamp, src, dst, payload)
    return records

