"""The /metrics and /healthz server (wireguard.io.metricsserver): fetched with
urllib, the exposition parsed by prometheus_client's text parser and the
raw responses by h11 (independent readers); bounded against bad and slow
clients."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import h11
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import closed_leaving, until
from tests.sim import Network
from wireguard.io.metricsserver import HandshakeHealth, MetricsServer, parse_listen
from wireguard.keys import PrivateKey
from wireguard.metrics import Metric, device_metrics


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def _network():
    net = Network(seed=5)
    a, b = net.add("a", 1, wall_clock_offset=1_700_000_000.0), net.add("b", 2)
    net.connect(a, b)
    for i in range(3):
        net.send(a, b, i, size=300)
    net.run_for(1)
    return net, a, b


def _responses(data: bytes, method: str = "GET") -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """The responses in *data* (all the server sent before it closed), as h11 reads them."""
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    conn.receive_data(b"")
    out = []
    while True:
        # h11 pairs each response with a request of ours
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:  # closed after the last response
            if out:
                return out
            raise
        if isinstance(event, h11.ConnectionClosed):
            return out
        assert isinstance(event, h11.Response), event
        body = b""
        while True:
            e = conn.next_event()
            if isinstance(e, h11.Data):
                body += e.data
            elif isinstance(e, h11.EndOfMessage):
                break
            else:
                raise AssertionError(e)
        out.append((event.status_code, dict(event.headers), body))
        if conn.their_state is not h11.DONE or conn.our_state is not h11.DONE:
            return out
        conn.start_next_cycle()


async def _raw(port: int, data: bytes, *, half_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    if half_close:
        writer.write_eof()
    got = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return got


def test_metrics_parse_and_carry_the_devices_counters():
    _net, a, b = _network()
    extra = Metric("wireguard_dns_queries_total", "counter", "an extension collector")
    extra.add(7, [("server", "10.0.0.53")])

    async def main() -> None:
        server = MetricsServer([lambda: device_metrics(a.device, "wg0"), lambda: [extra]])
        async with server:
            port = server.addresses[0][1]
            assert server.addresses[0][0] == "127.0.0.1"  # loopback by default
            status, ctype, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
            assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
            families = {f.name: f for f in text_string_to_metric_families(text)}
            peer = a.device.peers[b.device.public_key]
            (sent,) = families["wireguard_sent_bytes"].samples
            assert sent.value == peer.tx_bytes > 0
            assert sent.labels["public_key"] == b.device.public_key.to_base64()
            assert families["wireguard_dns_queries"].samples[0].value == 7
            # the server's own counters: this was its first request
            assert families["wireguard_metrics_http_requests"].samples[0].value == 0
            status, _, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
            families = {f.name: f for f in text_string_to_metric_families(text)}
            assert families["wireguard_metrics_http_requests"].samples[0].value == 1

    asyncio.run(main())


def test_healthz_follows_the_handshake_age_and_a_named_peer():
    _net, a, b = _network()
    peer = a.device.peers[b.device.public_key]
    clock = [peer.last_handshake + 1]

    async def main() -> None:
        health = HandshakeHealth(a.device, lambda: clock[0], 60)
        stranger = HandshakeHealth(a.device, lambda: clock[0], 60, PrivateKey.generate().public_key)
        async with MetricsServer([], health) as s, MetricsServer([], stranger) as t:
            url = f"http://127.0.0.1:{s.addresses[0][1]}/healthz"
            status, _, text = await asyncio.to_thread(_get, url)
            assert status == 200 and text.startswith("ok: handshake with a peer 1 s ago")
            clock[0] += 60
            status, _, text = await asyncio.to_thread(_get, url)
            assert status == 503 and "no handshake with a peer in the last 60 s" in text
            url = f"http://127.0.0.1:{t.addresses[0][1]}/healthz"
            status, _, text = await asyncio.to_thread(_get, url)
            assert status == 503 and "is not a peer" in text

    asyncio.run(main())


def test_bad_requests_get_clear_answers_and_are_counted():
    async def main() -> None:
        async with MetricsServer([], max_request=1024) as s:
            port = s.addresses[0][1]
            cases = [
                (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 404),
                (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
                (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", 400),
                (b"GET /metrics HTTP/1.1\r\n\r\n", 400),  # no Host
                (b"GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n", 505),
                (b"GARBAGE\r\n\r\n", 400),
                (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 2000 + b"\r\n\r\n", 431),
            ]
            for request, status in cases:
                (response,) = _responses(await _raw(port, request))
                assert response[0] == status, (request[:40], response)
            # keep-alive: two requests on one connection, both answered
            two = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2
            assert [r[0] for r in _responses(await _raw(port, two))] == [200, 200]
            assert s.counters.bad_requests == 6
            head = _responses(
                await _raw(port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"), "HEAD"
            )
            assert head[0][0] == 200

    asyncio.run(main())


def test_idle_clients_do_not_delay_others_and_time_out():
    async def main() -> None:
        async with MetricsServer([], max_connections=4, timeout=0.5) as s:
            port = s.addresses[0][1]
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            half = idle[0][1]
            half.write(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
            # a good client is answered while they idle
            (response,) = _responses(await _raw(port, b"GET /healthz HTTP/1.0\r\n\r\n"))
            assert response[0] == 200
            # the idle ones are answered 408 and disconnected
            for reader, writer in idle:
                got = await asyncio.wait_for(reader.read(), 30)
                assert _responses(got)[0][0] == 408
                writer.close()
            assert s.counters.timeouts == 3

    asyncio.run(main())


def test_connections_over_the_cap_get_503_and_nothing_else_is_lost():
    async def main() -> None:
        async with MetricsServer([], max_connections=2, timeout=30) as s:
            port = s.addresses[0][1]
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            await asyncio.sleep(0.1)  # accepted, not a timing assertion
            for _ in range(5):
                got = await _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert _responses(got)[0][0] == 503
            assert s.counters.refused_connections == 5
            # the held ones are still served
            reader, writer = held[0]
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert _responses(await asyncio.wait_for(reader.read(), 30))[0][0] == 200
            for _, w in held:
                w.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9100", ("127.0.0.1", 9100)),
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),
        ("[::1]:9100", ("::1", 9100)),
        ("*:9100", (None, 9100)),
    ],
)
def test_listen_addresses(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["", "x", "::1:9100", "1.2.3.4:70000", ":9100", "[::1]9100"])
def test_bad_listen_addresses(text):
    with pytest.raises(ValueError, match="--metrics"):
        parse_listen(text)


def test_a_client_that_does_not_read_is_cut_off_and_counted():
    """A scrape whose client never reads its answer is abandoned after the
    timeout: the connection is aborted (the unsent answer not kept for it)
    and counted as a timeout."""
    import socket

    big = Metric("big_answer", "gauge", "x" * (16 << 20))
    big.add(1)

    async def main() -> tuple[int, int]:
        async with MetricsServer([lambda: [big]], timeout=0.3) as s:
            port = s.addresses[0][1]
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            await until(lambda: s.counters.timeouts > 0)  # never reading
            received = 0
            try:
                while True:
                    chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5)
                    if not chunk:
                        break
                    received += len(chunk)
            except (ConnectionError, TimeoutError):
                pass
            finally:
                sock.close()
            return received, s.counters.timeouts

    received, timeouts = asyncio.run(main())
    assert received < 16 << 20, "the whole answer was kept for a client that did not read"
    assert timeouts == 1


def test_a_huge_request_head_gets_its_431_not_a_reset():
    """Far more than max_request of request head: the client still reads the
    431 (the server discards the rest for a moment before it closes, rather
    than close with unread input, which the kernel turns into a reset that
    loses the answer)."""

    async def main() -> None:
        async with MetricsServer([], timeout=5) as s:
            port = s.addresses[0][1]
            request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: " + b"a" * (1 << 20) + b"\r\n\r\n"
            (response,) = _responses(await _raw(port, request))
            assert response[0] == 431 and response[2] == b"request head too large\n"
            assert s.counters.bad_requests == 1

    asyncio.run(main())


def test_a_failing_health_check_is_answered_500_and_counted():
    """A health callable that raises gets the probe a 500 with one line (not
    a connection closed without an answer), and is counted."""

    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    async def main() -> None:
        async with MetricsServer([], broken) as s:
            port = s.addresses[0][1]
            got = await _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            ((status, _, body),) = _responses(got)
            assert status == 500 and body == b"the health check failed (see the log)\n"
            assert s.counters.health_errors == 1

    asyncio.run(main())


def _loopback_capacity() -> int:
    """How many bytes the kernel takes on a loopback TCP connection whose
    reader (SO_RCVBUF 4 KiB) reads nothing."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listener:
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect(listener.getsockname())
        writer, _ = listener.accept()
        writer.setblocking(False)
        taken = 0
        try:
            while True:
                taken += writer.send(bytes(65536))
        except BlockingIOError:
            pass
        finally:
            writer.close()
            reader.close()
    return taken


@pytest.mark.parametrize("size", ["writing", "written"])
def test_close_does_not_wait_for_a_client_that_does_not_read(size: str):
    """close() hangs up on a client that reads none of its answer at once,
    rather than waiting out the timeout (an hour here) for it, and quietly:
    whether the answer is still being written or all handed to the
    transport and the connection is being closed. The limit below only
    stops a hang."""
    import socket

    # Still being written (far over what the kernel takes), or handed to the
    # transport whole but not all out (a little over it: under the 64 KiB
    # after which the writer waits).
    length = 16 << 20 if size == "writing" else _loopback_capacity() + (24 << 10)
    big = Metric("big_answer", "gauge", "x" * length)
    big.add(1)

    errors: list[dict] = []

    async def main() -> list[asyncio.Task[object]]:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        s = MetricsServer([lambda: [big]], timeout=3600)
        await s.start()
        port = s.addresses[0][1]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            # Time to write what the kernel takes and to linger (1 s) first.
            await asyncio.sleep(1.5)
            return await closed_leaving(s.close(), "a client that reads nothing")
        finally:
            sock.close()

    assert asyncio.run(main()) == []  # nothing of the client's left running
    assert errors == []  # no "unhandled exception" for the client cut off
