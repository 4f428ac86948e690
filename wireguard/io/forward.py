"""Port forwarding through a rootless tunnel, like ``ssh -L`` / ``ssh -R``
(the runtime; ``python -m wireguard forward`` is its command, in
:mod:`wireguard.cli.forward`).

A WireGuard peer is on the other end and no privileges are needed here: the
tunnel is a :class:`~wireguard.io.rootless.RootlessTunnel` whose userspace
TCP/IP stack owns the configuration's ``[Interface] Address``.

``-L [udp:][BIND_ADDR:]PORT:HOST:HOSTPORT``
    Listen on this host's BIND_ADDR:PORT (default 127.0.0.1, ``*`` for all);
    every connection is carried through the tunnel to HOST:HOSTPORT (an IP
    address behind a peer, or a name: resolved through the tunnel by the
    config's ``DNS =`` servers for each connection or flow, as
    :meth:`RootlessTunnel.resolve <wireguard.io.rootless.RootlessTunnel.resolve>`
    does, the cache keeping answers for their TTL).
``-R [udp:][STACK_ADDR:]PORT:LOCAL_HOST:LOCAL_PORT``
    Listen on the stack's address PORT (reachable by peers through the
    tunnel); every connection is passed to LOCAL_HOST:LOCAL_PORT on this host
    (a name there is this host's: the host's resolver answers it).

IPv6 addresses go in brackets: ``-L [::1]:8080:[fd00::1]:80``. UDP forwards
keep one flow per client address (its own port on the other side), expired
after ``--udp-timeout`` seconds without traffic. A forward holds at most
``--udp-flows`` flows (default 1024): a new client beyond that evicts the least
recently active flow, as a full NAT table does, and the status counts the
evictions. Each ``-R udp:`` flow is a kernel socket: :func:`fit_descriptors`
raises the soft descriptor limit as far as those caps need, and where the hard
limit does not allow it, lowers the caps rather than leave TCP without sockets.

A TCP forward relays at most ``--max-connections`` connections at once
(default 256; each holds a kernel socket and the stack's buffers): beyond it
a ``-R`` forward leaves connections in the stack's accept queue (its backlog
bounds it, then SYNs are dropped and counted by the stack), accepting one
each time one closes, as a kernel server that stops calling ``accept()``;
a ``-L`` forward refuses local connections, counted.

Bytes a TCP client sends before its connection through the tunnel (or to the
local service) is up are kept and relayed first, the sender paused after 64 KiB.

What happens to a connection (a side that cannot be reached, a reset) is
logged on the ``wireguard.io.forward`` logger; every forward counts what it
carried, evicted and could not pass on in its :class:`Counters`.
"""

from __future__ import annotations

import abc
import asyncio
import errno
import ipaddress
import logging
import os
import resource
import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import LocalProtocolError, WireGuardError
from .rootless import RootlessTunnel, format_bytes

__all__ = [
    "DEFAULT_TCP_CONNECTIONS",
    "DEFAULT_UDP_FLOWS",
    "Counters",
    "Forward",
    "ForwardOptions",
    "ForwardSpec",
    "ForwardSpecError",
    "fit_descriptors",
    "make_forward",
    "parse_forward",
    "plan_descriptors",
]

log = logging.getLogger(__name__)


class ForwardSpecError(ValueError):
    """A ``-L`` / ``-R`` specification that cannot be parsed."""


