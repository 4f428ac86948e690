"""SOCKS5 and HTTP proxies through a rootless tunnel (the runtime;
``python -m wireguard proxy`` is its command, in :mod:`wireguard.cli.proxy`).

Unmodified applications reach the services behind a WireGuard peer through
a local proxy port, as an unprivileged user with no TUN device:

* :class:`Socks5Proxy` (RFC 1928, RFC 1929): CONNECT and UDP ASSOCIATE,
  IPv4, IPv6 and domain names (resolved through the tunnel); the reply code
  says why a target failed (0x04 host unreachable when no peer's AllowedIPs
  cover it or its name does not resolve, 0x05 refused on a RST, 0x06 TTL
  expired on a timeout). UDP datagrams with FRAG other than 0 are dropped
  and counted (this proxy does not reassemble, which section 7 allows).
* :class:`HTTPProxy` (RFC 9110, RFC 9112): ``CONNECT`` and absolute-URI
  requests, keep-alive to the client and to the target, chunked bodies,
  ``Proxy-Authorization: Basic`` when credentials are set.

The protocol work is the sans-I/O cores' (:mod:`wireguard.socks5`,
:mod:`wireguard.httpproxy`); here are the sockets. Each proxy is bounded:
at most ``max_connections`` clients at once (beyond it a connection is
a new client first evicts the oldest client still negotiating, counted,
and is refused only when every client is past its negotiation), a client
must finish its negotiation (SOCKS5 greeting and request, the first HTTP
request head) within ``handshake_timeout`` seconds or it is closed and
counted. So a flood of half-open connections holds at most
``max_connections`` sockets for at most that long, and cannot lock out the
clients that negotiate (theirs are never evicted); every client is served
by its own task, so one slow or idle client delays no other. Every refusal
and error is counted by reason in :attr:`ProxyCounters.refusals` and shown
by :meth:`line` (the command's status and report).

In Python::

    async with await open_tunnel("wg0.conf") as tunnel:
        socks = await start_socks5(tunnel, "127.0.0.1", 1080)
        http = await start_http_proxy(tunnel, "127.0.0.1", 8080, credentials={"u": "p"})
        ...
        await socks.close(); await http.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..dns import ResolutionError
from ..errors import LocalProtocolError, WireGuardError
from ..httpproxy import (
    ForwardRequest,
    HTTPProxyError,
    HTTPProxyServer,
    Limits,
    RequestBody,
    RequestEnd,
    TunnelData,
    TunnelRequest,
    UpstreamError,
    UpstreamResponse,
)
from ..netstack.udp import MAX_UDP_PAYLOAD_V4, MAX_UDP_PAYLOAD_V6
from ..socks5 import (
    Command,
    Data,
    Reply,
    Request,
    Socks5AuthError,
    Socks5Error,
    Socks5Server,
    UdpAssociation,
)
from .rootless import RootlessTunnel, format_bytes

__all__ = [
    "HTTPProxy",
    "ProxyCounters",
    "ProxyOptions",
    "ProxySpec",
    "Socks5Proxy",
    "parse_listen",
    "start_http_proxy",
    "start_socks5",
]

log = logging.getLogger(__name__)

_READ = 65536
_UDP_PENDING = 64  # datagrams of one association waiting for their name to resolve


class ProxySpecError(ValueError):
    """A ``--socks5`` / ``--http`` address that cannot be parsed."""


@dataclass(frozen=True)
class ProxySpec:
    """Where a proxy listens: ``kind`` is ``"socks5"`` or ``"http"``."""

    kind: str
    bind_host: str | None  # None: all addresses
    bind_port: int

    def __str__(self) -> str:
        host = self.bind_host or "*"
        shown = f"[{host}]" if ":" in host else host
        return f"--{self.kind} {shown}:{self.bind_port}"


def parse_listen(text: str, kind: str) -> ProxySpec:
    """``[HOST:]PORT`` (``[::1]:1080``, ``*:1080`` for all addresses; the
    default host is 127.0.0.1, loopback only)."""
    flag = f"--{kind} {text}"
    host: str | None = "127.0.0.1"
    port_text = text
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise ProxySpecError(f"{flag}: expected [HOST:]PORT, IPv6 in brackets")
        host, port_text = text[1:end], text[end + 2 :]
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        if ":" in host:
            raise ProxySpecError(f"{flag}: put an IPv6 address in brackets: [{host}]:PORT")
    if host in ("*", ""):
        host = None
    elif host != "localhost":
        try:
            host = str(ipaddress.ip_address(host))  # type: ignore[arg-type]
        except ValueError:
            raise ProxySpecError(f"{flag}: {host!r} is not an IP address") from None
    try:
        port = int(port_text, 10)
    except ValueError:
        raise ProxySpecError(f"{flag}: {port_text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ProxySpecError(f"{flag}: port {port} is out of range (0..65535)")
    return ProxySpec(kind, host, port)


@dataclass(frozen=True)
class ProxyOptions:
    """How the proxies behave (the command's options)."""

    credentials: Mapping[str, str] | None = None  # None: no authentication
    max_connections: int = 256  # clients at once, per proxy
    handshake_timeout: float = 10.0  # negotiation / request head must arrive within this
    idle_timeout: float = 60.0  # a keep-alive HTTP client idle this long is closed
    connect_timeout: float = 30.0  # give up on a target after this long
    limits: Limits = field(default_factory=Limits)


@dataclass
class ProxyCounters:
    active: int = 0  # clients connected now
    total: int = 0  # clients accepted
    relaying: int = 0  # tunnels / UDP associations / forwarded exchanges open now
    connects: int = 0  # CONNECT / forwarded requests that reached their target
    associations: int = 0  # UDP ASSOCIATE
    to_tunnel: int = 0
    from_tunnel: int = 0
    datagrams_to_tunnel: int = 0
    datagrams_from_tunnel: int = 0
    # Bytes received and not passed on: after a failure or a client's last
    # request, on a UDP ASSOCIATE's TCP connection, a target's past its response.
    discarded: int = 0
    # Everything refused or lost, by reason: "connection cap", "handshake
    # timeout", "bad request", "authentication", "host unreachable", ...
    refusals: Counter[str] = field(default_factory=Counter)


class _Proxy(ABC):
    """What both proxies share: the listener, the cap, the counters."""

    kind = ""

    def __init__(
        self, spec: ProxySpec, tunnel: RootlessTunnel, options: ProxyOptions | None = None
    ) -> None:
        self.spec = spec
        self.tunnel = tunnel
        self.options = options or ProxyOptions()
        self.counters = ProxyCounters()
        self.max_connections = self.options.max_connections
        self.server: asyncio.Server | None = None
        self.where = ""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        # clients still negotiating, oldest first: evicted first at the cap
        self._negotiating: dict[asyncio.StreamWriter, None] = {}
        self._evicted: set[asyncio.StreamWriter] = set()  # no longer counted as active
        self._log_budget = (0.0, 0)
        self.suppressed_logs = 0
        self._closing = False  # close() cancels the clients' tasks

    # --- lifetime ----------------------------------------------------------

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._client, self.spec.bind_host, self.spec.bind_port, reuse_address=True,
            limit=_READ,
        )  # fmt: skip
        names = set()
        for s in self.server.sockets:
            host, port = s.getsockname()[:2]
            names.add(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        self.where = ", ".join(sorted(names))

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        self._closing = True
        if self.server is not None:
            self.server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    def expire(self, now: float) -> None:  # noqa: B027 (optional hook: empty by default)
        """A hook of the shared runtime (the proxies keep no idle state)."""

    # --- status ------------------------------------------------------------

    def short(self) -> str:
        c = self.counters
        text = (
            f"{self.kind} {c.active}/{c.total} up {format_bytes(c.to_tunnel)} "
            f"down {format_bytes(c.from_tunnel)}"
        )
        refused = sum(c.refusals.values())
        return text + (f" refused {refused}" if refused else "")

    def line(self) -> str:
        c = self.counters
        text = (
            f"{self.spec}: {c.active} clients, {c.total} total, {c.connects} connected"
            + (f", {c.associations} UDP associations" if c.associations else "")
            + f", to tunnel {format_bytes(c.to_tunnel)}, from tunnel {format_bytes(c.from_tunnel)}"
        )
        if c.datagrams_to_tunnel or c.datagrams_from_tunnel:
            text += f" ({c.datagrams_to_tunnel}/{c.datagrams_from_tunnel} datagrams)"
        if c.discarded:
            text += f", discarded {c.discarded} bytes"
        if c.refusals:
            text += "; refused: " + ", ".join(
                f"{why} {n}" for why, n in sorted(c.refusals.items())
            )
        if self.suppressed_logs:
            text += f"; {self.suppressed_logs} log lines suppressed"
        return text

    def _refuse(self, why: str, detail: str) -> None:
        """Count a refusal by reason, and log it (at most 20 lines a second:
        a flood is counted, not logged line by line)."""
        self.counters.refusals[why] += 1
        second, n = self._log_budget
        now = time.monotonic()
        if now - second >= 1.0:
            second, n = now, 0
        if n < 20:
            log.info(f"{self.spec}: {detail}")
        else:
            self.suppressed_logs += 1
        self._log_budget = (second, n + 1)

    # --- clients -----------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        c = self.counters
        if c.active >= self.max_connections:
            if not self._negotiating:
                c.refusals["connection cap"] += 1
                writer.transport.abort()
                return
            oldest = next(iter(self._negotiating))
            del self._negotiating[oldest]
            c.refusals["evicted while negotiating (connection cap)"] += 1
            c.active -= 1  # now: its task ends on a later turn
            self._evicted.add(oldest)
            oldest.transport.abort()
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self._negotiating[writer] = None
        c.active += 1
        c.total += 1
        peer = writer.get_extra_info("peername")
        who = _fmt(peer[0], peer[1]) if peer else "?"
        try:
            await self._serve(reader, writer, who)
        except (ConnectionError, OSError):
            pass  # the client went away (or was evicted)
        except asyncio.CancelledError:
            # close() hangs up on clients by cancelling them. Ending quietly:
            # asyncio (3.11) reports a client task that ends cancelled as an
            # unhandled exception with a traceback.
            if not self._closing:
                raise
        except Exception:  # a bug of ours: this client only, counted and logged
            c.refusals["internal error"] += 1
            log.exception(f"{self.spec}: {who}: internal error")
        finally:
            if writer in self._evicted:
                self._evicted.discard(writer)
            else:
                c.active -= 1
            self._tasks.discard(task)
            self._writers.discard(writer)
            self._negotiating.pop(writer, None)
            writer.close()

    def _negotiated(self, writer: asyncio.StreamWriter) -> None:
        """The client is past its negotiation: no longer evicted at the cap."""
        self._negotiating.pop(writer, None)

    @abstractmethod
    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, who: str
    ) -> None:
        """One client's protocol, after it was admitted."""

    async def _connect(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(self.options.connect_timeout):
            return await self.tunnel.open_connection(host, port, limit=_READ)

    async def _relay(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        target: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        """Bytes both ways until both sides closed (half-close passed on)."""
        c = self.counters
        c.relaying += 1

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            while True:
                data = await src.read(_READ)
                if not data:
                    if dst.can_write_eof() and not dst.transport.is_closing():
                        dst.write_eof()
                    return
                if up:
                    c.to_tunnel += len(data)
                else:
                    c.from_tunnel += len(data)
                dst.write(data)
                await dst.drain()

        ups = asyncio.ensure_future(pump(client[0], target[1], True))
        downs = asyncio.ensure_future(pump(target[0], client[1], False))
        try:
            done, pending = await asyncio.wait({ups, downs}, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    for other in pending:
                        other.cancel()
                    # a reset on one side resets the other
                    target[1].transport.abort()
                    client[1].transport.abort()
                    break
            else:
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            ups.cancel()
            downs.cancel()
            c.relaying -= 1
            target[1].close()


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _why(exc: BaseException) -> str:
    from .forward import why

    return why(exc)


# --------------------------------------------------------------------- SOCKS5


_REFUSAL_BY_REPLY = {
    Reply.HOST_UNREACHABLE: "host unreachable",
    Reply.NETWORK_UNREACHABLE: "network unreachable",
    Reply.CONNECTION_REFUSED: "connection refused",
    Reply.TTL_EXPIRED: "timed out",
    Reply.NOT_ALLOWED: "not allowed",
    Reply.GENERAL_FAILURE: "failed",
}


class Socks5Proxy(_Proxy):
    """A SOCKS5 server (see the module docstring) on a local port."""

    kind = "socks5"

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, who: str
    ) -> None:
        core = Socks5Server(self.options.credentials)
        try:
            await self._session(core, reader, writer, who)
        finally:
            self.counters.discarded += core.discarded

    async def _session(
        self,
        core: Socks5Server,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        who: str,
    ) -> None:
        request: Request | None = None
        early = bytearray()
        try:
            async with asyncio.timeout(self.options.handshake_timeout):
                while request is None:
                    data = await reader.read(4096)
                    if not data:
                        if writer not in self._evicted:
                            self._refuse(
                                "incomplete negotiation", f"{who}: closed before its request"
                            )
                        return
                    try:
                        events = core.receive_data(data)
                    except Socks5AuthError as exc:
                        writer.write(core.data_to_send())
                        self._refuse("authentication", f"{who}: {exc}")
                        return
                    except Socks5Error as exc:
                        writer.write(core.data_to_send())
                        self._refuse("bad request", f"{who}: {exc}")
                        return
                    writer.write(core.data_to_send())
                    for event in events:
                        if isinstance(event, Request):
                            request = event
                        elif isinstance(event, Data):
                            early += event.data
        except TimeoutError:
            self._refuse(
                "handshake timeout",
                f"{who}: no request within {self.options.handshake_timeout:g} s",
            )
            return
        self._negotiated(writer)
        if request.command == Command.UDP_ASSOCIATE:
            await self._associate(core, request, reader, writer, who)
            return
        target = _fmt(request.host, request.port)
        try:
            t_reader, t_writer = await self._connect(request.host, request.port)
        except (OSError, TimeoutError, WireGuardError, ValueError) as exc:
            reply = Reply.for_error(exc)
            core.failed(reply)
            writer.write(core.data_to_send())
            self._refuse(
                _REFUSAL_BY_REPLY.get(reply, "failed"),
                f"{who}: cannot connect to {target}: {_detail(exc)} (reply {int(reply):#04x})",
            )
            return
        self.counters.connects += 1
        bound = t_writer.get_extra_info("sockname") or ("0.0.0.0", 0)
        core.connected((bound[0], bound[1]))
        writer.write(core.data_to_send())
        if early:
            self.counters.to_tunnel += len(early)
            t_writer.write(bytes(early))
        await self._relay((reader, writer), (t_reader, t_writer))

    async def _associate(
        self,
        core: Socks5Server,
        request: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        who: str,
    ) -> None:
        """UDP ASSOCIATE: a kernel UDP socket on the address the client
        reached us at, a stack UDP socket for the tunnel; it lasts as long
        as the TCP connection (section 7)."""
        loop = asyncio.get_running_loop()
        local = writer.get_extra_info("sockname")
        peer = writer.get_extra_info("peername")
        association = UdpAssociation(peer[0], request)
        c = self.counters
        pending = [0]
        relay = _UdpRelay(self, association, pending)
        try:
            kernel, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(relay.from_client), local_addr=(local[0], 0)
            )
        except OSError as exc:
            core.failed(Reply.GENERAL_FAILURE)
            writer.write(core.data_to_send())
            self._refuse("failed", f"{who}: cannot open a UDP socket: {_why(exc)}")
            return
        try:
            inside, _ = await self.tunnel.create_datagram_endpoint(
                lambda: _Datagrams(relay.from_tunnel)
            )
        except (OSError, WireGuardError) as exc:  # pragma: no cover - a stack port is free
            kernel.close()
            core.failed(Reply.GENERAL_FAILURE)
            writer.write(core.data_to_send())
            self._refuse("failed", f"{who}: cannot open a UDP socket in the tunnel: {exc}")
            return
        relay.kernel, relay.inside = kernel, inside
        c.associations += 1
        c.relaying += 1
        bound = kernel.get_extra_info("sockname")
        core.connected((bound[0], bound[1]))
        writer.write(core.data_to_send())
        try:
            while data := await reader.read(4096):
                core.receive_data(data)  # it only holds the association: counted, dropped
        finally:
            c.relaying -= 1
            relay.close()
            for why, n in association.drops.items():
                c.refusals[f"UDP {why.replace('_', ' ')}"] += n


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Any) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors on the client's socket: the client is gone or not listening


