"""The endpoint: datagrams and tunnel packets in, effects out (sans-I/O).

Shaped like boringtun's ``Tunn`` and aioquic's ``QuicConnection``: the
binding feeds it

- :meth:`Device.receive_datagram` (bytes, source address, now): a UDP
  datagram from the network,
- :meth:`Device.send_packet` (bytes, now): an IP packet from the tunnel,
- :meth:`Device.handle_timer` (now): when :meth:`Device.next_deadline` came,

and each returns an :class:`Effects`: datagrams to send where, IP packets to
deliver to the tunnel, and events. Nothing here reads a clock, draws random
bytes except through the injected source, or touches a socket.

Malformed, forged, replayed and unauthenticated input never raises out of
the device: it is dropped and counted in :attr:`Device.drops` by reason, and
no state changes before a message is authenticated.

The decisions follow the whitepaper (section 5 and 6) and where the paper is
silent the Linux kernel (``receive.c``, ``send.c``, ``noise.c``,
``timers.c``, ``cookie.c``, ``ratelimiter.c``).
"""

from __future__ import annotations

import enum
import ipaddress
import operator
import os
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat

from .address import Address
from .allowedips import AllowedIPs
from .constants import (
    COOKIE_REPLY_LEN,
    INITIATION_LEN,
    INITIATIONS_PER_SECOND,
    KEEPALIVE_TIMEOUT,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT_DATA,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    RESPONSE_LEN,
    TRANSPORT_MIN_LEN,
    UNDER_LOAD_AFTER_TIME,
)
from .cookie import CookieChecker
from .crypto import DHPrivateKey, RandomSource, dh_generate, tai64n
from .errors import DecryptionError, RemoteProtocolError, ReplayError, WireGuardError
from .handshake import consume_initiation, consume_response, create_initiation, create_response
from .ipheader import (
    IPV4_DST,
    IPV4_HEADER_LEN,
    IPV4_SRC,
    IPV4_TOTAL_LENGTH,
    IPV6_DST,
    IPV6_HEADER_LEN,
    IPV6_PAYLOAD_LENGTH,
    IPV6_SRC,
    destination,
)
from .keys import PresharedKey, PrivateKey, PublicKey
from .messages import CookieReply
from .noise import Trace
from .peer import Peer, PendingHandshake
from .ratelimit import RateLimiter
from .session import Keypair, KeypairExhausted
from .timerheap import TimerHeap

_u32 = struct.Struct("<I").unpack_from
_u16be = struct.Struct(">H").unpack_from
_unpack_head = struct.Struct("<II").unpack_from  # type word, receiver index
_NO_RUN = object()  # send_packets: no run of packets under way


def _sealable(peer: Peer, keypair: Keypair, now: float) -> bool:
    """Whether *peer*'s packets go straight out on *keypair* (its current
    one): nothing staged before them, an endpoint, and a keypair that may
    still send (REJECT_AFTER_TIME; the message limit is the seal's)."""
    return (
        not peer.staged
        and peer.endpoint is not None
        and keypair.sending_valid
        and now - keypair.created < REJECT_AFTER_TIME
    )


_first_byte = operator.itemgetter(0)
_ipv4_destination = operator.itemgetter(IPV4_DST)
_IPV4_FIRST_BYTES = bytes(range(0x40, 0x50))  # version 4, any header length
_IPV4_WHOLE_HEADER = bytes(range(0x45, 0x50))  # version 4, a header of 20 bytes or more
_ipv4_source = operator.itemgetter(IPV4_SRC)
_ipv4_total_length = operator.itemgetter(slice(IPV4_TOTAL_LENGTH, IPV4_TOTAL_LENGTH + 2))
_TRANSPORT_WORD = struct.pack("<I", MESSAGE_TRANSPORT_DATA)
_LASTMINUTE_AGE = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
_HANDSHAKE_LEN = {MESSAGE_INITIATION: INITIATION_LEN, MESSAGE_RESPONSE: RESPONSE_LEN}


# --- what a call returns -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """A new keypair is in use with *peer* (we initiated, or the initiator
    confirmed it by sending on it)."""

    peer: PublicKey
    is_initiator: bool


@dataclass(frozen=True, slots=True)
class KeypairRotated:
    """A new keypair became current for *peer*; the old one is now previous."""

    peer: PublicKey


@dataclass(frozen=True, slots=True)
class EndpointChanged:
    """An authenticated packet came from a new address (roaming). Not
    reported when only the local address of a binding's endpoint changed
    (see :mod:`wireguard.address`)."""

    peer: PublicKey
    old: Address | None
    new: Address


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """No handshake completed within REKEY_ATTEMPT_TIME: staged packets dropped."""

    peer: PublicKey


@dataclass(frozen=True, slots=True)
class PeerExpired:
    """3 x REJECT_AFTER_TIME after the last session: all key material erased."""

    peer: PublicKey


Event = HandshakeCompleted | KeypairRotated | EndpointChanged | HandshakeFailed | PeerExpired


@dataclass(slots=True)
class Effects:
    """What must happen after a call: send these datagrams, deliver these
    packets to the tunnel, and these events happened. Pass one Effects to
    several calls to collect a batch."""

    datagrams: list[tuple[bytes, Address]] = field(default_factory=list)
    packets: list[bytes] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.datagrams or self.packets or self.events)


class Drop(enum.StrEnum):
    """Why a datagram or packet was dropped (keys of :attr:`Device.drops`)."""

    MALFORMED = "malformed"
    INVALID_MAC1 = "invalid_mac1"
    COOKIE_SENT = "cookie_reply_sent"
    RATE_LIMITED = "rate_limited"
    HANDSHAKE_INVALID = "handshake_invalid"
    UNKNOWN_PEER = "unknown_peer"
    REPLAYED_TIMESTAMP = "replayed_timestamp"
    INITIATION_FLOOD = "initiation_flood"
    UNKNOWN_INDEX = "unknown_index"
    KEYPAIR_EXPIRED = "keypair_expired"
    DECRYPTION_FAILED = "decryption_failed"
    REPLAYED_COUNTER = "replayed_counter"
    INVALID_INNER_PACKET = "invalid_inner_packet"
    ALLOWED_IPS_MISMATCH = "allowed_ips_mismatch"
    NO_ROUTE = "no_route"
    NO_ENDPOINT = "no_endpoint"
    STAGED_OVERFLOW = "staged_overflow"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    COOKIE_INVALID = "cookie_reply_invalid"
    NO_PRIVATE_KEY = "no_private_key"  # a handshake while the device has no key
    # An initiation to a peer whose public key is a low-order point: no
    # Diffie-Hellman with it can succeed, so nothing is sent (kernel noise.c).
    INVALID_PEER_KEY = "invalid_peer_key"
    # Staged packets of a peer that was removed (kernel send.c
    # wg_packet_purge_staged_packets counts them as tx_dropped).
    STAGED_PURGED = "staged_purged"


class _TimerActions:
    """What one peer's expired timer asks of the Device (timers.TimerActions)."""

    __slots__ = ("device", "now", "out", "peer")

    def __init__(self, device: Device, peer: Peer, now: float, out: Effects) -> None:
        self.device, self.peer, self.now, self.out = device, peer, now, out

    def send_initiation(self, *, is_retry: bool) -> None:
        # The handshake is retried (no answer within REKEY_TIMEOUT) or renewed
        # (data unanswered): the local address replies left from may be the
        # trouble, so it is forgotten (kernel timers.c,
        # wg_socket_clear_peer_endpoint_src).
        peer = self.peer
        endpoint = peer.endpoint
        if endpoint is not None and len(endpoint) > 2:
            peer.endpoint = endpoint[:2]
        self.device._send_initiation(peer, self.now, self.out, is_retry=is_retry)

    def send_keepalive(self) -> None:
        self.device._send_keepalive(self.peer, self.now, self.out)

    def give_up(self) -> None:
        peer = self.peer
        if peer.staged:
            self.device.drops[Drop.HANDSHAKE_TIMEOUT] += len(peer.staged)
            peer.staged.clear()
        self.out.events.append(HandshakeFailed(peer.public_key))

    def zero_key_material(self) -> None:
        # Keys only: staged packets still wait for a handshake, and a held
        # cookie is still good (timers.c wg_queued_expired_zero_key_material).
        self.device._forget_sessions(self.peer)
        self.out.events.append(PeerExpired(self.peer.public_key))


