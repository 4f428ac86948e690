"""RootlessTunnel in-process: two Devices on loopback UDP, a userspace stack on each.

No namespaces and no privileges: this is what an unprivileged user runs.
The interop tests (tests/interop/test_forward.py) put wireguard-go and the
kernel's TCP on the other side.
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.selector_events
import contextlib
import errno
import hashlib
import logging
import os
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable

import pytest

from tests.conftest import need, until
from wireguard.cli import forward as forward_cli
from wireguard.cli import main as cli_main
from wireguard.config import parse_wg_quick
from wireguard.device import Device
from wireguard.dns import ResolutionError
from wireguard.io import forward as forward_module
from wireguard.io.rootless import RootlessTunnel, open_tunnel
from wireguard.keys import PrivateKey

A_ADDR = ("10.99.0.1", "fd99::1")
B_ADDR = ("10.99.0.2", "fd99::2")


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = 60.0) -> None:
    async def main() -> None:
        async with asyncio.timeout(timeout):
            await coro_fn()

    asyncio.run(main())


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def pair() -> tuple[RootlessTunnel, RootlessTunnel]:
    """Two rootless tunnels that are each other's peer over loopback."""
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    sock_a, sock_b = udp_socket(), udp_socket()
    dev_a, dev_b = Device(key_a), Device(key_b)
    dev_a.add_peer(
        key_b.public_key,
        allowed_ips=[f"{B_ADDR[0]}/32", f"{B_ADDR[1]}/128"],
        endpoint=sock_b.getsockname(),
    )
    dev_b.add_peer(
        key_a.public_key,
        allowed_ips=[f"{A_ADDR[0]}/32", f"{A_ADDR[1]}/128"],
        endpoint=sock_a.getsockname(),
    )
    a = RootlessTunnel(dev_a, [f"{A_ADDR[0]}/24", f"{A_ADDR[1]}/64"], sock=sock_a)
    b = RootlessTunnel(dev_b, [f"{B_ADDR[0]}/24", f"{B_ADDR[1]}/64"], sock=sock_b)
    return a, b


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("family", [0, 1], ids=["ipv4", "ipv6"])
def test_tcp_echo_two_megabytes(family: int) -> None:
    async def body() -> None:
        a, b = pair()
        async with a, b:
            server = await b.start_server(echo, B_ADDR[family], 7)
            reader, writer = await a.open_connection(B_ADDR[family], 7)
            assert writer.get_extra_info("peername") == (B_ADDR[family], 7)
            assert writer.get_extra_info("sockname")[0] == A_ADDR[family]
            data = os.urandom(2 << 20)

            async def send() -> None:
                writer.write(data)
                await writer.drain()
                writer.write_eof()

            task = asyncio.create_task(send())
            got = await reader.read()
            await task
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
            writer.close()
            await writer.wait_closed()
            server.close()
            status = a.status()
            assert status.peers[0].last_handshake_age is not None
            assert status.peers[0].tx_bytes > len(data)
            assert "handshake" in status.summary()

    run(body)


def test_parallel_connections() -> None:
    async def body() -> None:
        a, b = pair()
        async with a, b:
            await b.start_server(echo, port=9)

            async def one(i: int) -> None:
                reader, writer = await a.open_connection(B_ADDR[0], 9)
                payload = os.urandom(50_000 + i)
                writer.write(payload)
                writer.write_eof()
                assert await reader.read() == payload
                writer.close()

            await asyncio.gather(*(one(i) for i in range(20)))

    run(body)


