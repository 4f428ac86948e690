"""Taps on a running endpoint's UDP socket: captures, key logs, misbehaviour.

:func:`attach` puts an :class:`EndpointTap` between a
:class:`~wireguard.io.tunnel.Tunnel` and its socket::

    tunnel = Tunnel(device, listen_port=51820)
    tap = attach(tunnel, pcap="wg.pcap", keylog="wg.keys")   # both optional
    async with tunnel:
        ...
    tap.close()

- ``pcap``: every datagram the socket sends or receives, with outer IPv4/IPv6
  and UDP headers as on the wire, raw-IP link type, stamped with the wall
  clock: classic pcap (:class:`~wireguard.capture.PcapWriter`), or pcapng
  (:class:`~wireguard.capture.PcapngWriter`) for a path ending in
  ``.pcapng``. With ``embed_keys=True`` a pcapng capture also holds the key
  log, as Decryption Secrets Blocks written before the messages they open:
  the one file opens decrypted in Wireshark (and holds private keys).
- ``keylog``: the key log Wireshark's WireGuard dissector reads
  (``wg.keylog_file``): our static private key, each peer's static public key,
  the ephemeral private key of every handshake we take part in and the peer's
  preshared key, written as each handshake starts (through
  :attr:`Device.on_ephemeral_key`). Nothing is written unless asked for, and
  the file is created mode 0600.
- ``policy``: a :class:`wireguard.misbehaviour.Policy` deciding, per datagram, what
  really goes out and what the endpoint really gets. The capture sits on the
  wire side of the policy: it shows what was sent (a duplicated message twice,
  a corrupted one corrupted) and what arrived.

The tap wraps the socket object (composition, through
:meth:`Tunnel.wrap_socket`), and stays on the new socket after a ``rebind``
(``wg set listen-port``).

Outer addresses: the socket's own address when it is bound to one; for a
wildcard-bound socket, the loopback address when talking to loopback, else
*local_address* if given, else the address the host's routing table picks
(asked once per remote host with an unconnected-then-connected UDP socket,
which sends nothing; the latest :data:`ROUTE_CACHE_SIZE` answers are kept).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import struct
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ..address import Address
from ..capture import KeyLogWriter, PcapngWriter, PcapWriter
from ..device import Device, Effects
from ..keys import PublicKey
from .deadline import DeadlineTimer
from .tunnel import Tunnel

if TYPE_CHECKING:
    from ..misbehaviour import Policy, Send

log = logging.getLogger(__name__)


# linux/udp.h: segmentation (GSO) and receive (GRO) offload, at level SOL_UDP.
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104

# The outer source addresses asked of the routing table, one per remote host
# of a wildcard-bound socket: anyone can send from ever new addresses, so only
# the latest this many answers are kept (the oldest is asked again if needed).
ROUTE_CACHE_SIZE = 1024


def _plain_host(host: str) -> str:
    host = host.split("%", 1)[0]
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


class TappedSocket:
    """A UDP socket whose ``sendto`` and ``recvfrom`` go through a tap; every
    other attribute is the real socket's."""

    def __init__(self, sock: socket.socket, tap: EndpointTap) -> None:
        self._sock = sock
        self._tap = tap
        self._ready: deque[tuple[bytes, Any]] = deque()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    @property
    def real_socket(self) -> socket.socket:
        return self._sock

    def setsockopt(self, level: int, name: int, *value: Any) -> None:
        # Receive offload would hand over several datagrams in one buffer; the
        # tap sees (and the policy acts on) one datagram at a time.
        if level == SOL_UDP and name == UDP_GRO:
            raise OSError(errno.ENOPROTOOPT, "a tapped socket takes datagrams one by one")
        self._sock.setsockopt(level, name, *value)

    def sendto(self, data: bytes, address: Any) -> int:
        self._tap._outgoing(bytes(data), address)
        return len(data)

    def sendmsg(self, buffers: Any, ancdata: Any = (), flags: int = 0, address: Any = None) -> int:
        """A send with UDP segmentation offload is the datagrams it stands
        for: each goes through the tap on its own, as it would be on the wire."""
        data = b"".join(bytes(b) for b in buffers)
        size = 0
        for level, kind, value in ancdata:
            if level == SOL_UDP and kind == UDP_SEGMENT:
                size = struct.unpack_from("=H", value)[0]
            else:
                raise OSError(errno.EOPNOTSUPP, "a tapped socket sends no other control data")
        step = size or len(data) or 1
        for i in range(0, max(len(data), 1), step):
            self._tap._outgoing(data[i : i + step], address)
        return len(data)

    def recvfrom(self, bufsize: int) -> tuple[bytes, Any]:
        while True:
            if self._ready:
                return self._ready.popleft()
            data, address = self._sock.recvfrom(bufsize)  # BlockingIOError ends a batch
            self._ready.extend(self._tap._incoming(data, address))

    def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0) -> tuple[Any, ...]:
        data, address = self.recvfrom(bufsize)
        return data, [], 0, address

    def recvmsg_into(
        self, buffers: Any, ancbufsize: int = 0, flags: int = 0
    ) -> tuple[int, list[Any], int, Any]:
        target = memoryview(buffers[0])
        data, address = self.recvfrom(len(target))
        n = min(len(data), len(target))
        target[:n] = data[:n]
        return n, [], 0, address


