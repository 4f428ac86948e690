"""Our asyncio endpoint (no TUN, namespace A) against wireguard-go (namespace B).

Our side builds ICMP echo requests to B's tunnel address and must get the
replies B's kernel sends back through wireguard-go; in the other direction it
answers B's pings. Everything B does is the real implementation's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import pytest

from tests.interop.harness import UNDER_V4, UNDER_V6, WireGuardGo, hosts, run, socket_in_netns
from wireguard.device import Device, Event, HandshakeCompleted
from wireguard.io.interface import Interface
from wireguard.io.tunnel import Tunnel
from wireguard.keys import PresharedKey, PrivateKey
from wireguard.netstack.icmp import build_echo, echo_reply_for, parse_icmp
from wireguard.netstack.ip import addr_bytes, parse_ip

pytestmark = pytest.mark.interop

TUN_A = ("10.77.0.1", "fd10::1")
TUN_B = ("10.77.0.2", "fd10::2")
PORT_B = 51820


def b_config(key_b: PrivateKey, key_a: PrivateKey, psk, endpoint_a: str | None) -> str:
    lines = [
        "[Interface]",
        f"PrivateKey = {key_b}",
        f"ListenPort = {PORT_B}",
        "[Peer]",
        f"PublicKey = {key_a.public_key}",
        f"AllowedIPs = {TUN_A[0]}/32, {TUN_A[1]}/128",
    ]
    if psk is not None:
        lines.append(f"PresharedKey = {psk}")
    if endpoint_a is not None:
        lines.append(f"Endpoint = {endpoint_a}")
    return "\n".join(lines) + "\n"


class Side:
    """Our endpoint in namespace A."""

    def __init__(self, key: PrivateKey, ns: str) -> None:
        self.key, self.ns = key, ns
        self.sock = socket_in_netns(ns)
        self.port = self.sock.getsockname()[1]
        self.device = Device(key)
        self.tunnel = Tunnel(self.device, sock=self.sock)
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.tunnel.on_packet = self._on_packet
        self.events: list[Event] = []  # this test's whole history of them
        self.tunnel.on_event = self.events.append
        self.answered = 0

    def _on_packet(self, packet: bytes) -> None:
        ip = parse_ip(packet)
        reply = echo_reply_for(ip, parse_icmp(ip))
        if reply is not None:  # B pings us: answer as a host would
            self.answered += 1
            self.tunnel.send_packet(reply)
        else:
            self.replies.put_nowait(packet)

    async def ping(self, dst: str, seq: int, timeout: float = 5.0) -> bool:
        src = TUN_A[1] if ":" in dst else TUN_A[0]
        self.tunnel.send_packet(
            build_echo(addr_bytes(src), addr_bytes(dst), 0x77, seq, b"interop", reply=False)
        )
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                packet = await asyncio.wait_for(self.replies.get(), left)
            except TimeoutError:
                return False
            ip = parse_ip(packet)
            msg = parse_icmp(ip)
            if msg.seq == seq and ip.src == addr_bytes(dst) and msg.body == b"interop":
                return True
        return False


async def ping_until(side: Side, dst: str, within: float) -> float:
    """Ping until a reply comes; returns the seconds it took."""
    start = time.monotonic()
    seq = 0
    while time.monotonic() - start < within:
        seq += 1
        if await side.ping(dst, seq, timeout=1.0):
            return time.monotonic() - start
    raise AssertionError(f"no echo reply from {dst} within {within} s")


async def b_pings(h, dst: str, count: int = 2) -> bool:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", h.b, "ping", "-c", str(count), "-i", "0.2", "-W", "5", dst,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    _out, _ = await proc.communicate()
    return proc.returncode == 0


@contextlib.asynccontextmanager
async def setup(*, psk: bool = False, v6_underlay: bool = False, b_knows_a: bool = True):
    with hosts() as h:
        key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
        preshared = PresharedKey.generate() if psk else None
        side = Side(key_a, h.a)
        a_host = UNDER_V6[0] if v6_underlay else UNDER_V4[0]
        b_host = UNDER_V6[1] if v6_underlay else UNDER_V4[1]
        fmt = "[{}]:{}" if v6_underlay else "{}:{}"
        wg = WireGuardGo(h, h.b, f"wgt{h.tag}")
        wg.start(
            b_config(key_b, key_a, preshared, fmt.format(a_host, side.port) if b_knows_a else None),
            [f"{TUN_B[0]}/24", f"{TUN_B[1]}/64"],
        )
        try:
            side.device.add_peer(
                key_b.public_key,
                preshared_key=preshared,
                allowed_ips=[f"{TUN_B[0]}/32", f"{TUN_B[1]}/128"],
                endpoint=(b_host, PORT_B),
            )
            async with side.tunnel:
                yield h, side, wg, key_b, preshared
        finally:
            wg.stop()


def handshakes(side: Side) -> int:
    return sum(isinstance(e, HandshakeCompleted) for e in side.events)


@pytest.mark.parametrize("psk", [False, True], ids=["no-psk", "psk"])
def test_we_initiate(psk):
    async def body():
        async with setup(psk=psk) as (_h, side, wg, _, _):
            assert await side.ping(TUN_B[0], 1)
            assert await side.ping(TUN_B[0], 2)
            assert handshakes(side) == 1
            assert wg.latest_handshake() > 0

    asyncio.run(body())


@pytest.mark.parametrize("psk", [False, True], ids=["no-psk", "psk"])
def test_wireguard_go_initiates(psk):
    async def body():
        async with setup(psk=psk) as (h, side, _wg, _, _):
            assert await b_pings(h, TUN_A[0])
            assert side.answered >= 2
            events = [e for e in side.events if isinstance(e, HandshakeCompleted)]
            assert events and not events[0].is_initiator

    asyncio.run(body())


def test_ipv6_underlay():
    async def body():
        async with setup(v6_underlay=True) as (h, side, _wg, _, _):
            assert await side.ping(TUN_B[0], 1)
            peer = next(iter(side.device.peers.values()))
            assert peer.endpoint == (UNDER_V6[1], PORT_B)
            assert await b_pings(h, TUN_A[0])

    asyncio.run(body())


def test_ipv6_inside_tunnel():
    async def body():
        async with setup() as (h, side, _wg, _, _):
            # B's kernel may need a moment for its IPv6 address (no DAD on tun).
            await ping_until(side, TUN_B[1], within=10)
            assert await b_pings(h, TUN_A[1])

    asyncio.run(body())


def test_restart_of_our_side_gives_new_handshake():
    async def body():
        async with setup() as (h, side, wg, key_b, _psk):
            assert await side.ping(TUN_B[0], 1)
            first = wg.latest_handshake()
            await side.tunnel.close()
            # A new process with the same key: a fresh Device, a new socket.
            again = Side(side.key, h.a)
            again.device.add_peer(
                key_b.public_key, allowed_ips=[f"{TUN_B[0]}/32"], endpoint=(UNDER_V4[1], PORT_B)
            )
            await asyncio.sleep(1.1)  # wg's handshake times have 1 s resolution
            async with again.tunnel:
                assert await again.ping(TUN_B[0], 1)
                assert handshakes(again) == 1
                assert wg.latest_handshake() > first
                # B learned our new port from the authenticated initiation.
                assert await b_pings(h, TUN_A[0])

    asyncio.run(body())


def test_restart_of_wireguard_go_recovers():
    async def body():
        async with setup() as (_h, side, wg, key_b, _):
            assert await side.ping(TUN_B[0], 1)
            wg.stop()
            wg.start(
                b_config(key_b, side.key, None, f"{UNDER_V4[0]}:{side.port}"),
                [f"{TUN_B[0]}/24", f"{TUN_B[1]}/64"],
            )
            # Our old session is gone on B's side: our data is dropped there
            # until our timers start a new handshake (KEEPALIVE + REKEY_TIMEOUT).
            took = await ping_until(side, TUN_B[0], within=30)
            assert handshakes(side) == 2
            assert took < 30

    asyncio.run(body())


def test_v4_socket_family():
    # An IPv4-only socket works too (hosts without IPv6).
    async def body():
        with hosts() as h:
            key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
            sock = socket_in_netns(h.a, socket.AF_INET)
            wg = WireGuardGo(h, h.b, f"wgt{h.tag}")
            wg.start(b_config(key_b, key_a, None, None), [f"{TUN_B[0]}/24"])
            try:
                device = Device(key_a)
                device.add_peer(key_b.public_key, allowed_ips=[f"{TUN_B[0]}/32"],
                                endpoint=(UNDER_V4[1], PORT_B))  # fmt: skip
                async with Tunnel(device, sock=sock) as tunnel:
                    tunnel.send_packet(
                        build_echo(
                            addr_bytes(TUN_A[0]), addr_bytes(TUN_B[0]), 1, 1, b"x", reply=False
                        )
                    )
                    reply = await asyncio.wait_for(tunnel.recv_packet(), 5)
                    assert parse_icmp(parse_ip(reply)).type == 0
            finally:
                wg.stop()

    asyncio.run(body())


def test_wg_show_through_our_control_socket_and_runtime_peer():
    """`wg` (the stock tool) talks to our endpoint: a peer added at runtime
    with `wg set` works, and `wg show` reports its handshake and bytes."""

    async def body():
        with hosts() as h:
            key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
            sock = socket_in_netns(h.a)
            port_a = sock.getsockname()[1]
            wg = WireGuardGo(h, h.b, f"wgt{h.tag}")
            wg.start(
                b_config(key_b, key_a, None, f"{UNDER_V4[0]}:{port_a}"),
                [f"{TUN_B[0]}/24"],
            )
            name = f"pyw{h.tag}"
            try:
                async with Interface(name, Device(key_a), sock=sock) as iface:
                    assert iface.device.peers == {}
                    # No peer yet: a packet to B has no route.
                    replies: asyncio.Queue[bytes] = asyncio.Queue()
                    iface.tunnel.on_packet = replies.put_nowait
                    await asyncio.to_thread(
                        run, "wg", "set", name, "peer", str(key_b.public_key),
                        "allowed-ips", f"{TUN_B[0]}/32", "endpoint", f"{UNDER_V4[1]}:{PORT_B}",
                    )  # fmt: skip
                    assert list(iface.device.peers) == [key_b.public_key]
                    iface.tunnel.send_packet(
                        build_echo(
                            addr_bytes(TUN_A[0]), addr_bytes(TUN_B[0]), 9, 1, b"set", reply=False
                        )
                    )
                    reply = await asyncio.wait_for(replies.get(), 5)
                    assert parse_icmp(parse_ip(reply)).type == 0
                    show = (await asyncio.to_thread(run, "wg", "show", name)).stdout
                    assert f"peer: {key_b.public_key}" in show
                    assert f"endpoint: {UNDER_V4[1]}:{PORT_B}" in show
                    assert "latest handshake: Now" in show or "second" in show
                    assert "transfer: " in show and " B received" in show
                    dump = (await asyncio.to_thread(run, "wg", "show", name, "dump")).stdout
                    fields = dump.splitlines()[1].split("\t")
                    peer = iface.device.peers[key_b.public_key]
                    assert int(fields[4]) > 0  # latest handshake, Unix seconds
                    assert abs(int(fields[4]) - time.time()) < 30
                    assert (int(fields[5]), int(fields[6])) == (peer.rx_bytes, peer.tx_bytes)
                    assert peer.rx_bytes > 0 and peer.tx_bytes > 0
                    # And B's view of us matches what we sent.
                    b_dump = wg.wg("show", wg.name, "dump").splitlines()[1].split("\t")
                    assert int(b_dump[5]) == peer.tx_bytes
            finally:
                wg.stop()

    asyncio.run(body())