def test_udp_datagram_endpoint() -> None:
    class Collect(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.got: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
            self.transport: asyncio.DatagramTransport | None = None

        def connection_made(self, transport):  # type: ignore[no-untyped-def]
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.got.put_nowait((data, addr))

    async def body() -> None:
        a, b = pair()
        async with a, b:
            _, server = await b.create_datagram_endpoint(Collect, local_addr=(B_ADDR[0], 53))
            ta, client = await a.create_datagram_endpoint(Collect, remote_addr=(B_ADDR[0], 53))
            ta.sendto(b"question")
            data, addr = await server.got.get()
            assert data == b"question" and addr[0] == A_ADDR[0]
            server.transport.sendto(b"answer", addr)
            data, addr = await client.got.get()
            assert (data, addr) == (b"answer", (B_ADDR[0], 53))
            assert a.status().losses == {}
            ta.close()
            ta.sendto(b"too late")  # counted, as everything not passed on
            assert a.status().losses == {"sendto after close": 1}

    run(body)


def test_ping_both_ways_and_errors() -> None:
    async def body() -> None:
        a, b = pair()
        async with a, b:
            assert await a.ping(B_ADDR[0]) < 5
            assert await b.ping(A_ADDR[1]) < 5
            assert b.stack.stats.icmp_echo_answered == 1
            assert a.stack.stats.icmp_echo_answered == 1
            # No peer covers this address: refused at once, like a missing route.
            with pytest.raises(OSError) as info:
                await a.open_connection("192.0.2.1", 80)
            assert info.value.errno == errno.ENETUNREACH
            # A name without a DNS = line: refused, never sent to the host's resolver.
            with pytest.raises(ResolutionError, match="no DNS servers are configured"):
                await a.open_connection("example.com", 80)
            # A port nobody listens on: the peer's stack answers with RST.
            with pytest.raises(ConnectionRefusedError):
                await a.open_connection(B_ADDR[0], 1)

    run(body)


def test_close_fails_a_connect_and_a_ping_still_waiting() -> None:
    """A connect or ping still waiting when the tunnel closes fails then, as a
    connection error (the stack that would answer or time it out is gone),
    rather than waiting forever."""

    async def body() -> None:
        a, b = pair()  # b never starts: nothing answers a's SYN or echo request
        async with a:
            connect = asyncio.create_task(a.open_connection(B_ADDR[0], 80))
            ping = asyncio.create_task(a.ping(B_ADDR[0], timeout=3600))
            await until(lambda: bool(a.stack.tcp_connections) and bool(a._pings))
        for task in (connect, ping):
            async with asyncio.timeout(10):  # only stops a hang
                with pytest.raises(ConnectionError) as info:
                    await task
            assert info.value.errno is not None
        b.tunnel._sock.close()  # type: ignore[union-attr]

    run(body)


def test_getaddrinfo_family_and_service_name() -> None:
    """As loop.getaddrinfo: *family* holds for IP literals too (an IPv4
    literal has no AF_INET6 address), and the port may be a service name."""

    async def body() -> None:
        a, b = pair()
        async with a, b:
            infos = await a.getaddrinfo(B_ADDR[1], 80, socket.AF_INET6, socket.SOCK_STREAM)
            assert infos == [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (B_ADDR[1], 80, 0, 0))]
            for host, family in ((B_ADDR[0], socket.AF_INET6), (B_ADDR[1], socket.AF_INET)):
                with pytest.raises(socket.gaierror):
                    await a.getaddrinfo(host, 80, family)
            infos = await a.getaddrinfo(B_ADDR[0], "https", type=socket.SOCK_STREAM)
            assert infos == [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (B_ADDR[0], 443))]
            with pytest.raises(socket.gaierror):
                await a.getaddrinfo(B_ADDR[0], "no-such-service")
            # A protocol without a type: only the type that protocol is, as
            # the C library's getaddrinfo answers for the same literal.
            for host in B_ADDR:
                for proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
                    ours = await a.getaddrinfo(host, 80, proto=proto)
                    assert ours == socket.getaddrinfo(host, 80, proto=proto)
            with pytest.raises(socket.gaierror):
                socket.getaddrinfo(B_ADDR[0], 80, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_TCP)
            with pytest.raises(socket.gaierror):
                await a.getaddrinfo(B_ADDR[0], 80, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_TCP)

    run(body)


def test_not_started_and_from_config(tmp_path) -> None:
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    conf = tmp_path / "a.conf"
    conf.write_text(
        f"[Interface]\nPrivateKey = {key_a}\nAddress = {A_ADDR[0]}/24\nMTU = 1380\n"
        f"[Peer]\nPublicKey = {key_b.public_key}\nAllowedIPs = {B_ADDR[0]}/32\n"
        "Endpoint = 127.0.0.1:9\n"
    )
    no_address = parse_wg_quick(f"[Interface]\nPrivateKey = {key_a}\n")

    async def body() -> None:
        t = await RootlessTunnel.from_config(conf)
        with pytest.raises(RuntimeError, match="not running"):
            await t.open_connection(B_ADDR[0], 80)
        assert t.addresses == [A_ADDR[0]] and t.stack.mtu == 1380
        with pytest.raises(ValueError, match="Address"):
            await RootlessTunnel.from_config(no_address)
        async with await open_tunnel(conf, host="127.0.0.1") as started:
            assert started.listen_port > 0
            assert started.status().peers[0].endpoint == ("127.0.0.1", 9)

    run(body)


def test_control_socket_at_a_path(tmp_path) -> None:
    """--control with a path: the UAPI answers there (no /var/run needed)."""

    async def body() -> None:
        a, _b = pair()
        path = tmp_path / "a.sock"
        a2 = RootlessTunnel(a.device, ["10.99.0.1/24"], sock=udp_socket(), control=str(path))
        async with a2:
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(b"get=1\n\n")
            reply = (await reader.readuntil(b"\n\n")).decode()
            assert "public_key=" in reply and reply.endswith("errno=0\n\n")
            writer.close()
        assert not path.exists()

    run(body)


# ------------------------------------------------------------- the forward command

FORWARD = [sys.executable, "-m", "wireguard", "forward"]


def forward_config(tmp_path, key_a: PrivateKey, key_b: PrivateKey, endpoint_b, port_a: int) -> str:
    conf = tmp_path / "a.conf"
    conf.write_text(
        f"[Interface]\nPrivateKey = {key_a}\nListenPort = {port_a}\n"
        f"Address = {A_ADDR[0]}/24, {A_ADDR[1]}/64\n"
        f"[Peer]\nPublicKey = {key_b.public_key}\n"
        f"AllowedIPs = {B_ADDR[0]}/32, {B_ADDR[1]}/128\n"
        f"Endpoint = {endpoint_b[0]}:{endpoint_b[1]}\n"
    )
    return str(conf)


def free_udp_port() -> int:
    with udp_socket() as s:
        return int(s.getsockname()[1])


class UdpEcho(asyncio.DatagramProtocol):
    """A local UDP service: answers each datagram with b"echo:" and it."""

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
        self.transport.sendto(b"echo:" + data, addr)


