"""Out-of-order data a receiver holds above RCV.NXT (RFC 9293 3.10.7.4,
"segment text"), and the SACK blocks that report it (RFC 2018 4).

What is held is charged a per-segment overhead on top of its payload
against a memory budget (twice the receive buffer, see the connection), and
pruned from the highest sequence down when over it, as Linux does.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Final

__all__ = ["OOO_OVERHEAD", "OutOfOrder"]

# Out-of-order data is charged this much per held segment (chunk) on top of
# its payload, against a budget of twice the receive buffer: what a held
# segment costs here in Python objects, rounded up (Linux charges each skb's
# truesize, and doubles SO_RCVBUF "to allow space for bookkeeping overhead").
OOO_OVERHEAD: Final = 256


class OutOfOrder:
    """Data held above RCV.NXT: sorted, disjoint, non-adjacent ranges
    [starts[i], ends[i]) whose bytes are the chunks in chunks[i] (segments as
    they came, less what was held already). A segment finds its place by
    bisection, so one arrival costs O(log n) comparisons plus the ranges it
    joins; arrivals above everything (the usual case after a loss) append.
    ``recent`` keeps a byte of each of the (at most 4) ranges that took data
    most recently, latest first, for the SACK blocks (RFC 2018 4)."""

    __slots__ = ("chunks", "ends", "octets", "recent", "segments", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.chunks: list[list[bytes]] = []
        self.octets = 0  # payload bytes held
        self.segments = 0  # chunks held
        self.recent: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.starts)

    @property
    def memory(self) -> int:
        """What the held data costs against the budget: payload plus overhead."""
        return self.octets + self.segments * OOO_OVERHEAD

    @property
    def end(self) -> int:
        """The sequence number after the highest byte held (0 when empty)."""
        return self.ends[-1] if self.ends else 0

    def clear(self) -> None:
        self.starts.clear()
        self.ends.clear()
        self.chunks.clear()
        self.octets = self.segments = 0
        self.recent.clear()

    def _find(self, seq: int) -> int | None:
        """The index of the range holding *seq*, or None."""
        k = bisect_right(self.starts, seq) - 1
        if k >= 0 and seq < self.ends[k]:
            return k
        return None

    def add(self, seq: int, payload: bytes) -> None:
        """Hold [seq, seq + len(payload)); bytes held already are kept as they are."""
        end = seq + len(payload)
        starts, ends, chunks = self.starts, self.ends, self.chunks
        if not starts or seq > ends[-1]:
            starts.append(seq)
            ends.append(end)
            chunks.append([payload])
            self.octets += end - seq
            self.segments += 1
        else:
            i = bisect_left(ends, seq)  # the first range touching or above seq
            j = bisect_right(starts, end, i)  # ranges i..j-1 touch [seq, end]
            if i == j:
                starts.insert(i, seq)
                ends.insert(i, end)
                chunks.insert(i, [payload])
                self.octets += end - seq
                self.segments += 1
            elif not (j == i + 1 and starts[i] <= seq and end <= ends[i]):
                # Join ranges i..j-1 and the parts of the segment between them.
                joined = chunks[i]
                lo, hi = starts[i], ends[j - 1]
                pieces: list[bytes] = []
                if seq < lo:
                    pieces.append(payload[: lo - seq])
                    joined.insert(0, pieces[-1])
                    lo = seq
                for k in range(i + 1, j):
                    pieces.append(payload[ends[k - 1] - seq : starts[k] - seq])
                    joined.append(pieces[-1])
                    joined += chunks[k]
                if end > hi:
                    pieces.append(payload[hi - seq :])
                    joined.append(pieces[-1])
                    hi = end
                starts[i:j] = [lo]
                ends[i:j] = [hi]
                chunks[i:j] = [joined]
                self.octets += sum(len(p) for p in pieces)
                self.segments += len(pieces)
        # The range holding this segment is reported first from now on.
        first = self._find(seq)
        assert first is not None  # the range that now holds the segment
        keep = [seq]
        seen = {first}
        for old in self.recent:
            found = self._find(old)
            if found is not None and found not in seen:
                seen.add(found)
                keep.append(old)
                if len(keep) == 4:
                    break
        self.recent = keep

    def pull(self, rcv_nxt: int) -> tuple[list[bytes], int]:
        """Take what RCV.NXT has reached: the bytes that follow it, and the new RCV.NXT."""
        starts, ends, chunks = self.starts, self.ends, self.chunks
        out: list[bytes] = []
        k = 0
        while k < len(starts) and starts[k] <= rcv_nxt:
            if ends[k] > rcv_nxt:
                skip = rcv_nxt - starts[k]
                for c in chunks[k]:
                    if skip >= len(c):
                        skip -= len(c)
                        continue
                    out.append(c[skip:] if skip else c)
                    skip = 0
                rcv_nxt = ends[k]
            self.octets -= ends[k] - starts[k]
            self.segments -= len(chunks[k])
            k += 1
        if k:
            del starts[:k], ends[:k], chunks[:k]
        return out, rcv_nxt

    def prune(self, target: int, floor: int) -> tuple[int, int]:
        """Drop held chunks from the highest sequence down, none starting below
        *floor*, until the memory charged is at most *target* (Linux's
        tcp_prune_ofo_queue). Returns the chunks and octets dropped."""
        starts, ends, chunks = self.starts, self.ends, self.chunks
        n = octets = 0
        while starts and self.memory > target:
            top = chunks[-1]
            start = ends[-1] - len(top[-1])
            if start < floor:
                break
            top.pop()
            octets += ends[-1] - start
            self.octets -= ends[-1] - start
            self.segments -= 1
            n += 1
            ends[-1] = start
            if not top:
                starts.pop()
                ends.pop()
                chunks.pop()
        return n, octets

    def sack_blocks(self, n: int) -> list[tuple[int, int]]:
        """Up to *n* blocks: the ranges that took data most recently, latest
        first, then the others from the highest down (RFC 2018 4)."""
        starts, ends = self.starts, self.ends
        out: list[tuple[int, int]] = []
        seen: set[int] = set()
        for seq in self.recent:
            k = self._find(seq)
            if k is not None and k not in seen:
                seen.add(k)
                out.append((starts[k], ends[k]))
        del out[n:]
        k = len(starts) - 1
        while len(out) < n and k >= 0:
            if k not in seen:
                out.append((starts[k], ends[k]))
            k -= 1
        return out
