"""A small asyncio HTTP proxy around :mod:`wireguard.httpproxy` for tests
(kernel sockets, the host's resolver): what a binding does with the two
cores. One upstream connection per client connection, kept while the
target's responses say it can be reused."""

from __future__ import annotations

import asyncio
import contextlib

from wireguard.httpproxy import (
    ForwardRequest,
    HTTPProxyError,
    HTTPProxyServer,
    RequestBody,
    RequestEnd,
    TunnelData,
    TunnelRequest,
    UpstreamError,
    UpstreamResponse,
)


class ProxyHarness:
    def __init__(self, credentials: dict[str, str] | None = None) -> None:
        self.credentials = credentials
        self.errors: list[Exception] = []
        self.requests: list[ForwardRequest | TunnelRequest] = []
        self.connections = 0
        self.upstream_connections = 0

    async def __aenter__(self) -> ProxyHarness:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _client(self, reader, writer) -> None:
        self.connections += 1
        conn = _Connection(self, reader, writer)
        try:
            await conn.run()
        finally:
            await conn.close()


class _Connection:
    def __init__(self, harness: ProxyHarness, reader, writer) -> None:
        self.harness = harness
        self.reader = reader
        self.writer = writer
        self.core = HTTPProxyServer(harness.credentials)
        self.up: tuple[tuple[str, int], asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.response_task: asyncio.Task | None = None
        self.resumed = asyncio.Event()
        self.tunnel_task: asyncio.Task | None = None

    async def flush(self) -> None:
        data = self.core.data_to_send()
        if data:
            self.writer.write(data)
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()

    async def run(self) -> None:
        core = self.core
        while not core.closing:
            if core.paused:
                self.resumed.clear()
                await self.resumed.wait()
                continue
            data = await self.reader.read(65536)
            if not data:
                core.receive_eof()
                break
            try:
                events = core.receive_data(data)
            except HTTPProxyError as exc:
                self.harness.errors.append(exc)
                await self.flush()
                return
            await self.handle(events)
            await self.flush()
        if self.response_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.response_task

    async def handle(self, events) -> None:
        for event in events:
            if isinstance(event, TunnelRequest):
                self.harness.requests.append(event)
                try:
                    up_reader, up_writer = await asyncio.open_connection(event.host, event.port)
                except OSError as exc:
                    self.core.failed(502, f"cannot connect: {exc}")
                    await self.flush()
                    return
                self.up = ((event.host, event.port), up_reader, up_writer)
                early = self.core.tunnel_established()
                await self.flush()
                for e in early:
                    up_writer.write(e.data)
                self.tunnel_task = asyncio.ensure_future(self.pipe(up_reader, self.writer))
            elif isinstance(event, TunnelData):
                assert self.up is not None
                self.up[2].write(event.data)
            elif isinstance(event, ForwardRequest):
                self.harness.requests.append(event)
                if self.response_task is not None:
                    await self.response_task
                key = (event.host, event.port)
                if self.up is None or self.up[0] != key:
                    if self.up is not None:
                        self.up[2].close()
                    try:
                        up_reader, up_writer = await asyncio.open_connection(*key)
                    except OSError as exc:
                        self.core.failed(502, f"cannot connect to {key}: {exc}")
                        await self.flush()
                        return
                    self.harness.upstream_connections += 1
                    self.up = (key, up_reader, up_writer)
                self.up[2].write(event.head)
                self.response_task = asyncio.ensure_future(self.response(event.method))
            elif isinstance(event, RequestBody | RequestEnd):
                assert self.up is not None
                self.up[2].write(event.data)

    async def pipe(self, src, dst) -> None:
        with contextlib.suppress(OSError):
            while chunk := await src.read(65536):
                dst.write(chunk)
                await dst.drain()
        with contextlib.suppress(OSError):
            dst.write_eof()

    async def response(self, method: str) -> None:
        assert self.up is not None
        _, up_reader, up_writer = self.up
        upstream = UpstreamResponse(method)
        while not upstream.done:
            data = await up_reader.read(65536)
            try:
                events = upstream.receive_data(data) if data else upstream.receive_eof()
            except UpstreamError as exc:
                self.harness.errors.append(exc)
                self.core.failed(502, str(exc))
                await self.flush()
                self.writer.close()
                return
            for event in events:
                self.core.send_response(event)
            await self.flush()
        if not upstream.reusable:
            up_writer.close()
            self.up = None
        self.response_task = None
        if self.core.closing:
            self.writer.close()
            return
        try:
            events = self.core.receive_data(b"")  # a pipelined request held meanwhile
        except HTTPProxyError as exc:
            self.harness.errors.append(exc)
            await self.flush()
            self.writer.close()
            return
        self.resumed.set()
        await self.handle(events)
        await self.flush()

    async def close(self) -> None:
        if self.tunnel_task is not None:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                if self.up is not None:
                    self.up[2].write_eof()
                await asyncio.wait_for(self.tunnel_task, 10)
        if self.up is not None:
            self.up[2].close()
        with contextlib.suppress(OSError):
            await self.writer.drain()
        self.writer.close()
