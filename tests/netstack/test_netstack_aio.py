"""The asyncio binding: two StackDrivers joined in-process, real StreamReader/StreamWriter."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import random
import socket
from collections.abc import Awaitable, Callable

import pytest

from wireguard.io.stackdriver import StackDriver
from wireguard.netstack import NetStack, TcpConfig
from wireguard.netstack.icmp import build_echo
from wireguard.netstack.ip import addr_bytes


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = 60.0) -> None:
    async def main() -> None:
        async with asyncio.timeout(timeout):
            await coro_fn()

    asyncio.run(main())


def pair(
    family: int = 4,
    *,
    drop: Callable[[bytes], bool] | None = None,
    **tcp: object,
) -> tuple[StackDriver, StackDriver]:
    """Two drivers whose tunnels are joined by the event loop (one packet per callback)."""
    addrs = ("10.0.0.1", "10.0.0.2") if family == 4 else ("fd00::1", "fd00::2")
    cfg = TcpConfig(**tcp)  # type: ignore[arg-type]
    a = NetStack([addrs[0]], tcp_config=cfg)
    b = NetStack([addrs[1]], tcp_config=cfg)
    loop = asyncio.get_running_loop()
    drivers: list[StackDriver] = []

    def link(i: int) -> Callable[[bytes], None]:
        def send(packet: bytes) -> None:
            if drop is not None and drop(packet):
                return
            loop.call_soon(drivers[1 - i].deliver_ip, packet)

        return send

    drivers.append(StackDriver(a, link(0)))
    drivers.append(StackDriver(b, link(1)))
    return drivers[0], drivers[1]


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    await writer.drain()
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("family", [4, 6])
def test_echo_one_megabyte_sha256(family: int) -> None:
    async def main() -> None:
        da, db = pair(family)
        server_addr = "10.0.0.2" if family == 4 else "fd00::2"
        server = await db.start_server(echo_handler, server_addr, 7)
        reader, writer = await da.open_connection(server_addr, 7)
        assert writer.get_extra_info("peername") == (server_addr, 7)
        data = os.urandom(1 << 20)

        async def send_all() -> None:
            view = memoryview(data)
            for i in range(0, len(data), 100_000):
                writer.write(view[i : i + 100_000])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send_all())
        echoed = await reader.read()  # until EOF
        await sender
        assert hashlib.sha256(echoed).hexdigest() == hashlib.sha256(data).hexdigest()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        da.close()
        db.close()

    run(main)


def test_many_concurrent_echo_clients() -> None:
    async def main() -> None:
        da, db = pair()
        await db.start_server(echo_handler, "10.0.0.2", 7)

        async def client(n: int) -> None:
            reader, writer = await da.open_connection("10.0.0.2", 7)
            payload = random.Random(n).randbytes(20_000 + n)
            writer.write(payload)
            writer.write_eof()
            assert await reader.read() == payload
            writer.close()
            await writer.wait_closed()

        await asyncio.gather(*(client(n) for n in range(25)))

    run(main)


def kernel_refusal() -> OSError:
    """What a kernel socket's connect to a closed port on loopback raises."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()  # bound, not listening: refused
        with socket.socket() as s:
            try:
                s.connect(closed)
            except OSError as exc:
                return exc
    raise AssertionError("the kernel accepted a connect to a closed port")


def test_connection_refused() -> None:
    async def main() -> None:
        da, _db = pair()
        with pytest.raises(ConnectionRefusedError) as caught:
            await da.open_connection("10.0.0.2", 9)
        # The errno an application checks, as on a kernel socket.
        reference = kernel_refusal()
        assert isinstance(reference, ConnectionRefusedError)
        assert caught.value.errno == reference.errno

    run(main)


def test_half_close_request_response() -> None:
    async def main() -> None:
        da, db = pair()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = await reader.read()  # EOF: the client is done sending
            writer.write(b"got " + str(len(request)).encode())
            writer.close()

        await db.start_server(handler, "10.0.0.2", 80)
        reader, writer = await da.open_connection("10.0.0.2", 80)
        writer.write(b"x" * 5000)
        writer.write_eof()
        assert writer.can_write_eof()
        with pytest.raises(RuntimeError):
            writer.write(b"more")
        assert await reader.read() == b"got 5000"
        assert reader.at_eof()
        writer.close()

    run(main)


def test_backpressure_reader_pause_closes_window_and_drain_waits() -> None:
    """A server that does not read makes the client's drain() wait: the StreamReader
    pauses the transport, the TCP receive buffer fills, the window closes, the
    client's send buffer fills, and finally its transport buffer passes the high
    water mark. Reading again lets everything through."""

    async def main() -> None:
        da, db = pair(send_buffer=64 * 1024, receive_buffer=64 * 1024)
        release = asyncio.Event()
        received = bytearray()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await release.wait()
            while data := await reader.read(65536):
                received.extend(data)
            writer.close()

        await db.start_server(handler, "10.0.0.2", 80, limit=16 * 1024)
        _reader, writer = await da.open_connection("10.0.0.2", 80)
        data = os.urandom(2 << 20)
        writer.write(data)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(writer.drain(), 0.5)
        stalled = writer.transport.get_write_buffer_size()
        # Only buffers' worth is in flight: the rest waits in our transport.
        assert stalled > len(data) - 4 * 64 * 1024
        release.set()
        await writer.drain()
        writer.write_eof()
        while len(received) < len(data):
            await asyncio.sleep(0.01)
        assert bytes(received) == data
        writer.close()

    run(main)


