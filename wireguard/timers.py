"""The per-peer timer state machine (whitepaper section 6, and the Linux
kernel's ``timers.c``), as deadlines: no clock is read here.

Each timer is an absolute time or ``None``. The ``on_*`` methods are the
events of the protocol and set or clear deadlines exactly as the kernel's
``wg_timers_*`` functions do; :meth:`PeerTimers.due` reports which timers
have expired at ``now``; what an expiry *does* (send an initiation, a
keepalive, erase keys) is the device's business.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from .constants import (
    KEEPALIVE_TIMEOUT,
    REJECT_AFTER_TIME,
    REKEY_TIMEOUT,
)


class Timer(enum.IntEnum):
    RETRANSMIT_HANDSHAKE = 0
    SEND_KEEPALIVE = 1
    NEW_HANDSHAKE = 2
    ZERO_KEY_MATERIAL = 3
    PERSISTENT_KEEPALIVE = 4


class PeerTimers:
    """Deadlines of one peer's five timers."""

    __slots__ = (
        "_notify",
        "handshake_attempts",
        "need_another_keepalive",
        "new_handshake",
        "persistent_keepalive",
        "persistent_keepalive_interval",
        "retransmit_handshake",
        "send_keepalive",
        "sent_lastminute_handshake",
        "zero_key_material",
    )

    def __init__(
        self,
        persistent_keepalive_interval: int = 0,
        notify: Callable[[float], None] | None = None,
    ) -> None:
        # Called with each deadline as it is set, so the owner can wake up
        # for it without scanning every peer.
        self._notify = notify or _ignore
        self.retransmit_handshake: float | None = None
        self.send_keepalive: float | None = None
        self.new_handshake: float | None = None
        self.zero_key_material: float | None = None
        self.persistent_keepalive: float | None = None
        self.persistent_keepalive_interval = persistent_keepalive_interval
        self.handshake_attempts = 0
        self.need_another_keepalive = False
        self.sent_lastminute_handshake = False

    # --- events (kernel wg_timers_*) --------------------------------------

    def on_data_sent(self, now: float, jitter: float) -> None:
        """Data sent: expect an answer within KEEPALIVE + REKEY_TIMEOUT, or
        start a new handshake (the peer may have lost our keys)."""
        if self.new_handshake is None:
            self.new_handshake = t = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter
            self._notify(t)

    def on_data_received(self, now: float) -> None:
        """Data received: we owe the peer a keepalive if we send nothing for
        KEEPALIVE_TIMEOUT (passive keepalive)."""
        if self.send_keepalive is None:
            self.send_keepalive = t = now + KEEPALIVE_TIMEOUT
            self._notify(t)
        else:
            self.need_another_keepalive = True

    def on_authenticated_packet_sent(self) -> None:
        """Anything authenticated we send makes a pending keepalive moot."""
        self.send_keepalive = None

    def on_authenticated_packet_received(self) -> None:
        """Anything authenticated from the peer shows it still has our keys."""
        self.new_handshake = None

    def on_authenticated_packet_traversal(self, now: float) -> None:
        """Any authenticated packet in either direction restarts the
        persistent keepalive interval."""
        if self.persistent_keepalive_interval:
            self.persistent_keepalive = t = now + self.persistent_keepalive_interval
            self._notify(t)

    def on_handshake_initiated(self, now: float, jitter: float) -> None:
        self.retransmit_handshake = t = now + REKEY_TIMEOUT + jitter
        self._notify(t)

    def on_handshake_complete(self) -> None:
        self.retransmit_handshake = None
        self.handshake_attempts = 0
        self.sent_lastminute_handshake = False

    def on_session_derived(self, now: float) -> None:
        """Key material is erased 3 x REJECT_AFTER_TIME after the last session
        was derived, if no newer one replaced it."""
        self.zero_key_material = t = now + 3 * REJECT_AFTER_TIME
        self._notify(t)

    def stop_all(self) -> None:
        self.retransmit_handshake = self.send_keepalive = self.new_handshake = None
        self.zero_key_material = self.persistent_keepalive = None

    # --- expiry ------------------------------------------------------------

    def earliest(self) -> float | None:
        best = None
        for t in (
            self.retransmit_handshake,
            self.send_keepalive,
            self.new_handshake,
            self.zero_key_material,
            self.persistent_keepalive,
        ):
            if t is not None and (best is None or t < best):
                best = t
        return best

    def due(self, now: float) -> list[Timer]:
        """The timers expired at *now*, each cleared as it is reported, in the
        order the kernel would have run them (by deadline)."""
        fired: list[tuple[float, Timer]] = []
        for timer, attr in _ATTRS:
            t = getattr(self, attr)
            if t is not None and t <= now:
                setattr(self, attr, None)
                fired.append((t, timer))
        fired.sort()
        return [timer for _, timer in fired]


def _ignore(when: float) -> None:
    pass


_ATTRS = (
    (Timer.RETRANSMIT_HANDSHAKE, "retransmit_handshake"),
    (Timer.SEND_KEEPALIVE, "send_keepalive"),
    (Timer.NEW_HANDSHAKE, "new_handshake"),
    (Timer.ZERO_KEY_MATERIAL, "zero_key_material"),
    (Timer.PERSISTENT_KEEPALIVE, "persistent_keepalive"),
)