@dataclass(frozen=True)
class ForwardOptions:
    """How the forwards behave (the command's options)."""

    connect_timeout: float = 30.0  # give up on a connection's other side after this long
    udp_timeout: float = 60.0  # forget a UDP flow idle this long
    udp_flows: int = 1024  # flows per UDP forward (DEFAULT_UDP_FLOWS)
    max_connections: int = 256  # open connections per TCP forward (DEFAULT_TCP_CONNECTIONS)


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class ForwardSpec:
    """One ``-L`` or ``-R`` argument."""

    kind: str  # "L": local listener -> tunnel; "R": stack listener -> local service
    proto: str  # "tcp" or "udp"
    bind_host: str | None  # None: all addresses
    bind_port: int
    host: str
    port: int

    def __str__(self) -> str:
        bind = _fmt(self.bind_host or ("*" if self.kind == "L" else "stack"), self.bind_port)
        return f"-{self.kind} {self.proto} {bind} -> {_fmt(self.host, self.port)}"


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_fields(text: str) -> list[str]:
    """Split on ':' outside brackets; a bracketed field loses its brackets."""
    fields: list[str] = []
    i = 0
    while True:
        if text.startswith("[", i):
            end = text.find("]", i)
            if end < 0:
                raise ForwardSpecError("unclosed '[' in an IPv6 address")
            fields.append(text[i + 1 : end])
            i = end + 1
            if i < len(text) and text[i] != ":":
                raise ForwardSpecError(f"':' expected after ']' in {text!r}")
        else:
            end = text.find(":", i)
            if end < 0:
                end = len(text)
            fields.append(text[i:end])
            i = end
        if i >= len(text):
            return fields
        i += 1  # the ':'


def _port(text: str, what: str, *, zero: bool = False) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise ForwardSpecError(f"{what} {text!r} is not a port number") from None
    low = 0 if zero else 1
    if not low <= value <= 65535:
        raise ForwardSpecError(f"{what} {value} is out of range ({low}..65535)")
    return value