def test_retransmission_timer_runs_on_the_loop() -> None:
    """The first data packet is dropped; the RTO timer (armed with call_at) resends it."""
    dropped: list[bytes] = []

    def drop(packet: bytes) -> bool:
        # Drop the first packet with 1000+ bytes (a data segment), once.
        if len(packet) > 1000 and not dropped:
            dropped.append(packet)
            return True
        return False

    async def main() -> None:
        da, db = pair(drop=drop, min_rto=0.05, initial_rto=0.2)
        await db.start_server(echo_handler, "10.0.0.2", 7)
        reader, writer = await da.open_connection("10.0.0.2", 7)
        loop = asyncio.get_running_loop()
        start = loop.time()
        writer.write(b"a" * 1200)
        writer.write_eof()
        assert await reader.read() == b"a" * 1200
        assert dropped
        assert loop.time() - start >= 0.05  # recovered by a timer, not instantly
        conn = writer.get_extra_info("tcp_connection")
        assert conn.retransmits >= 1

    run(main)


def test_udp_datagram_endpoint() -> None:
    async def main() -> None:
        da, db = pair()
        loop = asyncio.get_running_loop()
        got: asyncio.Future[tuple[bytes, tuple[str, int]]] = loop.create_future()

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                self.transport.sendto(data.upper(), addr)  # type: ignore[attr-defined]

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                got.set_result((data, addr))

        await db.create_datagram_endpoint(Echo, local_addr=("10.0.0.2", 5353))
        transport, _ = await da.create_datagram_endpoint(Client, remote_addr=("10.0.0.2", 5353))
        transport.sendto(b"hello")
        assert await got == (b"HELLO", ("10.0.0.2", 5353))
        transport.close()

    run(main)


def test_ping() -> None:
    async def main() -> None:
        da, _db = pair(6)
        rtt = await da.ping("fd00::2", data=b"x" * 56)
        assert 0 <= rtt < 1.0
        with pytest.raises(TimeoutError):
            await da.ping("fd00::99", timeout=0.1)  # nobody there

    run(main)


def test_abort_resets_peer() -> None:
    async def main() -> None:
        da, db = pair()
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[BaseException | bytes] = loop.create_future()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                outcome.set_result(await reader.read())
            except ConnectionResetError as exc:
                outcome.set_result(exc)

        await db.start_server(handler, "10.0.0.2", 80)
        _reader, writer = await da.open_connection("10.0.0.2", 80)
        writer.write(b"partial")
        await asyncio.sleep(0.01)
        writer.transport.abort()
        reset = await outcome
        assert isinstance(reset, ConnectionResetError)
        assert reset.errno == errno.ECONNRESET  # as a kernel socket's read after a RST

    run(main)


def test_idle_driver_arms_no_timer() -> None:
    async def main() -> None:
        da, db = pair(msl=0.05)
        await db.start_server(echo_handler, "10.0.0.2", 7)
        reader, writer = await da.open_connection("10.0.0.2", 7)
        writer.write(b"hi")
        writer.write_eof()
        assert await reader.read() == b"hi"
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.3)  # TIME-WAIT (2*MSL = 0.1 s) runs out
        assert da.stack.tcp_connections == [] and db.stack.tcp_connections == []
        assert da._timer.at is None and db._timer.at is None  # nothing left to wake up for

    run(main)


def test_what_the_driver_does_not_pass_on_is_counted() -> None:
    """A connected UDP endpoint hears only its peer, as a kernel socket does:
    the others' datagrams are counted, not handed over. Writes to closed
    transports, packets for a closed driver and an echo reply nobody waits for
    are counted too."""

    async def main() -> None:
        da, db = pair()
        got: asyncio.Queue[bytes] = asyncio.Queue()

        class Collect(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                got.put_nowait(data)

        # A "connected" endpoint on A (port 4000) talking to B:53; B:54 also sends to it.
        ta, _ = await da.create_datagram_endpoint(
            Collect, local_addr=("10.0.0.1", 4000), remote_addr=("10.0.0.2", 53)
        )
        assert ta.get_extra_info("udp_socket").local_address == ("10.0.0.1", 4000)
        peer, _ = await db.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("10.0.0.2", 53)
        )
        other, _ = await db.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("10.0.0.2", 54)
        )
        other.sendto(b"not its peer", ("10.0.0.1", 4000))
        peer.sendto(b"its peer", ("10.0.0.1", 4000))
        assert await got.get() == b"its peer"
        assert got.empty() and da.drops["foreign datagram"] == 1
        ta.close()
        ta.sendto(b"late")
        assert da.drops["sendto after close"] == 1
        # TCP: bytes written after close() are counted.
        server = await db.start_server(echo_handler, "10.0.0.2", 7)
        _reader, writer = await da.open_connection("10.0.0.2", 7)
        writer.close()
        writer.transport.write(b"12345")
        assert da.drops["write after close"] == 5
        server.close()
        # An echo reply no ping waits for (one that gave up, or never was).
        da.deliver_ip(
            build_echo(addr_bytes("10.0.0.2"), addr_bytes("10.0.0.1"), 9, 9, b"", reply=True)
        )
        await asyncio.sleep(0.01)
        assert da.drops["late echo reply"] == 1
        da.close()
        da.deliver_ip(b"\x45" + bytes(19))
        assert da.drops["after close"] == 1

    run(main)


