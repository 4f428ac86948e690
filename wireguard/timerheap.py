"""When to wake up for many owners of deadlines: one lazy heap, shared by
the :class:`~wireguard.device.Device` (its peers' timers) and the
:class:`~wireguard.netstack.NetStack` (its connections' timers).

Each owner has one filed deadline at a time. Filing an earlier one pushes a
new entry; a later one (or none) leaves the old entry, which is skipped when
it surfaces, or re-filed by the caller if the owner still has a later
deadline. That is cheaper than a heap update on every packet, when the
deadlines move with every packet (a keepalive, a retransmission timer).
No clock is read here.
"""

from __future__ import annotations

from heapq import heappop, heappush
from typing import Generic, TypeVar

__all__ = ["TimerHeap"]

T = TypeVar("T")


class TimerHeap(Generic[T]):
    """Deadlines of many owners (any objects), earliest first."""

    __slots__ = ("_filed", "_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        # id(owner) -> its filed deadline. An id stays valid as long as it is
        # here: an entry of the owner's is in the heap and holds the owner.
        self._filed: dict[int, float] = {}
        self._seq = 0

    def __len__(self) -> int:
        """Entries in the heap (stale ones included)."""
        return len(self._heap)

    def schedule(self, owner: T, when: float) -> None:
        """Wake up for *owner* no later than *when*."""
        key = id(owner)
        filed = self._filed.get(key)
        if filed is None or when < filed:
            self._filed[key] = when
            self._seq += 1
            heappush(self._heap, (when, self._seq, owner))

    def cancel(self, owner: T) -> None:
        """Forget *owner*'s deadline (its entry is dropped when it surfaces)."""
        self._filed.pop(id(owner), None)

    def first(self) -> tuple[float, T] | None:
        """The earliest filed deadline and its owner, or None (stale entries
        on top are dropped on the way)."""
        heap, filed = self._heap, self._filed
        while heap:
            when, _, owner = heap[0]
            if filed.get(id(owner)) == when:
                return when, owner
            heappop(heap)
        return None

    def pop_due(self, now: float) -> T | None:
        """The owner of the earliest filed deadline at or before *now*, its
        deadline taken off (file a new one after acting), or None."""
        heap, filed = self._heap, self._filed
        while heap and heap[0][0] <= now:
            when, _, owner = heappop(heap)
            key = id(owner)
            if filed.get(key) == when:
                del filed[key]
                return owner
        return None
