"""Hosts for the hybrid-estate test (tests/interop/test_estate.py): network
namespaces on one switched LAN, each node of a ``mesh`` inventory installed
and run the way its rendered files say.

    namespace  LAN (bridge)                       node
    ...-lan    br0
    ...-vm     192.168.88.1  (KernelVM's own)     qemu, slirp: the guest is behind NAT
    ...-go     192.168.88.2                       wireguard-go via wg-quick
    ...-hub    192.168.88.3                       wireguard-sansio via wg-quick (the hub)
    ...-pod    192.168.88.4                       python -m wireguard proxy, as nobody
    ...-new    192.168.88.5                       wireguard-sansio via wg-quick (added later)

The inventory names one interface for every node; the nodes here share one
machine, and the control sockets of userspace implementations share
``/var/run/wireguard``, so each node's file is installed under a name of its
own (``install -m 0600 wg-mesh.conf /etc/wireguard/OTHER.conf`` on a real
host): wg-quick takes the interface name from the file name. Everything made
is removed by :meth:`Estate.close`; only processes started here are killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.interop.harness import CLONE_NEWNET

REPO = Path(__file__).resolve().parents[2]
LAN_PREFIX = "192.168.88"
RUN_DIR = Path("/var/run/wireguard")


def run(*args: str, check: bool = True, timeout: float = 30, text: bool = True,
        **kw) -> subprocess.CompletedProcess:  # fmt: skip
    """A command's result; an error with its stderr if it fails and *check*."""
    result = subprocess.run(args, capture_output=True, text=text, timeout=timeout, **kw)
    if check and result.returncode != 0:
        err = result.stderr if text else result.stderr.decode(errors="replace")
        raise RuntimeError(f"{' '.join(args)} failed: {err.strip()}")
    return result


def lan_address(index: int) -> str:
    return f"{LAN_PREFIX}.{index}"


def in_netns(ns: str, make):  # type: ignore[no-untyped-def]
    """Call *make()* in a fresh thread that entered namespace *ns*: a socket
    made there stays in that namespace wherever it is used afterwards."""
    libc = ctypes.CDLL(None, use_errno=True)
    result: list[object] = []

    def work() -> None:
        try:
            with open(f"/var/run/netns/{ns}", "rb") as f:
                if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            result.append(make())
        except Exception as exc:  # reported in the caller's thread
            result.append(exc)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    if isinstance(result[0], Exception):
        raise result[0]
    return result[0]


def mesh_env() -> dict[str, str]:
    """The environment of ``python -m wireguard``: this source tree first."""
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=f"{REPO}:{path}" if path else str(REPO))


@dataclass
class Host:
    """One namespace on the LAN, and the node of the mesh that runs in it."""

    node: str
    ns: str
    address: str
    interface: str = ""  # the name its wg-quick file is installed under
    conf: Path | None = None  # that file
    implementation: list[str] = field(default_factory=list)  # wg-quick's userspace command
    env: dict[str, str] = field(default_factory=dict)
    up: bool = False

    def exec(self, *args: str, check: bool = True, timeout: float = 60,
             **kw) -> subprocess.CompletedProcess:  # fmt: skip
        return run("ip", "netns", "exec", self.ns, *args, check=check, timeout=timeout, **kw)

    def bash(self, script: str, check: bool = True, timeout: float = 60,
             **kw) -> subprocess.CompletedProcess:  # fmt: skip
        return self.exec("bash", "-c", script, check=check, timeout=timeout, **kw)

    def wg_quick(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ, **self.env)
        if self.implementation:
            env["WG_QUICK_USERSPACE_IMPLEMENTATION"] = shlex.join(self.implementation)
        assert self.conf is not None
        return self.exec("wg-quick", *args, str(self.conf), check=check, env=env, timeout=90)

    def syncconf(self) -> None:
        """What the docs say to run on a running node after a new render."""
        assert self.conf is not None
        self.bash(f"wg syncconf {self.interface} <(wg-quick strip {shlex.quote(str(self.conf))})")

    def wg_show(self, what: str) -> dict[str, list[str]]:
        """``wg show IF WHAT`` as {public key: fields}."""
        out = self.exec("wg", "show", self.interface, what).stdout
        return {f[0]: f[1:] for f in (line.split() for line in out.splitlines()) if f}

    def ping(self, address: str, count: int = 3, deadline: int = 20) -> subprocess.CompletedProcess:
        return self.exec("ping", "-c", str(count), "-i", "0.3", "-w", str(deadline), address,
                         check=False, timeout=deadline + 15)  # fmt: skip