class EndpointTap:
    """Capture, key log and misbehaviour policy of one endpoint; see the
    module docstring. Use :func:`attach`."""

    def __init__(
        self,
        device: Device,
        *,
        pcap: str | os.PathLike[str] | PcapWriter | PcapngWriter | None = None,
        keylog: str | os.PathLike[str] | KeyLogWriter | None = None,
        policy: Policy | None = None,
        local_address: str | None = None,
        clock: Any = time.time,
        embed_keys: bool = False,
    ) -> None:
        self.device = device
        self.tunnel: Tunnel | None = None
        if embed_keys and not _is_pcapng(pcap):  # refused before any file is opened
            raise ValueError("embedding keys needs a pcapng capture (a path ending in .pcapng)")
        self.pcap = _capture_writer(pcap)
        self.embed_keys = embed_keys
        if embed_keys and isinstance(self.pcap, PcapngWriter):
            # First in the file: the static key opens an initiation the peer
            # sends before this endpoint has made any ephemeral key.
            self.pcap.log_local_static_private_key(device.private_key)
        self.keylog = (
            keylog if isinstance(keylog, KeyLogWriter) or keylog is None else KeyLogWriter(keylog)
        )
        self.policy = policy.bind(device) if policy is not None else None
        self.local_address = local_address
        self.clock = clock
        self.sent = 0
        self.received = 0
        self.send_errors = 0
        self.capture_errors = 0  # datagrams the pcap could not be written with
        self._sock: socket.socket | None = None
        self._routes: dict[str, str] = {}
        self._timer: DeadlineTimer | None = None  # made with the running loop
        self._logged_remote: set[PublicKey] = set()
        self._chained = device.on_ephemeral_key
        if self.keylog is not None or embed_keys:
            device.on_ephemeral_key = self._on_ephemeral_key

    # --- key log ----------------------------------------------------------------

    def _on_ephemeral_key(self, peer_key: PublicKey, ephemeral: bytes) -> None:
        if self._chained is not None:
            self._chained(peer_key, ephemeral)
        sinks: list[KeyLogWriter | PcapngWriter] = []
        if self.keylog is not None:
            sinks.append(self.keylog)
        if self.embed_keys and isinstance(self.pcap, PcapngWriter):
            sinks.append(self.pcap)  # before the message that uses the key
        peer = self.device.peers.get(peer_key)
        # The dissector ties a PRESHARED_KEY line to the ephemeral key logged
        # just before it, so each handshake gets its own group of lines.
        for sink in sinks:
            sink.log_handshake(
                local_static_private=self.device.private_key,
                remote_static_public=peer_key,
                local_ephemeral_private=ephemeral,
                preshared_key=peer.preshared_key if peer is not None else None,
            )

    # --- wrapping -----------------------------------------------------------------

    def wrap(self, sock: socket.socket) -> TappedSocket:
        self._sock = sock
        return TappedSocket(sock, self)

    def close(self) -> None:
        """Flush and close the capture and the key log; detach the key-log hook."""
        if self._timer is not None:
            self._timer.cancel()
        if self.device.on_ephemeral_key == self._on_ephemeral_key:
            self.device.on_ephemeral_key = self._chained
        if self.pcap is not None:
            self.pcap.close()
            self.pcap = None
        if self.keylog is not None:
            self.keylog.close()
            self.keylog = None

    # --- addresses for the capture ------------------------------------------------

    def _local(self, peer_host: str) -> tuple[str, int]:
        sock = self._sock
        assert sock is not None
        bound = sock.getsockname()
        host, port = _plain_host(bound[0]), bound[1]
        peer_ip = ipaddress.ip_address(peer_host)
        if not ipaddress.ip_address(host).is_unspecified:
            return host, port
        if peer_ip.is_loopback:
            return ("127.0.0.1" if peer_ip.version == 4 else "::1"), port
        if self.local_address is not None:
            return self.local_address, port
        cached = self._routes.get(peer_host)
        if cached is None:
            family = socket.AF_INET if peer_ip.version == 4 else socket.AF_INET6
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as probe:
                    probe.connect((peer_host, 9))  # no datagram is sent by connect
                    cached = _plain_host(probe.getsockname()[0])
            except OSError:
                cached = "0.0.0.0" if peer_ip.version == 4 else "::"
            if len(self._routes) >= ROUTE_CACHE_SIZE:
                del self._routes[next(iter(self._routes))]  # the oldest
            self._routes[peer_host] = cached
        return cached, port

    def _capture(self, src: Address, dst: Address, data: bytes) -> None:
        if self.pcap is None:
            return
        try:
            self.pcap.write_udp(self.clock(), src, dst, data)
        except (ValueError, OSError) as exc:
            # The datagram went through; only the capture misses it.
            self.capture_errors += 1
            log.debug("capture: %s", exc)

    # --- the datagram paths -------------------------------------------------------

    def _wire_send(self, data: bytes, address: Any) -> None:
        sock = self._sock
        tunnel = self.tunnel
        if sock is None:
            self.send_errors += 1  # the tunnel is not started, or closed
            if tunnel is not None:
                tunnel.dropped_datagrams += 1  # as the tunnel counts a send with no socket
            return
        try:
            sock.sendto(data, address)
        except OSError as exc:
            self.send_errors += 1
            # Counted where the tunnel counts its own (its counters() are what
            # the status, the interface's log and /metrics show).
            if tunnel is not None:
                if isinstance(exc, (BlockingIOError, InterruptedError)):
                    tunnel.dropped_datagrams += 1  # a full send buffer
                else:
                    tunnel.send_errors += 1
            log.debug("UDP send to %s failed: %s", address, exc)
            return
        self.sent += 1
        if self.pcap is not None:
            host = _plain_host(address[0])
            self._capture(self._local(host), (host, address[1]), data)

    def _outgoing(self, data: bytes, address: Any) -> None:
        policy = self.policy
        if policy is None:
            self._wire_send(data, address)
            return
        host = _plain_host(address[0])
        now = self._now()
        for send in policy.outgoing(data, (host, address[1]), now):
            target = address if send.address == (host, address[1]) else self._sock_address(send)
            if send.at <= now:
                self._wire_send(send.data, target)
            else:
                self._later(send.at, self._wire_send, send.data, target)
        self._rearm()

    def _incoming(self, data: bytes, address: Any) -> list[tuple[bytes, Any]]:
        self.received += 1
        host = _plain_host(address[0])
        if self.pcap is not None:
            self._capture((host, address[1]), self._local(host), data)
        policy = self.policy
        if policy is None:
            return [(data, address)]
        now = self._now()
        ready = []
        for send in policy.incoming(data, (host, address[1]), now):
            if send.at <= now:
                ready.append((send.data, address))
            else:
                self._later(send.at, self._inject, send.data, send.address)
        self._rearm()
        return ready

    def _sock_address(self, send: Send) -> Any:
        host, port = send.address[0], send.address[1]
        sock = self._sock
        if sock is not None and sock.family == socket.AF_INET6 and ":" not in host:
            host = "::ffff:" + host
        return (host, port)

    def _inject(self, data: bytes, address: Address) -> None:
        """A held incoming datagram reaches the endpoint now."""
        tunnel = self.tunnel
        if tunnel is None:
            return
        out = Effects()
        tunnel.device.receive_datagram(data, address, tunnel.now, out)
        tunnel.apply(out)

    # --- time -------------------------------------------------------------------------

    def _now(self) -> float:
        if self.tunnel is not None and self.tunnel.started:
            return self.tunnel.now
        return asyncio.get_running_loop().time()

    def _later(self, when: float, fn: Any, *args: Any) -> None:
        asyncio.get_running_loop().call_at(when, fn, *args)

    def _rearm(self) -> None:
        policy = self.policy
        if policy is None:
            return
        if self._timer is None:
            self._timer = DeadlineTimer(asyncio.get_running_loop(), self._on_timer)
        self._timer.set(policy.next_deadline())

    def _on_timer(self, _at: float) -> None:
        policy = self.policy
        if policy is None:
            return
        for direction, send in policy.poll(self._now()):
            if direction == "out":
                self._wire_send(send.data, self._sock_address(send))
            else:
                self._inject(send.data, send.address)
        self._rearm()


