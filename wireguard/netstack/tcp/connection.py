"""The TCP connection (RFC 9293) as a sans-I/O state machine: segments and
``now`` in, segments out through the stack's :class:`~..context.Context`.

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
* ICMP errors about our segments, as Linux's tcp_v4_err / tcp_v6_err: only
  for a quoted sequence number within SND.UNA..SND.NXT (RFC 5927 4.1); path
  MTU discovery (RFC 1191, RFC 8201), the send MSS lowered and the flight
  retransmitted at once without a window cut (tcp_simple_retransmit); hard
  errors end a connect, soft ones are remembered and reported if the
  connection then times out (RFC 1122 4.2.3.9).
* TIME-WAIT of 2*MSL, FIN-WAIT-2 timeout for connections the application closed
  (as Linux's tcp_fin_timeout), abort after too many retransmissions (3.8.3).

Not implemented: time-based loss detection (RACK, RFC 8985 section 6),
retransmitting by SACK after a timeout, F-RTO, congestion control other than
Reno (no CUBIC), timestamps (RFC 7323 section 3), urgent data (URG is ignored
and its data delivered inline, as RFC 6093 recommends for new applications),
keep-alives, ECN, IP fragmentation.

The parts live beside this module: the segment's wire format and its one
builder in :mod:`.segment`, RTT estimation in :mod:`.rtt`, congestion control
in :mod:`.congestion`, the SACK scoreboard and recovery record in
:mod:`.sack`, out-of-order reassembly in :mod:`.reassembly`, the five
deadlines in :mod:`.timers`, listeners and SYN cookies in :mod:`.listener`.
Sequence numbers are kept *unwrapped* (see :func:`.segment.unwrap`).
"""

from __future__ import annotations

import enum
import errno
import os
from dataclasses import dataclass
from typing import Final, Protocol

from ...errors import LocalProtocolError, RemoteProtocolError
from ..context import Context
from ..events import Event
from ..icmp import IPV4_MIN_PMTU, IPV6_MIN_MTU, IcmpError
from ..ip import addr_str
from .config import TcpConfig
from .congestion import Reno
from .reassembly import OOO_OVERHEAD, OutOfOrder
from .rtt import RttEstimator
from .sack import Scoreboard
from .segment import (
    ACK,
    DEFAULT_MSS_V4,
    DEFAULT_MSS_V6,
    FIN,
    PSH,
    RST,
    SYN,
    SegmentBuilder,
    TcpSegment,
    mss_for_mtu,
    sack_option,
    syn_options,
    unwrap,
)
from .timers import TcpTimers

__all__ = [
    "Acceptor",
    "ConnectionRefused",
    "ConnectionReset",
    "ConnectionTimedOut",
    "IcmpConnectionError",
    "TcpClosed",
    "TcpConnection",
    "TcpConnectionError",
    "TcpEstablished",
    "TcpReadable",
    "TcpState",
    "TcpWritable",
]

_DUPTHRESH = 3  # duplicate ACKs (or segments SACKed above a hole) that mean loss
_MIN_PTO = 0.01  # tail loss probe: the least probe timeout, as Linux
_DELAYED_ACK_ALLOWANCE = 0.2  # RFC 8985 WCDelAckT: a peer may delay an ACK this long
_MAX_WSCALE: Final = 14  # RFC 7323 2.3
# The least send MSS: a peer's smaller MSS option is raised to it, as Linux's
# TCP_MIN_SND_MSS (48; CVE-2019-11479, a segment and a SACK range per octet).
_MIN_SND_MSS: Final = 48
# The scoreboard of the peer's SACK blocks holds at most this many ranges per
# send buffer's worth of segments, plus a few (a receiver SACKing scraps of
# segments would otherwise make every ACK walk an ever longer list). Segments
# are counted as at least 536 octets (the default MSS, RFC 9293 3.7.1), so a
# peer's small MSS does not lengthen that walk tenfold.
_SACKED_SLACK: Final = 8
_SACKED_MSS: Final = 536


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
    """The peer sent an acceptable RST (``errno`` ECONNRESET, as a kernel socket's)."""


class ConnectionRefused(TcpConnectionError, ConnectionRefusedError):
    """The peer answered our SYN with a RST (``errno`` ECONNREFUSED)."""


class ConnectionTimedOut(TcpConnectionError, TimeoutError):
    """Too many retransmissions without an acknowledgment (``errno`` ETIMEDOUT)."""


class IcmpConnectionError(TcpConnectionError, OSError):
    """An ICMP error ended the connect, or was the last word before a timeout
    (``errno`` as Linux's: EHOSTUNREACH, ENETUNREACH, EACCES, EPROTO, ...)."""


def _icmp_exception(err: int) -> TcpConnectionError:
    if err == errno.ECONNREFUSED:
        return ConnectionRefused(err, "connection refused")
    return IcmpConnectionError(err, os.strerror(err))


# ------------------------------------------------------------------- events


@dataclass(slots=True)
class TcpEstablished(Event):
    """The three-way handshake completed (RFC 9293 3.5): send and receive may start."""

    conn: TcpConnection


@dataclass(slots=True)
class TcpReadable(Event):
    """Data, or the peer's FIN (``conn.at_eof``), can be read with ``receive()``."""

    conn: TcpConnection


@dataclass(slots=True)
class TcpWritable(Event):
    """A ``send()`` was short earlier and the send buffer has room again."""

    conn: TcpConnection


@dataclass(slots=True)
class TcpClosed(Event):
    """The connection is gone from the application's point of view.

    *error* is None after an orderly close, else the reason: reset by the peer,
    refused, or timed out after too many retransmissions.
    """

    conn: TcpConnection
    error: Exception | None