def test_forward_command_end_to_end(tmp_path) -> None:
    """The CLI in a subprocess against an in-process peer: -L tcp, -L udp,
    -R tcp, a ping to the stack, SIGUSR1 and the exit report."""

    async def body() -> None:
        key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
        port_a = free_udp_port()
        sock_b = udp_socket()
        dev_b = Device(key_b)
        dev_b.add_peer(key_a.public_key, allowed_ips=[f"{A_ADDR[0]}/32", f"{A_ADDR[1]}/128"],
                       endpoint=("127.0.0.1", port_a))  # fmt: skip
        b = RootlessTunnel(dev_b, [f"{B_ADDR[0]}/24", f"{B_ADDR[1]}/64"], sock=sock_b)
        local = await asyncio.start_server(echo, "127.0.0.1", 0)
        local_port = local.sockets[0].getsockname()[1]
        config = forward_config(tmp_path, key_a, key_b, sock_b.getsockname(), port_a)
        async with b:
            await b.start_server(echo, port=7)
            await b.create_datagram_endpoint(UdpEcho, local_addr=(None, 53))
            proc = await asyncio.create_subprocess_exec(
                *FORWARD, config, "-L", f"0:{B_ADDR[0]}:7", "-L", f"udp:0:{B_ADDR[0]}:53",
                "-R", f"2222:127.0.0.1:{local_port}", "-L", f"0:{B_ADDR[0]}:1",
                "--status", "0.5",
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            lines: list[str] = []

            async def line_matching(pattern: str) -> re.Match[str]:
                for seen in lines:
                    if (m := re.search(pattern, seen)) is not None:
                        return m
                while True:
                    try:
                        raw = await asyncio.wait_for(proc.stderr.readline(), 20)  # type: ignore[union-attr]
                    except TimeoutError:
                        raise AssertionError(f"no {pattern!r} in:\n" + "\n".join(lines)) from None
                    assert raw, "\n".join(lines)
                    lines.append(raw.decode().rstrip())
                    if (m := re.search(pattern, lines[-1])) is not None:
                        return m

            try:
                tcp_port = int((await line_matching(r"-L tcp .*listening on 127.0.0.1:(\d+)"))[1])
                udp_port = int((await line_matching(r"-L udp .*listening on 127.0.0.1:(\d+)"))[1])
                refused_port = int(
                    (await line_matching(rf"-L tcp .*-> {B_ADDR[0]}:1: listening on .*:(\d+)"))[1]
                )
                await line_matching("forward: ready")
                # Nobody listens behind -L ...:1: the client is reset, the forward counts it.
                reader, writer = await asyncio.open_connection("127.0.0.1", refused_port)
                with contextlib.suppress(ConnectionResetError):
                    assert await reader.read() == b""
                writer.close()
                await line_matching(rf"{B_ADDR[0]}:1: cannot connect through the tunnel: "
                                    "Connection refused")  # fmt: skip
                # -L tcp: a kernel client here, the echo server in B's stack.
                reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port)
                data = os.urandom(1 << 20)
                writer.write(data)
                writer.write_eof()
                assert await reader.read() == data
                writer.close()
                # -L udp.
                loop = asyncio.get_running_loop()
                got: asyncio.Queue[bytes] = asyncio.Queue()
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Collect(got), remote_addr=("127.0.0.1", udp_port)
                )
                transport.sendto(b"hello")
                assert await asyncio.wait_for(got.get(), 10) == b"echo:hello"
                transport.close()
                # -R tcp: B connects to the stack's address, a local service answers.
                reader, writer = await b.open_connection(A_ADDR[1], 2222)
                writer.write(b"through -R")
                writer.write_eof()
                assert await reader.read() == b"through -R"
                writer.close()
                # The stack answers pings.
                assert await b.ping(A_ADDR[0]) < 5
                # A periodic status line, then the SIGUSR1 report.
                await line_matching(r"\d\d:\d\d:\d\d peer .* handshake \d+s ago")
                proc.send_signal(signal.SIGUSR1)
                await line_matching("forward: status: addresses 10.99.0.1, fd99::1")
                await line_matching(r"-L tcp 127.0.0.1:\d+ -> 10.99.0.2:7: 0 conns open, 1 total, "
                                    r"to tunnel 1.0 MiB, from tunnel 1.0 MiB")  # fmt: skip
                await line_matching(r"-R tcp stack:2222 -> 127.0.0.1:\d+: 0 conns open, 1 total")
                await line_matching(r"1 pings answered")
                proc.send_signal(signal.SIGTERM)
                await line_matching("forward: exiting")
                assert await asyncio.wait_for(proc.wait(), 10) == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        local.close()

    run(body)


class _Collect(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[bytes]) -> None:
        self.queue = queue

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
        self.queue.put_nowait(data)


