"""The asyncio binding of a :class:`~wireguard.netstack.NetStack`, independent of WireGuard.

:class:`StackBinding` is what every binding of the stack shares: one wake-up
routine and asyncio's own API on top. A wake-up takes one ``now``: the
stack's calls (packets in, or its timers), the events they raise handed to
the application (readers woken, writers resumed, connections accepted),
then one flush, which also carries everything the application answered in
those callbacks; the packets for the tunnel come out at the end, together.
Application calls between wake-ups (a write, a close) schedule one flush
for the loop's next turn, so an iteration's worth coalesces as ACKs do in a
kernel's softirq.

On top: :meth:`StackBinding.open_connection` and
:meth:`StackBinding.start_server` return genuine :class:`asyncio.StreamReader`
/ :class:`asyncio.StreamWriter` objects, wired through a custom
:class:`asyncio.Transport` so that ``drain()``, ``write_eof()``, ``close()``
and reader back-pressure behave as they do over a kernel socket: a paused
reader stops draining the TCP receive buffer, so the advertised window closes
and the remote sender slows down, end to end. Hosts are IP literals.

Where the packets go and who keeps the timer is a subclass's business:
:class:`StackDriver` hands them to a callable one by one and keeps its own
``loop.call_at``; :class:`~wireguard.io.rootless.RootlessTunnel` runs inside
a :class:`~wireguard.io.tunnel.Tunnel`'s wake-ups, on its clock and timer.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import itertools
import logging
import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, ClassVar

from ..errors import LocalProtocolError
from ..netstack import (
    EchoReplyReceived,
    Event,
    NetStack,
    StackEffects,
    TcpClosed,
    TcpConnection,
    TcpEstablished,
    TcpIncoming,
    TcpListener,
    TcpReadable,
    TcpWritable,
    UdpError,
    UdpReadable,
    UdpSocket,
)
from ..netstack.ip import addr_bytes, addr_str
from .deadline import DeadlineTimer

__all__ = ["ClientConnectedCallback", "StackBinding", "StackDriver", "TcpServer", "ip_literal"]

log = logging.getLogger(__name__)

ClientConnectedCallback = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None] | None
]

_DEFAULT_LIMIT = 2**16  # asyncio.streams' default reader limit
_HIGH_WATER = 64 * 1024  # asyncio's default write-buffer limits
_LOW_WATER = 16 * 1024
_SETTLE_ROUNDS = 8  # events may cause output, which never causes events; bounded


def ip_literal(host: str, what: str = "host") -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """*host* as an address; ValueError (one clear line) if it is a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(
            f"{what} {host!r} is not an IP address (names are not resolved inside the tunnel)"
        ) from None


