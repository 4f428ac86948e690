"""One asyncio timer for a sans-I/O core's next deadline.

A core (the Device, the userspace TCP/IP stack, a misbehaviour policy) says
when it must next be called (``next_deadline()``); its binding arms one loop
timer for that time and calls the core's ``handle_timer(now)`` (or ``poll``)
when it fires. Three bindings did this each in their own words (the tunnel,
the stack driver, the capture tap); :class:`DeadlineTimer` is that logic once.

It files deadlines the way the cores' :class:`~wireguard.timerheap.TimerHeap`
does: the loop timer is re-armed only when the deadline moves *earlier* than
the armed time. When it moves later (or goes away), the armed timer stays;
it fires first, the core finds nothing due (``handle_timer`` runs only what
is due), and the binding sets the timer again for the deadline then. So a
deadline is never missed, and a deadline that moves later with each packet
costs one early wake-up instead of a cancelled handle per packet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["DeadlineTimer"]


class DeadlineTimer:
    """A loop timer for the earliest of the deadlines it is given.

    *callback* is called with the time the timer was armed for, which may be
    a little after ``loop.time()`` (asyncio runs a handle up to one clock
    resolution early): a core must be given at least that time, or it would
    ask to be woken again at once.
    """

    __slots__ = ("_callback", "_handle", "_loop", "at")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[float], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        #: The time the timer is armed for, None when it is not armed.
        self.at: float | None = None

    def set(self, deadline: float | None) -> None:
        """Be due no later than *deadline* (None: no deadline). Re-arms only
        if *deadline* is earlier than the armed time, or nothing is armed."""
        at = self.at
        if deadline is None or (at is not None and at <= deadline):
            return  # the armed timer (if any) fires first; then set again
        if self._handle is not None:
            self._handle.cancel()
        self.at = deadline
        self._handle = self._loop.call_at(deadline, self._fire)

    def cancel(self) -> None:
        """Disarm (the binding is closing)."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self.at = None

    def _fire(self) -> None:
        at = self.at
        self._handle = self.at = None
        assert at is not None
        self._callback(max(at, self._loop.time()))
