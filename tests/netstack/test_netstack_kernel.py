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
        proc = await asyncio.create_subprocess_exec(
            *netns.exec_args(sys.executable, "-c", SERVER, KERNEL_ADDR[family], "9090"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"ready"
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
