"""Captures and key logs from a live endpoint (wireguard.io.tap), on loopback.

Two asyncio endpoints; A is tapped. What A's pcap and key log hold is read
back by our decrypt and, independently, by Wireshark's dissector (tshark).
The same capture of a session with the Linux kernel is checked in
tests/interop/test_kernel.py.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import need_tool
from wireguard.capture import PcapReader, read_keylog
from wireguard.cli import main as cli_main
from wireguard.device import Device, Drop, Event, HandshakeCompleted
from wireguard.io.tap import SOL_UDP, UDP_GRO, UDP_SEGMENT, EndpointTap, TappedSocket, attach
from wireguard.io.tunnel import Tunnel
from wireguard.keys import PresharedKey, PrivateKey
from wireguard.misbehaviour import Delay, Duplicate, Policy, Rule
from wireguard.netstack.icmp import build_echo, echo_reply_for, parse_icmp
from wireguard.netstack.ip import addr_bytes, parse_ip

A_IP, B_IP = "10.5.0.1", "10.5.0.2"


class End:
    def __init__(self, name: str, ip: str) -> None:
        self.name, self.ip = name, ip
        self.device = Device(PrivateKey.generate())
        self.tunnel = Tunnel(self.device, host="127.0.0.1", listen_port=0)
        self.tunnel.on_packet = self._on_packet
        self.events: list[Event] = []  # this test's whole history of them
        self.tunnel.on_event = self.events.append
        self.sent: list[bytes] = []
        self.received: list[bytes] = []
        self.replies: asyncio.Queue[tuple[int, float]] = asyncio.Queue()

    def _on_packet(self, packet: bytes) -> None:
        self.received.append(packet)
        ip = parse_ip(packet)
        msg = parse_icmp(ip)
        reply = echo_reply_for(ip, msg)
        if reply is not None:
            self.send(reply)
        else:
            self.replies.put_nowait((msg.seq, time.monotonic()))

    def send(self, packet: bytes) -> None:
        self.sent.append(packet)
        self.tunnel.send_packet(packet)

    async def ping(self, dst: str, seq: int) -> float:
        start = time.monotonic()
        self.send(build_echo(addr_bytes(self.ip), addr_bytes(dst), 7, seq, b"tap", reply=False))
        while True:
            got, when = await asyncio.wait_for(self.replies.get(), 5)
            if got == seq:
                return when - start


async def pair(psk: PresharedKey | None = None, **tap) -> tuple[End, End, EndpointTap]:  # type: ignore[no-untyped-def]
    a, b = End("a", A_IP), End("b", B_IP)
    t = attach(a.tunnel, **tap)
    await a.tunnel.start()
    await b.tunnel.start()
    a.device.add_peer(
        b.device.public_key,
        preshared_key=psk,
        allowed_ips=[f"{B_IP}/32"],
        endpoint=("127.0.0.1", b.tunnel.listen_port),
    )
    b.device.add_peer(
        a.device.public_key,
        preshared_key=psk,
        allowed_ips=[f"{A_IP}/32"],
        endpoint=("127.0.0.1", a.tunnel.listen_port),
    )
    return a, b, t


async def close(*ends: End) -> None:
    for end in ends:
        await end.tunnel.close()


FIELDS = ["frame.number", "wg.type", "wg.handshake_ok", "wg.decryption_error", "_ws.malformed",
          "_ws.expert.severity", "icmp.type", "ip.src", "udp.srcport"]  # fmt: skip


def _tshark_rows(tshark: str, cap: Path, *options: str) -> list[dict[str, str]]:
    args = [tshark, "-n", "-r", str(cap), *options, "-o", "wg.dissect_packet:TRUE",
            "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,"]  # fmt: skip
    for f in FIELDS:
        args += ["-e", f]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return [dict(zip(FIELDS, r.split("\t"), strict=True)) for r in out.stdout.splitlines()]


@pytest.mark.parametrize("psk", [False, True], ids=["no-psk", "psk"])
def test_capture_and_keylog_of_a_live_endpoint(psk: bool, tmp_path: Path) -> None:
    cap, keys, inner = tmp_path / "a.pcap", tmp_path / "a.keys", tmp_path / "inner.pcap"
    preshared = PresharedKey.generate() if psk else None

    ports: list[int] = []

    async def body() -> tuple[End, End, EndpointTap]:
        a, b, tap = await pair(preshared, pcap=cap, keylog=keys)
        ports.extend((a.tunnel.listen_port, b.tunnel.listen_port))
        try:
            await a.ping(B_IP, 1)  # A initiates
            # B initiates the second handshake (as the responder side of A's key log).
            await asyncio.sleep(0.05)
            b.device.peers[a.device.public_key].last_sent_handshake = None
            b.tunnel.initiate_handshake(a.device.public_key)
            await asyncio.sleep(0.2)
            await b.ping(A_IP, 2)
            await a.ping(B_IP, 3)
        finally:
            await close(a, b)
            tap.close()
        return a, b, tap

    a, b, tap = asyncio.run(body())
    handshakes = [e for e in a.events if isinstance(e, HandshakeCompleted)]
    assert [e.is_initiator for e in handshakes] == [True, False]

    with PcapReader(cap) as reader:
        datagrams = list(reader.udp_datagrams())
    assert len(datagrams) == tap.sent + tap.received
    a_port, b_port = ports
    ends = {(d.src, d.dst) for d in datagrams}
    assert ends == {(("127.0.0.1", a_port), ("127.0.0.1", b_port)),
                    (("127.0.0.1", b_port), ("127.0.0.1", a_port))}  # fmt: skip

    # Keys only where asked: the file is private, and holds what Wireshark needs.
    assert keys.stat().st_mode & 0o777 == 0o600
    log = read_keylog(keys)
    assert set(log.static_private) == {a.device.private_key.raw}
    assert set(log.remote_static_public) == {b.device.public_key.raw}
    assert len(log.ephemeral_private) == 2  # one per handshake, either role
    assert bool(log.psk_by_ephemeral) == psk
    assert a.device.on_ephemeral_key is None  # close() took the hook away

    # Our decrypt reproduces A's inner packets exactly.
    assert cli_main(["decrypt", str(cap), "--keylog", str(keys), "-w", str(inner)]) == 0
    with PcapReader(inner) as reader:
        got = [p.packet for p in reader]
    assert sorted(got) == sorted(a.sent + a.received)

    # Wireshark's dissector, with our key log, opens every message.
    tshark = need_tool("tshark")
    rows = _tshark_rows(tshark, cap, "-o", f"wg.keylog_file:{keys}")
    assert len(rows) == len(datagrams)
    assert sorted(r["wg.type"] for r in rows if r["wg.type"] in "12") == ["1", "1", "2", "2"]
    for row in rows:
        assert row["_ws.malformed"] == "" and row["wg.decryption_error"] == "", row
        assert all(int(x) < 0x600000 for x in row["_ws.expert.severity"].split(",") if x), row
        if row["wg.type"] == "2":
            assert row["wg.handshake_ok"] in ("1", "True"), row
    icmp = [r["icmp.type"] for r in rows if r["icmp.type"]]
    assert sorted(icmp) == ["0", "0", "0", "8", "8", "8"]


@pytest.mark.parametrize("first", ["tapped", "peer"], ids=["tapped-initiates", "peer-initiates"])
@pytest.mark.parametrize("psk", [False, True], ids=["no-psk", "psk"])
def test_pcapng_with_the_keys_inside_opens_decrypted_in_tshark(
    psk: bool, first: str, tmp_path: Path
) -> None:
    """A live capture written as pcapng with embed_keys: Wireshark's dissector
    opens every message from the one file, with no key log option (the keys
    are Decryption Secrets Blocks written before the messages they open),
    whichever side starts: the tapped endpoint's static key, which opens an
    initiation sent to it, is the file's first block (it was written with the
    first ephemeral key, after an initiation the peer sent first)."""
    tshark = need_tool("tshark")
    cap = tmp_path / "a.pcapng"
    preshared = PresharedKey.generate() if psk else None

    async def body() -> EndpointTap:
        a, b, tap = await pair(preshared, pcap=cap, embed_keys=True)
        try:
            if first == "tapped":
                await a.ping(B_IP, 1)
            else:
                await b.ping(A_IP, 1)
            await asyncio.sleep(0.05)
            again, other = (b, a) if first == "tapped" else (a, b)
            again.device.peers[other.device.public_key].last_sent_handshake = None
            again.tunnel.initiate_handshake(other.device.public_key)
            await asyncio.sleep(0.2)
            await again.ping(B_IP if again is a else A_IP, 2)
        finally:
            await close(a, b)
            tap.close()
        return tap

    tap = asyncio.run(body())
    assert cap.stat().st_mode & 0o777 == 0o600  # it holds private keys
    with PcapReader(cap) as reader:
        assert len(list(reader)) == tap.sent + tap.received
        assert len(reader.secrets) == 3  # the static key first, then one block per handshake
    rows = _tshark_rows(tshark, cap)
    assert sorted(r["wg.type"] for r in rows if r["wg.type"] in "12") == ["1", "1", "2", "2"]
    for row in rows:
        assert row["_ws.malformed"] == "" and row["wg.decryption_error"] == "", row
        if row["wg.type"] == "2":
            assert row["wg.handshake_ok"] in ("1", "True"), row
    assert sorted(r["icmp.type"] for r in rows if r["icmp.type"]) == ["0", "0", "8", "8"]
    decrypted = subprocess.run(
        [sys.executable, "-m", "wireguard", "decrypt", str(cap)], capture_output=True, text=True
    )
    assert decrypted.returncode == 0, decrypted.stderr
    assert "2 handshakes followed" in decrypted.stdout, decrypted.stdout


def test_embedding_keys_needs_pcapng(tmp_path: Path) -> None:
    # Refused before anything is opened: yesterday's capture stays as it was.
    old = tmp_path / "a.pcap"
    old.write_bytes(b"yesterday's capture")

    async def body() -> None:
        with pytest.raises(ValueError, match="pcapng"):
            await pair(None, pcap=old, embed_keys=True)

    asyncio.run(body())
    assert old.read_bytes() == b"yesterday's capture"


def test_a_second_tap_is_refused_and_leaves_the_first_capture_alone(tmp_path: Path) -> None:
    first, second = tmp_path / "first.pcap", tmp_path / "second.pcap"
    second.write_bytes(b"kept")

    async def body() -> None:
        a, b, tap = await pair(pcap=first)
        try:
            await a.ping(B_IP, 1)
            size = first.stat().st_size
            with pytest.raises(ValueError, match="already tapped"):
                attach(a.tunnel, pcap=second)
            with pytest.raises(ValueError, match="already tapped"):
                attach(a.tunnel, pcap=first)  # the same file: not truncated under the tap
            assert first.stat().st_size == size
            await a.ping(B_IP, 2)
        finally:
            await close(a, b)
            tap.close()
        with PcapReader(first) as reader:
            assert len(list(reader)) == tap.sent + tap.received

    asyncio.run(body())
    assert second.read_bytes() == b"kept"


def test_no_keys_unless_asked(tmp_path: Path) -> None:
    async def body() -> None:
        seen: list[bytes] = []
        a, b, tap = await pair(pcap=tmp_path / "only.pcap")
        assert a.device.on_ephemeral_key is None
        a.device.on_ephemeral_key = lambda _peer, key: seen.append(key)
        await a.ping(B_IP, 1)
        await close(a, b)
        tap.close()
        assert len(seen) == 1
        # A key log chains to a hook that was already there, and close() restores it.
        device = Device(PrivateKey.generate())
        hook = device.on_ephemeral_key = lambda _peer, key: seen.append(key)
        t = EndpointTap(device, keylog=tmp_path / "k")
        assert device.on_ephemeral_key != hook
        t.close()
        assert device.on_ephemeral_key is hook

    asyncio.run(body())
    assert not list(tmp_path.glob("*.keys"))


def test_policy_on_a_live_endpoint(tmp_path: Path) -> None:
    """Outgoing data duplicated (B drops the copy as a replay; the capture
    shows both), and the first incoming data delayed."""
    policy = Policy(
        [
            Rule("data", Duplicate(), count=1),
            Rule("data", Delay(0.3), direction="in", count=1),
        ]
    )

    async def body() -> None:
        a, b, tap = await pair(pcap=tmp_path / "p.pcap", policy=policy)
        try:
            took = await a.ping(B_IP, 1)
            assert took >= 0.3  # B's reply was held back on arrival
            await a.ping(B_IP, 2)
            assert b.device.drops == {Drop.REPLAYED_COUNTER: 1}
            assert len(b.received) == 2
        finally:
            await close(a, b)
            tap.close()
        with PcapReader(tmp_path / "p.pcap") as reader:
            payloads = [d.payload for d in reader.udp_datagrams()]
        first_data = policy.history[("out", "data")][0][0]
        assert payloads.count(first_data) == 2
        assert [e.note for e in policy.log] == ["duplicate x1", "delay 0.3s"]

    asyncio.run(body())


def test_offloads_are_seen_datagram_by_datagram(tmp_path: Path) -> None:
    """A GSO send is the datagrams it stands for; GRO is refused, so the
    tunnel reads (and the tap sees) one datagram at a time."""
    seen: list[tuple[bytes, object]] = []

    class Recorder(EndpointTap):
        def _outgoing(self, data: bytes, address: object) -> None:  # type: ignore[override]
            seen.append((data, address))

    real = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock = TappedSocket(real, Recorder(Device(PrivateKey.generate())))
        with pytest.raises(OSError):
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # others pass through
        data = b"a" * 100 + b"b" * 100 + b"c" * 40
        n = sock.sendmsg([data], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", 100))], 0, ("x", 1))
        assert n == 240
        assert [d for d, _ in seen] == [b"a" * 100, b"b" * 100, b"c" * 40]
        assert sock.family == socket.AF_INET  # everything else is the real socket's
    finally:
        real.close()


def test_decrypt_embed_keys_makes_one_file_tshark_opens(tmp_path: Path) -> None:
    """``decrypt CAPTURE --keylog K --embed-keys OUT.pcapng``, as ``editcap
    --inject-secrets wg,K`` would: the capture and its keys in one file,
    which tshark opens decrypted with no key log option; and ``-w X.pcapng``
    writes the inner packets as pcapng."""
    tshark = need_tool("tshark")
    cap, keys = tmp_path / "a.pcap", tmp_path / "a.keys"
    out, inner = tmp_path / "with-keys.pcapng", tmp_path / "inner.pcapng"

    async def body() -> End:
        a, b, tap = await pair(None, pcap=cap, keylog=keys)
        try:
            await a.ping(B_IP, 1)
            await b.ping(A_IP, 2)
        finally:
            await close(a, b)
            tap.close()
        return a

    a = asyncio.run(body())
    argv = ["decrypt", str(cap), "--keylog", str(keys), "--embed-keys", str(out), "-w", str(inner)]
    assert cli_main(argv) == 0
    assert out.stat().st_mode & 0o777 == 0o600
    with PcapReader(out) as reader, PcapReader(cap) as original:
        assert [p.packet for p in reader] == [p.packet for p in original]
        assert len(reader.secrets) == 1
    with PcapReader(inner) as reader:
        assert sorted(p.packet for p in reader) == sorted(a.sent + a.received)
    rows = _tshark_rows(tshark, out)
    assert all(r["wg.decryption_error"] == "" for r in rows)
    assert sorted(r["icmp.type"] for r in rows if r["icmp.type"]) == ["0", "0", "8", "8"]
    # Without the secrets, the same capture does not open.
    rows = _tshark_rows(tshark, cap)
    assert not [r for r in rows if r["icmp.type"]]


def test_outer_addresses_of_ever_new_sources_take_bounded_memory(tmp_path: Path) -> None:
    """A wildcard-bound endpoint asks the routing table for the outer source
    address of each remote it captures. Anyone can send it datagrams from
    ever new (spoofed) sources: what it remembers of those answers must stay
    bounded, and every datagram is still captured."""
    from wireguard.io.tap import ROUTE_CACHE_SIZE

    real = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    real.bind(("0.0.0.0", 0))
    tap = EndpointTap(Device(PrivateKey.generate()), pcap=tmp_path / "many.pcap")
    try:
        tap.wrap(real)
        count = ROUTE_CACHE_SIZE + 300
        for i in range(count):  # 198.18.0.0/15: the benchmarking range (RFC 2544)
            tap._incoming(b"\x01junk", (f"198.18.{i >> 8}.{i & 255}", 40000))
        assert len(tap._routes) <= ROUTE_CACHE_SIZE
    finally:
        tap.close()
        real.close()
    with PcapReader(tmp_path / "many.pcap") as reader:
        datagrams = list(reader.udp_datagrams())
    assert len(datagrams) == count == tap.received
    assert datagrams[-1].src == (f"198.18.{(count - 1) >> 8}.{(count - 1) & 255}", 40000)


def test_a_send_the_kernel_refuses_is_counted_where_an_untapped_tunnel_counts_it() -> None:
    """A socket bound to 127.0.0.1 cannot send to 192.0.2.1 (the kernel says
    EINVAL). Untapped, the tunnel counts that in its ``udp_send_errors``
    (what the status line, the interface's log and /metrics show); tapped,
    the same refusal must show there too, not only on the tap."""

    async def refused(tapped: bool) -> tuple[dict[str, int], int | None]:
        device = Device(PrivateKey.generate())
        tunnel = Tunnel(device, host="127.0.0.1", listen_port=0)
        tap = attach(tunnel) if tapped else None
        try:
            async with tunnel:
                key = PrivateKey.generate().public_key
                device.add_peer(key, allowed_ips=["10.0.0.2/32"], endpoint=("192.0.2.1", 51820))
                tunnel.initiate_handshake(key)
                return tunnel.counters(), None if tap is None else tap.send_errors
        finally:
            if tap is not None:
                tap.close()

    untapped, _ = asyncio.run(refused(False))
    assert untapped["udp_send_errors"] == 1  # the kernel's refusal, as the reference
    tapped, on_tap = asyncio.run(refused(True))
    assert on_tap == 1
    assert tapped["udp_send_errors"] == untapped["udp_send_errors"]


# Run in a network namespace of its own, whose loopback carries only this:
# A sends bursts of pings to B in UDP GSO sends, B (tapped) writes the key log.
_GSO_SCRIPT = r"""
import asyncio, sys
from wireguard.device import Device
from wireguard.io.tap import attach
from wireguard.io.tunnel import Tunnel
from wireguard.keys import PrivateKey
from wireguard.netstack.icmp import build_echo
from wireguard.netstack.ip import addr_bytes

keys, sent_file = sys.argv[1], sys.argv[2]

async def main():
    a_dev, b_dev = Device(PrivateKey.generate()), Device(PrivateKey.generate())
    a = Tunnel(a_dev, host="127.0.0.1", listen_port=0)
    b = Tunnel(b_dev, host="127.0.0.1", listen_port=0)
    got = []
    b.on_packets = got.extend
    tap = attach(b, keylog=keys)
    async with a, b:
        assert a.gso, "no UDP GSO on this loopback"
        a_dev.add_peer(b_dev.public_key, allowed_ips=["10.6.0.2/32"],
                       endpoint=("127.0.0.1", b.listen_port))
        b_dev.add_peer(a_dev.public_key, allowed_ips=["10.6.0.1/32"])
        pings = [build_echo(addr_bytes("10.6.0.1"), addr_bytes("10.6.0.2"), 1, i,
                            bytes([i % 256]) * (600 + i % 7), reply=False) for i in range(120)]
        a.send_packets(pings[:1])
        while not got:
            await asyncio.sleep(0.01)
        for start in range(1, 120, 40):
            a.send_packets(pings[start:start + 40])
            await asyncio.sleep(0.05)
        for _ in range(300):
            if len(got) == len(pings):
                break
            await asyncio.sleep(0.01)
        assert got == pings, (len(got), len(pings))
    tap.close()
    with open(sent_file, "wb") as f:
        for p in pings:
            f.write(len(p).to_bytes(2, "big") + p)

asyncio.run(main())
"""


def test_decrypt_splits_udp_gso_sends_captured_before_segmentation(tmp_path: Path) -> None:
    """dumpcap on a loopback records a UDP GSO send whole: one datagram
    holding many transport messages, which tshark shows as one malformed
    message. decrypt cuts it into its messages and opens every one: the
    inner packets it writes are exactly the pings A sent."""
    dumpcap = need_tool("dumpcap")
    from tests.interop.harness import hosts

    cap, keys, sent, inner = (tmp_path / n for n in ("lo.pcapng", "b.keys", "sent", "inner.pcap"))
    with hosts() as h:
        capture = subprocess.Popen(
            ["ip", "netns", "exec", h.a, dumpcap, "-q", "-i", "lo", "-f", "udp", "-w", str(cap)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            for _ in range(100):  # dumpcap writes the file once it captures
                if cap.exists() and cap.stat().st_size > 0:
                    break
                time.sleep(0.05)
            time.sleep(0.3)
            result = h.exec(h.a, sys.executable, "-c", _GSO_SCRIPT, str(keys), str(sent),
                            check=False)  # fmt: skip
            assert result.returncode == 0, result.stderr
            time.sleep(0.3)
        finally:
            capture.terminate()
            capture.wait(timeout=30)
    data = sent.read_bytes()
    pings = []
    while data:
        n = int.from_bytes(data[:2], "big")
        pings.append(data[2 : 2 + n])
        data = data[2 + n :]
    with PcapReader(cap) as reader:
        sizes = [len(d.payload) for d in reader.udp_datagrams()]
    assert max(sizes) > 2000, "no GSO datagram was captured whole: the test saw nothing to split"

    out = subprocess.run(
        [sys.executable, "-m", "wireguard", "decrypt", str(cap), "--keylog", str(keys),
         "-w", str(inner)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    with PcapReader(inner) as reader:
        got = [p.packet for p in reader]
    assert got == pings
    summary = out.stdout.splitlines()[-1]
    assert f"{len(pings)} of {len(pings)} transport data messages decrypted" in summary
    assert "UDP GSO datagram" in summary and "split into its messages" in summary
    assert "segment 1 of " in out.stdout


@pytest.mark.parametrize("when", ["before start", "after start"])
def test_a_tapped_tunnel_gets_every_datagram_of_gso_sends(when: str, tmp_path: Path) -> None:
    """A (untapped) sends bursts of equal-size pings in UDP GSO sends; B is
    tapped. The tap takes datagrams one by one, so B must not read them
    coalesced (UDP GRO): every ping arrives, each one in B's capture."""

    async def body() -> tuple[list[bytes], list[bytes], int]:
        a, b = End("a", A_IP), End("b", B_IP)
        tap = attach(b.tunnel, pcap=tmp_path / "b.pcap") if when == "before start" else None
        await a.tunnel.start()
        await b.tunnel.start()
        if tap is None:
            tap = attach(b.tunnel, pcap=tmp_path / "b.pcap")
        try:
            assert a.tunnel.gso, "no UDP GSO on this loopback"
            a.device.add_peer(b.device.public_key, allowed_ips=[f"{B_IP}/32"],
                              endpoint=("127.0.0.1", b.tunnel.listen_port))  # fmt: skip
            b.device.add_peer(a.device.public_key, allowed_ips=[f"{A_IP}/32"])
            b.tunnel.on_packet = b.received.append  # no replies: one way only
            pings = [
                build_echo(addr_bytes(A_IP), addr_bytes(B_IP), 1, i, b"x" * 1000, reply=False)
                for i in range(121)
            ]
            a.tunnel.send_packets(pings[:1])
            for _ in range(300):
                if b.received:
                    break
                await asyncio.sleep(0.01)
            for start in range(1, 121, 40):
                a.tunnel.send_packets(pings[start : start + 40])
                await asyncio.sleep(0.05)
            for _ in range(300):
                if len(b.received) == len(pings):
                    break
                await asyncio.sleep(0.01)
            return pings, list(b.received), sum(b.device.drops.values())
        finally:
            await close(a, b)
            tap.close()

    pings, received, dropped = asyncio.run(body())
    assert dropped == 0
    assert received == pings
    with PcapReader(tmp_path / "b.pcap") as reader:
        sizes = {len(d.payload) for d in reader.udp_datagrams()}
    assert max(sizes) < 1500  # one datagram per record, as on the wire
