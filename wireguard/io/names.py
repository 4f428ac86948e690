"""Names resolved through the tunnel: :class:`wireguard.dns.Lookup` driven
over a :class:`~wireguard.io.stackdriver.StackBinding` (UDP from the stack's
address, TCP through the stack when an answer is truncated).

:class:`TunnelResolver` is what :meth:`RootlessTunnel.resolve
<wireguard.io.rootless.RootlessTunnel.resolve>` and every name the proxies
and forwards are given go through. Its servers are the config's ``DNS =``
line (wg-quick's: servers and search domains); the cache honours TTLs and
negative answers (:class:`wireguard.dns.DNSCache`). Concurrent lookups of
one name share one set of queries, and at most ``max_lookups`` run at once
(others wait their turn), so a client sending many names cannot make the
resolver hold more than that many sets of queries.

Without servers a name fails with one line saying so, unless
``host_resolver`` was asked for: then (and only then) the host's own
resolver answers (``loop.getaddrinfo``), since sending internal names to the
local resolver leaks them.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..dns import (
    AAAA,
    A,
    Lookup,
    Query,
    ResolutionError,
    Resolved,
    Resolver,
    TCPFrameReader,
    encode_name,
    tcp_frame,
)
from ..errors import WireGuardError

__all__ = ["TunnelResolver", "families_for", "unreachable"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAX_TCP_MESSAGE = 65535 + 2


class _Binding(Protocol):
    async def create_datagram_endpoint(
        self, protocol_factory: Any, local_addr: Any = None, remote_addr: Any = None
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]: ...

    async def create_connection(
        self, protocol_factory: Any, host: str, port: int
    ) -> tuple[asyncio.Transport, asyncio.Protocol]: ...


def families_for(family: int) -> tuple[int, ...]:
    """The record types to ask for an address family (0: both, A first)."""
    if family == socket.AF_INET:
        return (A,)
    if family == socket.AF_INET6:
        return (AAAA,)
    if family in (0, socket.AF_UNSPEC):
        return (A, AAAA)
    raise ValueError(f"address family {family} is not AF_INET, AF_INET6 or AF_UNSPEC")


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self, inbox: asyncio.Queue[tuple[Any, ...]], query: Query) -> None:
        self.inbox = inbox
        self.query = query

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.inbox.put_nowait(("data", data, (addr[0], addr[1]), False))

    def error_received(self, exc: Exception) -> None:
        self.inbox.put_nowait(("failed", self.query.id, None, False))


class _TcpAnswer(asyncio.Protocol):
    """One framed answer over a TCP connection through the stack."""

    def __init__(self, inbox: asyncio.Queue[tuple[Any, ...]], query: Query) -> None:
        self.inbox = inbox
        self.query = query
        self.frames = TCPFrameReader()
        self.transport: asyncio.Transport | None = None
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(tcp_frame(self.query.data))

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        messages = self.frames.feed(data)
        if messages:
            self.done = True
            self.inbox.put_nowait(("data", messages[0], self.query.server, True))
            assert self.transport is not None
            self.transport.close()
        elif self.frames.pending > _MAX_TCP_MESSAGE:  # pragma: no cover - framing bounds it
            self._fail()

    def eof_received(self) -> bool:
        self._fail()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail()

    def _fail(self) -> None:
        if not self.done:
            self.done = True
            self.inbox.put_nowait(("failed", self.query.id, None, True))


class TunnelResolver:
    """Resolves names with *resolver*'s servers through *binding* (a
    :class:`~wireguard.io.stackdriver.StackBinding`), or with the host's
    resolver when *resolver* is None and *host_resolver* is True. *clock*
    gives the ``now`` of the cache's TTLs (default: the event loop's time)."""

    def __init__(
        self,
        binding: _Binding,
        resolver: Resolver | None,
        *,
        host_resolver: bool = False,
        max_lookups: int = 256,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.binding = binding
        self.clock = clock  # None: the loop's time (a test may shift it past TTLs)
        self.resolver = resolver
        self.host_resolver = host_resolver
        # (name, families) -> [the lookup's task, how many callers wait for it]
        self._inflight: dict[tuple[str, tuple[int, ...]], list[Any]] = {}
        self._slots = asyncio.Semaphore(max_lookups)
        self.host_lookups = 0  # names the host's resolver answered (host_resolver)

    @property
    def stats(self) -> dict[str, int]:
        """What the lookups did (:attr:`wireguard.dns.Resolver.stats`)."""
        out = dict(self.resolver.stats) if self.resolver is not None else {}
        if self.host_lookups:
            out["host_resolver"] = self.host_lookups
        return out

    def describe(self) -> str:
        if self.resolver is not None and self.resolver.servers:
            servers = ", ".join(
                f"[{s[0]}]:{s[1]}" if ":" in s[0] else f"{s[0]}:{s[1]}"
                for s in self.resolver.servers
            )
            text = f"names through the tunnel by {servers}"
            if self.resolver.search:
                text += f", search {' '.join(self.resolver.search)}"
            return text
        if self.host_resolver:
            return "names by the host's resolver (--host-resolver)"
        return "no DNS = line: names are refused (IP addresses only)"

    async def resolve(self, name: str, families: Sequence[int] = (A, AAAA)) -> Resolved:
        """The addresses of *name* (an IP literal resolves to itself).
        Raises :class:`~wireguard.dns.ResolutionError` (one line naming
        the name, the names tried and the servers asked) or
        :class:`~wireguard.dns.DNSNameError` for a name that cannot be asked."""
        families = tuple(families)
        try:
            literal = ipaddress.ip_address(name.strip("[]").split("%", 1)[0])
        except ValueError:
            literal = None
        if literal is not None:
            return Resolved(name, name, (literal,), 0)
        if self.resolver is None or not self.resolver.servers:
            if self.host_resolver:
                return await self._host(name, families)
            raise ResolutionError(
                name, "no servers", [name], [], hint="pass --host-resolver to use the host's"
            )
        # 'db.' is absolute and 'db' searched: they are not the same lookup.
        key = (name.lower(), families)
        entry = self._inflight.get(key)
        if entry is None:
            task = asyncio.get_running_loop().create_task(self._lookup(name, families))
            entry = self._inflight[key] = [task, 0]
            task.add_done_callback(functools.partial(self._finished, key, entry))
        task = entry[0]
        entry[1] += 1
        try:
            # Shielded: a caller cancelled (its client left, its connect timed
            # out) does not cancel the queries the others wait for.
            return await asyncio.shield(task)
        finally:
            entry[1] -= 1
            if not entry[1] and not task.done():
                # Nobody waits any more: the queries stop, and a later lookup
                # of the name makes its own.
                if self._inflight.get(key) is entry:
                    del self._inflight[key]
                task.cancel()

    async def _lookup(self, name: str, families: tuple[int, ...]) -> Resolved:
        async with self._slots:
            return await self._run(self.resolver.lookup(name, families))  # type: ignore[union-attr]

    def _finished(self, key: tuple[str, tuple[int, ...]], entry: list[Any], task: Any) -> None:
        if self._inflight.get(key) is entry:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: the waiters (if any) re-raise it

    async def _host(self, name: str, families: tuple[int, ...]) -> Resolved:
        encode_name(name)  # a name that cannot be asked is refused as the DNS path refuses it
        loop = asyncio.get_running_loop()
        family = 0 if len(families) != 1 else (
            socket.AF_INET if families[0] == A else socket.AF_INET6
        )  # fmt: skip
        try:
            infos = await loop.getaddrinfo(name, None, family=family, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ResolutionError(
                name, str(exc.strerror or exc), [name], [], via="the host's resolver"
            ) from None
        self.host_lookups += 1
        seen: list[IPAddress] = []
        for fam in families:
            want = socket.AF_INET if fam == A else socket.AF_INET6
            for info in infos:
                if info[0] == want:
                    address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
                    if address not in seen:
                        seen.append(address)
        return Resolved(name, name, tuple(seen), 0)

    async def _run(self, lookup: Lookup) -> Resolved:
        loop = asyncio.get_running_loop()
        now = self.clock or loop.time
        inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        endpoints: list[asyncio.BaseTransport] = []
        tasks: list[asyncio.Task[None]] = []

        async def send_one(query: Query) -> None:
            try:
                if query.tcp:
                    stream, _ = await self.binding.create_connection(
                        lambda: _TcpAnswer(inbox, query), query.server[0], query.server[1]
                    )
                    endpoints.append(stream)
                else:
                    datagrams, _ = await self.binding.create_datagram_endpoint(
                        lambda: _Inbox(inbox, query), remote_addr=query.server[:2]
                    )
                    endpoints.append(datagrams)
                    datagrams.sendto(query.data)
            except (OSError, WireGuardError, ValueError):
                # no route to the server (not in AllowedIPs), TCP refused or timed out
                inbox.put_nowait(("failed", query.id, None, query.tcp))

        def send(queries: list[Query]) -> None:
            for query in queries:
                tasks.append(loop.create_task(send_one(query)))

        try:
            send(lookup.start(now()))
            while not lookup.done:
                deadline = lookup.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - now())
                try:
                    async with asyncio.timeout(timeout):
                        kind, value, server, tcp = await inbox.get()
                except TimeoutError:
                    send(lookup.handle_timer(now()))
                    continue
                if kind == "data":
                    send(lookup.receive(value, server, now(), tcp=tcp))
                else:
                    send(lookup.failed(value, now()))
            return lookup.result()
        finally:
            for task in tasks:
                task.cancel()
            for transport in endpoints:
                transport.close()


def unreachable(name: str, addresses: Sequence[IPAddress]) -> OSError:
    """The error for a name whose addresses no peer's AllowedIPs cover."""
    shown = ", ".join(str(a) for a in addresses) or "no addresses"
    return OSError(
        errno.ENETUNREACH,
        f"{name} ({shown}) is not in any peer's AllowedIPs (network is unreachable)",
    )
