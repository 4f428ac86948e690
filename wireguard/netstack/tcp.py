"""TCP (RFC 9293) as a sans-I/O state machine: segments and ``now`` in, segments out.

What is implemented, with the section that asks for it:

* Three-way handshake both ways, simultaneous open (RFC 9293 3.5), the segment
  arrival rules of 3.10.7 in every state, half close and simultaneous close (3.6).
* MSS option derived from the MTU (3.7.1) and window scaling (RFC 7323 section 2).
* Sliding window honouring the peer's window, zero-window probes on a persist
  timer with one octet of new data (3.8.6.1), receiver and sender silly-window
  avoidance (3.8.6.2), window updates when the application reads.
* Retransmission timeout per RFC 6298: SRTT/RTTVAR, exponential backoff, Karn's
  algorithm (no samples from retransmitted segments, timing one segment at a
  time), RTO re-initialised to 3 s when the SYN had to be retransmitted (5.7).
* Congestion control per RFC 5681 (slow start, congestion avoidance, the loss
  window after a timeout) with fast retransmit on the third duplicate ACK,
  Limited Transmit on the first two (RFC 3042) and NewReno recovery (RFC 6582).
* SACK (RFC 2018) as a receiver: SACK-permitted offered, out-of-order data
  reported in SACK blocks on pure ACKs, and duplicates reported in a D-SACK
  block (RFC 2883), so a SACK sender (Linux) can repair several holes per
  round trip and undo recoveries that reordering caused.
* SACK as a sender: the peer's blocks kept in a scoreboard, and loss recovery
  by RFC 6675 (the pipe estimate, lost holes first, IsLost by octets SACKed
  above; an ACK that newly SACKs data counts as a duplicate whatever its
  window). On top: a lost retransmission sent again once three segments sent
  after it are SACKed, Early Retransmit (RFC 5827), tail loss probes (RFC 8985
  section 7) and the undo of a recovery whose retransmissions all come back
  in D-SACK blocks (RFC 3708). Without SACK agreed: NewReno as above.
* Out-of-order reassembly (including an out-of-order FIN), immediate duplicate
  ACKs and ACK on filling a gap (RFC 5681 4.2), delayed ACKs bounded by every
  second segment (RFC 9293 3.8.6.3, RFC 1122 4.2.3.2). Held data is charged
  with a per-segment overhead against a memory budget of twice the receive
  buffer and pruned from the highest sequence down when over it, as Linux.
* Listeners with a SYN queue and an accept queue, each bounded by the
  backlog; SYN-ACKs retransmitted and given up as Linux's
  tcp_synack_retries; SYN cookies when the SYN queue is full (as Linux's
  tcp_syncookies=1), so a flood of spoofed SYNs does not lock clients out.
* RST generation and validation (3.10.7 and RFC 5961: exact-match RST, challenge
  ACK for in-window RST and for SYN in a synchronized state, ACK range check).
* TIME-WAIT of 2*MSL, FIN-WAIT-2 timeout for connections the application closed
  (as Linux's tcp_fin_timeout), abort after too many retransmissions (3.8.3).

Not implemented: time-based loss detection (RACK, RFC 8985 section 6),
retransmitting by SACK after a timeout, F-RTO, congestion control other than
Reno (no CUBIC), timestamps (RFC 7323 section 3), urgent data (URG is ignored
and its data delivered inline, as RFC 6093 recommends for new applications),
keep-alives, ECN, IP fragmentation.

Sequence numbers are kept *unwrapped*: the internal ``snd_*``/``rcv_*`` values are
unbounded Python integers that start at the 32-bit ISS/IRS and only grow, and
every incoming 32-bit number is unwrapped next to the value it is compared with.
Comparisons are then plain ``<``, which removes a whole class of modulo bugs.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ..errors import LocalProtocolError, RemoteProtocolError
from .events import TcpClosed, TcpEstablished, TcpIncoming, TcpReadable, TcpWritable
from .ip import (
    IPPROTO_TCP,
    IPPacket,
    MalformedPacketError,
    addr_str,
    build_ip,
    header_template,
    pseudo_header_sum,
    verify_checksum,
)

if TYPE_CHECKING:
    from .stack import NetStack

__all__ = [
    "ConnectionRefused",
    "ConnectionReset",
    "ConnectionTimedOut",
    "TcpConfig",
    "TcpConnection",
    "TcpConnectionError",
    "TcpListener",
    "TcpSegment",
    "TcpState",
    "build_segment",
    "parse_tcp",
    "rst_for_unexpected",
]

FIN: Final = 0x01
SYN: Final = 0x02
RST: Final = 0x04
PSH: Final = 0x08
ACK: Final = 0x10
URG: Final = 0x20

_MASK: Final = 0xFFFFFFFF
_HALF: Final = 0x80000000
_WRAP: Final = 0x100000000

_HDR = struct.Struct("!HHIIBBHHH")
_SACK_BLOCK = struct.Struct("!II")
_DUPTHRESH = 3  # duplicate ACKs (or segments SACKed above a hole) that mean loss
_MIN_PTO = 0.01  # tail loss probe: the least probe timeout, as Linux
_DELAYED_ACK_ALLOWANCE = 0.2  # RFC 8985 WCDelAckT: a peer may delay an ACK this long

# RFC 9293 3.7.1: without an MSS option the peer accepts 536 (IPv4) or 1220 (IPv6).
_DEFAULT_MSS_V4: Final = 536
_DEFAULT_MSS_V6: Final = 1220
_MAX_WSCALE: Final = 14  # RFC 7323 2.3
_CLOCK_GRANULARITY: Final = 0.001  # G in RFC 6298 2.2/2.3; our clock is a float of seconds
_SYN_RETRANSMITTED_RTO: Final = 3.0  # RFC 6298 5.7

# Out-of-order data is charged this much per held segment (chunk) on top of
# its payload, against a budget of twice the receive buffer: what a held
# segment costs here in Python objects, rounded up (Linux charges each skb's
# truesize, and doubles SO_RCVBUF "to allow space for bookkeeping overhead").
_OOO_OVERHEAD: Final = 256
# The scoreboard of the peer's SACK blocks holds at most this many ranges per
# send buffer's worth of segments, plus a few (a receiver SACKing scraps of
# segments would otherwise make every ACK walk an ever longer list).
_SACKED_SLACK: Final = 8

# SYN cookies: the cookie is our ISS, 2 bits of the cookie period, 2 bits of
# the MSS index and a 28-bit MAC of the connection's addresses, ports, the
# client's ISN and the period. A cookie is good for the period it was made in
# and the next (Linux: a 60 s counter, MAX_SYNCOOKIE_AGE 2).
_COOKIE_PERIOD: Final = 64.0
_COOKIE_MSS_V4: Final = (536, 1300, 1380, 1460)
_COOKIE_MSS_V6: Final = (1220, 1300, 1360, 1440)


class TcpState(enum.Enum):
    """The connection states of RFC 9293 section 3.3.2."""

    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"


_S = TcpState
_CLOSED = _S.CLOSED
_SYN_SENT = _S.SYN_SENT
_SYN_RECEIVED = _S.SYN_RECEIVED
_ESTABLISHED = _S.ESTABLISHED
_FIN_WAIT_1 = _S.FIN_WAIT_1
_FIN_WAIT_2 = _S.FIN_WAIT_2
_CLOSE_WAIT = _S.CLOSE_WAIT
_CLOSING = _S.CLOSING
_LAST_ACK = _S.LAST_ACK
_TIME_WAIT = _S.TIME_WAIT

# States in which data may be sent (RFC 9293 3.10.2) and received (3.10.7.4 step 7).
_SEND_STATES: Final = frozenset({_ESTABLISHED, _CLOSE_WAIT, _FIN_WAIT_1, _CLOSING, _LAST_ACK})
_RECEIVE_STATES: Final = frozenset({_ESTABLISHED, _FIN_WAIT_1, _FIN_WAIT_2})


class TcpConnectionError(RemoteProtocolError):
    """A connection ended abnormally because of what the peer did (or did not do)."""


class ConnectionReset(TcpConnectionError, ConnectionResetError):
    """The peer sent an acceptable RST (ECONNRESET)."""


class ConnectionRefused(TcpConnectionError, ConnectionRefusedError):
    """The peer answered our SYN with a RST (ECONNREFUSED)."""


class ConnectionTimedOut(TcpConnectionError, TimeoutError):
    """Too many retransmissions without an acknowledgment (ETIMEDOUT)."""


@dataclass
class TcpConfig:
    """Tunables. Defaults follow the RFCs; where Linux differs the docstring says so."""

    send_buffer: int = 256 * 1024
    """Bytes ``send()`` accepts before it returns short (unsent plus unacknowledged)."""
    receive_buffer: int = 256 * 1024
    """Receive buffer; the advertised window is its free space (RFC 9293 3.8.6.2.2)."""
    initial_rto: float = 1.0
    """RFC 6298 2.1."""
    min_rto: float = 1.0
    """RFC 6298 2.4 asks for 1 s; Linux uses 200 ms. Lower it for snappier recovery."""
    max_rto: float = 60.0
    """RFC 6298 2.5 allows an upper bound of at least 60 s."""
    max_retransmits: int = 10
    """R2 of RFC 9293 3.8.3: with backoff from 1 s this is over 5 minutes (> 100 s)."""
    max_syn_retransmits: int = 6
    """R2 for SYN, at least 3 minutes per RFC 9293 3.8.3 (1+2+...+64 = 127 s after the
    last, like Linux's tcp_syn_retries=6)."""
    max_synack_retransmits: int = 5
    """SYN-ACK retransmissions before a half-open connection is dropped (silently,
    counted in ``synack_timeouts``): 5 is Linux's tcp_synack_retries, which with
    backoff from 1 s gives up at 63 s."""
    msl: float = 30.0
    """Maximum segment lifetime: TIME-WAIT lasts 2*MSL = 60 s, Linux's fixed value.
    RFC 9293 3.4.2 suggests 2 minutes, but a userspace stack behind a tunnel gains
    nothing from holding ports that long."""
    max_time_wait: int = 4096
    """Connections the stack keeps in TIME-WAIT at once; past it a connection that
    would enter TIME-WAIT closes at once, counted in ``tcp_time_wait_overflows``
    (Linux's tcp_max_tw_buckets). Lower than Linux's default, as each holds a
    whole TCB (about 3 KB) rather than the kernel's small TIME-WAIT socket."""
    fin_wait_2_timeout: float = 60.0
    """How long a connection the application has closed waits for the peer's FIN."""
    delayed_ack: float = 0.04
    """Delayed-ACK timeout (RFC 1122 4.2.3.2 requires < 0.5 s; 40 ms is Linux's
    minimum). 0 acknowledges every segment at once."""
    nagle: bool = False
    """Nagle's algorithm (RFC 9293 3.7.4). Off by default: output is already
    coalesced per flush, and Nagle with delayed ACKs stalls request/response."""
    window_scaling: bool = True
    """Offer the window scale option (RFC 7323)."""
    backlog: int = 128
    """Default listen backlog. As in Linux it bounds two queues of a listener, each:
    the accept queue (established, not yet accepted; a SYN or final ACK that finds
    it full is dropped and counted in ``listen_overflows``) and the SYN queue
    (half-open, in SYN-RECEIVED; when full, SYN cookies or a counted drop)."""
    syn_cookies: bool = True
    """Answer SYNs with SYN cookies when the SYN queue is full (Linux's
    tcp_syncookies=1): no state is kept, so spoofed SYNs cannot lock clients out.
    A cookie carries only the MSS: such connections have no window scaling and
    no SACK (as Linux's without timestamps). Off: such SYNs are dropped."""
    initial_window: int | None = None
    """Initial congestion window in segments; None is RFC 5681 3.1's
    min(4*SMSS, max(2*SMSS, 4380 bytes)). RFC 6928 allows 10."""
    sack: bool = True
    """Offer SACK-permitted (RFC 2018) and, when the peer agrees, report
    out-of-order data in SACK blocks on our ACKs, so the peer's sender can
    repair several holes per round trip (and use RACK/TLP, as Linux does)
    instead of one per round trip or a timeout. Receiver side only: SACK blocks
    the peer sends us are not used (RFC 2018 makes their use a SHOULD), our
    sender recovers with NewReno."""


def _unwrap(value: int, reference: int) -> int:
    """The unbounded sequence number closest to *reference* whose low 32 bits are *value*."""
    d = (value - reference) & _MASK
    if d & _HALF:
        d -= _WRAP
    return reference + d


class TcpSegment:
    """A parsed TCP header and its payload (RFC 9293 3.1). Numbers are still 32-bit."""

    __slots__ = (
        "ack",
        "dport",
        "flags",
        "mss",
        "payload",
        "sack",
        "sack_ok",
        "seq",
        "sport",
        "wnd",
        "wscale",
    )

    def __init__(
        self,
        sport: int,
        dport: int,
        seq: int,
        ack: int,
        flags: int,
        wnd: int,
        payload: bytes,
        mss: int | None = None,
        wscale: int | None = None,
        sack_ok: bool = False,
    ) -> None:
        self.sport = sport
        self.dport = dport
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.wnd = wnd
        self.payload = payload
        self.mss = mss
        self.wscale = wscale
        self.sack_ok = sack_ok  # SACK-permitted (RFC 2018 2), SYNs only
        # SACK blocks (RFC 2018 3) as 32-bit (left, right) pairs, non-SYNs only.
        self.sack: list[tuple[int, int]] | None = None

    def __repr__(self) -> str:
        names = "".join(c for bit, c in ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"),
                                         (ACK, "."), (URG, "U")) if self.flags & bit)  # fmt: skip
        return (
            f"TcpSegment({self.sport}->{self.dport} [{names}] seq={self.seq} ack={self.ack} "
            f"wnd={self.wnd} len={len(self.payload)} mss={self.mss} ws={self.wscale})"
        )


