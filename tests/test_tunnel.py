"""The asyncio binding (wireguard.io.tunnel) on loopback: events go to those who
asked for them, nothing accumulates, and a roaming storm does not flood the log."""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import re
import socket
import struct
import tracemalloc
from pathlib import Path

import pytest

import wireguard
from wireguard.device import Device, Effects, EndpointChanged, HandshakeCompleted
from wireguard.io.tunnel import Tunnel
from wireguard.keys import PrivateKey
from wireguard.netstack.icmp import build_echo
from wireguard.netstack.ip import addr_bytes

PING = build_echo(addr_bytes("10.0.0.1"), addr_bytes("10.0.0.2"), 1, 1, b"x" * 32, reply=False)


def held_by_wireguard() -> int:
    """Bytes allocated by the package's code and still alive (tracemalloc on)."""
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(True, str(Path(wireguard.__file__).parent / "*"))]
    )
    return sum(stat.size for stat in snapshot.statistics("filename"))


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def wireguard_log():  # type: ignore[no-untyped-def]
    logger = logging.getLogger("wireguard")
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


class Roamer:
    """Peer A, sans-I/O, sending from two UDP sockets in turn: to B every
    packet comes from a new address, as from an endpoint that flaps."""

    def __init__(self, b: Tunnel, key_b: PrivateKey, key_a: PrivateKey) -> None:
        self.device = Device(key_a)
        self.b_address = ("127.0.0.1", b.listen_port)
        self.device.add_peer(key_b.public_key, allowed_ips=["10.0.0.2/32"], endpoint=self.b_address)
        self.socks = []
        for _ in range(2):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            self.socks.append(s)
        self.key_b = key_b
        self.sent = 0

    async def handshake(self) -> None:
        loop = asyncio.get_running_loop()
        for data, _ in self.device.initiate_handshake(self.key_b.public_key, loop.time()).datagrams:
            self.socks[0].sendto(data, self.b_address)
        response = await asyncio.wait_for(loop.sock_recv(self.socks[0], 2048), 10)
        self.device.receive_datagram(response, self.b_address, loop.time())

    async def send(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(count):
            for data, _ in self.device.send_packet(PING, loop.time()).datagrams:
                self.socks[self.sent % 2].sendto(data, self.b_address)
            self.sent += 1
            if self.sent % 64 == 0:
                await asyncio.sleep(0)  # let B read (its socket buffer is finite)

    def close(self) -> None:
        for s in self.socks:
            s.close()


def test_endpoint_flapping_keeps_memory_and_log_bounded(wireguard_log: Lines) -> None:
    """50,000 packets, each from the other of two addresses: every one is an
    EndpointChanged. The tunnel keeps no history (memory does not grow with the
    packets), a subscriber that does not read holds at most its bound (the rest
    counted), the callback sees them all, and the log has a line per peer per
    interval whose counts account for every change."""
    total, interval = 50_000, 1.0

    async def body() -> None:
        key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
        device_b = Device(key_b)
        device_b.add_peer(key_a.public_key, allowed_ips=["10.0.0.1/32"])
        delivered = [0]
        changes: list[int] = [0]

        def on_event(event) -> None:  # type: ignore[no-untyped-def]
            changes[0] += isinstance(event, EndpointChanged)

        tunnel = Tunnel(
            device_b, host="127.0.0.1", listen_port=0, on_event=on_event,
            on_packet=lambda packet: delivered.__setitem__(0, delivered[0] + 1),
        )  # fmt: skip
        tunnel.endpoint_log_interval = interval
        loop = asyncio.get_running_loop()
        async with tunnel:
            idle = tunnel.subscribe(maxsize=100)
            a = Roamer(tunnel, key_b, key_a)
            await a.handshake()
            start = loop.time()
            await a.send(10_000)
            gc.collect()
            tracemalloc.start()
            try:
                before = held_by_wireguard()
                await a.send(total - 10_000)
                while delivered[0] < total:
                    await asyncio.sleep(0.01)
                gc.collect()
                grown = held_by_wireguard() - before
            finally:
                tracemalloc.stop()
            elapsed = loop.time() - start
            a.close()
            assert not hasattr(tunnel, "events")
            # 40,000 events kept would be several MiB; nothing is kept.
            assert grown < 512 * 1024, grown
            assert total - 1 <= changes[0] <= total
            assert len(idle) == 100 and idle.dropped + len(idle) == changes[0] + 1  # + handshake
        assert idle.closed  # the tunnel's close ends every stream
        lines = [m for m in wireguard_log.messages if "EndpointChanged" in m or "endpoint" in m]
        assert len(lines) <= elapsed / interval + 3, (len(lines), elapsed)
        accounted = 0
        for line in lines:
            if m := re.search(r"and (\d+) more endpoint changes in the", line):
                accounted += 1 + int(m[1])
            elif m := re.search(r": (\d+) more endpoint changes not logged", line):
                accounted += int(m[1])
            else:
                accounted += 1
        assert accounted == changes[0], lines

    asyncio.run(body())


def test_event_stream_delivers_to_a_reader_and_ends_with_the_tunnel() -> None:
    async def body() -> None:
        key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
        device_b = Device(key_b)
        device_b.add_peer(key_a.public_key, allowed_ips=["10.0.0.1/32"])
        tunnel = Tunnel(device_b, host="127.0.0.1", listen_port=0)
        seen = []
        async with tunnel:
            with tunnel.subscribe() as before_close:
                stream = tunnel.subscribe()

                async def read() -> None:
                    async for event in stream:
                        seen.append(event)

                reader = asyncio.create_task(read())
                a = Roamer(tunnel, key_b, key_a)
                await a.handshake()
                await a.send(3)
                while len(seen) < 3:
                    await asyncio.sleep(0.01)
                a.close()
            assert before_close.closed and tunnel._streams == [stream]
        await asyncio.wait_for(reader, 10)  # the tunnel closed: the iteration ended
        handshakes = [e for e in seen if isinstance(e, HandshakeCompleted)]
        assert len(handshakes) == 1 and not handshakes[0].is_initiator
        assert any(isinstance(e, EndpointChanged) for e in seen)
        with pytest.raises(ValueError):
            tunnel.subscribe(maxsize=0)

    asyncio.run(body())


def test_recv_packet_ends_with_the_tunnel_as_an_event_stream_does() -> None:
    """A reader of recv_packet() waiting when the tunnel closes is not left
    waiting for ever: like an event stream (and a StreamReader at EOF), it
    gets EOFError, and so does every later call."""

    async def body() -> None:
        key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
        device_b = Device(key_b)
        device_b.add_peer(key_a.public_key, allowed_ips=["10.0.0.1/32"])
        tunnel = Tunnel(device_b, host="127.0.0.1", listen_port=0)
        async with tunnel:
            waiting = asyncio.create_task(tunnel.recv_packet())
            a = Roamer(tunnel, key_b, key_a)
            await a.handshake()
            await a.send(1)
            assert await asyncio.wait_for(waiting, 10) == PING
            a.close()
            waiting = asyncio.create_task(tunnel.recv_packet())
            await asyncio.sleep(0.01)
        with pytest.raises(EOFError):
            await asyncio.wait_for(waiting, 10)  # the limit only stops a hang
        with pytest.raises(EOFError):
            await tunnel.recv_packet()

    asyncio.run(body())


def test_counters_count_every_datagram_read_and_each_wake_up() -> None:
    """The per-wake-up batch counters count each datagram a plain socket sent
    once (garbage, so the device drops and counts each: ``malformed``), and
    the loss counters start at zero with a readable receive-buffer count."""

    async def body() -> None:
        async with Tunnel(Device(PrivateKey.generate()), listen_port=0, host="127.0.0.1") as t:
            assert t.counters() == {
                "udp_send_buffer_full": 0, "udp_send_errors": 0, "udp_receive_errors": 0,
                "packets_queue_full": 0, "udp_receive_buffer_full": 0,
            }  # fmt: skip
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for _ in range(50):
                    s.sendto(b"not wireguard", ("127.0.0.1", t.listen_port))
            for _ in range(100):
                await asyncio.sleep(0.01)
                if t.datagrams_read == 50:
                    break
            assert t.datagrams_read == 50 == t.device.drops["malformed"]
            assert 1 <= t.wakeups <= 50

    asyncio.run(body())


def _numbered_pings(count: int) -> list[bytes]:
    return [
        build_echo(addr_bytes("10.0.0.1"), addr_bytes("10.0.0.2"), 1, i, b"x" * 1000, reply=False)
        for i in range(count)
    ]


def test_gro_reads_deliver_each_datagram_once_and_garbage_in_them_is_counted() -> None:
    """Two tunnels on loopback: a burst A sends leaves in GSO sends and
    reaches B in GRO reads (several datagrams in one buffer): every packet
    delivered once, in order, each datagram counted as read. Then a GSO
    burst of equal-size garbage from a plain socket: one GRO read, every
    datagram in it counted malformed."""

    async def body() -> None:
        key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
        device_a, device_b = Device(key_a), Device(key_b)
        a = Tunnel(device_a, host="127.0.0.1", listen_port=0)
        b = Tunnel(device_b, host="127.0.0.1", listen_port=0)
        got: list[bytes] = []
        b.on_packets = got.extend
        async with a, b:
            if not (a.gro_active and b.gro_active):
                pytest.fail("UDP GRO is not available on this kernel's loopback")
            device_a.add_peer(
                key_b.public_key, allowed_ips=["10.0.0.2/32"], endpoint=("127.0.0.1", b.listen_port)
            )
            device_b.add_peer(key_a.public_key, allowed_ips=["10.0.0.1/32"])
            pings = _numbered_pings(200)
            a.send_packets(pings[:1])  # the handshake, then this one
            while len(got) < 1:
                await asyncio.sleep(0.01)
            read_before, wakeups_before = b.datagrams_read, b.wakeups
            for start in range(1, 200, 50):
                a.send_packets(pings[start : start + 50])
                await asyncio.sleep(0.02)
            for _ in range(300):
                if len(got) == 200:
                    break
                await asyncio.sleep(0.01)
            assert got == pings
            assert b.datagrams_read - read_before == 199
            assert b.wakeups - wakeups_before < 199  # GRO reads: several per read
            assert not b.device.drops

            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setsockopt(socket.SOL_UDP, 103, 100)  # UDP_SEGMENT: cut every 100 bytes
                s.sendto(bytes(100 * 20 + 30), ("127.0.0.1", b.listen_port))
            read_before = b.datagrams_read
            for _ in range(100):
                await asyncio.sleep(0.01)
                if b.datagrams_read - read_before == 21:
                    break
            assert b.datagrams_read - read_before == 21
            assert b.device.drops == {"malformed": 21}

    asyncio.run(body())


@pytest.mark.parametrize("deadlines", ["device", "later every call"])
def test_traffic_both_ways_rearms_the_loop_timer_rarely(deadlines: str) -> None:
    """Traffic both ways moves the peer's timers with every packet (a packet
    sent sets the new-handshake timer, one received clears it and sets the
    keepalive). The device files its deadlines lazily and the tunnel arms its
    loop timer only when the deadline moves earlier, so over 40 exchanges of
    5 packets each way the two tunnels arm their timers a few times in all,
    not once per wake-up, and every packet arrives. "later every call": the
    devices' next deadline made to move later at every call (what an eager
    timer heap would report), so the tunnel's own timer is what keeps the
    count low."""
    from wireguard.io.deadline import DeadlineTimer

    async def body() -> None:
        loop = asyncio.get_running_loop()
        armed: list[object] = []
        call_at = loop.call_at

        def counting_call_at(when, callback, *args, **kwargs):  # type: ignore[no-untyped-def]
            owner = getattr(callback, "__self__", None)
            if isinstance(owner, (DeadlineTimer, Tunnel)):
                armed.append(owner)  # the tunnel's timer, however it is kept
            return call_at(when, callback, *args, **kwargs)

        loop.call_at = counting_call_at  # type: ignore[method-assign]
        key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
        device_a, device_b = Device(key_a), Device(key_b)
        if deadlines == "later every call":
            for device in (device_a, device_b):
                calls = itertools.count(1)

                def later(real=device.next_deadline, calls=calls):  # type: ignore[no-untyped-def]
                    deadline = real()
                    return None if deadline is None else deadline + next(calls) * 1e-6

                device.next_deadline = later  # type: ignore[method-assign]
        a = Tunnel(device_a, host="127.0.0.1", listen_port=0)
        b = Tunnel(device_b, host="127.0.0.1", listen_port=0)
        at_a: list[bytes] = []
        at_b: list[bytes] = []
        replies = [
            build_echo(addr_bytes("10.0.0.2"), addr_bytes("10.0.0.1"), 1, i, b"y" * 100, reply=True)
            for i in range(5)
        ]

        def answer(packets: list[bytes]) -> None:
            at_b.extend(packets)
            b.send_packets(replies[: len(packets)])

        b.on_packets = answer
        a.on_packets = at_a.extend
        async with a, b:
            device_a.add_peer(
                key_b.public_key, allowed_ips=["10.0.0.2/32"], endpoint=("127.0.0.1", b.listen_port)
            )
            device_b.add_peer(key_a.public_key, allowed_ips=["10.0.0.1/32"])
            pings = _numbered_pings(5)
            a.send_packets(pings[:1])  # the handshake
            while not at_a:
                await asyncio.sleep(0.01)
            armed.clear()
            for _ in range(40):
                before = len(at_a)
                a.send_packets(pings)
                for _ in range(200):
                    if len(at_a) - before == 5:
                        break
                    await asyncio.sleep(0.002)
            assert len(at_b) == 1 + 40 * 5 and len(at_a) == 1 + 40 * 5
            assert len(armed) <= 6, len(armed)  # both tunnels

    asyncio.run(body())


def test_a_wake_up_of_more_gro_reads_than_buffers_delivers_all_in_order() -> None:
    """A peer (sans-I/O, its own socket) sends 40 GSO bursts of 3 messages
    while the tunnel is not reading: one wake-up then holds 40 GRO reads,
    more than the tunnel keeps buffers for, so it hands them to the device in
    several calls; every packet arrives once and in order, every datagram is
    counted as read."""

    async def body() -> None:
        key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
        device_b = Device(key_b)
        device_b.add_peer(key_a.public_key, allowed_ips=["10.0.0.1/32"])
        b = Tunnel(device_b, host="127.0.0.1", listen_port=0)
        got: list[bytes] = []
        b.on_packets = got.extend
        async with b:
            if not b.gro_active:
                pytest.fail("UDP GRO is not available on this kernel's loopback")
            a = Roamer(b, key_b, key_a)
            try:
                await a.handshake()
                loop = asyncio.get_running_loop()
                pings = _numbered_pings(120)
                sealed = [d for d, _ in a.device.send_packets(pings, loop.time()).datagrams]
                assert len({len(d) for d in sealed}) == 1
                read_before = b.datagrams_read
                sock = a.socks[0]
                sock.setblocking(True)
                for i in range(0, 120, 3):  # no await: the tunnel reads after
                    sock.sendmsg(
                        [b"".join(sealed[i : i + 3])],
                        [(socket.SOL_UDP, 103, struct.pack("=H", len(sealed[0])))],
                        0,
                        a.b_address,
                    )
                for _ in range(300):
                    if len(got) == 120:
                        break
                    await asyncio.sleep(0.01)
                assert got == pings
                assert b.datagrams_read - read_before == 120
                assert not b.device.drops
            finally:
                a.close()

    asyncio.run(body())


@pytest.mark.parametrize("gro", [False, True], ids=["recvfrom", "gro"])
def test_a_failed_read_is_counted_and_ends_the_wake_up(gro: bool) -> None:
    """A read that raises is counted in ``udp_receive_errors`` on both read
    paths, and the wake-up stops there instead of spinning on the error."""

    class Failing:
        """Fails its first 10 reads, then has nothing to read: a wake-up
        that went on reading after an error would make more than one call."""

        calls = 0

        def _fail(self, *args: object) -> None:
            self.calls += 1
            if self.calls > 10:
                raise BlockingIOError
            raise ConnectionRefusedError(111, "Connection refused")

        recvfrom = recvmsg_into = _fail

    async def body() -> None:
        async with Tunnel(Device(PrivateKey.generate()), listen_port=0, host="127.0.0.1") as t:
            real, gro_was = t._sock, t._gro_on
            failing = Failing()
            t._sock, t._gro_on = failing, gro  # type: ignore[assignment]
            try:
                t._on_readable()
                t._on_readable()
            finally:
                t._sock, t._gro_on = real, gro_was
            assert failing.calls == 2
            assert t.counters()["udp_receive_errors"] == 2
            assert t.wakeups == 0 and t.datagrams_read == 0

    asyncio.run(body())


def test_an_icmp_port_unreachable_is_not_a_receive_error() -> None:
    """What the counter's docstring says of the kernel: a datagram sent to a
    closed port draws an ICMP port unreachable, which Linux does not report
    to an unconnected socket without IP_RECVERR, so neither the sends nor
    the reads after it fail."""

    async def body() -> None:
        async with Tunnel(Device(PrivateKey.generate()), listen_port=0, host="127.0.0.1") as t:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
                closed.bind(("127.0.0.1", 0))
                port = closed.getsockname()[1]
            for _ in range(3):
                t.apply(Effects(datagrams=[(b"x" * 32, ("127.0.0.1", port))]))
                await asyncio.sleep(0.05)
            counters = t.counters()
            assert counters["udp_receive_errors"] == 0
            assert counters["udp_send_errors"] == 0 and counters["udp_send_buffer_full"] == 0

    asyncio.run(body())


def test_device_from_config_skips_a_peer_with_the_interfaces_own_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # wireguard-go (device/uapi.go handlePublicKeyLine: "Ignore peer with the
    # same public key as this device") and the kernel (netlink set_peer) skip
    # such a peer, so a shared list of all nodes works on every node.
    from wireguard.config import Config, PeerConfig, parse_wg_quick
    from wireguard.io.tunnel import device_from_config

    me, other = PrivateKey.generate(), PrivateKey.generate()
    config = parse_wg_quick(
        f"[Interface]\nPrivateKey = {me}\n\n"
        f"[Peer]\nPublicKey = {me.public_key}\nAllowedIPs = 10.0.0.1/32\n\n"
        f"[Peer]\nPublicKey = {other.public_key}\nAllowedIPs = 10.0.0.2/32\n",
        "wg0.conf",
    )
    with caplog.at_level(logging.WARNING, logger="wireguard.io.tunnel"):
        device = asyncio.run(device_from_config(config))
    assert list(device.peers) == [other.public_key]
    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(skipped) == 1 and str(me.public_key) in skipped[0], skipped
    assert str(other.public_key) not in skipped[0]
    # Where it is, as every other config note says it: file, line, key.
    assert skipped[0].startswith("wg0.conf:5: PublicKey: "), skipped
    # A Config built in code has no file to name.
    built = Config(config.interface, (PeerConfig(me.public_key),))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wireguard.io.tunnel"):
        asyncio.run(device_from_config(built))
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert line.startswith("PublicKey: peer "), line


def test_routing_table_numbers_are_read_as_ip_reads_them() -> None:
    """``Table = N`` goes to ``ip route add ... table N`` in wg-quick, and
    iproute2 (rtnl_rttable_a2n) reads N with strtoul in base 0: 0x hex, a
    leading 0 octal (010 is table 8; 0518 is no number), else decimal; a
    table above 2**32 - 1 is none. The built-in names are its own."""
    from wireguard.io.tun import TunError, routing_table

    assert [routing_table(t) for t in ("7", "0x10", "010", "0", "main", "local")] == [
        7, 16, 8, 0, 254, 255
    ]
    for bad in ("0518", "4294967296", "0x", "ten"):
        with pytest.raises(TunError):
            routing_table(bad)


def test_a_reader_cancelled_at_any_moment_loses_no_packet() -> None:
    """A ``recv_packet()`` cancelled (``asyncio.wait_for`` timing out) just as
    a packet arrives: asyncio.Queue.get's own guarantee holds, the packet is
    either returned or still queued for the next reader, never lost."""

    async def trial(spins: int) -> str:
        tunnel = Tunnel(Device(PrivateKey.generate()), host="127.0.0.1", listen_port=0)
        reader = asyncio.create_task(tunnel.recv_packet())
        for _ in range(3):
            await asyncio.sleep(0)  # the reader waits
        tunnel._packets.put_nowait(b"packet")  # as the tunnel queues one
        for _ in range(spins):
            await asyncio.sleep(0)
        reader.cancel()
        try:
            return f"got {await reader!r}"
        except asyncio.CancelledError:
            try:
                return "queued" if await asyncio.wait_for(tunnel.recv_packet(), 1) else "?"
            except TimeoutError:
                return "lost"

    async def main() -> list[str]:
        return [await trial(spins) for spins in range(5)]

    outcomes = asyncio.run(main())
    assert all(o in ("queued", "got b'packet'") for o in outcomes), outcomes