class StackBinding(ABC):
    """A :class:`NetStack` on an asyncio loop, with asyncio's socket API.

    Subclasses provide :meth:`_transmit` (the packets of a wake-up the
    binding began itself) and, if they keep their own timer, :meth:`_rearm`.
    What the binding does not pass on is counted in :attr:`drops` by reason
    (the stack counts its own in ``stack.stats``): ``"after close"``
    (packets delivered to a closed binding), ``"foreign datagram"`` (to a
    UDP endpoint connected to another address, which only hears its peer),
    ``"late echo reply"`` (no ping waits for it any more), ``"write after
    close"`` (bytes written to a closing TCP transport) and ``"sendto after
    close"`` (datagrams, to a closed UDP one).
    """

    _not_running = "the stack's binding is not running"

    def __init__(self, stack: NetStack, *, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.stack = stack
        self._loop: asyncio.AbstractEventLoop | None = loop
        self._pending = StackEffects()  # what the stack handed over, not yet acted on
        self._flush_scheduled = False
        self._settling = False
        self._closed = False
        self._transports: dict[TcpConnection, _TcpTransport] = {}
        self._connecting: dict[TcpConnection, asyncio.Future[None]] = {}
        self._servers: dict[TcpListener, TcpServer] = {}
        self._udp: dict[UdpSocket, _UdpTransport] = {}
        self._pings: dict[tuple[str, int, int], asyncio.Future[float]] = {}
        self._ping_ident: Iterator[int] | None = None
        self.drops: Counter[str] = Counter()

    # ------------------------------------------------------------- wake-ups

    def receive_packets(self, packets: list[bytes], now: float) -> list[bytes]:
        """Packets out of the tunnel, in a wake-up at *now*: the stack takes
        them all, the application hears of it, and what both answer comes
        back (the packets for the tunnel, in order)."""
        if self._closed:
            self.drops["after close"] += len(packets)
            return []
        return self._settle(now, self.stack.receive_packets(packets, now, self._pending))

    def handle_timer(self, now: float) -> list[bytes]:
        """The stack's timers due at *now*, in a wake-up; the packets for the tunnel."""
        if self._closed:
            return []
        return self._settle(now, self.stack.handle_timer(now, self._pending))

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` is due, or None."""
        return None if self._closed else self.stack.next_deadline()

    def _settle(self, now: float, out: StackEffects) -> list[bytes]:
        """Events to the application, then the flush, until nothing new
        happens; every packet for the tunnel (the flush needs no scheduling
        meanwhile: this one comes after every callback)."""
        stack = self.stack
        self._settling = True
        try:
            for _ in range(_SETTLE_ROUNDS):
                if out.events:
                    events, out.events = out.events, []
                    self._dispatch(events)
                stack.flush(now, out)
                if not out.events:
                    break
        finally:
            self._settling = False
        if out.events:
            self._schedule_flush()  # what is left waits for the next turn
        packets, out.packets = out.packets, []
        return packets

    @abstractmethod
    def _transmit(self, packets: list[bytes], now: float) -> None:
        """Send the packets of a wake-up the binding began itself (a flush
        after application calls, its own timer, closing)."""

    def _rearm(self) -> None:  # noqa: B027 (optional hook: empty by default)
        """Keep the timer at :meth:`next_deadline` (if the subclass owns one)."""

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and not self._settling and not self._closed:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._closed or self._loop is None:
            return
        now = self._loop.time()
        self._transmit(self._settle(now, self._pending), now)
        self._rearm()

    def _dispatch(self, events: list[Event]) -> None:
        handlers = self._handlers
        for ev in events:
            handlers[type(ev)](self, ev)

    def _ready(self, ev: TcpReadable | TcpWritable) -> None:
        t = self._transports.get(ev.conn)
        if t is not None:
            t._read_ready() if ev.__class__ is TcpReadable else t._write_ready()

    def _established(self, ev: TcpEstablished) -> None:
        fut = self._connecting.pop(ev.conn, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _tcp_closed(self, ev: TcpClosed) -> None:
        fut = self._connecting.pop(ev.conn, None)
        if fut is not None and not fut.done():
            fut.set_exception(ev.error or ConnectionRefusedError("connection closed"))
        if (t := self._transports.get(ev.conn)) is not None:
            t._conn_closed(ev.error)

    def _incoming(self, ev: TcpIncoming) -> None:
        if (server := self._servers.get(ev.listener)) is not None:
            server._accept()

    def _udp_readable(self, ev: UdpReadable) -> None:
        if (u := self._udp.get(ev.socket)) is not None:
            u._read_ready()

    def _udp_error(self, ev: UdpError) -> None:
        if (u := self._udp.get(ev.socket)) is not None:
            u._error_received(ev.errno)

    def _echo_reply(self, ev: EchoReplyReceived) -> None:
        fut = self._pings.get((ev.src, ev.ident, ev.seq))
        if fut is not None and not fut.done():
            fut.set_result(ev.time)
        else:
            self.drops["late echo reply"] += 1

    # What each event of the stack makes the binding do.
    _handlers: ClassVar[dict[type, Callable[[Any, Any], None]]] = {
        TcpReadable: _ready,
        TcpWritable: _ready,
        TcpEstablished: _established,
        TcpClosed: _tcp_closed,
        TcpIncoming: _incoming,
        UdpReadable: _udp_readable,
        UdpError: _udp_error,
        EchoReplyReceived: _echo_reply,
    }

    # ------------------------------------------------------------ addresses

    def _running(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._closed:
            raise RuntimeError(self._not_running)
        return self._loop

    def _destination(self, host: str) -> str:
        """The address to reach *host* at (an IP literal); subclasses may refuse it."""
        return str(ip_literal(host))

    def _local(self, host: str | None) -> str | None:
        """One of the stack's addresses to bind to, or None for all of them."""
        return None if host in (None, "") else str(ip_literal(host, "address"))

    def _bind_error(self, exc: LocalProtocolError, local: str | None, port: int) -> Exception:
        """What the kernel's bind() raises (and so asyncio's create_server and
        create_datagram_endpoint) where the stack refused *local*:*port*:
        EADDRNOTAVAIL for an address that is not the stack's, EADDRINUSE for
        a port taken or no ephemeral port free; a port out of range as is."""
        if local is not None and addr_bytes(local) not in self.stack.addresses:
            return OSError(errno.EADDRNOTAVAIL, f"{exc} (cannot assign requested address)")
        if not 0 <= port < 65536:
            return exc
        return OSError(errno.EADDRINUSE, str(exc))

    # --------------------------------------------------------------------- TCP

    async def create_connection(
        self,
        protocol_factory: Callable[[], asyncio.Protocol],
        host: str,
        port: int,
        *,
        local_port: int | None = None,
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        """Like :meth:`asyncio.loop.create_connection`; *host* must be an IP literal.

        Raises :class:`ConnectionRefusedError` or :class:`TimeoutError` (the stack's
        :class:`~wireguard.netstack.ConnectionRefused` /
        :class:`~wireguard.netstack.ConnectionTimedOut`), an
        :class:`~wireguard.netstack.IcmpConnectionError` (an OSError with
        Linux's errno) if an ICMP error ends the connect, and
        :class:`ConnectionAbortedError` if the binding closes first.
        """
        loop = self._running()
        host = self._destination(host)
        conn = self.stack.tcp_connect(host, port, loop.time(), local_port=local_port)
        fut: asyncio.Future[None] = loop.create_future()
        self._connecting[conn] = fut
        self._schedule_flush()
        try:
            await fut
        except asyncio.CancelledError:
            self._connecting.pop(conn, None)
            conn.abort()
            self._schedule_flush()
            raise
        protocol = protocol_factory()
        transport = _TcpTransport(self, conn, protocol)
        protocol.connection_made(transport)
        transport._read_ready()
        return transport, protocol

    async def open_connection(
        self,
        host: str,
        port: int,
        *,
        limit: int = _DEFAULT_LIMIT,
        local_port: int | None = None,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Like :func:`asyncio.open_connection`, through the tunnel."""
        loop = self._running()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await self.create_connection(
            lambda: protocol, host, port, local_port=local_port
        )
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return reader, writer

    async def create_server(
        self,
        protocol_factory: Callable[[], asyncio.Protocol],
        host: str | None = None,
        port: int = 0,
        *,
        backlog: int | None = None,
        max_connections: int | None = None,
    ) -> TcpServer:
        """Like :meth:`asyncio.loop.create_server` on one of the stack's
        addresses (*host*; None: all of them). *max_connections* caps the
        connections accepted and open at once (None: no cap): beyond it
        connections wait in the listener's accept queue, which *backlog*
        bounds (then SYNs are dropped, counted in ``listen_overflows``).
        A port taken or an address not the stack's raises OSError with
        EADDRINUSE or EADDRNOTAVAIL, as bind() does."""
        self._running()
        if max_connections is not None and max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        local = self._local(host)
        try:
            listener = self.stack.tcp_listen(port, local, backlog)
        except LocalProtocolError as exc:
            raise self._bind_error(exc, local, port) from None
        server = TcpServer(self, listener, protocol_factory, max_connections)
        self._servers[listener] = server
        return server

    async def start_server(
        self,
        client_connected_cb: ClientConnectedCallback,
        host: str | None = None,
        port: int = 0,
        *,
        limit: int = _DEFAULT_LIMIT,
        backlog: int | None = None,
        max_connections: int | None = None,
    ) -> TcpServer:
        """Like :func:`asyncio.start_server`: *client_connected_cb(reader, writer)*
        (*max_connections* as for :meth:`create_server`)."""
        loop = self._running()

        def factory() -> asyncio.Protocol:
            reader = asyncio.StreamReader(limit=limit, loop=loop)
            return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

        return await self.create_server(
            factory, host, port, backlog=backlog, max_connections=max_connections
        )

    # --------------------------------------------------------------------- UDP

    async def create_datagram_endpoint(
        self,
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: tuple[str | None, int] | None = None,
        remote_addr: tuple[str, int] | None = None,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        """Like :meth:`asyncio.loop.create_datagram_endpoint`: *local_addr* is
        on the stack (default: an ephemeral port on all its addresses),
        *remote_addr* a host through the tunnel (IP literals only)."""
        self._running()
        if remote_addr is not None:
            remote_addr = (self._destination(remote_addr[0]), remote_addr[1])
        host, port = local_addr if local_addr is not None else (None, 0)
        local = self._local(host)
        try:
            sock = self.stack.udp_bind(port, local)
        except LocalProtocolError as exc:
            raise self._bind_error(exc, local, port) from None
        if remote_addr is not None:
            sock.connect(remote_addr)  # its ICMP errors come to error_received
        protocol = protocol_factory()
        transport = _UdpTransport(self, sock, protocol, remote_addr)
        self._udp[sock] = transport
        protocol.connection_made(transport)
        return transport, protocol

    # -------------------------------------------------------------------- ICMP

    async def ping(self, host: str, *, timeout: float = 5.0, data: bytes = b"") -> float:
        """Send one echo request and return the round-trip time in seconds.

        Raises :class:`TimeoutError` if no reply comes within *timeout*.
        """
        loop = self._running()
        host = self._destination(host)
        if self._ping_ident is None:
            self._ping_ident = itertools.count(int(loop.time() * 1000) & 0xFFFF)
        src = addr_str(addr_bytes(host))
        ident = next(self._ping_ident) & 0xFFFF
        key = (src, ident, 1)
        fut: asyncio.Future[float] = loop.create_future()
        self._pings[key] = fut
        start = loop.time()
        try:
            self.stack.ping(host, ident, 1, data)
            self._schedule_flush()
            async with asyncio.timeout(timeout):
                end = await fut
            return end - start
        finally:
            self._pings.pop(key, None)

    # ---------------------------------------------------------------- lifetime

    def _shutdown(self) -> None:
        """Reset every connection and close every server and endpoint; the
        RSTs leave at once (the tunnel is going away). A connect or ping still
        waiting fails with ConnectionAbortedError (ECONNABORTED)."""
        if self._closed:
            return
        for server in list(self._servers.values()):
            server.close()
        for transport in list(self._transports.values()):
            transport.abort()
        for u in list(self._udp.values()):
            u.close()
        # A connect or ping still waiting would wait forever: nothing runs
        # the stack's timers or hears its answers any more.
        waiters: list[asyncio.Future[Any]] = [*self._connecting.values(), *self._pings.values()]
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(
                    ConnectionAbortedError(errno.ECONNABORTED, "the stack was closed")
                )
        for conn in self._connecting:
            conn.abort()
        self._connecting.clear()
        if self._loop is not None:
            now = self._loop.time()
            self._transmit(self._settle(now, self._pending), now)
        self._closed = True


class StackDriver(StackBinding):
    """Runs a :class:`NetStack` on an asyncio loop with packets in and out
    one at a time: *send_ip* is called with every IP packet the stack wants
    to put into the tunnel; the tunnel calls :meth:`deliver_ip` with every
    packet it takes out (processed in a flush later in the loop's turn, with
    the others that came meanwhile). The driver keeps one ``loop.call_at``
    armed at the stack's next deadline (no polling). Create it inside a
    running loop (or pass *loop*).

    Besides the binding's :attr:`drops`, ``"send failed"`` counts packets
    *send_ip* raised on.
    """

    _not_running = "the stack driver is closed"

    def __init__(
        self,
        stack: NetStack,
        send_ip: Callable[[bytes], None],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(stack, loop=loop or asyncio.get_running_loop())
        self._send_ip = send_ip
        assert self._loop is not None
        self._timer = DeadlineTimer(self._loop, self._on_timer)

    def deliver_ip(self, packet: bytes) -> None:
        """Process one IP packet from the tunnel (events and replies follow this turn)."""
        if self._closed:
            self.drops["after close"] += 1
            return
        assert self._loop is not None
        self.stack.receive_packet(packet, self._loop.time(), self._pending)
        self._schedule_flush()

    def _transmit(self, packets: list[bytes], now: float) -> None:
        for packet in packets:
            try:
                self._send_ip(packet)
            except Exception:
                self.drops["send failed"] += 1
                log.exception("send_ip failed; packet dropped")

    def _rearm(self) -> None:
        self._timer.set(self.next_deadline())

    def _on_timer(self, now: float) -> None:
        self._transmit(self.handle_timer(now), now)
        self._rearm()

    def close(self) -> None:
        """Stop the timer and reset every connection (the tunnel is going away)."""
        self._shutdown()
        self._timer.cancel()


class TcpServer:
    """What :meth:`StackBinding.start_server` returns; mirrors :class:`asyncio.Server`.

    With *max_connections*, connections beyond that many open at once are
    not accepted until one closes: they wait in the listener's accept queue
    (:attr:`waiting`), as they would behind a kernel server that stops
    calling ``accept()``, and the queue's bound (the backlog) then drops
    SYNs, counted by the stack.
    """

    def __init__(
        self,
        driver: StackBinding,
        listener: TcpListener,
        protocol_factory: Callable[[], asyncio.Protocol],
        max_connections: int | None = None,
    ) -> None:
        self._driver = driver
        self._listener = listener
        self._factory = protocol_factory
        self.max_connections = max_connections
        self.active = 0  # connections accepted and not yet closed
        self._closed_fut: asyncio.Future[None] = driver._running().create_future()

    @property
    def port(self) -> int:
        return self._listener.port

    @property
    def waiting(self) -> int:
        """Established connections in the accept queue, not yet accepted."""
        return self._listener.pending

    @property
    def sockets(self) -> tuple[()]:
        return ()

    def is_serving(self) -> bool:
        return not self._listener.closed

    def close(self) -> None:
        """Stop listening; connections already accepted stay open (as asyncio does)."""
        if self._listener.closed:
            return
        self._listener.close()
        self._driver._servers.pop(self._listener, None)
        self._driver._schedule_flush()
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed_fut)

    async def serve_forever(self) -> None:
        """Until the server closes; cancelling it closes the server (as asyncio's)."""
        try:
            await asyncio.shield(self._closed_fut)
        except asyncio.CancelledError:
            self.close()
            raise

    async def start_serving(self) -> None:
        """Already serving from creation (the listener exists)."""

    async def __aenter__(self) -> TcpServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    def _accept(self) -> None:
        """Take connections from the accept queue, up to the cap."""
        driver = self._driver
        cap = self.max_connections
        while (cap is None or self.active < cap) and (conn := self._listener.accept()) is not None:
            self.active += 1
            protocol = self._factory()
            transport = _TcpTransport(driver, conn, protocol, on_lost=self._lost)
            protocol.connection_made(transport)
            transport._read_ready()

    def _lost(self) -> None:
        self.active -= 1
        if not self._listener.closed and self._listener.pending:
            self._accept()


class _TcpTransport(asyncio.Transport):
    """A stream transport over a :class:`TcpConnection`.

    Writes go straight into the connection's send buffer; what does not fit waits
    here and counts as the transport's write buffer, against which the protocol
    is paused and resumed like any asyncio transport (64 KiB / 16 KiB).
    """

    def __init__(
        self,
        driver: StackBinding,
        conn: TcpConnection,
        protocol: asyncio.BaseProtocol,
        *,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            extra={
                "peername": conn.remote_address,
                "sockname": conn.local_address,
                "socket": None,
                "tcp_connection": conn,
            }
        )
        self._driver = driver
        self._loop = driver._running()
        self._conn = conn
        self._on_lost = on_lost
        self._protocol: Any = protocol
        self._pending = bytearray()
        self._closing = False
        self._eof_requested = False
        self._eof_delivered = False
        self._reading_paused = False
        self._protocol_paused = False
        self._lost = False
        self._high = _HIGH_WATER
        self._low = _LOW_WATER
        driver._transports[conn] = self

    # BaseTransport
    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[no-any-return]

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Flush what is buffered, then close (FIN); ``connection_lost(None)`` follows."""
        if self._closing:
            return
        self._closing = True
        self._reading_paused = True
        if not self._pending:
            self._finish_close()
        self._driver._schedule_flush()

    def abort(self) -> None:
        """Reset the connection at once, dropping buffered data."""
        if self._lost:
            return
        self._closing = True
        self._pending.clear()
        self._conn.abort()
        self._driver._schedule_flush()
        self._connection_lost(None)

    # ReadTransport
    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closing

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if self._closing or not self._reading_paused:
            return
        self._reading_paused = False
        self._loop.call_soon(self._read_ready)

    # WriteTransport
    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = _HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def get_write_buffer_size(self) -> int:
        return len(self._pending)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_requested:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data:
            return
        if self._closing or self._lost:
            self._driver.drops["write after close"] += len(data)
            return
        if self._pending:
            self._pending += data
        else:
            try:
                n = self._conn.send(data)
            except (ConnectionError, LocalProtocolError) as exc:
                self._fatal(exc)
                return
            if n < len(data):
                self._pending += memoryview(data)[n:]
            self._driver._schedule_flush()
        self._maybe_pause_protocol()

    def write_eof(self) -> None:
        if self._eof_requested or self._closing:
            return
        self._eof_requested = True
        if not self._pending:
            self._conn.shutdown()
            self._driver._schedule_flush()

    def can_write_eof(self) -> bool:
        return True

    # Driven by the driver's events
    def _read_ready(self) -> None:
        if self._lost:
            return
        conn = self._conn
        protocol = self._protocol
        while not self._reading_paused and not self._closing:
            data = conn.receive()
            if not data:
                break
            protocol.data_received(data)
        if self._reading_paused or self._closing:
            return
        if conn.at_eof and not self._eof_delivered:
            self._eof_delivered = True
            keep_open = protocol.eof_received()
            if not keep_open:
                self.close()
        self._driver._schedule_flush()  # reading may have opened the window

    def _write_ready(self) -> None:
        pending = self._pending
        if pending and not self._lost:
            try:
                n = self._conn.send(pending)
            except (ConnectionError, LocalProtocolError) as exc:
                self._fatal(exc)
                return
            del pending[:n]
            self._driver._schedule_flush()
        if not pending:
            if self._closing:
                self._finish_close()
            elif self._eof_requested:
                self._conn.shutdown()
        self._maybe_resume_protocol()

    def _conn_closed(self, error: Exception | None) -> None:
        if error is not None:
            self._fatal(error)
        else:
            # Orderly end of both directions: deliver what is left (and the EOF).
            self._read_ready()

    # Helpers
    def _finish_close(self) -> None:
        self._conn.close()
        self._driver._schedule_flush()
        self._loop.call_soon(self._connection_lost, None)

    def _fatal(self, exc: Exception) -> None:
        self._pending.clear()
        self._closing = True
        self._connection_lost(exc)

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._driver._transports.pop(self._conn, None)
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._protocol = None
            if self._on_lost is not None:
                self._on_lost()

    def _maybe_pause_protocol(self) -> None:
        if not self._protocol_paused and len(self._pending) > self._high and not self._lost:
            self._protocol_paused = True
            try:
                self._protocol.pause_writing()
            except Exception:
                log.exception("protocol.pause_writing() failed")

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and len(self._pending) <= self._low and not self._lost:
            self._protocol_paused = False
            try:
                self._protocol.resume_writing()
            except Exception:
                log.exception("protocol.resume_writing() failed")


class _UdpTransport(asyncio.DatagramTransport):
    """A datagram transport over a :class:`UdpSocket`."""

    def __init__(
        self,
        driver: StackBinding,
        sock: UdpSocket,
        protocol: asyncio.DatagramProtocol,
        remote_addr: tuple[str, int] | None,
    ) -> None:
        super().__init__(
            extra={"sockname": sock.local_address, "peername": remote_addr, "udp_socket": sock}
        )
        self._driver = driver
        self._loop = driver._running()
        self._sock = sock
        self._protocol: Any = protocol
        self._remote = (
            (addr_str(addr_bytes(remote_addr[0])), remote_addr[1]) if remote_addr else None
        )
        self._closing = False

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[no-any-return]

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def is_closing(self) -> bool:
        return self._closing

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if self._closing:
            self._driver.drops["sendto after close"] += 1
            return
        remote = self._remote
        # As asyncio's connected datagram transport: its peer only.
        if (
            remote is not None
            and addr is not None
            and ((addr_str(addr_bytes(addr[0])), addr[1]) != remote)
        ):
            raise ValueError(f"Invalid address: must be None or {remote}")
        if addr is None:
            if remote is None:
                raise ValueError("no remote address: pass addr or set remote_addr")
            addr = remote
        self._sock.sendto(bytes(data), addr)
        self._driver._schedule_flush()

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._sock.close()
        self._driver._udp.pop(self._sock, None)
        self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def _error_received(self, err: int) -> None:
        # As asyncio's own datagram transport: the socket's error, an OSError
        # (ConnectionRefusedError for ECONNREFUSED), to error_received.
        if not self._closing:
            self._protocol.error_received(OSError(err, os.strerror(err)))

    def _read_ready(self) -> None:
        while not self._closing and (item := self._sock.recvfrom()) is not None:
            data, addr = item
            if self._remote is not None and addr != self._remote:
                self._driver.drops["foreign datagram"] += 1  # it only hears its peer
                continue
            self._protocol.datagram_received(data, addr)
