"""The per-peer timer state machine (whitepaper section 6, and the Linux
kernel's ``timers.c``), as deadlines: no clock is read here.

Each timer is an absolute time or ``None``. Deadlines change only through
the hooks below, named for the protocol events that call them, as the
kernel's ``wg_timers_*`` functions and wireguard-go's ``timers*`` are:
``on_data_sent``, ``on_data_received``, ``on_authenticated_packet_sent``,
``on_authenticated_packet_received``, ``on_authenticated_packet_traversal``,
``on_handshake_initiated``, ``on_handshake_complete``, ``on_session_derived``
(and two that stand for several of them at once, for a run of transport
messages: :meth:`PeerTimers.on_transport_sent` and
:meth:`PeerTimers.on_transport_received`).

When a deadline passes, :meth:`PeerTimers.expire` does what the kernel's
``wg_expired_*`` function does to the timers (count an attempt, give up,
re-arm the passive keepalive) and asks its owner, through
:class:`TimerActions`, for what only the owner can do: send an initiation or
a keepalive, drop what waits, erase keys.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Protocol

from .constants import (
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_TIME,
    REKEY_TIMEOUT,
)


class Timer(enum.IntEnum):
    RETRANSMIT_HANDSHAKE = 0
    SEND_KEEPALIVE = 1
    NEW_HANDSHAKE = 2
    ZERO_KEY_MATERIAL = 3
    PERSISTENT_KEEPALIVE = 4


class TimerActions(Protocol):
    """What an expired timer asks of the peer's owner (the Device)."""

    def send_initiation(self, *, is_retry: bool) -> None:
        """Send (or, rate-limited, try to send) a handshake initiation."""

    def send_keepalive(self) -> None:
        """Send a keepalive (or what is staged) now."""

    def give_up(self) -> None:
        """REKEY_ATTEMPT_TIME is over without a handshake: drop what waits."""

    def zero_key_material(self) -> None:
        """Erase the handshake and every keypair."""


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

    def on_data_sent(self, now: float, jitter: Callable[[], float]) -> None:
        """Data sent: expect an answer within KEEPALIVE + REKEY_TIMEOUT, or
        start a new handshake (the peer may have lost our keys). *jitter* is
        called only when the deadline is set."""
        if self.new_handshake is None:
            self.new_handshake = t = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter()
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

    def on_handshake_queued(self, *, is_retry: bool) -> None:
        """A handshake is wanted: a fresh wish starts the attempt count anew
        (kernel send.c wg_packet_send_queued_handshake_initiation)."""
        if not is_retry:
            self.handshake_attempts = 0

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

    # --- the same, for a run of transport messages at one `now` -------------

    def on_transport_sent(self, now: float, data: bool, jitter: Callable[[], float]) -> None:
        """Transport messages went out (*data*: not only keepalives):
        on_data_sent, on_authenticated_packet_sent, then
        on_authenticated_packet_traversal, as the kernel calls them for each."""
        if data and self.new_handshake is None:
            self.on_data_sent(now, jitter)
        self.send_keepalive = None
        if self.persistent_keepalive_interval:
            self.on_authenticated_packet_traversal(now)

    def on_transport_received(self, now: float, data_packets: int) -> None:
        """Transport messages arrived at *now*, *data_packets* of them not
        keepalives: on_authenticated_packet_received and
        on_authenticated_packet_traversal, and on_data_received for each data
        packet, as the kernel calls them one message at a time."""
        self.new_handshake = None
        if self.persistent_keepalive_interval:
            self.on_authenticated_packet_traversal(now)
        if data_packets:
            if self.send_keepalive is None:
                self.on_data_received(now)
                if data_packets > 1:
                    self.need_another_keepalive = True
            else:
                self.need_another_keepalive = True

    def claim_lastminute_handshake(self) -> bool:
        """The receive side's keep_key_fresh (kernel receive.c) starts one
        handshake when the keypair nears REJECT_AFTER_TIME: True the first
        time it is asked, until a handshake completes."""
        if self.sent_lastminute_handshake:
            return False
        self.sent_lastminute_handshake = True
        return True

    # --- configuration -------------------------------------------------------

    def set_persistent_keepalive(self, interval: int, now: float | None) -> None:
        """A new persistent keepalive interval (0: off). With *now*, the first
        keepalive is due at once, as wg sends one when the interval is set
        on a running interface."""
        self.persistent_keepalive_interval = interval
        if not interval:
            self.persistent_keepalive = None
        elif now is not None:
            self.persistent_keepalive = now
            self._notify(now)

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

    def run_due(self, now: float, act: TimerActions) -> None:
        """Run the timers expired at *now*, in the order the kernel would have
        run them (by deadline), each cleared as it runs. One that an earlier
        one stopped or moved on is skipped, as ``del_timer``/``mod_timer``
        would have it: a late call (a blocked loop, a resumed machine) finds
        several expired at once."""
        fired = sorted(
            (t, timer, attr)
            for timer, attr in _ATTRS
            if (t := getattr(self, attr)) is not None and t <= now
        )
        for t, timer, attr in fired:
            if getattr(self, attr) != t:
                continue  # stopped or moved by a timer that ran before it
            setattr(self, attr, None)
            self.expire(timer, now, act)

    def expire(self, timer: Timer, now: float, act: TimerActions) -> None:
        """What the kernel's ``wg_expired_*`` function for *timer* does (its
        deadline was cleared by :meth:`run_due`)."""
        if timer is Timer.RETRANSMIT_HANDSHAKE:
            if self.handshake_attempts > MAX_TIMER_HANDSHAKES:
                # REKEY_ATTEMPT_TIME is over: no passive keepalive, drop what
                # waits, and erase what is left of a partial exchange later.
                self.send_keepalive = None
                act.give_up()
                if self.zero_key_material is None:
                    self.zero_key_material = t = now + 3 * REJECT_AFTER_TIME
                    self._notify(t)
            else:
                self.handshake_attempts += 1
                act.send_initiation(is_retry=True)
        elif timer is Timer.SEND_KEEPALIVE:
            act.send_keepalive()
            if self.need_another_keepalive:
                self.need_another_keepalive = False
                self.send_keepalive = t = now + KEEPALIVE_TIMEOUT
                self._notify(t)
        elif timer is Timer.NEW_HANDSHAKE:
            # We sent data and heard nothing back for KEEPALIVE + REKEY_TIMEOUT.
            act.send_initiation(is_retry=False)
        elif timer is Timer.ZERO_KEY_MATERIAL:
            act.zero_key_material()
        elif timer is Timer.PERSISTENT_KEEPALIVE and self.persistent_keepalive_interval:
            act.send_keepalive()


def _ignore(when: float) -> None:
    pass


_ATTRS = (
    (Timer.RETRANSMIT_HANDSHAKE, "retransmit_handshake"),
    (Timer.SEND_KEEPALIVE, "send_keepalive"),
    (Timer.NEW_HANDSHAKE, "new_handshake"),
    (Timer.ZERO_KEY_MATERIAL, "zero_key_material"),
    (Timer.PERSISTENT_KEEPALIVE, "persistent_keepalive"),
)
