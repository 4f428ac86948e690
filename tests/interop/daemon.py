"""What the tests of ``wireguard-sansio`` share: the implementation under
test as a parameter, interfaces of either implementation in network
namespaces, configured from outside with ``wg`` and ``ip`` as a script or
wg-quick would.

Every scenario runs with ``wireguard-sansio`` and with wireguard-go in its
place (the ``impl`` fixture), the other side of the tunnel always being
wireguard-go, so a scenario that fails only for ours is our failure and not
the scenario's.

The command under test is the installed console script ``wireguard-sansio``
if there is one (CI installs the package), else ``python -m
wireguard.cli.daemon`` of this tree behind a small wrapper script (wg-quick
needs a command). Interface names are unique per test (the control sockets
of all namespaces share ``/var/run/wireguard``); everything is removed at the
end and only processes the test started are killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import IN_CI, need
from tests.interop.harness import UNDER_V4, UNDER_V6, WG_GO_ENV, Hosts, hosts, run
from wireguard.keys import PrivateKey

ROOT = Path(__file__).resolve().parents[2]
RUN_DIR = Path("/var/run/wireguard")
SANSIO = "wireguard-sansio"
GO = "wireguard-go"
IMPLS = [SANSIO, GO]

TUN_V4 = ("10.80.0.1", "10.80.0.2", "10.80.0.3")
TUN_V6 = ("fd80::1", "fd80::2", "fd80::3")
PORT_A = 51821
PORT_B = 51820


@dataclass
class Impl:
    """How to start one implementation: ``argv + [NAME]`` daemonizes."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def ours(self) -> bool:
        return self.name == SANSIO


def sansio_command(directory: Path) -> list[str]:
    """The console script if installed (in CI it must be), else a wrapper."""
    scripts = Path(sysconfig.get_path("scripts")) / SANSIO  # this interpreter's
    installed = str(scripts) if scripts.exists() else shutil.which(SANSIO)
    if IN_CI:
        need(installed is not None, f"`{SANSIO}` is not installed (pip install -e .)")
    if installed is not None:
        return [installed]
    wrapper = directory / SANSIO
    if not wrapper.exists():
        wrapper.write_text(
            "#!/bin/sh\n"
            f"PYTHONPATH={ROOT}${{PYTHONPATH:+:$PYTHONPATH}} "
            f'exec {sys.executable} -m wireguard.cli.daemon "$@"\n'
        )
        wrapper.chmod(0o755)
    return [str(wrapper)]


def make_impl(name: str, directory: Path) -> Impl:
    if name == SANSIO:
        return Impl(SANSIO, sansio_command(directory))
    need(shutil.which(GO) is not None, "`wireguard-go` is not installed")
    return Impl(GO, [GO], dict(WG_GO_ENV))


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Impl:
    return make_impl(request.param, tmp_path_factory.mktemp("impl"))


@pytest.fixture
def go(tmp_path_factory: pytest.TempPathFactory) -> Impl:
    return make_impl(GO, tmp_path_factory.mktemp("impl"))


@pytest.fixture
def sansio(tmp_path_factory: pytest.TempPathFactory) -> Impl:
    return make_impl(SANSIO, tmp_path_factory.mktemp("impl"))


def unique(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4)}"[:15]


