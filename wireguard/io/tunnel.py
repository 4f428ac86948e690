"""The asyncio binding: a UDP socket driving a :class:`~wireguard.device.Device`.

:class:`Tunnel` owns one dual-stack UDP socket (IPv6 with IPv4-mapped
addresses, so one socket serves both families; plain IPv4 where the host has
no IPv6), feeds every datagram to the device, sends what the device asks for,
and wakes the device exactly at :meth:`Device.next_deadline` with
``loop.call_at``: no polling loop. IP packets go into the tunnel with
:meth:`Tunnel.send_packet` and come out of :meth:`Tunnel.recv_packet` (or a
callback), so an application can speak IP through WireGuard with no TUN device
and no privileges.

Time for the device is ``loop.time()`` (monotonic); its wall-clock offset is
set so TAI64N timestamps are real time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from types import TracebackType

from ..config import Config
from ..device import Device, Effects, Event
from ..keys import PresharedKey

log = logging.getLogger("wireguard")

Address = tuple[str, int]


def _plain(address: tuple) -> Address:  # type: ignore[type-arg]
    """The device's form of a socket address: IPv4-mapped IPv6 as IPv4,
    no flow info or scope id."""
    host, port = address[0], address[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, port


async def resolve_endpoint(host: str, port: int) -> Address:
    """Resolve a config Endpoint host (name or literal) to one address,
    preferring IPv4 as wg does when both exist."""
    try:
        ipaddress.ip_address(host)
        return host, port
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"cannot resolve endpoint host {host!r}")
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return _plain(infos[0][4])


class Tunnel:
    """A running WireGuard endpoint on a UDP socket.

    ``async with Tunnel(device, listen_port=51820) as tunnel:`` binds, and
    closes on exit. *host* defaults to all addresses of both families.
    """

    def __init__(
        self,
        device: Device,
        *,
        listen_port: int | None = None,
        host: str | None = None,
        on_packet: Callable[[bytes], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
        queue_size: int = 4096,
        sock: socket.socket | None = None,
    ) -> None:
        self.device = device
        self._listen_port = listen_port if listen_port is not None else (device.listen_port or 0)
        self._host = host
        # A socket made by the caller: e.g. inside another network namespace.
        self._sock = sock
        self.on_packet = on_packet
        self.on_event = on_event
        self._packets: asyncio.Queue[bytes] = asyncio.Queue(queue_size)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._family = socket.AF_INET6
        self._closed = asyncio.Event()
        self.dropped_packets = 0
        self.dropped_datagrams = 0
        self.batch = 256
        self.events: list[Event] = []

    # --- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.device.wall_clock_offset = time.time() - self._loop.time()
        sock = self._sock if self._sock is not None else self._make_socket(self._listen_port)
        self._attach(sock)
        self._reschedule()

    def _attach(self, sock: socket.socket) -> None:
        assert self._loop is not None
        sock.setblocking(False)
        self._sock = sock
        self._family = sock.family
        self._loop.add_reader(sock.fileno(), self._on_readable)
        self.device.listen_port = self.listen_port

    def _detach(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()

    def _make_socket(self, port: int) -> socket.socket:
        host = self._host
        if host is None or ":" in host:
            try:
                sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                try:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                    sock.bind((host or "::", port))
                except OSError:
                    sock.close()
                    raise
                return sock
            except OSError:
                if host is not None:
                    raise
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((host or "0.0.0.0", port))
        except OSError:
            sock.close()
            raise
        return sock

    @property
    def listen_port(self) -> int:
        if self._sock is None:
            return self._listen_port
        return int(self._sock.getsockname()[1])

    def rebind(self, port: int) -> int:
        """Move to another UDP port (``wg set NAME listen-port``); returns the
        port bound. Raises OSError (and changes nothing) if it is taken."""
        sock = self._make_socket(port)
        self._listen_port = port
        if self._loop is None:
            sock.close()
            return port
        self._detach()
        self._attach(sock)
        return self.listen_port

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._detach()
        self._closed.set()

    async def __aenter__(self) -> Tunnel:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def now(self) -> float:
        assert self._loop is not None, "the tunnel is not started"
        return self._loop.time()

    # --- packets -----------------------------------------------------------

    def send_packet(self, packet: bytes) -> None:
        """Send an IP packet into the tunnel (routed by its destination)."""
        self.apply(self.device.send_packet(packet, self.now))

    async def recv_packet(self) -> bytes:
        """The next IP packet that came out of the tunnel."""
        return await self._packets.get()

    def initiate_handshake(self, peer) -> None:  # type: ignore[no-untyped-def]
        self.apply(self.device.initiate_handshake(peer, self.now))

    # --- driving the device ------------------------------------------------

    def _on_readable(self) -> None:
        """Read every datagram waiting (up to a batch), then act once: one
        Effects and one timer update per wake-up, not per datagram."""
        sock = self._sock
        if sock is None:
            return
        device = self.device
        out = Effects()
        now = self.now
        recv = sock.recvfrom
        for _ in range(self.batch):
            try:
                data, addr = recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ICMP errors surface here on Linux
                log.debug("UDP receive error: %s", exc)
                break
            device.receive_datagram(data, _plain(addr), now, out)
        self.apply(out)

    def apply(self, effects: Effects) -> None:
        """Carry out what the device decided, then rearm the timer."""
        sock = self._sock
        if sock is not None:
            v6 = self._family == socket.AF_INET6
            send = sock.sendto
            for data, (host, port) in effects.datagrams:
                if v6 and ":" not in host:
                    host = "::ffff:" + host
                try:
                    send(data, (host, port))
                except (BlockingIOError, InterruptedError):
                    self.dropped_datagrams += 1  # a full socket buffer drops, as UDP does
                except OSError as exc:
                    log.debug("UDP send to %s:%s failed: %s", host, port, exc)
        for packet in effects.packets:
            if self.on_packet is not None:
                self.on_packet(packet)
            else:
                try:
                    self._packets.put_nowait(packet)
                except asyncio.QueueFull:
                    self.dropped_packets += 1
        for event in effects.events:
            log.info("%s", event)
            self.events.append(event)
            if self.on_event is not None:
                self.on_event(event)
        self._reschedule()

    def _reschedule(self) -> None:
        loop = self._loop
        if loop is None or self._sock is None:
            return
        deadline = self.device.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = loop.call_at(deadline, self._on_timer) if deadline is not None else None

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self.apply(self.device.handle_timer(self.now))


async def device_from_config(config: Config, **device_options) -> Device:  # type: ignore[no-untyped-def]
    """A Device configured as *config* says (endpoints resolved here, since
    resolution is I/O). The interface needs a private key."""
    if config.interface.private_key is None:
        raise ValueError("the configuration has no PrivateKey")
    mtu = config.interface.mtu or 1420
    device = Device(config.interface.private_key, mtu=mtu, **device_options)
    device.listen_port = config.interface.listen_port
    device.fwmark = config.interface.fwmark or 0
    loop = asyncio.get_running_loop()
    for peer in config.peers:
        endpoint = None
        if peer.endpoint is not None:
            endpoint = await resolve_endpoint(peer.endpoint.host, peer.endpoint.port)
        device.add_peer(
            peer.public_key,
            preshared_key=peer.preshared_key or PresharedKey.zero(),
            allowed_ips=[str(n) for n in peer.allowed_ips],
            endpoint=endpoint,
            persistent_keepalive=peer.persistent_keepalive or 0,
            now=loop.time() if peer.persistent_keepalive else None,
        )
    return device
