"""Congestion control: Reno (RFC 5681) with NewReno's recovery (RFC 6582).

The window grows by slow start below ssthresh and by congestion avoidance
above it; a fast retransmit halves it, a timeout drops it to one segment
(the loss window). During a recovery the window follows NewReno's
arithmetic without SACK; with SACK the pipe estimate of RFC 6675 decides
what may be sent instead (see :mod:`.sack`), and only the reduction at entry
and the deflation at exit are made here. No clock is read and nothing is
sent here: the connection asks and acts.
"""

from __future__ import annotations

__all__ = ["Reno"]


class Reno:
    """cwnd, ssthresh and the recovery state of one connection's sender."""

    __slots__ = ("cwnd", "dupacks", "in_recovery", "recover", "ssthresh")

    def __init__(self, iss: int) -> None:
        self.cwnd = 0
        self.ssthresh = 1 << 30  # "arbitrarily high" (RFC 5681 3.1)
        self.dupacks = 0  # duplicate ACKs in a row, outside a recovery
        self.in_recovery = False
        self.recover = iss  # RFC 6582 "recover": SND.MAX when the last loss was handled

    def limited_transmit(self, smss: int) -> int:
        """What the window grows by for Limited Transmit (RFC 3042 section 2):
        one segment for each of the first two duplicate ACKs."""
        if 0 < self.dupacks < 3 and not self.in_recovery:
            return self.dupacks * smss
        return 0

    def on_ack(self, acked: int, smss: int) -> None:
        """New data acknowledged outside a recovery: slow start (RFC 5681
        eq. 2) or congestion avoidance (eq. 3)."""
        self.dupacks = 0
        if self.cwnd < self.ssthresh:
            self.cwnd += acked if acked < smss else smss
        else:
            self.cwnd += max(1, smss * smss // self.cwnd)

    def enter_recovery(self, flight: int, smss: int, snd_max: int, sack: bool) -> None:
        """Fast retransmit (RFC 5681 3.2 steps 2-3) and recovery entry (RFC
        6582 3.2 step 2). NewReno counts the three duplicates' segments as
        gone; with SACK the pipe estimate counts what the scoreboard says."""
        self.ssthresh = max(flight // 2, 2 * smss)
        self.recover = snd_max
        self.in_recovery = True
        self.cwnd = self.ssthresh + (0 if sack else 3 * smss)

    def full_ack(self, flight: int, smss: int) -> None:
        """Everything up to ``recover`` is acknowledged (RFC 6582 3.2 step 3):
        the recovery ends, the window deflates."""
        self.in_recovery = False
        self.cwnd = min(self.ssthresh, max(flight, smss) + smss)
        self.dupacks = 0

    def partial_ack(self, acked: int, smss: int) -> None:
        """NewReno's partial acknowledgment (RFC 6582 3.2 step 3, partial):
        deflate by what was acknowledged, add back one segment."""
        cwnd = max(self.cwnd - acked, 0) + (smss if acked >= smss else 0)
        self.cwnd = cwnd if cwnd > smss else smss

    def inflate(self, smss: int) -> None:
        """A duplicate ACK during NewReno's recovery (RFC 6582 3.2 step 4)."""
        self.cwnd += smss

    def on_timeout(self, flight: int, smss: int, snd_max: int, *, first: bool) -> None:
        """The retransmission timer expired: the loss window (RFC 5681 3.1),
        ssthresh from the flight at the first expiry (eq. 4), and no fast
        retransmit for what was sent before (RFC 6582 3.2 step 4)."""
        if first:
            self.ssthresh = max(flight // 2, 2 * smss)
        self.cwnd = smss
        self.in_recovery = False
        self.dupacks = 0
        self.recover = snd_max

    def restore(self, cwnd: int, ssthresh: int) -> None:
        """Undo a reduction that turned out needless (RFC 3708 3)."""
        self.cwnd = max(self.cwnd, cwnd)
        self.ssthresh = max(self.ssthresh, ssthresh)
