"""What the stack lends its sockets, so that they never reach into it.

A socket (a TCP connection or listener, a UDP socket) is given one
:class:`Context` by the :class:`~wireguard.netstack.stack.NetStack` that owns
it, as smoltcp hands its sockets a ``Context``: the time and randomness (no
clock is read and no entropy drawn anywhere else), the stack's limits and
counters, and callbacks for what a socket hands back. Packets it sends go to
``emit``, news for the application to ``notify``; ``wake`` asks for the
socket's turn at the next flush (it has data or an ACK to send), ``schedule``
for a look at its deadline, which moved outside a stack call; ``opened`` and
``closed`` keep the stack's demultiplexing tables. The context knows no
socket type, so no socket module imports the stack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import LocalProtocolError
from .events import Event
from .ip import addr_str

__all__ = ["Context", "NetStackStats", "RandomSource"]

RandomSource = Callable[[int], bytes]
"""Where randomness comes from: a function returning *n* random bytes."""


@dataclass
class NetStackStats:
    """Counters of what was dropped or done, for diagnostics."""

    packets_received: int = 0
    packets_sent: int = 0
    malformed: int = 0
    not_for_us: int = 0
    unknown_protocol: int = 0
    tcp_no_connection: int = 0
    # Segments a connection or listener did not accept (RFC 9293 3.10.7): outside
    # the window, a RST not exactly at RCV.NXT or to a listener, a SYN when
    # synchronized, no ACK bit, an ACK of what was never sent or far too old.
    # Each was answered as the RFC says (an ACK, a challenge ACK, a RST, nothing).
    tcp_segments_rejected: int = 0
    tcp_octets_beyond_window: int = 0  # data dropped: past the receive window's right edge
    tcp_retransmits: int = 0
    tcp_timeouts: int = 0  # retransmission timeouts with data outstanding
    tcp_fast_recoveries: int = 0  # fast retransmits (three duplicate ACKs)
    tcp_loss_probes: int = 0  # tail loss probes (RFC 8985)
    tcp_recoveries_undone: int = 0  # fast recoveries shown spurious by D-SACK
    listen_overflows: int = 0  # SYNs and final ACKs dropped: the accept queue was full
    syn_queue_overflows: int = 0  # SYNs dropped: the SYN queue was full, cookies off
    synack_timeouts: int = 0  # half-open connections given up (max_synack_retransmits)
    syncookies_sent: int = 0  # SYNs answered with a cookie: the SYN queue was full
    syncookies_accepted: int = 0  # connections opened by a returned cookie
    syncookies_failed: int = 0  # ACKs to a listener with no valid cookie, cookies in use
    tcp_ofo_dropped: int = 0  # out-of-order segments dropped: over the memory budget
    tcp_ofo_pruned: int = 0  # held out-of-order chunks pruned (highest first) for room
    tcp_sack_ranges_dropped: int = 0  # peer's SACK ranges forgotten: scoreboard full
    tcp_time_wait_overflows: int = 0  # connections closed without TIME-WAIT: too many
    udp_no_socket: int = 0
    udp_queue_overflows: int = 0  # datagrams dropped: the socket's receive queue was full
    udp_closed_unread: int = 0  # datagrams still queued when their socket closed
    icmp_echo_answered: int = 0
    icmp_unhandled: int = 0  # ICMP messages nothing acts on (NDP, redirects, ...): dropped
    # ICMP errors about no packet of ours (a quote that is not ours, of no
    # socket, a sequence number outside SND.UNA..SND.NXT, RFC 5927), or that
    # change nothing (an MTU not below the path's, a soft error for an
    # unconnected UDP socket): dropped.
    icmp_errors_ignored: int = 0
    icmp_errors_reported: int = 0  # ICMP errors that ended a connect or reached a socket
    icmp_pmtu_reductions: int = 0  # "fragmentation needed" / Packet Too Big acted on
    icmp_errors_rate_limited: int = 0  # ICMP errors not sent: over the rate limit
    # RFC 8200 4.2/4.4: an option or routing header says discard; section 4: a
    # Hop-by-Hop Options header not first; 4.1: a second Fragment header.
    ipv6_option_discarded: int = 0
    # IP fragments (wireguard.netstack.fragment), as Linux's Reasm* counters.
    fragments_received: int = 0  # fragments for us taken to reassembly
    datagrams_reassembled: int = 0  # datagrams made whole
    fragments_duplicate: int = 0  # fragments dropped: their data was held already
    # Datagrams abandoned with their fragments: an overlap (RFC 5722), lengths
    # that disagree, no data, longer than 65,535 octets.
    reassembly_failures: int = 0
    reassembly_timeouts: int = 0  # datagrams abandoned: not whole in time
    fragments_memory_full: int = 0  # fragments dropped: the reassembly memory was full
    fragments_refused: int = 0  # IPv6 fragments refused with a Parameter Problem (RFC 8200 4.5)
    datagrams_fragmented: int = 0  # of ours, larger than the path MTU, sent in fragments
    fragments_created: int = 0  # the fragments they were sent in


def _unset(*_: Any) -> None:
    raise RuntimeError("this context belongs to no stack")


class Context:
    """The stack as its sockets see it (see the module's docstring).

    *now* is the time of the stack's latest call: what an application call
    between two stack calls (``close()``, say) starts its timers from.
    *time_wait* counts the connections in TIME-WAIT, against
    ``TcpConfig.max_time_wait``.
    """

    __slots__ = (
        "addresses",
        "closed",
        "emit",
        "emit_datagram",
        "learn_path_mtu",
        "mtu",
        "notify",
        "now",
        "opened",
        "path_mtu",
        "random",
        "schedule",
        "stats",
        "time_wait",
        "wake",
    )

    def __init__(
        self, addresses: tuple[bytes, ...], mtu: int, random: RandomSource, stats: NetStackStats
    ) -> None:
        self.addresses = addresses
        self.mtu = mtu
        self.random = random
        self.stats = stats
        self.now = 0.0
        self.time_wait = 0
        self.emit: Callable[[bytes], None] = _unset
        # A packet that may exceed the path MTU: sent in fragments if it does.
        self.emit_datagram: Callable[[bytes], None] = _unset
        self.notify: Callable[[Event], None] = _unset
        self.wake: Callable[[Any], None] = _unset
        self.schedule: Callable[[Any], None] = _unset
        self.opened: Callable[[Any], None] = _unset
        self.closed: Callable[[Any], None] = _unset
        # The path MTU to a destination (the MTU if none was learned), and a
        # lower one learned from a "fragmentation needed" or Packet Too Big.
        self.path_mtu: Callable[[bytes], int] = lambda _dst: self.mtu
        self.learn_path_mtu: Callable[[bytes, int], None] = _unset

    def source_address(self, dst: bytes) -> bytes:
        """Our address to send to *dst* from: the first of its family."""
        for a in self.addresses:
            if len(a) == len(dst):
                return a
        raise LocalProtocolError(f"no address of the family of {addr_str(dst)}")