class Device:
    """A WireGuard interface without I/O: the private key, the peers (by
    public key and by receiver index), allowed IPs, and every protocol
    decision.

    *now* is any monotonic time in seconds. TAI64N timestamps need wall-clock
    time, which is ``now + wall_clock_offset``: a binding passes
    ``time.time() - time.monotonic()``; a simulation can leave it at 0.
    """

    def __init__(
        self,
        private_key: PrivateKey,
        *,
        random: RandomSource = os.urandom,
        wall_clock_offset: float = 0.0,
        mtu: int | None = 1420,
        under_load_threshold: int = 512,
        listen_port: int | None = None,
    ) -> None:
        self._random = random
        self.wall_clock_offset = wall_clock_offset
        self.mtu = mtu
        self.listen_port = listen_port
        self.fwmark = 0
        self.under_load_threshold = under_load_threshold
        self.peers: dict[PublicKey, Peer] = {}
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        self.drops: Counter[str] = Counter()
        self.trace_handshakes = False
        # Called with (peer public key, ephemeral private key) for each handshake.
        self.on_ephemeral_key: Callable[[PublicKey, bytes], None] | None = None
        self.last_trace: list[tuple[str, Trace]] = []
        # receiver index -> (peer, keypair or None for our pending handshake)
        self._index: dict[int, tuple[Peer, Keypair | None]] = {}
        # When to wake up for which peer: a lazy heap (wireguard.timerheap).
        self._timer_heap: TimerHeap[Peer] = TimerHeap()
        # One bound method for every peer's timers to report deadlines to.
        self._schedule = self._timer_heap.schedule
        self._handshake_window_start = 0.0
        self._handshakes_in_window = 0
        self._last_under_load: float | None = None
        self._ratelimiter = RateLimiter()
        # No identity until set_private_key gives one (an all-zero key keeps none).
        self.private_key = PrivateKey(bytes(32))
        self.has_identity = False
        self._static: DHPrivateKey | None = None
        self.public_key = PublicKey(bytes(32))
        self._cookie_checker = CookieChecker(self.public_key.raw, self._random)
        self.set_private_key(private_key)

    # --- configuration ---------------------------------------------------

    def set_private_key(self, private_key: PrivateKey) -> None:
        """Change the interface key, as the kernel's ``wg set private-key``
        does (netlink.c ``set_device``): the same key again changes nothing;
        a peer whose key equals our new public key is removed; every peer's
        pending handshake is dropped and its current and next keypairs stop
        sending (all of them still receive what is in flight), and the
        handshake rate limit is reset, so the next packet starts a handshake
        with the new key at once (noise.c
        ``wg_noise_expire_current_peer_keypairs``).

        An all-zero key means "no key", as for the kernel and wireguard-go
        (``wg set wg0 private-key /dev/null``): the device keeps its peers but
        makes and answers no handshakes (:attr:`has_identity` is False,
        :attr:`public_key` all zeros) until it is given a key again."""
        if private_key == self.private_key:
            return
        self.private_key = private_key
        self.has_identity = any(private_key.raw)
        if self.has_identity:
            self._static = DHPrivateKey(private_key.raw)
            self.public_key = private_key.public_key
        else:
            self._static = None
            self.public_key = PublicKey(bytes(32))
        if self.has_identity and self.public_key in self.peers:
            self.remove_peer(self.public_key)
        # The cookie secret stays; mac1 and cookie keys follow our key
        # (cookie.c wg_cookie_checker_precompute_device_keys).
        self._cookie_checker.set_public_key(self.public_key.raw)
        for peer in self.peers.values():
            peer.static_static = self._static_static(peer.public_key)
            self._forget_handshake(peer)
            peer.last_sent_handshake = None
            for keypair in (peer.current, peer.next):
                if keypair is not None:
                    keypair.sending_valid = False

    def _static_static(self, public_key: PublicKey) -> bytes:
        if self._static is None:
            return bytes(32)  # no key of ours: recomputed when one is set
        try:
            return self._static.exchange(public_key.raw)
        except WireGuardError:
            # A low-order key can never complete a handshake; keep the peer
            # configured (as wg does) with a value no DH can produce.
            return bytes(32)

    def add_peer(
        self,
        public_key: PublicKey,
        *,
        preshared_key: PresharedKey | None = None,
        allowed_ips: Iterable[str | ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        endpoint: Address | None = None,
        persistent_keepalive: int = 0,
        now: float | None = None,
    ) -> Peer:
        """Add a peer (or update it if it exists). With *persistent_keepalive*
        and *now*, the first keepalive goes out at once, as wg does when the
        interval is set on a running interface."""
        peer = self.peers.get(public_key)
        if peer is None:
            # The kernel refuses our own key only while we have one (netlink.c
            # set_peer): with none, the all-zero key is a peer like any other.
            if self.has_identity and public_key == self.public_key:
                raise ValueError("a peer cannot have the interface's own public key")
            static = self._static_static(public_key)
            peer = Peer(public_key, static, notify=self._schedule)
            self.peers[public_key] = peer
        if preshared_key is not None:
            peer.preshared_key = preshared_key
        if endpoint is not None:
            peer.endpoint = endpoint
        for network in allowed_ips:
            self.allowed_ips.insert(network, peer)
        if persistent_keepalive:
            peer.timers.set_persistent_keepalive(persistent_keepalive, now)
        return peer

    def set_preshared_key(self, public_key: PublicKey, psk: PresharedKey | None) -> None:
        """Set or (with None) clear a peer's preshared key; takes effect at
        the next handshake."""
        self.peers[public_key].preshared_key = psk

    def send_staged(self, public_key: PublicKey, now: float, out: Effects | None = None) -> Effects:
        """Send what waits for this peer if it can go now (after a
        configuration change gave it an endpoint, say)."""
        out = Effects() if out is None else out
        peer = self.peers[public_key]
        if peer.staged:
            self._send_staged(peer, now, out)
        return out

    def set_persistent_keepalive(self, public_key: PublicKey, interval: int, now: float) -> None:
        self.peers[public_key].timers.set_persistent_keepalive(interval, now)

    def remove_peer(self, public_key: PublicKey) -> None:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return
        self.allowed_ips.remove_value(peer)
        self._forget_sessions(peer)
        if peer.staged:
            self.drops[Drop.STAGED_PURGED] += len(peer.staged)
            peer.staged.clear()
        peer.timers.stop_all()
        self._timer_heap.cancel(peer)

    def clear_peers(self) -> None:
        for key in list(self.peers):
            self.remove_peer(key)

    def clear_sessions(self) -> None:
        """What the kernel does to every peer when the interface goes down
        (device.c ``wg_stop``): pending handshakes and every keypair are
        forgotten, staged packets dropped (counted as ``staged_purged``), timers
        stopped, and the handshake rate limit reset, so that the next packet
        (or :meth:`send_keepalive` for a persistent keepalive, as the kernel
        sends one when the interface comes up) starts a handshake at once.
        Keys, allowed IPs, endpoints, counters, the last handshake time and
        the replay protection of initiations stay."""
        for peer in self.peers.values():
            self._forget_sessions(peer)
            if peer.staged:
                self.drops[Drop.STAGED_PURGED] += len(peer.staged)
                peer.staged.clear()
            peer.timers.stop_all()
            peer.timers.handshake_attempts = 0
            peer.last_sent_handshake = None
            self._timer_heap.cancel(peer)

    def clear_endpoint_sources(self, local: object | None = None) -> int:
        """Forget the local address part of peers' endpoints (see
        :mod:`wireguard.address`): of every peer, or of those whose endpoint
        has the local address *local*. The binding calls this when that
        address stopped working (a send from it was refused) and, as the
        kernel does, when the listen port or the firewall mark changes.
        Returns how many endpoints changed."""
        changed = 0
        for peer in self.peers.values():
            endpoint = peer.endpoint
            if endpoint is None or len(endpoint) < 3:
                continue
            if local is None or endpoint[2] == local:
                peer.endpoint = endpoint[:2]
                changed += 1
        return changed

    def _forget_handshake(self, peer: Peer) -> None:
        """Our pending initiation, if any, can no longer be answered (kernel
        noise.c wg_noise_handshake_clear)."""
        if peer.handshake is not None:
            self._index.pop(peer.handshake.local_index, None)
            peer.handshake = None

    def _forget_sessions(self, peer: Peer) -> None:
        """The pending handshake and every keypair (kernel
        wg_noise_handshake_clear and wg_noise_keypairs_clear); staged packets
        and cookie state are the caller's business."""
        self._forget_handshake(peer)
        for keypair in peer.clear_keypairs():
            self._index.pop(keypair.local_index, None)

    # --- timers ----------------------------------------------------------

    def _reschedule(self, peer: Peer) -> None:
        # A later or cancelled deadline leaves an early entry in the heap,
        # which wakes the device for nothing once and is then replaced:
        # cheaper than a heap update on every packet (the persistent
        # keepalive moves with each one).
        when = peer.timers.earliest()
        if when is not None:
            self._timer_heap.schedule(peer, when)

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or None."""
        heap = self._timer_heap
        while (first := heap.first()) is not None:
            when, peer = first
            if self.peers.get(peer.public_key) is peer:
                return when
            heap.cancel(peer)  # removed
        return None

    def handle_timer(self, now: float, out: Effects | None = None) -> Effects:
        """Run every timer that expired at *now*."""
        out = Effects() if out is None else out
        heap = self._timer_heap
        while (peer := heap.pop_due(now)) is not None:
            if self.peers.get(peer.public_key) is not peer:
                continue
            peer.timers.run_due(now, _TimerActions(self, peer, now, out))
            self._reschedule(peer)
        return out

    def _jitter(self) -> float:
        return int.from_bytes(self._random(2), "little") % 334 / 1000.0

    # --- sending -----------------------------------------------------------

    def send_packet(self, packet: bytes, now: float, out: Effects | None = None) -> Effects:
        """An IP packet from the tunnel: route it by destination to a peer
        (cryptokey routing), encrypt it, or stage it and start a handshake."""
        out = Effects() if out is None else out
        if packet.__class__ is not bytes:
            # A bytearray or memoryview: copied, so padding never writes into
            # the caller's buffer and a staged packet cannot change later.
            packet = bytes(packet)
        dst = destination(packet)
        peer = None if dst is None else self.allowed_ips.lookup(dst)
        if peer is None:
            self.drops[Drop.NO_ROUTE] += 1
            return out
        keypair = peer.current
        endpoint = peer.endpoint
        if endpoint is None:
            # Nowhere to send it or a handshake: dropped now, not staged
            # (kernel device.c wg_xmit).
            self.drops[Drop.NO_ENDPOINT] += 1
            return out
        if keypair is not None and _sealable(peer, keypair, now):
            # The common case, without the staging queue.
            try:
                message = keypair.seal(packet, self.mtu)
            except KeypairExhausted:
                pass  # 2**64 messages: stage and rekey below
            else:
                out.datagrams.append((message, endpoint))
                self._sent_run(peer, keypair, len(message), now, out)
                return out
        if not peer.stage(packet):
            self.drops[Drop.STAGED_OVERFLOW] += 1
        self._send_staged(peer, now, out)
        return out

    def send_packets(
        self, packets: Iterable[bytes], now: float, out: Effects | None = None
    ) -> Effects:
        """Many packets from the tunnel (one wake-up's worth): as
        :meth:`send_packet` for each, but a run of packets to one peer with a
        usable session (the steady state) is sealed by the keypair in one
        call (:meth:`Keypair.seal_batch`), with the per-peer work (keypair
        checks, byte counters, timers, keep_key_fresh) done once per run.
        Anything else goes through :meth:`send_packet`."""
        out = Effects() if out is None else out
        if packets.__class__ is list and len(packets) > 1 and self._send_one_run(packets, now, out):
            return out
        lookup = self.allowed_ips.lookup
        # ipheader.destination, inline: this is the per-packet loop.
        v4_len, v4_dst, v6_len, v6_dst = IPV4_HEADER_LEN, IPV4_DST, IPV6_HEADER_LEN, IPV6_DST
        no_run = _NO_RUN
        run_peer: object = no_run
        run: list[bytes] = []
        last_dst = b""  # no packet's destination
        peer: Peer | None = None
        for packet in packets:
            if packet.__class__ is not bytes:
                packet = bytes(packet)  # never pad the caller's buffer in place
            n = len(packet)
            if n >= v4_len and packet[0] >> 4 == 4:
                dst = packet[v4_dst]
            elif n >= v6_len and packet[0] >> 4 == 6:
                dst = packet[v6_dst]
            else:
                dst = None
            if dst != last_dst:
                last_dst = dst  # type: ignore[assignment]  # None: no destination
                peer = None if dst is None else lookup(dst)
            if peer is run_peer:
                run.append(packet)
                continue
            if run:
                self._seal_run(run_peer, run, now, out)  # type: ignore[arg-type]
                run = []
            run_peer = no_run
            if peer is None:
                self.drops[Drop.NO_ROUTE] += 1
                continue
            keypair = peer.current
            if keypair is None or not _sealable(peer, keypair, now):
                # No usable session: stage and handshake, as send_packet.
                self.send_packet(packet, now, out)
                last_dst = b""  # the peer's state may have changed
                continue
            run_peer = peer
            run.append(packet)
        if run:
            self._seal_run(run_peer, run, now, out)  # type: ignore[arg-type]
        return out

    def _send_one_run(self, packets: list[bytes], now: float, out: Effects) -> bool:
        """The common wake-up, whole: IPv4 packets (``bytes``) all to one
        destination whose peer has a usable session, checked over the whole
        list at once (C loops, nothing in Python per packet) and sealed as one
        run. False, having done nothing, for anything else: the per-packet
        loop of :meth:`send_packets` takes it."""
        first = packets[0]
        count = len(packets)
        if (
            len(first) < IPV4_HEADER_LEN
            or first[0] >> 4 != 4
            or min(map(len, packets)) < IPV4_HEADER_LEN
            or list(map(type, packets)).count(bytes) != count
            or bytes(map(_first_byte, packets)).translate(None, _IPV4_FIRST_BYTES)
        ):
            return False
        dst = first[IPV4_DST]
        if list(map(_ipv4_destination, packets)).count(dst) != count:
            return False
        peer = self.allowed_ips.lookup(dst)
        if peer is None:
            return False
        keypair = peer.current
        if keypair is None or not _sealable(peer, keypair, now):
            return False
        self._seal_run(peer, packets, now, out)
        return True

    def _seal_run(self, peer: Peer, run: list[bytes], now: float, out: Effects) -> None:
        """A run of packets for *peer*, whose current keypair can send."""
        keypair = peer.current
        assert keypair is not None and peer.endpoint is not None
        messages: list[bytes] = []
        keypair.seal_batch(run, self.mtu, messages)
        if messages:
            out.datagrams.extend(zip(messages, repeat(peer.endpoint)))
            self._sent_run(peer, keypair, sum(map(len, messages)), now, out)
        for packet in run[len(messages) :]:
            self.send_packet(packet, now, out)  # 2**64 messages: stage and rekey

    def _sent_run(self, peer: Peer, keypair: Keypair, tx: int, now: float, out: Effects) -> None:
        """After one or a run of data messages (*tx* bytes) went out on *keypair*."""
        peer.tx_bytes += tx
        self._sent(peer, keypair, now, out, True)

    def initiate_handshake(self, public_key: PublicKey, now: float) -> Effects:
        """Start a handshake with a peer now (as a first packet would)."""
        out = Effects()
        self._send_initiation(self.peers[public_key], now, out, is_retry=False)
        return out

    def send_keepalive(self, public_key: PublicKey, now: float) -> Effects:
        out = Effects()
        self._send_keepalive(self.peers[public_key], now, out)
        return out

    def _send_keepalive(self, peer: Peer, now: float, out: Effects) -> None:
        # Staged whatever the endpoint, as the kernel stages it (send.c
        # wg_packet_send_keepalive): without one it waits for the endpoint.
        if not peer.staged:
            peer.stage(b"")
        self._send_staged(peer, now, out)

    def _send_staged(self, peer: Peer, now: float, out: Effects) -> None:
        keypair = peer.current
        if keypair is None or not keypair.can_send(now):
            self._send_initiation(peer, now, out, is_retry=False)
            return
        staged = peer.staged
        if not staged:
            return
        if len(staged) > REJECT_AFTER_MESSAGES - keypair.send_counter:
            # Not a nonce for each: none goes, and a new session is sought
            # (kernel send.c wg_packet_send_staged_packets, out_invalid).
            keypair.sending_valid = False
            self._send_initiation(peer, now, out, is_retry=False)
            return
        endpoint = peer.endpoint
        if endpoint is None:
            self.drops[Drop.NO_ENDPOINT] += len(staged)
            staged.clear()
            return
        data_sent = False
        mtu = self.mtu
        while staged:
            packet = staged.popleft()
            if packet:
                data_sent = True
            message = keypair.seal(packet, mtu)
            peer.tx_bytes += len(message)
            out.datagrams.append((message, endpoint))
        self._sent(peer, keypair, now, out, data_sent)

    def _sent(self, peer: Peer, keypair: Keypair, now: float, out: Effects, data: bool) -> None:
        """Timers and keep_key_fresh after transport messages went out."""
        peer.timers.on_transport_sent(now, data, self._jitter)
        # keep_key_fresh (send side): the initiator rekeys after REKEY_AFTER_TIME.
        if keypair.send_counter > REKEY_AFTER_MESSAGES or (
            keypair.is_initiator and now - keypair.created >= REKEY_AFTER_TIME
        ):
            self._send_initiation(peer, now, out, is_retry=False)

    def _send_initiation(self, peer: Peer, now: float, out: Effects, *, is_retry: bool) -> None:
        timers = peer.timers
        timers.on_handshake_queued(is_retry=is_retry)
        # At most one initiation per REKEY_TIMEOUT to a peer.
        last = peer.last_sent_handshake
        if last is not None and now - last < REKEY_TIMEOUT:
            return
        if peer.endpoint is None:
            # Nowhere to send it. The persistent keepalive still runs, as the
            # kernel's does (send.c wg_packet_send_handshake_initiation re-arms
            # it before its send fails): what is staged goes out once an
            # endpoint is configured, without traffic to start it.
            self.drops[Drop.NO_ENDPOINT] += 1
            timers.on_authenticated_packet_traversal(now)
            return
        if self._static is None:
            self.drops[Drop.NO_PRIVATE_KEY] += 1
            return
        # Rate-limited from here on even if the initiation cannot be made
        # (kernel send.c wg_packet_send_handshake_initiation).
        peer.last_sent_handshake = now
        if not any(peer.static_static):
            # DH(our key, the peer's key) is all zeros: a low-order public
            # key, with which no handshake can ever complete (kernel noise.c
            # wg_noise_precompute_static_static, then create_initiation fails).
            self.drops[Drop.INVALID_PEER_KEY] += 1
            return
        index = self._new_index()
        trace = Trace("initiator") if self.trace_handshakes else None
        try:
            message, initiator = create_initiation(
                static_private=self._static,
                peer_public=peer.public_key.raw,
                psk=peer.psk,
                sender_index=index,
                ephemeral_private=self._ephemeral(peer),
                timestamp=tai64n(now + self.wall_clock_offset),
                cookies=peer.cookies,
                now=now,
                trace=trace,
                precomputed_ss=peer.static_static,
            )
        except WireGuardError:
            self.drops[Drop.INVALID_PEER_KEY] += 1
            return
        if trace is not None:
            self.last_trace = [("initiation created", trace)]
        self._forget_handshake(peer)
        peer.handshake = PendingHandshake(index, initiator, now)
        self._index[index] = (peer, None)
        timers.on_authenticated_packet_traversal(now)
        timers.on_authenticated_packet_sent()
        timers.on_handshake_initiated(now, self._jitter())
        peer.tx_bytes += len(message)
        out.datagrams.append((message, peer.endpoint))

    def _ephemeral(self, peer: Peer) -> bytes:
        """A fresh ephemeral private key for a handshake with *peer*. Reported
        to :attr:`on_ephemeral_key` when set: that is how a key log for
        Wireshark is written, and only when the user asks for one."""
        key = dh_generate(self._random)
        if self.on_ephemeral_key is not None:
            self.on_ephemeral_key(peer.public_key, key)
        return key

    def _new_index(self) -> int:
        """A random unused receiver index. On a collision (one in 2**32 per
        index in use with a real source) the next free value is taken rather
        than drawing again: a deterministic source that repeats itself would
        otherwise loop for ever. Bounded by the number of indices in use."""
        index: int = _u32(self._random(4))[0]
        while index in self._index:
            index = (index + 1) & 0xFFFFFFFF
        return index

    # --- receiving ---------------------------------------------------------

    def receive_datagram(
        self, data: bytes, source: Address, now: float, out: Effects | None = None
    ) -> Effects:
        """A UDP datagram from *source*. Never raises for what the network
        sent: a bad datagram is counted in :attr:`drops` and ignored."""
        out = Effects() if out is None else out
        if data.__class__ is not bytes:
            data = bytes(data)  # a bytearray or memoryview the caller may reuse
        if data[:4] == _TRANSPORT_WORD:
            self._receive_transport(data, source, now, out)
            return out
        if len(data) < 4:
            self.drops[Drop.MALFORMED] += 1
            return out
        kind = _u32(data)[0]
        try:
            if kind == MESSAGE_TRANSPORT_DATA:
                self._receive_transport(data, source, now, out)
            elif len(data) == _HANDSHAKE_LEN.get(kind):
                self._receive_handshake(kind, data, source, now, out)
            elif kind == MESSAGE_COOKIE_REPLY and len(data) == COOKIE_REPLY_LEN:
                self._receive_cookie_reply(data, now)
            else:
                self.drops[Drop.MALFORMED] += 1
        except RemoteProtocolError:
            self.drops[Drop.MALFORMED] += 1
        return out

    def receive_datagrams(
        self, datagrams: Iterable[tuple[bytes, Address]], now: float, out: Effects | None = None
    ) -> Effects:
        """A batch of datagrams read in one wake-up, one Effects for all.

        The same deliveries, drops, events and state as :meth:`receive_datagram`
        for each in turn. Transport data on a peer's current keypair from its
        known endpoint (the steady state) takes a fast path: a run of such
        datagrams is opened by the keypair in one call
        (:meth:`Keypair.open_batch`), and the bookkeeping every authenticated
        packet triggers (byte counters, timers, keep_key_fresh), which
        depends only on *now*, is done once at the end of the run. Anything
        else goes through :meth:`receive_datagram`."""
        out = Effects() if out is None else out
        if not isinstance(datagrams, (list, tuple)):
            datagrams = list(datagrams)
        slow = self.receive_datagram
        steady = self._steady
        unpack = _unpack_head
        transport, min_len = MESSAGE_TRANSPORT_DATA, TRANSPORT_MIN_LEN
        i, n = 0, len(datagrams)
        while i < n:
            data, source = datagrams[i]
            if len(data) < min_len or (head := unpack(data))[0] != transport:
                slow(data, source, now, out)
                i += 1
                continue
            found = steady(head[1], source, now)
            if found is None:
                self._receive_transport(data, source, now, out)
                i += 1
                continue
            i = self._open_run(*found, datagrams, i, source, now, out)
        return out

    def _steady(
        self, receiver: int, source: Address, now: float
    ) -> tuple[Peer, Keypair] | None:
        """The peer and keypair that a transport message to *receiver* from
        *source* opens on in the steady state (the peer's current keypair,
        from the peer's known endpoint, still able to receive), which the
        batch paths open runs of; None for anything else, which takes the
        one-at-a-time path."""
        entry = self._index.get(receiver)
        if entry is None:
            return None
        peer, keypair = entry
        if (
            keypair is None
            or keypair is not peer.current
            or peer.endpoint != source
            or not keypair.can_receive(now)
        ):
            return None
        return peer, keypair

    def _open_run(
        self,
        peer: Peer,
        keypair: Keypair,
        datagrams: Sequence[tuple[bytes, Address]],
        start: int,
        source: Address,
        now: float,
        out: Effects,
    ) -> int:
        """The run of transport messages at *start* on *peer*'s current
        keypair from its known endpoint: opened in one call, then the inner
        packets checked and delivered, and the bookkeeping done once.
        Returns where the run ended."""
        plains: list[bytes] = []
        end, rx, failed, replayed = keypair.open_batch(datagrams, start, source, plains)
        drops = self.drops
        if failed:
            drops[Drop.DECRYPTION_FAILED] += failed
        if replayed:
            drops[Drop.REPLAYED_COUNTER] += replayed
        if plains:
            data_count = self._deliver(peer, plains, out)
            self._received_run(peer, keypair, rx, data_count, now, out)
        return end

    def receive_reads(
        self,
        reads: Sequence[tuple[bytes | bytearray, int, int, Address]],
        now: float,
        out: Effects | None = None,
    ) -> Effects:
        """The datagrams of a wake-up's UDP reads, where they lie: each read
        is (buffer, length, size, source), the first *length* bytes of
        *buffer* holding a datagram every *size* bytes (the last may be
        shorter; *size* 0, or not under *length*: one datagram), all from
        *source*, as a GRO read gives them. The same deliveries, drops,
        events and state as :meth:`receive_datagrams` of them all cut apart,
        in order. A run of reads from the peer's known endpoint on its
        current keypair, counters in order (a bulk transfer's wake-up), is
        opened without cutting it apart first (:meth:`Keypair.open_reads`),
        with the bookkeeping once; whatever that does not take is cut apart
        and goes to :meth:`receive_datagrams`. The buffers may be reused
        once this returns."""
        out = Effects() if out is None else out
        cut: list[tuple[bytes, Address]] = []
        i, n = 0, len(reads)
        while i < n:
            source = reads[i][3]
            j = i
            while j < n and 0 < (read := reads[j])[2] < read[1] and read[3] == source:
                j += 1  # reads[i:j]: GRO reads (more than one datagram) from one source
            opened = self._open_reads(reads, i, j, now, out, cut) if j > i else 0
            if j == i:
                j = i + 1
            for buffer, length, size, _ in reads[i:j]:
                if not 0 < size < length:
                    size = max(length, 1)  # one datagram (an empty one too)
                count = max(-(-length // size), 1)
                if opened >= count:
                    opened -= count
                    continue
                with memoryview(buffer) as whole, whole[:length] as view:
                    cuts = range(opened * size, max(length, 1), size)
                    cut += [(bytes(view[k : k + size]), source) for k in cuts]
                opened = 0
            i = j
        if cut:
            self.receive_datagrams(cut, now, out)
        return out

    def _open_reads(
        self,
        reads: Sequence[tuple[bytes | bytearray, int, int, Address]],
        start: int,
        end: int,
        now: float,
        out: Effects,
        cut: list[tuple[bytes, Address]],
    ) -> int:
        """:meth:`receive_reads` for the GRO reads *start* .. *end* - 1, all from
        one source: if the first is a transport message on its peer's
        current keypair from the peer's endpoint, the keypair opens what it
        can of them in place (after *cut*, what came before, has gone to
        :meth:`receive_datagrams`, so the order holds). Returns how many
        datagrams (counted across the reads) it took: opened, and the one
        after them if its tag failed (counted here, not decrypted again)."""
        buffer, _, _, source = reads[start]
        head = _unpack_head(buffer)
        found = self._steady(head[1], source, now) if head[0] == MESSAGE_TRANSPORT_DATA else None
        if found is None:
            return 0
        peer, keypair = found
        if cut:
            self.receive_datagrams(cut, now, out)
            cut.clear()
        plains: list[bytes] = []
        opened, rx, failed = keypair.open_reads([read[:3] for read in reads[start:end]], plains)
        if failed:
            self.drops[Drop.DECRYPTION_FAILED] += failed
        if opened:
            data_count = self._deliver(peer, plains, out)
            self._received_run(peer, keypair, rx, data_count, now, out)
        return opened + failed

    def _deliver(self, peer: Peer, plains: list[bytes], out: Effects) -> int:
        """Deliver the decrypted packets that are well-formed IPv4 or IPv6
        packets whose stated length fits what arrived (the padding after it
        cut off) and whose source is one of *peer*'s allowed IPs (kernel
        receive.c: cryptokey routing inbound, or a peer could spoof
        another); count the others. Returns how many were not keepalives."""
        if len(plains) > 1 and self._deliver_whole(peer, plains, out):
            return len(plains)
        drops = self.drops
        lookup = self.allowed_ips.lookup
        deliver = out.packets.append
        u16 = _u16be
        v4_len, v4_total, v4_src = IPV4_HEADER_LEN, IPV4_TOTAL_LENGTH, IPV4_SRC
        v6_len, v6_payload, v6_src = IPV6_HEADER_LEN, IPV6_PAYLOAD_LENGTH, IPV6_SRC
        allowed_src = None
        data_count = 0
        for plain in plains:
            n = len(plain)
            if not n:
                continue  # a keepalive
            data_count += 1
            first = plain[0]
            if first >> 4 == 4 and n >= v4_len and first & 15 >= 5:
                length = u16(plain, v4_total)[0]
                if not v4_len <= length <= n:
                    drops[Drop.INVALID_INNER_PACKET] += 1
                    continue
                src = plain[v4_src]
            elif first >> 4 == 6 and n >= v6_len:
                length = v6_len + u16(plain, v6_payload)[0]
                if length > n:
                    drops[Drop.INVALID_INNER_PACKET] += 1
                    continue
                src = plain[v6_src]
            else:
                drops[Drop.INVALID_INNER_PACKET] += 1
                continue
            if src != allowed_src:
                if lookup(src) is not peer:
                    drops[Drop.ALLOWED_IPS_MISMATCH] += 1
                    continue
                allowed_src = src
            deliver(plain if length == n else plain[:length])
        return data_count

    def _deliver_whole(self, peer: Peer, plains: list[bytes], out: Effects) -> bool:
        """:meth:`_deliver` for the common run, whole: IPv4 packets from one of
        *peer*'s addresses, none a keepalive, each with a valid header and a
        stated length that fits, checked over the whole list at once (C loops,
        nothing in Python per packet). False, having done nothing, for
        anything else."""
        count = len(plains)
        lengths = list(map(len, plains))
        if min(lengths) < IPV4_HEADER_LEN or bytes(map(_first_byte, plains)).translate(
            None, _IPV4_WHOLE_HEADER
        ):
            return False  # a keepalive, too short, not IPv4, or a header under 20 bytes
        src = plains[0][IPV4_SRC]
        if list(map(_ipv4_source, plains)).count(src) != count or (
            self.allowed_ips.lookup(src) is not peer
        ):
            return False
        totals = list(struct.unpack(f"!{count}H", b"".join(map(_ipv4_total_length, plains))))
        if totals == lengths:
            out.packets.extend(plains)
            return True
        if min(totals) < IPV4_HEADER_LEN or not all(map(operator.le, totals, lengths)):
            return False
        # Padded (the sender pads to 16 bytes): cut to the stated length.
        out.packets.extend(map(bytes.__getitem__, plains, map(slice, totals)))
        return True

    def _received_run(
        self,
        peer: Peer,
        current: Keypair | None,
        rx: int,
        data_count: int,
        now: float,
        out: Effects,
    ) -> None:
        """What every authenticated transport packet does to counters and
        timers, for one or a run of them (*rx* bytes, *data_count* of them not
        keepalives) all at *now*; *current* is the peer's current keypair."""
        peer.rx_bytes += rx
        timers = peer.timers
        # keep_key_fresh (receive side): an initiator whose keypair nears
        # REJECT_AFTER_TIME starts a handshake once, before it is too late.
        if (
            current is not None
            and current.is_initiator
            and now - current.created >= _LASTMINUTE_AGE
            and current.sending_valid
            and timers.claim_lastminute_handshake()
        ):
            self._send_initiation(peer, now, out, is_retry=False)
        timers.on_transport_received(now, data_count)

    def _under_load(self, now: float) -> bool:
        """The kernel counts queued handshakes; without a queue we count the
        handshake messages of the last second. Once over the threshold, the
        device stays under load for UNDER_LOAD_AFTER_TIME (1 s)."""
        if now - self._handshake_window_start >= 1.0:
            self._handshake_window_start = now
            self._handshakes_in_window = 0
        self._handshakes_in_window += 1
        if self._handshakes_in_window > self.under_load_threshold:
            self._last_under_load = now
            return True
        last = self._last_under_load
        return last is not None and now - last < UNDER_LOAD_AFTER_TIME

    def _receive_handshake(
        self, kind: int, data: bytes, source: Address, now: float, out: Effects
    ) -> None:
        if self._static is None:
            self.drops[Drop.NO_PRIVATE_KEY] += 1
            return
        checker = self._cookie_checker
        if not checker.check_mac1(data):
            self.drops[Drop.INVALID_MAC1] += 1
            return
        if self._under_load(now):
            # Only mac1 work so far. Under load we do no Diffie-Hellman for a
            # sender that has not proved its address with mac2 (cookie.c).
            if not checker.check_mac2(data, source, now):
                sender = _u32(data, 4)[0]
                reply = checker.create_reply(data, sender, source, now)
                out.datagrams.append((reply.pack(), source))
                self.drops[Drop.COOKIE_SENT] += 1
                return
            if not self._ratelimiter.allow(source[0], now):
                self.drops[Drop.RATE_LIMITED] += 1
                return
        if kind == MESSAGE_INITIATION:
            self._consume_initiation(self._static, data, source, now, out)
        else:
            self._consume_response(data, source, now, out)

    def _consume_initiation(
        self, static: DHPrivateKey, data: bytes, source: Address, now: float, out: Effects
    ) -> None:
        trace = Trace("responder") if self.trace_handshakes else None
        try:
            consumed = consume_initiation(data, static_private=static, trace=trace)
        except RemoteProtocolError:
            self.drops[Drop.HANDSHAKE_INVALID] += 1
            return
        peer = self.peers.get(PublicKey(consumed.initiator_static))
        if peer is None:
            self.drops[Drop.UNKNOWN_PEER] += 1
            return
        # Replay: the TAI64N timestamp must grow (whitepaper 5.1). Flood: at
        # most INITIATIONS_PER_SECOND from one peer.
        if consumed.timestamp <= peer.latest_timestamp:
            self.drops[Drop.REPLAYED_TIMESTAMP] += 1
            return
        last = peer.last_initiation_consumed
        if last is not None and now - last < 1.0 / INITIATIONS_PER_SECOND:
            self.drops[Drop.INITIATION_FLOOD] += 1
            return
        # Authenticated: from here on the state may change.
        peer.latest_timestamp = consumed.timestamp
        peer.last_initiation_consumed = now
        index = self._new_index()
        if trace is not None:
            consumed.responder.trace = trace_r = Trace("responder")
        try:
            response, result = create_response(
                consumed,
                psk=peer.psk,
                sender_index=index,
                ephemeral_private=self._ephemeral(peer),
                cookies=peer.cookies,
                now=now,
            )
        except WireGuardError:  # pragma: no cover - consume_initiation checked both DHs
            self.drops[Drop.HANDSHAKE_INVALID] += 1
            return
        self._set_endpoint(peer, source, out)
        # The peer's handshake replaces ours, as in the kernel (noise.c
        # wg_noise_handshake_consume_initiation): a response to our own
        # pending initiation is not accepted any more. If both sides
        # initiated at once, both responses are dropped and a retransmit
        # (its jitter tells the two apart) completes one handshake, so both
        # sides end up sending on the same session.
        self._forget_handshake(peer)
        if trace is not None:
            self.last_trace = [("initiation consumed", trace), ("response created", trace_r)]
        keypair = Keypair(result, now)
        self._install(peer, keypair, now)
        peer.rx_bytes += len(data)
        timers = peer.timers
        timers.on_authenticated_packet_received()
        timers.on_authenticated_packet_traversal(now)
        timers.on_authenticated_packet_sent()
        # The response counts as a handshake sent: no initiation of ours
        # within REKEY_TIMEOUT (kernel send.c wg_packet_send_handshake_response).
        peer.last_sent_handshake = now
        peer.tx_bytes += len(response)
        out.datagrams.append((response, source))

    def _consume_response(self, data: bytes, source: Address, now: float, out: Effects) -> None:
        receiver = _u32(data, 8)[0]
        entry = self._index.get(receiver)
        if entry is None or entry[1] is not None:
            self.drops[Drop.UNKNOWN_INDEX] += 1
            return
        peer = entry[0]
        pending = peer.handshake
        if pending is None or pending.local_index != receiver:  # pragma: no cover - index invariant
            self.drops[Drop.UNKNOWN_INDEX] += 1
            return
        trace = Trace("initiator") if self.trace_handshakes else None
        try:
            result = consume_response(data, pending.initiator, receiver, trace=trace)
        except RemoteProtocolError:
            self.drops[Drop.HANDSHAKE_INVALID] += 1
            return
        if trace is not None:
            self.last_trace.append(("response consumed", trace))
        peer.handshake = None
        self._index.pop(receiver, None)
        self._set_endpoint(peer, source, out)
        peer.rx_bytes += len(data)
        keypair = Keypair(result, now)
        self._install(peer, keypair, now)
        peer.timers.on_handshake_complete()
        peer.last_handshake = now
        out.events.append(HandshakeCompleted(peer.public_key, True))
        if peer.previous is not None:
            out.events.append(KeypairRotated(peer.public_key))
        peer.timers.on_authenticated_packet_received()
        peer.timers.on_authenticated_packet_traversal(now)
        # Confirm the session at once: staged data, or else a keepalive.
        self._send_keepalive(peer, now, out)

    def _install(self, peer: Peer, keypair: Keypair, now: float) -> None:
        for old in peer.begin_session(keypair):
            self._index.pop(old.local_index, None)
        self._index[keypair.local_index] = (peer, keypair)
        peer.timers.on_session_derived(now)

    def _receive_cookie_reply(self, data: bytes, now: float) -> None:
        reply = CookieReply.parse(data)
        entry = self._index.get(reply.receiver_index)
        if entry is None:
            self.drops[Drop.UNKNOWN_INDEX] += 1
            return
        try:
            entry[0].cookies.consume_reply(reply, now)
        except RemoteProtocolError:
            self.drops[Drop.COOKIE_INVALID] += 1

    def _set_endpoint(self, peer: Peer, source: Address, out: Effects) -> None:
        old = peer.endpoint
        if old != source:
            # Roaming is the remote address changing; a new local address
            # alone (the peer reached another address of ours) is kept quietly.
            if old is None or old[:2] != source[:2]:
                out.events.append(EndpointChanged(peer.public_key, old, source))
            peer.endpoint = source

    def _receive_transport(self, data: bytes, source: Address, now: float, out: Effects) -> None:
        # The type word was checked by receive_datagram; the keypair opens
        # the message and checks its counter (session.py).
        if len(data) < TRANSPORT_MIN_LEN:
            self.drops[Drop.MALFORMED] += 1
            return
        receiver = _u32(data, 4)[0]
        entry = self._index.get(receiver)
        keypair = entry[1] if entry is not None else None
        if entry is None or keypair is None:
            self.drops[Drop.UNKNOWN_INDEX] += 1
            return
        peer = entry[0]
        if not keypair.can_receive(now):
            self.drops[Drop.KEYPAIR_EXPIRED] += 1
            return
        try:
            plain = keypair.open(data)
        except DecryptionError:
            self.drops[Drop.DECRYPTION_FAILED] += 1
            return
        except ReplayError:
            self.drops[Drop.REPLAYED_COUNTER] += 1
            return
        # Authenticated from here on.
        if peer.endpoint != source:
            self._set_endpoint(peer, source, out)
        if keypair is peer.next:
            self._confirmed(peer, keypair, now, out)
        self._received_run(peer, peer.current, len(data), 1 if plain else 0, now, out)
        if plain:
            self._deliver(peer, [plain], out)

    def _confirmed(self, peer: Peer, keypair: Keypair, now: float, out: Effects) -> None:
        """The initiator sent on our ``next`` keypair: it has our response, so
        the keypair becomes current (key confirmation)."""
        _, retired = peer.received_with(keypair)
        if retired is not None:
            self._index.pop(retired.local_index, None)
        peer.timers.on_handshake_complete()
        peer.last_handshake = now
        out.events.append(HandshakeCompleted(peer.public_key, False))
        if peer.previous is not None:
            out.events.append(KeypairRotated(peer.public_key))
        if peer.staged:
            self._send_staged(peer, now, out)

    # --- inspection --------------------------------------------------------

    def peer_for_index(self, index: int) -> Peer | None:
        entry = self._index.get(index)
        return entry[0] if entry is not None else None


__all__ = [
    "Device",
    "Drop",
    "Effects",
    "EndpointChanged",
    "Event",
    "HandshakeCompleted",
    "HandshakeFailed",
    "KeypairRotated",
    "PeerExpired",
]
