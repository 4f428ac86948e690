"""The network stack object: IP packets in, IP packets out, sockets in between.

:class:`NetStack` is what a tunnel binding drives, in the shape of the
:class:`~wireguard.device.Device`: every call takes ``now`` (any monotonic
float of seconds) and an optional accumulator, a :class:`StackEffects`, and
returns it with the IP packets to put into the tunnel and the events that
happened. :meth:`NetStack.receive_packets` takes packets out of the tunnel,
:meth:`NetStack.flush` sends what the sockets have pending (data written, ACKs
due, windows opened: everything since the last flush, coalesced),
:meth:`NetStack.handle_timer` runs the timers, due at
:meth:`NetStack.next_deadline`. What an application call makes between two
calls (a RST from ``abort()``, a UDP datagram) waits in the stack and comes
with the next call's effects. The stack never reads a clock or touches a
socket.

Usage, with an imaginary tunnel::

    stack = NetStack(["10.0.0.2/32"], mtu=1420)
    conn = stack.tcp_connect("10.0.0.1", 80, now)
    tunnel.send(stack.flush(now).packets)
    ...
    out = stack.receive_packets(packets_from_tunnel, now)
    for event in out.events:
        ...                       # the application reacts: conn.send(), ...
    stack.flush(now, out)         # ... and its answers leave with the ACKs
    tunnel.send(out.packets)
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from ..errors import LocalProtocolError
from ..ipheader import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP
from ..timerheap import TimerHeap
from .context import Context, NetStackStats, RandomSource
from .events import EchoReplyReceived, Event
from .fragment import Reassembler, fragment, ipv6_fragment_problem, quotes_icmp_error
from .icmp import (
    ICMP_ECHO_REPLY,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    IcmpError,
    IcmpErrorLimit,
    build_echo,
    build_parameter_problem,
    build_port_unreachable,
    build_protocol_unreachable,
    build_reassembly_time_exceeded,
    echo_reply_for,
    echo_reply_length,
    icmp_error,
    is_single_host,
    parse_icmp,
    parse_quote,
)
from .ip import (
    PARAM_PROBLEM_NEXT_HEADER,
    ExtensionHeaderDiscard,
    FragmentArrived,
    NetstackError,
    addr_bytes,
    addr_str,
    ipv6_upper_layer_pointer,
    parse_ip,
)
from .tcp import ACK, RST, SYN, TcpConfig, TcpConnection, TcpListener, parse_tcp
from .tcp.segment import rst_for_unexpected
from .udp import DEFAULT_UDP_QUEUE, UdpSocket, parse_udp

__all__ = ["NetStack", "NetStackStats", "RandomSource", "StackEffects"]

# RFC 6335 section 6: the dynamic (ephemeral) port range.
EPHEMERAL_PORTS: Final = (49152, 65535)

# The path MTU cache: a lower path MTU learned for a destination (RFC 1191
# 6.3, RFC 8201 4) is kept for new connections to it for PMTU_EXPIRES, Linux's
# ip_rt_mtu_expires (10 minutes), after which the full MTU is tried again.
# Only a TCP connection's validated "fragmentation needed" / Packet Too Big
# fills it, so it names hosts we talk to; at most PMTU_CACHE_SIZE of them
# (the oldest entry goes first), as Linux bounds its route exceptions.
PMTU_EXPIRES: Final = 600.0
PMTU_CACHE_SIZE: Final = 1024

# What an ICMP error's quote must hold of the transport header: the ports
# (TCP and UDP alike) and TCP's sequence number, its first 8 octets.
_QUOTED_PORTS_SEQ: Final = struct.Struct("!HHI")

AddressLike = str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(slots=True)
class StackEffects:
    """What must happen after a call of the stack: put these IP packets into
    the tunnel (oldest first), and these events happened. Pass one to several
    calls to collect a batch, as with the Device's ``Effects``."""

    packets: list[bytes] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.packets or self.events)


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
        self._icmp_errors = IcmpErrorLimit()  # RFC 4443 2.4(f), RFC 1812 4.3.2.8

        # What the sockets emitted and notified since the last call handed it over.
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._pending_output: dict[TcpConnection, None] = {}  # connections to flush
        self._arrived: dict[TcpConnection, None] = {}  # segments came: deadlines to file
        self._timers: TimerHeap[TcpConnection] = TimerHeap()
        ctx = self._ctx = Context(self.addresses, mtu, random, self.stats)
        ctx.emit = self._out.append
        ctx.notify = self._events.append
        ctx.wake = self._pending_output.setdefault
        ctx.schedule = self._reschedule
        ctx.opened = self._opened
        ctx.closed = self._closed
        self._pmtu: dict[bytes, tuple[int, float]] = {}  # dst -> (MTU, expiry)
        ctx.path_mtu = self._path_mtu
        ctx.learn_path_mtu = self._learn_path_mtu
        ctx.emit_datagram = self._emit_datagram
        self._reassembly = {4: Reassembler(4, self.stats), 6: Reassembler(6, self.stats)}
        # IPv4 Identifications of the datagrams we fragment: a counter from a
        # random start (RFC 6864 4.1: unique per source, destination and
        # protocol within the datagram's lifetime). IPv6's are drawn afresh
        # for each datagram (RFC 7739; Linux's __ipv6_select_ident).
        self._ident = int.from_bytes(random(2), "big")

        self._tcp: dict[tuple[bytes, int, bytes, int], TcpConnection] = {}
        self._tcp_listeners: dict[tuple[bytes | None, int], TcpListener] = {}
        self._tcp_port_refs: dict[int, int] = {}
        self._udp: dict[tuple[bytes | None, int], UdpSocket] = {}

    # ------------------------------------------------------------ packet I/O

    def receive_packets(
        self, packets: Iterable[bytes], now: float, out: StackEffects | None = None
    ) -> StackEffects:
        """Process IP packets that came out of the tunnel (one wake-up's worth).

        Malformed packets, packets for other addresses and unknown protocols are
        counted in :attr:`stats` and dropped: a binding never has to catch.
        Answers that cannot wait (RSTs, duplicate ACKs, echo replies) are in
        the effects; the rest leaves with the next :meth:`flush`.
        """
        out = StackEffects() if out is None else out
        self._ctx.now = now
        for packet in packets:
            self._receive(packet, now)
        self._file_arrived()
        return self._hand_over(out)

    def receive_packet(
        self, packet: bytes, now: float, out: StackEffects | None = None
    ) -> StackEffects:
        """One IP packet, as :meth:`receive_packets`."""
        out = StackEffects() if out is None else out
        self._ctx.now = now
        self._receive(packet, now)
        self._file_arrived()
        return self._hand_over(out)

    def flush(self, now: float, out: StackEffects | None = None) -> StackEffects:
        """What the sockets have for the tunnel now. Connections with pending
        work (new data, a due ACK, an opened window) build their segments
        here, so everything since the last flush is coalesced; *now* stamps
        RTT measurements and retransmission timers."""
        out = StackEffects() if out is None else out
        self._ctx.now = now
        pending = self._pending_output
        while pending:
            conns = list(pending)
            pending.clear()
            for conn in conns:
                conn.output(now)
                self._reschedule(conn)
        return self._hand_over(out)

    def _hand_over(self, out: StackEffects) -> StackEffects:
        sent = self._out
        if sent:
            out.packets += sent
            self.stats.packets_sent += len(sent)
            sent.clear()
        events = self._events
        if events:
            out.events += events
            events.clear()
        return out

    def _receive(self, packet: bytes, now: float, whole: bool = False) -> None:
        """One packet out of the tunnel (*whole*: one reassembly joined,
        not counted again in ``packets_received``)."""
        if not whole:
            self.stats.packets_received += 1
        try:
            pkt = parse_ip(packet, whole)
            if pkt.dst not in self._addr_set:
                self.stats.not_for_us += 1
                return
            proto = pkt.proto
            if proto == IPPROTO_TCP:
                seg = parse_tcp(pkt)
                conn = self._tcp.get((pkt.dst, seg.dport, pkt.src, seg.sport))
                if conn is not None:
                    conn.segment_arrives(seg, now)
                    self._arrived[conn] = None  # its deadline is filed after the batch
                    return
                listener = self._tcp_listeners.get((pkt.dst, seg.dport))
                if listener is None:
                    listener = self._tcp_listeners.get((None, seg.dport))
                if listener is not None:
                    control = seg.flags & (SYN | ACK | RST)
                    if control == SYN:
                        listener.syn_arrives(pkt, seg, now)
                        return
                    if control & RST:
                        self.stats.tcp_segments_rejected += 1
                        return  # RFC 9293 3.10.7.2: a RST to a listener is ignored
                    if control == ACK and listener.ack_arrives(pkt, seg, now):
                        return  # a SYN cookie came back
                # CLOSED (3.10.7.1), or an ACK to a listener (3.10.7.2, second check).
                self.stats.tcp_no_connection += 1
                rst = rst_for_unexpected(pkt, seg)
                if rst is not None:
                    self._out.append(rst)
            elif proto == IPPROTO_UDP:
                sport, dport, data = parse_udp(pkt)
                sock = self._udp.get((pkt.dst, dport)) or self._udp.get((None, dport))
                if sock is not None:
                    sock.deliver(data, pkt.src, sport)
                else:
                    self.stats.udp_no_socket += 1
                    if self._icmp_error_allowed(pkt.src, now):
                        self._out.append(build_port_unreachable(packet, pkt))
            elif (proto == IPPROTO_ICMP and pkt.version == 4) or (
                proto == IPPROTO_ICMPV6 and pkt.version == 6
            ):
                msg = parse_icmp(pkt)
                length = echo_reply_length(pkt, msg)
                if length is not None:
                    reply = echo_reply_for(pkt, msg)
                    assert reply is not None and len(reply) == length
                    self.stats.icmp_echo_answered += 1
                    # As large as the request (RFC 792, RFC 4443 4.2): a
                    # request that came in fragments is answered in fragments.
                    self._emit_datagram(reply)
                elif msg.type == (ICMP_ECHO_REPLY if pkt.version == 4 else ICMPV6_ECHO_REPLY):
                    self._events.append(
                        EchoReplyReceived(addr_str(pkt.src), msg.ident, msg.seq, msg.body, now)
                    )
                else:
                    error = icmp_error(pkt.version, msg)
                    if error is None:
                        self.stats.icmp_unhandled += 1  # NDP, redirects: nothing acts on them
                    else:
                        # Never answered (RFC 1122 3.2.2, RFC 4443 2.4(e.1)).
                        self._icmp_error_arrives(pkt.version, error, msg.body, now)
            else:
                self.stats.unknown_protocol += 1
                if self._icmp_error_allowed(pkt.src, now):  # RFC 1122 3.2.2.1, RFC 8200 4
                    if pkt.version == 4:
                        self._out.append(build_protocol_unreachable(packet, pkt))
                    else:
                        pointer = ipv6_upper_layer_pointer(packet)
                        self._out.append(
                            build_parameter_problem(
                                packet, pkt.src, pkt.dst, PARAM_PROBLEM_NEXT_HEADER, pointer
                            )
                        )
        except FragmentArrived as frag:
            self._fragment_arrives(frag, now)
        except ExtensionHeaderDiscard as discard:
            self._extension_header_discard(packet, discard, now)
        except NetstackError:
            self.stats.malformed += 1

    # ----------------------------------------------------------- fragments

    def _fragment_arrives(self, frag: FragmentArrived, now: float) -> None:
        """A fragment for reassembly (see :mod:`.fragment`): the datagram it
        completes is received as if it had come whole."""
        if frag.dst not in self._addr_set:
            self.stats.not_for_us += 1
            return
        self._reassembly_expires(now)  # what is due goes first, as a kernel's timer would
        if frag.version == 6:
            problem = ipv6_fragment_problem(frag)
            if problem is not None:
                self.stats.fragments_refused += 1
                if not self._about_icmp_error(frag) and self._icmp_error_allowed(frag.src, now):
                    code, pointer = problem
                    self._out.append(
                        build_parameter_problem(frag.packet, frag.src, frag.dst, code, pointer)
                    )
                return
        whole = self._reassembly[frag.version].add(frag, now)
        if whole is not None:
            self._receive(whole, now, whole=True)

    @staticmethod
    def _about_icmp_error(frag: FragmentArrived) -> bool:
        return frag.offset == 0 and quotes_icmp_error(
            frag.version, frag.packet, frag.proto, frag.data, frag.end
        )

    def _reassembly_expires(self, now: float) -> None:
        """Abandon what did not come whole in time; a Time Exceeded to the
        sender of each that had its first fragment (RFC 792, RFC 8200 4.5)."""
        for reassembler in self._reassembly.values():
            for first in reassembler.expire(now):
                if not first.quotes_icmp_error() and self._icmp_error_allowed(first.src, now):
                    self._out.append(
                        build_reassembly_time_exceeded(first.packet, first.src, first.dst)
                    )

    @property
    def reassembling(self) -> int:
        """Datagrams whose fragments are being reassembled."""
        return sum(len(r) for r in self._reassembly.values())

    def _emit_datagram(self, packet: bytes) -> None:
        """Send one of our packets that may exceed the path MTU to its
        destination: in fragments if it does (RFC 791 3.2, RFC 8200 4.5), as
        a kernel's UDP socket does by default (IP_PMTUDISC_WANT)."""
        v4 = packet[0] >> 4 == 4
        mtu = self._path_mtu(packet[16:20] if v4 else packet[24:40])
        if len(packet) <= mtu:
            self._out.append(packet)
            return
        if v4:
            self._ident = ident = (self._ident + 1) & 0xFFFF
        else:
            # Linux draws again on 0; one draw and 1 instead keeps a
            # deterministic source of zeros from looping.
            ident = int.from_bytes(self._random(4), "big") or 1
        pieces = fragment(packet, mtu, ident)
        self.stats.datagrams_fragmented += 1
        self.stats.fragments_created += len(pieces)
        self._out += pieces

    def _icmp_error_arrives(self, version: int, error: IcmpError, quote: bytes, now: float) -> None:
        """An ICMP error about a packet we sent (the start of which it
        quotes): to its TCP connection or UDP socket, which acts on it as
        Linux's tcp_v4_err / __udp4_lib_err (and their IPv6 twins) do.
        Counted in ``icmp_errors_ignored`` unless acted on."""
        stats = self.stats
        quoted = parse_quote(version, quote)
        if quoted is not None and quoted[0] in self._addr_set and len(quoted[3]) >= 8:
            src, dst, proto, transport = quoted
            sport, dport, seq = _QUOTED_PORTS_SEQ.unpack_from(transport)
            if proto == IPPROTO_TCP:
                conn = self._tcp.get((src, sport, dst, dport))
                if conn is not None and conn.icmp_error(error, seq, now):
                    self._arrived[conn] = None  # its deadline is filed after the batch
                    if error.mtu is not None:
                        stats.icmp_pmtu_reductions += 1
                    else:
                        stats.icmp_errors_reported += 1
                    return
            elif proto == IPPROTO_UDP:
                sock = self._udp.get((src, sport)) or self._udp.get((None, sport))
                if sock is not None and sock.icmp_error(error, dst, dport):
                    stats.icmp_errors_reported += 1
                    return
        stats.icmp_errors_ignored += 1

    def _path_mtu(self, dst: bytes) -> int:
        entry = self._pmtu.get(dst)
        if entry is None:
            return self.mtu
        if self._ctx.now >= entry[1]:
            del self._pmtu[dst]  # expired: try the full MTU again (RFC 1191 6.3)
            return self.mtu
        return entry[0]

    def _learn_path_mtu(self, dst: bytes, mtu: int) -> None:
        cache = self._pmtu
        cache.pop(dst, None)
        if len(cache) >= PMTU_CACHE_SIZE:
            del cache[next(iter(cache))]  # the oldest
        cache[dst] = (mtu, self._ctx.now + PMTU_EXPIRES)

    @property
    def path_mtu_entries(self) -> int:
        """Destinations the path MTU cache holds (at most PMTU_CACHE_SIZE)."""
        return len(self._pmtu)

    def _extension_header_discard(
        self, packet: bytes, discard: ExtensionHeaderDiscard, now: float
    ) -> None:
        """An IPv6 packet an option or Routing header said to discard (RFC 8200
        4.2, 4.4): counted, and answered with a Parameter Problem if asked for."""
        if discard.dst not in self._addr_set:
            self.stats.not_for_us += 1
            return
        self.stats.ipv6_option_discarded += 1
        if not discard.report:
            return
        upper = discard.upper
        if (
            discard.proto == IPPROTO_ICMPV6
            and upper < discard.end
            and packet[upper] < ICMPV6_ECHO_REQUEST
        ):
            return  # RFC 4443 2.4(e.1): no error about an ICMPv6 error message (types 0-127)
        if self._icmp_error_allowed(discard.src, now):
            self._out.append(
                build_parameter_problem(
                    packet, discard.src, discard.dst, discard.code, discard.pointer
                )
            )

    def _icmp_error_allowed(self, src: bytes, now: float) -> bool:
        """Whether an ICMP error about a packet from *src* may be sent at *now*.

        Never to a source that is not a single host (RFC 1122 3.2.2, RFC 4443
        2.4(e.6)); otherwise within the rate limit (RFC 4443 2.4(f), RFC 1812
        4.3.2.8), what is over it counted; each error costs a random 0-2
        tokens (see ICMP_ERRORS_BURST).
        """
        if not is_single_host(src):
            return False
        # One draw, never a loop until a value fits (a deterministic source
        # may repeat one value): 2**32 % 3 == 1, a bias of one in 2**32.
        cost = int.from_bytes(self._random(4), "big") % 3
        if self._icmp_errors.allow(now, cost):
            return True
        self.stats.icmp_errors_rate_limited += 1
        return False

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must be called next, or None if no timer runs."""
        due = self._tcp_deadline()
        for reassembler in self._reassembly.values():
            t = reassembler.next_deadline()
            if t is not None and (due is None or t < due):
                due = t
        return due

    def _tcp_deadline(self) -> float | None:
        timers = self._timers
        while (first := timers.first()) is not None:
            t, conn = first
            actual = conn.deadline()
            if actual is not None and actual <= t:
                return t
            # The timer moved later (RTO restarted, ACK sent) or stopped: re-file it.
            timers.cancel(conn)
            if actual is not None:
                timers.schedule(conn, actual)
        return None

    def handle_timer(self, now: float, out: StackEffects | None = None) -> StackEffects:
        """Run every timer due at *now* (retransmission, persist, delayed ACK, TIME-WAIT)."""
        out = StackEffects() if out is None else out
        self._ctx.now = now
        timers = self._timers
        while (conn := timers.pop_due(now)) is not None:
            conn.on_timer(now)
            self._reschedule(conn)
        self._reassembly_expires(now)
        return self._hand_over(out)

    def _file_arrived(self) -> None:
        """File the deadlines of the connections segments came for, once per
        connection and batch (nothing reads the heap in between)."""
        arrived = self._arrived
        if arrived:
            for conn in arrived:
                self._reschedule(conn)
            arrived.clear()

    def _reschedule(self, conn: TcpConnection) -> None:
        d = conn.deadline()
        if d is not None:
            self._timers.schedule(conn, d)

    # --------------------------------------------------------------------- TCP

    def tcp_connect(
        self,
        remote_addr: AddressLike,
        remote_port: int,
        now: float,
        local_port: int | None = None,
        local_addr: AddressLike | None = None,
    ) -> TcpConnection:
        """Active open (RFC 9293 3.10.1): the SYN is queued at once (it leaves
        with the next call's effects).

        A :class:`~.tcp.TcpEstablished` or :class:`~.tcp.TcpClosed` event
        tells how it went. ``send()`` may be called right away; the data leaves
        after the handshake.
        """
        self._ctx.now = now
        dst = addr_bytes(remote_addr)
        if not 0 < remote_port < 65536:
            raise LocalProtocolError(f"invalid port {remote_port}")
        src = addr_bytes(local_addr) if local_addr is not None else self._ctx.source_address(dst)
        if src not in self._addr_set:
            raise LocalProtocolError(f"{addr_str(src)} is not one of our addresses")
        if len(src) != len(dst):
            raise LocalProtocolError("address family mismatch")
        if local_port is None:
            local_port = self._ephemeral_port(lambda p: p not in self._tcp_port_refs)
        elif (src, local_port, dst, remote_port) in self._tcp:
            raise LocalProtocolError("connection already exists (address in use)")
        conn = TcpConnection(self._ctx, self.tcp_config, src, local_port, dst, remote_port)
        self._opened(conn)
        conn.active_open(now)
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
        cfg = self.tcp_config
        listener = TcpListener(self._ctx, cfg, a, port, backlog or cfg.backlog)
        self._tcp_listeners[(a, port)] = listener
        self._tcp_port_refs[port] = self._tcp_port_refs.get(port, 0) + 1
        return listener

    @property
    def tcp_connections(self) -> list[TcpConnection]:
        """Every connection the stack still holds (TIME-WAIT included)."""
        return list(self._tcp.values())

    @property
    def time_wait(self) -> int:
        """Connections in TIME-WAIT now (at most ``TcpConfig.max_time_wait``)."""
        return self._ctx.time_wait

    def _opened(self, conn: TcpConnection) -> None:
        self._tcp[conn.key] = conn
        p = conn.local_port
        self._tcp_port_refs[p] = self._tcp_port_refs.get(p, 0) + 1

    def _closed(self, sock: TcpConnection | TcpListener | UdpSocket) -> None:
        if isinstance(sock, TcpConnection):
            if self._tcp.get(sock.key) is sock:
                del self._tcp[sock.key]
                self._unref_port(sock.local_port)
            self._pending_output.pop(sock, None)
            self._timers.cancel(sock)
        elif isinstance(sock, TcpListener):
            key = (sock.addr, sock.port)
            if self._tcp_listeners.get(key) is sock:
                del self._tcp_listeners[key]
                self._unref_port(sock.port)
        else:
            ukey = (sock.addr, sock.port)
            if self._udp.get(ukey) is sock:
                del self._udp[ukey]

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
        sock = UdpSocket(self._ctx, a, port, self._udp_queue_limit)
        self._udp[(a, port)] = sock
        return sock

    # -------------------------------------------------------------------- ICMP

    def ping(self, remote_addr: AddressLike, ident: int, seq: int, data: bytes = b"") -> None:
        """Send an ICMP/ICMPv6 echo request (with the next call's effects); the
        reply comes as an EchoReplyReceived event."""
        dst = addr_bytes(remote_addr)
        src = self._ctx.source_address(dst)
        header = 20 if len(dst) == 4 else 40
        if header + 8 + len(data) > self.mtu:
            raise LocalProtocolError("echo request larger than the MTU")
        self._out.append(build_echo(src, dst, ident & 0xFFFF, seq & 0xFFFF, data, reply=False))

    # -------------------------------------------------------------- internals

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
