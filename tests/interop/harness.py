"""Test hosts in network namespaces, and a wireguard-go peer in one of them.

Two namespaces joined by a veth pair, with IPv4 and IPv6 underlay addresses:

    A  192.168.77.1/24  fd77::1/64   (our endpoint, no TUN)
    B  192.168.77.2/24  fd77::2/64   (wireguard-go with its TUN)

Names are unique per test so parallel runs and leftovers never collide, and
everything made is removed at the end. A socket for our endpoint is created
inside namespace A from a thread that entered it (a network namespace is a
per-thread property on Linux, and a socket stays in the namespace it was made
in), so the test drives our endpoint in-process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import need

CLONE_NEWNET = 0x40000000
WG_GO_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}

UNDER_V4 = ("192.168.77.1", "192.168.77.2")
UNDER_V6 = ("fd77::1", "fd77::2")


def need_netns() -> None:
    need(os.geteuid() == 0, "interop tests need root (network namespaces)")
    for tool in ("ip", "wg", "wireguard-go"):
        need(shutil.which(tool) is not None, f"`{tool}` is not installed")
    need(os.path.exists("/dev/net/tun"), "/dev/net/tun is missing")


def run(*args: str, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip() or result.stdout}")
    return result


class Hosts:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.tag = tag
        self.a, self.b = f"pywg-{tag}-a", f"pywg-{tag}-b"

    def create(self) -> None:
        run("ip", "netns", "add", self.a)
        run("ip", "netns", "add", self.b)
        va, vb = f"va{self.tag}", f"vb{self.tag}"
        run("ip", "link", "add", va, "netns", self.a, "type", "veth", "peer", "name", vb,
            "netns", self.b)  # fmt: skip
        for ns, dev, v4, v6 in ((self.a, va, UNDER_V4[0], UNDER_V6[0]),
                                (self.b, vb, UNDER_V4[1], UNDER_V6[1])):  # fmt: skip
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            run("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            run("ip", "-n", ns, "link", "set", dev, "up")

    def destroy(self) -> None:
        for ns in (self.a, self.b):
            # Kill what still runs in the namespace (only our own processes live there).
            pids = run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            run("ip", "netns", "del", ns, check=False)

    def exec(self, ns: str, *args: str, **kw) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", ns, *args, **kw)


@contextlib.contextmanager
def hosts() -> Iterator[Hosts]:
    need_netns()
    h = Hosts()
    try:
        h.create()
        yield h
    finally:
        h.destroy()


def socket_in_netns(ns: str, family: int = socket.AF_INET6, port: int = 0) -> socket.socket:
    """A UDP socket bound inside namespace *ns* (dual-stack when IPv6)."""
    libc = ctypes.CDLL(None, use_errno=True)
    result: list[object] = []

    def work() -> None:
        try:
            with open(f"/var/run/netns/{ns}", "rb") as f:
                if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            sock = socket.socket(family, socket.SOCK_DGRAM)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(("::", port))
            else:
                sock.bind(("0.0.0.0", port))
            result.append(sock)
        except Exception as exc:  # reported in the caller's thread
            result.append(exc)

    # A fresh thread enters the namespace and then ends, so no thread of the
    # test process is left behind in it.
    t = threading.Thread(target=work)
    t.start()
    t.join()
    if isinstance(result[0], Exception):
        raise result[0]
    return result[0]  # type: ignore[return-value]


class WireGuardGo:
    """wireguard-go in namespace *ns*, configured with the stock `wg` tool."""

    def __init__(self, hosts: Hosts, ns: str, name: str) -> None:
        self.hosts, self.ns, self.name = hosts, ns, name
        self.proc: subprocess.Popen[str] | None = None

    @property
    def socket_path(self) -> Path:
        return Path(f"/var/run/wireguard/{self.name}.sock")

    def start(self, config: str, addresses: list[str]) -> None:
        env = dict(os.environ, **WG_GO_ENV)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "wireguard-go", "-f", self.name],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self.socket_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = self.proc.stdout.read() if self.proc.stdout else ""
                raise RuntimeError(f"wireguard-go did not start: {out}")
            time.sleep(0.02)
        conf = Path(f"/tmp/{self.name}.conf")
        conf.write_text(config)
        conf.chmod(0o600)
        try:
            self.hosts.exec(self.ns, "wg", "setconf", self.name, str(conf))
        finally:
            conf.unlink()
        for address in addresses:
            self.hosts.exec(self.ns, "ip", "addr", "add", address, "dev", self.name)
        self.hosts.exec(self.ns, "ip", "link", "set", self.name, "up")

    def wg(self, *args: str) -> str:
        return self.hosts.exec(self.ns, "wg", *args).stdout

    def latest_handshake(self) -> int:
        line = self.wg("show", self.name, "latest-handshakes").split()
        return int(line[1]) if len(line) >= 2 else 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
