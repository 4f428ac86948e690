"""An httpx transport through a :class:`~wireguard.io.rootless.RootlessTunnel`
(the ``httpx`` extra)::

    import httpx
    from wireguard.integrations.httpx import TunnelTransport

    async with httpx.AsyncClient(transport=TunnelTransport(tunnel)) as client:
        response = await client.get("http://10.0.0.1/")

:class:`httpx.AsyncHTTPTransport` builds its httpcore pool itself and takes
no network backend, so this transport does what it does (httpx request to
httpcore request, httpcore errors to httpx's) around an
:class:`httpcore.AsyncConnectionPool` whose backend is
:class:`~wireguard.integrations.httpcore.TunnelBackend`.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

import httpcore
import httpx

from ..io.rootless import RootlessTunnel
from .httpcore import TunnelBackend

__all__ = ["TunnelTransport"]


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except httpcore.TimeoutException as exc:
        raise getattr(httpx, type(exc).__name__, httpx.TimeoutException)(str(exc)) from exc
    except httpcore.NetworkError as exc:
        raise getattr(httpx, type(exc).__name__, httpx.NetworkError)(str(exc)) from exc
    except (httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
        raise getattr(httpx, type(exc).__name__, httpx.TransportError)(str(exc)) from exc


class _Body(httpx.AsyncByteStream):
    def __init__(self, stream: Iterable[bytes] | AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            if isinstance(self._stream, AsyncIterable):
                async for part in self._stream:
                    yield part
            else:
                for part in self._stream:
                    yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            with _httpx_errors():
                await close()


class TunnelTransport(httpx.AsyncBaseTransport):
    """Requests of an :class:`httpx.AsyncClient` through *tunnel* (started).
    *verify* is an :class:`ssl.SSLContext`, True (the system's CAs) or False
    (no certificate check); *limits*, *http1*, *http2* and *retries* as for
    :class:`httpx.AsyncHTTPTransport` (HTTP/2 needs the ``h2`` package)."""

    def __init__(
        self,
        tunnel: RootlessTunnel,
        *,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits | None = None,
        http1: bool = True,
        http2: bool = False,
        retries: int = 0,
    ) -> None:
        if isinstance(verify, ssl.SSLContext):
            context = verify
        else:
            context = ssl.create_default_context()
            if not verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self.backend = TunnelBackend(tunnel)
        self.pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=http1,
            http2=http2,
            retries=retries,
            network_backend=self.backend,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors():
            response = await self.pool.handle_async_request(core)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.pool.aclose()