def socket_pid(name: str) -> int | None:
    """The process serving interface *name*'s control socket (SO_PEERCRED)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(str(RUN_DIR / f"{name}.sock"))
        except OSError:
            return None
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0] or None


def daemon_pid(ns: str, name: str) -> int | None:
    """The live process in namespace *ns* whose last argument is *name*: the
    daemon (the socket's SO_PEERCRED names the process that bound it, which
    for a daemonizing command is the parent, gone by now)."""
    for pid in run("ip", "netns", "pids", ns, check=False).stdout.split():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        except OSError:
            continue
        if argv[-1] == name.encode() and alive(int(pid)):
            return int(pid)
    return None


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_until(condition, timeout: float, what: str, step: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s")
        time.sleep(step)


class Node:
    """One interface of an implementation, started in namespace *ns* the way
    wg-quick starts it (the command daemonizes), then configured by ``wg``
    (whose socket directory every namespace shares) and ``ip``."""

    def __init__(self, impl: Impl, ns: str, name: str, key: PrivateKey | None = None) -> None:
        self.impl, self.ns, self.name = impl, ns, name
        self.key = key or PrivateKey.generate()
        self.pid: int | None = None
        self.where = ns  # the namespace the interface is in now

    @property
    def public(self) -> str:
        return str(self.key.public_key)

    def start(self, *, check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ, **self.impl.env)
        result = run("ip", "netns", "exec", self.ns, *self.impl.argv, self.name,
                     check=False, env=env)  # fmt: skip
        if check:
            assert result.returncode == 0, f"{self.impl.name}: {result.stdout}{result.stderr}"
            assert socket_pid(self.name) is not None, "nobody serves the control socket"
            self.pid = daemon_pid(self.ns, self.name)
            assert self.pid is not None, "no daemon process"
        return result

    def wg(self, *args: str, check: bool = True, **kw) -> str:  # type: ignore[no-untyped-def]
        return run("wg", *args, check=check, **kw).stdout

    def setconf(self, text: str, directory: Path, verb: str = "setconf") -> float:
        """``wg setconf`` (or addconf) from a file; the time it took."""
        path = directory / f"{self.name}.{verb}"
        path.write_text(text)
        path.chmod(0o600)
        start = time.monotonic()
        run("wg", verb, self.name, str(path), timeout=600)
        return time.monotonic() - start

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("ip", "-n", self.where, *args, check=check)

    def exec(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
        return run("ip", "netns", "exec", self.where, *args, check=check, **kw)

    def up(self, addresses: list[str], mtu: int = 1420) -> None:
        for address in addresses:
            self.ip("addr", "add", address, "dev", self.name)
        self.ip("link", "set", self.name, "mtu", str(mtu), "up")

    def link_exists(self) -> bool:
        return self.ip("link", "show", self.name, check=False).returncode == 0

    def stats(self) -> dict[str, int]:
        """The interface's counters, as ``ip -s link`` shows them."""
        out = self.ip("-s", "-j", "link", "show", self.name).stdout
        stats = json.loads(out)[0]["stats64"]
        return {f"{d}_{k}": int(stats[d][k]) for d in ("rx", "tx") for k in ("bytes", "packets")}

    def udp_ports(self) -> set[int]:
        """UDP ports bound in the namespace the node was started in."""
        out = run("ip", "netns", "exec", self.ns, "ss", "-Huln").stdout
        return {int(m) for m in re.findall(r":(\d+)\s", out)}

    def latest_handshake(self, peer: str) -> int:
        for line in self.wg("show", self.name, "latest-handshakes").splitlines():
            key, _, when = line.partition("\t")
            if key == peer:
                return int(when)
        return 0

    def endpoint(self, peer: str) -> str:
        for line in self.wg("show", self.name, "endpoints").splitlines():
            key, _, where = line.partition("\t")
            if key == peer:
                return where
        return ""

    def stop(self) -> None:
        """Delete the interface (the process then ends); kill what remains."""
        with contextlib.suppress(Exception):
            if self.link_exists():
                self.ip("link", "del", self.name, check=False)
        pid = self.pid or daemon_pid(self.ns, self.name)
        if pid is not None:
            with contextlib.suppress(AssertionError):
                wait_until(lambda: not alive(pid), 5, "the daemon to end")
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            (RUN_DIR / f"{self.name}.sock").unlink()


def peer_section(node: Node, allowed: list[str], endpoint: str | None = None,
                 keepalive: int = 0, psk: str | None = None) -> str:  # fmt: skip
    lines = ["[Peer]", f"PublicKey = {node.public}", f"AllowedIPs = {', '.join(allowed)}"]
    if endpoint:
        lines.append(f"Endpoint = {endpoint}")
    if keepalive:
        lines.append(f"PersistentKeepalive = {keepalive}")
    if psk:
        lines.append(f"PresharedKey = {psk}")
    return "\n".join(lines) + "\n"


def interface_section(node: Node, port: int | None) -> str:
    text = f"[Interface]\nPrivateKey = {node.key}\n"
    if port:
        text += f"ListenPort = {port}\n"
    return text


