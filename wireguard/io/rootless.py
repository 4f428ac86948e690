"""Rootless tunnels: asyncio streams and datagrams through WireGuard, no TUN, no privileges.

:class:`RootlessTunnel` joins two pieces that each already stand alone:

* a :class:`~wireguard.io.interface.Interface` (the sans-I/O
  :class:`~wireguard.device.Device` on a UDP socket, and optionally the ``wg``
  control socket), and
* a userspace :class:`~wireguard.netstack.NetStack` that owns the
  ``[Interface] Address`` of the configuration, bound to asyncio by
  :class:`~wireguard.io.stackdriver.StackBinding`, whose API it is.

The stack runs inside the tunnel's wake-ups (it is the tunnel's
:attr:`~wireguard.io.tunnel.Tunnel.inside`): the datagrams one wake-up reads
are opened together, their packets go to the stack in one call, the
application hears of them, one flush answers, the answer is sealed in one
batch and sent with the rest: one clock reading, one transmit, one timer
for the device and the stack. On top, the API mirrors asyncio's own::

    async with await RootlessTunnel.from_config("wg0.conf") as tunnel:
        reader, writer = await tunnel.open_connection("10.0.0.1", 80)
        server = await tunnel.start_server(handler, port=8080)   # on our address
        transport, protocol = await tunnel.create_datagram_endpoint(
            MyProtocol, remote_addr=("10.0.0.1", 53))
        rtt = await tunnel.ping("10.0.0.1")

Everything runs in the calling process as an ordinary user: the only socket is
the UDP one (an unprivileged port unless the config says otherwise). The stack
answers ICMP echo requests to its addresses, so the peer can ping us.

Hosts are IP literals or names. Names are resolved through the tunnel by the
servers of the config's ``DNS =`` line (UDP from the stack's address, TCP
when an answer is truncated; A and AAAA; a cache that honours TTLs and
negative answers; the line's search domains): see :meth:`RootlessTunnel.resolve`
and :mod:`wireguard.io.names`. Without a ``DNS =`` line a name fails with a
:class:`~wireguard.dns.ResolutionError` saying so, unless ``host_resolver=True``
asked for the host's resolver. A destination no peer's AllowedIPs cover fails
at once with ``ENETUNREACH``, as a kernel socket without a route would, rather
than after a minute of SYN retries.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..address import Address
from ..config import Config, load
from ..device import Device
from ..dns import Resolver
from ..netstack import NetStack, NetStackStats, TcpConfig
from .control import socket_path
from .interface import Interface
from .lifecycle import Lifecycle
from .names import TunnelResolver, families_for, unreachable
from .stackdriver import StackBinding, ip_literal
from .tunnel import device_from_config

__all__ = [
    "PeerStatus",
    "RootlessTunnel",
    "TunnelStatus",
    "format_bytes",
    "open_tunnel",
    "rootless_tcp_config",
]

def rootless_tcp_config() -> TcpConfig:
    """The stack's TCP defaults here: Linux's choices where they differ from the
    RFCs' conservative ones (200 ms minimum RTO, an initial window of 10
    segments per RFC 6928), and 1 MiB buffers so one connection can fill a
    path whose round trip is stretched by Python's per-packet cost."""
    return TcpConfig(
        min_rto=0.2,
        initial_window=10,
        send_buffer=1 << 20,
        receive_buffer=1 << 20,
    )


@dataclass
class PeerStatus:
    public_key: str
    endpoint: Address | None  # (host, port), or (host, port, local) from a sticky source
    last_handshake_age: float | None  # seconds since the last handshake, None if never
    rx_bytes: int
    tx_bytes: int