def _ip(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ForwardSpecError(
            f"{what} {text!r} is not an IP address"
        ) from None


def _host(text: str, what: str) -> str:
    """An IP address (normalised) or a DNS name (checked, kept as written)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    from ..dns import DNSNameError, encode_name

    try:
        encode_name(text)
    except DNSNameError as exc:
        raise ForwardSpecError(
            f"{what} {text!r} is neither an IP address nor a name: {exc}"
        ) from None
    if any(c.isspace() or c in "/@" for c in text):
        raise ForwardSpecError(f"{what} {text!r} is neither an IP address nor a name")
    return text


def parse_forward(text: str, kind: str) -> ForwardSpec:
    """Parse one ``-L`` (*kind* "L") or ``-R`` (*kind* "R") argument."""
    flag = f"-{kind} {text}"
    proto = "tcp"
    body = text
    for prefix in ("udp:", "tcp:"):
        if body.lower().startswith(prefix):
            proto, body = prefix[:3], body[4:]
            break
    try:
        fields = _split_fields(body)
        if len(fields) == 3:
            bind_text, (port_text, host, hostport_text) = None, fields
        elif len(fields) == 4:
            bind_text, port_text, host, hostport_text = fields
        else:
            form = "port:host:hostport" if kind == "L" else "port:local_host:local_port"
            raise ForwardSpecError(f"expected [udp:][bind_address:]{form}")
        # 0: a free port, for -L and, as ssh(1) allows, -R (the start-up line names it).
        bind_port = _port(port_text, "listening port", zero=True)
        port = _port(hostport_text, "destination port")
        if not host:
            raise ForwardSpecError("the destination host is empty")
        if kind == "L":
            # The local listener: ssh's default is the loopback address.
            if bind_text is None:
                bind: str | None = "127.0.0.1"
            elif bind_text in ("", "*"):
                bind = None
            else:
                bind = _ip(bind_text, "bind address") if bind_text != "localhost" else bind_text
            host = _host(host, "destination")
        else:
            # The listener is on the stack (one of its addresses, or all); the
            # destination a local service, which the host's resolver may name.
            bind = None if bind_text in (None, "", "*") else _ip(bind_text, "stack address")
    except ForwardSpecError as exc:
        raise ForwardSpecError(f"{flag}: {exc}") from None
    return ForwardSpec(kind, proto, bind, bind_port, host, port)


# ------------------------------------------------------------------------ counters


@dataclass
class Counters:
    active: int = 0  # open connections or live UDP flows
    total: int = 0
    failed: int = 0  # connections whose other side could not be reached
    to_tunnel: int = 0  # bytes carried into the tunnel
    from_tunnel: int = 0  # bytes carried out of it
    datagrams_to_tunnel: int = 0
    datagrams_from_tunnel: int = 0
    discarded: int = 0  # TCP bytes read for a side already gone (never relayed)
    overflows: int = 0  # connections reset: their side ignored pause_reading()
    evicted: int = 0  # UDP flows dropped to make room (--udp-flows)
    refused: int = 0  # -L connections refused: --max-connections were open
    dropped: int = 0  # UDP datagrams not relayed (backlog full, flow gone, too large for IPv4/IPv6)
    unreachable: int = 0  # ICMP errors on a flow's socket (the destination dropped one)

    def line(self, proto: str) -> str:
        what = "conns" if proto == "tcp" else "flows"
        text = (
            f"{self.active} {what} open, {self.total} total"
            + (f", {self.failed} failed" if self.failed else "")
            + (f", {self.evicted} evicted" if self.evicted else "")
            + (f", {self.refused} refused (connection cap)" if self.refused else "")
            + f", to tunnel {format_bytes(self.to_tunnel)}"
            + f", from tunnel {format_bytes(self.from_tunnel)}"
        )
        if proto == "udp":
            text += f" ({self.datagrams_to_tunnel}/{self.datagrams_from_tunnel} datagrams)"
        losses = [
            (self.discarded, "bytes discarded (their other side was gone)"),
            (self.overflows, "reset (reading did not pause)"),
            (self.dropped, "datagrams dropped"),
            (self.unreachable, "ICMP errors"),
        ]
        for n, why in losses:
            if n:
                text += f", {n} {why}"
        return text


# ----------------------------------------------------------------- TCP relaying


# Bytes of the accepted side that arrive before its other side is connected
# wait in the link: up to _HOLD_PAUSE, then reading pauses until the connection
# is up. (Pausing in connection_made is not enough: CPython up to 3.11.3,
# Debian 12's python3 among them, registers the reader after connection_made
# whatever it did, gh-103607.) A transport that goes on delivering past
# _HOLD_MAX although paused gets its connection reset, counted as an overflow:
# never a silent loss in the middle of a stream.
_HOLD_PAUSE = 64 * 1024
_HOLD_MAX = 1 << 20


class _Side(asyncio.Protocol):
    """One socket of a relayed connection (the kernel's or the stack's)."""

    def __init__(self, link: _Link, index: int) -> None:
        self.link = link
        self.index = index
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.link.made(self)

    def data_received(self, data: bytes) -> None:
        self.link.data(self.index, data)

    def eof_received(self) -> bool:
        return self.link.eof(self.index)

    def pause_writing(self) -> None:
        # Our write buffer to this side is full: stop reading the other side, so
        # back-pressure reaches the sender (a closing TCP window on either stack).
        self.link.write_full[self.index] = True
        self.link.update_reading(1 - self.index)

    def resume_writing(self) -> None:
        self.link.write_full[self.index] = False
        self.link.update_reading(1 - self.index)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.lost(self.index, exc)


class _Link:
    """A relayed connection: side 0 accepted, side 1 opened for it.
    *to_tunnel_from* is the side whose bytes go into the tunnel.

    It counts as active (holds one of the forward's --max-connections) until
    both its sides are gone and the opening of side 1 has ended: a client
    that leaves while side 1 is being opened has that connect cancelled (no
    point connecting for it), and frees its slot only once the cancelled
    connect has released its socket."""

    def __init__(self, counters: Counters, to_tunnel_from: int, name: str = "") -> None:
        self.counters = counters
        self.name = name
        self.sides: list[_Side | None] = [None, None]
        self.to_tunnel_from = to_tunnel_from
        self.eofs = [False, False]
        self.write_full = [False, False]  # a side's write buffer is over its high-water mark
        self.held = True  # side 1 is not connected yet: side 0's bytes wait in pending
        self.pending = bytearray()
        self.done = False  # a side is gone: the other is closed
        self.gone = [False, False]  # connection_lost seen, per side
        self.connecting: asyncio.Task[Any] | None = None  # opening side 1, until it is done
        self.released = False  # no longer counted in counters.active
        self.broken = False  # side 1 failed or was abandoned: side 0 is reset
        counters.active += 1
        counters.total += 1

    def made(self, side: _Side) -> None:
        self.sides[side.index] = side
        if side.index == 0 and self.broken and side.transport is not None:
            # Side 1 failed before side 0 was made (at once: no route, no
            # name server), so there was nothing to reset then.
            side.transport.abort()

    def update_reading(self, index: int) -> None:
        """Pause or resume reading side *index*: paused while the other side's
        write buffer is full, or while its bytes are held and over the bound."""
        side = self.sides[index]
        if side is None or side.transport is None or side.transport.is_closing():
            return
        if self.write_full[1 - index] or (
            index == 0 and self.held and len(self.pending) >= _HOLD_PAUSE
        ):
            side.transport.pause_reading()
        else:
            side.transport.resume_reading()

    def connected(self) -> None:
        """Side 1 is connected: what side 0 sent meanwhile (and its EOF) goes first."""
        self.held = False
        pending, self.pending = self.pending, bytearray()
        side0, side1 = self.sides
        if self.done or side0 is None or side0.transport is None:
            self.counters.discarded += len(pending)
            if side1 is not None and side1.transport is not None:
                side1.transport.close()
            return
        if pending:
            self.data(0, bytes(pending))
        if self.eofs[0]:
            self.eofs[0] = False
            if not self.eof(0):
                return
        self.update_reading(0)

    def failed(self) -> None:
        self.broken = True
        self.counters.failed += 1
        self.counters.discarded += len(self.pending)
        self.pending.clear()
        side0 = self.sides[0]
        if side0 is not None and side0.transport is not None:
            side0.transport.abort()

    def data(self, index: int, data: bytes) -> None:
        if index == 0 and self.held:
            self.pending += data
            if len(self.pending) > _HOLD_MAX:
                self._overflow()
            else:
                self.update_reading(0)
            return
        other = self.sides[1 - index]
        if other is None or other.transport is None or other.transport.is_closing():
            self.counters.discarded += len(data)
            return
        if index == self.to_tunnel_from:
            self.counters.to_tunnel += len(data)
        else:
            self.counters.from_tunnel += len(data)
        other.transport.write(data)

    def _overflow(self) -> None:
        self.counters.overflows += 1
        self.counters.discarded += len(self.pending)
        log.warning(
            f"{self.name}: reset a connection: {len(self.pending)} bytes arrived while "
            "reading was paused (more than the forwarder holds)"
        )
        self.pending.clear()
        side0 = self.sides[0]
        if side0 is not None and side0.transport is not None:
            side0.transport.abort()

    def eof(self, index: int) -> bool:
        self.eofs[index] = True
        if index == 0 and self.held:
            return True  # passed on by connected(), after the bytes held
        other = self.sides[1 - index]
        if all(self.eofs):
            for side in self.sides:
                if side is not None and side.transport is not None:
                    side.transport.close()
            return False
        if other is not None and other.transport is not None:
            if other.transport.can_write_eof():
                other.transport.write_eof()
            else:  # pragma: no cover - both transports here can
                other.transport.close()
        return True  # keep our writing half open (TCP half-close)

    def abandoned(self) -> None:
        """The opening of side 1 was cancelled (side 0 went, or the forward
        closes): side 0 cannot be relayed."""
        self.broken = True
        self.counters.discarded += len(self.pending)
        self.pending.clear()
        side0 = self.sides[0]
        if side0 is not None and side0.transport is not None and not self.gone[0]:
            side0.transport.abort()

    def opened(self, task: asyncio.Task[Any]) -> None:
        """The task opening side 1 is done (connected, failed or cancelled)."""
        self.connecting = None
        if task.cancelled():
            self.abandoned()
        self._release()

    def _release(self) -> None:
        side1 = self.sides[1]
        if (
            not self.released
            and self.connecting is None
            and self.gone[0]
            and (side1 is None or self.gone[1])
        ):
            self.released = True
            self.counters.active -= 1

    def lost(self, index: int, exc: Exception | None) -> None:
        self.gone[index] = True
        if index == 0 and self.pending:
            self.counters.discarded += len(self.pending)
            self.pending.clear()
        if index == 0 and self.connecting is not None:  # (a no-op once it is done)
            self.connecting.cancel()  # nobody to connect for any more
        other = self.sides[1 - index]
        if other is not None and other.transport is not None and not other.transport.is_closing():
            if exc is not None:
                other.transport.abort()
            else:
                other.transport.close()
        self.done = True
        self._release()


# ----------------------------------------------------------------------- forwards


class Forward(abc.ABC):
    def __init__(self, spec: ForwardSpec, tunnel: RootlessTunnel, options: ForwardOptions):
        self.spec = spec
        self.tunnel = tunnel
        self.options = options
        self.counters = Counters()
        self.where = ""  # what is listening, after start()
        self._tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @abc.abstractmethod
    async def start(self) -> None:
        """Open the listener (a local socket or one on the stack)."""

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def expire(self, now: float) -> None:  # noqa: B027 - a hook: only UDP forwards have flows
        """Drop idle UDP flows."""

    def line(self) -> str:
        return f"{self.spec}: {self.counters.line(self.spec.proto)}"


class _Refuse(asyncio.Protocol):
    """An accepted connection over the cap: closed at once (with a RST)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


class _TcpForward(Forward):
    """A TCP forward: for each connection its listener accepts (side 0),
    one opened on the other side (side 1), relayed by a :class:`_Link`; at
    most ``max_connections`` at once."""

    server: Any = None
    to_tunnel_from = 0  # the side whose bytes go into the tunnel
    other_side = ""  # where side 1 is, for the log

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.max_connections: int = self.options.max_connections

    def _accept(self) -> asyncio.Protocol:
        link = _Link(self.counters, to_tunnel_from=self.to_tunnel_from, name=str(self.spec))
        link.connecting = task = self._spawn(self._connect(link))
        task.add_done_callback(link.opened)
        return _Side(link, 0)

    async def _connect(self, link: _Link) -> None:
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                await self._open(lambda: _Side(link, 1))
        except (OSError, TimeoutError, WireGuardError) as exc:
            log.warning(f"{self.spec}: cannot connect {self.other_side}: {why(exc)}")
            link.failed()
            return
        link.connected()

    @abc.abstractmethod
    async def _open(self, protocol_factory: Callable[[], asyncio.Protocol]) -> object:
        """Open side 1 of a connection."""

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        await super().close()


class TcpLocalForward(_TcpForward):
    """-L: kernel listener here, connections opened through the tunnel."""

    to_tunnel_from = 0
    other_side = "through the tunnel"

    async def start(self) -> None:
        spec = self.spec
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            self._accept, spec.bind_host, spec.bind_port, reuse_address=True
        )
        names = sorted({_fmt(*s.getsockname()[:2]) for s in self.server.sockets})
        self.where = ", ".join(names)

    def _accept(self) -> asyncio.Protocol:
        if self.counters.active >= self.max_connections:
            self.counters.refused += 1
            return _Refuse()
        return super()._accept()

    async def _open(self, protocol_factory: Callable[[], asyncio.Protocol]) -> object:
        return await self.tunnel.create_connection(protocol_factory, self.spec.host, self.spec.port)


class TcpRemoteForward(_TcpForward):
    """-R: listener on the stack, connections passed to a local service."""

    to_tunnel_from = 1
    other_side = "to the local service"

    async def start(self) -> None:
        spec = self.spec
        self.server = await self.tunnel.create_server(
            self._accept, spec.bind_host, spec.bind_port, max_connections=self.max_connections
        )
        hosts = [spec.bind_host] if spec.bind_host else self.tunnel.addresses
        self.where = ", ".join(_fmt(h, self.server.port) for h in hosts) + " (in the tunnel)"

    async def _open(self, protocol_factory: Callable[[], asyncio.Protocol]) -> object:
        loop = asyncio.get_running_loop()
        return await loop.create_connection(protocol_factory, self.spec.host, self.spec.port)

    def line(self) -> str:
        text = super().line()
        waiting = self.server.waiting if self.server is not None else 0
        if waiting:
            text += f", {waiting} waiting (connection cap)"
        return text


_OnDatagram = Callable[[bytes, Any], None]


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: _OnDatagram, on_error: Callable[[], None]) -> None:
        self.on_datagram = on_datagram
        self.on_error = on_error
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable) on a connected UDP socket: the
        # destination dropped a datagram, as UDP may; counted.
        self.on_error()


