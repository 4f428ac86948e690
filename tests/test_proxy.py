"""The SOCKS5 and HTTP proxies and names through the tunnel, in-process and
unprivileged: two rootless tunnels on loopback (as in test_rootless.py).

Behind tunnel B, through ``-R`` forwards of B's stack: a real dnsmasq on
loopback (port 53 of B's address, UDP and TCP), an h11 origin server (port
80) and echo services. The clients are real ones: curl (``--socks5-hostname``,
``--proxy http://``), httpx with socksio, and SOCKS5 UDP ASSOCIATE written
with the standard socket module from RFC 1928's byte layout. The interop
version (wireguard-go, dnsmasq in a namespace, the proxy as nobody) is
tests/interop/test_proxy.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import re
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import need_tool, until
from tests.http_origin import PAYLOAD, Origin
from tests.test_dns import HOSTS, Dnsmasq
from wireguard.device import Device
from wireguard.dns import DNSNameError, ResolutionError, Resolver
from wireguard.io.forward import ForwardOptions, make_forward, parse_forward
from wireguard.io.names import TunnelResolver
from wireguard.io.proxy import (
    ProxyOptions,
    ProxySpecError,
    parse_listen,
    start_http_proxy,
    start_socks5,
)
from wireguard.io.rootless import RootlessTunnel
from wireguard.keys import PrivateKey

A_ADDR = ("10.98.0.1", "fd98::1")
B_ADDR = ("10.98.0.2", "fd98::2")
SILENT = "10.98.0.3"  # in A's AllowedIPs for B; nothing answers it (B's stack ignores it)
NAMES = [
    f"{B_ADDR[0]} b.test",
    f"{B_ADDR[1]} b.test",
    f"{B_ADDR[1]} b6.test",  # AAAA only
    f"{SILENT} silent.test",
    f"{B_ADDR[0]} www.corp.test",
]
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
DNS_TTL = 120  # tests/test_dns.py's dnsmasq: --auth-ttl


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = 120.0) -> None:
    async def main() -> None:
        async with asyncio.timeout(timeout):
            await coro_fn()

    asyncio.run(main())


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory):
    need_tool("dnsmasq")
    server = Dnsmasq(tmp_path_factory.mktemp("dnsmasq"))
    server.reload([*HOSTS, *NAMES])
    yield server
    server.close()


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def pair() -> tuple[RootlessTunnel, RootlessTunnel, PrivateKey, PrivateKey]:
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    sock_a, sock_b = udp_socket(), udp_socket()
    dev_a, dev_b = Device(key_a), Device(key_b)
    dev_a.add_peer(
        key_b.public_key,
        allowed_ips=[f"{B_ADDR[0]}/32", f"{B_ADDR[1]}/128", f"{SILENT}/32"],
        endpoint=sock_b.getsockname(),
    )
    dev_b.add_peer(
        key_a.public_key,
        allowed_ips=[f"{A_ADDR[0]}/32", f"{A_ADDR[1]}/128"],
        endpoint=sock_a.getsockname(),
    )
    a = RootlessTunnel(dev_a, [f"{A_ADDR[0]}/24", f"{A_ADDR[1]}/64"], sock=sock_a)
    b = RootlessTunnel(dev_b, [f"{B_ADDR[0]}/24", f"{B_ADDR[1]}/64"], sock=sock_b)
    return a, b, key_a, key_b


class Clock:
    """The loop's time plus a shift a test moves on (past a TTL)."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return asyncio.get_running_loop().time() + self.shift


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
        self.transport.sendto(b"echo:" + data, addr)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@dataclass
class World:
    a: RootlessTunnel
    b: RootlessTunnel
    origin: Origin
    socks: object
    http: object
    clock: Clock
    resolver: Resolver | None
    key_a: PrivateKey
    key_b: PrivateKey

    @property
    def socks_port(self) -> int:
        return self.socks.port  # type: ignore[attr-defined, no-any-return]

    @property
    def http_port(self) -> int:
        return self.http.port  # type: ignore[attr-defined, no-any-return]


@contextlib.asynccontextmanager
async def world(
    dnsmasq: Dnsmasq,
    *,
    servers: list[object] | None = None,
    options: ProxyOptions | None = None,
    timeout: float = 1.0,
) -> AsyncIterator[World]:
    a, b, key_a, key_b = pair()
    clock = Clock()
    resolver = Resolver(
        [B_ADDR[0]] if servers is None else servers, ["corp.test"], timeout=timeout
    )
    a.names = TunnelResolver(a, resolver, clock=clock)
    fwd = ForwardOptions()
    async with Origin() as origin, b, a:
        made = [
            make_forward(parse_forward(f"udp:53:127.0.0.1:{dnsmasq.port}", "R"), b, fwd),
            make_forward(parse_forward(f"53:127.0.0.1:{dnsmasq.port}", "R"), b, fwd),
            make_forward(parse_forward(f"80:127.0.0.1:{origin.port}", "R"), b, fwd),
        ]
        for f in made:
            await f.start()
        await b.start_server(echo, port=7)
        await b.create_datagram_endpoint(UdpEcho, local_addr=(None, 7))
        socks = await start_socks5(a, "127.0.0.1", 0, options=options)
        http = await start_http_proxy(a, "127.0.0.1", 0, options=options)
        try:
            yield World(a, b, origin, socks, http, clock, resolver, key_a, key_b)
        finally:
            await socks.close()
            await http.close()
            for f in made:
                await f.close()