def _options(data: bytes, end: int) -> Iterator[tuple[int, int, int]]:
    """(kind, offset, length) of each option in the header's option list
    (RFC 9293 3.1), up to end-of-list; MalformedPacketError if it overruns."""
    i = 20
    while i < end:
        kind = data[i]
        if kind == 0:  # end of option list
            return
        if kind == 1:  # no-operation
            i += 1
            continue
        if i + 1 >= end:
            raise MalformedPacketError("TCP option truncated")
        length = data[i + 1]
        if length < 2 or i + length > end:
            raise MalformedPacketError("TCP option length invalid")
        yield kind, i, length
        i += length


def _parse_options(data: bytes, end: int) -> tuple[int | None, int | None, bool]:
    """MSS, window scale and SACK-permitted from the option list (RFC 9293 3.2,
    RFC 7323 2.2, RFC 2018 2)."""
    mss = wscale = None
    sack_ok = False
    for kind, i, length in _options(data, end):
        if kind == 2 and length == 4:
            mss = (data[i + 2] << 8) | data[i + 3]
        elif kind == 3 and length == 3:
            wscale = data[i + 2]
        elif kind == 4 and length == 2:
            sack_ok = True
    return mss, wscale, sack_ok


def _parse_sack(data: bytes, end: int) -> list[tuple[int, int]] | None:
    """The SACK blocks of a non-SYN segment (RFC 2018 3), None if it has none.
    A malformed option list yields no blocks (the segment itself stands)."""
    try:
        for kind, i, length in _options(data, end):
            if kind == 5 and length >= 10 and (length - 2) % 8 == 0:
                return [_SACK_BLOCK.unpack_from(data, j) for j in range(i + 2, i + length, 8)]
    except MalformedPacketError:
        pass
    return None


def parse_tcp(packet: IPPacket) -> TcpSegment:
    """Parse and checksum-verify the TCP segment in *packet* (RFC 9293 3.1).

    Options are only decoded on SYN segments: MSS and window scale mean nothing
    elsewhere (RFC 7323 2.2), and skipping them keeps the data path short.
    """
    data = packet.payload
    n = len(data)
    if n < 20:
        raise MalformedPacketError("TCP header truncated")
    if not verify_checksum(data, pseudo_header_sum(packet.src, packet.dst, IPPROTO_TCP, n)):
        raise MalformedPacketError("TCP checksum mismatch")
    sport, dport, seq, ack, off, flags, wnd, _csum, _urp = _HDR.unpack_from(data)
    hlen = (off >> 4) << 2
    if hlen < 20 or hlen > n:
        raise MalformedPacketError("TCP data offset invalid")
    mss = wscale = None
    sack_ok = False
    if hlen > 20 and flags & SYN:
        mss, wscale, sack_ok = _parse_options(data, hlen)
    seg = TcpSegment(sport, dport, seq, ack, flags, wnd, data[hlen:], mss, wscale, sack_ok)
    if hlen > 20 and not flags & SYN and flags & ACK:
        seg.sack = _parse_sack(data, hlen)
    return seg


def build_segment(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    wnd: int,
    payload: bytes = b"",
    options: bytes = b"",
) -> bytes:
    """A whole IP packet carrying one TCP segment (used for RSTs and by tests)."""
    hlen = 20 + len(options)
    if hlen & 3:
        raise ValueError("TCP options must be padded to 4 bytes")
    head = _HDR.pack(sport, dport, seq & _MASK, ack & _MASK, hlen << 2, flags, wnd, 0, 0) + options
    value = int.from_bytes(head, "big") + (
        int.from_bytes(payload, "big") << (8 if len(payload) & 1 else 0)
    )
    csum = 0xFFFF - (
        (value + pseudo_header_sum(src, dst, IPPROTO_TCP, hlen + len(payload))) % 0xFFFF
    )
    return build_ip(
        src, dst, IPPROTO_TCP, head[:16] + csum.to_bytes(2, "big") + head[18:] + payload
    )


def rst_for_unexpected(packet: IPPacket, seg: TcpSegment) -> bytes | None:
    """The RST answering a segment for which no connection exists (RFC 9293 3.10.7.1).

    An incoming RST is never answered (that could loop). If the segment had an
    ACK, the RST takes its sequence number from it so the peer finds it
    acceptable; otherwise it acknowledges everything the segment occupied.
    """
    flags = seg.flags
    if flags & RST:
        return None
    if flags & ACK:
        return build_segment(packet.dst, packet.src, seg.dport, seg.sport, seg.ack, 0, RST, 0)
    seg_len = len(seg.payload) + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
    return build_segment(
        packet.dst, packet.src, seg.dport, seg.sport, 0, seg.seq + seg_len, RST | ACK, 0
    )