class _UdpRelay:
    """The datagrams of one UDP ASSOCIATE."""

    def __init__(self, proxy: Socks5Proxy, association: UdpAssociation, pending: list[int]):
        self.proxy = proxy
        self.association = association
        self.kernel: asyncio.DatagramTransport | None = None
        self.inside: asyncio.DatagramTransport | None = None
        self.waiting = 0  # datagrams whose destination name is being resolved
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self.told = False  # a datagram the stack refused was logged

    def from_client(self, data: bytes, addr: Any) -> None:
        datagram = self.association.from_client(data, (addr[0], addr[1]))
        if datagram is None:
            return  # counted in association.drops
        try:
            ipaddress.ip_address(datagram.host)
        except ValueError:
            if self.waiting >= _UDP_PENDING:
                self.proxy.counters.refusals["UDP resolution backlog full"] += 1
                return
            self.waiting += 1
            task = asyncio.get_running_loop().create_task(
                self._resolve_and_send(datagram.host, datagram.port, datagram.data)
            )
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        self._send(datagram.host, datagram.port, datagram.data)

    async def _resolve_and_send(self, host: str, port: int, data: bytes) -> None:
        try:
            addresses = await self.proxy.tunnel._reachable(host)
        except (OSError, WireGuardError) as exc:
            self.proxy._refuse("UDP host unreachable", f"UDP to {host}: {_detail(exc)}")
            return
        finally:
            self.waiting -= 1
        self._send(addresses[0], port, data)

    def _send(self, host: str, port: int, data: bytes) -> None:
        if self.closed or self.inside is None:
            self.proxy.counters.refusals["UDP after close"] += 1
            return
        if not self.proxy.tunnel.routable(host):
            self.proxy._refuse(
                "UDP host unreachable", f"UDP to {host}: not in any peer's AllowedIPs"
            )
            return
        c = self.proxy.counters
        try:
            self.inside.sendto(data, (host, port))
        except LocalProtocolError as exc:
            # Larger than any UDP datagram of the destination's IP version
            # (what is larger than the MTU leaves in fragments), or an
            # address the stack cannot send from: dropped, counted.
            v4 = ipaddress.ip_address(host).version == 4
            big = len(data) > (MAX_UDP_PAYLOAD_V4 if v4 else MAX_UDP_PAYLOAD_V6)
            c.refusals["UDP too large for the tunnel" if big else "UDP not sendable"] += 1
            if not self.told:
                self.told = True  # once for the association: a flood is counted, not logged
                log.info(
                    f"{self.proxy.spec}: UDP to {_fmt(host, port)}: dropped a datagram "
                    f"(and will others of this association): {exc}"
                )
            return
        c.datagrams_to_tunnel += 1
        c.to_tunnel += len(data)

    def from_tunnel(self, data: bytes, addr: Any) -> None:
        client = self.association.client
        if self.closed or self.kernel is None or client is None:
            self.proxy.counters.refusals["UDP reply without a client"] += 1
            return
        c = self.proxy.counters
        c.datagrams_from_tunnel += 1
        c.from_tunnel += len(data)
        self.kernel.sendto(self.association.to_client(data, (addr[0], addr[1])), client)

    def close(self) -> None:
        self.closed = True
        for task in list(self.tasks):
            task.cancel()
        for transport in (self.kernel, self.inside):
            if transport is not None:
                transport.close()