def test_forward_command_bad_arguments(tmp_path, capsys) -> None:
    """Each mistake is one line on stderr and exit status 1 (checked in-process
    through the same entry point; once through `python -m wireguard`)."""
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    good = forward_config(tmp_path, key_a, key_b, ("127.0.0.1", 9), 0)
    no_address = tmp_path / "bare.conf"
    no_address.write_text(f"[Interface]\nPrivateKey = {key_a}\n")
    broken = tmp_path / "broken.conf"
    broken.write_text("[Interface]\nPrivateKey = nope\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        cases = [
            ([str(tmp_path / "missing.conf")], "missing.conf: No such file or directory"),
            ([good, "-L", "8080:bad name:80"], "-L 8080:bad name:80: destination"),  # names: DNS =
            ([good, "-L", "80:10.99.0.2"], "expected [udp:][bind_address:]port:host:hostport"),
            ([good, "-R", "udp:99999:localhost:53"], "listening port 99999 is out of range"),
            ([good, "-L", "[::1:80:10.99.0.2:80"], "unclosed '['"),
            ([good, "--status", "-1"], "--status must not be negative"),
            ([good, "--udp-flows", "0"], "--udp-flows must be at least 1"),
            ([str(no_address)], "no [Interface] Address"),
            ([str(broken)], "broken.conf:2: PrivateKey"),
            ([good, "-L", f"{busy}:10.99.0.2:80"], "cannot listen: Address already in use"),
            ([good, "-R", "192.0.2.7:80:localhost:80"], "cannot listen"),
            ([good, "-L", "1:192.0.2.1:80"], None),  # parsed fine: no route is a runtime matter
        ]
        for args, expected in cases:
            if expected is None:
                continue
            status = cli_main(["forward", *args])
            stderr = capsys.readouterr().err
            lines = stderr.splitlines()
            assert status == 1, (args, stderr)
            assert len(lines) == 1, (args, stderr)
            assert lines[0].startswith("python -m wireguard forward: "), lines
            assert expected in lines[0], (args, lines[0])
    result = subprocess.run([*FORWARD, good, "-L", "x:1.2.3.4:5"], capture_output=True,
                            text=True, timeout=30)  # fmt: skip
    assert result.returncode == 1
    assert (
        result.stderr == "python -m wireguard forward: -L x:1.2.3.4:5: listening port 'x'"
        " is not a port number\n"
    )


