"""A minimal asyncio binding for :class:`wireguard.dns.Lookup`, for tests:
UDP through kernel sockets, TCP through asyncio streams. ``clock`` gives
``now`` (a test can shift it to make cached answers expire)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from wireguard.dns import Lookup, Query, Resolved, Resolver, TCPFrameReader, tcp_frame


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, inbox: asyncio.Queue, query: Query) -> None:
        self.inbox = inbox
        self.query = query

    def datagram_received(self, data: bytes, addr) -> None:
        self.inbox.put_nowait(("data", data, (addr[0], addr[1]), False))

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable
        self.inbox.put_nowait(("failed", self.query.id, None, False))


async def _tcp(query: Query, inbox: asyncio.Queue) -> None:
    try:
        reader, writer = await asyncio.open_connection(*query.server)
    except OSError:
        inbox.put_nowait(("failed", query.id, None, True))
        return
    try:
        writer.write(tcp_frame(query.data))
        frames = TCPFrameReader()
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                inbox.put_nowait(("failed", query.id, None, True))
                return
            for message in frames.feed(chunk):
                inbox.put_nowait(("data", message, query.server, True))
                return
    finally:
        writer.close()


async def run_lookup(
    lookup: Lookup, clock: Callable[[], float] = time.monotonic, sent: list[Query] | None = None
) -> Resolved:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()
    transports = []
    tasks = []

    def send(queries: list[Query]) -> None:
        for query in queries:
            if sent is not None:
                sent.append(query)
            if query.tcp:
                tasks.append(asyncio.ensure_future(_tcp(query, inbox)))
                continue
            family = socket.AF_INET6 if ":" in query.server[0] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect(query.server)  # a connected socket hears ICMP port unreachable
            sock.send(query.data)
            pending.append((sock, query))

    pending: list[tuple[socket.socket, Query]] = []
    try:
        send(lookup.start(clock()))
        while not lookup.done:
            while pending:
                sock, query = pending.pop()
                transport, _ = await loop.create_datagram_endpoint(
                    lambda q=query: _UDP(inbox, q), sock=sock
                )
                transports.append(transport)
            deadline = lookup.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - clock())
            try:
                kind, value, server, tcp = await asyncio.wait_for(inbox.get(), timeout)
            except TimeoutError:
                send(lookup.handle_timer(clock()))
                continue
            if kind == "data":
                send(lookup.receive(value, server, clock(), tcp=tcp))
            else:
                send(lookup.failed(value, clock()))
        return lookup.result()
    finally:
        for transport in transports:
            transport.close()
        for task in tasks:
            task.cancel()
        for sock, _ in pending:
            sock.close()


def resolve(
    resolver: Resolver,
    name: str,
    clock: Callable[[], float] = time.monotonic,
    sent: list[Query] | None = None,
    families=None,
) -> Resolved:
    lookup = resolver.lookup(name) if families is None else resolver.lookup(name, families)
    return asyncio.run(run_lookup(lookup, clock, sent))
