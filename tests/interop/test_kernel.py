"""Our endpoint against Linux's own WireGuard (Debian's kernel in qemu).

One guest boots per module (:class:`tests.interop.kernel_vm.KernelVM`, about
10 s under TCG); each test gives it a fresh ``wg0`` and fresh keys. Our side
is the asyncio :class:`Tunnel` on a UDP socket inside the guest's network
namespace, talking to the guest through qemu's user-mode network. What the
kernel does is observed on the guest: ``wg show`` (printed on its console),
its ping, its nc and httpd, and the replies (or silence) on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import need, need_tool
from tests.interop import kernel_vm
from tests.interop.harness import socket_in_netns
from tests.interop.kernel_vm import (
    GUEST_TUN,
    GUEST_TUN6,
    GUEST_WG_PORT,
    HOST_TUN,
    HOST_TUN6,
    SLIRP_HOST,
    KernelVM,
)
from wireguard.capture import PcapReader
from wireguard.device import Device, Event, HandshakeCompleted
from wireguard.io.stackdriver import StackDriver
from wireguard.io.tap import EndpointTap, attach
from wireguard.io.tunnel import Tunnel
from wireguard.keys import PresharedKey, PrivateKey
from wireguard.misbehaviour import Corrupt, Duplicate, Policy, Replay, Rule, StaleTimestamp
from wireguard.netstack import NetStack, TcpConfig
from wireguard.netstack.icmp import build_echo, echo_reply_for, parse_icmp
from wireguard.netstack.ip import addr_bytes, parse_ip

pytestmark = pytest.mark.interop

PING_IDENT = 0x4B56
# A guest shell line that waits until something listens on TCP port {port}.
WAIT_LISTEN = "for i in $(seq 100); do netstat -ltn | grep -q ':{port} ' && break; sleep 0.1; done"


@pytest.fixture(scope="module")
def vm():
    reason = kernel_vm.missing()
    need(reason is None, reason or "")
    machine = KernelVM()
    try:
        machine.start()
    except kernel_vm.GuestError as exc:
        machine.stop()
        pytest.fail(f"the kernel VM did not start: {exc}")
    try:
        yield machine
    finally:
        machine.stop()


def guest_config(guest: PrivateKey, ours: PrivateKey, psk, our_port: int | None) -> str:
    lines = [
        "[Interface]",
        f"PrivateKey = {guest}",
        f"ListenPort = {GUEST_WG_PORT}",
        "[Peer]",
        f"PublicKey = {ours.public_key}",
        f"AllowedIPs = {HOST_TUN}/32, {HOST_TUN6}/128",
    ]
    if psk is not None:
        lines.append(f"PresharedKey = {psk}")
    if our_port is not None:
        # The namespace's 127.0.0.1, as the guest reaches it through slirp.
        lines.append(f"Endpoint = {SLIRP_HOST}:{our_port}")
    return "\n".join(lines) + "\n"


class Ours:
    """Our endpoint in the VM's namespace; answers pings to HOST_TUN."""

    def __init__(self, vm: KernelVM, key: PrivateKey, *, tap: dict | None = None) -> None:
        self.vm, self.key = vm, key
        self.sock = socket_in_netns(vm.ns, socket.AF_INET)
        self.port = self.sock.getsockname()[1]
        self.device = Device(key)
        self.tunnel = Tunnel(self.device, sock=self.sock)
        self.tap: EndpointTap | None = attach(self.tunnel, **tap) if tap else None
        self.echo_replies: Counter[int] = Counter()
        self.replied = asyncio.Event()
        self.tunnel.on_packet = self._on_packet
        self.events: list[Event] = []  # this test's whole history of them
        self.tunnel.on_event = self.events.append
        self.answered = 0
        self.sent_packets: list[bytes] = []
        self.received_packets: list[bytes] = []

    def _on_packet(self, packet: bytes) -> None:
        self.received_packets.append(packet)
        ip = parse_ip(packet)
        msg = parse_icmp(ip)
        reply = echo_reply_for(ip, msg)
        if reply is not None:
            self.answered += 1
            self.send(reply)
        elif msg.ident == PING_IDENT and msg.body == b"kernel":
            self.echo_replies[msg.seq] += 1
            self.replied.set()

    def send(self, packet: bytes) -> None:
        self.sent_packets.append(packet)
        self.tunnel.send_packet(packet)

    def add_guest(self, guest: PrivateKey, psk=None) -> None:  # type: ignore[no-untyped-def]
        self.device.add_peer(
            guest.public_key,
            preshared_key=psk,
            allowed_ips=[f"{GUEST_TUN}/32", f"{GUEST_TUN6}/128"],
            endpoint=("127.0.0.1", self.vm.host_port),
        )

    async def ping(self, seq: int, timeout: float = 5.0, *, ipv6: bool = False) -> int:
        """Send echo request *seq*; the replies to it within *timeout* (after
        the first reply, up to 0.5 s more for a second copy)."""
        src, dst = (HOST_TUN6, GUEST_TUN6) if ipv6 else (HOST_TUN, GUEST_TUN)
        self.send(
            build_echo(addr_bytes(src), addr_bytes(dst), PING_IDENT, seq, b"kernel", reply=False)
        )
        deadline = time.monotonic() + timeout
        while not self.echo_replies[seq] and (left := deadline - time.monotonic()) > 0:
            self.replied.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.replied.wait(), left)
        if self.echo_replies[seq]:
            await asyncio.sleep(0.5)
        return self.echo_replies[seq]

    def handshakes(self, initiator: bool | None = None) -> int:
        return sum(
            isinstance(e, HandshakeCompleted) and (initiator is None or e.is_initiator == initiator)
            for e in self.events
        )

    @property
    def peer(self):  # type: ignore[no-untyped-def]
        return next(iter(self.device.peers.values()))