def test_forward_status_below_a_second_is_printed_that_often(tmp_path) -> None:
    """--status SECONDS prints a line that often, also below one second (the
    loop woke once a second, so --status 0.2 printed one line a second), and
    SIGINT stops it with the exit report and status 0."""
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    config = forward_config(tmp_path, key_a, key_b, ("127.0.0.1", 9), 0)
    proc = subprocess.Popen(
        [*FORWARD, config, "-L", f"0:{B_ADDR[0]}:80", "--status", "0.2"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("forward: ready"):
                break
        else:
            raise AssertionError("no ready line")
        lines = 0
        for line in proc.stderr:  # the lines come; how fast is the loop's (below)
            lines += bool(re.match(r"forward: \d\d:\d\d:\d\d peer ", line))
            if lines == 3:
                break
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(10) == 0, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "forward: exiting" in rest, rest
    # The loop sleeps no later than the next line is due, never over a second.
    wake = forward_cli._next_wake
    assert (wake(10.0, 10.2), wake(10.0, None), wake(10.0, 12.5), wake(10.0, 9.0)) == (
        pytest.approx(0.2), 1.0, 1.0, 0.0
    )


def test_forward_report_prints_the_stacks_nonzero_counters(capsys) -> None:
    """The report shows every counter of the stack that is not zero (what a
    hostile peer made it drop), and none that is."""

    async def body() -> None:
        a, _b = pair()
        st = a.stack.stats
        st.synack_timeouts, st.syn_queue_overflows, st.syncookies_sent = 3, 4, 5
        st.tcp_ofo_pruned, st.tcp_ofo_dropped, st.tcp_sack_ranges_dropped = 6, 7, 8
        st.tcp_time_wait_overflows, st.udp_queue_overflows, st.icmp_unhandled = 9, 10, 11
        forward_cli._report(a, [], "status")

    run(body)
    err = capsys.readouterr().err
    for name, n in [
        ("synack_timeouts", 3),
        ("syn_queue_overflows", 4),
        ("syncookies_sent", 5),
        ("tcp_ofo_pruned", 6),
        ("tcp_ofo_dropped", 7),
        ("tcp_sack_ranges_dropped", 8),
        ("tcp_time_wait_overflows", 9),
        ("udp_queue_overflows", 10),
        ("icmp_unhandled", 11),
    ]:
        assert f"{name} {n}" in err, err
    assert "syncookies_accepted" not in err and "listen_overflows" not in err


# --------------------------------------------------- forwards driven in-process


def forward_options(*args: str) -> forward_module.ForwardOptions:
    """The forward command's options, as its parser fills them in."""
    parser = argparse.ArgumentParser()
    forward_cli.add_runtime_arguments(parser)
    parsed = parser.parse_args(["unused.conf", *args])
    return forward_module.ForwardOptions(
        parsed.connect_timeout, parsed.udp_timeout, parsed.udp_flows, parsed.max_connections
    )


def add_reader_of_cpython_3_11_2(self, fd, callback, *args):  # type: ignore[no-untyped-def]
    """``_SelectorTransport._add_reader`` as CPython 3.11.0-3.11.3 have it: it
    registers the reader even when the protocol paused reading in
    ``connection_made`` (fixed by gh-103607: 3.11.4 tests ``is_reading()``)."""
    if self._closing:
        return
    self._loop._add_reader(fd, callback, *args)


@pytest.mark.parametrize("size", [300, 300_000], ids=["request", "300kB"])
@pytest.mark.parametrize("asyncio_reader", ["installed", "3.11.2"])
def test_forward_keeps_bytes_sent_before_the_tunnel_side_is_connected(
    monkeypatch, asyncio_reader: str, size: int
) -> None:
    """A client sends its request (and half-closes) while the connection through
    the tunnel is still being opened, as curl does: every byte must reach the
    server, whatever asyncio does with a pause_reading() in connection_made
    (Debian 12's python3 is 3.11.2, where that pause does not hold)."""
    if asyncio_reader == "3.11.2":
        monkeypatch.setattr(
            asyncio.selector_events._SelectorTransport, "_add_reader", add_reader_of_cpython_3_11_2
        )

    async def body() -> None:
        a, b = pair()
        async with a, b:
            await b.start_server(echo, port=7)
            gate = asyncio.Event()
            connect = a.create_connection

            async def slow_connection(*args, **kwargs):  # type: ignore[no-untyped-def]
                await gate.wait()
                return await connect(*args, **kwargs)

            a.create_connection = slow_connection  # type: ignore[method-assign]
            forward = forward_module.TcpLocalForward(
                forward_module.parse_forward(f"0:{B_ADDR[0]}:7", "L"), a, forward_options()
            )
            await forward.start()
            port = int(forward.where.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            request = os.urandom(size)
            writer.write(request)
            writer.write_eof()
            while forward.counters.total == 0:
                await asyncio.sleep(0.01)
            for _ in range(20):  # the forwarder's loop turns: it reads what it may
                await asyncio.sleep(0)
            await asyncio.sleep(0.1)
            gate.set()
            got = await reader.read()
            assert len(got) == len(request)
            assert got == request
            writer.close()
            await forward.close()
            c = forward.counters
            assert (c.to_tunnel, c.from_tunnel, c.discarded, c.overflows) == (size, size, 0, 0)

    run(body)


def test_forward_resets_a_connection_whose_reading_does_not_pause(monkeypatch, caplog) -> None:
    """If the accepted socket goes on delivering although paused, the bytes held
    for the other side stay bounded: the connection is reset and counted, not
    truncated silently."""
    monkeypatch.setattr(
        asyncio.selector_events._SelectorSocketTransport, "pause_reading", lambda self: None
    )

    async def body() -> None:
        a, b = pair()
        async with a, b:
            await b.start_server(echo, port=7)
            gate = asyncio.Event()
            connect = a.create_connection

            async def slow_connection(*args, **kwargs):  # type: ignore[no-untyped-def]
                await gate.wait()
                return await connect(*args, **kwargs)

            a.create_connection = slow_connection  # type: ignore[method-assign]
            spec = forward_module.parse_forward(f"0:{B_ADDR[0]}:7", "L")
            forward = forward_module.TcpLocalForward(spec, a, forward_options())
            await forward.start()
            port = int(forward.where.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(os.urandom(8 << 20))
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""
            gate.set()
            writer.close()
            while forward.counters.active:
                await asyncio.sleep(0.01)
            c = forward.counters
            assert c.overflows == 1 and c.discarded > forward_module._HOLD_MAX, c
            assert (c.to_tunnel, c.from_tunnel) == (0, 0)
            assert "reset (reading did not pause)" in forward.line()
            await forward.close()

    run(body)
    # Reported on the runtime's logger (the command prints it on stderr).
    assert any(
        r.name == "wireguard.io.forward" and "reset a connection" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_forward_remote_port_0_takes_a_free_port_and_says_which(proto: str) -> None:
    """ssh(1): a -R listen port of 0 is allocated (ssh reports it). The stack
    gives the listener a free port, and `where` (the start-up line) names it;
    the forward relays through it."""

    async def body() -> None:
        a, b = pair()
        loop = asyncio.get_running_loop()
        async with a, b:
            if proto == "udp":
                service, _ = await loop.create_datagram_endpoint(
                    UdpEcho, local_addr=("127.0.0.1", 0)
                )
                cls: type = forward_module.UdpRemoteForward
            else:
                service = await asyncio.start_server(echo, "127.0.0.1", 0)
                cls = forward_module.TcpRemoteForward
            port = (service.get_extra_info("sockname") if proto == "udp"
                    else service.sockets[0].getsockname())[1]  # fmt: skip
            spec = forward_module.parse_forward(f"{proto}:0:127.0.0.1:{port}", "R")
            forward = cls(spec, a, forward_options())
            await forward.start()
            shown = int(re.split(r"[, ]", forward.where)[0].rsplit(":", 1)[1])
            assert shown != 0, forward.where
            if proto == "tcp":
                reader, writer = await b.open_connection(A_ADDR[0], shown)
                writer.write(b"allocated")
                writer.write_eof()
                assert await reader.read() == b"allocated"
                writer.close()
            else:
                got: asyncio.Queue[bytes] = asyncio.Queue()

                class Collect(asyncio.DatagramProtocol):
                    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
                        got.put_nowait(data)

                t, _ = await b.create_datagram_endpoint(Collect, remote_addr=(A_ADDR[0], shown))
                t.sendto(b"allocated")
                assert await asyncio.wait_for(got.get(), 10) == b"echo:allocated"
                t.close()
            await forward.close()
            service.close()

    run(body, timeout=60)


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_forward_udp_flow_table_is_capped() -> None:
    """3,000 senders in the tunnel reach a -R udp forward capped at 100 flows:
    each flow is a kernel socket, so descriptors stay bounded by the cap (under a
    descriptor limit 3,000 sockets would exceed), the least recently active flows
    are evicted and counted, and a -L TCP listener in the same process still
    accepts and relays."""
    need(os.path.isdir("/proc/self/fd"), "no /proc/self/fd to count descriptors")
    sources, cap = 3000, 100

    async def body() -> None:
        a, b = pair()
        loop = asyncio.get_running_loop()
        async with a, b:
            local, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=("127.0.0.1", 0))
            echo_port = local.get_extra_info("sockname")[1]
            await b.start_server(echo, port=7)
            options = forward_options("--udp-flows", str(cap))
            udp = forward_module.UdpRemoteForward(
                forward_module.parse_forward(f"udp:5354:127.0.0.1:{echo_port}", "R"), a, options
            )
            tcp = forward_module.TcpLocalForward(
                forward_module.parse_forward(f"0:{B_ADDR[0]}:7", "L"), a, options
            )
            await udp.start()
            await tcp.start()
            base = open_descriptors()
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, base + 3 * cap), hard))
            try:
                for i in range(sources):
                    t, _ = await b.create_datagram_endpoint(
                        asyncio.DatagramProtocol,
                        local_addr=(None, 20000 + i),
                        remote_addr=(A_ADDR[0], 5354),
                    )
                    t.sendto(b"from %d" % i)
                    t.close()
                    if i % 50 == 49:
                        await asyncio.sleep(0.005)
                while udp.counters.total < sources:
                    await asyncio.sleep(0.01)
                # The TCP listener accepts and relays while the flood's flows are live.
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", int(tcp.where.rsplit(":", 1)[1])
                )
                writer.write(b"still accepting")
                writer.write_eof()
                assert await reader.read() == b"still accepting"
                writer.close()
                # A sender that stays gets its answer back through a fresh flow.
                got: asyncio.Queue[bytes] = asyncio.Queue()
                t, _ = await b.create_datagram_endpoint(
                    lambda: _Collect(got), remote_addr=(A_ADDR[0], 5354)
                )
                for _attempt in range(5):  # UDP: the echo's socket may still be full
                    t.sendto(b"last")
                    with contextlib.suppress(TimeoutError):
                        # A late echo of the flood may come first: the fresh
                        # flow's kernel socket can get the ephemeral port of an
                        # evicted flow's, to which the echo server still answers.
                        while (answer := await asyncio.wait_for(got.get(), 2)) != b"echo:last":
                            assert answer.startswith(b"echo:from "), answer
                        break
                else:
                    raise AssertionError(f"no answer through a fresh flow: {udp.line()}")
                t.close()
                peak = open_descriptors()
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            c = udp.counters
            assert peak <= base + cap + 10, (base, peak)
            assert c.failed == 0, udp.line()
            assert c.total == sources + 1 and c.active == cap, udp.line()
            assert c.evicted == sources + 1 - cap, udp.line()
            assert f"{c.evicted} evicted" in udp.line()
            await udp.close()
            await tcp.close()
            local.close()

    run(body, timeout=120)


