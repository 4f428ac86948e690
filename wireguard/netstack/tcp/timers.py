"""The deadlines of one TCP connection, as absolute times (None: stopped).

``rto``: retransmission (RFC 6298 5); ``persist``: zero-window probe (RFC
9293 3.8.6.1); ``tlp``: tail loss probe (RFC 8985 7); ``delack``: delayed ACK
(RFC 9293 3.8.6.3); ``close``: TIME-WAIT's 2*MSL (3.10.8) or the FIN-WAIT-2
timeout of a connection the application closed. The connection sets and
clears them; the stack files :meth:`TcpTimers.earliest` in its timer heap
and calls the connection back when it is due. No clock is read here.
"""

from __future__ import annotations

__all__ = ["TcpTimers"]


class TcpTimers:
    """Five deadlines and the earliest of them."""

    __slots__ = ("close", "delack", "persist", "rto", "tlp")

    def __init__(self) -> None:
        self.rto: float | None = None
        self.persist: float | None = None
        self.tlp: float | None = None
        self.delack: float | None = None
        self.close: float | None = None

    def earliest(self) -> float | None:
        d = self.rto
        for t in (self.persist, self.delack, self.close, self.tlp):
            if t is not None and (d is None or t < d):
                d = t
        return d

    def stop_sending(self) -> None:
        """Nothing more goes out but an ACK (TIME-WAIT): only ``close`` stays."""
        self.rto = self.persist = self.delack = self.tlp = None

    def stop(self) -> None:
        """The connection is gone."""
        self.rto = self.persist = self.delack = self.tlp = self.close = None