class Acceptor(Protocol):
    """Where a passively opened connection waits to be accepted: its listener."""

    def accept_queue_full(self) -> bool:
        """True if an established connection would not fit in the accept queue."""

    def established(self, conn: TcpConnection) -> None:
        """*conn* completed its handshake: queue it for ``accept()``."""

    def embryo_gone(self, conn: TcpConnection) -> None:
        """*conn* went away before it was established."""


class TcpConnection:
    """One TCP connection (a TCB, RFC 9293 3.3.1) and its application-side API.

    The application calls :meth:`send`, :meth:`receive`, :meth:`shutdown`,
    :meth:`close` and :meth:`abort` at any time; segments are produced when the
    stack flushes (``NetStack.flush``), so several writes and ACKs that happen
    in one turn leave as few segments as possible. The methods after
    "the stack's side" are for the stack (and the listener), not for
    applications.
    """

    def __init__(
        self,
        ctx: Context,
        config: TcpConfig,
        local_addr: bytes,
        local_port: int,
        remote_addr: bytes,
        remote_port: int,
        *,
        listener: Acceptor | None = None,
    ) -> None:
        cfg = config
        self._ctx = ctx
        self._cfg = cfg
        self._listener = listener
        self._visible = listener is None  # does the application know this connection?
        self.local_addr = local_addr
        self.local_port = local_port
        self.remote_addr = remote_addr
        self.remote_port = remote_port
        self.key = (local_addr, local_port, remote_addr, remote_port)
        self._segments = SegmentBuilder(local_addr, remote_addr, local_port, remote_port)
        v4 = len(local_addr) == 4
        # RFC 9293 3.7.1: MMS_S is the MTU less IP header; our MSS option advertises
        # the largest segment we accept, the MTU less the IP and TCP headers.
        self.rmss = mss_for_mtu(ctx.mtu, v4)
        # The path MTU (RFC 1191, RFC 8201): the MTU, or less if the stack
        # learned less for this destination; it bounds the send MSS.
        self.pmtu = ctx.path_mtu(remote_addr)
        # The peer's MSS (its SYN's option, else RFC 9293's default): the send
        # MSS is the smaller of it and the path's (Linux's rx_opt.mss_clamp).
        self._mss_clamp = DEFAULT_MSS_V4 if v4 else DEFAULT_MSS_V6
        self.smss = min(self._mss_clamp, self._path_mss())
        self.state = _CLOSED
        self.error: Exception | None = None
        # An ICMP error that did not end the connection (Linux's sk_err_soft):
        # the error it ends with if it then times out; an ACK clears it.
        self._soft_error: int | None = None

        self._cc = Reno(0)  # congestion control, RFC 5681 / RFC 6582
        self._set_iss(int.from_bytes(ctx.random(4), "big"))
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
        self._ooo = OutOfOrder()
        self._ooo_fin: int | None = None
        self._sack = False  # both sides sent SACK-permitted
        self._sack_in_syn = False
        self._dsack: tuple[int, int] | None = None  # a duplicate to report (RFC 2883)
        self._peer_fin = False
        self._app_closed = False  # close() (not shutdown()): no more reads

        # SACK-based loss recovery (RFC 6675, only with SACK agreed) and undo.
        self._sacked = Scoreboard()
        self._rtt = RttEstimator(cfg.initial_rto, cfg.min_rto, cfg.max_rto)  # RFC 6298
        self._retries = 0  # retransmission timeouts in a row (R2 of RFC 9293 3.8.3)
        self._syn_retransmitted = False
        self._persist_backoff = 0
        self._probes_out = 0  # window probes not answered (RFC 9293 3.8.6.1)

        self._timers = TcpTimers()
        # When on_timer() must be called next (None: no timer runs): the
        # earliest of the five deadlines, for the stack's timer heap.
        self.deadline = self._timers.earliest
        # Tail loss probe (RFC 8985 section 7), with SACK only: when the ACKs
        # of a flight stop coming (the last ACK lost, or the tail of the
        # flight), probe after about two round trips instead of waiting for
        # the retransmission timeout. One probe until an ACK moves SND.UNA.
        self._tlp_sent = False

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
        self._cc.recover = iss

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

    @property
    def cwnd(self) -> int:
        """The congestion window, in bytes (RFC 5681)."""
        return self._cc.cwnd

    @property
    def ssthresh(self) -> int:
        """The slow start threshold, in bytes (RFC 5681)."""
        return self._cc.ssthresh

    @property
    def srtt(self) -> float | None:
        """The smoothed round-trip time, None before the first sample (RFC 6298)."""
        return self._rtt.srtt

    @property
    def rttvar(self) -> float:
        return self._rtt.rttvar

    @property
    def rto(self) -> float:
        """The retransmission timeout now (RFC 6298), backoff included."""
        return self._rtt.rto

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
                self._ctx.wake(self)
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
        self._ctx.wake(self)

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
            self._timers.close = self._ctx.now + self._cfg.fin_wait_2_timeout
            self._ctx.schedule(self)

    def abort(self) -> None:
        """Reset the connection now (RFC 9293 3.10.5): RST, buffers dropped."""
        if self.state is _CLOSED:
            return
        if self.state not in (_SYN_SENT, _TIME_WAIT):
            self._emit(self.snd_max, RST | ACK)
        self._app_closed = True
        self._terminate(None)

    # ================================================================ the stack's side

    # ------------------------------------------------------------- opening

    def active_open(self, now: float) -> None:
        """RFC 9293 3.10.1: send SYN, enter SYN-SENT."""
        self.state = _SYN_SENT
        self.snd_nxt = self.snd_max = self.iss + 1
        self._send_syn(now, ack=False)
        self._rtt.time(self.iss, now)

    def passive_open(self, seg: TcpSegment, now: float) -> None:
        """RFC 9293 3.10.7.2: the listener got this SYN; send SYN-ACK, enter SYN-RECEIVED."""
        self.irs = seg.seq
        self.rcv_nxt = self.rcv_adv = seg.seq + 1
        self._take_syn_options(seg)
        self.snd_wnd = self.max_snd_wnd = seg.wnd  # never scaled in a SYN (RFC 7323 2.2)
        self.snd_wl1 = seg.seq
        self.state = _SYN_RECEIVED
        self.snd_nxt = self.snd_max = self.iss + 1
        self._send_syn(now, ack=True)
        self._rtt.time(self.iss, now)

    def cookie_open(self, irs: int, iss: int, mss: int, wnd: int) -> None:
        """SYN-RECEIVED from a returned SYN cookie: the SYN-ACK was *iss* with
        window *wnd* (unscaled), answering the client's ISN *irs*; the cookie
        kept only the MSS (no window scaling, no SACK)."""
        self._set_iss(iss)
        self.snd_nxt = self.snd_max = iss + 1
        self.irs = irs
        self.rcv_nxt = irs + 1
        self.rcv_adv = irs + 1 + wnd
        self.snd_wl1 = irs
        self._mss_clamp = mss
        self.smss = min(mss, self._path_mss())
        self.state = _SYN_RECEIVED

    def _take_syn_options(self, seg: TcpSegment) -> None:
        if seg.mss is not None and seg.mss > 0:
            self._mss_clamp = max(seg.mss, _MIN_SND_MSS)
            self.smss = min(self._mss_clamp, self._path_mss())
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

    def _path_mss(self) -> int:
        """The largest segment the path takes (RFC 9293 3.7.1, Linux's
        tcp_mtu_to_mss): the path MTU less the IP and TCP headers."""
        return mss_for_mtu(self.pmtu, len(self.local_addr) == 4)

    def _path_mtu_expired(self) -> None:
        """The path MTU was lowered (by an ICMP error, or the stack's cache
        when the connection began): if the stack no longer holds that lower
        value (it expired), the send MSS grows back, as Linux's
        tcp_current_mss re-syncs when the route's MTU changed."""
        pmtu = self._ctx.path_mtu(self.remote_addr)
        if pmtu > self.pmtu:
            self.pmtu = pmtu
            self.smss = min(self._mss_clamp, self._path_mss())

    def _send_syn(self, now: float, *, ack: bool) -> None:
        cfg = self._cfg
        if ack:
            wscale = self._offer_wscale if self._ws_in_syn and cfg.window_scaling else None
            options = syn_options(self.rmss, wscale, self._sack_in_syn and cfg.sack)
            self._emit(self.iss, SYN | ACK, b"", options)
        else:
            wscale = self._offer_wscale if cfg.window_scaling else None
            self._emit(self.iss, SYN, b"", syn_options(self.rmss, wscale, cfg.sack))
        self._timers.rto = now + self._rtt.rto

    def _initial_cwnd(self) -> int:
        # RFC 5681 3.1 (RFC 3390): IW = min(4*SMSS, max(2*SMSS, 4380 bytes)).
        smss = self.smss
        if self._cfg.initial_window is not None:
            return self._cfg.initial_window * smss
        return min(4 * smss, max(2 * smss, 4380))

    def _become_established(self, now: float) -> None:
        self.state = _ESTABLISHED
        self._ever_established = True
        self._cc.cwnd = self._initial_cwnd()
        self._retries = 0
        if self._syn_retransmitted:
            self._rtt.syn_retransmitted(self._cfg.initial_rto)
        self._timers.rto = None
        if self._fin_queued:
            self.state = _FIN_WAIT_1
        if self._sndbuf or self._fin_queued:
            self._ctx.wake(self)
        if self._listener is not None:
            self._listener.established(self)
        else:
            self._ctx.notify(TcpEstablished(self))

    def become_visible(self) -> None:
        """The listener queued this connection for ``accept()``: the
        application will know it (and hear of its closing)."""
        self._visible = True

    # ------------------------------------------------------------ segment arrival

    def segment_arrives(self, seg: TcpSegment, now: float) -> None:
        """RFC 9293 3.10.7.3 and 3.10.7.4, in the order the RFC gives."""
        self.segments_received += 1
        state = self.state
        if state is _SYN_SENT:
            self._syn_sent_arrives(seg, now)
            return
        flags = seg.flags
        rcv_nxt = self.rcv_nxt
        seq = unwrap(seg.seq, rcv_nxt)
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
            self._timers.close = now + 2 * self._cfg.msl
            return

        # First: sequence number check (RFC 9293 3.10.7.4, the four-case table).
        # RCV.WND is the free buffer space: it is never less than what we advertised.
        wnd = self._cfg.receive_buffer - len(self._rcvbuf)
        if wnd < 0:
            wnd = 0
        fin = flags & FIN
        if seq != rcv_nxt or (plen and wnd < plen):  # not the common case: in order, fits
            trimmed = self._trim_to_window(flags, seq, payload, fin, wnd)
            if trimmed is None:
                return
            seq, payload, fin = trimmed
            plen = len(payload)

        # Second to fifth: RST, SYN, ACK.
        if not self._control_arrives(seg, flags, seq, plen, now):
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

    def _trim_to_window(
        self, flags: int, seq: int, payload: bytes, fin: int, wnd: int
    ) -> tuple[int, bytes, int] | None:
        """The first check's cases beyond the common one (RFC 9293 3.10.7.4):
        is the segment acceptable, and what of it lies in the window? Returns
        its (sequence number, payload, FIN) trimmed to the window, or None if
        it is not acceptable (answered with an ACK unless it is a RST)."""
        rcv_nxt = self.rcv_nxt
        plen = len(payload)
        seg_len = plen + (1 if flags & SYN else 0) + (1 if fin else 0)
        if seg_len == 0:
            acceptable = seq == rcv_nxt if wnd == 0 else rcv_nxt <= seq < rcv_nxt + wnd
        elif wnd == 0:
            # "special allowance should be made to accept valid ACKs, URGs and RSTs":
            # process the control part of an in-sequence segment, drop its data.
            acceptable = seq == rcv_nxt
            if acceptable and plen:
                self._ctx.stats.tcp_octets_beyond_window += plen
                payload = b""
                plen = 0
                fin = 0
                self._ack_soon()
        else:
            acceptable = (rcv_nxt <= seq < rcv_nxt + wnd) or (
                rcv_nxt <= seq + seg_len - 1 < rcv_nxt + wnd
            )
        if not acceptable:
            self._ctx.stats.tcp_segments_rejected += 1
            if not flags & RST:
                if plen and seq + plen <= rcv_nxt:
                    self._dsack = (seq, seq + plen)  # all of it came before
                self._emit(self.snd_max, ACK)
            return None
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
            keep = max(0, rcv_nxt + wnd - seq)
            self._ctx.stats.tcp_octets_beyond_window += plen - keep
            payload = payload[:keep]
            fin = 0
        return seq, payload, fin

    def _control_arrives(
        self, seg: TcpSegment, flags: int, seq: int, plen: int, now: float
    ) -> bool:
        """RFC 9293 3.10.7.4, second to fifth checks (RST, SYN, ACK) for an
        acceptable segment; False if processing stops there."""
        rcv_nxt = self.rcv_nxt
        # Second: RST (RFC 9293 3.10.7.4 second, RFC 5961 3.2).
        if flags & RST:
            if unwrap(seg.seq, rcv_nxt) != rcv_nxt:
                self._ctx.stats.tcp_segments_rejected += 1
                self._emit(self.snd_max, ACK)  # challenge ACK
                return False
            self._rst_arrives()
            return False
        # Fourth: SYN in a synchronized state -> challenge ACK (RFC 5961 4.2).
        if flags & SYN:
            self._ctx.stats.tcp_segments_rejected += 1
            self._emit(self.snd_max, ACK)
            return False
        # Fifth: ACK.
        if not flags & ACK:
            self._ctx.stats.tcp_segments_rejected += 1
            return False
        ack = unwrap(seg.ack, self.snd_una)
        if self.state is _SYN_RECEIVED:
            if not self.snd_una < ack <= self.snd_max:
                self._ctx.stats.tcp_segments_rejected += 1
                self._emit(ack, RST)
                return False
            if self._listener is not None and self._listener.accept_queue_full():
                # Linux (tcp_abort_on_overflow=0): drop the ACK, stay half-open;
                # the client's next segment tries again.
                self._ctx.stats.listen_overflows += 1
                return False
            self.snd_wnd = seg.wnd << self.snd_wscale
            self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
            self.snd_wl1 = seq
            self.snd_wl2 = ack
            self._become_established(now)
        if ack > self.snd_max and ack > self._probe_end:
            self._ctx.stats.tcp_segments_rejected += 1
            self._emit(self.snd_max, ACK)  # acks something not yet sent
            return False
        if ack < self.snd_una - max(self.max_snd_wnd, 1):
            self._ctx.stats.tcp_segments_rejected += 1
            self._emit(self.snd_max, ACK)  # RFC 5961 5.2: far too old
            return False
        return self._ack_arrives(seg, seq, ack, plen, now)

    def _syn_sent_arrives(self, seg: TcpSegment, now: float) -> None:
        # RFC 9293 3.10.7.3.
        flags = seg.flags
        ack = 0
        if flags & ACK:
            ack = unwrap(seg.ack, self.snd_una)
            if ack <= self.iss or ack > self.snd_max:
                self._ctx.stats.tcp_segments_rejected += 1
                if not flags & RST:
                    self._emit(ack, RST)
                return
        if flags & RST:
            if flags & ACK:  # acceptable ACK checked above
                self._terminate(ConnectionRefused(errno.ECONNREFUSED, "connection refused"))
            else:
                self._ctx.stats.tcp_segments_rejected += 1
            return
        if not flags & SYN:
            self._ctx.stats.tcp_segments_rejected += 1
            return
        self.irs = seg.seq
        self.rcv_nxt = self.rcv_adv = seg.seq + 1
        self._take_syn_options(seg)
        self.snd_wnd = self.max_snd_wnd = seg.wnd  # a SYN's window is not scaled
        self.snd_wl1 = seg.seq
        if flags & ACK:
            self.snd_wl2 = ack
            self.snd_una = ack
            self._rtt.acked(ack, now)
            self._rtt.karn()
            self._become_established(now)
            self._ack_now = True
            self._ctx.wake(self)
        else:
            # Simultaneous open (RFC 9293 3.5, figure 7).
            self.state = _SYN_RECEIVED
            self._rtt.karn()
            self._send_syn(now, ack=True)

    def _rst_arrives(self) -> None:
        # RFC 9293 3.10.7.4 second check, per state.
        state = self.state
        if state is _SYN_RECEIVED:
            if self._listener is not None:
                # From a passive open: the embryo silently goes away ("return to LISTEN").
                self._terminate(None)
            else:
                self._terminate(ConnectionRefused(errno.ECONNREFUSED, "connection refused"))
        elif state in (_CLOSING, _LAST_ACK, _TIME_WAIT):
            self._terminate(None)
        else:
            self._terminate(ConnectionReset(errno.ECONNRESET, "connection reset by peer"))

    def _ack_arrives(self, seg: TcpSegment, seq: int, ack: int, plen: int, now: float) -> bool:
        """RFC 9293 3.10.7.4 fifth check for synchronized states; False to stop."""
        self._probes_out = 0  # the peer answers: it may keep its window shut
        self._soft_error = None  # "something worked" (Linux's tcp_ack)
        snd_una = self.snd_una
        wnd = seg.wnd << self.snd_wscale
        newly_sacked = 0
        if seg.sack is not None and self._sack:
            newly_sacked = self._take_sack(seg.sack, unwrap(seg.ack, snd_una))
        if ack > snd_una:
            acked = ack - snd_una
            self._rtt.acked(ack, now)  # RFC 6298 3; Karn: no timing across retransmissions
            buf_end = self._sndbuf_seq + len(self._sndbuf)
            n = (ack if ack < buf_end else buf_end) - self._sndbuf_seq
            if n > 0:
                del self._sndbuf[:n]
                self._sndbuf_seq += n
            self.snd_una = ack
            if self._sacked:
                self._sacked.acked(ack)
            if self.snd_nxt < ack:
                self.snd_nxt = ack
                if self.snd_max < ack:
                    self.snd_max = ack  # the peer took a zero-window probe octet
            self._retries = 0
            self._persist_backoff = 0
            self._on_new_ack(acked, ack)
            # RFC 6298 5.2/5.3: stop the timer when all is acknowledged, else restart.
            self._timers.rto = None if ack == self.snd_max else now + self._rtt.rto
            self._tlp_sent = False
            self._arm_tlp(now)
            if self._want_writable and len(self._sndbuf) < self._cfg.send_buffer:
                self._want_writable = False
                self._ctx.notify(TcpWritable(self))
            if self._sndbuf or self._fin_queued:
                self._ctx.wake(self)
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
                self._timers.persist = None
                self._persist_backoff = 0
                if len(self._sndbuf) > self.snd_nxt - self._sndbuf_seq or self._fin_queued:
                    self._ctx.wake(self)

        # State changes when our FIN is acknowledged.
        if self._fin_queued and self.snd_una == self._sndbuf_seq + len(self._sndbuf) + 1:
            state = self.state
            if state is _FIN_WAIT_1:
                self.state = _FIN_WAIT_2
                if self._app_closed:
                    self._timers.close = now + self._cfg.fin_wait_2_timeout
            elif state is _CLOSING:
                self._enter_time_wait(now)
                return False
            elif state is _LAST_ACK:
                self._terminate(None)
                return False
        return True

    # ------------------------------------------------------------- ICMP errors

    def icmp_error(self, error: IcmpError, seq: int, now: float) -> bool:
        """An ICMP error quoting our segment with sequence number *seq* (32
        bits) came (the stack's side), as Linux's tcp_v4_err / tcp_v6_err
        take it. True if it was acted on, False if it was ignored: the
        connection lingers in TIME-WAIT, or *seq* is outside
        SND.UNA..SND.NXT (not a segment in flight: RFC 5927 4.1, Linux's
        LINUX_MIB_OUTOFWINDOWICMPS)."""
        state = self.state
        if state is _CLOSED or state is _TIME_WAIT:
            return False
        seq = unwrap(seq, self.snd_una)
        if state is _SYN_RECEIVED and self._listener is not None:
            # A half-open passive connection (Linux's tcp_req_err): only an
            # error about our SYN-ACK, and only some, drop it; no PMTU here.
            if seq != self.iss or not error.abort_request or error.mtu is not None:
                return False
            self._terminate(None)
            return True
        if not self.snd_una <= seq <= self.snd_max:
            return False
        if error.mtu is not None:
            return self._mtu_reduced(error.mtu, now)
        if state is _SYN_SENT or state is _SYN_RECEIVED:
            self._terminate(_icmp_exception(error.errno))
        else:
            self._soft_error = error.errno  # RFC 1122 4.2.3.9: not fatal
        return True

    def _mtu_reduced(self, mtu: int, now: float) -> bool:
        """A "fragmentation needed" (RFC 1191) or Packet Too Big (RFC 8201)
        reported *mtu*: as Linux's tcp_v4_mtu_reduced / tcp_v6_mtu_reduced,
        the path MTU only goes down, to no less than 552 (IPv4; lower
        reports are raised to it) or 1280 (IPv6; lower ones are ignored);
        if the send MSS shrinks, what is in flight goes again at once."""
        if len(self.local_addr) == 4:
            if mtu < IPV4_MIN_PMTU:
                # DF stays set, so a path below 552 still drops our segments:
                # if the connection then times out, this is why.
                self._soft_error = errno.EMSGSIZE
                mtu = IPV4_MIN_PMTU
        elif mtu < IPV6_MIN_MTU:
            return False
        if mtu >= self.pmtu:
            return False
        self.pmtu = mtu
        self._ctx.learn_path_mtu(self.remote_addr, mtu)
        mss = self._path_mss()
        if mss < self.smss:
            self.smss = mss
            if self.state in _SEND_STATES and self.snd_max > self.snd_una:
                self._simple_retransmit(now)
        return True

    def _simple_retransmit(self, now: float) -> None:
        """Send what is outstanding again in the new MSS, now (Linux's
        tcp_simple_retransmit): the segments were dropped for their size,
        not by congestion, so the window is not cut ("units changed", in
        Linux's words); as after a timeout, no fast retransmit for what was
        sent before (RFC 6582 3.2 step 4) and SACK information is dropped."""
        cc = self._cc
        if cc.in_recovery:
            cc.cwnd = min(cc.cwnd, cc.ssthresh)  # without NewReno's inflation
            cc.in_recovery = False
        cc.dupacks = 0
        cc.recover = self.snd_max
        self._sacked.reset()
        self._timers.tlp = None
        self._count_retransmission()
        self.snd_nxt = self.snd_una
        self._timers.rto = now + self._rtt.rto
        self.output(now)

    # ----------------------------------------------------- congestion and recovery

    def _on_new_ack(self, acked: int, ack: int) -> None:
        cc = self._cc
        smss = self.smss
        if not cc.in_recovery:
            cc.on_ack(acked, smss)
            return
        if ack >= cc.recover:
            # Full acknowledgment (RFC 6582 3.2 step 3): deflate the window.
            cc.full_ack(self.snd_max - ack, smss)
            if self._sacked.undo_ok:
                self._undo_recovery()
        elif self._sack:
            # RFC 6675: no window arithmetic; output() sends what the pipe
            # estimate allows, holes first.
            self._ctx.wake(self)
        else:
            # Partial acknowledgment (step 3, partial): retransmit the next hole.
            self._retransmit_first()
            cc.partial_ack(acked, smss)

    def _on_dupack(self, now: float) -> None:
        cc = self._cc
        if cc.in_recovery:
            # Without SACK, NewReno inflates the window per duplicate (RFC 6582
            # 3.2 step 4, RFC 5681 3.2 step 4); with SACK the scoreboard the
            # ACK updated lowers the pipe estimate instead (RFC 6675 5 step 3).
            if not self._sack:
                cc.inflate(self.smss)
            self._ctx.wake(self)
            return
        cc.dupacks += 1
        threshold = _DUPTHRESH
        if self._sack and self._sndbuf_seq + len(self._sndbuf) <= self.snd_nxt:
            # Early Retransmit (RFC 5827 3.2, SACK variant): with nothing new to
            # send and fewer than four segments outstanding, three duplicates
            # can never come; the threshold is one less than outstanding.
            outstanding = -(-(self.snd_max - self.snd_una) // self.smss)
            if outstanding < 4:
                threshold = max(outstanding - 1, 1)
        if cc.dupacks < threshold and not (
            # RFC 6675 5: or IsLost(HighACK + 1), by the SACKed octets above it.
            self._sack and self._sacked.sacked_above(self.snd_una) > self._lost_octets
        ):
            # Limited Transmit (RFC 3042): each of the first two duplicate ACKs
            # lets one new segment out beyond cwnd (see output), so a small
            # window still yields the three duplicates fast retransmit needs
            # instead of waiting for the retransmission timer.
            self._ctx.wake(self)
            return
        if self.snd_una > cc.recover - 1:
            # Fast retransmit and NewReno recovery entry, unless this loss was
            # already handled.
            if self._sack:
                self._sacked.arm_undo(cc.cwnd, cc.ssthresh)
            cc.enter_recovery(self.snd_max - self.snd_una, self.smss, self.snd_max, self._sack)
            self._timers.tlp = None
            self._ctx.stats.tcp_fast_recoveries += 1
            self._retransmit_first()
            self._timers.rto = now + self._rtt.rto
            self._ctx.wake(self)

    def _take_sack(self, blocks: list[tuple[int, int]], ack: int) -> int:
        """The peer's SACK blocks into the scoreboard; returns how many octets
        they newly SACKed. A D-SACK reporting the last retransmission of a
        recovery that is over undoes it (RFC 3708)."""
        sacked = self._sacked
        if sacked.dsack(blocks, ack) and not self._cc.in_recovery:
            self._undo_recovery()
        smss = self.smss
        limit = self._cfg.send_buffer // (smss if smss > _SACKED_MSS else _SACKED_MSS)
        limit += _SACKED_SLACK
        newly, dropped = sacked.update(blocks, self.snd_una, self.snd_max, limit)
        if dropped:
            self._ctx.stats.tcp_sack_ranges_dropped += dropped  # forgotten: counted
        return newly

    def _undo_recovery(self) -> None:
        """Every retransmission of the last fast recovery arrived twice: the
        reduction was for nothing, take it back (RFC 3708 3, as Linux's
        tcp_try_undo_dsack)."""
        prior = self._sacked.take_undo()
        if prior is not None:
            self._cc.restore(*prior)
            self._ctx.stats.tcp_recoveries_undone += 1
            self._ctx.wake(self)

    @property
    def _lost_octets(self) -> int:
        """RFC 6675 IsLost(): more than (DupThresh - 1) * SMSS octets SACKed
        above a hole make it lost."""
        return (_DUPTHRESH - 1) * self.smss

    def _retransmit_hole(self, room: int, lost_edge: int) -> int:
        """Retransmit up to *room* octets (at most a segment) of the next lost
        hole (RFC 6675 NextSeg rule 1). Returns the octets sent, 0 if there
        was none."""
        hole = self._sacked.next_hole(self.snd_una, lost_edge)
        if hole is None:
            return 0
        start, left = hole
        end = min(start + self.smss, start + room, left)
        self._resend(start, end)
        self._sacked.note_repair(start, end, self.snd_una, self.snd_max)
        return end - start

    def _count_retransmission(self) -> None:
        self._rtt.karn()  # never time a retransmitted segment
        self.retransmits += 1
        self._ctx.stats.tcp_retransmits += 1

    def _resend(self, start: int, end: int) -> None:
        """Send octets [start, end) of the send buffer again."""
        self._count_retransmission()
        off = start - self._sndbuf_seq
        self._emit(start, ACK, bytes(self._sndbuf[off : off + end - start]))

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
        self._sacked.note_repair(self.snd_una, self.snd_una + len(data), self.snd_una, self.snd_max)
        flags = ACK
        data_end = self._sndbuf_seq + len(self._sndbuf)
        if self._fin_queued and off + len(data) == len(self._sndbuf) and self.snd_max > data_end:
            flags |= FIN  # only a FIN that was sent before: it is inside SND.MAX
        if data or flags & FIN:
            self._emit(self.snd_una, flags, bytes(data))

    # -------------------------------------------------------------- receiving

    def _ack_soon(self) -> None:
        """An ACK is due at the next flush (coalesced with any data going out)."""
        self._ack_now = True
        self._ctx.wake(self)

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
            self._ctx.notify(TcpReadable(self))
        # RFC 9293 3.8.6.3: ACK at least every second full segment, else within the delay.
        self._ack_pending += 1
        if self._ack_pending >= 2 or self._cfg.delayed_ack <= 0:
            self._ack_now = True
        if self._ack_now:
            self._ctx.wake(self)
        elif self._timers.delack is None:
            self._timers.delack = self._ctx.now + self._cfg.delayed_ack

    def _data_out_of_order(self, seq: int, payload: bytes) -> bool:
        """Keep a segment beyond RCV.NXT and send an immediate duplicate ACK.

        What is held is charged (payload plus OOO_OVERHEAD per chunk) against
        twice the receive buffer, with what waits to be read. Over it, held
        chunks above this segment are pruned, from the highest down, by an
        eighth of the budget at a time; if that is not enough (this segment
        would be the highest), the segment is dropped. Both are counted.
        False if the segment was dropped.
        """
        ooo = self._ooo
        budget = 2 * self._cfg.receive_buffer
        cost = len(payload) + OOO_OVERHEAD
        kept = True
        if len(self._rcvbuf) + ooo.memory + cost > budget:
            self._prune_ooo(seq, budget >> 3)
            if len(self._rcvbuf) + ooo.memory + cost > budget:
                self._ctx.stats.tcp_ofo_dropped += 1
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
            self._ctx.stats.tcp_ofo_pruned += n
            self._ooo_fin = None

    def _pull_ooo(self) -> None:
        pieces, self.rcv_nxt = self._ooo.pull(self.rcv_nxt)
        buf = self._rcvbuf
        for piece in pieces:
            buf += piece
        if self._ooo_fin is not None and self._ooo_fin == self.rcv_nxt:
            self._ooo_fin = None
            self._fin_arrives(self._ctx.now)

    def _fin_arrives(self, now: float) -> None:
        # RFC 9293 3.10.7.4 eighth check.
        self.rcv_nxt += 1
        self._peer_fin = True
        self._ooo.clear()
        self._ack_now = True
        self._ctx.wake(self)
        if not self._readable_signalled:
            self._readable_signalled = True
            self._ctx.notify(TcpReadable(self))
        state = self.state
        if state is _ESTABLISHED or state is _SYN_RECEIVED:
            self.state = _CLOSE_WAIT
        elif state is _FIN_WAIT_1:
            self.state = _CLOSING  # our FIN is not acknowledged yet (else FIN-WAIT-2)
        elif state is _FIN_WAIT_2:
            self._enter_time_wait(now)

    def _enter_time_wait(self, now: float) -> None:
        ctx = self._ctx
        if ctx.time_wait >= self._cfg.max_time_wait:
            # Linux (tcp_max_tw_buckets): past the limit the connection just closes.
            ctx.stats.tcp_time_wait_overflows += 1
            if self._ack_now:
                self._emit(self.snd_max, ACK)  # the peer's FIN is acknowledged first
            self._terminate(None)
            return
        ctx.time_wait += 1
        self.state = _TIME_WAIT
        self._timers.stop_sending()
        self._timers.close = now + 2 * self._cfg.msl
        self._sndbuf.clear()
        self._signal_closed(None)

    # ------------------------------------------------------------------- timers

    def on_timer(self, now: float) -> None:
        """Run what is due at *now*."""
        timers = self._timers
        if timers.close is not None and now >= timers.close:
            # TIME-WAIT expiry (RFC 9293 3.10.8) or FIN-WAIT-2 timeout.
            self._terminate(None)
            return
        if timers.rto is not None and now >= timers.rto:
            self._rto_expired(now)
            if self.state is _CLOSED:
                return
        if timers.tlp is not None and now >= timers.tlp:
            timers.tlp = None
            self._send_loss_probe(now)
        if timers.persist is not None and now >= timers.persist:
            self._persist_expired(now)
        if timers.delack is not None and now >= timers.delack:
            timers.delack = None
            self._ack_now = True
            self._ctx.wake(self)

    def _arm_tlp(self, now: float) -> None:
        """(Re)arm the probe timeout (RFC 8985 7.2): two smoothed round trips
        (at least 10 ms, as Linux), plus the peer's delayed-ACK allowance when
        only one segment is out, and never later than the RTO."""
        timers = self._timers
        timers.tlp = None
        srtt = self._rtt.srtt
        if (
            not self._sack
            or self._tlp_sent
            or self._cc.in_recovery
            or srtt is None
            or timers.rto is None
            or self.snd_max <= self.snd_una
            or self.state not in _SEND_STATES
        ):
            return
        pto = 2 * srtt
        if self.snd_max - self.snd_una <= self.smss:
            pto += _DELAYED_ACK_ALLOWANCE
        at = now + (pto if pto > _MIN_PTO else _MIN_PTO)
        if at < timers.rto:
            timers.tlp = at

    def _send_loss_probe(self, now: float) -> None:
        """RFC 8985 7.3: one new segment if the peer's window takes it, else
        the last segment sent again. Its ACK either acknowledges the flight
        (only the ACKs were lost) or SACKs the probe and starts recovery."""
        if self.snd_max <= self.snd_una or self._cc.in_recovery:
            return
        self._tlp_sent = True
        self._ctx.stats.tcp_loss_probes += 1
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
        self._timers.rto = now + self._rtt.rto  # RFC 8985 7.3: the RTO after the probe

    def _rto_expired(self, now: float) -> None:
        """RFC 6298 5.4-5.7 and RFC 5681 3.1 (loss window)."""
        self._timers.tlp = None
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
                self._ctx.stats.synack_timeouts += 1
                self._terminate(None)
                return
            if self.state is not _SYN_SENT:
                self._emit(self.snd_max, RST | ACK)
            self._terminate(self._timed_out())
            return
        rtt = self._rtt
        rtt.backoff()  # RFC 6298 5.5
        rtt.karn()
        self.retransmits += 1
        self._ctx.stats.tcp_retransmits += 1
        if self.state is _SYN_SENT or self.state is _SYN_RECEIVED:
            self._syn_retransmitted = True
            self._send_syn(now, ack=self.state is _SYN_RECEIVED)
            return
        self._ctx.stats.tcp_timeouts += 1
        self._cc.on_timeout(
            self.snd_max - self.snd_una, self.smss, self.snd_max, first=self._retries == 1
        )
        self._sacked.reset()
        self.snd_nxt = self.snd_una  # go back: resend from the first unacknowledged byte
        self._timers.rto = now + rtt.rto
        before = self.segments_sent
        self.output(now)
        if self.segments_sent == before and self.snd_max > self.snd_una:
            # The window is shut: retransmit anyway, the segment doubles as a window
            # probe (RFC 9293 3.8.6.1: probe even if the send window is zero).
            self._retransmit_first()

    def _timed_out(self) -> TcpConnectionError:
        """The error of a connection given up: the soft error an ICMP error
        left, if any, else ETIMEDOUT (Linux's tcp_write_err)."""
        if self._soft_error is not None:
            return _icmp_exception(self._soft_error)
        return ConnectionTimedOut(errno.ETIMEDOUT, "connection timed out")

    def _persist_expired(self, now: float) -> None:
        """Zero-window probe with one octet of new data (RFC 9293 3.8.6.1)."""
        self._timers.persist = None
        if self.state not in _SEND_STATES or self.snd_wnd > 0:
            self._ctx.wake(self)
            return
        if self._probes_out >= self._cfg.max_retransmits:
            # RFC 9293 3.8.6.1 keeps the connection open only while the probes
            # are acknowledged: unanswered, they count against R2 (3.8.3), as
            # Linux's tcp_probe_timer gives up after tcp_retries2 of them.
            self._emit(self.snd_max, RST | ACK)
            self._terminate(self._timed_out())
            return
        off = self.snd_nxt - self._sndbuf_seq
        if 0 <= off < len(self._sndbuf):
            self._probes_out += 1
            self._emit(self.snd_nxt, ACK, bytes(self._sndbuf[off : off + 1]))
            # SND.NXT and SND.MAX stay (pure ACKs carry SND.MAX, which must stay
            # acceptable to a peer whose window is shut); if the peer takes the
            # octet, an ACK up to _probe_end is still valid and moves them on.
            self._probe_end = self.snd_nxt + 1
        self._persist_backoff += 1
        self._timers.persist = now + self._rtt.backed_off(self._persist_backoff)

    # ------------------------------------------------------------------- output

    def output(self, now: float) -> None:
        """Send what the windows allow, or a pure ACK if one is due (RFC 9293 3.10.2).

        Called by the stack when it flushes, so one call covers all the writes and
        ACK arrivals since the last flush.
        """
        state = self.state
        if state is _CLOSED:
            return
        sent = False
        if state in _SEND_STATES:
            if self.pmtu < self._ctx.mtu:
                self._path_mtu_expired()
            cc = self._cc
            smss = self.smss
            sndbuf = self._sndbuf
            buf_seq = self._sndbuf_seq
            data_end = buf_seq + len(sndbuf)
            cwnd = cc.cwnd + cc.limited_transmit(smss)  # RFC 3042 section 2
            wnd = self.snd_wnd if self.snd_wnd < cwnd else cwnd
            right = self.snd_una + wnd
            if cc.in_recovery and self._sack:
                # RFC 6675 5 step 4: while cwnd - pipe >= 1 SMSS, holes first
                # (NextSeg rule 1), then new data (rule 2) within the window.
                sacked = self._sacked
                lost_edge = sacked.lost_edge(self.snd_una, self._lost_octets)
                room = cwnd - sacked.pipe(self.snd_una, self.snd_max, lost_edge)
                if room >= smss and sacked.una_rxt_lost(self.snd_una, self._lost_octets):
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
            rtt = self._rtt
            timers = self._timers
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
                    rtt.offer(nxt, now)  # time this segment (RFC 6298 3)
                    self.snd_max = new
                else:
                    self.retransmits += 1
                    if new > self.snd_max:
                        self.snd_max = new
                self.snd_nxt = new
                if timers.rto is None:
                    timers.rto = now + rtt.rto  # RFC 6298 5.1
            if sent:
                self._arm_tlp(now)  # RFC 8985 7.2: on sending new data
            # Persist timer: data waits, the window is shut and nothing is in flight
            # that would bring a window update with its ACK (RFC 9293 3.8.6.1).
            if (
                self.snd_wnd == 0
                and self.snd_nxt < data_end
                and timers.rto is None
                and timers.persist is None
            ):
                timers.persist = now + rtt.backed_off(self._persist_backoff)
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
        ack = self.rcv_nxt if flags & ACK else 0
        self._ctx.emit(self._segments.build(seq, ack, flags, wnd, payload, options))
        self.segments_sent += 1
        if flags & ACK:
            self._ack_now = False
            self._ack_pending = 0
            self._timers.delack = None

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
        return sack_option(chosen)

    # ----------------------------------------------------------------- teardown

    def _signal_closed(self, error: Exception | None) -> None:
        if not self._closed_signalled and self._visible:
            self._closed_signalled = True
            self._ctx.notify(TcpClosed(self, error))

    def _terminate(self, error: Exception | None) -> None:
        """Enter CLOSED and delete the TCB (RFC 9293 3.3.2)."""
        if self._released:
            return
        self._released = True
        if self.state is _TIME_WAIT:
            self._ctx.time_wait -= 1
        self.state = _CLOSED
        if error is not None:
            self.error = error
        self._timers.stop()
        self._sndbuf.clear()
        self._ooo.clear()
        self._ctx.closed(self)
        if self._listener is not None:
            self._listener.embryo_gone(self)
        self._signal_closed(error)