class _Flow:
    __slots__ = ("last", "pending", "told", "transport")

    def __init__(self, now: float) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] | None = []  # datagrams waiting for the transport
        self.last = now
        self.told = False  # a datagram the stack refused was logged (once per flow)


_FLOW_BACKLOG = 64
DEFAULT_UDP_FLOWS = 1024  # a NAT table's order of size; each -R flow is a kernel socket
DEFAULT_TCP_CONNECTIONS = 256  # per TCP forward; each holds a kernel socket


class _UdpForward(Forward):
    """A UDP forward: one listening endpoint, one flow per client address,
    each flow its own endpoint towards the destination.

    The flow table holds at most ``--udp-flows`` flows, in order of last
    activity (either direction): a new client beyond that evicts the least
    recently active flow, as a full NAT table does, and the eviction is counted."""

    listener: asyncio.DatagramTransport | None = None
    client_to_tunnel = True  # -L: clients are local; -R: clients are in the tunnel

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.flows: OrderedDict[Any, _Flow] = OrderedDict()  # least recently active first
        self.max_flows: int = self.options.udp_flows

    def _count(self, to_tunnel: bool, n: int) -> None:
        c = self.counters
        if to_tunnel:
            c.to_tunnel += n
            c.datagrams_to_tunnel += 1
        else:
            c.from_tunnel += n
            c.datagrams_from_tunnel += 1

    def _error(self) -> None:
        self.counters.unreachable += 1

    def _send(
        self,
        flow: _Flow,
        transport: asyncio.DatagramTransport,
        data: bytes,
        to_tunnel: bool,
        addr: Any = None,
    ) -> None:
        """Send one datagram of *flow*, counted as carried or, if the stack
        refuses it (larger than any UDP datagram of the destination's IP
        version; one larger than the MTU leaves in fragments), as dropped."""
        try:
            transport.sendto(data, addr)
        except LocalProtocolError as exc:
            self.counters.dropped += 1
            if not flow.told:
                flow.told = True
                log.info(f"{self.spec}: dropped a datagram (and will others of its flow): {exc}")
            return
        self._count(to_tunnel, len(data))

    def _from_client(self, data: bytes, addr: Any) -> None:
        now = asyncio.get_running_loop().time()
        flows = self.flows
        flow = flows.get(addr)
        if flow is None:
            while len(flows) >= self.max_flows:
                self._drop(next(iter(flows)))
                self.counters.evicted += 1
            flow = flows[addr] = _Flow(now)
            self.counters.active += 1
            self.counters.total += 1
            self._spawn(self._open_flow(addr, flow))
        else:
            flows.move_to_end(addr)
        flow.last = now
        if flow.transport is not None:
            self._send(flow, flow.transport, data, self.client_to_tunnel)
        elif flow.pending is not None and len(flow.pending) < _FLOW_BACKLOG:
            flow.pending.append(data)
        else:
            self.counters.dropped += 1

    def _from_destination(self, addr: Any, flow: _Flow, data: bytes) -> None:
        if self.listener is None or self.flows.get(addr) is not flow:
            self.counters.dropped += 1  # its flow was evicted or expired this turn
            return
        flow.last = asyncio.get_running_loop().time()
        self.flows.move_to_end(addr)
        self._send(flow, self.listener, data, not self.client_to_tunnel, addr)

    async def _open_flow(self, addr: Any, flow: _Flow) -> None:
        try:
            transport = await self._endpoint(
                lambda data, _src: self._from_destination(addr, flow, data), self._error
            )
        except (OSError, WireGuardError) as exc:
            log.warning(f"{self.spec}: cannot open a flow for {addr[0]}:{addr[1]}: {why(exc)}")
            self.counters.failed += 1
            if self.flows.get(addr) is flow:
                self._drop(addr)
            return
        if self.flows.get(addr) is not flow:
            transport.close()
            return
        flow.transport = transport
        pending, flow.pending = flow.pending or [], None
        for data in pending:
            self._send(flow, transport, data, self.client_to_tunnel)

    @abc.abstractmethod
    async def _endpoint(
        self, on_datagram: _OnDatagram, on_error: Callable[[], None]
    ) -> asyncio.DatagramTransport:
        """The datagram endpoint a new flow's replies come back through."""

    def _drop(self, addr: Any) -> None:
        flow = self.flows.pop(addr, None)
        if flow is not None:
            self.counters.active -= 1
            if flow.pending:
                self.counters.dropped += len(flow.pending)
                flow.pending = None
            if flow.transport is not None:
                flow.transport.close()

    def expire(self, now: float) -> None:
        timeout = self.options.udp_timeout
        while self.flows:
            addr, flow = next(iter(self.flows.items()))
            if now - flow.last <= timeout:
                break  # the rest were active more recently
            self._drop(addr)

    async def close(self) -> None:
        for addr in list(self.flows):
            self._drop(addr)
        if self.listener is not None:
            self.listener.close()
        await super().close()


