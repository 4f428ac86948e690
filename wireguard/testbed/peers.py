"""Ready WireGuard peers for testing other software: what the pytest plugin's
fixtures give (:mod:`wireguard.pytest_plugin`), usable without pytest too.

Every peer is a tunnel with two ends, each with its own fresh keys:

- *the peer*: wireguard-go in a network namespace (:class:`WireGuardGoPeer`),
  Linux's own WireGuard in a qemu guest (:class:`KernelPeer`), or this
  project's endpoint misbehaving as a :class:`~wireguard.misbehaviour.Policy`
  says (:class:`MisbehavingPeer`);
- *the client*: you, the software under test, in the network namespace
  :attr:`Peer.client_ns`, configured by :attr:`Peer.client_config` (a
  :class:`~wireguard.config.Config`) or :attr:`Peer.client_config_text` (the
  same as a wg-quick file). Run a program there with :meth:`Peer.client_run`
  or :meth:`Peer.client_popen`, or get a UDP socket there for an in-process
  endpoint with :meth:`Peer.client_socket`.

Both ends know each other's endpoint, so either may start the handshake. The
client's side listens on :data:`CLIENT_PORT`. Nothing is made on the host's
own network: every address lives inside namespaces made here, and
:meth:`Peer.close` removes what was made (namespaces, processes, files).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..config import Config, Endpoint, InterfaceConfig, PeerConfig, dump_setconf, dump_wg_quick
from ..keys import PresharedKey, PrivateKey, PublicKey
from . import kernel_vm as kvm
from .netns import (
    UNDER_V4,
    Hosts,
    WireGuardGo,
    kill_namespace_processes,
    run,
    socket_in_netns,
    stop_process,
)

if TYPE_CHECKING:
    from ..io.rootless import RootlessTunnel
    from ..io.stackdriver import TcpServer
    from ..io.tap import EndpointTap
    from ..misbehaviour import Policy

_T = TypeVar("_T")

PEER_PORT = 51820
CLIENT_PORT = 51821
# Tunnel addresses with wireguard-go or the misbehaving peer (the kernel
# guest's are kernel_vm.GUEST_TUN and HOST_TUN).
PEER_TUN = ("10.77.0.2", "fd10::2")
CLIENT_TUN = ("10.77.0.1", "fd10::1")
ECHO_PORT = 7  # the misbehaving peer's TCP echo service (RFC 862)

__all__ = [
    "CLIENT_PORT",
    "ECHO_PORT",
    "PEER_PORT",
    "KernelPeer",
    "MisbehavingPeer",
    "Peer",
    "RootlessClient",
    "WireGuardGoPeer",
]


def _interfaces(v4: str, v6: str, p4: int = 24, p6: int = 64) -> tuple[Any, ...]:
    return (ipaddress.ip_interface(f"{v4}/{p4}"), ipaddress.ip_interface(f"{v6}/{p6}"))


def _hosts_only(v4: str, v6: str) -> tuple[Any, ...]:
    return (ipaddress.ip_network(f"{v4}/32"), ipaddress.ip_network(f"{v6}/128"))


def _side(
    private_key: PrivateKey,
    port: int,
    addresses: tuple[str, str],
    peer_key: PublicKey,
    psk: PresharedKey | None,
    peer_addresses: tuple[str, str],
    peer_endpoint: tuple[str, int],
) -> Config:
    """One end's configuration: its key, port and addresses, and the other
    end as its only peer (the other end's addresses as AllowedIPs)."""
    return Config(
        InterfaceConfig(
            private_key=private_key, listen_port=port, addresses=_interfaces(*addresses)
        ),
        (
            PeerConfig(
                peer_key,
                preshared_key=psk,
                allowed_ips=_hosts_only(*peer_addresses),
                endpoint=Endpoint(*peer_endpoint),
            ),
        ),
    )


class Peer:
    """One tunnel: the peer's end and the client's end (see the module docstring).

    Keys: :attr:`private_key`, :attr:`public_key` (the peer's),
    :attr:`client_private_key`, :attr:`client_public_key`,
    :attr:`preshared_key` (None unless asked for).
    Addresses inside the tunnel: :attr:`address`, :attr:`address6` (the
    peer's), :attr:`client_address`, :attr:`client_address6`.
    Outside: :attr:`endpoint`, where the client reaches the peer, and
    :attr:`client_endpoint`, where the peer reaches the client.
    """

    kind = "peer"

    def __init__(
        self,
        *,
        client_ns: str,
        endpoint: tuple[str, int],
        client_endpoint: tuple[str, int],
        tunnel: tuple[str, str],
        client_tunnel: tuple[str, str],
        psk: bool = False,
    ) -> None:
        self.private_key = PrivateKey.generate()
        self.client_private_key = PrivateKey.generate()
        self.preshared_key: PresharedKey | None = PresharedKey.generate() if psk else None
        self.client_ns = client_ns
        self.endpoint = endpoint
        self.client_endpoint = client_endpoint
        self.address, self.address6 = tunnel
        self.client_address, self.client_address6 = client_tunnel
        self.client_port = client_endpoint[1]
        self.client_interface = f"wgc{secrets.token_hex(3)}"
        self._procs: list[subprocess.Popen[Any]] = []
        self._files: list[Path] = []
        self._namespaces: list[str] = []

    # keys and configurations

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key

    @property
    def client_public_key(self) -> PublicKey:
        return self.client_private_key.public_key

    @property
    def config(self) -> Config:
        """The peer's own configuration (wg-quick form; ``dump_setconf`` for ``wg setconf``)."""
        return _side(
            self.private_key,
            self.endpoint_port_inside,
            (self.address, self.address6),
            self.client_public_key,
            self.preshared_key,
            (self.client_address, self.client_address6),
            self.client_endpoint,
        )

    @property
    def endpoint_port_inside(self) -> int:
        """The port the peer's socket is bound to (behind any forwarding)."""
        return self.endpoint[1]

    @property
    def client_config(self) -> Config:
        """Your side's configuration: your key and addresses, the peer with its
        endpoint and its tunnel addresses as AllowedIPs."""
        return _side(
            self.client_private_key,
            self.client_port,
            (self.client_address, self.client_address6),
            self.public_key,
            self.preshared_key,
            (self.address, self.address6),
            self.endpoint,
        )

    @property
    def client_config_text(self) -> str:
        """:attr:`client_config` as a wg-quick file (``wg-quick up`` takes it)."""
        return dump_wg_quick(self.client_config)

    def write_client_config(self, path: str | os.PathLike[str]) -> Path:
        """Write :attr:`client_config_text` to *path*, mode 0600 (it holds a
        private key), and return the path. If *path* is a directory, the file
        is ``<client_interface>.conf`` in it: wg-quick names the interface
        after the file, and :attr:`client_interface` is unique on this host
        (wireguard-go's control socket in /var/run/wireguard is not per
        namespace). The file is removed at cleanup."""
        target = Path(path)
        if target.is_dir():
            target = target / f"{self.client_interface}.conf"
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.client_config_text)
        self._files.append(target)
        return target

    # the client's namespace

    def client_socket(self, family: int = socket.AF_INET, port: int | None = None) -> socket.socket:
        """A UDP socket in :attr:`client_ns`, bound to :attr:`client_port`
        unless *port* says otherwise, for an endpoint in this process."""
        return socket_in_netns(self.client_ns, family, self.client_port if port is None else port)

    def client_run(
        self, *args: str, check: bool = True, timeout: float = 60, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in :attr:`client_ns` to its end (``check``: raise on failure)."""
        return run("ip", "netns", "exec", self.client_ns, *args, check=check, timeout=timeout, **kw)

    def client_popen(self, *args: str, **kw: Any) -> subprocess.Popen[Any]:
        """Start a command in :attr:`client_ns`; it is ended at cleanup."""
        return self._popen(self.client_ns, args, kw)

    def _popen(self, ns: str, args: Sequence[str], kw: dict[str, Any]) -> subprocess.Popen[Any]:
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *args], **kw)
        self._procs.append(proc)
        return proc

    # lifetime

    def made(self) -> dict[str, list[str]]:
        """What this peer made and :meth:`close` removes: namespaces, process ids, paths."""
        return {
            "namespaces": list(self._namespaces),
            "pids": [str(p.pid) for p in self._procs],
            "paths": [str(f) for f in self._files],
        }

    def close(self) -> None:
        for proc in reversed(self._procs):
            stop_process(proc)
        for path in self._files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WireGuardGoPeer(Peer):
    """wireguard-go in namespace :attr:`ns`; the client in namespace
    :attr:`client_ns`, one veth away (underlay ``192.168.77.1`` and ``.2``)."""

    kind = "wireguard-go"

    def __init__(self, *, psk: bool = False, prefix: str = "pywg") -> None:
        self.hosts = Hosts(prefix)
        super().__init__(
            client_ns=self.hosts.a,
            endpoint=(UNDER_V4[1], PEER_PORT),
            client_endpoint=(UNDER_V4[0], CLIENT_PORT),
            tunnel=PEER_TUN,
            client_tunnel=CLIENT_TUN,
            psk=psk,
        )
        self.ns = self.hosts.b
        self.interface = f"wgp{self.hosts.tag}"
        self.wireguard_go = WireGuardGo(self.hosts, self.ns, self.interface)

    def start(self) -> WireGuardGoPeer:
        self._namespaces += [self.hosts.a, self.hosts.b]
        self.hosts.create()
        self._files.append(self.wireguard_go.socket_path)
        self.wireguard_go.start(
            dump_setconf(self.config),
            [str(a) for a in self.config.interface.addresses],
        )
        return self

    def sh(self, script: str, timeout: float = 30) -> str:
        """Run a shell script in the peer's namespace (where its TUN is); its output."""
        return run("ip", "netns", "exec", self.ns, "sh", "-c", script, timeout=timeout).stdout

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen[Any]:
        """Start a command in the peer's namespace (a server for the client,
        say); it is ended at cleanup."""
        return self._popen(self.ns, args, kw)

    def wg(self, *args: str) -> str:
        """``wg ARGS`` on the peer (``wg("show")``)."""
        return self.wireguard_go.wg(*args)

    def close(self) -> None:
        super().close()
        self.wireguard_go.stop()
        self.hosts.destroy()


class KernelPeer(Peer):
    """Linux's WireGuard (``wg0``) in the qemu guest *vm*, with fresh keys;
    the client in the VM's namespace (loopback only), reaching the guest at
    ``127.0.0.1:vm.host_port``. The guest's shell is busybox (ping, nc, httpd)."""

    kind = "kernel"

    def __init__(self, vm: kvm.KernelVM, *, psk: bool = False) -> None:
        super().__init__(
            client_ns=vm.ns,
            endpoint=("127.0.0.1", vm.host_port),
            client_endpoint=(kvm.SLIRP_HOST, CLIENT_PORT),
            tunnel=(kvm.GUEST_TUN, kvm.GUEST_TUN6),
            client_tunnel=(kvm.HOST_TUN, kvm.HOST_TUN6),
            psk=psk,
        )
        self.vm = vm

    @property
    def endpoint_port_inside(self) -> int:
        return kvm.GUEST_WG_PORT

    def start(self) -> KernelPeer:
        self.vm.configure(
            dump_setconf(self.config),
            addresses=tuple(str(a) for a in self.config.interface.addresses),
        )
        return self

    def sh(self, script: str, timeout: float = 30) -> str:
        """Run a shell script on the guest; its output (GuestError if it fails)."""
        return self.vm.sh(script, timeout)

    def wg(self, *args: str) -> str:
        return self.vm.wg(*args)

    def made(self) -> dict[str, list[str]]:
        made = super().made()
        # The VM's, removed when the session's VM stops.
        made["namespaces"].append(self.vm.ns)
        made["paths"].append(str(self.vm.dir))
        if self.vm.proc is not None:
            made["pids"].append(str(self.vm.proc.pid))
        return made

    def close(self) -> None:
        super().close()
        # The VM outlives this peer: end what the test left in its namespace
        # (a wg-quick's wireguard-go, say) but qemu, and remove the guest's wg0.
        qemu = self.vm.proc.pid if self.vm.proc is not None else None
        kill_namespace_processes(self.vm.ns, keep={qemu} if qemu else set())
        if self.vm.proc is not None and self.vm.proc.poll() is None:
            with contextlib.suppress(kvm.GuestError):
                self.vm.sh("ip link del wg0 2>/dev/null; killall nc httpd 2>/dev/null; true")


class _LoopThread:
    """An asyncio loop in a thread of its own, for an endpoint a synchronous test uses."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def call(self, coro: Awaitable[_T], timeout: float = 30) -> _T:
        async def wrapped() -> _T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class MisbehavingPeer(Peer):
    """This project's endpoint in namespace :attr:`ns`, every datagram of it
    going through :attr:`policy` (:mod:`wireguard.misbehaviour`): the peer that
    drops, duplicates, delays, reorders, replays, corrupts or sends stale
    initiations, for testing *your* WireGuard implementation, which runs in
    :attr:`client_ns` with :attr:`client_config`.

    It runs in a thread of its own, so a synchronous test drives it; its
    userspace stack answers pings to :attr:`address` and :attr:`address6`
    and echoes TCP on :data:`ECHO_PORT`. What the policy did is in
    ``policy.log``; every datagram it saw, by direction and kind, in
    ``policy.history``. :meth:`call` runs a coroutine function on the
    endpoint's loop with the running
    :class:`~wireguard.io.rootless.RootlessTunnel`."""

    kind = "misbehaving"

    def __init__(self, policy: Policy, *, psk: bool = False, prefix: str = "pywg") -> None:
        self.hosts = Hosts(prefix)
        super().__init__(
            client_ns=self.hosts.a,
            endpoint=(UNDER_V4[1], PEER_PORT),
            client_endpoint=(UNDER_V4[0], CLIENT_PORT),
            tunnel=PEER_TUN,
            client_tunnel=CLIENT_TUN,
            psk=psk,
        )
        self.ns = self.hosts.b
        self.policy = policy
        self.tap: EndpointTap | None = None
        self.tunnel: RootlessTunnel | None = None
        self._runner: _LoopThread | None = None
        self._server: TcpServer | None = None

    def start(self) -> MisbehavingPeer:
        from ..io.rootless import RootlessTunnel
        from ..io.tap import attach

        self._namespaces += [self.hosts.a, self.hosts.b]
        # A policy given to several peers (one pytest parameter for several
        # tests, a rerun) starts afresh: "the first initiation" is this peer's.
        self.policy.reset()
        self.hosts.create()
        sock = socket_in_netns(self.ns, socket.AF_INET, PEER_PORT)
        self._runner = _LoopThread(f"misbehaving-peer-{self.hosts.tag}")

        async def begin() -> None:
            tunnel = await RootlessTunnel.from_config(self.config, sock=sock)
            self.tunnel = tunnel
            self.tap = attach(tunnel.tunnel, policy=self.policy)
            await tunnel.start()
            self._server = await tunnel.start_server(_echo, port=ECHO_PORT)

        try:
            self._runner.call(begin())
        except BaseException:
            sock.close()
            raise
        return self

    def call(self, fn: Callable[[RootlessTunnel], Awaitable[_T]], timeout: float = 30) -> _T:
        """``fn(tunnel)`` on the endpoint's loop; its result."""
        if self._runner is None or self.tunnel is None:
            raise RuntimeError("the misbehaving peer is not running")
        return self._runner.call(fn(self.tunnel), timeout)

    def close(self) -> None:
        super().close()
        if self._runner is not None:
            runner, self._runner = self._runner, None

            async def end() -> None:
                if self._server is not None:
                    self._server.close()
                if self.tunnel is not None:
                    await self.tunnel.close()
                if self.tap is not None:
                    self.tap.close()

            with contextlib.suppress(Exception):
                runner.call(end(), 10)
            runner.stop()
        self.hosts.destroy()


class RootlessClient:
    """This project's :class:`~wireguard.io.rootless.RootlessTunnel` as the
    client of :attr:`peer` (a :class:`WireGuardGoPeer`): ``async with
    client.open() as tunnel`` starts one on a socket in the client's
    namespace, configured by :attr:`config`, and closes it at the end."""

    def __init__(self, peer: WireGuardGoPeer) -> None:
        self.peer = peer

    @property
    def config(self) -> Config:
        return self.peer.client_config

    @property
    def address(self) -> str:
        """The tunnel's own address (the peer's is ``peer.address``)."""
        return self.peer.client_address

    @contextlib.asynccontextmanager
    async def open(self, **options: Any) -> AsyncIterator[RootlessTunnel]:
        from ..io.rootless import RootlessTunnel

        sock = self.peer.client_socket()
        try:
            tunnel = await RootlessTunnel.from_config(self.config, sock=sock, **options)
        except BaseException:
            sock.close()
            raise
        async with tunnel:
            yield tunnel