def test_binding_a_port_in_use_or_an_address_not_ours_fails_as_a_kernel_bind() -> None:
    """create_server / create_datagram_endpoint refuse as asyncio's own do
    over the kernel's bind(): OSError with EADDRINUSE for a port taken (also
    under a wildcard listener), EADDRNOTAVAIL for an address not ours. The
    errno each should carry is the kernel's, asked on loopback (and of an
    address not the host's)."""

    async def main() -> None:
        da, _db = pair()
        loop = asyncio.get_running_loop()

        async def kernel_errno(attempt: Callable[[], Awaitable[object]]) -> int | None:
            with pytest.raises(OSError) as info:
                await attempt()
            return info.value.errno

        taken = await asyncio.start_server(echo_handler, "0.0.0.0", 0)
        port = taken.sockets[0].getsockname()[1]
        tcp_in_use = await kernel_errno(
            lambda: asyncio.start_server(echo_handler, "127.0.0.1", port)
        )
        taken.close()
        udp_taken, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        udp_port = udp_taken.get_extra_info("sockname")[1]
        udp_in_use = await kernel_errno(
            lambda: loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", udp_port)
            )
        )
        udp_taken.close()
        with socket.socket() as s, pytest.raises(OSError) as info:
            s.bind(("192.0.2.1", 0))  # (asyncio 3.13 words this one without an errno)
        not_ours = info.value.errno
        assert (tcp_in_use, udp_in_use, not_ours) == (errno.EADDRINUSE, errno.EADDRINUSE,
                                                      errno.EADDRNOTAVAIL)  # fmt: skip

        await da.start_server(echo_handler, None, 7)  # all of the stack's addresses
        in_use = await kernel_errno(lambda: da.start_server(echo_handler, "10.0.0.1", 7))
        assert in_use == tcp_in_use
        await da.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("10.0.0.1", 53))
        assert (
            await kernel_errno(
                lambda: da.create_datagram_endpoint(
                    asyncio.DatagramProtocol, local_addr=("10.0.0.1", 53)
                )
            )
            == udp_in_use
        )
        assert await kernel_errno(lambda: da.start_server(echo_handler, "10.0.0.9", 80)) == not_ours
        assert (
            await kernel_errno(
                lambda: da.create_datagram_endpoint(
                    asyncio.DatagramProtocol, local_addr=("10.0.0.9", 53)
                )
            )
            == not_ours
        )
        da.close()

    run(main)


def test_a_connected_datagram_endpoint_sends_only_to_its_peer_as_asyncios_does() -> None:
    """sendto() with an address other than remote_addr is refused with the
    ValueError asyncio's own connected datagram transport raises; its peer's
    address (or none) is taken."""

    async def main() -> None:
        da, db = pair(6)
        loop = asyncio.get_running_loop()
        kernel, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=("127.0.0.1", 9)
        )
        with pytest.raises(ValueError) as reference:
            kernel.sendto(b"x", ("127.0.0.1", 10))
        kernel.close()
        got: asyncio.Queue[bytes] = asyncio.Queue()

        class Collect(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                got.put_nowait(data)

        await db.create_datagram_endpoint(Collect, local_addr=("fd00::2", 53))
        await db.create_datagram_endpoint(Collect, local_addr=("fd00::2", 54))
        ta, _ = await da.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=("fd00::2", 53)
        )
        with pytest.raises(type(reference.value)):
            ta.sendto(b"elsewhere", ("fd00::2", 54))
        ta.sendto(b"to its peer", ("fd00:0::2", 53))
        ta.sendto(b"no address")
        assert [await got.get(), await got.get()] == [b"to its peer", b"no address"]
        da.close()
        db.close()

    run(main)


def test_cancelling_serve_forever_closes_the_server_as_asyncios_does() -> None:
    """asyncio.Server.serve_forever(): "cancellation of serve_forever task
    causes the server to be closed" (the asyncio docs); asked of asyncio's own
    server on loopback, then of ours."""

    async def main() -> None:
        da, _db = pair()
        kernel = await asyncio.start_server(echo_handler, "127.0.0.1", 0)
        ours = await da.start_server(echo_handler, "10.0.0.1", 7)
        for server in (kernel, ours):
            task = asyncio.create_task(server.serve_forever())
            await asyncio.sleep(0)
            assert server.is_serving()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not server.is_serving(), server
        da.close()

    run(main)
