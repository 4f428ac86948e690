"""Round-trip time estimation and the retransmission timeout (RFC 6298).

One segment at a time is timed (section 3): its sequence number and when it
left. An acknowledgment beyond it gives a sample, which updates SRTT and
RTTVAR (2.2, 2.3) and from them the RTO, bounded below and above (2.4,
2.5). Karn's algorithm: a retransmission stops the timing, so no sample is
ever taken from a retransmitted segment, and each timeout doubles the RTO
(5.5) until the next sample.
"""

from __future__ import annotations

from typing import Final

__all__ = ["RttEstimator"]

_CLOCK_GRANULARITY: Final = 0.001  # G in RFC 6298 2.2/2.3; our clock is a float of seconds
_SYN_RETRANSMITTED_RTO: Final = 3.0  # RFC 6298 5.7


class RttEstimator:
    """SRTT, RTTVAR and RTO of one connection, and the segment being timed."""

    __slots__ = ("_max", "_min", "_sent", "_seq", "rto", "rttvar", "srtt")

    def __init__(self, initial_rto: float, min_rto: float, max_rto: float) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = initial_rto  # RFC 6298 2.1
        self._min = min_rto
        self._max = max_rto
        self._seq: int | None = None  # the segment being timed
        self._sent = 0.0

    @property
    def timing(self) -> bool:
        """Whether a segment is being timed."""
        return self._seq is not None

    def time(self, seq: int, now: float) -> None:
        """Time the segment starting at *seq*, sent at *now* (whatever was timed before)."""
        self._seq = seq
        self._sent = now

    def offer(self, seq: int, now: float) -> None:
        """New data starting at *seq* left at *now*: time it if no segment is
        being timed (one at a time, RFC 6298 3)."""
        if self._seq is None:
            self._seq = seq
            self._sent = now

    def acked(self, ack: int, now: float) -> None:
        """An acknowledgment up to *ack* came at *now*: a sample if it covers
        the timed segment, which then is no longer timed."""
        seq = self._seq
        if seq is not None and ack > seq:
            self.sample(now - self._sent)
            self._seq = None

    def karn(self) -> None:
        """A retransmission: stop timing (Karn's algorithm, RFC 6298 3)."""
        self._seq = None

    def sample(self, r: float) -> None:
        """RFC 6298 2.2 and 2.3: a measured round trip of *r* seconds."""
        if r < 0:
            r = 0.0
        if self.srtt is None:
            self.srtt = r
            self.rttvar = r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
            self.srtt = 0.875 * self.srtt + 0.125 * r
        rto = self.srtt + max(_CLOCK_GRANULARITY, 4 * self.rttvar)
        self.rto = min(max(rto, self._min), self._max)

    def backoff(self) -> None:
        """RFC 6298 5.5: the timer expired, double the RTO (up to its bound)."""
        self.rto = min(self.rto * 2, self._max)

    def syn_retransmitted(self, initial_rto: float) -> None:
        """RFC 6298 5.7: the SYN had to be retransmitted and no sample came,
        so the RTO for data starts at 3 s (or the configured initial RTO)."""
        if self.srtt is None:
            self.rto = max(initial_rto, _SYN_RETRANSMITTED_RTO)

    def backed_off(self, times: int) -> float:
        """The RTO doubled *times* times, bounded: the persist timer's interval.
        (A float power: ``1 << times`` would overflow the conversion to float
        after 1,023 doublings, which a window shut for a day reaches.)"""
        return min(self.rto * 2.0 ** min(times, 1023), self._max)
