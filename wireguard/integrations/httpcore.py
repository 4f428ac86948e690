"""An httpcore network backend whose TCP connections go through a
:class:`~wireguard.io.rootless.RootlessTunnel` (the ``httpx`` extra)::

    import httpcore
    from wireguard.integrations.httpcore import TunnelBackend

    async with httpcore.AsyncConnectionPool(network_backend=TunnelBackend(tunnel)) as pool:
        response = await pool.request("GET", "http://10.0.0.1/")

httpcore's extension point is :class:`httpcore.AsyncNetworkBackend`
(``connect_tcp`` returning an :class:`httpcore.AsyncNetworkStream`), which
:class:`httpcore.AsyncConnectionPool` takes as ``network_backend``. httpx's
own :class:`httpx.AsyncHTTPTransport` does not pass a backend on, hence
:class:`wireguard.integrations.httpx.TunnelTransport`.

TLS (``start_tls``) is done here with :class:`ssl.SSLObject` over memory
buffers, since the tunnel's transports are not ones asyncio's ``start_tls``
accepts; the stream's ``get_extra_info("ssl_object")`` is that object.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

import httpcore

from ..dns import ResolutionError
from ..io.rootless import RootlessTunnel

__all__ = ["TunnelBackend", "TunnelStream"]

_READ = 65536
_T = TypeVar("_T")


@contextlib.asynccontextmanager
async def _limits(
    timeout: float | None, on_timeout: type[Exception], on_error: type[Exception]
) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        raise on_timeout(f"timed out after {timeout} s") from None
    except (OSError, ValueError, ResolutionError) as exc:
        raise on_error(str(exc) or type(exc).__name__) from exc


class TunnelStream(httpcore.AsyncNetworkStream):
    """One TCP connection of the tunnel's stack, as httpcore reads and writes it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        async with _limits(timeout, httpcore.ReadTimeout, httpcore.ReadError):
            return await self._reader.read(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        async with _limits(timeout, httpcore.WriteTimeout, httpcore.WriteError):
            self._writer.write(buffer)
            await self._writer.drain()

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = _TlsStream(self, ssl_context, server_hostname)
        try:
            async with _limits(timeout, httpcore.ConnectTimeout, httpcore.ConnectError):
                await stream.handshake()
        except BaseException:
            await self.aclose()
            raise
        return stream

    def get_extra_info(self, info: str) -> Any:
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        if info == "is_readable":
            # an idle pooled connection that the server closed (FIN) or reset
            reader = self._reader
            return reader.at_eof() or reader.exception() is not None
        return None


class _TlsStream(httpcore.AsyncNetworkStream):
    """TLS over a :class:`TunnelStream`: an :class:`ssl.SSLObject` on memory buffers."""

    def __init__(
        self, inner: TunnelStream, context: ssl.SSLContext, server_hostname: str | None
    ) -> None:
        self._inner = inner
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming, self._outgoing, server_side=False, server_hostname=server_hostname
        )

    async def _flush(self, timeout: float | None) -> None:
        data = self._outgoing.read()
        if data:
            await self._inner.write(data, timeout)

    async def _run(self, operation: Callable[..., _T], *args: Any, timeout: float | None) -> _T:
        while True:
            try:
                result = operation(*args)
            except ssl.SSLWantReadError:
                await self._flush(timeout)
                data = await self._inner.read(_READ, timeout)
                if data:
                    self._incoming.write(data)
                else:
                    self._incoming.write_eof()
                continue
            await self._flush(timeout)
            return result

    async def handshake(self) -> None:
        # every failure of the handshake is a connect error, as in httpcore's
        # own backends (the pool retries those when asked to)
        try:
            await self._run(self._ssl.do_handshake, timeout=None)
        except (ssl.SSLError, httpcore.ReadError, httpcore.WriteError) as exc:
            raise httpcore.ConnectError(f"TLS handshake: {exc}") from exc

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            return await self._run(self._ssl.read, max_bytes, timeout=timeout)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""  # closed (cleanly, or without close_notify: HTTP frames itself)
        except ssl.SSLError as exc:
            raise httpcore.ReadError(f"TLS: {exc}") from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        try:
            while view:
                sent = await self._run(self._ssl.write, view, timeout=timeout)
                view = view[sent:]
        except ssl.SSLError as exc:
            raise httpcore.WriteError(f"TLS: {exc}") from exc

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            self._ssl.unwrap()
            await asyncio.wait_for(self._flush(None), 1.0)
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("TLS inside TLS (an HTTPS proxy) is not supported")

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._ssl
        return self._inner.get_extra_info(info)


class TunnelBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend on *tunnel* (started): ``connect_tcp`` is
    the tunnel's ``open_connection(host, port)``, the host passed as the URL
    gives it. A destination no peer's AllowedIPs cover fails at once with
    :class:`httpcore.ConnectError` (ENETUNREACH), as does a name the tunnel
    cannot resolve."""

    def __init__(self, tunnel: RootlessTunnel) -> None:
        self.tunnel = tunnel

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # local_address and socket options belong to kernel sockets: the
        # stack's connection always leaves from the tunnel's address.
        async with _limits(timeout, httpcore.ConnectTimeout, httpcore.ConnectError):
            reader, writer = await self.tunnel.open_connection(host, port)
        return TunnelStream(reader, writer)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("there are no Unix sockets through a WireGuard tunnel")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