@contextlib.asynccontextmanager
async def session(
    vm: KernelVM, *, psk: bool = False, guest_knows_us: bool = False, tap: dict | None = None
) -> AsyncIterator[tuple[Ours, PrivateKey, PresharedKey | None]]:
    ours_key, guest_key = PrivateKey.generate(), PrivateKey.generate()
    preshared = PresharedKey.generate() if psk else None
    ours = Ours(vm, ours_key, tap=tap)
    await vm.arun("true")  # the channel answers before we configure
    await asyncio.to_thread(
        vm.configure,
        guest_config(guest_key, ours_key, preshared, ours.port if guest_knows_us else None),
    )
    ours.add_guest(guest_key, preshared)
    try:
        async with ours.tunnel:
            yield ours, guest_key, preshared
    finally:
        if ours.tap is not None:
            ours.tap.close()


async def guest_ping(vm: KernelVM, count: int = 3) -> subprocess.CompletedProcess | object:
    return await vm.arun(f"ping -c {count} -i 0.3 -W 5 {HOST_TUN}", timeout=20)


async def eventually(condition, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    """Whether *condition()* becomes true within *timeout* (the guest runs
    emulated on shared cores: what it sends may take a while)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def latest(vm: KernelVM) -> int:
    return vm.latest_handshake()


# --- handshakes and data both ways ---------------------------------------------------


@pytest.mark.parametrize("psk", [False, True], ids=["no-psk", "psk"])
def test_we_initiate(vm: KernelVM, psk: bool) -> None:
    async def body() -> None:
        async with session(vm, psk=psk) as (ours, guest, _):
            assert await ours.ping(1) == 1
            assert await ours.ping(2) == 1
            assert ours.handshakes(initiator=True) == 1
            # The kernel's own view, printed on the guest console.
            show = await vm.arun("wg show wg0")
            assert show.status == 0
            assert f"peer: {ours.key.public_key}" in show.output
            assert "latest handshake:" in show.output
            assert f"public key: {guest.public_key}" in show.output
            assert ("preshared key: (hidden)" in show.output) == psk
            assert f"peer: {ours.key.public_key}" in vm.console
            assert await asyncio.to_thread(latest, vm) > 0

    asyncio.run(body())


@pytest.mark.parametrize("psk", [False, True], ids=["no-psk", "psk"])
def test_kernel_initiates(vm: KernelVM, psk: bool) -> None:
    async def body() -> None:
        async with session(vm, psk=psk, guest_knows_us=True) as (ours, _guest, _):
            result = await guest_ping(vm)
            assert result.status == 0, result.output
            assert "3 packets received" in result.output, result.output
            assert ours.answered >= 3
            assert ours.handshakes(initiator=False) == 1
            assert ours.handshakes(initiator=True) == 0
            # And back the other way on the kernel's session.
            assert await ours.ping(7) == 1
            dump = (await vm.arun("wg show wg0 dump")).output.splitlines()[1].split("\t")
            assert dump[0] == str(ours.key.public_key)
            assert int(dump[4]) > 0  # latest handshake
            assert int(dump[5]) == ours.peer.tx_bytes  # what it received is what we sent

    asyncio.run(body())


def test_ipv6_inside_the_tunnel_both_ways(vm: KernelVM) -> None:
    """ICMPv6 echo both ways between our IPv6 tunnel address and the kernel's,
    on a session either side may have started."""

    async def body() -> None:
        async with session(vm, guest_knows_us=True) as (ours, _guest, _):
            assert await ours.ping(21, ipv6=True) == 1
            result = await vm.arun(f"ping -6 -c 3 -i 0.3 -W 5 {HOST_TUN6}", timeout=20)
            assert result.status == 0, result.output
            assert "3 packets received" in result.output, result.output
            answered = [parse_ip(p) for p in ours.received_packets]
            assert sum(p.version == 6 for p in answered) >= 4  # our echo's reply, 3 requests

    asyncio.run(body())


def test_tcp_megabytes_both_ways_through_our_netstack(vm: KernelVM) -> None:
    """HTTP download from the guest's busybox httpd and an upload to its nc,
    through our userspace TCP over our WireGuard; sha256 on both sides."""
    down_size, up_size = 3_000_000, 2_000_000

    async def body() -> None:
        async with session(vm) as (ours, _guest, _):
            prep = await vm.arun(
                f"mkdir -p /www && head -c {down_size} /dev/urandom > /www/blob\n"
                "sha256sum /www/blob | cut -d' ' -f1\n"
                f"httpd -p {GUEST_TUN}:80 -h /www\n"
                "(nc -l -p 9000 | sha256sum | cut -d' ' -f1 > /tmp/up.sha) &\n"
                f"{WAIT_LISTEN.format(port=9000)}\n{WAIT_LISTEN.format(port=80)}\n",
                timeout=60,
            )
            assert prep.status == 0, prep.output
            want_down = prep.output.split()[0]
            stack = NetStack([HOST_TUN], mtu=1420, tcp_config=TcpConfig(min_rto=0.3))
            driver = StackDriver(stack, ours.tunnel.send_packet)
            ours.tunnel.on_packet = driver.deliver_ip
            try:
                start = time.monotonic()
                reader, writer = await asyncio.wait_for(driver.open_connection(GUEST_TUN, 80), 20)
                writer.write(b"GET /blob HTTP/1.0\r\nHost: guest\r\n\r\n")
                await writer.drain()
                response = await asyncio.wait_for(reader.read(), 120)
                writer.close()
                head, _, content = response.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head
                assert len(content) == down_size
                assert hashlib.sha256(content).hexdigest() == want_down
                down_time = time.monotonic() - start

                blob = os.urandom(up_size)
                start = time.monotonic()
                reader, writer = await asyncio.wait_for(driver.open_connection(GUEST_TUN, 9000), 20)
                writer.write(blob)
                await writer.drain()
                writer.write_eof()
                await asyncio.wait_for(reader.read(), 120)  # nc closes when its input ends
                writer.close()
                for _ in range(100):
                    got = (await vm.arun("cat /tmp/up.sha 2>/dev/null")).output.strip()
                    if got:
                        break
                    await asyncio.sleep(0.2)
                assert got == hashlib.sha256(blob).hexdigest()
                up_time = time.monotonic() - start
                print(f"TCP through the kernel guest: {down_size} B down in {down_time:.1f} s, "
                      f"{up_size} B up in {up_time:.1f} s")  # fmt: skip
            finally:
                driver.close()
                await vm.arun("killall httpd nc 2>/dev/null; true")

    asyncio.run(body())


def test_restart_of_our_side_gives_new_handshake(vm: KernelVM) -> None:
    async def body() -> None:
        async with session(vm) as (ours, guest, _):
            assert await ours.ping(1) == 1
            first = await asyncio.to_thread(latest, vm)
            assert first > 0
            await ours.tunnel.close()
            # A new process with the same key: a fresh Device and a new socket (port).
            again = Ours(vm, ours.key)
            again.add_guest(guest)
            assert again.port != ours.port
            await asyncio.sleep(1.1)  # latest-handshake has 1 s resolution
            async with again.tunnel:
                assert await again.ping(1) == 1
                assert again.handshakes(initiator=True) == 1
                assert await asyncio.to_thread(latest, vm) > first
                # The kernel learned our new port from the authenticated initiation.
                result = await guest_ping(vm, 2)
                assert result.status == 0, result.output
                assert again.answered >= 2
                assert "endpoint: 10.0.2.2:" in (await vm.arun("wg show wg0")).output

    asyncio.run(body())


# --- captures: tshark and our decrypt on a session with the kernel ---------------------

WG_FIELDS = [
    "frame.number",
    "wg.type",
    "wg.handshake_ok",
    "wg.decryption_error",
    "_ws.malformed",
    "_ws.expert.severity",
    "icmp.type",
    "tcp.srcport",
]


@pytest.mark.parametrize("psk", [False, True], ids=["no-psk", "psk"])
def test_capture_with_keylog_decrypts_in_tshark_and_decrypt(
    vm: KernelVM, psk: bool, tmp_path: Path
) -> None:
    tshark = need_tool("tshark")
    cap, keys, inner = tmp_path / "kernel.pcap", tmp_path / "kernel.keys", tmp_path / "inner.pcap"

    async def body() -> Ours:
        tap = {"pcap": cap, "keylog": keys}
        async with session(vm, psk=psk, guest_knows_us=True, tap=tap) as (ours, guest, _):
            assert (await guest_ping(vm, 2)).status == 0  # the kernel initiates
            await asyncio.sleep(1.1)
            ours.peer.last_sent_handshake = None
            ours.tunnel.initiate_handshake(guest.public_key)  # then we do
            assert await ours.ping(1) == 1
            assert await eventually(lambda: ours.handshakes(initiator=True) == 1)
            stack = NetStack([HOST_TUN], mtu=1420)
            driver = StackDriver(stack, ours.send)
            ours.tunnel.on_packet = lambda p: (
                ours.received_packets.append(p),
                driver.deliver_ip(p),
            )
            await vm.arun(
                "echo hello-from-the-kernel > /tmp/hi; "
                "(nc -l -p 9001 < /tmp/hi > /dev/null) & " + WAIT_LISTEN.format(port=9001)
            )
            reader, writer = await asyncio.wait_for(driver.open_connection(GUEST_TUN, 9001), 20)
            writer.write(b"hello-from-python\n")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 20) == b"hello-from-the-kernel\n"
            writer.close()
            await asyncio.sleep(0.5)
            driver.close()
            return ours

    ours = asyncio.run(body())
    keylog = keys.read_text()
    assert "LOCAL_STATIC_PRIVATE_KEY" in keylog and "LOCAL_EPHEMERAL_PRIVATE_KEY" in keylog
    assert ("PRESHARED_KEY" in keylog) == psk
    assert oct(keys.stat().st_mode & 0o777) == "0o600"

    args = [tshark, "-n", "-r", str(cap), "-o", f"wg.keylog_file:{keys}",
            "-o", "wg.dissect_packet:TRUE", "-T", "fields", "-E", "occurrence=a",
            "-E", "aggregator=,"]  # fmt: skip
    for f in WG_FIELDS:
        args += ["-e", f]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    rows = [
        dict(zip(WG_FIELDS, line.split("\t"), strict=True)) for line in result.stdout.splitlines()
    ]
    with PcapReader(cap) as reader:
        frames = list(reader.udp_datagrams())
    assert len(rows) == len(frames) > 10
    types = [r["wg.type"] for r in rows]
    assert types.count("1") >= 2 and types.count("2") >= 2  # both sides initiated
    for row in rows:
        assert row["wg.type"] in ("1", "2", "4"), row
        assert row["_ws.malformed"] == "" and row["wg.decryption_error"] == "", row
        severities = [int(x) for x in row["_ws.expert.severity"].split(",") if x]
        assert all(x < 0x600000 for x in severities), row  # nothing worse than a note
        if row["wg.type"] == "2":
            assert row["wg.handshake_ok"] in ("1", "True"), row
    icmp = [r["icmp.type"] for r in rows if r["icmp.type"]]
    assert icmp.count("8") >= 3 and icmp.count("0") >= 3  # both directions' pings, decrypted
    assert any(r["tcp.srcport"] for r in rows)  # the TCP inside is visible too

    # Our own decrypt: the inner packets are exactly those that went through.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "wireguard",
            "decrypt",
            str(cap),
            "--keylog",
            str(keys),
            "-w",
            str(inner),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "handshake ok" in out.stdout
    summary = out.stdout.strip().splitlines()[-1]
    with PcapReader(inner) as reader:
        decrypted = [p.packet for p in reader]
    expected = ours.sent_packets + ours.received_packets
    assert sorted(decrypted) == sorted(expected), summary
    transport = sum(1 for t in types if t == "4")
    assert f"{transport} of {transport} transport data messages decrypted" in summary


# --- scripted misbehaviour: what the kernel does ------------------------------------------


def initiation_index(tap: EndpointTap, n: int = 0) -> int:
    """The sender index of our *n*-th initiation on the wire."""
    assert tap.policy is not None
    data = tap.policy.history[("out", "initiation")][n][0]
    return int.from_bytes(data[4:8], "little")


def responses_to(tap: EndpointTap, index: int) -> int:
    """Responses received for our initiation whose sender index is *index*
    (a response's receiver field): a late answer to another initiation (a
    slow guest answering a retry of the first handshake) is not counted."""
    assert tap.policy is not None
    got = tap.policy.history.get(("in", "response"), [])
    return sum(1 for data, _ in got if int.from_bytes(data[8:12], "little") == index)


def test_replayed_initiation_makes_no_new_handshake(vm: KernelVM) -> None:
    # On our 3rd data packet, the first initiation goes out again.
    policy = Policy([Rule("data", Replay(kind="initiation", index=0), first=3, count=1)])

    async def body() -> None:
        async with session(vm, tap={"policy": policy}) as (ours, _g, _):
            assert await ours.ping(1) == 1
            assert await ours.ping(2) == 1
            before = await asyncio.to_thread(latest, vm)
            await asyncio.sleep(1.1)
            assert await ours.ping(3) == 1  # ... and the replayed initiation after it
            await asyncio.sleep(1.5)
            assert [e.note for e in policy.log] == ["replay the first earlier initiation"]
            # The kernel answered the original once and the replay (the same
            # sender index) not at all; answers to retries are not counted.
            assert responses_to(ours.tap, initiation_index(ours.tap)) == 1
            assert await asyncio.to_thread(latest, vm) == before
            # The kernel still uses the first session, and counted only the ping
            # (the replay never authenticated: a stale timestamp is dropped
            # before any state or counter changes).
            assert await ours.ping(4) == 1
            assert (await asyncio.to_thread(vm.transfer))[0] == ours.peer.tx_bytes
            assert ours.handshakes() == 1

    asyncio.run(body())


@pytest.mark.parametrize(
    ("field", "ignored"), [("mac1", True), ("mac2", False)], ids=["mac1", "mac2"]
)
def test_corrupted_mac_on_initiation(vm: KernelVM, field: str, ignored: bool) -> None:
    """A bad mac1 is ignored: no response, no handshake, no cookie. mac2 is
    only looked at under load, so a bad mac2 is accepted by an idle kernel."""
    policy = Policy([Rule("initiation", Corrupt(field), count=1)])

    async def body() -> None:
        async with session(vm, tap={"policy": policy}) as (ours, guest, _):
            got = await ours.ping(1, timeout=2.0 if ignored else 5.0)
            show = (await vm.arun("wg show wg0")).output
            if ignored:
                assert got == 0
                assert responses_to(ours.tap, initiation_index(ours.tap)) == 0
                assert len(policy.history.get(("in", "cookie_reply"), [])) == 0
                assert await asyncio.to_thread(latest, vm) == 0
                assert "latest handshake" not in show
                assert await asyncio.to_thread(vm.transfer) == (0, 0)
                # The same endpoint's next initiation (the rule is spent) works.
                ours.peer.last_sent_handshake = None
                ours.tunnel.initiate_handshake(guest.public_key)
                assert await ours.ping(2) == 1
            else:
                assert got == 1 and responses_to(ours.tap, initiation_index(ours.tap)) == 1
                assert "latest handshake" in show
            assert ours.handshakes(initiator=True) == 1

    asyncio.run(body())


@pytest.mark.parametrize(
    "action",
    [Replay(), Duplicate(), Corrupt("counter"), Corrupt("tag"), Corrupt("reserved")],
    ids=["replay", "duplicate", "counter", "tag", "reserved"],
)
def test_transport_misbehaviour_is_not_delivered(vm: KernelVM, action) -> None:  # type: ignore[no-untyped-def]
    """Ping 2 (our 2nd data packet) is misbehaved with: a replay of ping 1
    sent after it, a duplicate of it, or a corrupted counter, tag or reserved
    byte. The kernel delivers each authentic packet once and nothing else."""
    policy = Policy([Rule("data", action, first=2, count=1)])
    corrupted = isinstance(action, Corrupt)

    async def body() -> None:
        async with session(vm, tap={"policy": policy}) as (ours, _g, _):
            assert await ours.ping(1) == 1
            rx0 = (await asyncio.to_thread(vm.transfer))[0]
            tx0 = ours.peer.tx_bytes
            replies = await ours.ping(2, timeout=2.0 if corrupted else 5.0)
            assert replies == (0 if corrupted else 1)
            assert ours.echo_replies[1] == 1  # ping 1 was not answered again
            assert await ours.ping(3) == 1  # the session is unharmed
            rx = (await asyncio.to_thread(vm.transfer))[0] - rx0
            sent = ours.peer.tx_bytes - tx0
            # The kernel counts authenticated bytes: all we sent but the bad one.
            lost = 0
            if corrupted:
                lost = len(policy.history[("out", "data")][1][0])
            assert rx == sent - lost, (rx, sent, lost)
            assert len(policy.log) == 1

    asyncio.run(body())


def test_stale_timestamp_is_rejected(vm: KernelVM) -> None:
    """A genuine initiation whose timestamp is older than the last one the
    kernel accepted from us gets no response; the next, fresh one does."""
    policy = Policy()

    async def body() -> None:
        async with session(vm, tap={"policy": policy}) as (ours, guest, _):
            assert await ours.ping(1) == 1
            first = await asyncio.to_thread(latest, vm)
            # The next initiation, whichever it is (the first handshake may
            # have needed a retry on a slow guest), goes out an hour stale:
            # older than any initiation of this session. (30 s was not: on a
            # slow guest the session's handshake was more than 30 s old, and
            # the kernel rightly took the "stale" one as newer.)
            policy.rules.append(Rule("initiation", StaleTimestamp(age=3600), count=1))
            await asyncio.sleep(1.1)
            ours.peer.last_sent_handshake = None
            ours.tunnel.initiate_handshake(guest.public_key)
            assert ours.peer.handshake is not None
            stale = ours.peer.handshake.local_index  # the forged initiation's
            await asyncio.sleep(1.5)
            assert [e.note for e in policy.log] == ["stale timestamp (-3600s)"]
            assert responses_to(ours.tap, stale) == 0
            assert await asyncio.to_thread(latest, vm) == first
            ours.peer.last_sent_handshake = None
            ours.tunnel.initiate_handshake(guest.public_key)  # a fresh timestamp
            assert ours.peer.handshake is not None
            fresh = ours.peer.handshake.local_index
            assert await eventually(lambda: responses_to(ours.tap, fresh) == 1)
            assert await ours.ping(2) == 1
            assert await asyncio.to_thread(latest, vm) > first

    asyncio.run(body())