class UdpLocalForward(_UdpForward):
    """-L udp: a kernel UDP socket here; each client's datagrams go out
    through the tunnel from their own stack port."""

    client_to_tunnel = True

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host = self.spec.bind_host
        family = socket.AF_INET6 if host is None or ":" in host else socket.AF_UNSPEC
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._from_client, self._error),
            local_addr=(host or "::", self.spec.bind_port),
            family=family,
        )
        self.listener = transport
        sockname = transport.get_extra_info("sockname")
        self.where = _fmt(sockname[0], sockname[1])

    async def _endpoint(
        self, on_datagram: _OnDatagram, on_error: Callable[[], None]
    ) -> asyncio.DatagramTransport:
        transport, _ = await self.tunnel.create_datagram_endpoint(
            lambda: _Datagrams(on_datagram, on_error), remote_addr=(self.spec.host, self.spec.port)
        )
        return transport


class UdpRemoteForward(_UdpForward):
    """-R udp: a UDP port on the stack; each remote sender gets its own kernel
    socket towards the local service."""

    client_to_tunnel = False

    async def start(self) -> None:
        spec = self.spec
        transport, _ = await self.tunnel.create_datagram_endpoint(
            lambda: _Datagrams(self._from_client, self._error),
            local_addr=(spec.bind_host, spec.bind_port),
        )
        self.listener = transport
        port = transport.get_extra_info("sockname")[1]  # the stack's choice for port 0
        hosts = [spec.bind_host] if spec.bind_host else self.tunnel.addresses
        self.where = ", ".join(_fmt(h, port) for h in hosts) + " (in the tunnel)"

    def line(self) -> str:
        text = super().line()
        sock = self.listener.get_extra_info("udp_socket") if self.listener is not None else None
        if sock is not None and sock.dropped:
            text += f", {sock.dropped} datagrams dropped by the stack's socket (queue full)"
        return text

    async def _endpoint(
        self, on_datagram: _OnDatagram, on_error: Callable[[], None]
    ) -> asyncio.DatagramTransport:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(on_datagram, on_error), remote_addr=(self.spec.host, self.spec.port)
        )
        return transport