def endpoint_of(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass
class Pair:
    """A (the implementation under test) and B (wireguard-go) in namespaces
    joined by veth, a tunnel between them: 10.80.0.1 / fd80::1 on A,
    10.80.0.2 / fd80::2 on B."""

    h: Hosts
    a: Node
    b: Node
    tmp: Path
    under: tuple[str, str]

    def ping(self, src: Node, dst: str, count: int = 3, deadline: int = 10,
             *extra: str) -> subprocess.CompletedProcess:  # fmt: skip
        return src.exec("ping", "-c", str(count), "-i", "0.2", "-w", str(deadline), *extra, dst,
                        check=False, timeout=deadline + 10)  # fmt: skip

    def reaches(self, src: Node, dst: str, count: int = 3, deadline: int = 10) -> bool:
        return self.ping(src, dst, count, deadline).returncode == 0


@contextlib.contextmanager
def pair(impl: Impl, go: Impl, tmp: Path, *, outer: int = 4, a_endpoint: bool = True,
         b_endpoint: bool = True, a_keepalive: int = 0) -> Iterator[Pair]:  # fmt: skip
    under = UNDER_V4 if outer == 4 else UNDER_V6
    with topology() as h:
        a = Node(impl, h.a, unique("sa"))
        b = Node(go, h.b, unique("gb"))
        p = Pair(h, a, b, tmp, under)
        try:
            a.start()
            b.start()
            to_b = endpoint_of(under[1], PORT_B) if a_endpoint else None
            to_a = endpoint_of(under[0], PORT_A) if b_endpoint else None
            allowed_b = [f"{TUN_V4[1]}/32", f"{TUN_V6[1]}/128"]
            allowed_a = [f"{TUN_V4[0]}/32", f"{TUN_V6[0]}/128"]
            a.setconf(
                interface_section(a, PORT_A)
                + peer_section(b, allowed_b, to_b, keepalive=a_keepalive),
                tmp,
            )
            b.setconf(interface_section(b, PORT_B) + peer_section(a, allowed_a, to_a), tmp)
            a.up([f"{TUN_V4[0]}/24", f"{TUN_V6[0]}/64"])
            b.up([f"{TUN_V4[1]}/24", f"{TUN_V6[1]}/64"])
            yield p
        finally:
            a.stop()
            b.stop()


def veth(h: Hosts, ns1: str, ns2: str, tag: str) -> tuple[str, str]:
    """A veth pair between two namespaces, both ends up; their names."""
    one, two = f"v{tag}{h.tag}x", f"v{tag}{h.tag}y"
    run("ip", "link", "add", one, "netns", ns1, "type", "veth", "peer", "name", two, "netns", ns2)
    for ns, dev in ((ns1, one), (ns2, two)):
        run("ip", "-n", ns, "link", "set", dev, "up")
    return one, two


def netns(h: Hosts, letter: str) -> str:
    """One more namespace, removed with the hosts."""
    ns = f"pywg-{h.tag}-{letter}"
    run("ip", "netns", "add", ns)
    run("ip", "-n", ns, "link", "set", "lo", "up")
    extra = getattr(h, "extra", [])
    extra.append(ns)
    h.extra = extra  # type: ignore[attr-defined]
    return ns


@contextlib.contextmanager
def topology() -> Iterator[Hosts]:
    """The harness's hosts A and B, and whatever :func:`netns` adds."""
    with hosts() as h:
        try:
            yield h
        finally:
            destroy_extra(h)


def destroy_extra(h: Hosts) -> None:
    for ns in getattr(h, "extra", []):
        for pid in run("ip", "netns", "pids", ns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        run("ip", "netns", "del", ns, check=False)


def under_device(h: Hosts, ns: str) -> str:
    """The veth of the harness's A-B link in *ns*."""
    return f"va{h.tag}" if ns == h.a else f"vb{h.tag}"


def ping_stats(output: str) -> tuple[int, int, float]:
    """Transmitted, received and the largest RTT (ms) from ping's output."""
    sent = received = 0
    if m := re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", output):
        sent, received = int(m.group(1)), int(m.group(2))
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", output)]
    if m := re.search(r"= [\d.]+/[\d.]+/([\d.]+)/", output):
        rtts.append(float(m.group(1)))
    return sent, received, max(rtts, default=0.0)
