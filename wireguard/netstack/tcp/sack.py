"""The sender's SACK scoreboard and what a SACK-based recovery keeps (RFC 6675).

The peer's SACK blocks (RFC 2018) are merged into sorted, disjoint
``[left, right)`` ranges above SND.UNA. From them come RFC 6675's IsLost()
(by octets: a hole with more than (DupThresh - 1) * SMSS octets SACKed above
it is lost), the pipe estimate SetPipe() and the next hole to retransmit
(NextSeg() rule 1). A recovery also keeps HighRxt, the last retransmission
of the segment at SND.UNA (a lost retransmission is found by segments sent
after it being SACKed, the idea of RACK, RFC 8985, by sequence instead of
time), and, for an undo (RFC 3708 with D-SACK, RFC 2883), the window before
the reduction and the retransmissions the peer has not yet reported
receiving twice: when it has reported all of them, the loss was reordering.

Nothing is sent here; the connection retransmits what this module points at.
"""

from __future__ import annotations

from .segment import unwrap

__all__ = ["Scoreboard"]


class Scoreboard:
    """What the peer SACKed, and the record of the current recovery."""

    __slots__ = ("high_rxt", "prior", "ranges", "una_rxt", "undo_ok", "unreported")

    def __init__(self) -> None:
        self.ranges: list[list[int]] = []
        self.high_rxt = 0  # HighRxt: the end of what this recovery retransmitted
        # The segment at SND.UNA as last retransmitted: (its sequence number,
        # SND.MAX then).
        self.una_rxt: tuple[int, int] | None = None
        self.prior: tuple[int, int] | None = None  # (cwnd, ssthresh) before the recovery
        self.unreported: set[int] = set()  # start of each retransmission not reported twice
        self.undo_ok = False  # every retransmission of the recovery came back twice

    def __len__(self) -> int:
        return len(self.ranges)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    # ---------------------------------------------------------------- blocks

    def dsack(self, blocks: list[tuple[int, int]], ack: int) -> bool:
        """True if the first of *blocks* is a D-SACK (below the cumulative
        *ack*, RFC 2883 4) that reports the last retransmission of this
        recovery not yet reported: the recovery may be undone."""
        unreported = self.unreported
        if unreported:
            left, right = blocks[0]
            if unwrap(right, ack) <= ack:
                unreported.discard(unwrap(left, ack))
                if not unreported:
                    self.undo_ok = True
                    return True
        return False

    def update(
        self, blocks: list[tuple[int, int]], una: int, top: int, limit: int
    ) -> tuple[int, int]:
        """Merge *blocks* (32-bit) into the scoreboard (RFC 6675 Update()):
        blocks not within SND.UNA..SND.MAX (*una*, *top*) are ignored (RFC
        2018 allows none), and past *limit* ranges the highest are forgotten
        (SACK is advisory, RFC 2018 8: at worst they are retransmitted
        needlessly). Returns the octets newly SACKed and the ranges forgotten."""
        sacked = self.ranges
        before = sum(right - left for left, right in sacked)
        for left32, right32 in blocks:
            left = unwrap(left32, una)
            right = unwrap(right32, una)
            if not una < left < right <= top:
                continue
            i = 0
            while i < len(sacked) and sacked[i][1] < left:
                i += 1
            j = i
            while j < len(sacked) and sacked[j][0] <= right:
                left = min(left, sacked[j][0])
                right = max(right, sacked[j][1])
                j += 1
            sacked[i:j] = [[left, right]]
        dropped = 0
        if len(sacked) > limit:
            dropped = len(sacked) - limit
            del sacked[limit:]
        return sum(right - left for left, right in sacked) - before, dropped

    def acked(self, ack: int) -> None:
        """SND.UNA moved to *ack*: forget what it covers."""
        sacked = self.ranges
        while sacked and sacked[0][1] <= ack:
            del sacked[0]
        if sacked and sacked[0][0] < ack:
            sacked[0][0] = ack

    # ------------------------------------------------------------ RFC 6675

    def lost_edge(self, una: int, threshold: int) -> int:
        """IsLost(), by octets: every hole below the returned sequence number
        has more than *threshold* octets SACKed above it and counts as lost;
        holes above it may just be reordered."""
        above = 0
        for left, right in reversed(self.ranges):
            above += right - left
            if above > threshold:
                return left
        return una

    def unsacked(self, start: int, end: int) -> int:
        """Octets in [start, end) that the scoreboard does not hold."""
        n = end - start
        for left, right in self.ranges:
            if left >= end:
                break
            if right > start:
                n -= (right if right < end else end) - (left if left > start else start)
        return n

    def sacked_above(self, seq: int) -> int:
        """Octets at or above *seq* that the scoreboard holds."""
        above = 0
        for left, right in self.ranges:
            if right > seq:
                above += right - (left if left > seq else seq)
        return above

    def pipe(self, una: int, snd_max: int, lost_edge: int) -> int:
        """SetPipe(): the octets not SACKed that are either not lost (at or
        above *lost_edge*) or were retransmitted in this recovery (each
        counted once)."""
        pipe = self.unsacked(lost_edge, snd_max)
        rxt_end = self.high_rxt if self.high_rxt < lost_edge else lost_edge
        if rxt_end > una:
            pipe += self.unsacked(una, rxt_end)
        return pipe

    def next_hole(self, una: int, lost_edge: int) -> tuple[int, int] | None:
        """NextSeg() rule 1: the first lost hole (below *lost_edge*) at or
        above HighRxt, as (its start, the next SACKed left edge), or None."""
        start = self.high_rxt if self.high_rxt > una else una
        for left, right in self.ranges:
            if start >= lost_edge:
                break
            if start < left:
                return start, left
            if start < right:
                start = right
        return None

    def una_rxt_lost(self, una: int, threshold: int) -> bool:
        """Was the last retransmission of the segment at SND.UNA lost? Yes if
        more than *threshold* octets sent after it were SACKed."""
        mark = self.una_rxt
        if mark is None or mark[0] != una:
            return False
        return self.sacked_above(mark[1]) > threshold

    # -------------------------------------------------------------- recovery

    def note_repair(self, start: int, end: int, una: int, snd_max: int) -> None:
        """A retransmission of [start, end): HighRxt, the mark a lost
        retransmission at SND.UNA is found by, and (when an undo is armed)
        one more segment to see reported twice."""
        if end > self.high_rxt:
            self.high_rxt = end
        if start == una:
            self.una_rxt = (start, snd_max)
        if self.prior is not None:
            self.unreported.add(start)

    def arm_undo(self, cwnd: int, ssthresh: int) -> None:
        """A recovery starts: keep the window to undo it to."""
        self.prior = (cwnd, ssthresh)
        self.unreported = set()
        self.undo_ok = False

    def take_undo(self) -> tuple[int, int] | None:
        """The window to restore, if an undo is armed (then disarmed)."""
        prior, self.prior = self.prior, None
        self.undo_ok = False
        return prior

    def reset(self) -> None:
        """A retransmission timeout: the peer may renege on what it SACKed
        (RFC 2018 8), and a timeout is not undone (no F-RTO)."""
        self.ranges.clear()
        self.high_rxt = 0
        self.una_rxt = None
        self.prior = None
        self.unreported.clear()
        self.undo_ok = False