def _detail(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENETUNREACH and exc.strerror:
        return exc.strerror
    if isinstance(exc, WireGuardError):
        # The stack's connection errors carry an errno: their own words, bare.
        return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return _why(exc)


# ----------------------------------------------------------------------- HTTP


class HTTPProxy(_Proxy):
    """An HTTP/1.1 forward proxy (see the module docstring) on a local port."""

    kind = "http"

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, who: str
    ) -> None:
        o = self.options
        core = HTTPProxyServer(o.credentials, limits=o.limits)
        upstream: _Upstream | None = None
        first = True
        events: list[Any] = []
        try:
            while not core.closing:
                if not events:
                    timeout = o.handshake_timeout if first else o.idle_timeout
                    try:
                        async with asyncio.timeout(timeout):
                            data = await reader.read(_READ)
                    except TimeoutError:
                        if first:
                            self._refuse(
                                "handshake timeout",
                                f"{who}: no request within {o.handshake_timeout:g} s",
                            )
                        return
                    if not data:
                        core.receive_eof()
                        return
                    try:
                        events = core.receive_data(data)
                    except HTTPProxyError as exc:
                        writer.write(core.data_to_send())
                        why = "authentication" if exc.status == 407 else "bad request"
                        self._refuse(why, f"{who}: {exc.status} {exc}")
                        return
                    writer.write(core.data_to_send())
                    if not events:
                        continue
                if first:
                    self._negotiated(writer)
                first = False
                event = events.pop(0)
                if isinstance(event, TunnelRequest):
                    await self._tunnel(core, event, reader, writer, who)
                    return
                if isinstance(event, ForwardRequest):
                    upstream, events = await self._exchange(
                        core, event, events, upstream, reader, writer, who
                    )
                    if upstream is None and core.closing:
                        return
                # RequestBody / RequestEnd outside an exchange cannot happen:
                # _exchange consumes them.
        finally:
            self.counters.discarded += core.stats["discarded_bytes"]
            if upstream is not None:
                upstream.writer.transport.abort()
            with contextlib.suppress(ConnectionError):
                writer.write(core.data_to_send())

    async def _open(
        self, core: HTTPProxyServer, host: str, port: int, who: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await self._connect(host, port)
        except (OSError, TimeoutError, WireGuardError, ValueError) as exc:
            # A timeout, the target's or the name servers', is 504 (RFC 9110
            # 15.6.5: no timely response from a server needed for the request).
            timed_out = isinstance(exc, TimeoutError) or (
                isinstance(exc, ResolutionError) and exc.reason == "timeout"
            )
            status = 504 if timed_out else 502
            text = f"cannot connect to {_fmt(host, port)}: {_detail(exc)}"
            core.failed(status, text)
            reply = Reply.for_error(exc)
            self._refuse(_REFUSAL_BY_REPLY.get(reply, "failed"), f"{who}: {text} ({status})")
            return None

    async def _tunnel(
        self,
        core: HTTPProxyServer,
        event: TunnelRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        who: str,
    ) -> None:
        target = await self._open(core, event.host, event.port, who)
        if target is None:
            writer.write(core.data_to_send())
            return
        self.counters.connects += 1
        early = core.tunnel_established()
        writer.write(core.data_to_send())
        for item in early:
            assert isinstance(item, TunnelData)
            self.counters.to_tunnel += len(item.data)
            target[1].write(item.data)
        await self._relay((reader, writer), target)

    async def _exchange(
        self,
        core: HTTPProxyServer,
        request: ForwardRequest,
        events: list[Any],
        upstream: _Upstream | None,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        who: str,
    ) -> tuple[_Upstream | None, list[Any]]:
        """One forwarded request and its response; returns the upstream
        connection if it can carry the next request, and the events left."""
        key = (request.host.lower(), request.port)
        if upstream is not None and (upstream.key != key or upstream.reader.at_eof()):
            upstream.writer.close()
            upstream = None
        if upstream is None:
            target = await self._open(core, request.host, request.port, who)
            if target is None:
                writer.write(core.data_to_send())
                return None, []
            upstream = _Upstream(key, *target)
        up = upstream
        try:
            kept, events = await self._forward(core, request, events, up, reader, writer, who)
        except BaseException:  # cancelled (close()), or a bug: the upstream goes too
            _hang_up(up.writer)
            raise
        if kept is None:
            _hang_up(up.writer)  # an error path left it open
        return kept, events

    async def _forward(
        self,
        core: HTTPProxyServer,
        request: ForwardRequest,
        events: list[Any],
        up: _Upstream,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        who: str,
    ) -> tuple[_Upstream | None, list[Any]]:
        """The request on *up* and its response (see :meth:`_exchange`)."""
        c = self.counters
        key = up.key
        upstream: _Upstream | None = up
        c.connects += 1
        c.relaying += 1
        up.writer.write(request.head)
        c.to_tunnel += len(request.head)
        response = UpstreamResponse(request.method, self.options.limits)
        answer = asyncio.ensure_future(self._response(core, up, response, writer))
        reading: asyncio.Future[bytes] | None = None
        try:
            request_done = False
            while not request_done:
                if not events:
                    if answer.done() or core.closing:
                        break
                    reading = asyncio.ensure_future(reader.read(_READ))
                    await asyncio.wait({reading, answer}, return_when=asyncio.FIRST_COMPLETED)
                    if not reading.done():
                        reading.cancel()
                        break  # the response ended first (e.g. an early error)
                    data = reading.result()
                    if not data:
                        core.receive_eof()
                        break
                    try:
                        events = core.receive_data(data)
                    except HTTPProxyError as exc:
                        self._refuse("bad request", f"{who}: {exc.status} {exc}")
                        answer.cancel()
                        return None, []
                    continue
                event = events.pop(0)
                if isinstance(event, RequestBody | RequestEnd):
                    if event.data:
                        c.to_tunnel += len(event.data)
                        up.writer.write(event.data)
                        await up.writer.drain()
                    request_done = isinstance(event, RequestEnd)
                else:  # pragma: no cover - the core holds a next request until this one ended
                    events.insert(0, event)
                    break
            reusable = await answer
        except (UpstreamError, ConnectionError, OSError) as exc:
            if not answer.done():
                answer.cancel()
            self._refuse("bad response", f"{who}: {_fmt(*key)}: {exc}")
            core.failed(502, f"{_fmt(*key)}: {exc}")
            writer.write(core.data_to_send())
            up.writer.transport.abort()
            return None, []
        finally:
            c.relaying -= 1
            c.discarded += response.discarded
            for pending in (answer, reading):  # still running only if we were cancelled
                if pending is not None and not pending.done():
                    pending.cancel()
        if not reusable:
            up.writer.close()
            upstream = None
        if not core.closing and not events:
            # a pipelined next request the core held while this one was answered
            try:
                events = core.receive_data(b"")
            except HTTPProxyError as exc:
                writer.write(core.data_to_send())
                self._refuse("bad request", f"{who}: {exc.status} {exc}")
                return upstream, []
        return upstream, events

    async def _response(
        self,
        core: HTTPProxyServer,
        up: _Upstream,
        response: UpstreamResponse,
        writer: asyncio.StreamWriter,
    ) -> bool:
        c = self.counters
        while not response.done:
            data = await up.reader.read(_READ)
            if data:
                c.from_tunnel += len(data)
                events = response.receive_data(data)
            else:
                events = response.receive_eof()
            for event in events:
                core.send_response(event)
            writer.write(core.data_to_send())
            await writer.drain()
        return response.reusable


def _hang_up(writer: asyncio.StreamWriter) -> None:
    """Close an upstream connection no longer used, unless closing already:
    with a FIN if nothing is left to send, else a reset (an upstream that does
    not read cannot hold it open)."""
    transport = writer.transport
    if transport.is_closing():
        return
    if transport.get_write_buffer_size():
        transport.abort()
    else:
        transport.close()


@dataclass
class _Upstream:
    key: tuple[str, int]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


# -------------------------------------------------------------------- library


async def start_socks5(
    tunnel: RootlessTunnel,
    host: str | None = "127.0.0.1",
    port: int = 1080,
    *,
    options: ProxyOptions | None = None,
    credentials: Mapping[str, str] | None = None,
) -> Socks5Proxy:
    """A started :class:`Socks5Proxy` on *host*:*port* (0: any free port,
    see :attr:`Socks5Proxy.port`) through *tunnel*. *credentials* (user ->
    password) requires RFC 1929 authentication."""
    options = _with(options, credentials)
    proxy = Socks5Proxy(ProxySpec("socks5", host, port), tunnel, options)
    await proxy.start()
    return proxy


async def start_http_proxy(
    tunnel: RootlessTunnel,
    host: str | None = "127.0.0.1",
    port: int = 8080,
    *,
    options: ProxyOptions | None = None,
    credentials: Mapping[str, str] | None = None,
) -> HTTPProxy:
    """A started :class:`HTTPProxy` on *host*:*port* through *tunnel*.
    *credentials* requires ``Proxy-Authorization: Basic``."""
    options = _with(options, credentials)
    proxy = HTTPProxy(ProxySpec("http", host, port), tunnel, options)
    await proxy.start()
    return proxy


def _with(options: ProxyOptions | None, credentials: Mapping[str, str] | None) -> ProxyOptions:
    options = options or ProxyOptions()
    if credentials is not None:
        options = ProxyOptions(
            dict(credentials), options.max_connections, options.handshake_timeout,
            options.idle_timeout, options.connect_timeout, options.limits,
        )  # fmt: skip
    return options


def make_proxy(spec: ProxySpec, tunnel: RootlessTunnel, options: ProxyOptions) -> _Proxy:
    """The proxy *spec* asks for (not started yet: ``await proxy.start()``)."""
    return (Socks5Proxy if spec.kind == "socks5" else HTTPProxy)(spec, tunnel, options)