def test_forward_tcp_connections_are_capped() -> None:
    """A peer opening connections through a -R TCP forward gets at most the
    cap (default 256) accepted and relayed at once: the rest wait in the
    stack's accept queue, bounded by its backlog, and one is accepted each
    time one closes. A -L forward refuses local connections beyond its cap,
    counted."""
    extra = 4

    async def body() -> None:
        a, b = pair()
        loop = asyncio.get_running_loop()
        held: list[asyncio.StreamWriter] = []

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # open until its client goes
            await reader.read()
            writer.close()

        async with a, b:
            service = await asyncio.start_server(hold, "127.0.0.1", 0)
            port = service.sockets[0].getsockname()[1]
            options = forward_options()
            cap = options.max_connections
            remote = forward_module.TcpRemoteForward(
                forward_module.parse_forward(f"7070:127.0.0.1:{port}", "R"), a, options
            )
            await remote.start()
            clients = [await b.open_connection(A_ADDR[0], 7070) for _ in range(cap + extra)]
            deadline = loop.time() + 30
            while len(held) < cap and loop.time() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # time for any more to get through
            c = remote.counters
            assert (c.total, c.active, len(held)) == (cap, cap, cap), remote.line()
            assert remote.server.waiting == extra and f"{extra} waiting" in remote.line()
            # One closes: one waiting connection is accepted in its place.
            clients[0][1].close()
            while c.total < cap + 1 and loop.time() < deadline:
                await asyncio.sleep(0.02)
            assert (c.total, c.active, remote.server.waiting) == (cap + 1, cap, extra - 1)
            # -L: beyond its cap a local connection is refused at once, counted.
            local = forward_module.TcpLocalForward(
                forward_module.parse_forward(f"0:{B_ADDR[0]}:7071", "L"),
                a,
                forward_options("--max-connections", "1"),
            )
            await b.start_server(echo, port=7071)
            await local.start()
            local_port = int(local.where.rsplit(":", 1)[1])
            r1, w1 = await asyncio.open_connection("127.0.0.1", local_port)
            w1.write(b"first")
            assert await r1.readexactly(5) == b"first"
            r2, w2 = await asyncio.open_connection("127.0.0.1", local_port)
            assert await r2.read() == b""
            assert local.counters.refused == 1 and "1 refused" in local.line()
            for w in (w1, w2, *held, *(w for _, w in clients)):
                w.close()
            await local.close()
            await remote.close()
            service.close()

    run(body, timeout=120)


