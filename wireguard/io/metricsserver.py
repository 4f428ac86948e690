"""``/metrics`` and ``/healthz`` over HTTP/1.1 for an orchestrator (asyncio).

:class:`MetricsServer` answers ``GET`` (and ``HEAD``) of

* ``/metrics``: the Prometheus text exposition (format 0.0.4) of what its
  *collectors* return, rendered by :func:`wireguard.metrics.render`;
* ``/healthz``: 200 while its *health* check passes, else 503, with one line
  saying why (see :class:`HandshakeHealth`).

Collectors are plain callables returning :class:`~wireguard.metrics.Metric`
families, called at each scrape: that list is the extension point (a DNS
resolver's counters, say, are one more collector; :meth:`MetricsServer.add`
adds one while it runs). :func:`rootless_collectors` gives those of a
:class:`~wireguard.io.rootless.RootlessTunnel`: per-peer metrics under
``prometheus_wireguard_exporter``'s names, the device's drops, the stack's
counters, what the tunnel did not pass on, each forward's counters and the
endpoint re-resolver's.

The server is bounded whatever a client does: a request head of at most
*max_request* bytes (431 beyond it), no request body (400), at most
*max_connections* connections at once (the next ones get 503 and are
closed), and a client that takes more than *timeout* seconds to send a
request or to read an answer, or idles that long on a kept-alive
connection, is disconnected.
Everything refused is counted (``wireguard_metrics_http_*`` families). It
listens on loopback unless told otherwise: the metrics name peers' keys and
addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..constants import REJECT_AFTER_TIME
from ..metrics import CONTENT_TYPE, Metric, counter_metrics, device_metrics, render
from .lifecycle import hang_up

if TYPE_CHECKING:
    from ..device import Device
    from ..keys import PublicKey
    from .resolve import EndpointReresolver
    from .rootless import RootlessTunnel

__all__ = [
    "DEFAULT_HEALTH_AGE",
    "Collector",
    "HandshakeHealth",
    "MetricsServer",
    "parse_listen",
    "rootless_collectors",
]

log = logging.getLogger(__name__)

Collector = Callable[[], Iterable[Metric]]
# A handshake younger than this means a session may be in use: keys are
# refused REJECT_AFTER_TIME (180 s) after their handshake.
DEFAULT_HEALTH_AGE = REJECT_AFTER_TIME

# How long a closing connection's input is still read and dropped.
_LINGER = 1.0

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


def parse_listen(text: str, what: str = "--metrics") -> tuple[str | None, int]:
    """``[HOST:]PORT`` as (host, port): host 127.0.0.1 when left out, None
    (every address) for ``*``, an IPv6 address in brackets. ValueError with
    one line naming *what* when it is not that."""
    host: str | None = "127.0.0.1"
    port_text = text
    if text.startswith("["):
        end = text.find("]:")
        if end < 0:
            raise ValueError(f"{what}: {text!r} is not [HOST:]PORT (IPv6 as [ADDR]:PORT)")
        host, port_text = text[1:end], text[end + 2 :]
    elif ":" in text:
        host, port_text = text.rsplit(":", 1)
        if ":" in host:
            raise ValueError(f"{what}: {text!r}: an IPv6 address goes in brackets")
        if host == "*":
            host = None
        elif not host:
            raise ValueError(f"{what}: {text!r} has no host before ':'")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{what}: {text!r}: the port must be a number from 0 to 65535")
    return host, int(port_text)


class HandshakeHealth:
    """Healthy while the latest handshake with some peer (or with *peer*) is
    younger than *max_age* seconds by *clock* (the device's: the loop's
    time). Called, it returns (healthy, one line saying why)."""

    def __init__(
        self,
        device: Device,
        clock: Callable[[], float],
        max_age: float = DEFAULT_HEALTH_AGE,
        peer: PublicKey | None = None,
    ) -> None:
        if not max_age > 0:
            raise ValueError("the health check's handshake age must be positive")
        self.device, self.clock, self.max_age, self.peer = device, clock, max_age, peer

    def __call__(self) -> tuple[bool, str]:
        now = self.clock()
        if self.peer is not None:
            found = self.device.peers.get(self.peer)
            peers = [] if found is None else [found]
            if found is None:
                return False, f"{self.peer.to_base64()} is not a peer"
        else:
            peers = list(self.device.peers.values())
        ages = [now - p.last_handshake for p in peers if p.last_handshake is not None]
        young = [a for a in ages if a < self.max_age]
        whom = "the peer" if self.peer is not None else "a peer"
        if young:
            return True, f"ok: handshake with {whom} {max(0.0, min(young)):.0f} s ago"
        if ages:
            return False, (
                f"no handshake with {whom} in the last {self.max_age:g} s "
                f"(latest {min(ages):.0f} s ago)"
            )
        return False, f"no handshake with {whom} yet"


@dataclass
class ServerCounters:
    requests: int = 0  # answered, any status
    connections: int = 0  # accepted and served
    refused_connections: int = 0  # over max_connections: 503 and closed
    bad_requests: int = 0  # malformed, with a body, too large, wrong method or version
    timeouts: int = 0  # clients disconnected for being slow or idle
    collector_errors: int = 0  # scrapes answered 500: a collector raised
    health_errors: int = 0  # probes answered 500: the health check raised


class _BadRequest(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


class MetricsServer:
    """An HTTP/1.1 server for ``/metrics`` and ``/healthz`` (see the module).

    *collectors* are called at each ``/metrics`` request, in order; *health*
    answers ``/healthz`` (None: always 200). *host* None listens on every
    address. Use ``async with`` or :meth:`start` / :meth:`close`.
    """

    def __init__(
        self,
        collectors: Sequence[Collector] = (),
        health: Callable[[], tuple[bool, str]] | None = None,
        *,
        host: str | None = "127.0.0.1",
        port: int = 0,
        max_connections: int = 16,
        max_request: int = 8192,
        timeout: float = 10.0,
    ) -> None:
        if max_connections < 1 or max_request < 64 or not timeout > 0:
            raise ValueError("the metrics server needs a connection, 64 bytes and some time")
        self.collectors: list[Collector] = list(collectors)
        self.health = health
        self.host, self.port = host, port
        self.max_connections = max_connections
        self.max_request = max_request
        self.timeout = timeout
        self.counters = ServerCounters()
        self.statuses: Counter[int] = Counter()
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[Any]] = set()

    def add(self, collector: Collector) -> None:
        """One more collector (a resolver's counters, say), from the next scrape on."""
        self.collectors.append(collector)

    async def start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port, limit=self.max_request + 1
            )

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where it listens: (host, port) of each socket, after :meth:`start`."""
        if self._server is None:
            return []
        return [s.getsockname()[:2] for s in self._server.sockets]

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- metrics

    def own_metrics(self) -> list[Metric]:
        """The server's own counters: ``wireguard_metrics_http_*``."""
        families = counter_metrics("wireguard_metrics_http", [((), self.counters)])
        responses = Metric(
            "wireguard_metrics_http_responses_total", "counter", "HTTP responses by status code"
        )
        for status, count in sorted(self.statuses.items()):
            responses.add(count, [("code", str(status))])
        return [*families, responses]

    def exposition(self) -> str:
        metrics: list[Metric] = []
        for collector in self.collectors:
            metrics.extend(collector())
        metrics.extend(self.own_metrics())
        return render(metrics)

    # ------------------------------------------------------------------ HTTP

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._clients) >= self.max_connections:
            self.counters.refused_connections += 1
            # Answered and closed; what the client sent is read (a second at
            # most) so that the close is not a reset that loses the answer.
            with contextlib.suppress(Exception):
                writer.write(self._response(503, b"too many connections\n", close=True))
                writer.write_eof()
                await asyncio.wait_for(reader.read(self.max_request), 1.0)
            writer.close()
            return
        self._clients.add(task)
        self.counters.connections += 1
        try:
            await self._requests(reader, writer)
            await self._linger(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # close() hangs up on clients by cancelling them; ending quietly,
            # as asyncio (3.11) reports a client task that ends cancelled.
            if not self._closing():
                raise
        finally:
            try:
                await hang_up(writer, self._closing, self.timeout)
            finally:
                # Only now: close() must reach a client still being hung up on,
                # and the connection counts against max_connections till then.
                self._clients.discard(task)

    def _closing(self) -> bool:
        """close() has begun: clients are hung up on at once."""
        return self._server is None

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    head = await reader.readuntil(b"\r\n\r\n")
            except TimeoutError:
                self.counters.timeouts += 1
                writer.write(self._response(408, b"request timed out\n", close=True))
                return
            except asyncio.LimitOverrunError:
                self._bad(writer, 431, "request head too large")
                return
            except asyncio.IncompleteReadError:
                return  # the client closed (between requests, or mid-request)
            if len(head) > self.max_request:
                self._bad(writer, 431, "request head too large")
                return
            try:
                method, path, keep_alive = self._parse(head)
            except _BadRequest as exc:
                self._bad(writer, exc.status, str(exc))
                return
            status, body, extra = self._answer(method, path)
            payload = b"" if method == "HEAD" else body
            writer.write(
                self._response(status, payload, close=not keep_alive, extra=extra, length=len(body))
            )
            try:
                async with asyncio.timeout(self.timeout):
                    await writer.drain()
            except TimeoutError:
                self.counters.timeouts += 1  # a client too slow to read
                writer.transport.abort()
                return
            if not keep_alive:
                return

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Before the close: the end of the answer sent, and what the client
        still sends read and dropped, for a second at most. Closing with
        unread input makes the kernel reset the connection, and the client
        may then lose the answer (a 431 for a head far over the limit)."""
        if writer.transport.is_closing():
            return
        writer.write_eof()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_LINGER):
                while await reader.read(65536):
                    pass

    def _bad(self, writer: asyncio.StreamWriter, status: int, text: str) -> None:
        self.counters.bad_requests += 1
        writer.write(self._response(status, text.encode() + b"\n", close=True))

    def _parse(self, head: bytes) -> tuple[str, str, bool]:
        try:
            text = head.decode("ascii")
        except UnicodeDecodeError:
            raise _BadRequest(400, "request head is not ASCII") from None
        lines = text[:-4].split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise _BadRequest(400, "malformed request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            if version.startswith("HTTP/"):
                raise _BadRequest(505, f"{version} is not supported")
            raise _BadRequest(400, "malformed request line")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or " " in name:
                raise _BadRequest(400, "malformed header line")
            headers[name.lower()] = value.strip()
        if version == "HTTP/1.1" and "host" not in headers:
            raise _BadRequest(400, "HTTP/1.1 request without Host")
        length = headers.get("content-length", "0")
        if "transfer-encoding" in headers or length != "0":
            raise _BadRequest(400, "a request body is not accepted")
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep_alive = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
        return method, target, keep_alive

    def _answer(self, method: str, target: str) -> tuple[int, bytes, dict[str, str]]:
        path = target.split("?", 1)[0]
        if path not in ("/metrics", "/healthz"):
            return 404, b"not found: try /metrics or /healthz\n", {}
        if method not in ("GET", "HEAD"):
            self.counters.bad_requests += 1
            return 405, b"only GET and HEAD\n", {"Allow": "GET, HEAD"}
        if path == "/healthz":
            if self.health is None:
                return 200, b"ok\n", {}
            try:
                good, why = self.health()
            except Exception:
                self.counters.health_errors += 1
                log.exception("the health check failed")
                return 500, b"the health check failed (see the log)\n", {}
            return (200 if good else 503), why.encode() + b"\n", {}
        try:
            text = self.exposition()
        except Exception:
            self.counters.collector_errors += 1
            log.exception("a metrics collector failed")
            return 500, b"a metrics collector failed (see the log)\n", {}
        return 200, text.encode(), {"Content-Type": CONTENT_TYPE}

    def _response(
        self,
        status: int,
        body: bytes,
        *,
        close: bool,
        extra: dict[str, str] | None = None,
        length: int | None = None,
    ) -> bytes:
        self.counters.requests += 1
        self.statuses[status] += 1
        headers = {"Content-Type": "text/plain; charset=utf-8", **(extra or {})}
        headers["Content-Length"] = str(len(body) if length is None else length)
        headers["Cache-Control"] = "no-store"
        if close:
            headers["Connection"] = "close"
        head = f"HTTP/1.1 {status} {_REASONS[status]}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        return head.encode() + b"\r\n" + body


# ----------------------------------------------------------- a rootless tunnel's


def rootless_collectors(
    tunnel: RootlessTunnel,
    interface: str = "wg0",
    *,
    forwards: Callable[[], Iterable[Any]] | None = None,
    reresolver: EndpointReresolver | None = None,
    remote: bool = True,
) -> list[Collector]:
    """The collectors of a rootless tunnel named *interface*: its device
    (per-peer, as prometheus_wireguard_exporter, with ``remote_ip`` and
    ``remote_port`` unless *remote* is false), its stack, what it did not pass
    on, the tunnel's name resolver (``wireguard_dns_<counter>_total``), the
    forwards and proxies *forwards* returns (objects with ``spec`` and
    ``counters``: a :class:`~wireguard.io.forward.Forward` gives
    ``wireguard_forward_*{forward,proto}``, a proxy of :mod:`wireguard.io.proxy`
    ``wireguard_proxy_*{proxy,kind}`` and ``wireguard_proxy_refusals_total{reason}``)
    and the endpoint re-resolver's counters."""
    where = [("interface", interface)]

    def device() -> list[Metric]:
        return device_metrics(tunnel.device, interface, remote=remote)

    def stack() -> list[Metric]:
        status = tunnel.status()
        out = []
        if status.stack is not None:
            out += counter_metrics("wireguard_stack", [(where, status.stack)])
        connections = Metric(
            "wireguard_stack_tcp_connections", "gauge", "TCP connections the stack holds"
        )
        connections.add(status.tcp_connections, where)
        out.append(connections)
        t = tunnel.tunnel
        lost = Metric(
            "wireguard_tunnel_not_passed_on_total",
            "counter",
            "Datagrams and packets the tunnel's socket and the stack's driver did not pass on",
        )
        reasons = {
            "datagram not sent": t.dropped_datagrams,
            "datagram refused by the kernel": t.send_errors,
            "socket read error": t.receive_errors,
            "packet out of the tunnel not queued": t.dropped_packets,
            **tunnel.drops,
        }
        for reason, count in sorted(reasons.items()):
            lost.add(count, [*where, ("reason", reason)])
        out.append(lost)
        return out

    def forward() -> list[Metric]:
        rows, proxy_rows = [], []
        refusals = Metric(
            "wireguard_proxy_refusals_total", "counter", "Proxy clients refused or lost, by reason"
        )
        for f in forwards() if forwards is not None else ():
            proto = getattr(f.spec, "proto", None)
            if proto is not None:  # a -L/-R forward
                labels = [*where, ("forward", str(f.spec)), ("proto", proto)]
                rows.append((labels, f.counters))
                continue
            # a proxy (wireguard.io.proxy): its counters, and its refusals by reason
            labels = [*where, ("proxy", str(f.spec)), ("kind", str(f.spec.kind))]
            proxy_rows.append((labels, f.counters))
            for reason, count in sorted(getattr(f.counters, "refusals", {}).items()):
                refusals.add(count, [*labels, ("reason", str(reason))])
        helps = {
            "active": "Open connections (TCP) or live flows (UDP), or connected clients",
            "total": "Connections, flows or clients so far",
            "to_tunnel": "Bytes carried into the tunnel",
            "from_tunnel": "Bytes carried out of the tunnel",
        }
        out = counter_metrics("wireguard_forward", rows, gauges={"active"}, helps=helps)
        out += counter_metrics(
            "wireguard_proxy", proxy_rows, gauges={"active", "relaying"}, helps=helps
        )
        if refusals.samples:
            out.append(refusals)
        return out

    def resolution() -> list[Metric]:
        if reresolver is None:
            return []
        return counter_metrics("wireguard_endpoint_resolution", [(where, reresolver.counters)])

    def dns() -> list[Metric]:
        # the tunnel's resolver (names through the tunnel: wireguard.io.names'
        # TunnelResolver.stats):
        # one family per counter it keeps, whatever they are
        names = getattr(tunnel, "names", None)
        stats = getattr(names, "stats", None) or {}
        if callable(stats):
            stats = stats()
        out = []
        for key, value in sorted(stats.items()):
            name = "wireguard_dns_" + re.sub(r"[^a-zA-Z0-9_]", "_", key) + "_total"
            metric = Metric(name, "counter", f"Name lookups through the tunnel: {key}")
            metric.add(value, where)
            out.append(metric)
        return out

    return [device, stack, forward, resolution, dns]