async def curl(*args: str) -> tuple[int, bytes, str]:
    proc = await asyncio.create_subprocess_exec(
        need_tool("curl"), "-sS", "--noproxy", "", "--max-time", "60", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err.decode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ names


def test_names_through_the_tunnel_a_and_aaaa_cached_for_their_ttl(dnsmasq) -> None:
    async def body() -> None:
        async with world(dnsmasq) as w:
            assert await w.a.resolve("b.test") == [B_ADDR[0], B_ADDR[1]]
            assert w.resolver is not None
            queries = w.resolver.stats["queries"]
            assert queries == 2  # A and AAAA, through B's stack to dnsmasq
            assert await w.a.resolve("b.test", socket.AF_INET6) == [B_ADDR[1]]
            assert w.resolver.stats["queries"] == queries  # from the cache
            # The TTL runs out after dnsmasq's address changed: asked again.
            dnsmasq.reload([*HOSTS, *NAMES, "10.98.0.9 moving.test"])
            assert await w.a.resolve("moving.test", socket.AF_INET) == ["10.98.0.9"]
            dnsmasq.reload([*HOSTS, *NAMES, "10.98.0.10 moving.test"])
            w.clock.shift = DNS_TTL - 1
            assert await w.a.resolve("moving.test", socket.AF_INET) == ["10.98.0.9"]
            w.clock.shift = DNS_TTL + 1
            assert await w.a.resolve("moving.test", socket.AF_INET) == ["10.98.0.10"]
            dnsmasq.reload([*HOSTS, *NAMES])

    run(body)


def test_nxdomain_names_the_name_and_server_and_is_cached(dnsmasq) -> None:
    async def body() -> None:
        async with world(dnsmasq) as w:
            with pytest.raises(ResolutionError) as info:
                await w.a.resolve("nothere.test")
            text = str(info.value)
            assert "'nothere.test'" in text and "NXDOMAIN" in text and B_ADDR[0] in text
            assert "\n" not in text
            assert w.resolver is not None
            queries = w.resolver.stats["queries"]
            with pytest.raises(ResolutionError):
                await w.a.resolve("nothere.test")
            assert w.resolver.stats["queries"] == queries  # the negative answer is cached

    run(body)


def test_a_truncated_answer_is_asked_again_over_tcp_through_the_tunnel(dnsmasq) -> None:
    async def body() -> None:
        async with world(dnsmasq) as w:
            got = await w.a.resolve("big.test", socket.AF_INET)
            assert sorted(map(ipaddress.ip_address, got)) == [
                ipaddress.ip_address(f"10.9.0.{i}") for i in range(1, 101)
            ]
            assert w.resolver is not None
            assert w.resolver.stats["truncated"] == 1 and w.resolver.stats["tcp"] == 1

    run(body)


def test_search_domains_and_aaaa_only_names(dnsmasq) -> None:
    async def body() -> None:
        async with world(dnsmasq) as w:
            assert await w.a.resolve("db") == ["10.5.5.5"]  # db.corp.test
            assert await w.a.resolve("www") == [B_ADDR[0]]
            assert await w.a.resolve("b6.test") == [B_ADDR[1]]
            # The AAAA-only name is reached over IPv6 inside the tunnel.
            reader, writer = await w.a.open_connection("b6.test", 7)
            assert writer.get_extra_info("peername")[0] == B_ADDR[1]
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.close()

    run(body)


def test_an_absolute_name_is_not_answered_by_a_relative_lookup_in_flight(dnsmasq) -> None:
    """'db' is searched (db.corp.test); 'db.' is absolute and asked alone
    (RFC 1034 3.1, resolv.conf(5)): two lookups at once must not share."""

    async def body() -> None:
        async with world(dnsmasq) as w:
            relative, absolute = await asyncio.gather(
                w.a.resolve("db"), w.a.resolve("db."), return_exceptions=True
            )
            assert relative == ["10.5.5.5"]
            assert isinstance(absolute, ResolutionError), absolute

    run(body)


def test_a_lookup_shared_with_a_cancelled_one_still_gets_its_answer(dnsmasq) -> None:
    """The first of two lookups of one name is cancelled (its client left, its
    connect timed out): the second, which shares its queries, still resolves;
    with no one left waiting, the queries stop."""

    async def body() -> None:
        async with world(dnsmasq) as w:
            first = asyncio.ensure_future(w.a.resolve("www"))
            second = asyncio.ensure_future(w.a.resolve("www"))
            await asyncio.sleep(0)  # both started: the second shares the first's
            first.cancel()
            assert await second == [B_ADDR[0]]
            assert first.cancelled()
            alone = asyncio.ensure_future(w.a.resolve("b.test"))
            await asyncio.sleep(0)
            alone.cancel()
            with pytest.raises(asyncio.CancelledError):
                await alone
            assert await w.a.resolve("b.test", socket.AF_INET) == [B_ADDR[0]]

    run(body)


def test_a_dead_server_then_a_live_one_and_all_dead(dnsmasq) -> None:
    async def body() -> None:
        dead = (B_ADDR[0], 5399)  # B's stack: nothing listens there
        async with world(dnsmasq, servers=[dead, B_ADDR[0]], timeout=0.3) as w:
            assert await w.a.resolve("b.test", socket.AF_INET) == [B_ADDR[0]]
            # B's stack answers the dead port with a port unreachable, which
            # reaches the connected query socket: the next server at once.
            assert w.resolver is not None and w.resolver.stats["send_failures"] >= 1
        async with world(dnsmasq, servers=[dead, SILENT], timeout=0.2) as w:
            with pytest.raises(ResolutionError) as info:
                await w.a.resolve("b.test")
            text = str(info.value)
            assert "timed out" in text and f"{B_ADDR[0]}:5399" in text and SILENT in text

    run(body)


def test_open_connection_and_datagram_endpoint_by_name(dnsmasq) -> None:
    async def body() -> None:
        async with world(dnsmasq) as w:
            reader, writer = await w.a.open_connection("b.test", 7)
            writer.write(b"hello")
            assert await reader.readexactly(5) == b"hello"
            writer.close()
            got: asyncio.Queue[bytes] = asyncio.Queue()

            class Collect(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
                    got.put_nowait(data)

            transport, _ = await w.a.create_datagram_endpoint(Collect, remote_addr=("b.test", 7))
            transport.sendto(b"dgram")
            assert await asyncio.wait_for(got.get(), 10) == b"echo:dgram"
            transport.close()
            infos = await w.a.getaddrinfo("b.test", 7, type=socket.SOCK_STREAM)
            assert [i[4][0] for i in infos] == [B_ADDR[0], B_ADDR[1]]
            # A name whose addresses no peer's AllowedIPs cover: ENETUNREACH, named.
            with pytest.raises(OSError) as info:
                await w.a.open_connection("web.test", 80)
            assert "web.test" in str(info.value) and "AllowedIPs" in str(info.value)

    run(body)


def test_without_a_dns_line_names_fail_unless_the_host_resolver_is_asked_for() -> None:
    async def body() -> None:
        a, b, _, _ = pair()
        async with b, a:
            with pytest.raises(ResolutionError) as info:
                await a.open_connection("db.internal", 5432)
            text = str(info.value)
            assert "'db.internal'" in text and "no DNS servers" in text
            assert "--host-resolver" in text
        a, b, _, _ = pair()
        a.names = TunnelResolver(a, None, host_resolver=True)
        async with b, a:
            assert "127.0.0.1" in await a.resolve("localhost")
            with pytest.raises(OSError) as oserr:
                await a.open_connection("localhost", 80)
            assert "AllowedIPs" in str(oserr.value)

    run(body)


def test_from_config_takes_the_dns_line(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    conf = tmp_path / "wg0.conf"
    conf.write_text(
        f"[Interface]\nPrivateKey = {key}\nAddress = 10.98.0.1/24\n"
        f"DNS = {B_ADDR[0]}, corp.test\n"
        f"[Peer]\nPublicKey = {PrivateKey.generate().public_key}\nAllowedIPs = 10.98.0.2/32\n"
    )
    conf.chmod(0o600)

    async def body() -> None:
        tunnel = await RootlessTunnel.from_config(conf)
        resolver = tunnel.names.resolver
        assert resolver is not None
        assert resolver.servers == ((B_ADDR[0], 53),) and resolver.search == ("corp.test",)

    run(body)
    # and wg-quick takes the same file as it is
    if os.geteuid() == 0:
        stripped = subprocess.run([need_tool("wg-quick"), "strip", str(conf)],
                                  capture_output=True, text=True, timeout=30)  # fmt: skip
        assert stripped.returncode == 0, stripped.stderr
        assert "DNS" not in stripped.stdout and "PrivateKey" in stripped.stdout


# ------------------------------------------------------------------ SOCKS5


def test_curl_socks5_hostname_downloads_through_the_tunnel(dnsmasq) -> None:
    async def body() -> None:
        async with world(dnsmasq) as w:
            proxy = f"127.0.0.1:{w.socks_port}"
            for url in ("http://b.test/file", "http://b6.test/file", f"http://{B_ADDR[0]}/file",
                        f"http://[{B_ADDR[1]}]/chunked"):  # fmt: skip
                rc, out, err = await curl("--fail", "--socks5-hostname", proxy, url)
                assert rc == 0, err
                assert sha(out) == PAYLOAD_SHA, url
            assert w.socks.counters.connects == 4  # type: ignore[attr-defined]

    run(body)


def test_socks5_reply_codes_seen_by_curl(dnsmasq) -> None:
    """curl prints the reply code it got; RFC 1928's codes: 0x04 host
    unreachable (no peer's AllowedIPs cover it; a name that does not
    resolve), 0x05 refused (B's stack answers with a RST), 0x06 TTL expired
    (nothing answers the SYNs)."""

    async def body() -> None:
        options = ProxyOptions(connect_timeout=1.0)
        async with world(dnsmasq, options=options) as w:
            proxy = f"127.0.0.1:{w.socks_port}"
            cases = [
                ("http://10.1.2.3/", 4),  # not in AllowedIPs
                ("http://web.test/", 4),  # resolves outside AllowedIPs
                ("http://nothere.test/", 4),  # NXDOMAIN
                ("http://b.test:9/", 5),  # refused
                (f"http://{SILENT}/", 6),  # timed out
            ]
            for url, code in cases:
                rc, _, err = await curl("--socks5-hostname", proxy, url)
                assert rc == 97, (url, err)  # CURLE_PROXY
                assert re.search(rf"\({code}\)", err), (url, err)
            refusals = w.socks.counters.refusals  # type: ignore[attr-defined]
            assert refusals["host unreachable"] == 3
            assert refusals["connection refused"] == 1 and refusals["timed out"] == 1

    run(body)


def test_httpx_through_the_socks5_proxy(dnsmasq) -> None:
    import httpx  # a test dependency (httpx[socks]: socksio too)

    async def body() -> None:
        async with world(dnsmasq) as w:
            proxy = f"socks5://127.0.0.1:{w.socks_port}"
            async with httpx.AsyncClient(proxy=proxy) as client:
                response = await client.get("http://b.test/file")
                assert response.status_code == 200 and sha(response.content) == PAYLOAD_SHA
                response = await client.post("http://b.test/echo", content=b"x" * 100_000)
                assert response.text == sha(b"x" * 100_000)

    run(body)


def _socks5_udp_associate(
    port: int, host: str = "127.0.0.1"
) -> tuple[socket.socket, tuple[str, int]]:
    """RFC 1928 by hand: no-auth greeting, UDP ASSOCIATE 0.0.0.0:0."""
    tcp = socket.create_connection((host, port), timeout=10)
    tcp.sendall(b"\x05\x01\x00")
    assert tcp.recv(2) == b"\x05\x00"
    tcp.sendall(b"\x05\x03\x00\x01" + bytes(4) + b"\x00\x00")
    size = 10 if ":" not in host else 22
    reply = b""
    while len(reply) < size:
        reply += tcp.recv(size - len(reply))
    assert reply[:4] == b"\x05\x00\x00" + (b"\x01" if size == 10 else b"\x04"), reply
    relay = (str(ipaddress.ip_address(reply[4:-2])), struct.unpack("!H", reply[-2:])[0])
    return tcp, relay


def _udp_header(host: str, port: int, frag: int = 0) -> bytes:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return bytes([0, 0, frag, 3, len(host)]) + host.encode() + struct.pack("!H", port)
    return bytes([0, 0, frag, 1 if ip.version == 4 else 4]) + ip.packed + struct.pack("!H", port)


def test_udp_associate_with_a_stdlib_socket_client(dnsmasq) -> None:
    def client(port: int) -> list[bytes]:
        tcp, relay = _socks5_udp_associate(port)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.settimeout(2)
        got = []
        try:
            for host, msg in ((B_ADDR[0], b"one"), ("b.test", b"two"), (B_ADDR[1], b"six")):
                for _ in range(5):
                    udp.sendto(_udp_header(host, 7) + msg, relay)
                    try:
                        got.append(udp.recv(65535))
                        break
                    except TimeoutError:
                        continue
            udp.sendto(_udp_header(B_ADDR[0], 7, frag=1) + b"fragment", relay)  # dropped
            udp.sendto(b"\x00\x00", relay)  # malformed: dropped
            udp.sendto(_udp_header("10.1.2.3", 7) + b"nowhere", relay)  # no route: dropped
            udp.sendto(_udp_header(B_ADDR[0], 7) + b"last", relay)
            got.append(udp.recv(65535))
            tcp.sendall(b"junk")  # the TCP connection only holds the association
        finally:
            udp.close()
            tcp.close()
        return got

    async def body() -> None:
        async with world(dnsmasq) as w:
            got = await asyncio.to_thread(client, w.socks_port)
            assert got == [
                _udp_header(B_ADDR[0], 7) + b"echo:one",
                _udp_header(B_ADDR[0], 7) + b"echo:two",
                _udp_header(B_ADDR[1], 7) + b"echo:six",
                _udp_header(B_ADDR[0], 7) + b"echo:last",
            ]
            counters = w.socks.counters  # type: ignore[attr-defined]
            await until(lambda: counters.relaying == 0)  # ends with its TCP connection
            assert counters.associations == 1
            assert counters.refusals["UDP fragmented"] == 1
            assert counters.refusals["UDP malformed"] == 1
            assert counters.refusals["UDP host unreachable"] == 1
            assert counters.discarded == 4, w.socks.line()  # type: ignore[attr-defined]
            assert "discarded 4 bytes" in w.socks.line()  # type: ignore[attr-defined]

    run(body)


def test_http_proxy_counts_what_a_client_pipelined_after_its_last_request(dnsmasq) -> None:
    """Bytes the proxy received and did not pass on are counted in the
    proxy's counters (and its status line), not only in the core of a
    connection that is gone: here a request pipelined after one with
    Connection: close."""

    def client(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(
                b"GET http://b.test/file HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n"
                + EXTRA
            )
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out

    async def body() -> None:
        async with world(dnsmasq) as w:
            out = await asyncio.to_thread(client, w.http_port)
            assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(PAYLOAD), out[:200]
            counters = w.http.counters  # type: ignore[attr-defined]
            await until(lambda: counters.active == 0)
            assert counters.discarded == len(EXTRA), w.http.line()  # type: ignore[attr-defined]

    run(body)


EXTRA = b"GET http://b.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n"


def test_socks5_username_password(dnsmasq) -> None:
    async def body() -> None:
        options = ProxyOptions(credentials={"alice": "s3cret"})
        async with world(dnsmasq, options=options) as w:
            good = f"socks5h://alice:s3cret@127.0.0.1:{w.socks_port}"
            rc, out, err = await curl("--fail", "--proxy", good, "http://b.test/file")
            assert rc == 0 and sha(out) == PAYLOAD_SHA, err
            bad = f"socks5h://alice:wrong@127.0.0.1:{w.socks_port}"
            rc, _, err = await curl("--proxy", bad, "http://b.test/file")
            assert rc == 97, err
            assert w.socks.counters.refusals["authentication"] == 1  # type: ignore[attr-defined]

    run(body)


# -------------------------------------------------------------------- HTTP


def test_curl_through_the_http_proxy_keep_alive_chunked_and_connect(dnsmasq, tmp_path) -> None:
    upload = tmp_path / "up"
    upload.write_bytes(os.urandom(300_000))

    async def body() -> None:
        async with world(dnsmasq) as w:
            proxy = f"http://127.0.0.1:{w.http_port}"
            # Two requests in one curl: one client connection, one to the origin.
            rc, out, err = await curl("--fail", "--proxy", proxy, "http://b.test/file",
                                      "http://b.test/chunked")  # fmt: skip
            assert rc == 0, err
            assert out == PAYLOAD + PAYLOAD
            assert w.http.counters.total == 1  # type: ignore[attr-defined]
            assert w.origin.connections == 1
            # A chunked request body, forwarded chunked; the origin hashes it.
            rc, out, err = await curl("--fail", "--proxy", proxy, "-H",
                                      "Transfer-Encoding: chunked", "--data-binary",
                                      f"@{upload}", "http://www.corp.test/echo")  # fmt: skip
            assert rc == 0, err
            assert out.decode() == sha(upload.read_bytes())
            # CONNECT (curl --proxytunnel), to a name.
            rc, out, err = await curl("--fail", "--proxy", proxy, "--proxytunnel",
                                      "http://b.test/file")  # fmt: skip
            assert rc == 0 and sha(out) == PAYLOAD_SHA, err
            # Failures: 502 naming the target and the reason.
            rc, out, err = await curl("--proxy", proxy, "http://nothere.test/")
            assert b"502" in out and b"nothere.test" in out and b"NXDOMAIN" in out

    run(body)


def test_http_proxy_answers_504_when_no_name_server_answers(dnsmasq) -> None:
    """docs/proxy.md: failures are 502, 504 on a timeout. A name whose DNS
    servers never answer is a timeout too (RFC 9110 15.6.5: no timely
    response from a server the proxy needed), for a request and for CONNECT,
    and the body says so; a name that does not exist stays 502."""

    async def body() -> None:
        async with world(dnsmasq, servers=[SILENT], timeout=0.2) as w:
            proxy = f"http://127.0.0.1:{w.http_port}"
            for extra in ([], ["--proxytunnel"]):
                _, out, err = await curl("-i", "--proxy", proxy, *extra, "http://b.test/file")
                status = out.split(b"\r\n", 1)[0]
                assert status.startswith(b"HTTP/1.1 504 "), (extra, out, err)
                if not extra:  # curl shows no body of a refused CONNECT
                    assert b"timed out" in out, out
        async with world(dnsmasq) as w:
            _, out, err = await curl("-i", "--proxy", f"http://127.0.0.1:{w.http_port}",
                                     "http://nothere.test/")  # fmt: skip
            assert out.startswith(b"HTTP/1.1 502 "), out

    run(body)


def test_http_proxy_basic_authentication(dnsmasq) -> None:
    async def body() -> None:
        options = ProxyOptions(credentials={"bob": "pw"})
        async with world(dnsmasq, options=options) as w:
            proxy = f"http://127.0.0.1:{w.http_port}"
            rc, out, err = await curl("--fail", "--proxy", proxy, "--proxy-user", "bob:pw",
                                      "http://b.test/file")  # fmt: skip
            assert rc == 0 and sha(out) == PAYLOAD_SHA, err
            rc, out, err = await curl("-o", "/dev/null", "-w", "%{http_code}", "--proxy", proxy,
                                      "http://b.test/file")  # fmt: skip
            assert out == b"407"

    run(body)


# --------------------------------------------------------------- bad input


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()


def test_malformed_requests_and_oversized_headers_get_clear_errors(dnsmasq) -> None:
    async def body() -> None:
        async with world(dnsmasq) as w:
            assert await _raw(w.socks_port, b"\x04\x01\x00\x50\x0a\x00\x00\x01\x00") == b""
            # BIND: command not supported (0x07), then closed
            reply = await _raw(w.socks_port, b"\x05\x01\x00\x05\x02\x00\x01" + bytes(6))
            assert reply[:2] == b"\x05\x00" and reply[2:4] == b"\x05\x07"
            head = b"GET http://b.test/ HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n"
            assert (await _raw(w.http_port, head)).startswith(b"HTTP/1.1 431 ")
            assert (await _raw(w.http_port, b"GARBAGE\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
            assert w.socks.counters.refusals["bad request"] == 2  # type: ignore[attr-defined]
            assert w.http.counters.refusals["bad request"] == 2  # type: ignore[attr-defined]
            # and the proxies still serve
            proxy = f"127.0.0.1:{w.socks_port}"
            rc, out, err = await curl("--fail", "--socks5-hostname", proxy, "http://b.test/file")
            assert rc == 0 and sha(out) == PAYLOAD_SHA, err

    run(body)


def test_an_idle_client_delays_no_other_and_times_out(dnsmasq) -> None:
    async def body() -> None:
        options = ProxyOptions(handshake_timeout=3.0)
        async with world(dnsmasq, options=options) as w:
            idle_socks = await asyncio.open_connection("127.0.0.1", w.socks_port)
            idle_socks[1].write(b"\x05")  # half a greeting, then nothing
            idle_http = await asyncio.open_connection("127.0.0.1", w.http_port)
            idle_http[1].write(b"GET http://b.test/ HTTP/1.1\r\n")  # half a head
            for proxy in (f"socks5h://127.0.0.1:{w.socks_port}", f"http://127.0.0.1:{w.http_port}"):
                rc, out, err = await curl("--fail", "--proxy", proxy, "http://b.test/file")
                assert rc == 0 and sha(out) == PAYLOAD_SHA, err
            # the idle ones were still open meanwhile, then closed for their silence
            assert await asyncio.wait_for(idle_socks[0].read(), 30) == b""
            assert await asyncio.wait_for(idle_http[0].read(), 30) == b""
            for proxy in (w.socks, w.http):
                assert proxy.counters.refusals["handshake timeout"] == 1  # type: ignore[attr-defined]

    run(body)


def test_an_idle_keep_alive_http_client_is_closed_after_the_idle_timeout(dnsmasq) -> None:
    async def body() -> None:
        options = ProxyOptions(idle_timeout=1.0, handshake_timeout=30.0)
        async with world(dnsmasq, options=options) as w:
            reader, writer = await asyncio.open_connection("127.0.0.1", w.http_port)
            writer.write(b"GET http://b.test/empty HTTP/1.1\r\nHost: b.test\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            assert head.startswith(b"HTTP/1.1 204 ") and b"close" not in head.lower()
            # kept alive, then closed once idle (the 30 s handshake timeout is not it)
            assert await asyncio.wait_for(reader.read(), 20) == b""
            writer.close()

    run(body)


def test_a_flood_of_half_open_connections_is_bounded(dnsmasq) -> None:
    async def body() -> None:
        cap = 16
        options = ProxyOptions(max_connections=cap, handshake_timeout=30.0)
        async with world(dnsmasq, options=options) as w:
            for proxy, port in ((w.socks, w.socks_port), (w.http, w.http_port)):
                c = proxy.counters  # type: ignore[attr-defined]
                before = c.total
                flood = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4 * cap)]
                await until(lambda c=c, n=before: c.total - n >= 4 * cap)  # all accepted
                assert c.active <= cap
                evicted = c.refusals["evicted while negotiating (connection cap)"]
                assert evicted >= 3 * cap - 1
                assert c.refusals["incomplete negotiation"] == 0  # each counted once
                # A good client still gets through the flood (it evicts a half-open one).
                url = "socks5h" if proxy is w.socks else "http"
                rc, out, err = await curl("--fail", "--proxy", f"{url}://127.0.0.1:{port}",
                                          "http://b.test/file")  # fmt: skip
                assert rc == 0 and sha(out) == PAYLOAD_SHA, err
                assert c.active <= cap
                for _, writer in flood:
                    writer.close()

    run(body)


def test_socks5_udp_over_the_mtu_is_carried_and_over_the_ipv4_limit_refused(caplog) -> None:
    """A UDP ASSOCIATE client's datagram larger than the tunnel MTU (1420)
    is carried, in IP fragments the other stack joins; one too large for any
    IPv4 datagram (65,510 octets, which IPv6 loopback carries) is dropped,
    counted by reason and not as carried, logged once for the association,
    and no exception escapes to the loop; the datagrams around it are
    relayed."""

    class Sink(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.got: list[bytes] = []

        def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
            self.got.append(data)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        escaped: list[object] = []
        loop.set_exception_handler(lambda _loop, ctx: escaped.append(ctx))
        a, b, _, _ = pair()
        async with b, a:
            sink = Sink()
            await b.create_datagram_endpoint(lambda: sink, local_addr=(None, 9))
            socks = await start_socks5(a, "::1", 0)
            tcp, relay = await asyncio.to_thread(_socks5_udp_associate, socks.port, "::1")
            udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            udp.bind(("::1", 0))
            try:
                header = _udp_header(B_ADDR[0], 9)
                udp.sendto(header + b"first", relay)
                await until(lambda: sink.got == [b"first"])
                udp.sendto(header + b"y" * 65510, relay)
                udp.sendto(header + b"z" * 65510, relay)
                udp.sendto(header + b"w" * 1450, relay)
                udp.sendto(header + b"last", relay)
                await until(lambda: sink.got[-1:] == [b"last"])
            finally:
                udp.close()
                tcp.close()
            c = socks.counters
            await until(lambda: c.relaying == 0)
            assert sink.got == [b"first", b"w" * 1450, b"last"]
            assert c.datagrams_to_tunnel == 3, socks.line()
            assert c.to_tunnel == len(b"firstlast") + 1450, socks.line()
            assert c.refusals["UDP too large for the tunnel"] == 2, socks.line()
            assert sum(c.refusals.values()) == 2, socks.line()
            await socks.close()
        assert not escaped, escaped

    with caplog.at_level(logging.DEBUG, logger="wireguard.io.proxy"):
        run(body)
    told = [r.getMessage() for r in caplog.records if "65507" in r.getMessage()]
    assert len(told) == 1, told  # once for the association, not per datagram


@pytest.mark.parametrize("during", ["response", "request body"])
def test_http_proxy_close_closes_the_upstream_of_a_forwarded_request(during: str) -> None:
    """close() while a forwarded request is under way (waiting for its
    response, or for the rest of its body) closes its upstream connection
    through the tunnel and ends every task of the proxy, quietly (no
    traceback from the loop's exception handler)."""

    async def body() -> None:
        loop = asyncio.get_running_loop()
        escaped: list[object] = []
        loop.set_exception_handler(lambda _loop, ctx: escaped.append(ctx))
        a, b, _, _ = pair()
        opened: list[bytes] = []
        ended: list[bool] = []

        async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):  # never answers
                    opened.append(data)
            except ConnectionError:
                pass
            ended.append(True)
            writer.close()

        async with b, a:
            await b.start_server(origin, port=80)
            http = await start_http_proxy(a, "127.0.0.1", 0)
            reader, writer = await asyncio.open_connection("127.0.0.1", http.port)
            if during == "response":
                head = f"GET http://{B_ADDR[0]}/ HTTP/1.1\r\nHost: {B_ADDR[0]}\r\n\r\n"
            else:
                head = (
                    f"POST http://{B_ADDR[0]}/ HTTP/1.1\r\nHost: {B_ADDR[0]}\r\n"
                    "Content-Length: 100\r\n\r\n0123456789"
                )
            writer.write(head.encode())
            await writer.drain()
            await until(lambda: b"".join(opened).endswith(b"\r\n\r\n" if during == "response"
                                                      else b"0123456789"))
            await http.close()
            await until(lambda: bool(ended), limit=10)  # the upstream connection was closed
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            left = [
                t.get_coro().__qualname__
                for t in asyncio.all_tasks()
                if t is not asyncio.current_task()
            ]
            assert not [n for n in left if "Proxy" in n], left
            await asyncio.sleep(0)  # a done callback of the client's task runs here
        assert not escaped, escaped

    run(body, timeout=60)


# ------------------------------------------------------------ library, CLI


def test_parse_listen() -> None:
    assert parse_listen("1080", "socks5").bind_host == "127.0.0.1"
    assert parse_listen("[::1]:1080", "socks5").bind_host == "::1"
    assert parse_listen("*:8080", "http").bind_host is None
    assert parse_listen("0.0.0.0:8080", "http").bind_port == 8080
    for bad in ("x", "::1:1080", "1.2.3.4:99999", "name.example:80", "[::1]1080"):
        with pytest.raises(ProxySpecError) as info:
            parse_listen(bad, "socks5")
        assert str(info.value).startswith(f"--socks5 {bad}: ")


PROXY = [sys.executable, "-m", "wireguard", "proxy"]


def proxy_config(tmp_path: Path, key_a: PrivateKey, key_b: PrivateKey, endpoint_b) -> Path:
    """A wg-quick file as wg-quick takes it, a DNS = line included."""
    conf = tmp_path / "a.conf"
    conf.write_text(
        "[Interface]\n"
        f"PrivateKey = {key_a}\nAddress = {A_ADDR[0]}/24, {A_ADDR[1]}/64\n"
        f"DNS = {B_ADDR[0]}, corp.test\n"
        "[Peer]\n"
        f"PublicKey = {key_b.public_key}\n"
        f"AllowedIPs = {B_ADDR[0]}/32, {B_ADDR[1]}/128\n"
        f"Endpoint = {endpoint_b[0]}:{endpoint_b[1]}\n"
    )
    conf.chmod(0o600)
    return conf


def udp_exchange(port: int, data: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for _ in range(10):
            s.sendto(data, ("127.0.0.1", port))
            try:
                return s.recv(65535)
            except TimeoutError:
                continue
    raise AssertionError("no UDP reply")


def test_proxy_command_end_to_end(dnsmasq, tmp_path) -> None:
    """The command in a subprocess: SOCKS5 and HTTP with users from a file,
    and a -L forward to a name, in one process; the report counts."""
    users = tmp_path / "users"
    users.write_text("# who may use the proxies\ncarol:pass word\n")
    users.chmod(0o600)

    async def body() -> None:
        async with world(dnsmasq) as w:
            # The subprocess is tunnel A: B's peer entry must point at it.
            sock = udp_socket()
            port_a = sock.getsockname()[1]
            sock.close()
            (peer,) = w.b.device.peers.values()
            peer.endpoint = ("127.0.0.1", port_a)
            conf = proxy_config(tmp_path, w.key_a, w.key_b, ("127.0.0.1", w.b.listen_port))
            text = conf.read_text()
            conf.write_text(text.replace("[Interface]\n", f"[Interface]\nListenPort = {port_a}\n"))
            proc = await asyncio.create_subprocess_exec(
                *PROXY, str(conf), "--socks5", "0", "--http", "127.0.0.1:0",
                "--users-file", str(users), "-L", "0:b.test:80", "-L", "udp:0:b.test:7",
                "--status", "0",
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            lines: list[str] = []

            async def matching(pattern: str) -> re.Match[str]:
                while True:
                    for seen in lines:
                        if (m := re.search(pattern, seen)) is not None:
                            return m
                    raw = await asyncio.wait_for(proc.stderr.readline(), 30)  # type: ignore[union-attr]
                    assert raw, "\n".join(lines)
                    lines.append(raw.decode().rstrip())

            try:
                socks = int((await matching(r"--socks5 .*listening on 127.0.0.1:(\d+)"))[1])
                http = int((await matching(r"--http .*listening on 127.0.0.1:(\d+)"))[1])
                fwd = int((await matching(r"-L tcp .*b\.test:80: listening on .*:(\d+)"))[1])
                udp = int((await matching(r"-L udp .*b\.test:7: listening on .*:(\d+)"))[1])
                await matching(r"proxy: ready")
                await matching(rf"names through the tunnel by {B_ADDR[0]}:53, search corp\.test")
                for args in (
                    ["--proxy", f"socks5h://carol:pass%20word@127.0.0.1:{socks}"],
                    ["--proxy", f"http://127.0.0.1:{http}", "--proxy-user", "carol:pass word"],
                    [],
                ):
                    url = f"http://127.0.0.1:{fwd}/file" if not args else "http://b.test/file"
                    rc, out, err = await curl("--fail", *args, url)
                    assert rc == 0 and sha(out) == PAYLOAD_SHA, (args, err, lines)
                rc, _, _ = await curl("--proxy", f"socks5h://carol:no@127.0.0.1:{socks}",
                                      "http://b.test/file")  # fmt: skip
                assert rc == 97
                # -L udp to a name: the flow's destination resolved through the tunnel
                reply = await asyncio.to_thread(udp_exchange, udp, b"by name")
                assert reply == b"echo:by name"
            finally:
                proc.send_signal(signal.SIGTERM)
                rest = await asyncio.wait_for(proc.stderr.read(), 30)  # type: ignore[union-attr]
                lines.extend(rest.decode().splitlines())
                await proc.wait()
            out = "\n".join(lines)
            assert proc.returncode == 0, out
            assert re.search(r"--socks5 127\.0\.0\.1:0: \d+ clients, 2 total, 1 connected.*"
                             r"refused: authentication 1", out), out  # fmt: skip
            assert re.search(r"names: .*queries \d+", out), out

    run(body)


def test_proxy_command_bad_arguments(tmp_path, capsys) -> None:
    from wireguard.cli import main

    conf = tmp_path / "a.conf"
    conf.write_text("[Interface]\nPrivateKey = x\n")
    cases = [
        ([str(conf)], "nothing to serve: give --socks5 and/or --http"),
        ([str(conf), "--socks5", "x"], "--socks5 x: 'x' is not a port number"),
        ([str(conf), "--http", "1", "--users-file", str(tmp_path / "none")], "No such file"),
        ([str(conf), "--http", "1", "--users-env", "PYWG_NO_SUCH_VARIABLE"], "is not set"),
        ([str(conf), "--http", "1", "--user", "nocolon"], "expected user:password"),
        ([str(conf), "--http", "1", "-L", "1:bad name:2"], "neither an IP address nor a name"),
    ]
    for args, message in cases:
        assert main(["proxy", *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith("python -m wireguard proxy: ") and message in err, err
        assert err.count("\n") == 1, err


@pytest.mark.parametrize("name", ["a..b", "x" * 64 + ".example"])
def test_a_name_that_cannot_be_asked_is_refused_alike_by_both_resolvers(name: str) -> None:
    """An empty or over-long label (RFC 1035 2.3.4) is the same DNSNameError
    whether the tunnel's servers or the host's resolver would be asked (the
    host path raised Python's IDNA UnicodeError)."""
    refusals = []

    async def body() -> None:
        for names in (
            lambda a: TunnelResolver(a, Resolver([B_ADDR[0]])),
            lambda a: TunnelResolver(a, None, host_resolver=True),
        ):
            a, b, _, _ = pair()
            a.names = names(a)
            async with b, a:
                with pytest.raises(DNSNameError) as caught:
                    await a.resolve(name)
                refusals.append(str(caught.value))

    run(body)
    assert refusals[0] == refusals[1]
