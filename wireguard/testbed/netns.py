"""Test hosts in network namespaces, and a wireguard-go peer in one of them.

Two namespaces joined by a veth pair, with IPv4 and IPv6 underlay addresses:

    A  192.168.77.1/24  fd77::1/64   (our endpoint, no TUN)
    B  192.168.77.2/24  fd77::2/64   (wireguard-go with its TUN)

Names are unique per use so parallel runs and leftovers never collide, and
everything made is removed at the end. A socket for our endpoint is created
inside namespace A from a thread that entered it (a network namespace is a
per-thread property on Linux, and a socket stays in the namespace it was made
in), so a test drives our endpoint in-process.

Used by this project's interop tests and by its pytest plugin
(:mod:`wireguard.pytest_plugin`); nothing here imports pytest.
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
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CLONE_NEWNET = 0x40000000
WG_GO_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}

UNDER_V4 = ("192.168.77.1", "192.168.77.2")
UNDER_V6 = ("fd77::1", "fd77::2")

DEBIAN_PACKAGES = ("iproute2", "wireguard-tools", "wireguard-go")


def missing_netns(tools: tuple[str, ...] = ("ip", "wg", "wireguard-go")) -> str | None:
    """Why namespaces (and the *tools* in them) cannot be used here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in tools:
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install {' '.join(DEBIAN_PACKAGES)})"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    return None


def run(
    *args: str, check: bool = True, timeout: float = 30, **kw: Any
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip() or result.stdout}")
    return result


def stop_process(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after *grace* seconds; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def kill_namespace_processes(ns: str, grace: float = 2.0, keep: set[int] | None = None) -> None:
    """End every process in namespace *ns* but those in *keep*: SIGTERM (so
    wireguard-go removes its control socket), then SIGKILL what is left after
    *grace* seconds."""

    def pids() -> list[int]:
        found = run("ip", "netns", "pids", ns, check=False).stdout.split()
        return [int(p) for p in found if p.isdigit() and int(p) not in (keep or set())]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = pids()
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not pids():
                return
            time.sleep(0.05)


class Hosts:
    """Namespaces :attr:`a` and :attr:`b` joined by a veth pair (see the module docstring)."""

    def __init__(self, prefix: str = "pywg") -> None:
        tag = secrets.token_hex(3)
        self.tag = tag
        self.a, self.b = f"{prefix}-{tag}-a", f"{prefix}-{tag}-b"

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
            # End what still runs in the namespace (only our own processes live there).
            kill_namespace_processes(ns)
            run("ip", "netns", "del", ns, check=False)

    def exec(self, ns: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", ns, *args, **kw)


@contextlib.contextmanager
def hosts(prefix: str = "pywg") -> Iterator[Hosts]:
    """Make the two namespaces, and remove them (and what runs in them) at the end.
    The caller checks :func:`missing_netns` first."""
    h = Hosts(prefix)
    try:
        h.create()
        yield h
    finally:
        h.destroy()


def socket_in_netns(ns: str, family: int = socket.AF_INET6, port: int = 0) -> socket.socket:
    """A UDP socket bound inside namespace *ns* (dual-stack when IPv6)."""
    libc = ctypes.CDLL(None, use_errno=True)
    result: list[socket.socket | BaseException] = []

    def work() -> None:
        try:
            with open(f"/var/run/netns/{ns}", "rb") as f:
                if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                    sock.bind(("::", port))
                else:
                    sock.bind(("0.0.0.0", port))
            except BaseException:
                sock.close()
                raise
            result.append(sock)
        except Exception as exc:  # reported in the caller's thread
            result.append(exc)

    # A fresh thread enters the namespace and then ends, so no thread of the
    # test process is left behind in it.
    t = threading.Thread(target=work)
    t.start()
    t.join()
    got = result[0]
    if isinstance(got, BaseException):
        raise got
    return got


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
        fd, name = _private_file(f"{self.name}.conf")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(config)
            self.hosts.exec(self.ns, "wg", "setconf", self.name, name)
        finally:
            os.unlink(name)
        for address in addresses:
            self.hosts.exec(self.ns, "ip", "addr", "add", address, "dev", self.name)
        self.hosts.exec(self.ns, "ip", "link", "set", self.name, "up")

    def wg(self, *args: str) -> str:
        return self.hosts.exec(self.ns, "wg", *args).stdout

    def latest_handshake(self) -> int:
        line = self.wg("show", self.name, "latest-handshakes").split()
        return int(line[1]) if len(line) >= 2 else 0

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()


def _private_file(suffix: str) -> tuple[int, str]:
    """A new file only we can read (it holds a private key): (fd, path)."""
    return tempfile.mkstemp(prefix="pywg-", suffix=f"-{suffix}")