_KINDS: dict[tuple[str, str], type[Forward]] = {
    ("L", "tcp"): TcpLocalForward,
    ("R", "tcp"): TcpRemoteForward,
    ("L", "udp"): UdpLocalForward,
    ("R", "udp"): UdpRemoteForward,
}


def make_forward(spec: ForwardSpec, tunnel: RootlessTunnel, options: ForwardOptions) -> Forward:
    """The forward *spec* asks for (not started yet: ``await forward.start()``)."""
    return _KINDS[(spec.kind, spec.proto)](spec, tunnel, options)


def why(exc: BaseException) -> str:
    """The C library's words for an error (by its errno, else by its kind)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENETUNREACH and exc.strerror:
        return exc.strerror  # the tunnel's: names the destination and its AllowedIPs
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # asyncio's bind errors wrap it in a long sentence
    for kind, code in (
        (ConnectionRefusedError, errno.ECONNREFUSED),
        (ConnectionResetError, errno.ECONNRESET),
        (TimeoutError, errno.ETIMEDOUT),
    ):
        if isinstance(exc, kind):
            return os.strerror(code)
    return str(exc) or type(exc).__name__


# ------------------------------------------------------------------- descriptors

# Descriptors kept for all but the capped flows and connections: the UDP
# socket, listeners, the control socket, the interpreter's own.
_FD_RESERVE = 256


def plan_descriptors(caps: list[int], soft: int, hard: int) -> tuple[int, list[int]]:
    """The soft RLIMIT_NOFILE to set and the caps of the forwards whose flows
    or connections are kernel sockets (``-R udp`` flows, TCP connections;
    *caps* as asked). The soft limit is raised towards the hard one as far as
    the caps need (Go's runtime raises it for every program, wireguard-go
    included); if the hard limit is too low, the caps share half of it, so
    that a flood on one forward cannot take the descriptors the others and
    the tunnel need."""
    need = sum(caps) + _FD_RESERVE
    infinity = resource.RLIM_INFINITY
    if soft != infinity and soft < need:
        soft = need if hard == infinity else min(hard, need)
    if soft == infinity or soft >= need or not caps:
        return soft, list(caps)
    budget = max(len(caps), soft // 2)
    total = sum(caps)
    return soft, [max(1, cap * budget // total) for cap in caps]


def fit_descriptors(forwards: list[Any]) -> list[str]:
    """Make room for what the forwards may hold open as kernel sockets: the
    ``-R udp`` flows, every TCP forward's connections and every proxy's
    clients (anything else with a ``max_connections``; see
    :func:`plan_descriptors`), lowering a forward's cap where the limit does
    not allow it; returns a note for each cap lowered."""
    notes: list[str] = []
    capped = [
        (f, "max_flows", "flows") if isinstance(f, UdpRemoteForward) else
        (f, "max_connections", "connections")
        for f in forwards
        if isinstance(f, UdpRemoteForward | _TcpForward) or hasattr(f, "max_connections")
    ]  # fmt: skip
    if not capped:
        return notes
    wanted = [getattr(f, attr) for f, attr, _ in capped]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new_soft, caps = plan_descriptors(wanted, soft, hard)
    if new_soft != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        except (OSError, ValueError):
            new_soft, caps = plan_descriptors(wanted, soft, soft)
    for (forward, attr, noun), cap, was in zip(capped, caps, wanted, strict=True):
        if cap < was:
            notes.append(
                f"{forward.spec}: at most {cap} {noun}, not {was}: "
                f"each is a descriptor and the limit is {new_soft} (ulimit -n)"
            )
            setattr(forward, attr, cap)
    return notes