class _OutOfOrder:
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
        return self.octets + self.segments * _OOO_OVERHEAD

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
        keep = [seq]
        seen = {first}
        for old in self.recent:
            k = self._find(old)
            if k is not None and k not in seen:
                seen.add(k)
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

    def __init__(self, stack: NetStack, addr: bytes | None, port: int, backlog: int) -> None:
        self._stack = stack
        self._addr = addr
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
        return (addr_str(self._addr) if self._addr else "", self.port)

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
            if conn.state is not _CLOSED:
                return conn
        return None

    def close(self) -> None:
        """Stop listening; connections never accepted are reset (RFC 9293 3.10.4)."""
        if self.closed:
            return
        self.closed = True
        self._stack._tcp_unlisten(self)
        while self._queue:
            self._queue.popleft().abort()
        for conn in list(self._embryos):
            conn.abort()

    def _syn_arrives(self, packet: IPPacket, seg: TcpSegment, now: float) -> None:
        # RFC 9293 3.10.7.2, third check: a SYN creates a connection in SYN-RECEIVED.
        stats = self._stack.stats
        if self.closed or self._accept_queue_full():
            stats.listen_overflows += 1
            return
        if len(self._embryos) >= self.backlog:
            if self._stack.tcp_config.syn_cookies:
                self._send_cookie(packet, seg, now)
            else:
                stats.syn_queue_overflows += 1
            return
        conn = TcpConnection(
            self._stack, packet.dst, seg.dport, packet.src, seg.sport, now, listener=self
        )
        self._embryos.add(conn)
        conn._passive_open(seg, now)
        self._stack._reschedule(conn)

    def _accept_queue_full(self) -> bool:
        return len(self._queue) >= self.backlog

    def _established(self, conn: TcpConnection) -> None:
        self._embryos.discard(conn)
        if self.closed:
            conn.abort()
            return
        conn._visible = True
        self._queue.append(conn)
        if len(self._queue) == 1:
            self._stack._event(TcpIncoming(self))

    def _embryo_gone(self, conn: TcpConnection) -> None:
        self._embryos.discard(conn)

    # ------------------------------------------------------------ SYN cookies

    def _cookie(self, packet: IPPacket, seg: TcpSegment, isn: int, period: int, index: int) -> int:
        if self._cookie_key is None:
            self._cookie_key = self._stack._random(16)
        mac = hashlib.blake2s(
            packet.dst
            + packet.src
            + struct.pack("!HHIIB", seg.dport, seg.sport, isn, period & _MASK, index),
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
        rmss = self._stack.mtu - (20 if len(packet.src) == 4 else 40) - 20
        wnd = min(self._stack.tcp_config.receive_buffer, 0xFFFF)
        mss_option = b"\x02\x04" + rmss.to_bytes(2, "big")
        src, dst = packet.dst, packet.src
        syn_ack = build_segment(
            src, dst, seg.dport, seg.sport, cookie, seg.seq + 1, SYN | ACK, wnd, options=mss_option
        )
        self._stack._output(syn_ack)
        self._stack.stats.syncookies_sent += 1
        self._cookies_until = now + 2 * _COOKIE_PERIOD

    def _ack_arrives(self, packet: IPPacket, seg: TcpSegment, now: float) -> bool:
        """An ACK for no connection: if it returns a cookie of ours, the
        connection is opened (and the segment processed in it). False if it
        is not ours to take (the caller answers with a RST)."""
        if now >= self._cookies_until or self.closed:
            return False  # no cookies sent lately (Linux: tcp_synq_no_recent_overflow)
        cookie = (seg.ack - 1) & _MASK
        isn = (seg.seq - 1) & _MASK
        period = int(now // _COOKIE_PERIOD)
        index = (cookie >> 28) & 3
        for p in (period, period - 1):
            if (p & 3) == cookie >> 30 and self._cookie(packet, seg, isn, p, index) == cookie:
                break
        else:
            self._stack.stats.syncookies_failed += 1
            return False
        if self._accept_queue_full():
            self._stack.stats.listen_overflows += 1
            return True  # dropped: the client retransmits
        self._stack.stats.syncookies_accepted += 1
        table = _COOKIE_MSS_V4 if len(packet.src) == 4 else _COOKIE_MSS_V6
        conn = TcpConnection(
            self._stack, packet.dst, seg.dport, packet.src, seg.sport, now, listener=self
        )
        self._embryos.add(conn)
        conn._cookie_open(isn, cookie, table[index], min(conn._cfg.receive_buffer, 0xFFFF))
        conn._segment_arrives(seg, now)
        self._stack._reschedule(conn)
        return True


class TcpConnection:
    """One TCP connection (a TCB, RFC 9293 3.3.1) and its application-side API.

    The application calls :meth:`send`, :meth:`receive`, :meth:`shutdown`,
    :meth:`close` and :meth:`abort` at any time; segments are produced when the
    stack flushes (``NetStack.packets_to_send``), so several writes and ACKs
    that happen in one turn leave as few segments as possible.
    """

    def __init__(
        self,
        stack: NetStack,
        local_addr: bytes,
        local_port: int,
        remote_addr: bytes,
        remote_port: int,
        now: float,
        *,
        listener: TcpListener | None = None,
    ) -> None:
        cfg = stack.tcp_config
        self._stack = stack
        self._cfg = cfg
        self._listener = listener
        self._visible = listener is None  # does the application know this connection?
        self.local_addr = local_addr
        self.local_port = local_port
        self.remote_addr = remote_addr
        self.remote_port = remote_port
        self.key = (local_addr, local_port, remote_addr, remote_port)
        self._ip = header_template(local_addr, remote_addr, IPPROTO_TCP)
        self._pseudo = (
            int.from_bytes(local_addr, "big") + int.from_bytes(remote_addr, "big") + IPPROTO_TCP
        )
        v4 = len(local_addr) == 4
        # RFC 9293 3.7.1: MMS_S is the MTU less IP header; our MSS option advertises
        # the largest segment we accept, the MTU less the IP and TCP headers.
        self.rmss = stack.mtu - (20 if v4 else 40) - 20
        self.smss = min(_DEFAULT_MSS_V4 if v4 else _DEFAULT_MSS_V6, self.rmss)
        self.state = _CLOSED
        self.error: Exception | None = None

        self._set_iss(int.from_bytes(stack._random(4), "big"))
        self.snd_wnd = 0
        self.max_snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wscale = 0
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_adv = 0  # right edge of the window we last advertised
        self.rcv_wscale = 0
        self._offer_wscale = 0
        if cfg.window_scaling:
            while (cfg.receive_buffer >> self._offer_wscale) > 0xFFFF and (
                self._offer_wscale < _MAX_WSCALE
            ):
                self._offer_wscale += 1

        self._sndbuf = bytearray()
        self._fin_queued = False
        self._rcvbuf = bytearray()
        self._ooo = _OutOfOrder()
        self._ooo_fin: int | None = None
        self._sack = False  # both sides sent SACK-permitted
        self._sack_in_syn = False
        self._dsack: tuple[int, int] | None = None  # a duplicate to report (RFC 2883)
        self._peer_fin = False
        self._app_closed = False  # close() (not shutdown()): no more reads

        # Congestion control, RFC 5681 / RFC 6582.
        self.cwnd = 0
        self.ssthresh = 1 << 30  # "arbitrarily high" (RFC 5681 3.1)
        self._dupacks = 0
        self._in_recovery = False
        # SACK-based loss recovery (RFC 6675, simplified; only with SACK agreed):
        # the scoreboard of what the peer reported holding above SND.UNA, as
        # sorted disjoint [left, right) ranges, and HighRxt, the end of what
        # this recovery has retransmitted so far.
        self._sacked: list[list[int]] = []
        self._high_rxt = 0
        # The segment at SND.UNA as last retransmitted: (its sequence number,
        # SND.MAX then). Data sent after it being SACKed while it is not
        # acknowledged means the retransmission was lost too.
        self._una_rxt: tuple[int, int] | None = None
        # Undoing a spurious fast recovery (RFC 3708 with D-SACK, RFC 2883):
        # the window before the reduction, and the segments this recovery
        # retransmitted that the peer has not yet reported receiving twice.
        # When it reports all of them, every retransmission was needless (the
        # "loss" was reordering) and the window comes back.
        self._undo: tuple[int, int] | None = None  # (cwnd, ssthresh) before
        self._undo_pending: set[int] = set()  # start of each retransmission
        self._undo_ok = False

        # RTO, RFC 6298.
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = cfg.initial_rto
        self._rtt_seq: int | None = None
        self._rtt_time = 0.0
        self._retries = 0
        self._syn_retransmitted = False
        self._persist_backoff = 0

        self._rto_at: float | None = None
        self._persist_at: float | None = None
        # Tail loss probe (RFC 8985 section 7), with SACK only: when the ACKs
        # of a flight stop coming (the last ACK lost, or the tail of the
        # flight), probe after about two round trips instead of waiting for
        # the retransmission timeout. One probe until an ACK moves SND.UNA.
        self._tlp_at: float | None = None
        self._tlp_sent = False
        self._delack_at: float | None = None
        self._close_at: float | None = None
        self._heap_at: float | None = None  # owned by the stack's timer heap

        self._ack_now = False
        self._ack_pending = 0
        self._readable_signalled = False
        self._want_writable = False
        self._closed_signalled = False
        self._released = False
        self._ever_established = False
        self._ws_in_syn = False

        self.segments_sent = 0
        self.segments_received = 0
        self.retransmits = 0

    def _set_iss(self, iss: int) -> None:
        self.iss = iss
        self.snd_una = self.snd_nxt = iss
        self.snd_max = iss  # highest sequence number sent (BSD's snd_max)
        self._probe_end = iss  # end of the last zero-window probe octet
        self.snd_wl2 = iss
        self._sndbuf_seq = iss + 1  # sequence number of _sndbuf[0]
        self._recover = iss

    # ----------------------------------------------------------------- inspection

    def __repr__(self) -> str:
        return (
            f"<TcpConnection {addr_str(self.local_addr)}:{self.local_port} -> "
            f"{addr_str(self.remote_addr)}:{self.remote_port} {self.state.value}>"
        )

    @property
    def local_address(self) -> tuple[str, int]:
        return (addr_str(self.local_addr), self.local_port)

    @property
    def remote_address(self) -> tuple[str, int]:
        return (addr_str(self.remote_addr), self.remote_port)

    @property
    def established(self) -> bool:
        """True once the handshake completed (whatever happened afterwards)."""
        return self._ever_established

    @property
    def closed(self) -> bool:
        """True when the connection no longer exists (CLOSED) or lingers in TIME-WAIT."""
        return self.state is _CLOSED or self.state is _TIME_WAIT

    @property
    def readable_bytes(self) -> int:
        """Bytes ``receive()`` can return now."""
        return len(self._rcvbuf)

    @property
    def at_eof(self) -> bool:
        """True when the peer's FIN arrived and every byte before it has been read."""
        return self._peer_fin and not self._rcvbuf

    @property
    def send_space(self) -> int:
        """How many bytes ``send()`` would accept now."""
        return max(0, self._cfg.send_buffer - len(self._sndbuf))

    @property
    def send_buffered(self) -> int:
        """Bytes accepted by ``send()`` and not yet acknowledged by the peer."""
        return len(self._sndbuf)

    @property
    def can_send(self) -> bool:
        """True while ``send()`` is allowed (before shutdown, close or an error)."""
        return not self._fin_queued and self.state in (
            _SYN_SENT,
            _SYN_RECEIVED,
            _ESTABLISHED,
            _CLOSE_WAIT,
        )

    # ---------------------------------------------------------- application calls

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Queue as much of *data* as the send buffer takes; return that count.

        RFC 9293 3.10.2: data may be queued in SYN-SENT and SYN-RECEIVED and goes
        out once the connection is established. A short count means the buffer is
        full; a :class:`TcpWritable` event follows when it has room again.
        """
        if self.error is not None:
            raise self.error
        if not self.can_send:
            raise LocalProtocolError(f"cannot send in state {self.state.value} after shutdown")
        room = self._cfg.send_buffer - len(self._sndbuf)
        n = len(data)
        if n > room:
            n = max(room, 0)
            self._want_writable = True
        if n:
            self._sndbuf += data[:n] if n < len(data) else data
            if self.state in _SEND_STATES:
                self._stack._want_output(self)
        return n

    def receive(self, max_bytes: int = -1) -> bytes:
        """Up to *max_bytes* received bytes (all if negative); b"" if none (see ``at_eof``).

        Reading frees buffer space. A pure window update goes out when the right
        edge can move by at least min(buffer/2, MSS) (RFC 9293 3.8.6.2.2) and the
        new window is at least twice what the peer was last offered, as Linux's
        tcp_cleanup_rbuf does; otherwise the next ACK carries the larger window,
        which keeps a reader that drains the buffer promptly from doubling the
        number of ACKs.
        """
        buf = self._rcvbuf
        if not buf:
            self._readable_signalled = False
            return b""
        if max_bytes < 0 or max_bytes >= len(buf):
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:max_bytes])
            del buf[:max_bytes]
        if not buf:
            self._readable_signalled = False
        if self.state in _RECEIVE_STATES:
            size = self._cfg.receive_buffer
            offered = self.rcv_adv - self.rcv_nxt
            new = self._rcv_space()
            if new - offered >= min(size >> 1, self.rmss) and new >= 2 * offered:
                self._ack_soon()
        return data

    def shutdown(self) -> None:
        """Half close: send FIN after the queued data; receiving goes on (RFC 9293 3.10.4)."""
        state = self.state
        if self._fin_queued or state in (_CLOSED, _TIME_WAIT):
            return
        if state is _SYN_SENT:
            # Nothing was exchanged yet: just delete the TCB (RFC 9293 3.10.4).
            self._terminate(None)
            return
        self._fin_queued = True
        if state is _ESTABLISHED:
            self.state = _FIN_WAIT_1
        elif state is _CLOSE_WAIT:
            self.state = _LAST_ACK
        # In SYN-RECEIVED the FIN waits until the handshake completes.
        self._stack._want_output(self)

    def close(self) -> None:
        """Full close: FIN after queued data, and the application reads no more.

        RFC 1122 4.2.2.13: if received data is still unread, or new data arrives
        later, the connection is reset so the peer learns that data was lost.
        """
        if self.state is _CLOSED:
            return
        self._app_closed = True
        if self._rcvbuf:
            self.abort()
            return
        self.shutdown()
        if self.state is _FIN_WAIT_2:
            self._close_at = self._stack._now + self._cfg.fin_wait_2_timeout
            self._stack._reschedule(self)

    def abort(self) -> None:
        """Reset the connection now (RFC 9293 3.10.5): RST, buffers dropped."""
        if self.state is _CLOSED:
            return
        if self.state not in (_SYN_SENT, _TIME_WAIT):
            self._emit(self.snd_max, RST | ACK)
        self._app_closed = True
        self._terminate(None)

    # ------------------------------------------------------------- opening

    def _syn_options(self, include_ws: bool, include_sack: bool) -> bytes:
        opts = b"\x02\x04" + self.rmss.to_bytes(2, "big")
        if include_ws:
            opts += b"\x01\x03\x03" + bytes((self._offer_wscale,))
        if include_sack:
            opts += b"\x01\x01\x04\x02"  # NOP, NOP, SACK-permitted (RFC 2018 2)
        return opts

    def _active_open(self, now: float) -> None:
        # RFC 9293 3.10.1: send SYN, enter SYN-SENT.
        self.state = _SYN_SENT
        self.snd_nxt = self.snd_max = self.iss + 1
        self._send_syn(now, ack=False)
        self._rtt_seq = self.iss
        self._rtt_time = now

    def _passive_open(self, seg: TcpSegment, now: float) -> None:
        # RFC 9293 3.10.7.2: LISTEN receives SYN.
        self.irs = seg.seq
        self.rcv_nxt = self.rcv_adv = seg.seq + 1
        self._take_syn_options(seg)
        self.snd_wnd = self.max_snd_wnd = seg.wnd  # never scaled in a SYN (RFC 7323 2.2)
        self.snd_wl1 = seg.seq
        self.state = _SYN_RECEIVED
        self._stack._tcp_register(self)
        self.snd_nxt = self.snd_max = self.iss + 1
        self._send_syn(now, ack=True)
        self._rtt_seq = self.iss
        self._rtt_time = now

    def _cookie_open(self, irs: int, iss: int, mss: int, wnd: int) -> None:
        """SYN-RECEIVED from a returned SYN cookie: the SYN-ACK was *iss* with
        window *wnd* (unscaled), answering the client's ISN *irs*; the cookie
        kept only the MSS (no window scaling, no SACK)."""
        self._set_iss(iss)
        self.snd_nxt = self.snd_max = iss + 1
        self.irs = irs
        self.rcv_nxt = irs + 1
        self.rcv_adv = irs + 1 + wnd
        self.snd_wl1 = irs
        self.smss = min(mss, self.rmss)
        self.state = _SYN_RECEIVED
        self._stack._tcp_register(self)

    def _take_syn_options(self, seg: TcpSegment) -> None:
        if seg.mss is not None and seg.mss > 0:
            self.smss = min(seg.mss, self.rmss)
        if seg.wscale is not None and self._cfg.window_scaling:
            # RFC 7323 2.2: scaling is on only if both sides sent the option.
            self.snd_wscale = min(seg.wscale, _MAX_WSCALE)
            self.rcv_wscale = self._offer_wscale
        else:
            self.snd_wscale = self.rcv_wscale = 0
        self._ws_in_syn = seg.wscale is not None
        # RFC 2018 2: SACK only if both SYNs carried SACK-permitted.
        self._sack_in_syn = seg.sack_ok
        self._sack = seg.sack_ok and self._cfg.sack

    def _send_syn(self, now: float, *, ack: bool) -> None:
        cfg = self._cfg
        if ack:
            include_ws = self._ws_in_syn and cfg.window_scaling
            include_sack = self._sack_in_syn and cfg.sack
            self._emit(self.iss, SYN | ACK, b"", self._syn_options(include_ws, include_sack))
        else:
            self._emit(self.iss, SYN, b"", self._syn_options(cfg.window_scaling, cfg.sack))
        self._rto_at = now + self.rto

    def _initial_cwnd(self) -> int:
        # RFC 5681 3.1 (RFC 3390): IW = min(4*SMSS, max(2*SMSS, 4380 bytes)).
        smss = self.smss
        if self._cfg.initial_window is not None:
            return self._cfg.initial_window * smss
        return min(4 * smss, max(2 * smss, 4380))

    def _become_established(self, now: float) -> None:
        self.state = _ESTABLISHED
        self._ever_established = True
        self.cwnd = self._initial_cwnd()
        self._retries = 0
        if self._syn_retransmitted and self.srtt is None:
            self.rto = max(self._cfg.initial_rto, _SYN_RETRANSMITTED_RTO)
        self._rto_at = None
        if self._fin_queued:
            self.state = _FIN_WAIT_1
        if self._sndbuf or self._fin_queued:
            self._stack._want_output(self)
        if self._listener is not None:
            self._listener._established(self)
        else:
            self._stack._event(TcpEstablished(self))

    # ------------------------------------------------------------ segment arrival

    def _segment_arrives(self, seg: TcpSegment, now: float) -> None:
        """RFC 9293 3.10.7.3 and 3.10.7.4, in the order the RFC gives."""
        self.segments_received += 1
        state = self.state
        if state is _SYN_SENT:
            self._syn_sent_arrives(seg, now)
            return
        flags = seg.flags
        rcv_nxt = self.rcv_nxt
        seq = _unwrap(seg.seq, rcv_nxt)
        payload = seg.payload
        plen = len(payload)

        if flags & SYN and state is _SYN_RECEIVED and seq == self.irs and not flags & RST:
            if not flags & ACK:
                # Our SYN-ACK was lost and the peer retransmitted its SYN: answer again.
                self._send_syn(now, ack=True)
                return
            # Simultaneous open (RFC 9293 figure 7): the peer's SYN-ACK repeats a SYN
            # we already have; only its ACK is new. Strip the old SYN and go on.
            flags &= ~SYN
            seq += 1
        if state is _TIME_WAIT and flags & FIN and not flags & RST and seq + plen + 1 == rcv_nxt:
            # RFC 9293 3.10.7.4 eighth: a retransmitted FIN in TIME-WAIT is
            # acknowledged and restarts the 2 MSL timeout.
            self._emit(self.snd_max, ACK)
            self._close_at = now + 2 * self._cfg.msl
            return

        # First: sequence number check (RFC 9293 3.10.7.4, the four-case table).
        # RCV.WND is the free buffer space: it is never less than what we advertised.
        wnd = self._cfg.receive_buffer - len(self._rcvbuf)
        if wnd < 0:
            wnd = 0
        fin = flags & FIN
        if seq == rcv_nxt and (plen == 0 or wnd >= plen):
            pass  # the common case: in order and fits
        else:
            seg_len = plen + (1 if flags & SYN else 0) + (1 if fin else 0)
            if seg_len == 0:
                acceptable = seq == rcv_nxt if wnd == 0 else rcv_nxt <= seq < rcv_nxt + wnd
            elif wnd == 0:
                # "special allowance should be made to accept valid ACKs, URGs and RSTs":
                # process the control part of an in-sequence segment, drop its data.
                acceptable = seq == rcv_nxt
                if acceptable and plen:
                    payload = b""
                    plen = 0
                    fin = 0
                    self._ack_soon()
            else:
                acceptable = (rcv_nxt <= seq < rcv_nxt + wnd) or (
                    rcv_nxt <= seq + seg_len - 1 < rcv_nxt + wnd
                )
            if not acceptable:
                if not flags & RST:
                    if plen and seq + plen <= rcv_nxt:
                        self._dsack = (seq, seq + plen)  # all of it came before
                    self._emit(self.snd_max, ACK)
                return
            # Trim to the window: drop what was already received and what lies
            # beyond the right edge (RFC 9293 3.10.7.4, "trimmed to the window").
            start = seq + (1 if flags & SYN else 0)
            if start < rcv_nxt:
                cut = rcv_nxt - start
                if plen:
                    self._dsack = (start, start + min(cut, plen))  # the part that came before
                payload = payload[cut:]
                if cut > plen:
                    fin = 0  # the FIN was already received
                plen = len(payload)
                seq = rcv_nxt
                if not flags & SYN:
                    self._ack_soon()  # a retransmission: tell the peer where we are
            if seq + plen > rcv_nxt + wnd:
                payload = payload[: max(0, rcv_nxt + wnd - seq)]
                plen = len(payload)
                fin = 0

        # Second: RST (RFC 9293 3.10.7.4 second, RFC 5961 3.2).
        if flags & RST:
            if _unwrap(seg.seq, rcv_nxt) != rcv_nxt:
                self._emit(self.snd_max, ACK)  # challenge ACK
                return
            self._rst_arrives()
            return
        # Fourth: SYN in a synchronized state -> challenge ACK (RFC 5961 4.2).
        if flags & SYN:
            self._emit(self.snd_max, ACK)
            return
        # Fifth: ACK.
        if not flags & ACK:
            return
        ack = _unwrap(seg.ack, self.snd_una)
        if state is _SYN_RECEIVED:
            if not self.snd_una < ack <= self.snd_max:
                self._emit(ack, RST)
                return
            if self._listener is not None and self._listener._accept_queue_full():
                # Linux (tcp_abort_on_overflow=0): drop the ACK, stay half-open;
                # the client's next segment tries again.
                self._stack.stats.listen_overflows += 1
                return
            self.snd_wnd = seg.wnd << self.snd_wscale
            self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
            self.snd_wl1 = seq
            self.snd_wl2 = ack
            self._become_established(now)
            state = self.state
        if ack > self.snd_max and ack > self._probe_end:
            self._emit(self.snd_max, ACK)  # acks something not yet sent
            return
        if ack < self.snd_una - max(self.max_snd_wnd, 1):
            self._emit(self.snd_max, ACK)  # RFC 5961 5.2: far too old
            return
        if not self._ack_arrives(seg, seq, ack, plen, now):
            return
        state = self.state

        # Seventh: segment text.
        if plen and state in _RECEIVE_STATES:
            if self._app_closed:
                # RFC 1122 4.2.2.13: data after close() is lost; say so with a RST.
                self._emit(self.snd_max, RST | ACK)
                self._terminate(None)
                return
            if seq == self.rcv_nxt:
                self._data_in_order(payload)
            else:
                if self._data_out_of_order(seq, payload) and fin:
                    self._ooo_fin = seq + plen
                return
        # Eighth: FIN.
        if fin and state is not _TIME_WAIT:
            fin_seq = seq + plen
            if fin_seq == self.rcv_nxt:
                self._fin_arrives(now)
            elif fin_seq > self.rcv_nxt:
                self._ooo_fin = fin_seq
                self._emit(self.snd_max, ACK)

    def _syn_sent_arrives(self, seg: TcpSegment, now: float) -> None:
        # RFC 9293 3.10.7.3.
        flags = seg.flags
        ack = 0
        if flags & ACK:
            ack = _unwrap(seg.ack, self.snd_una)
            if ack <= self.iss or ack > self.snd_max:
                if not flags & RST:
                    self._emit(ack, RST)
                return
        if flags & RST:
            if flags & ACK:  # acceptable ACK checked above
                self._terminate(ConnectionRefused("connection refused"))
            return
        if not flags & SYN:
            return
        self.irs = seg.seq
        self.rcv_nxt = self.rcv_adv = seg.seq + 1
        self._take_syn_options(seg)
        self.snd_wnd = self.max_snd_wnd = seg.wnd  # a SYN's window is not scaled
        self.snd_wl1 = seg.seq
        if flags & ACK:
            self.snd_wl2 = ack
            self.snd_una = ack
            if self._rtt_seq is not None and ack > self._rtt_seq:
                self._rtt_sample(now - self._rtt_time)
            self._rtt_seq = None
            self._become_established(now)
            self._ack_now = True
            self._stack._want_output(self)
        else:
            # Simultaneous open (RFC 9293 3.5, figure 7).
            self.state = _SYN_RECEIVED
            self._rtt_seq = None
            self._send_syn(now, ack=True)

    def _rst_arrives(self) -> None:
        # RFC 9293 3.10.7.4 second check, per state.
        state = self.state
        if state is _SYN_RECEIVED:
            if self._listener is not None:
                # From a passive open: the embryo silently goes away ("return to LISTEN").
                self._terminate(None)
            else:
                self._terminate(ConnectionRefused("connection refused"))
        elif state in (_CLOSING, _LAST_ACK, _TIME_WAIT):
            self._terminate(None)
        else:
            self._terminate(ConnectionReset("connection reset by peer"))

    def _ack_arrives(self, seg: TcpSegment, seq: int, ack: int, plen: int, now: float) -> bool:
        """RFC 9293 3.10.7.4 fifth check for synchronized states; False to stop."""
        snd_una = self.snd_una
        wnd = seg.wnd << self.snd_wscale
        newly_sacked = 0
        if seg.sack is not None and self._sack:
            newly_sacked = self._take_sack(seg.sack, _unwrap(seg.ack, snd_una))
        if ack > snd_una:
            acked = ack - snd_una
            # RTT sample (RFC 6298 3 and Karn: _rtt_seq is cleared on retransmit).
            if self._rtt_seq is not None and ack > self._rtt_seq:
                self._rtt_sample(now - self._rtt_time)
                self._rtt_seq = None
            buf_end = self._sndbuf_seq + len(self._sndbuf)
            n = (ack if ack < buf_end else buf_end) - self._sndbuf_seq
            if n > 0:
                del self._sndbuf[:n]
                self._sndbuf_seq += n
            self.snd_una = ack
            sacked = self._sacked
            while sacked and sacked[0][1] <= ack:
                del sacked[0]
            if sacked and sacked[0][0] < ack:
                sacked[0][0] = ack
            if self.snd_nxt < ack:
                self.snd_nxt = ack
                if self.snd_max < ack:
                    self.snd_max = ack  # the peer took a zero-window probe octet
            self._retries = 0
            self._persist_backoff = 0
            self._on_new_ack(acked, ack, now)
            # RFC 6298 5.2/5.3: stop the timer when all is acknowledged, else restart.
            self._rto_at = None if ack == self.snd_max else now + self.rto
            self._tlp_sent = False
            self._arm_tlp(now)
            if self._want_writable and len(self._sndbuf) < self._cfg.send_buffer:
                self._want_writable = False
                self._stack._event(TcpWritable(self))
            if self._sndbuf or self._fin_queued:
                self._stack._want_output(self)
        elif (
            ack == snd_una
            and plen == 0
            and not seg.flags & (SYN | FIN)
            and self.snd_max > snd_una
            and (
                # RFC 6675 section 2: with SACK, an ACK that newly SACKs data
                # (whatever its window: a receiver's window moves as it
                # queues out-of-order data, Linux's does)...
                newly_sacked
                # ... else RFC 5681 section 2, "DUPLICATE ACKNOWLEDGMENT"
                or (wnd == self.snd_wnd and wnd != 0)  # zero-window probe ACKs are not
            )
        ):
            self._on_dupack(now)

        # Window update (RFC 9293 3.10.7.4: only from a segment not older than the last).
        if self.snd_wl1 < seq or (self.snd_wl1 == seq and self.snd_wl2 <= ack):
            old = self.snd_wnd
            self.snd_wnd = wnd
            self.snd_wl1 = seq
            self.snd_wl2 = ack
            if wnd > self.max_snd_wnd:
                self.max_snd_wnd = wnd
            if wnd > old:
                self._persist_at = None
                self._persist_backoff = 0
                if len(self._sndbuf) > self.snd_nxt - self._sndbuf_seq or self._fin_queued:
                    self._stack._want_output(self)

        # State changes when our FIN is acknowledged.
        if self._fin_queued and self.snd_una == self._sndbuf_seq + len(self._sndbuf) + 1:
            state = self.state
            if state is _FIN_WAIT_1:
                self.state = _FIN_WAIT_2
                if self._app_closed:
                    self._close_at = now + self._cfg.fin_wait_2_timeout
            elif state is _CLOSING:
                self._enter_time_wait(now)
                return False
            elif state is _LAST_ACK:
                self._terminate(None)
                return False
        return True

    def _on_new_ack(self, acked: int, ack: int, now: float) -> None:
        smss = self.smss
        if self._in_recovery:
            if ack >= self._recover:
                # Full acknowledgment (RFC 6582 3.2 step 3): deflate the window.
                self._in_recovery = False
                flight = self.snd_max - ack
                self.cwnd = min(self.ssthresh, max(flight, smss) + smss)
                self._dupacks = 0
                if self._undo_ok:
                    self._undo_recovery()
            else:
                if self._sack:
                    # RFC 6675: no window arithmetic; _output sends what the
                    # pipe estimate allows, holes first.
                    self._stack._want_output(self)
                    return
                # Partial acknowledgment (step 3, partial): retransmit the next hole.
                self._retransmit_first()
                self.cwnd = max(self.cwnd - acked, 0) + (smss if acked >= smss else 0)
                if self.cwnd < smss:
                    self.cwnd = smss
            return
        self._dupacks = 0
        if self.cwnd < self.ssthresh:
            self.cwnd += acked if acked < smss else smss  # slow start, RFC 5681 eq. (2)
        else:
            self.cwnd += max(1, smss * smss // self.cwnd)  # congestion avoidance, eq. (3)

    def _on_dupack(self, now: float) -> None:
        if self._in_recovery:
            # Without SACK, NewReno inflates the window per duplicate (RFC 6582
            # 3.2 step 4, RFC 5681 3.2 step 4); with SACK the scoreboard the
            # ACK updated lowers the pipe estimate instead (RFC 6675 5 step 3).
            if not self._sack:
                self.cwnd += self.smss
            self._stack._want_output(self)
            return
        self._dupacks += 1
        threshold = _DUPTHRESH
        if self._sack and self._sndbuf_seq + len(self._sndbuf) <= self.snd_nxt:
            # Early Retransmit (RFC 5827 3.2, SACK variant): with nothing new to
            # send and fewer than four segments outstanding, three duplicates
            # can never come; the threshold is one less than outstanding.
            outstanding = -(-(self.snd_max - self.snd_una) // self.smss)
            if outstanding < 4:
                threshold = max(outstanding - 1, 1)
        if self._dupacks < threshold and not (
            # RFC 6675 5: or IsLost(HighACK + 1), by the SACKed octets above it.
            self._sack and self._sacked_above(self.snd_una) > self._lost_octets
        ):
            # Limited Transmit (RFC 3042): each of the first two duplicate ACKs
            # lets one new segment out beyond cwnd (see _output), so a small
            # window still yields the three duplicates fast retransmit needs
            # instead of waiting for the retransmission timer.
            self._stack._want_output(self)
            return
        if self.snd_una > self._recover - 1:
            # Fast retransmit (RFC 5681 3.2 steps 2-3) and NewReno recovery entry
            # (RFC 6582 3.2 step 2), unless this loss was already handled.
            flight = self.snd_max - self.snd_una
            if self._sack:
                self._undo = (self.cwnd, self.ssthresh)
                self._undo_pending = set()
                self._undo_ok = False
            self.ssthresh = max(flight // 2, 2 * self.smss)
            self._recover = self.snd_max
            self._in_recovery = True
            self._tlp_at = None
            self._stack.stats.tcp_fast_recoveries += 1
            self._retransmit_first()
            # NewReno counts the three duplicates' segments as gone; RFC 6675
            # (with SACK) counts what the scoreboard says is gone, in _pipe().
            self.cwnd = self.ssthresh + (0 if self._sack else 3 * self.smss)
            self._rto_at = now + self.rto
            self._stack._want_output(self)

    def _take_sack(self, blocks: list[tuple[int, int]], ack: int) -> int:
        """Merge the peer's SACK blocks into the scoreboard (RFC 6675 Update())
        and return how many octets they newly SACKed. A first block below the
        cumulative *ack* is a D-SACK (RFC 2883 4): a segment that arrived
        twice, which can show a recovery to have been spurious. Other blocks
        not within SND.UNA..SND.MAX are ignored (RFC 2018 allows none)."""
        una, top = self.snd_una, self.snd_max
        sacked = self._sacked
        before = sum(right - left for left, right in sacked)
        first = blocks[0]
        if self._undo_pending and _unwrap(first[1], ack) <= ack:
            self._undo_pending.discard(_unwrap(first[0], ack))
            if not self._undo_pending:
                self._undo_ok = True
                if not self._in_recovery:
                    self._undo_recovery()
        for left32, right32 in blocks:
            left = _unwrap(left32, una)
            right = _unwrap(right32, una)
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
        limit = self._cfg.send_buffer // self.smss + _SACKED_SLACK
        if len(sacked) > limit:
            # Forget the highest ranges: SACK is advisory (RFC 2018 8), at worst
            # they are retransmitted needlessly. Counted.
            self._stack.stats.tcp_sack_ranges_dropped += len(sacked) - limit
            del sacked[limit:]
        return sum(right - left for left, right in sacked) - before

    def _undo_recovery(self) -> None:
        """Every retransmission of the last fast recovery arrived twice: the
        reduction was for nothing, take it back (RFC 3708 3, as Linux's
        tcp_try_undo_dsack)."""
        if self._undo is not None:
            cwnd, ssthresh = self._undo
            self.cwnd = max(self.cwnd, cwnd)
            self.ssthresh = max(self.ssthresh, ssthresh)
            self._stack.stats.tcp_recoveries_undone += 1
            self._stack._want_output(self)
        self._undo = None
        self._undo_ok = False

    @property
    def _lost_octets(self) -> int:
        """RFC 6675 IsLost(): more than (DupThresh - 1) * SMSS octets SACKed
        above a hole make it lost."""
        return (_DUPTHRESH - 1) * self.smss

    def _lost_edge(self) -> int:
        """RFC 6675 IsLost(), by octets: every hole below the returned
        sequence number has more than (DupThresh - 1) * SMSS octets SACKed
        above it and counts as lost; holes above it may just be reordered."""
        above = 0
        threshold = self._lost_octets
        for left, right in reversed(self._sacked):
            above += right - left
            if above > threshold:
                return left
        return self.snd_una

    def _unsacked(self, start: int, end: int) -> int:
        """Octets in [start, end) that the scoreboard does not hold."""
        n = end - start
        for left, right in self._sacked:
            if left >= end:
                break
            if right > start:
                n -= (right if right < end else end) - (left if left > start else start)
        return n

    def _sacked_above(self, seq: int) -> int:
        """Octets at or above *seq* that the scoreboard holds."""
        above = 0
        for left, right in self._sacked:
            if right > seq:
                above += right - (left if left > seq else seq)
        return above

    def _una_rxt_lost(self) -> bool:
        """Was the last retransmission of the segment at SND.UNA lost? Yes if
        more than (DupThresh - 1) * SMSS octets sent after it were SACKed (the
        idea of RACK, RFC 8985, by sequence instead of time)."""
        mark = self._una_rxt
        if mark is None or mark[0] != self.snd_una:
            return False
        return self._sacked_above(mark[1]) > self._lost_octets

    def _pipe(self, lost_edge: int) -> int:
        """RFC 6675 SetPipe(): the octets not SACKed that are either not lost
        (at or above *lost_edge*, see _lost_edge) or were retransmitted in
        this recovery (each counted once)."""
        una = self.snd_una
        pipe = self._unsacked(lost_edge, self.snd_max)
        rxt_end = self._high_rxt if self._high_rxt < lost_edge else lost_edge
        if rxt_end > una:
            pipe += self._unsacked(una, rxt_end)
        return pipe

    def _retransmit_hole(self, room: int, lost_edge: int) -> int:
        """Retransmit up to *room* octets (at most a segment) of the first lost
        hole (below *lost_edge*) at or above HighRxt (RFC 6675 NextSeg rule 1:
        not acknowledged, not SACKed, IsLost). Returns the octets sent, 0 if
        there was none."""
        start = self._high_rxt if self._high_rxt > self.snd_una else self.snd_una
        for left, right in self._sacked:
            if start >= lost_edge:
                break
            if start < left:
                end = min(start + self.smss, start + room, left)
                self._resend(start, end)
                self._note_repair(start, end)
                return end - start
            if start < right:
                start = right
        return 0

    def _count_retransmission(self) -> None:
        self._rtt_seq = None  # Karn: never time a retransmitted segment
        self.retransmits += 1
        self._stack.stats.tcp_retransmits += 1

    def _resend(self, start: int, end: int) -> None:
        """Send octets [start, end) of the send buffer again."""
        self._count_retransmission()
        off = start - self._sndbuf_seq
        self._emit(start, ACK, bytes(self._sndbuf[off : off + end - start]))

    def _note_repair(self, start: int, end: int) -> None:
        """What a recovery keeps of a retransmission of [start, end): HighRxt,
        the mark a lost retransmission at SND.UNA is found by, and the
        segments an undo waits to see reported twice."""
        if end > self._high_rxt:
            self._high_rxt = end
        if start == self.snd_una:
            self._una_rxt = (start, self.snd_max)
        if self._undo is not None:
            self._undo_pending.add(start)

    def _retransmit_first(self) -> None:
        """Send again the segment at SND.UNA (fast retransmit and partial ACKs)."""
        self._count_retransmission()
        off = self.snd_una - self._sndbuf_seq
        if off < 0:  # SYN not acknowledged: nothing of ours to retransmit here
            return
        # Only what was sent before: octets past SND.MAX in a retransmission
        # would be acknowledged beyond what we think we sent, and such an ACK
        # is unacceptable (RFC 9293 3.10.7.4), which would wedge the connection.
        sent = self.snd_max - self.snd_una
        data = self._sndbuf[off : off + (self.smss if self.smss < sent else sent)]
        self._note_repair(self.snd_una, self.snd_una + len(data))
        flags = ACK
        data_end = self._sndbuf_seq + len(self._sndbuf)
        if self._fin_queued and off + len(data) == len(self._sndbuf) and self.snd_max > data_end:
            flags |= FIN  # only a FIN that was sent before: it is inside SND.MAX
        if data or flags & FIN:
            self._emit(self.snd_una, flags, bytes(data))

    def _ack_soon(self) -> None:
        """An ACK is due at the next flush (coalesced with any data going out)."""
        self._ack_now = True
        self._stack._want_output(self)

    def _data_in_order(self, payload: bytes) -> None:
        buf = self._rcvbuf
        buf += payload
        self.rcv_nxt += len(payload)
        if self._ooo:
            self._pull_ooo()
            self._ack_now = True  # RFC 5681 4.2: ACK at once when a gap is filled
            if len(buf) + self._ooo.memory > 2 * self._cfg.receive_buffer:
                self._prune_ooo(0)  # in-order data goes first (Linux's tcp_prune_queue)
        if not self._readable_signalled:
            self._readable_signalled = True
            self._stack._event(TcpReadable(self))
        # RFC 9293 3.8.6.3: ACK at least every second full segment, else within the delay.
        self._ack_pending += 1
        if self._ack_pending >= 2 or self._cfg.delayed_ack <= 0:
            self._ack_now = True
        if self._ack_now:
            self._stack._want_output(self)
        elif self._delack_at is None:
            self._delack_at = self._stack._now + self._cfg.delayed_ack

    def _data_out_of_order(self, seq: int, payload: bytes) -> bool:
        """Keep a segment beyond RCV.NXT and send an immediate duplicate ACK.

        What is held is charged (payload plus _OOO_OVERHEAD per chunk) against
        twice the receive buffer, with what waits to be read. Over it, held
        chunks above this segment are pruned, from the highest down, by an
        eighth of the budget at a time; if that is not enough (this segment
        would be the highest), the segment is dropped. Both are counted.
        False if the segment was dropped.
        """
        ooo = self._ooo
        budget = 2 * self._cfg.receive_buffer
        cost = len(payload) + _OOO_OVERHEAD
        kept = True
        if len(self._rcvbuf) + ooo.memory + cost > budget:
            self._prune_ooo(seq, budget >> 3)
            if len(self._rcvbuf) + ooo.memory + cost > budget:
                self._stack.stats.tcp_ofo_dropped += 1
                kept = False
        if kept:
            ooo.add(seq, payload)
            if len(self._rcvbuf) + ooo.memory > budget:  # joined pieces cost more
                self._prune_ooo(0)
        # RFC 5681 4.2: an immediate duplicate ACK, emitted now rather than at the
        # flush so that a burst of out-of-order segments yields as many dup ACKs.
        self._emit(self.snd_max, ACK)
        return kept

    def _prune_ooo(self, floor: int, slack: int = 0) -> None:
        """Prune held data (none starting below *floor*) until what is held and
        what waits to be read fit the budget less *slack*; the FIN, above all
        data, goes with anything pruned."""
        target = 2 * self._cfg.receive_buffer - len(self._rcvbuf) - slack
        n, _ = self._ooo.prune(target, floor)
        if n:
            self._stack.stats.tcp_ofo_pruned += n
            self._ooo_fin = None

    def _pull_ooo(self) -> None:
        pieces, self.rcv_nxt = self._ooo.pull(self.rcv_nxt)
        buf = self._rcvbuf
        for piece in pieces:
            buf += piece
        if self._ooo_fin is not None and self._ooo_fin == self.rcv_nxt:
            self._ooo_fin = None
            self._fin_arrives(self._stack._now)

    def _fin_arrives(self, now: float) -> None:
        # RFC 9293 3.10.7.4 eighth check.
        self.rcv_nxt += 1
        self._peer_fin = True
        self._ooo.clear()
        self._ack_now = True
        self._stack._want_output(self)
        if not self._readable_signalled:
            self._readable_signalled = True
            self._stack._event(TcpReadable(self))
        state = self.state
        if state is _ESTABLISHED or state is _SYN_RECEIVED:
            self.state = _CLOSE_WAIT
        elif state is _FIN_WAIT_1:
            self.state = _CLOSING  # our FIN is not acknowledged yet (else FIN-WAIT-2)
        elif state is _FIN_WAIT_2:
            self._enter_time_wait(now)

    def _enter_time_wait(self, now: float) -> None:
        stack = self._stack
        if stack._time_wait >= self._cfg.max_time_wait:
            # Linux (tcp_max_tw_buckets): past the limit the connection just closes.
            stack.stats.tcp_time_wait_overflows += 1
            if self._ack_now:
                self._emit(self.snd_max, ACK)  # the peer's FIN is acknowledged first
            self._terminate(None)
            return
        stack._time_wait += 1
        self.state = _TIME_WAIT
        self._rto_at = self._persist_at = self._delack_at = self._tlp_at = None
        self._close_at = now + 2 * self._cfg.msl
        self._sndbuf.clear()
        self._signal_closed(None)

    # ------------------------------------------------------------------- timers

    def _deadline(self) -> float | None:
        d = self._rto_at
        for t in (self._persist_at, self._delack_at, self._close_at, self._tlp_at):
            if t is not None and (d is None or t < d):
                d = t
        return d

    def _on_timer(self, now: float) -> None:
        if self._close_at is not None and now >= self._close_at:
            # TIME-WAIT expiry (RFC 9293 3.10.8) or FIN-WAIT-2 timeout.
            self._terminate(None)
            return
        if self._rto_at is not None and now >= self._rto_at:
            self._rto_expired(now)
            if self.state is _CLOSED:
                return
        if self._tlp_at is not None and now >= self._tlp_at:
            self._tlp_at = None
            self._send_loss_probe(now)
        if self._persist_at is not None and now >= self._persist_at:
            self._persist_expired(now)
        if self._delack_at is not None and now >= self._delack_at:
            self._delack_at = None
            self._ack_now = True
            self._stack._want_output(self)

    def _arm_tlp(self, now: float) -> None:
        """(Re)arm the probe timeout (RFC 8985 7.2): two smoothed round trips
        (at least 10 ms, as Linux), plus the peer's delayed-ACK allowance when
        only one segment is out, and never later than the RTO."""
        self._tlp_at = None
        if (
            not self._sack
            or self._tlp_sent
            or self._in_recovery
            or self.srtt is None
            or self._rto_at is None
            or self.snd_max <= self.snd_una
            or self.state not in _SEND_STATES
        ):
            return
        pto = 2 * self.srtt
        if self.snd_max - self.snd_una <= self.smss:
            pto += _DELAYED_ACK_ALLOWANCE
        at = now + (pto if pto > _MIN_PTO else _MIN_PTO)
        if at < self._rto_at:
            self._tlp_at = at

    def _send_loss_probe(self, now: float) -> None:
        """RFC 8985 7.3: one new segment if the peer's window takes it, else
        the last segment sent again. Its ACK either acknowledges the flight
        (only the ACKs were lost) or SACKs the probe and starts recovery."""
        if self.snd_max <= self.snd_una or self._in_recovery:
            return
        self._tlp_sent = True
        self._stack.stats.tcp_loss_probes += 1
        data_end = self._sndbuf_seq + len(self._sndbuf)
        nxt = self.snd_nxt
        room = self.snd_una + self.snd_wnd - nxt
        if nxt == self.snd_max and data_end > nxt and room > 0:
            n = min(self.smss, data_end - nxt, room)
            off = nxt - self._sndbuf_seq
            self._emit(nxt, ACK | PSH, bytes(self._sndbuf[off : off + n]))
            self.snd_nxt = self.snd_max = nxt + n
        else:
            end = self.snd_max if self.snd_max < data_end else data_end
            start = max(self.snd_una, end - self.smss)
            if end <= start:
                return  # only a FIN is out: the RTO takes care of it
            self._resend(start, end)
        self._rto_at = now + self.rto  # RFC 8985 7.3: the RTO after the probe

    def _rto_expired(self, now: float) -> None:
        """RFC 6298 5.4-5.7 and RFC 5681 3.1 (loss window)."""
        self._tlp_at = None
        self._retries += 1
        embryo = self.state is _SYN_RECEIVED and self._listener is not None
        if embryo:
            limit = self._cfg.max_synack_retransmits
        elif self.state in (_SYN_SENT, _SYN_RECEIVED):
            limit = self._cfg.max_syn_retransmits
        else:
            limit = self._cfg.max_retransmits
        if self._retries > limit:
            if embryo:
                # The half-open connection goes, without a RST (as Linux's request socks).
                self._stack.stats.synack_timeouts += 1
                self._terminate(None)
                return
            if self.state is not _SYN_SENT:
                self._emit(self.snd_max, RST | ACK)
            self._terminate(ConnectionTimedOut("connection timed out"))
            return
        self.rto = min(self.rto * 2, self._cfg.max_rto)  # 5.5: back off
        self._rtt_seq = None  # Karn
        self.retransmits += 1
        self._stack.stats.tcp_retransmits += 1
        if self.state is _SYN_SENT or self.state is _SYN_RECEIVED:
            self._syn_retransmitted = True
            self._send_syn(now, ack=self.state is _SYN_RECEIVED)
            return
        self._stack.stats.tcp_timeouts += 1
        if self._retries == 1:
            flight = self.snd_max - self.snd_una
            self.ssthresh = max(flight // 2, 2 * self.smss)  # RFC 5681 eq. (4)
        self.cwnd = self.smss  # loss window
        self._in_recovery = False
        self._sacked.clear()  # the peer may renege on what it SACKed (RFC 2018 8)
        self._high_rxt = 0
        self._una_rxt = None
        self._undo = None  # a timeout is not undone here (no F-RTO)
        self._undo_pending.clear()
        self._undo_ok = False
        self._dupacks = 0
        self._recover = self.snd_max  # RFC 6582 3.2 step 4 ... avoid false fast retransmit
        self.snd_nxt = self.snd_una  # go back: resend from the first unacknowledged byte
        self._rto_at = now + self.rto
        before = self.segments_sent
        self._output(now)
        if self.segments_sent == before and self.snd_max > self.snd_una:
            # The window is shut: retransmit anyway, the segment doubles as a window
            # probe (RFC 9293 3.8.6.1: probe even if the send window is zero).
            self._retransmit_first()

    def _persist_expired(self, now: float) -> None:
        """Zero-window probe with one octet of new data (RFC 9293 3.8.6.1)."""
        self._persist_at = None
        if self.state not in _SEND_STATES or self.snd_wnd > 0:
            self._stack._want_output(self)
            return
        off = self.snd_nxt - self._sndbuf_seq
        if 0 <= off < len(self._sndbuf):
            self._emit(self.snd_nxt, ACK, bytes(self._sndbuf[off : off + 1]))
            # SND.NXT and SND.MAX stay (pure ACKs carry SND.MAX, which must stay
            # acceptable to a peer whose window is shut); if the peer takes the
            # octet, an ACK up to _probe_end is still valid and moves them on.
            self._probe_end = self.snd_nxt + 1
        self._persist_backoff += 1
        self._persist_at = now + min(self.rto * (1 << self._persist_backoff), self._cfg.max_rto)

    def _rtt_sample(self, r: float) -> None:
        """RFC 6298 2.2 and 2.3."""
        if r < 0:
            r = 0.0
        if self.srtt is None:
            self.srtt = r
            self.rttvar = r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
            self.srtt = 0.875 * self.srtt + 0.125 * r
        rto = self.srtt + max(_CLOCK_GRANULARITY, 4 * self.rttvar)
        cfg = self._cfg
        self.rto = min(max(rto, cfg.min_rto), cfg.max_rto)

    # ------------------------------------------------------------------- output

    def _output(self, now: float) -> None:
        """Send what the windows allow, or a pure ACK if one is due (RFC 9293 3.10.2).

        Called by the stack when it flushes, so one call covers all the writes and
        ACK arrivals since the last flush.
        """
        state = self.state
        if state is _CLOSED:
            return
        sent = False
        if state in _SEND_STATES:
            smss = self.smss
            sndbuf = self._sndbuf
            buf_seq = self._sndbuf_seq
            data_end = buf_seq + len(sndbuf)
            cwnd = self.cwnd
            if 0 < self._dupacks < 3 and not self._in_recovery:
                cwnd += self._dupacks * smss  # Limited Transmit (RFC 3042 section 2)
            wnd = self.snd_wnd if self.snd_wnd < cwnd else cwnd
            right = self.snd_una + wnd
            if self._in_recovery and self._sack:
                # RFC 6675 5 step 4: while cwnd - pipe >= 1 SMSS, holes first
                # (NextSeg rule 1), then new data (rule 2) within the window.
                lost_edge = self._lost_edge()
                room = cwnd - self._pipe(lost_edge)
                if room >= smss and self._una_rxt_lost():
                    # The retransmission at SND.UNA was lost as well: again.
                    self._retransmit_first()
                    room -= smss
                    sent = True
                while room >= smss and (n := self._retransmit_hole(room, lost_edge)):
                    room -= n
                    sent = True
                if room < 0:
                    room = 0
                # New data: as far as the pipe allows, within the peer's window
                # (not SND.UNA + cwnd, which the holes would hold back).
                right = self.snd_una + self.snd_wnd
                if self.snd_nxt + room < right:
                    right = self.snd_nxt + room
            fin_queued = self._fin_queued
            while True:
                nxt = self.snd_nxt
                avail = data_end - nxt
                if avail > 0:
                    n = right - nxt
                    if n <= 0:
                        break
                    if n > smss:
                        n = smss
                    if n > avail:
                        n = avail
                    flight = self.snd_max > self.snd_una
                    if n < smss and n < avail and flight:
                        break  # sender SWS avoidance (RFC 9293 3.8.6.2.1): wait for ACKs
                    if n < smss and self._cfg.nagle and flight and nxt >= self.snd_max:
                        break  # Nagle (RFC 9293 3.7.4)
                    flags = ACK
                    if n == avail:
                        flags |= PSH
                        if fin_queued:
                            flags |= FIN
                    off = nxt - buf_seq
                    self._emit(nxt, flags, bytes(sndbuf[off : off + n]))
                    new = nxt + n + (1 if flags & FIN else 0)
                elif fin_queued and avail == 0:
                    # The FIN takes no buffer space, so it goes regardless of the window.
                    self._emit(nxt, FIN | ACK)
                    new = nxt + 1
                else:
                    break
                sent = True
                if nxt >= self.snd_max:
                    if self._rtt_seq is None:
                        self._rtt_seq = nxt  # time this segment (RFC 6298 3)
                        self._rtt_time = now
                    self.snd_max = new
                else:
                    self.retransmits += 1
                    if new > self.snd_max:
                        self.snd_max = new
                self.snd_nxt = new
                if self._rto_at is None:
                    self._rto_at = now + self.rto  # RFC 6298 5.1
            if sent:
                self._arm_tlp(now)  # RFC 8985 7.2: on sending new data
            # Persist timer: data waits, the window is shut and nothing is in flight
            # that would bring a window update with its ACK (RFC 9293 3.8.6.1).
            if (
                self.snd_wnd == 0
                and self.snd_nxt < data_end
                and self._rto_at is None
                and self._persist_at is None
            ):
                self._persist_at = now + min(
                    self.rto * (1 << self._persist_backoff), self._cfg.max_rto
                )
        if not sent and self._ack_now and state is not _SYN_SENT and state is not _SYN_RECEIVED:
            self._emit(self.snd_max, ACK)

    def _advertise(self) -> int:
        """The window field for a non-SYN segment, updating RCV.ADV (RFC 9293 3.8.6.2.2).

        The right edge moves only by at least min(buffer/2, MSS) (receiver SWS
        avoidance) and never moves left (no shrinking, RFC 9293 3.8.6).
        """
        rcv_nxt = self.rcv_nxt
        size = self._cfg.receive_buffer
        edge = rcv_nxt + self._rcv_space()
        adv = self.rcv_adv
        if edge - adv < min(size >> 1, self.rmss) and adv >= rcv_nxt:
            edge = adv
        field = (edge - rcv_nxt) >> self.rcv_wscale
        if field > 0xFFFF:
            field = 0xFFFF
        edge = rcv_nxt + (field << self.rcv_wscale)
        if edge > adv:
            self.rcv_adv = edge
        return field

    def _rcv_space(self) -> int:
        """The window the buffer can hold: its free space, and no more than the
        memory budget left would take if the unheld part of the window came
        (so tiny held segments that used the budget up keep the window shut)."""
        free = self._cfg.receive_buffer - len(self._rcvbuf)
        ooo = self._ooo
        if ooo:
            room = 2 * self._cfg.receive_buffer - len(self._rcvbuf) - ooo.memory + ooo.octets
            if room < free:
                free = room
        return free if free > 0 else 0

    def _emit(self, seq: int, flags: int, payload: bytes = b"", options: bytes = b"") -> None:
        """Build one segment and hand it to the stack. ACK carries RCV.NXT."""
        if flags & SYN:
            free = self._cfg.receive_buffer - len(self._rcvbuf)
            wnd = free if free < 0xFFFF else 0xFFFF  # never scaled in a SYN
            if flags & ACK:
                self.rcv_adv = self.rcv_nxt + wnd
        elif flags & RST and not flags & ACK:
            wnd = 0
        else:
            wnd = self._advertise()
            if (
                (self._ooo or self._dsack is not None)
                and self._sack
                and not payload
                and not options
                and flags & ACK
            ):
                options = self._sack_option()
        ack = self.rcv_nxt & _MASK if flags & ACK else 0
        hlen = 20 + len(options)
        head = _HDR.pack(
            self.local_port,
            self.remote_port,
            seq & _MASK,
            ack,
            hlen << 2,
            flags,
            wnd,
            0,
            0,
        )
        if options:
            head += options
        plen = len(payload)
        value = int.from_bytes(head, "big") + self._pseudo + hlen + plen
        if plen:
            value += int.from_bytes(payload, "big") << (8 if plen & 1 else 0)
        csum = 0xFFFF - value % 0xFFFF
        head = head[:16] + csum.to_bytes(2, "big") + head[18:]
        self._stack._output(self._ip.build(head, payload))
        self.segments_sent += 1
        if flags & ACK:
            self._ack_now = False
            self._ack_pending = 0
            self._delack_at = None

    def _sack_option(self) -> bytes:
        """SACK blocks for the out-of-order data (RFC 2018 3-4): the block
        holding the most recent arrival first, then the blocks reported most
        recently before it, then any others from the highest down; at most 4
        (36 bytes with the two NOPs, no timestamps).
        Only pure ACKs carry them, so a full-size data segment never grows."""
        if self._dsack is not None:
            # A duplicate arrived: its range first (D-SACK, RFC 2883 4), once.
            chosen = [self._dsack, *self._ooo.sack_blocks(3)]
            self._dsack = None
        else:
            chosen = self._ooo.sack_blocks(4)
        out = bytearray(b"\x01\x01\x05")
        out.append(2 + 8 * len(chosen))
        for left, right in chosen:
            out += _SACK_BLOCK.pack(left & _MASK, right & _MASK)
        return bytes(out)

    # ----------------------------------------------------------------- teardown

    def _signal_closed(self, error: Exception | None) -> None:
        if not self._closed_signalled and self._visible:
            self._closed_signalled = True
            self._stack._event(TcpClosed(self, error))

    def _terminate(self, error: Exception | None) -> None:
        """Enter CLOSED and delete the TCB (RFC 9293 3.3.2)."""
        if self._released:
            return
        self._released = True
        if self.state is _TIME_WAIT:
            self._stack._time_wait -= 1
        self.state = _CLOSED
        if error is not None:
            self.error = error
        self._rto_at = self._persist_at = self._delack_at = self._close_at = None
        self._tlp_at = None
        self._sndbuf.clear()
        self._ooo.clear()
        self._stack._tcp_release(self)
        if self._listener is not None:
            self._listener._embryo_gone(self)
        self._signal_closed(error)
