"""asyncio binding of :class:`~wireguard.netstack.stack.NetStack`, independent of WireGuard.

:class:`StackDriver` owns the I/O the stack itself never does: it feeds packets
in with the loop's clock, hands packets out through a callable, and keeps one
``loop.call_at`` armed at :meth:`NetStack.next_deadline` (no polling). On top it
offers asyncio's own stream API: :meth:`StackDriver.open_connection` and
:meth:`StackDriver.start_server` return genuine :class:`asyncio.StreamReader` /
:class:`asyncio.StreamWriter` objects, wired through a custom
:class:`asyncio.Transport` so that ``drain()``, ``write_eof()``, ``close()`` and
reader back-pressure behave as they do over a kernel socket: a paused reader
stops draining the TCP receive buffer, so the advertised window closes and the
remote sender slows down, end to end.

Work is batched per event-loop iteration: packets delivered in one iteration are
processed, and the resulting events and outgoing packets flushed once, which lets
ACKs coalesce as they would in a kernel's softirq.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from ..errors import LocalProtocolError
from .events import EchoReplyReceived
from .ip import addr_bytes, addr_str
from .stack import NetStack, StackEffects
from .tcp import (
    TcpClosed,
    TcpConnection,
    TcpEstablished,
    TcpIncoming,
    TcpListener,
    TcpReadable,
    TcpWritable,
)
from .udp import UdpReadable, UdpSocket

__all__ = ["StackDriver", "TcpServer"]

log = logging.getLogger(__name__)

ClientConnectedCallback = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None] | None
]

_DEFAULT_LIMIT = 2**16  # asyncio.streams' default reader limit
_HIGH_WATER = 64 * 1024  # asyncio's default write-buffer limits
_LOW_WATER = 16 * 1024


class StackDriver:
    """Runs a :class:`NetStack` on an asyncio loop.

    *send_ip* is called with every IP packet the stack wants to put into the
    tunnel; the tunnel calls :meth:`deliver_ip` with every packet it takes out.
    Create it inside a running loop (or pass *loop*).

    What the driver does not pass on is counted in :attr:`drops` by reason
    (the stack counts its own in ``stack.stats``): ``"send failed"`` (packets
    *send_ip* raised on), ``"after close"`` (packets delivered to a closed
    driver), ``"foreign datagram"`` (to a UDP endpoint connected to another
    address, which only hears its peer), ``"late echo reply"`` (no ping waits
    for it any more), ``"write after close"`` (bytes written to a closing TCP
    transport) and ``"sendto after close"`` (datagrams, to a closed UDP one).
    """

    def __init__(
        self,
        stack: NetStack,
        send_ip: Callable[[bytes], None],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.stack = stack
        self._send_ip = send_ip
        self._loop = loop or asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._flush_scheduled = False
        self._closed = False
        self._transports: dict[TcpConnection, _TcpTransport] = {}
        self._connecting: dict[TcpConnection, asyncio.Future[None]] = {}
        self._servers: dict[TcpListener, TcpServer] = {}
        self._udp: dict[UdpSocket, _UdpTransport] = {}
        self._pings: dict[tuple[str, int, int], asyncio.Future[float]] = {}
        self._ping_ident = itertools.count(int(self._loop.time() * 1000) & 0xFFFF)
        self.drops: Counter[str] = Counter()
        self._pending = StackEffects()

    # ---------------------------------------------------------- packet plumbing

    def deliver_ip(self, packet: bytes) -> None:
        """Process one IP packet from the tunnel (events and replies follow this turn)."""
        if self._closed:
            self.drops["after close"] += 1
            return
        self.stack.receive_packet(packet, self._loop.time(), self._pending)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and not self._closed:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._closed:
            return
        stack = self.stack
        out = self._pending
        now = self._loop.time()
        for _ in range(8):  # events may cause output, which never causes events; bounded
            self._process_events()
            stack.flush(now, out)
            packets, out.packets = out.packets, []
            for packet in packets:
                try:
                    self._send_ip(packet)
                except Exception:
                    self.drops["send failed"] += 1
                    log.exception("send_ip failed; packet dropped")
            if not packets and not out.events:
                break
        self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self.stack.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        at = self._timer_at
        self._timer = None
        self._timer_at = None
        # asyncio may run a handle up to one clock resolution early; never pass a
        # time before the deadline or the stack would ask to be woken again at once.
        now = self._loop.time()
        if at is not None and now < at:
            now = at
        self.stack.handle_timer(now, self._pending)
        self._flush()

    def _process_events(self) -> None:
        events, self._pending.events = self._pending.events, []
        for ev in events:
            if isinstance(ev, TcpReadable):
                t = self._transports.get(ev.conn)
                if t is not None:
                    t._read_ready()
            elif isinstance(ev, TcpWritable):
                t = self._transports.get(ev.conn)
                if t is not None:
                    t._write_ready()
            elif isinstance(ev, TcpEstablished):
                fut = self._connecting.pop(ev.conn, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif isinstance(ev, TcpClosed):
                fut = self._connecting.pop(ev.conn, None)
                if fut is not None and not fut.done():
                    fut.set_exception(ev.error or ConnectionRefusedError("connection closed"))
                t = self._transports.get(ev.conn)
                if t is not None:
                    t._conn_closed(ev.error)
            elif isinstance(ev, TcpIncoming):
                server = self._servers.get(ev.listener)
                if server is not None:
                    server._accept_all()
            elif isinstance(ev, UdpReadable):
                u = self._udp.get(ev.socket)
                if u is not None:
                    u._read_ready()
            elif isinstance(ev, EchoReplyReceived):
                fut_ping = self._pings.get((ev.src, ev.ident, ev.seq))
                if fut_ping is not None and not fut_ping.done():
                    fut_ping.set_result(ev.time)
                else:
                    self.drops["late echo reply"] += 1

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
        :class:`~.tcp.ConnectionRefused` / :class:`~.tcp.ConnectionTimedOut`).
        """
        conn = self.stack.tcp_connect(host, port, self._loop.time(), local_port=local_port)
        fut: asyncio.Future[None] = self._loop.create_future()
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
        loop = self._loop
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
    ) -> TcpServer:
        """Like :meth:`asyncio.loop.create_server` on one of the stack's addresses."""
        listener = self.stack.tcp_listen(port, host, backlog)
        server = TcpServer(self, listener, protocol_factory)
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
    ) -> TcpServer:
        """Like :func:`asyncio.start_server`: *client_connected_cb(reader, writer)*."""
        loop = self._loop

        def factory() -> asyncio.Protocol:
            reader = asyncio.StreamReader(limit=limit, loop=loop)
            return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

        return await self.create_server(factory, host, port, backlog=backlog)

    # --------------------------------------------------------------------- UDP

    async def create_datagram_endpoint(
        self,
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: tuple[str | None, int] | None = None,
        remote_addr: tuple[str, int] | None = None,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        """Like :meth:`asyncio.loop.create_datagram_endpoint` (IP literals only)."""
        host, port = local_addr if local_addr is not None else (None, 0)
        sock = self.stack.udp_bind(port, host)
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
        src = addr_str(addr_bytes(host))
        ident = next(self._ping_ident) & 0xFFFF
        key = (src, ident, 1)
        fut: asyncio.Future[float] = self._loop.create_future()
        self._pings[key] = fut
        start = self._loop.time()
        try:
            self.stack.ping(host, ident, 1, data)
            self._schedule_flush()
            async with asyncio.timeout(timeout):
                end = await fut
            return end - start
        finally:
            self._pings.pop(key, None)

    # ---------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Stop the timer and reset every connection (the tunnel is going away)."""
        if self._closed:
            return
        for server in list(self._servers.values()):
            server.close()
        for transport in list(self._transports.values()):
            transport.abort()
        for u in list(self._udp.values()):
            u.close()
        # Let the RSTs out, then stop.
        self._flush()
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class TcpServer:
    """What :meth:`StackDriver.start_server` returns; mirrors :class:`asyncio.Server`."""

    def __init__(
        self,
        driver: StackDriver,
        listener: TcpListener,
        protocol_factory: Callable[[], asyncio.Protocol],
    ) -> None:
        self._driver = driver
        self._listener = listener
        self._factory = protocol_factory
        self._closed_fut: asyncio.Future[None] = driver._loop.create_future()

    @property
    def port(self) -> int:
        return self._listener.port

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
        await asyncio.shield(self._closed_fut)

    async def start_serving(self) -> None:
        """Already serving from creation (the listener exists)."""

    async def __aenter__(self) -> TcpServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    def _accept_all(self) -> None:
        driver = self._driver
        while (conn := self._listener.accept()) is not None:
            protocol = self._factory()
            transport = _TcpTransport(driver, conn, protocol)
            protocol.connection_made(transport)
            transport._read_ready()


class _TcpTransport(asyncio.Transport):
    """A stream transport over a :class:`TcpConnection`.

    Writes go straight into the connection's send buffer; what does not fit waits
    here and counts as the transport's write buffer, against which the protocol
    is paused and resumed like any asyncio transport (64 KiB / 16 KiB).
    """

    def __init__(
        self, driver: StackDriver, conn: TcpConnection, protocol: asyncio.BaseProtocol
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
        self._loop = driver._loop
        self._conn = conn
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

    def write(self, data: bytes | bytearray | memoryview) -> None:  # type: ignore[override]
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
        driver: StackDriver,
        sock: UdpSocket,
        protocol: asyncio.DatagramProtocol,
        remote_addr: tuple[str, int] | None,
    ) -> None:
        super().__init__(
            extra={"sockname": sock.local_address, "peername": remote_addr, "udp_socket": sock}
        )
        self._driver = driver
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
        if addr is None:
            if self._remote is None:
                raise ValueError("no remote address: pass addr or set remote_addr")
            addr = self._remote
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
        self._driver._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def _read_ready(self) -> None:
        while not self._closing and (item := self._sock.recvfrom()) is not None:
            data, addr = item
            if self._remote is not None and addr != self._remote:
                self._driver.drops["foreign datagram"] += 1  # it only hears its peer
                continue
            self._protocol.datagram_received(data, addr)