class _Opening:
    """Wraps a create_connection: counts the connections being opened at once
    (held at a gate until the test opens it)."""

    def __init__(self, connect: Callable[..., Awaitable[object]]) -> None:
        self.connect = connect
        self.gate = asyncio.Event()
        self.now = self.peak = self.calls = 0

    async def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.now += 1
        self.calls += 1
        self.peak = max(self.peak, self.now)
        try:
            await self.gate.wait()
            return await self.connect(*args, **kwargs)
        finally:
            self.now -= 1


def _connect_and_reset(port: int) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # a RST at once


@pytest.mark.parametrize("target", ["192.0.2.1", "nothere.internal"])
def test_forward_tcp_connect_that_fails_at_once_closes_its_client(target: str) -> None:
    """A -L connection whose other side fails before any await (a destination
    outside every AllowedIPs, a name with no DNS = line) is closed at once and
    frees its slot. The connect's failure came before the accepted socket's
    connection_made, so nothing was closed: the client hung, holding one of
    --max-connections, and after that many every client was refused."""

    async def body() -> None:
        a, b = pair()
        async with a, b:
            forward = forward_module.TcpLocalForward(
                forward_module.parse_forward(f"0:{target}:80", "L"),
                a,
                forward_options("--max-connections", "2"),
            )
            await forward.start()
            port = int(forward.where.rsplit(":", 1)[1])
            for _ in range(3):  # more than the cap
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                async with asyncio.timeout(10):
                    with contextlib.suppress(ConnectionResetError):
                        assert await reader.read() == b""  # closed (reset) at once
                writer.close()
            await until(lambda: forward.counters.active == 0)
            assert forward.counters.failed == 3 and forward.counters.refused == 0
            await forward.close()

    run(body, timeout=60)


def test_forward_tcp_cap_counts_connections_until_their_other_side_is_done() -> None:
    """Clients that connect and reset at once, while their connection's other
    side is still being opened, cannot make a TCP forward open more than its
    --max-connections at once: a -L forward's local client that left has its
    connect through the tunnel cancelled, and its slot is free only once that
    is done; a -R forward's peer that reset has its connect to the local
    service cancelled the same way. Every slot is freed, and the forward then
    relays."""
    cap, clients = 4, 60

    async def body() -> None:
        a, b = pair()
        loop = asyncio.get_running_loop()
        async with a, b:
            await b.start_server(echo, port=7)
            # -L: local clients, connections opened through the tunnel.
            opening = _Opening(a.create_connection)
            a.create_connection = opening  # type: ignore[method-assign]
            options = forward_options("--max-connections", str(cap))
            local = forward_module.TcpLocalForward(
                forward_module.parse_forward(f"0:{B_ADDR[0]}:7", "L"), a, options
            )
            await local.start()
            port = int(local.where.rsplit(":", 1)[1])
            for _ in range(clients):
                _connect_and_reset(port)
                await asyncio.sleep(0.005)  # the forward accepts, and sees the reset
            await until(lambda: local.counters.total + local.counters.refused >= cap + 1)
            await until(lambda: opening.now == 0 and local.counters.active == 0)
            c = local.counters
            assert opening.peak <= cap, (opening.peak, local.line())
            assert c.failed == 0, local.line()
            opening.gate.set()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"after the flood")
            writer.write_eof()
            assert await reader.read() == b"after the flood"
            writer.close()
            await until(lambda: c.active == 0)
            await local.close()

            # -R: peers in the tunnel, connections opened to a local service.
            service = await asyncio.start_server(echo, "127.0.0.1", 0)
            service_port = service.sockets[0].getsockname()[1]
            kernel = _Opening(loop.create_connection)
            remote = forward_module.TcpRemoteForward(
                forward_module.parse_forward(f"7070:127.0.0.1:{service_port}", "R"), a, options
            )
            await remote.start()
            loop.create_connection = kernel  # type: ignore[method-assign]
            try:
                for _ in range(clients):
                    _, w = await b.open_connection(A_ADDR[0], 7070)
                    w.transport.abort()  # a RST
                    await asyncio.sleep(0.005)
                await until(lambda: remote.counters.total >= cap + 1)
                await until(
                    lambda: kernel.now == 0
                    and remote.counters.active == 0
                    and remote.server.active == 0
                    and remote.server.waiting == 0
                )
                r = remote.counters
                assert kernel.peak <= cap, (kernel.peak, remote.line())
                assert r.failed == 0, remote.line()
                kernel.gate.set()
                reader, writer = await b.open_connection(A_ADDR[0], 7070)
                writer.write(b"after the flood")
                writer.write_eof()
                assert await reader.read() == b"after the flood"
                writer.close()
                await until(lambda: r.active == 0)
            finally:
                del loop.create_connection
            await remote.close()
            service.close()

    run(body, timeout=120)