class Estate:
    """The LAN, the hosts on it, the inventory and its rendered files, in
    :attr:`dir` (removed at the end: it holds private keys)."""

    def __init__(self, directory: Path) -> None:
        self.tag = secrets.token_hex(3)
        self.dir = directory
        self.inventory = directory / "mesh.toml"
        self.etc = directory / "etc"  # where each host's files are installed
        self.etc.mkdir(mode=0o700)
        self.lan = f"pywg-{self.tag}-lan"
        self.interface = f"em{self.tag}"  # the inventory's interface name
        self.hosts: dict[str, Host] = {}
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.output: dict[int, list[str]] = {}  # each started process's output lines
        self._veths = 0
        run("ip", "netns", "add", self.lan)
        self.namespaces.append(self.lan)
        run("ip", "-n", self.lan, "link", "set", "lo", "up")
        run("ip", "-n", self.lan, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.lan, "link", "set", "br0", "up")

    # the inventory, by its command line

    def mesh(self, *args: str) -> subprocess.CompletedProcess:
        result = run(sys.executable, "-m", "wireguard", "mesh", "-f", str(self.inventory), *args,
                     check=False, cwd=self.dir, env=mesh_env())  # fmt: skip
        if result.returncode != 0:
            raise AssertionError(f"mesh {' '.join(args)}: {result.stderr.strip()}")
        return result

    def render(self) -> subprocess.CompletedProcess:
        return self.mesh("render", "--python", sys.executable)

    def rendered(self, node: str, name: str | None = None) -> Path:
        return self.dir / "mesh.out" / node / (name or f"{self.interface}.conf")

    # the LAN

    def attach(self, ns: str, index: int) -> str:
        """A veth from *ns* to the LAN's bridge, LAN address .index; that address."""
        self._veths += 1
        inner, outer = f"l{self.tag}{self._veths}", f"b{self.tag}{self._veths}"
        run("ip", "link", "add", inner, "netns", ns, "type", "veth",
            "peer", "name", outer, "netns", self.lan)  # fmt: skip
        run("ip", "-n", self.lan, "link", "set", outer, "master", "br0", "up")
        address = lan_address(index)
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", inner)
        run("ip", "-n", ns, "link", "set", inner, "up")
        return address

    def host(self, node: str, index: int) -> Host:
        ns = f"pywg-{self.tag}-{node}"
        run("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        host = Host(node, ns, self.attach(ns, index))
        self.hosts[node] = host
        return host

    # installing and running what was rendered

    def install(self, host: Host, letter: str) -> Path:
        """Copy the node's rendered wg-quick file to its host, mode 0600, under
        the host's own interface name."""
        host.interface = f"{self.interface}{letter}"
        target = self.etc / host.node
        target.mkdir(mode=0o700, exist_ok=True)
        host.conf = target / f"{host.interface}.conf"
        shutil.copyfile(self.rendered(host.node), host.conf)
        host.conf.chmod(0o600)
        return host.conf

    def wg_quick_up(self, host: Host, letter: str, implementation: list[str],
                    env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.install(host, letter)
        host.implementation = implementation
        host.env = dict(env or {})
        result = host.wg_quick("up", check=False)
        host.up = True  # whatever it did, `down` and the namespace's end undo it
        assert result.returncode == 0, f"wg-quick up on {host.node}: {result.stderr}"

    def popen(self, ns: str, args: list[str], **kw) -> subprocess.Popen:  # type: ignore[no-untyped-def]
        """A command in *ns*, stopped by :meth:`close`; its output lines in :attr:`output`."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *args], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                **kw)  # fmt: skip
        self.procs.append(proc)
        self.output[proc.pid] = lines = []

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))

        threading.Thread(target=read, daemon=True).start()
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        for host in self.hosts.values():
            if host.up and host.conf is not None and host.conf.exists():
                with contextlib.suppress(Exception):
                    host.wg_quick("down", check=False)
        for ns in reversed(self.namespaces):
            for pid in run("ip", "netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            run("ip", "netns", "del", ns, check=False)
        # What a daemon or the hub's PostUp leaves if `down` did not run.
        for host in self.hosts.values():
            if host.interface:
                for leftover in (f"{host.interface}.sock", f"{host.interface}.ipv6-forwarding"):
                    with contextlib.suppress(FileNotFoundError):
                        (RUN_DIR / leftover).unlink()


def interface_addresses(conf: str) -> list[str]:
    """The ``Address =`` values of a wg-quick file (wg-quick's own reading:
    comma-separated, any number of lines)."""
    found: list[str] = []
    for line in conf.splitlines():
        m = re.match(r"\s*Address\s*=\s*(.*)$", line, re.I)
        if m:
            found += [a.strip() for a in m.group(1).split(",") if a.strip()]
    return found


class Download(threading.Thread):
    """An HTTP/1.0 GET over TCP from namespace *ns*, read slowly (about
    *rate* bytes a second) until :meth:`release`, and paused at *hold* bytes
    if not released by then: a transfer that is still running when the test
    says so, whatever the machine's speed."""

    def __init__(self, ns: str, host: str, port: int, path: str, *, hold: int,
                 rate: int = 256 * 1024) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.sock = in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        self.target, self.path, self.hold, self.rate = (host, port), path, hold, rate
        self.released = threading.Event()
        self.received = 0  # bytes of the body so far
        self.status = ""
        self.length: int | None = None
        self.body = bytearray()
        self.error: BaseException | None = None
        self.finished = threading.Event()

    def release(self) -> None:
        self.released.set()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.sock.close()
            self.finished.set()

    def _run(self) -> None:
        self.sock.settimeout(180)
        self.sock.connect(self.target)
        self.sock.sendall(f"GET {self.path} HTTP/1.0\r\nHost: db\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed in the headers: {head!r}")
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = lines[0]
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                self.length = int(value)
        self._take(rest)
        step = 16384
        while True:
            if not self.released.is_set():
                if self.received >= self.hold:
                    self.released.wait(600)
                else:
                    time.sleep(step / self.rate)
            chunk = self.sock.recv(step)
            if not chunk:
                return
            self._take(chunk)

    def _take(self, data: bytes) -> None:
        self.body += data
        self.received += len(data)