def _is_pcapng(pcap: str | os.PathLike[str] | PcapWriter | PcapngWriter | None) -> bool:
    if pcap is None or isinstance(pcap, (PcapWriter, PcapngWriter)):
        return isinstance(pcap, PcapngWriter)
    return os.fspath(pcap).endswith(".pcapng")


def _capture_writer(
    pcap: str | os.PathLike[str] | PcapWriter | PcapngWriter | None,
) -> PcapWriter | PcapngWriter | None:
    if pcap is None or isinstance(pcap, (PcapWriter, PcapngWriter)):
        return pcap
    return PcapngWriter(pcap) if os.fspath(pcap).endswith(".pcapng") else PcapWriter(pcap)


def attach(
    tunnel: Tunnel,
    *,
    pcap: str | os.PathLike[str] | PcapWriter | PcapngWriter | None = None,
    keylog: str | os.PathLike[str] | KeyLogWriter | None = None,
    policy: Policy | None = None,
    local_address: str | None = None,
    embed_keys: bool = False,
) -> EndpointTap:
    """Tap *tunnel*'s socket (see the module docstring). Call it before or
    after the tunnel starts; a tunnel without a socket yet gets its socket
    made now, on the port it was given. A tunnel already tapped is refused
    before the files are opened (so the first tap's capture is left alone)."""
    if tunnel.socket_wrapped:
        raise ValueError("this tunnel is already tapped")
    tap = EndpointTap(
        tunnel.device,
        pcap=pcap,
        keylog=keylog,
        policy=policy,
        local_address=local_address,
        embed_keys=embed_keys,
    )
    tap.tunnel = tunnel
    tunnel.wrap_socket(tap.wrap)  # type: ignore[arg-type]
    return tap


__all__ = ["ROUTE_CACHE_SIZE", "EndpointTap", "TappedSocket", "attach"]
