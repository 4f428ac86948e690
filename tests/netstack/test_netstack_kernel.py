"""Interop with the Linux kernel's TCP: an independent implementation on the other end.

A TUN device is created by this process (so the stack owns its file descriptor),
then moved into a fresh network namespace where the kernel side lives. Kernel
sockets in the namespace connect to the stack's echo server, and the stack
connects to a kernel echo server; 5 MB each way, checked by SHA-256.

Needs root, ``ip`` (iproute2) and /dev/net/tun. Skipped otherwise, except under
CI=true, where a missing prerequisite is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import random
import shutil
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import need
from wireguard.io.stackdriver import StackDriver
from wireguard.netstack import NetStack, TcpConfig

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
SIZE = 5 * 1024 * 1024
KERNEL_ADDR = {4: "198.18.0.1", 6: "fd5e:1::1"}  # RFC 2544 benchmarking range, ULA
STACK_ADDR = {4: "198.18.0.2", 6: "fd5e:1::2"}


def _missing() -> str | None:
    if sys.platform != "linux":
        return "not Linux"
    if os.geteuid() != 0:
        return "needs root for network namespaces and TUN"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    if shutil.which("ip") is None:
        return "no ip(8) (iproute2)"
    return None


def _require() -> None:
    reason = _missing()
    need(reason is None, f"kernel interop test: {reason}")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Namespace:
    def __init__(self, name: str, tun: str, fd: int) -> None:
        self.name = name
        self.tun = tun
        self.fd = fd

    def exec_args(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]


@pytest.fixture
def netns() -> Iterator[Namespace]:
    _require()
    tag = uuid.uuid4().hex[:8]
    ns_name = f"wgpy-netstack-{os.getpid()}-{tag}"
    tun_name = f"nst{tag}"
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    created = False
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", tun_name.encode(), IFF_TUN | IFF_NO_PI))
        _ip("netns", "add", ns_name)
        created = True
        _ip("link", "set", "dev", tun_name, "netns", ns_name)
        run = ["-n", ns_name]
        _ip(*run, "link", "set", "lo", "up")
        _ip(*run, "link", "set", tun_name, "mtu", "1420")
        _ip(*run, "addr", "add", f"{KERNEL_ADDR[4]}/24", "dev", tun_name)
        subprocess.run(
            ["ip", "netns", "exec", ns_name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"],
            capture_output=True,
            timeout=30,
        )
        _ip(*run, "-6", "addr", "add", f"{KERNEL_ADDR[6]}/64", "dev", tun_name, "nodad")
        _ip(*run, "link", "set", tun_name, "up")
        yield Namespace(ns_name, tun_name, fd)
    finally:
        os.close(fd)
        if created:
            subprocess.run(["ip", "netns", "del", ns_name], capture_output=True, timeout=30)


def _attach(stack: NetStack, fd: int, loss: float = 0.0) -> StackDriver:
    """Drive *stack* from the TUN file descriptor (add_reader; no polling).

    *loss* drops that fraction of packets in each direction (seeded), standing in
    for netem, which not every kernel has.
    """
    loop = asyncio.get_running_loop()
    rng = random.Random(4)

    def send(packet: bytes) -> None:
        if loss and rng.random() < loss:
            return
        with contextlib.suppress(BlockingIOError):  # a full queue: TCP retransmits
            os.write(fd, packet)

    driver = StackDriver(stack, send)

    def readable() -> None:
        for _ in range(256):
            try:
                packet = os.read(fd, 65536)
            except BlockingIOError:
                return
            if loss and rng.random() < loss:
                continue
            driver.deliver_ip(packet)

    loop.add_reader(fd, readable)
    return driver


CLIENT = r"""
import hashlib, random, socket, sys, threading
host, port, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
data = random.Random(seed).randbytes(size)
s = socket.create_connection((host, port), timeout=60)
got = bytearray()
def reader():
    while chunk := s.recv(1 << 16):
        got.extend(chunk)