class _Sink(asyncio.DatagramProtocol):
    """Collects datagrams; answers b"big?" with one larger than the tunnel
    MTU, b"huge?" with one too large for any IPv4 datagram and b"small?"
    with a small one."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
        self.got.append(data)
        assert self.transport is not None
        if data == b"big?":
            self.transport.sendto(b"B" * 1450, addr)
        elif data == b"huge?":
            self.transport.sendto(b"H" * 65520, addr)
        elif data == b"small?":
            self.transport.sendto(b"small", addr)


@pytest.mark.parametrize("first", [False, True], ids=["open-flow", "opening-flow"])
def test_forward_udp_over_the_mtu_is_carried_and_over_the_ipv4_limit_dropped(
    caplog, first: bool
) -> None:
    """A datagram larger than the tunnel MTU (1420) is carried, in IP
    fragments the other stack joins; one too large for any IPv4 datagram
    (65,520 octets, which IPv6 loopback carries) is dropped and counted in
    `dropped`, not counted as carried, logged once for its flow, and no
    exception escapes to the loop: a -L client's datagram into the tunnel
    (the first of its flow, waiting for the flow to open, or a later one)
    and a -R local service's reply."""

    async def body() -> None:
        a, b = pair()
        loop = asyncio.get_running_loop()
        escaped: list[object] = []
        loop.set_exception_handler(lambda _loop, ctx: escaped.append(ctx))
        async with a, b:
            # -L udp: into the tunnel.
            sink = _Sink()
            await b.create_datagram_endpoint(lambda: sink, local_addr=(None, 9))
            local = forward_module.UdpLocalForward(
                forward_module.parse_forward(f"udp:[::1]:0:{B_ADDR[0]}:9", "L"),
                a,
                forward_options(),
            )
            await local.start()
            port = int(local.where.rsplit(":", 1)[1])
            client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            client.bind(("::1", 0))
            try:
                if not first:
                    client.sendto(b"one", ("::1", port))
                    await until(lambda: sink.got == [b"one"])
                for _ in range(3):
                    client.sendto(b"y" * 65520, ("::1", port))
                client.sendto(b"y" * 1450, ("::1", port))
                client.sendto(b"last", ("::1", port))
                await until(lambda: sink.got[-1:] == [b"last"])
            finally:
                client.close()
            c = local.counters
            relayed = len(sink.got)
            assert sink.got[-2:] == [b"y" * 1450, b"last"]
            assert (c.datagrams_to_tunnel, c.dropped) == (relayed, 3), local.line()
            assert c.to_tunnel == sum(map(len, sink.got)), local.line()
            assert "3 datagrams dropped" in local.line()
            await local.close()

            # -R udp: a local service's reply into the tunnel.
            service = _Sink()
            st, _ = await loop.create_datagram_endpoint(lambda: service, local_addr=("::1", 0))
            remote = forward_module.UdpRemoteForward(
                forward_module.parse_forward(
                    f"udp:5355:[::1]:{st.get_extra_info('sockname')[1]}", "R"
                ),
                a,
                forward_options(),
            )
            await remote.start()
            got: asyncio.Queue[bytes] = asyncio.Queue()
            peer, _ = await b.create_datagram_endpoint(
                lambda: _Collect(got), remote_addr=(A_ADDR[0], 5355)
            )
            peer.sendto(b"huge?")
            peer.sendto(b"huge?")
            peer.sendto(b"big?")
            peer.sendto(b"small?")
            assert await asyncio.wait_for(got.get(), 30) == b"B" * 1450
            assert await asyncio.wait_for(got.get(), 30) == b"small"
            r = remote.counters
            await until(lambda: r.dropped == 2)
            # -R: the peer's datagrams come from the tunnel, the replies go into it.
            assert (r.datagrams_from_tunnel, r.datagrams_to_tunnel) == (4, 2), remote.line()
            assert r.to_tunnel == 1450 + len(b"small"), remote.line()
            peer.close()
            await remote.close()
            st.close()
        assert not escaped, escaped

    with caplog.at_level(logging.DEBUG, logger="wireguard.io.forward"):
        run(body)
    told = [r.getMessage() for r in caplog.records if "65507" in r.getMessage()]
    assert len(told) == 2, told  # once per flow, not once per datagram


def test_flow_caps_fit_the_descriptor_limit(tmp_path) -> None:
    """-R udp flows are kernel sockets: the soft limit is raised as far as the
    caps need, and under a hard limit too low for them the caps give way, so
    the flows can never take the descriptors TCP connections need."""
    plan, reserve = forward_module.plan_descriptors, forward_module._FD_RESERVE
    for caps, soft, hard in [
        ([1024], 1024, 524288),  # Debian's defaults: raised, cap kept
        ([1024], 1024, 1024),
        ([1024, 1024], 1024, 1024),
        ([100, 5000], 4096, 4096),
        ([1024], 65536, 65536),
        ([1024], resource.RLIM_INFINITY, resource.RLIM_INFINITY),
    ]:
        new_soft, new_caps = plan(caps, soft, hard)
        assert soft <= new_soft <= hard, (caps, soft, hard)
        assert all(1 <= n <= c for n, c in zip(new_caps, caps, strict=True))
        if new_soft != resource.RLIM_INFINITY:
            assert sum(new_caps) + reserve <= new_soft or 2 * sum(new_caps) <= new_soft
        if hard == resource.RLIM_INFINITY or sum(caps) + reserve <= hard:
            assert new_caps == caps, (caps, soft, hard)
    # The command under `ulimit -n 400`: the default 1024 flows would not fit.
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    good = forward_config(tmp_path, key_a, key_b, ("127.0.0.1", 9), 0)

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (400, 400))

    proc = subprocess.Popen(
        [*FORWARD, good, "-R", "udp:5354:127.0.0.1:9", "--status", "0"],
        stderr=subprocess.PIPE, text=True, preexec_fn=low_limit,
    )  # fmt: skip
    try:
        lines = []
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "forward: ready" in line:
                break
        text = "".join(lines)
        assert "-R udp stack:5354 -> 127.0.0.1:9: at most 200 flows, not 1024: " in text, text
        assert "the limit is 400 (ulimit -n)" in text, text
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
