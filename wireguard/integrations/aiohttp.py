"""An aiohttp connector whose connections go through a
:class:`~wireguard.io.rootless.RootlessTunnel` (the ``aiohttp`` extra)::

    import aiohttp
    from wireguard.integrations.aiohttp import TunnelConnector

    async with aiohttp.ClientSession(connector=TunnelConnector(tunnel)) as session:
        async with session.get("http://10.0.0.1/") as response:
            body = await response.read()

A resolver (:class:`aiohttp.abc.AbstractResolver`) alone cannot do this: it
only turns names into addresses, and the connection would still be a kernel
socket. The connector is a :class:`aiohttp.BaseConnector` whose
``_create_connection`` (the method aiohttp's own ``UnixConnector`` and
``NamedPipeConnector`` provide) opens the connection with the tunnel's
``create_connection(protocol_factory, host, port)``, the host as the URL
gives it; ``https://`` runs TLS in the process (:mod:`asyncio.sslproto`'s
protocol over the tunnel's transport), keep-alive and the connection limits
are aiohttp's.
"""

from __future__ import annotations

import asyncio
import ssl
from asyncio import sslproto
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.client_proto import ResponseHandler

from ..dns import ResolutionError
from ..io.rootless import RootlessTunnel

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.tracing import Trace

__all__ = ["TunnelConnector"]


class TunnelConnector(aiohttp.BaseConnector):
    """aiohttp's connections through *tunnel* (started). *ssl* is an
    :class:`ssl.SSLContext`, True (the system's CAs) or False (no certificate
    check) for ``https://``, unless a request's own ``ssl=`` (a context,
    False, an :class:`aiohttp.Fingerprint`) says otherwise; the other options are
    :class:`aiohttp.BaseConnector`'s (``limit``, ``keepalive_timeout``, ...)."""

    def __init__(
        self, tunnel: RootlessTunnel, *, ssl: ssl.SSLContext | bool = True, **options: Any
    ) -> None:
        super().__init__(**options)
        self.tunnel = tunnel
        self._ssl_option = ssl

    def _context(self, req: ClientRequest) -> ssl.SSLContext:
        # the request's ``ssl=`` first, as aiohttp's TCPConnector does: a
        # context is used as is, False or a Fingerprint skip the CA check
        option = req.ssl if req.ssl is not True else self._ssl_option
        if isinstance(option, ssl.SSLContext):
            return option
        context = ssl.create_default_context()
        if option is not True:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def _create_connection(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> ResponseHandler:
        host, port = req.url.raw_host, req.url.port
        assert host is not None and port is not None
        try:
            async with asyncio.timeout(timeout.sock_connect or timeout.connect):
                if not req.is_ssl():
                    _, protocol = await self.tunnel.create_connection(self._factory, host, port)
                    assert isinstance(protocol, ResponseHandler)
                    return protocol
                return await self._tls(host, port, req)
        except TimeoutError:
            raise aiohttp.ServerTimeoutError(
                f"connection to {host}:{port} through the tunnel timed out"
            ) from None
        except ResolutionError as exc:
            dns_error = getattr(aiohttp, "ClientConnectorDNSError", aiohttp.ClientConnectorError)
            raise dns_error(req.connection_key, OSError(None, str(exc))) from exc
        except ssl.CertificateError as exc:
            raise aiohttp.ClientConnectorCertificateError(req.connection_key, exc) from exc
        except ssl.SSLError as exc:
            raise aiohttp.ClientConnectorSSLError(req.connection_key, exc) from exc
        except (OSError, ValueError) as exc:
            error = exc if isinstance(exc, OSError) else OSError(None, str(exc))
            if error.strerror is None:  # an OSError made without one (ValueError's above)
                error.strerror = str(exc) or type(exc).__name__  # aiohttp shows it
            raise aiohttp.ClientConnectorError(req.connection_key, error) from exc

    async def _tls(self, host: str, port: int, req: ClientRequest) -> ResponseHandler:
        loop = asyncio.get_running_loop()
        application = self._factory()
        waiter: asyncio.Future[None] = loop.create_future()
        server_hostname = req.server_hostname or host.rstrip(".")
        tls = sslproto.SSLProtocol(
            loop, application, self._context(req), waiter, server_hostname=server_hostname
        )
        transport, _ = await self.tunnel.create_connection(lambda: _Feed(tls), host, port)
        try:
            await waiter
            fingerprint = req.ssl if isinstance(req.ssl, aiohttp.Fingerprint) else None
            if fingerprint is not None:
                assert application.transport is not None
                fingerprint.check(application.transport)
        except BaseException:
            transport.abort()
            raise
        assert isinstance(application, ResponseHandler)
        return application


class _Feed(asyncio.Protocol):
    """The tunnel's transports call ``data_received``; asyncio's TLS protocol
    is a buffered one (``get_buffer`` / ``buffer_updated``): this passes on."""

    def __init__(self, inner: asyncio.BufferedProtocol) -> None:
        self.inner = inner
        self.error: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.inner.connection_made(_Lower(transport, self))

    def data_received(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            buffer = memoryview(self.inner.get_buffer(len(view)))
            n = min(len(buffer), len(view))
            if n == 0:
                raise RuntimeError("the TLS protocol offered an empty buffer")
            buffer[:n] = view[:n]
            self.inner.buffer_updated(n)
            view = view[n:]

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc if exc is not None else self.error)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class _Lower(asyncio.Transport):
    """The tunnel's transport as asyncio's TLS protocol uses it, which also
    calls ``_force_close(exc)`` (asyncio's own transports have it) when the
    handshake or a record fails, and from Python 3.13 on for ``abort()``:
    the connection is reset and ``connection_lost`` gets *exc*."""

    def __init__(self, transport: asyncio.Transport, feed: _Feed) -> None:
        super().__init__()
        self._transport, self._feed = transport, feed

    def _force_close(self, exc: Exception | None) -> None:
        if self._feed.error is None:
            self._feed.error = exc
        self._transport.abort()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)

    def close(self) -> None:
        self._transport.close()

    def abort(self) -> None:
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)