t = threading.Thread(target=reader); t.start()
s.sendall(data); s.shutdown(socket.SHUT_WR); t.join(); s.close()
print(hashlib.sha256(data).hexdigest(), hashlib.sha256(got).hexdigest(), len(got))
"""

SERVER = r"""
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
srv = socket.socket(family, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(1)
print("ready", flush=True)
srv.settimeout(60)
c, _ = srv.accept()
c.settimeout(60)
total = 0
while chunk := c.recv(1 << 16):
    c.sendall(chunk); total += len(chunk)
c.shutdown(socket.SHUT_WR); c.close()
print(total, flush=True)
"""


async def _kernel_echo_server(ns: Namespace, addr: str) -> asyncio.subprocess.Process:
    """SERVER in the namespace, on port 9090, once it says it listens."""
    proc = await asyncio.create_subprocess_exec(
        *ns.exec_args(sys.executable, "-c", SERVER, addr, "9090"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.strip() == b"ready"
    return proc


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    await writer.drain()
    writer.close()


def _stack() -> NetStack:
    return NetStack([STACK_ADDR[4], STACK_ADDR[6]], mtu=1420, tcp_config=TcpConfig(min_rto=0.2))


@pytest.mark.parametrize(
    "family, loss", [(4, 0.0), (6, 0.0), (4, 0.03)], ids=["ipv4", "ipv6", "ipv4-lossy"]
)
def test_kernel_client_to_stack_server(netns: Namespace, family: int, loss: float) -> None:
    async def main() -> None:
        driver = _attach(_stack(), netns.fd, loss)
        await driver.start_server(_echo, STACK_ADDR[family], 8080)
        proc = await asyncio.create_subprocess_exec(
            *netns.exec_args(
                sys.executable, "-c", CLIENT, STACK_ADDR[family], "8080", str(SIZE), "1"
            ),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
        sent_hash, got_hash, got_len = out.decode().split()
        assert int(got_len) == SIZE
        assert got_hash == sent_hash
        driver.close()
        asyncio.get_running_loop().remove_reader(netns.fd)

    asyncio.run(main())


@pytest.mark.parametrize(
    "family, loss", [(4, 0.0), (6, 0.0), (6, 0.03)], ids=["ipv4", "ipv6", "ipv6-lossy"]
)
def test_stack_client_to_kernel_server(netns: Namespace, family: int, loss: float) -> None:
    async def main() -> None:
        driver = _attach(_stack(), netns.fd, loss)
        proc = await _kernel_echo_server(netns, KERNEL_ADDR[family])
        reader, writer = await driver.open_connection(KERNEL_ADDR[family], 9090)
        data = random.Random(2).randbytes(SIZE)

        async def send_all() -> None:
            view = memoryview(data)
            for i in range(0, SIZE, 1 << 16):
                writer.write(view[i : i + (1 << 16)])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send_all())
        echoed = await asyncio.wait_for(reader.read(), 120)
        await sender
        assert len(echoed) == SIZE
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert int(out.split()[-1]) == SIZE
        writer.close()
        driver.close()
        asyncio.get_running_loop().remove_reader(netns.fd)

    asyncio.run(main())


def test_kernel_ping_and_udp(netns: Namespace) -> None:
    """The kernel pings the stack; a kernel UDP socket talks to a stack UDP socket."""

    async def main() -> None:
        stack = _stack()
        driver = _attach(stack, netns.fd)
        sock = stack.udp_bind(5353)
        ping = None
        if shutil.which("ping") is not None:
            ping = await asyncio.create_subprocess_exec(
                *netns.exec_args("ping", "-c", "2", "-i", "0.2", "-W", "2", STACK_ADDR[4]),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        udp = await asyncio.create_subprocess_exec(
            *netns.exec_args(
                sys.executable,
                "-c",
                "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                "s.settimeout(10);"
                f"s.sendto(b'hello',('{STACK_ADDR[4]}',5353));print(s.recvfrom(100)[0].decode())",
            ),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(500):
            item = sock.recvfrom()
            if item is not None:
                sock.sendto(item[0].upper(), item[1])
                driver._schedule_flush()
                break
            await asyncio.sleep(0.01)
        out, err = await asyncio.wait_for(udp.communicate(), 30)
        assert out.strip() == b"HELLO", err
        if ping is not None:
            pout, _ = await asyncio.wait_for(ping.communicate(), 30)
            assert ping.returncode == 0, pout.decode()
        # And the stack pings the kernel.
        rtt = await driver.ping(KERNEL_ADDR[4], timeout=5)
        assert rtt < 1.0
        driver.close()
        asyncio.get_running_loop().remove_reader(netns.fd)

    asyncio.run(main())


# ------------------------------------------------------------------- fragments

UDP_BIG = r"""
import hashlib, random, socket, sys
host, size = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.settimeout(10)
data = random.Random(size).randbytes(size)
s.sendto(data, (host, 5353))
got, _ = s.recvfrom(1 << 16)
print(len(got), hashlib.sha256(got).hexdigest() == hashlib.sha256(data[::-1]).hexdigest())
"""


@pytest.mark.parametrize("family", [4, 6])
def test_kernel_fragments_both_ways(netns: Namespace, family: int) -> None:
    """Datagrams larger than the tunnel MTU, as a kernel sends them: it
    fragments a 3,000-octet ping and a 5,000-octet UDP datagram at its
    interface's 1,420; the stack joins them, answers as large, and its
    answers (fragmented by the stack) are joined by the kernel: ping
    succeeds and the UDP answer is the datagram reversed."""

    async def main() -> None:
        stack = _stack()
        driver = _attach(stack, netns.fd)
        sock = stack.udp_bind(5353)
        addr = STACK_ADDR[family]
        need(shutil.which("ping") is not None, "no ping (iputils-ping)")
        ping = await asyncio.create_subprocess_exec(
            *netns.exec_args(
                "ping",
                f"-{family}",
                "-M",
                "dont",
                "-s",
                "3000",
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "3",
                addr,
            ),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        udp = await asyncio.create_subprocess_exec(
            *netns.exec_args(sys.executable, "-c", UDP_BIG, addr, "5000"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(1000):
            item = sock.recvfrom()
            if item is not None:
                assert len(item[0]) == 5000
                sock.sendto(item[0][::-1], item[1])
                driver._schedule_flush()
                break
            await asyncio.sleep(0.01)
        out, err = await asyncio.wait_for(udp.communicate(), 30)
        assert out.split() == [b"5000", b"True"], err
        pout, _ = await asyncio.wait_for(ping.communicate(), 30)
        assert ping.returncode == 0, pout.decode()
        assert b"3 received" in pout, pout.decode()
        stats = stack.stats
        assert stats.datagrams_reassembled == 4, stats  # 3 echo requests, 1 datagram
        assert stats.datagrams_fragmented == 4, stats
        assert stats.malformed == stats.reassembly_failures == stats.reassembly_timeouts == 0
        driver.close()
        asyncio.get_running_loop().remove_reader(netns.fd)

    asyncio.run(main())


# ------------------------------------------------ path MTU discovery through a router

ROUTED_SERVER = {4: "198.18.1.2", 6: "fd5e:2::2"}
NARROW_MTU = {4: 1000, 6: 1280}  # of the router's onward hop to the server


@pytest.fixture
def routed() -> Iterator[Namespace]:
    """The TUN in a router namespace whose route on to a server namespace
    has a small MTU (locked, so forwarding honours it), while every link is
    1420: the server advertises an MSS for 1420, and the router itself
    sends the "fragmentation needed" / Packet Too Big for our segments."""
    _require()
    tag = uuid.uuid4().hex[:8]
    router, server = f"r26h-rt-{os.getpid()}-{tag}", f"r26h-sv-{os.getpid()}-{tag}"
    tun_name, veth_r, veth_s = f"r26ht{tag}", f"r26hr{tag[:6]}", f"r26hs{tag[:6]}"
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    made: list[str] = []
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", tun_name.encode(), IFF_TUN | IFF_NO_PI))
        for ns in (router, server):
            _ip("netns", "add", ns)
            made.append(ns)
            subprocess.run(
                ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"],
                capture_output=True,
                timeout=30,
            )
            _ip("-n", ns, "link", "set", "lo", "up")
        r, s = ["-n", router], ["-n", server]
        _ip("link", "set", "dev", tun_name, "netns", router)
        _ip(*r, "link", "set", tun_name, "mtu", "1420")
        _ip(*r, "addr", "add", f"{KERNEL_ADDR[4]}/24", "dev", tun_name)
        _ip(*r, "-6", "addr", "add", f"{KERNEL_ADDR[6]}/64", "dev", tun_name, "nodad")
        _ip(*r, "link", "set", tun_name, "up")
        _ip(*r, "link", "add", veth_r, "mtu", "1420", "type", "veth", "peer", "name", veth_s,
            "mtu", "1420", "netns", server)  # fmt: skip
        _ip(*r, "addr", "add", "198.18.1.1/24", "dev", veth_r)
        _ip(*r, "-6", "addr", "add", "fd5e:2::1/64", "dev", veth_r, "nodad")
        _ip(*r, "link", "set", veth_r, "up")
        _ip(*s, "addr", "add", f"{ROUTED_SERVER[4]}/24", "dev", veth_s)
        _ip(*s, "-6", "addr", "add", f"{ROUTED_SERVER[6]}/64", "dev", veth_s, "nodad")
        _ip(*s, "link", "set", veth_s, "up")
        _ip(*s, "route", "add", "default", "via", "198.18.1.1")
        _ip(*s, "-6", "route", "add", "default", "via", "fd5e:2::1")
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            subprocess.run(
                ["ip", "netns", "exec", router, "sysctl", "-qw", key],
                check=True,
                capture_output=True,
                timeout=30,
            )
        _ip(*r, "route", "add", f"{ROUTED_SERVER[4]}/32", "dev", veth_r,
            "mtu", "lock", str(NARROW_MTU[4]))  # fmt: skip
        _ip(*r, "-6", "route", "add", f"{ROUTED_SERVER[6]}/128", "dev", veth_r,
            "mtu", "lock", str(NARROW_MTU[6]))  # fmt: skip
        yield Namespace(server, tun_name, fd)
    finally:
        os.close(fd)
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_path_mtu_discovery_through_a_kernel_router(routed: Namespace, family: int) -> None:
    """Our full-size segments (DF set) do not fit the router's onward hop:
    the kernel router answers "fragmentation needed" (RFC 1191) or Packet
    Too Big (RFC 4443 3.2), the stack lowers its MSS and the transfer to the
    kernel's echo server completes byte for byte instead of timing out."""

    async def main() -> None:
        stack = _stack()
        driver = _attach(stack, routed.fd)
        proc = await _kernel_echo_server(routed, ROUTED_SERVER[family])
        reader, writer = await driver.open_connection(ROUTED_SERVER[family], 9090)
        size = 1 << 20
        data = random.Random(3).randbytes(size)
        writer.write(data)
        writer.write_eof()
        echoed = await asyncio.wait_for(reader.read(), 60)
        assert len(echoed) == size
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert int(out.split()[-1]) == size
        assert stack.stats.icmp_pmtu_reductions >= 1
        narrow_mss = NARROW_MTU[family] - (40 if family == 4 else 60)
        assert all(c.smss <= narrow_mss for c in stack.tcp_connections if c.remote_port == 9090)
        writer.close()
        driver.close()
        asyncio.get_running_loop().remove_reader(routed.fd)

    asyncio.run(main())
