"""The network stack object: IP packets in, IP packets out, sockets in between.

:class:`NetStack` is what a tunnel binding drives. It never reads a clock or
touches a socket: every entry point that can change timers takes ``now`` (any
monotonic float of seconds), and the binding asks :meth:`NetStack.next_deadline`
when to call :meth:`NetStack.handle_timer` next. Output is pulled with
:meth:`NetStack.packets_to_send`, events with :meth:`NetStack.next_event`.

Usage, with an imaginary tunnel::

    stack = NetStack(["10.0.0.2/32"], mtu=1420)
    conn = stack.tcp_connect("10.0.0.1", 80, now)
    for packet in stack.packets_to_send():
        tunnel.send(packet)
    ...
    stack.receive_packet(packet_from_tunnel, now)
    while (event := stack.next_event()) is not None:
        ...
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from ..errors import LocalProtocolError
from .events import EchoReplyReceived, Event
from .icmp import (
    ICMP_ECHO_REPLY,
    ICMPV6_ECHO_REPLY,
    build_echo,
    build_port_unreachable,
    echo_reply_for,
    parse_icmp,
)
from .ip import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    NetstackError,
    addr_bytes,
    addr_str,
    parse_ip,
)
from .tcp import (
    ACK,
    RST,
    SYN,
    TcpConfig,
    TcpConnection,
    TcpListener,
    parse_tcp,
    rst_for_unexpected,
)
from .udp import DEFAULT_UDP_QUEUE, UdpSocket, parse_udp

__all__ = ["NetStack", "NetStackStats", "RandomSource"]

RandomSource = Callable[[int], bytes]
"""Where randomness comes from: a function returning *n* random bytes."""

# RFC 6335 section 6: the dynamic (ephemeral) port range.
EPHEMERAL_PORTS: Final = (49152, 65535)

AddressLike = str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass
class NetStackStats:
    """Counters of what was dropped or done, for diagnostics."""

    packets_received: int = 0
    packets_sent: int = 0
    malformed: int = 0
    not_for_us: int = 0
    unknown_protocol: int = 0
    tcp_no_connection: int = 0
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
    icmp_unhandled: int = 0  # ICMP messages other than echo request and reply: dropped


class NetStack:
    """A userspace IPv4/IPv6 host: TCP, UDP and ICMP echo over raw IP packets.

    *addresses* are ours, as in wg-quick's ``Address =`` (``"10.0.0.2/32"``,
    ``"fd00::2/128"``, or plain addresses); packets to any other destination are
    dropped. *mtu* bounds every packet we send (MSS and UDP size derive from it).
    *random* supplies ISNs and ephemeral port choices (RFC 6528, RFC 6056).
    """

    def __init__(
        self,
        addresses: Iterable[AddressLike | ipaddress.IPv4Interface | ipaddress.IPv6Interface],
        mtu: int = 1420,
        *,
        tcp_config: TcpConfig | None = None,
        random: RandomSource = os.urandom,
        udp_queue_limit: int = DEFAULT_UDP_QUEUE,
        ephemeral_ports: tuple[int, int] = EPHEMERAL_PORTS,
    ) -> None:
        addrs: list[bytes] = []
        for a in addresses:
            if isinstance(a, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
                addrs.append(a.ip.packed)
            elif isinstance(a, str) and "/" in a:
                addrs.append(ipaddress.ip_interface(a).ip.packed)
            else:
                addrs.append(addr_bytes(a))
        if not addrs:
            raise ValueError("a NetStack needs at least one address")
        has_v6 = any(len(a) == 16 for a in addrs)
        if mtu < 576 or (has_v6 and mtu < 1280):
            # RFC 791 (576) and RFC 8200 section 5 (1280) minimum MTUs.
            raise ValueError(f"MTU {mtu} is below the protocol minimum")
        self.mtu = mtu
        self.addresses: tuple[bytes, ...] = tuple(addrs)
        self._addr_set = frozenset(addrs)
        self.tcp_config = tcp_config or TcpConfig()
        self._random = random
        self._udp_queue_limit = udp_queue_limit
        self._ephemeral = ephemeral_ports
        self.stats = NetStackStats()
        self._now = 0.0

        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._pending_output: dict[TcpConnection, None] = {}
        self._timers: list[tuple[float, int, TcpConnection]] = []
        self._timer_seq = itertools.count()

        self._tcp: dict[tuple[bytes, int, bytes, int], TcpConnection] = {}
        self._tcp_listeners: dict[tuple[bytes | None, int], TcpListener] = {}
        self._tcp_port_refs: dict[int, int] = {}
        self._time_wait = 0  # connections in TIME-WAIT (bounded by max_time_wait)
        self._udp: dict[tuple[bytes | None, int], UdpSocket] = {}

    # ------------------------------------------------------------ packet I/O

    def receive_packet(self, packet: bytes, now: float) -> None:
        """Process one IP packet that came out of the tunnel.

        Malformed packets, packets for other addresses and unknown protocols are
        counted in :attr:`stats` and dropped: a binding never has to catch.
        """
        self._now = now
        self.stats.packets_received += 1
        try:
            pkt = parse_ip(packet)
            if pkt.dst not in self._addr_set:
                self.stats.not_for_us += 1
                return
            proto = pkt.proto
            if proto == IPPROTO_TCP:
                seg = parse_tcp(pkt)
                conn = self._tcp.get((pkt.dst, seg.dport, pkt.src, seg.sport))
                if conn is not None:
                    conn._segment_arrives(seg, now)
                    self._reschedule(conn)
                    return
                listener = self._tcp_listeners.get((pkt.dst, seg.dport))
                if listener is None:
                    listener = self._tcp_listeners.get((None, seg.dport))
                if listener is not None:
                    control = seg.flags & (SYN | ACK | RST)
                    if control == SYN:
                        listener._syn_arrives(pkt, seg, now)
                        return
                    if control & RST:
                        return  # RFC 9293 3.10.7.2: a RST to a listener is ignored
                    if control == ACK and listener._ack_arrives(pkt, seg, now):
                        return  # a SYN cookie came back
                # CLOSED (3.10.7.1), or an ACK to a listener (3.10.7.2, second check).
                self.stats.tcp_no_connection += 1
                rst = rst_for_unexpected(pkt, seg)
                if rst is not None:
                    self._output(rst)
            elif proto == IPPROTO_UDP:
                sport, dport, data = parse_udp(pkt)
                sock = self._udp.get((pkt.dst, dport)) or self._udp.get((None, dport))
                if sock is not None:
                    sock._deliver(data, pkt.src, sport)
                else:
                    self.stats.udp_no_socket += 1
                    self._output(build_port_unreachable(packet, pkt))
            elif (proto == IPPROTO_ICMP and pkt.version == 4) or (
                proto == IPPROTO_ICMPV6 and pkt.version == 6
            ):
                msg = parse_icmp(pkt)
                reply = echo_reply_for(pkt, msg)
                if reply is not None:
                    self.stats.icmp_echo_answered += 1
                    self._output(reply)
                elif msg.type == (ICMP_ECHO_REPLY if pkt.version == 4 else ICMPV6_ECHO_REPLY):
                    self._event(
                        EchoReplyReceived(addr_str(pkt.src), msg.ident, msg.seq, msg.body, now)
                    )
                else:
                    self.stats.icmp_unhandled += 1  # errors, NDP: nothing here acts on them
            else:
                self.stats.unknown_protocol += 1
        except NetstackError:
            self.stats.malformed += 1

    def packets_to_send(self, now: float | None = None) -> list[bytes]:
        """IP packets to put into the tunnel, oldest first.

        Connections with pending work (new data, a due ACK, an opened window)
        build their segments here, so everything since the last call is
        coalesced. *now*, if given, is the time to stamp RTT measurements and
        retransmission timers with; otherwise the last time seen is used.
        """
        if now is not None:
            self._now = now
        pending = self._pending_output
        while pending:
            conns = list(pending)
            pending.clear()
            for conn in conns:
                conn._output(self._now)
                self._reschedule(conn)
        out = self._out
        self._out = []
        self.stats.packets_sent += len(out)
        return out

    def next_event(self) -> Event | None:
        """The oldest event not yet taken, or None."""
        if self._events:
            return self._events.popleft()
        return None

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must be called next, or None if no timer runs."""
        timers = self._timers
        while timers:
            t, _, conn = timers[0]
            if conn._heap_at != t:
                heapq.heappop(timers)  # superseded by an earlier entry
                continue
            actual = conn._deadline()
            if actual is not None and actual <= t:
                return t
            # The timer moved later (RTO restarted, ACK sent): re-file it.
            heapq.heappop(timers)
            conn._heap_at = None
            self._reschedule(conn)
        return None

    def handle_timer(self, now: float) -> None:
        """Run every timer due at *now* (retransmission, persist, delayed ACK, TIME-WAIT)."""
        self._now = now
        timers = self._timers
        while timers and timers[0][0] <= now:
            t, _, conn = heapq.heappop(timers)
            if conn._heap_at != t:
                continue
            conn._heap_at = None
            conn._on_timer(now)
            self._reschedule(conn)

    def _reschedule(self, conn: TcpConnection) -> None:
        # Lazy timer heap: an entry is only pushed when a connection's deadline
        # moves earlier; later moves are found when the old entry comes up.
        d = conn._deadline()
        if d is not None and (conn._heap_at is None or d < conn._heap_at):
            conn._heap_at = d
            heapq.heappush(self._timers, (d, next(self._timer_seq), conn))

    # --------------------------------------------------------------------- TCP

    def tcp_connect(
        self,
        remote_addr: AddressLike,
        remote_port: int,
        now: float,
        local_port: int | None = None,
        local_addr: AddressLike | None = None,
    ) -> TcpConnection:
        """Active open (RFC 9293 3.10.1): the SYN is queued at once.

        A :class:`~.events.TcpEstablished` or :class:`~.events.TcpClosed` event
        tells how it went. ``send()`` may be called right away; the data leaves
        after the handshake.
        """
        self._now = now
        dst = addr_bytes(remote_addr)
        if not 0 < remote_port < 65536:
            raise LocalProtocolError(f"invalid port {remote_port}")
        src = addr_bytes(local_addr) if local_addr is not None else self._source_address(dst)
        if src not in self._addr_set:
            raise LocalProtocolError(f"{addr_str(src)} is not one of our addresses")
        if len(src) != len(dst):
            raise LocalProtocolError("address family mismatch")
        if local_port is None:
            local_port = self._ephemeral_port(lambda p: p not in self._tcp_port_refs)
        elif (src, local_port, dst, remote_port) in self._tcp:
            raise LocalProtocolError("connection already exists (address in use)")
        conn = TcpConnection(self, src, local_port, dst, remote_port, now)
        self._tcp_register(conn)
        conn._active_open(now)
        self._reschedule(conn)
        return conn

    def tcp_listen(
        self, port: int, addr: AddressLike | None = None, backlog: int | None = None
    ) -> TcpListener:
        """Passive open on *port* (all our addresses, or *addr*).

        *backlog* (default ``TcpConfig.backlog``) bounds the listener's SYN queue
        and its accept queue, each, as in Linux; see :class:`~.tcp.TcpListener`.
        """
        a = addr_bytes(addr) if addr not in (None, "") else None
        if a is not None and a not in self._addr_set:
            raise LocalProtocolError(f"{addr_str(a)} is not one of our addresses")
        if port == 0:
            port = self._ephemeral_port(lambda p: p not in self._tcp_port_refs)
        if not 0 < port < 65536:
            raise LocalProtocolError(f"invalid port {port}")
        if (a, port) in self._tcp_listeners or (
            a is not None and (None, port) in self._tcp_listeners
        ):
            raise LocalProtocolError(f"port {port} is already listening (address in use)")
        listener = TcpListener(self, a, port, backlog or self.tcp_config.backlog)
        self._tcp_listeners[(a, port)] = listener
        self._tcp_port_refs[port] = self._tcp_port_refs.get(port, 0) + 1
        return listener

    @property
    def tcp_connections(self) -> list[TcpConnection]:
        """Every connection the stack still holds (TIME-WAIT included)."""
        return list(self._tcp.values())

    def _tcp_register(self, conn: TcpConnection) -> None:
        self._tcp[conn.key] = conn
        p = conn.local_port
        self._tcp_port_refs[p] = self._tcp_port_refs.get(p, 0) + 1

    def _tcp_release(self, conn: TcpConnection) -> None:
        if self._tcp.get(conn.key) is conn:
            del self._tcp[conn.key]
            self._unref_port(conn.local_port)
        self._pending_output.pop(conn, None)

    def _tcp_unlisten(self, listener: TcpListener) -> None:
        key = (listener._addr, listener.port)
        if self._tcp_listeners.get(key) is listener:
            del self._tcp_listeners[key]
            self._unref_port(listener.port)

    def _unref_port(self, port: int) -> None:
        n = self._tcp_port_refs.get(port, 0) - 1
        if n > 0:
            self._tcp_port_refs[port] = n
        else:
            self._tcp_port_refs.pop(port, None)

    # --------------------------------------------------------------------- UDP

    def udp_bind(self, port: int = 0, addr: AddressLike | None = None) -> UdpSocket:
        """A UDP socket on *port* (0: an ephemeral one), on all our addresses or *addr*."""
        a = addr_bytes(addr) if addr not in (None, "") else None
        if a is not None and a not in self._addr_set:
            raise LocalProtocolError(f"{addr_str(a)} is not one of our addresses")
        if port == 0:
            port = self._ephemeral_port(
                lambda p: (None, p) not in self._udp and (a, p) not in self._udp
            )
        if not 0 < port < 65536:
            raise LocalProtocolError(f"invalid port {port}")
        if (a, port) in self._udp or (None, port) in self._udp:
            raise LocalProtocolError(f"UDP port {port} is in use")
        sock = UdpSocket(self, a, port, self._udp_queue_limit)
        self._udp[(a, port)] = sock
        return sock

    def _udp_unbind(self, sock: UdpSocket) -> None:
        key = (sock._addr, sock.port)
        if self._udp.get(key) is sock:
            del self._udp[key]

    # -------------------------------------------------------------------- ICMP

    def ping(self, remote_addr: AddressLike, ident: int, seq: int, data: bytes = b"") -> None:
        """Send an ICMP/ICMPv6 echo request; the reply comes as an EchoReplyReceived event."""
        dst = addr_bytes(remote_addr)
        src = self._source_address(dst)
        header = 20 if len(dst) == 4 else 40
        if header + 8 + len(data) > self.mtu:
            raise LocalProtocolError("echo request larger than the MTU")
        self._output(build_echo(src, dst, ident & 0xFFFF, seq & 0xFFFF, data, reply=False))

    # -------------------------------------------------------------- internals

    def _source_address(self, dst: bytes) -> bytes:
        for a in self.addresses:
            if len(a) == len(dst):
                return a
        raise LocalProtocolError(f"no address of the family of {addr_str(dst)}")

    def _ephemeral_port(self, free: Callable[[int], bool]) -> int:
        # RFC 6056 section 3.3.1 (algorithm 1): a random start, then sequential search.
        low, high = self._ephemeral
        count = high - low + 1
        start = int.from_bytes(self._random(2), "big") % count
        for i in range(count):
            port = low + (start + i) % count
            if free(port):
                return port
        raise LocalProtocolError("no free ephemeral port")

    def _output(self, packet: bytes) -> None:
        self._out.append(packet)

    def _event(self, event: Event) -> None:
        self._events.append(event)

    def _want_output(self, conn: TcpConnection) -> None:
        self._pending_output[conn] = None
