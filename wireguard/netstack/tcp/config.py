"""The tunables of the TCP implementation, with the RFC or Linux value each
default follows."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TcpConfig"]


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
    """Offer SACK-permitted (RFC 2018) and, when the peer agrees, use it both
    ways. As a receiver: out-of-order data reported in SACK blocks on our ACKs
    and duplicates in a D-SACK block (RFC 2883), so the peer's sender repairs
    several holes per round trip. As a sender: the peer's blocks kept in a
    scoreboard and losses recovered by them (RFC 6675), with tail loss probes
    (RFC 8985 section 7) and the undo of a recovery that D-SACK shows spurious
    (RFC 3708). Off, or not agreed: NewReno recovery (RFC 6582)."""
