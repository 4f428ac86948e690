"""Per-source rate limiting of handshake messages under load, as the
kernel's ``ratelimiter.c``: a token bucket per source address (IPv4 /32,
IPv6 /64) of RATELIMIT_PACKETS_PER_SECOND with a burst of
RATELIMIT_PACKETS_BURSTABLE; idle buckets are forgotten after a second.

The table is bounded, as the kernel's is (``max_entries``, 8 x its hash table
of 8192 buckets on a machine with more than 1 GiB): a source that would need
a new bucket while the table is full is refused, so a flood of spoofed
addresses costs bounded memory.
"""

from __future__ import annotations

import ipaddress

from .constants import RATELIMIT_PACKETS_BURSTABLE, RATELIMIT_PACKETS_PER_SECOND

PACKET_COST = 1.0 / RATELIMIT_PACKETS_PER_SECOND
TOKEN_MAX = PACKET_COST * RATELIMIT_PACKETS_BURSTABLE
_GC_INTERVAL = 1.0
MAX_ENTRIES = 8 * 8192
_V4_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96


class RateLimiter:
    def __init__(
        self,
        packets_per_second: float = RATELIMIT_PACKETS_PER_SECOND,
        burst: int = RATELIMIT_PACKETS_BURSTABLE,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.max_entries = max_entries
        self._cost = 1.0 / packets_per_second
        self._max = self._cost * burst
        self._buckets: dict[bytes, tuple[float, float]] = {}  # key -> (last, tokens)
        self._last_gc = 0.0

    @staticmethod
    def _key(host: str) -> bytes:
        try:
            packed = ipaddress.ip_address(host.split("%", 1)[0]).packed
        except ValueError:
            return host.encode()
        if len(packed) == 4:
            return packed
        if packed[:12] == _V4_MAPPED:
            return packed[12:]  # IPv4 through a dual-stack socket: that address
        # One bucket per IPv6 /64: an attacker holds a whole prefix.
        return packed[:8]

    def allow(self, host: str, now: float) -> bool:
        if now - self._last_gc >= _GC_INTERVAL:
            self._last_gc = now
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[0] < _GC_INTERVAL}
        key = self._key(host)
        entry = self._buckets.get(key)
        if entry is None:
            if len(self._buckets) >= self.max_entries:
                return False  # full: the kernel's err_oom path refuses it
            self._buckets[key] = (now, self._max - self._cost)
            return True
        last, tokens = entry
        tokens = min(self._max, tokens + (now - last))
        if tokens >= self._cost:
            self._buckets[key] = (now, tokens - self._cost)
            return True
        self._buckets[key] = (now, tokens)
        return False

    def __len__(self) -> int:
        return len(self._buckets)