@dataclass
class TunnelStatus:
    addresses: list[str]
    listen_port: int
    peers: list[PeerStatus] = field(default_factory=list)
    stack: NetStackStats | None = None
    tcp_connections: int = 0
    # Nothing is dropped silently: what the UDP socket and the stack's asyncio
    # driver did not pass on, by reason (only reasons that happened).
    losses: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: the handshake state and traffic of every peer."""
        parts = []
        for p in self.peers:
            key = p.public_key[:8] + "…"
            if p.last_handshake_age is None:
                hs = "no handshake"
            else:
                hs = f"handshake {p.last_handshake_age:.0f}s ago"
            ep = f"{p.endpoint[0]}:{p.endpoint[1]}" if p.endpoint else "no endpoint"
            parts.append(
                f"peer {key} {ep} {hs}, rx {format_bytes(p.rx_bytes)} tx {format_bytes(p.tx_bytes)}"
            )
        return "; ".join(parts) if parts else "no peers"


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


class RootlessTunnel(StackBinding, Lifecycle):
    """A WireGuard endpoint with a userspace TCP/IP stack on its addresses.

    *device* is a configured :class:`Device`; *addresses* are the stack's own
    (wg-quick's ``Address``: ``"10.0.0.2/24"`` or plain addresses). *sock*,
    *listen_port* and *host* choose the UDP socket as for
    :class:`~wireguard.io.tunnel.Tunnel`. *control* publishes the ``wg``
    control socket: an interface name (``/var/run/wireguard/NAME.sock``, which
    ``wg show NAME`` finds) or a path containing ``/``; None (the default)
    opens none, since an unprivileged user cannot write /var/run/wireguard.
    *tcp_config* tunes the stack (default :func:`rootless_tcp_config`).

    Names: *dns* are the DNS servers (the config's ``DNS =`` addresses, asked
    through the tunnel), *dns_search* its search domains; *resolver* a
    configured :class:`~wireguard.dns.Resolver` instead (its timeout,
    attempts, ndots). With neither, names fail unless *host_resolver* is True
    (the host's resolver then answers them).

    The asyncio API (``open_connection``, ``create_connection``,
    ``start_server``, ``create_server``, ``create_datagram_endpoint``,
    ``ping``) is :class:`~wireguard.io.stackdriver.StackBinding`'s; a
    destination no peer's AllowedIPs cover fails at once with ENETUNREACH.
    """

    _not_running = "the rootless tunnel is not running (use `async with`)"

    def __init__(
        self,
        device: Device,
        addresses: Iterable[str | ipaddress.IPv4Interface | ipaddress.IPv6Interface],
        *,
        mtu: int | None = None,
        sock: socket.socket | None = None,
        listen_port: int | None = None,
        host: str | None = None,
        control: str | os.PathLike[str] | None = None,
        tcp_config: TcpConfig | None = None,
        random: Callable[[int], bytes] = os.urandom,
        dns: Iterable[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
        dns_search: Iterable[str] = (),
        resolver: Resolver | None = None,
        host_resolver: bool = False,
    ) -> None:
        addresses = list(addresses)
        if not addresses:
            raise ValueError("a rootless tunnel needs at least one address ([Interface] Address)")
        self.device = device
        self.mtu = mtu or device.mtu or 1420
        super().__init__(
            NetStack(
                addresses, self.mtu, tcp_config=tcp_config or rootless_tcp_config(), random=random
            )
        )
        name, control_path = "rootless", None
        if control is not None:
            text = os.fspath(control)
            if "/" in text:
                control_path = text
            else:
                socket_path(text)  # validates the name
                name = text
        self.interface = Interface(
            name,
            device,
            listen_port=listen_port,
            host=host,
            sock=sock,
            control=control is not None,
            control_path=control_path,
        )
        self.tunnel = self.interface.tunnel
        self.tunnel.inside = self
        self._started = False
        dns = list(dns)
        if resolver is None and dns:
            resolver = Resolver(dns, dns_search, random=random)
        self.names = TunnelResolver(self, resolver, host_resolver=host_resolver)
        self.config: Config | None = None  # set by from_config

    @classmethod
    async def from_config(
        cls, config: Config | str | os.PathLike[str], **options: Any
    ) -> RootlessTunnel:
        """A tunnel (not yet started) as *config* (a :class:`Config` or a file
        path) says: its ``[Interface] Address`` entries are the stack's
        addresses, its MTU the stack's MTU, ``ListenPort`` the UDP port, its
        ``DNS =`` servers and search domains the resolver's."""
        if not isinstance(config, Config):
            config = load(config)
        if not config.interface.addresses:
            raise ValueError(
                "the configuration has no [Interface] Address: the stack needs its own address"
            )
        device = await device_from_config(config)
        options.setdefault("listen_port", config.interface.listen_port or 0)
        options.setdefault("mtu", config.interface.mtu)
        if "resolver" not in options:
            options.setdefault("dns", config.interface.dns)
            options.setdefault("dns_search", config.interface.dns_search)
        tunnel = cls(device, config.interface.addresses, **options)
        tunnel.config = config  # what it was made of (endpoint names, for re-resolution)
        return tunnel

    # --------------------------------------------------------------- lifetime

    async def start(self) -> None:
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        await self.interface.start()
        self._started = True

    async def close(self) -> None:
        """Reset every connection (the RSTs leave first), then close the socket."""
        if self._closed:
            return
        if self._started:
            self._shutdown()
        self._closed = True
        await self.interface.close()

    @property
    def addresses(self) -> list[str]:
        return [str(ipaddress.ip_address(a)) for a in self.stack.addresses]

    @property
    def listen_port(self) -> int:
        return self.tunnel.listen_port

    # ---------------------------------------------------------------- packets

    def _transmit(self, packets: list[bytes], now: float) -> None:
        # A wake-up of the binding's own (application calls): sealed as one
        # batch, sent at once; the tunnel rearms its timer, the stack's too.
        self.tunnel.send_packets(packets, now)

    def _destination(self, host: str) -> str:
        address = ip_literal(host)
        if self.device.allowed_ips.lookup(address.packed) is None:
            raise OSError(
                errno.ENETUNREACH,
                f"{address} is not in any peer's AllowedIPs (network is unreachable)",
            )
        return str(address)

    def routable(self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """Whether a peer's AllowedIPs cover *address* (an IP literal)."""
        packed = ipaddress.ip_address(address).packed
        return self.device.allowed_ips.lookup(packed) is not None

    # ------------------------------------------------------------------ names

    async def resolve(self, host: str, family: int = 0) -> list[str]:
        """The addresses of *host* (a name or an IP literal), IPv4 first,
        as text: through the tunnel by the ``DNS =`` servers (or the host's
        resolver if ``host_resolver`` was asked for). *family* is
        ``socket.AF_INET``, ``AF_INET6`` or 0 for both. Raises
        :class:`~wireguard.dns.ResolutionError` with one line naming the
        name and the servers asked."""
        resolved = await self.names.resolve(host, families_for(family))
        return [str(a) for a in resolved.addresses]

    async def getaddrinfo(
        self, host: str, port: int | str | None, family: int = 0, type: int = 0, proto: int = 0,
        flags: int = 0,
    ) -> list[tuple[int, int, int, str, tuple[Any, ...]]]:  # fmt: skip
        """Like :meth:`asyncio.loop.getaddrinfo`, names resolved as by
        :meth:`resolve`; only the addresses a peer's AllowedIPs cover (those
        the tunnel can reach) are returned, or ``OSError(ENETUNREACH)``."""
        number = _port_number(port)
        addresses = await self.resolve(host, family)
        if family in (socket.AF_INET, socket.AF_INET6):  # a literal of the other family
            addresses = [a for a in addresses if (":" in a) == (family == socket.AF_INET6)]
            if not addresses:
                raise socket.gaierror(
                    socket.EAI_ADDRFAMILY, f"{host}: address family for hostname not supported"
                )
        reachable = [a for a in addresses if self.routable(a)]
        if not reachable:
            raise unreachable(host, [ipaddress.ip_address(a) for a in addresses])
        # What the tunnel carries; a type or protocol asked for narrows it,
        # as in the C library (a protocol alone: the type that it is).
        carried = (
            (socket.SOCK_STREAM, socket.IPPROTO_TCP),
            (socket.SOCK_DGRAM, socket.IPPROTO_UDP),
        )
        kinds = [(kind, p) for kind, p in carried if type in (0, kind) and proto in (0, p)]
        if not kinds:
            raise socket.gaierror(socket.EAI_SOCKTYPE, "ai_socktype not supported")
        out: list[tuple[int, int, int, str, tuple[Any, ...]]] = []
        for a in reachable:
            fam = socket.AF_INET6 if ":" in a else socket.AF_INET
            sockaddr: tuple[Any, ...] = (a, number, 0, 0) if fam == socket.AF_INET6 else (a, number)
            for kind, p in kinds:
                out.append((fam, kind, p, "", sockaddr))
        return out

    async def _reachable(self, host: str) -> list[str]:
        """*host*'s addresses that a peer's AllowedIPs cover (a literal as is,
        its check left to :meth:`_destination`)."""
        try:
            return [str(ip_literal(host))]
        except ValueError:
            pass
        resolved = await self.names.resolve(host)
        reachable = [str(a) for a in resolved.addresses if self.routable(a)]
        if not reachable:
            raise unreachable(host, resolved.addresses)
        return reachable

    async def create_connection(
        self,
        protocol_factory: Callable[[], asyncio.Protocol],
        host: str,
        port: int,
        *,
        local_port: int | None = None,
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        """Like :meth:`asyncio.loop.create_connection` through the tunnel;
        *host* an IP literal or a name (resolved by :meth:`resolve`; its
        addresses tried in turn, IPv4 first, those no peer's AllowedIPs cover
        skipped)."""
        addresses = await self._reachable(host)
        last: BaseException | None = None
        for address in addresses:
            try:
                return await super().create_connection(
                    protocol_factory, address, port, local_port=local_port
                )
            except (OSError, TimeoutError) as exc:
                last = exc
        assert last is not None
        raise last

    async def create_datagram_endpoint(
        self,
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: tuple[str | None, int] | None = None,
        remote_addr: tuple[str, int] | None = None,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        """Like :meth:`asyncio.loop.create_datagram_endpoint`; *remote_addr*'s
        host may be a name (its first address a peer's AllowedIPs cover)."""
        if remote_addr is not None:
            remote_addr = ((await self._reachable(remote_addr[0]))[0], remote_addr[1])
        return await super().create_datagram_endpoint(protocol_factory, local_addr, remote_addr)

    async def ping(self, host: str, *, timeout: float = 5.0, data: bytes = b"") -> float:
        """One echo request to *host* (an IP literal or a name)."""
        address = (await self._reachable(host))[0]
        return await super().ping(address, timeout=timeout, data=data)

    # ----------------------------------------------------------------- status

    def status(self) -> TunnelStatus:
        """Peers (endpoint, handshake age, bytes) and the stack's counters."""
        now = self._loop.time() if self._loop is not None else 0.0
        peers = [
            PeerStatus(
                public_key=str(peer.public_key),
                endpoint=peer.endpoint,
                last_handshake_age=(
                    None if peer.last_handshake is None else max(0.0, now - peer.last_handshake)
                ),
                rx_bytes=peer.rx_bytes,
                tx_bytes=peer.tx_bytes,
            )
            for peer in self.device.peers.values()
        ]
        t = self.tunnel
        losses = {
            "datagrams not sent (socket buffer full or closed)": t.dropped_datagrams,
            "datagrams the kernel refused": t.send_errors,
            "socket read errors": t.receive_errors,
            "packets out of the tunnel not queued": t.dropped_packets,
        }
        losses.update(self.drops)
        return TunnelStatus(
            addresses=self.addresses,
            listen_port=self.listen_port,
            peers=peers,
            stack=self.stack.stats,
            tcp_connections=len(self.stack.tcp_connections),
            losses={k: v for k, v in losses.items() if v},
        )


def _port_number(port: int | str | None) -> int:
    """A port as :func:`socket.getaddrinfo` takes it: a number, its text, a
    service name (``"https"``), or None / "" for 0."""
    if port is None or port == "":
        return 0
    if isinstance(port, int) or port.isdigit():
        return int(port)
    try:
        return socket.getservbyname(port)
    except OSError:
        raise socket.gaierror(socket.EAI_SERVICE, f"{port}: servname not supported") from None


async def open_tunnel(config: Config | str | os.PathLike[str], **options: Any) -> RootlessTunnel:
    """Build and start a :class:`RootlessTunnel` from *config* (use it with
    ``async with`` to close it, as with :func:`asyncio.start_server`)."""
    tunnel = await RootlessTunnel.from_config(config, **options)
    await tunnel.start()
    return tunnel
