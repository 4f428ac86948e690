"""Listeners (RFC 9293 3.10.1, a passive open) with a SYN queue, an accept
queue and SYN cookies, bounded as Linux bounds them."""

from __future__ import annotations

import hashlib
import struct
from collections import deque
from dataclasses import dataclass
from typing import Final

from ..context import Context
from ..events import Event
from ..ip import IPPacket, addr_str
from .config import TcpConfig
from .connection import TcpConnection, TcpState
from .segment import ACK, MASK, SYN, SegmentBuilder, TcpSegment, mss_for_mtu, syn_options

__all__ = ["TcpIncoming", "TcpListener"]

# SYN cookies: the cookie is our ISS, 2 bits of the cookie period, 2 bits of
# the MSS index and a 28-bit MAC of the connection's addresses, ports, the
# client's ISN and the period. A cookie is good for the period it was made in
# and the next (Linux: a 60 s counter, MAX_SYNCOOKIE_AGE 2).
_COOKIE_PERIOD: Final = 64.0
_COOKIE_MSS_V4: Final = (536, 1300, 1380, 1460)
_COOKIE_MSS_V6: Final = (1220, 1300, 1360, 1440)


@dataclass(slots=True)
class TcpIncoming(Event):
    """A listener's accept queue became non-empty."""

    listener: TcpListener


