"""The HTTP client integrations (wireguard.integrations) between two rootless
tunnels on loopback: httpx / httpcore and aiohttp, plain and with TLS."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp  # the [test] extra has both clients: missing is a failure, not a skip
import httpx
import pytest

from tests.conftest import self_signed_pem, until
from tests.test_rootless import B_ADDR, pair, run
from wireguard.integrations.aiohttp import TunnelConnector
from wireguard.integrations.httpx import TunnelTransport

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A keep-alive HTTP/1.1 server answering "ok" to every request."""
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(RESPONSE)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def https_on(tunnel, pem: Path, port: int = 443) -> AsyncIterator[None]:
    """An HTTPS server (a kernel one on loopback, TLS by asyncio) that *tunnel*
    serves on *port* by relaying the connections to it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    origin = await asyncio.start_server(http, "127.0.0.1", 0, ssl=context)
    origin_port = origin.sockets[0].getsockname()[1]

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", origin_port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await tunnel.start_server(relay, port=port)
    try:
        yield
    finally:
        server.close()
        origin.close()


# ------------------------------------------------------------------ httpx


def test_httpx_unresolvable_name_is_a_connect_error() -> None:
    """httpx raises ConnectError for a name that does not resolve (as for a
    kernel socket's gaierror), not the tunnel's own ResolutionError."""

    async def body() -> None:
        a, b = pair()
        async with a, b, httpx.AsyncClient(transport=TunnelTransport(a)) as client:
            with pytest.raises(httpx.ConnectError, match="no DNS servers"):
                await client.get("http://nosuch.invalid/")

    run(body)


def test_httpx_replaces_a_pooled_connection_the_server_reset() -> None:
    """httpcore asks a pooled stream ``is_readable`` to drop connections the
    server ended; a reset one is as ended as one closed with a FIN."""

    async def body() -> None:
        a, b = pair()
        writers: list[asyncio.StreamWriter] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            await http(reader, writer)

        async with a, b, httpx.AsyncClient(transport=TunnelTransport(a)) as client:
            await b.start_server(serve, port=80)
            assert (await client.get(f"http://{B_ADDR[0]}/")).text == "ok"
            writers[0].transport.abort()  # RST on the idle keep-alive connection
            await until(lambda: not a._transports, 5.0)  # the reset reached A
            response = await client.get(f"http://{B_ADDR[0]}/")
            assert response.text == "ok"
            assert len(writers) == 2

    run(body)


# ---------------------------------------------------------------- aiohttp


def test_aiohttp_unresolvable_name_is_a_dns_error() -> None:
    """aiohttp's connectors raise ClientConnectorDNSError for a name that does
    not resolve, not the tunnel's own ResolutionError."""

    async def body() -> None:
        a, b = pair()
        async with a, b, aiohttp.ClientSession(connector=TunnelConnector(a)) as session:
            with pytest.raises(aiohttp.ClientConnectorDNSError, match="no DNS servers"):
                await session.get("http://nosuch.invalid/")

    run(body)


def test_aiohttp_untrusted_certificate_fails_at_once(tmp_path: Path) -> None:
    """A certificate that does not verify is ClientConnectorCertificateError,
    as with aiohttp's TCPConnector, at once: not a connect timeout."""

    async def body() -> None:
        pem = tmp_path / "tls.pem"
        self_signed_pem(pem, B_ADDR)
        a, b = pair()
        timeout = aiohttp.ClientTimeout(total=20)
        async with a, b, https_on(b, pem):
            async with aiohttp.ClientSession(connector=TunnelConnector(a)) as session:
                # (Before the fix: a timeout error, once the request timed out.)
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await session.get(f"https://{B_ADDR[0]}/", timeout=timeout)
            assert not a._transports  # the failed connection was not left open

    run(body)


def test_aiohttp_request_ssl_option(tmp_path: Path) -> None:
    """``session.get(url, ssl=...)`` is honoured as aiohttp's TCPConnector
    honours it: a context, False (no check), a Fingerprint (pinned)."""

    async def body() -> None:
        pem = tmp_path / "tls.pem"
        self_signed_pem(pem, B_ADDR)
        text = pem.read_text()
        der = ssl.PEM_cert_to_DER_cert(text[text.index("-----BEGIN CERTIFICATE-----") :])
        trusted = ssl.create_default_context(cafile=str(pem))
        a, b = pair()
        url = f"https://{B_ADDR[0]}/"
        timeout = aiohttp.ClientTimeout(total=20)
        async with a, b, https_on(b, pem):
            async with aiohttp.ClientSession(connector=TunnelConnector(a)) as session:
                for option in (trusted, False, aiohttp.Fingerprint(hashlib.sha256(der).digest())):
                    async with session.get(url, ssl=option, timeout=timeout) as response:
                        assert await response.text() == "ok"
                with pytest.raises(aiohttp.ServerFingerprintMismatch):
                    await session.get(url, ssl=aiohttp.Fingerprint(bytes(32)), timeout=timeout)
            # and the connector's own ssl=False is not overridden by the default True
            connector = TunnelConnector(a, ssl=False)
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.get(url, timeout=timeout) as response,
            ):
                assert await response.text() == "ok"

    run(body)


def test_httpx_reset_during_tls_handshake_is_a_connect_error(tmp_path: Path) -> None:
    """httpcore's own backends raise ConnectError for anything that ends
    ``start_tls`` (its pool retries those with ``retries=``), not ReadError."""

    async def body() -> None:
        a, b = pair()
        hellos = 0

        async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal hellos
            await reader.read(65536)  # the ClientHello
            hellos += 1
            writer.transport.abort()

        async with a, b:
            await b.start_server(reset, port=443)
            transport = TunnelTransport(a, retries=1)
            async with httpx.AsyncClient(transport=transport, timeout=20) as client:
                with pytest.raises(httpx.ConnectError, match="TLS handshake"):
                    await client.get(f"https://{B_ADDR[0]}/")
            assert hellos == 2  # tried again once

    run(body)


def test_aiohttp_connect_error_says_why() -> None:
    """ClientConnectorError's message is its OSError's strerror: the stack's
    refusal (an OSError without one) still says what happened."""

    async def body() -> None:
        a, b = pair()
        async with a, b, aiohttp.ClientSession(connector=TunnelConnector(a)) as session:
            with pytest.raises(aiohttp.ClientConnectorError, match="refused") as caught:
                await session.get(f"http://{B_ADDR[0]}:81/")
            assert isinstance(caught.value.os_error, ConnectionRefusedError)

    run(body)
