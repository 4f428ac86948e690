"""One peer: its keys, handshake in progress, current / previous / next
keypairs, endpoint, staged packets, timers and counters.

The keypair rotation follows the kernel's ``noise.c``
(``wg_noise_handshake_begin_session`` and ``wg_noise_received_with_keypair``):
the initiator uses a new keypair at once; the responder keeps it in ``next``
until the first packet from the initiator arrives on it (key confirmation),
because until then it cannot know the initiator received the response.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .address import Address
from .constants import MAX_STAGED_PACKETS
from .cookie import CookieGenerator
from .keys import PresharedKey, PublicKey
from .session import Keypair
from .timers import PeerTimers

if TYPE_CHECKING:
    from .noise import Initiator

# No initiation seen yet: every TAI64N timestamp is later. One object shared by
# all peers (bytes are immutable; each peer's is replaced, never changed).
_NO_TIMESTAMP = bytes(12)


@dataclass(slots=True)
class PendingHandshake:
    """Our initiation awaiting its response (state CREATED_INITIATION)."""

    local_index: int
    initiator: Initiator
    created: float


class Peer:
    """A configured peer. Mutated only by the :class:`~wireguard.device.Device`.

    A server may configure tens of thousands of peers and hear from few of
    them, so what only a handshake needs is made at the first handshake: the
    :attr:`cookies` (mac1 and cookie keys, two hashes) and the staging queue.
    """

    __slots__ = (
        "_cookies",
        "_notify",
        "current",
        "endpoint",
        "handshake",
        "last_handshake",
        "last_initiation_consumed",
        "last_sent_handshake",
        "latest_timestamp",
        "next",
        "preshared_key",
        "previous",
        "public_key",
        "rx_bytes",
        "staged",
        "static_static",
        "timers",
        "tx_bytes",
    )

    def __init__(
        self,
        public_key: PublicKey,
        static_static: bytes,
        *,
        preshared_key: PresharedKey | None = None,
        endpoint: Address | None = None,
        persistent_keepalive: int = 0,
        notify: Callable[[Peer, float], None] | None = None,
    ) -> None:
        self.public_key = public_key
        # DH(S_priv, S_pub_peer) is fixed for the pair: computed once
        # (wireguard-go's precomputedStaticStatic), saving a DH per handshake.
        self.static_static = static_static
        self.preshared_key = preshared_key
        self.endpoint = endpoint
        self._cookies: CookieGenerator | None = None  # made on first use
        # *notify* hears of each timer deadline as it is set (with this peer).
        self._notify = notify
        self.timers = PeerTimers(persistent_keepalive, self._deadline if notify else None)
        self.handshake: PendingHandshake | None = None
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None
        self.staged: deque[bytes] | None = None  # made on first use: peers are many
        self.latest_timestamp = _NO_TIMESTAMP
        self.last_initiation_consumed: float | None = None
        self.last_sent_handshake: float | None = None
        self.last_handshake: float | None = None  # completion time, for `wg show`
        self.rx_bytes = 0
        self.tx_bytes = 0

    @property
    def cookies(self) -> CookieGenerator:
        """mac1/mac2 of what we send this peer, and its cookie replies."""
        cookies = self._cookies
        if cookies is None:
            cookies = self._cookies = CookieGenerator(self.public_key.raw)
        return cookies

    def _deadline(self, when: float) -> None:
        self._notify(self, when)  # type: ignore[misc]

    @property
    def psk(self) -> bytes:
        return self.preshared_key.raw if self.preshared_key is not None else bytes(32)

    @property
    def persistent_keepalive(self) -> int:
        return self.timers.persistent_keepalive_interval

    def keypairs(self) -> list[Keypair]:
        return [k for k in (self.current, self.previous, self.next) if k is not None]

    def stage(self, packet: bytes) -> bool:
        """Queue a packet until a keypair can carry it. Returns False when the
        oldest packet had to be dropped to make room (the kernel's policy)."""
        staged = self.staged
        if staged is None:
            staged = self.staged = deque()
        staged.append(packet)
        if len(staged) > MAX_STAGED_PACKETS:
            staged.popleft()
            return False
        return True

    def begin_session(self, keypair: Keypair) -> list[Keypair]:
        """Install a new keypair; returns the keypairs it retired."""
        retired: list[Keypair] = []
        if keypair.is_initiator:
            if self.next is not None:
                # A responder keypair that was never confirmed becomes the
                # previous one; the current one is dropped.
                if self.previous is not None:
                    retired.append(self.previous)
                if self.current is not None:
                    retired.append(self.current)
                self.previous, self.next = self.next, None
            else:
                if self.previous is not None:
                    retired.append(self.previous)
                self.previous = self.current
            self.current = keypair
        else:
            if self.next is not None:
                retired.append(self.next)
            if self.previous is not None:
                retired.append(self.previous)
            self.next, self.previous = keypair, None
        return retired

    def received_with(self, keypair: Keypair) -> tuple[bool, Keypair | None]:
        """Key confirmation: data arrived on ``next``, which becomes current.
        Returns whether it rotated, and the keypair that rotation retired."""
        if keypair is not self.next:
            return False, None
        retired = self.previous
        self.previous, self.current, self.next = self.current, keypair, None
        return True, retired

    def clear_keypairs(self) -> list[Keypair]:
        gone = self.keypairs()
        self.current = self.previous = self.next = None
        return gone

    def __repr__(self) -> str:
        return f"<Peer {self.public_key.to_base64()} endpoint={self.endpoint}>"