class TcpListener:
    """A passive open (RFC 9293 3.10.1 with no foreign socket) with an accept queue.

    Connections complete their handshake here and wait in the queue until
    :meth:`accept`. As in Linux, *backlog* bounds two queues, each: half-open
    connections (the SYN queue; a SYN-ACK is retransmitted from the initial RTO
    with backoff and given up after ``max_synack_retransmits``) and established
    ones not yet accepted (the accept queue). A SYN that finds the accept queue
    full is dropped without answer, so the client retries, and so is a final
    ACK (the half-open connection stays; the client's next segment completes
    it). A SYN that finds the SYN queue full is answered with a SYN cookie
    (``TcpConfig.syn_cookies``), or dropped. Every drop is counted in the
    stack's stats.
    """

    def __init__(
        self, ctx: Context, config: TcpConfig, addr: bytes | None, port: int, backlog: int
    ) -> None:
        self._ctx = ctx
        self._cfg = config
        self.addr = addr  # None: all of the stack's addresses
        self.port = port
        self.backlog = backlog
        self._queue: deque[TcpConnection] = deque()
        self._embryos: set[TcpConnection] = set()  # half-open, in SYN-RECEIVED
        self._cookie_key: bytes | None = None
        self._cookies_until = 0.0  # cookies are checked until then (2 periods after one)
        self.closed = False

    @property
    def local_address(self) -> tuple[str, int]:
        """The listening (address, port); the address is "" for all of ours."""
        return (addr_str(self.addr) if self.addr else "", self.port)

    @property
    def pending(self) -> int:
        """Established connections waiting to be accepted."""
        return len(self._queue)

    @property
    def half_open(self) -> int:
        """Connections in SYN-RECEIVED (the SYN queue)."""
        return len(self._embryos)

    def accept(self) -> TcpConnection | None:
        """The oldest established connection, or None if the queue is empty."""
        while self._queue:
            conn = self._queue.popleft()
            if conn.state is not TcpState.CLOSED:
                return conn
        return None

    def close(self) -> None:
        """Stop listening; connections never accepted are reset (RFC 9293 3.10.4)."""
        if self.closed:
            return
        self.closed = True
        self._ctx.closed(self)
        while self._queue:
            self._queue.popleft().abort()
        for conn in list(self._embryos):
            conn.abort()

    # ==================================================== the stack's side

    def syn_arrives(self, packet: IPPacket, seg: TcpSegment, now: float) -> None:
        """RFC 9293 3.10.7.2, third check: a SYN creates a connection in SYN-RECEIVED."""
        stats = self._ctx.stats
        if self.closed or self.accept_queue_full():
            stats.listen_overflows += 1
            return
        if len(self._embryos) >= self.backlog:
            if self._cfg.syn_cookies:
                self._send_cookie(packet, seg, now)
            else:
                stats.syn_queue_overflows += 1
            return
        conn = self._embryo(packet, seg)
        conn.passive_open(seg, now)
        self._ctx.schedule(conn)

    def ack_arrives(self, packet: IPPacket, seg: TcpSegment, now: float) -> bool:
        """An ACK for no connection: if it returns a cookie of ours, the
        connection is opened (and the segment processed in it). False if it
        is not ours to take (the caller answers with a RST)."""
        if now >= self._cookies_until or self.closed:
            return False  # no cookies sent lately (Linux: tcp_synq_no_recent_overflow)
        cookie = (seg.ack - 1) & MASK
        isn = (seg.seq - 1) & MASK
        period = int(now // _COOKIE_PERIOD)
        index = (cookie >> 28) & 3
        for p in (period, period - 1):
            if (p & 3) == cookie >> 30 and self._cookie(packet, seg, isn, p, index) == cookie:
                break
        else:
            self._ctx.stats.syncookies_failed += 1
            return False
        if self.accept_queue_full():
            self._ctx.stats.listen_overflows += 1
            return True  # dropped: the client retransmits
        self._ctx.stats.syncookies_accepted += 1
        table = _COOKIE_MSS_V4 if len(packet.src) == 4 else _COOKIE_MSS_V6
        conn = self._embryo(packet, seg)
        conn.cookie_open(isn, cookie, table[index], min(self._cfg.receive_buffer, 0xFFFF))
        conn.segment_arrives(seg, now)
        self._ctx.schedule(conn)
        return True

    def _embryo(self, packet: IPPacket, seg: TcpSegment) -> TcpConnection:
        """A half-open connection for this SYN (or returned cookie), in the
        SYN queue and the stack's table."""
        conn = TcpConnection(
            self._ctx, self._cfg, packet.dst, seg.dport, packet.src, seg.sport, listener=self
        )
        self._embryos.add(conn)
        self._ctx.opened(conn)
        return conn

    # ================================================ the connection's side

    def accept_queue_full(self) -> bool:
        """True if an established connection would not fit in the accept queue."""
        return len(self._queue) >= self.backlog

    def established(self, conn: TcpConnection) -> None:
        """*conn* completed its handshake: queue it for ``accept()``."""
        self._embryos.discard(conn)
        if self.closed:
            conn.abort()
            return
        conn.become_visible()
        self._queue.append(conn)
        if len(self._queue) == 1:
            self._ctx.notify(TcpIncoming(self))

    def embryo_gone(self, conn: TcpConnection) -> None:
        """*conn* went away before it was established."""
        self._embryos.discard(conn)

    # ------------------------------------------------------------ SYN cookies

    def _cookie(self, packet: IPPacket, seg: TcpSegment, isn: int, period: int, index: int) -> int:
        if self._cookie_key is None:
            self._cookie_key = self._ctx.random(16)
        mac = hashlib.blake2s(
            packet.dst
            + packet.src
            + struct.pack("!HHIIB", seg.dport, seg.sport, isn, period & MASK, index),
            key=self._cookie_key,
            digest_size=4,
        ).digest()
        return ((period & 3) << 30) | (index << 28) | (int.from_bytes(mac, "big") & 0x0FFFFFFF)

    def _send_cookie(self, packet: IPPacket, seg: TcpSegment, now: float) -> None:
        """Answer a SYN without keeping state: the SYN-ACK's sequence number
        encodes what the final ACK needs to open the connection."""
        table = _COOKIE_MSS_V4 if len(packet.src) == 4 else _COOKIE_MSS_V6
        mss = seg.mss if seg.mss else table[0]
        index = 0
        while index < 3 and table[index + 1] <= mss:
            index += 1
        period = int(now // _COOKIE_PERIOD)
        cookie = self._cookie(packet, seg, seg.seq, period, index)
        rmss = mss_for_mtu(self._ctx.mtu, len(packet.src) == 4)
        wnd = min(self._cfg.receive_buffer, 0xFFFF)
        builder = SegmentBuilder(packet.dst, packet.src, seg.dport, seg.sport)
        self._ctx.emit(builder.build(cookie, seg.seq + 1, SYN | ACK, wnd, b"", syn_options(rmss)))
        self._ctx.stats.syncookies_sent += 1
        self._cookies_until = now + 2 * _COOKIE_PERIOD
