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

The data path works in batches: each wake-up reads every datagram waiting,
feeds them all to the device with one :class:`~wireguard.device.Effects`, and
acts once. Where the kernel offers them, the socket uses UDP segmentation
offload (GSO: a run of equal-size datagrams to one endpoint leaves in one
``sendmsg`` with a ``UDP_SEGMENT`` control message, and the kernel cuts it)
and receive offload (GRO: ``UDP_GRO`` lets the kernel hand over several
datagrams of one flow in one buffer, with their size in a control message;
the device opens a wake-up's reads where they lie, ``Device.receive_reads``).
Either falls back to one system call per datagram when it is missing or the
kernel refuses it.

Sticky sources (``sticky=True``, as the TUN binding runs it): the socket
asks for each datagram's local address (``IPV6_RECVPKTINFO``, or
``IP_PKTINFO`` on an IPv4 socket) and hands the device sources of the form
``(host, port, local)`` (see :mod:`wireguard.address`); a datagram to such an
endpoint leaves with that local address as its source (``IPV6_PKTINFO`` /
``IP_PKTINFO`` on ``sendmsg``), so a peer that reached one address of a
multi-homed host hears back from that address, as from the kernel module and
wireguard-go. If the kernel refuses the source (the address was removed from
the host: ``EINVAL``, or ``ENETUNREACH`` for IPv4 through a dual-stack
socket), the datagram is sent again with the source the kernel picks, and
the device forgets that local address for every peer
(:meth:`Device.clear_endpoint_sources`), as the kernel's ``send4``/``send6``
clear ``endpoint->src``; so do a new listen port and a new firewall mark.

A userspace network stack runs inside the tunnel (:attr:`Tunnel.inside`, see
:class:`Inside`): the packets a wake-up opens go to it in one call, and its
answer is sealed in one batch and leaves with the same transmit, on the same
``now`` and the same timer.

Events (handshakes, roaming, expiry) go to whoever asked for them: the
``on_event`` callback and each :meth:`Tunnel.subscribe` stream open at the
time; the tunnel keeps no history. They are logged at INFO on the
``wireguard`` logger, endpoint changes at most once per peer every
:attr:`Tunnel.endpoint_log_interval` seconds, the next line counting those
not logged (a peer whose source flips with every packet must not write a line
per packet).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol, Self

from ..address import Address
from ..config import Config, ConfigWarning
from ..crypto import slow_aead_note
from ..device import Device, Effects, EndpointChanged, Event
from ..keys import PresharedKey, PublicKey
from .deadline import DeadlineTimer
from .lifecycle import Lifecycle
from .resolve import resolve_endpoint

log = logging.getLogger(__name__)
_aead_checked = False


def _note_slow_aead() -> None:
    """Log :func:`~wireguard.crypto.slow_aead_note`, once per process."""
    global _aead_checked
    if not _aead_checked:
        _aead_checked = True
        note = slow_aead_note()
        if note is not None:
            log.warning("%s", note)


# linux/udp.h: options at level SOL_UDP (17).
SOL_UDP = 17
UDP_SEGMENT = 103
_RX_POOL = 16  # receive buffers of 64 KiB for one wake-up's GRO reads (see Tunnel)
UDP_GRO = 104
# The kernel takes at most 64 segments per GSO send (UDP_MAX_SEGMENTS; 128
# on newer kernels) and at most 64 KB in all.
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000
# Socket buffers as wireguard-go asks for them (conn/controlfns_linux.go).
SOCKET_BUFFER = 7 << 20
_native_u16 = struct.Struct("=H").pack
_native_i32 = struct.Struct("=i").unpack_from
# Errors meaning "this socket or route cannot do GSO": fall back for good.
_GSO_ERRORS = (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP)
# Sticky sources: linux/in6.h and linux/in.h.
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_V4_MAPPED = bytes(10) + b"\xff\xff"
# What the kernel answers a send from an address that is not (any more) one
# of the host's: EINVAL (IPv6), ENETUNREACH (IPv4, through a dual-stack socket).
_SOURCE_ERRORS = (errno.EINVAL, errno.EADDRNOTAVAIL, errno.ENETUNREACH)


def _plain(address: tuple[Any, ...]) -> tuple[str, int]:
    """The device's form of a socket address: IPv4-mapped IPv6 as IPv4,
    no flow info or scope id."""
    host, port = address[0], address[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, port


class Inside(Protocol):
    """What runs inside a tunnel in the tunnel's own wake-ups (a userspace
    network stack: :class:`~wireguard.io.stackdriver.StackBinding`). The
    packets out of the tunnel go in, and what it answers is sealed and sent
    in the same wake-up, with the same ``now``; its deadline shares the
    tunnel's one timer."""

    def receive_packets(self, packets: list[bytes], now: float) -> list[bytes]:
        """Take packets out of the tunnel; return packets to put into it."""

    def handle_timer(self, now: float) -> list[bytes]:
        """Run what is due at *now*; return packets to put into the tunnel."""

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` is due, or None."""


class EventStream:
    """The events of one :class:`Tunnel` from :meth:`Tunnel.subscribe` until
    :meth:`close` (or the tunnel's close): ``async for event in stream``,
    ``await stream.get()``, or :meth:`drain` for what has arrived.

    At most *maxsize* events wait; beyond that the oldest is dropped and
    counted in :attr:`dropped`, so a subscriber that stops reading costs a
    bounded amount of memory. ``with tunnel.subscribe() as stream:`` closes it.
    """

    def __init__(self, tunnel: Tunnel, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("an event stream holds at least one event")
        self._tunnel = tunnel
        self._items: deque[Event] = deque()
        self.maxsize = maxsize
        self.dropped = 0
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None

    def _put(self, event: Event) -> None:
        if len(self._items) >= self.maxsize:
            self._items.popleft()
            self.dropped += 1
        self._items.append(event)
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __len__(self) -> int:
        return len(self._items)

    def drain(self) -> list[Event]:
        """Every event waiting, oldest first (the stream is empty after)."""
        items = list(self._items)
        self._items.clear()
        return items

    async def get(self) -> Event:
        """The next event; raises :class:`EOFError` once the stream is closed
        and empty."""
        while not self._items:
            if self.closed:
                raise EOFError("the event stream is closed")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._items.popleft()

    def close(self) -> None:
        """Stop receiving events (those waiting can still be read)."""
        if not self.closed:
            self.closed = True
            self._tunnel._unsubscribe(self)
            self._wake()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.get()
        except EOFError:
            raise StopAsyncIteration from None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Tunnel(Lifecycle):
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
        sticky: bool = False,
    ) -> None:
        self.device = device
        self._listen_port = listen_port if listen_port is not None else (device.listen_port or 0)
        self._host = host
        # A socket made by the caller: e.g. inside another network namespace.
        self._sock = sock
        self.on_packet = on_packet
        self.on_event = on_event
        self._packets: asyncio.Queue[bytes | None] = asyncio.Queue(queue_size)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: DeadlineTimer | None = None
        self._family = socket.AF_INET6
        self._closed = asyncio.Event()
        self.dropped_packets = 0
        self.dropped_datagrams = 0
        #: Wake-ups that read datagrams, and the datagrams they read.
        self.wakeups = 0
        self.datagrams_read = 0
        self.batch = 256
        self.send_errors = 0  # datagrams the kernel refused (other than a full buffer)
        self.receive_errors = 0  # errors reading the socket (see _receive_failed)
        self._streams: list[EventStream] = []
        # Endpoint changes: at most one log line per peer this often.
        self.endpoint_log_interval = 10.0
        self._endpoint_logged: dict[PublicKey, tuple[float, int]] = {}
        # A batch consumer for packets out of the tunnel (a TUN writes them
        # with one call); takes precedence over on_packet and the queue.
        self.on_packets: Callable[[list[bytes]], None] | None = None
        # What runs inside the tunnel in its wake-ups (see Inside): takes
        # the packets before anything above, answers in the same transmit.
        self.inside: Inside | None = None
        # Offloads: wanted (switch off with WG_PY_UDP_GSO=0 / WG_PY_UDP_GRO=0);
        # gso turns False for good if the kernel refuses it.
        self.gso = os.environ.get("WG_PY_UDP_GSO", "1") != "0"
        self.gro = os.environ.get("WG_PY_UDP_GRO", "1") != "0"
        self._gro_on = False
        self._sockaddrs: dict[Address, tuple] = {}  # type: ignore[type-arg]
        self._wrap: Callable[[socket.socket], socket.socket] | None = None
        self._fwmark = 0
        # Sticky sources (see the module): wanted, and on for this socket.
        self.sticky = sticky
        self._pktinfo_on = False
        self._pktinfo_level = 0
        self._anc_space = self._gro_space
        # Receive buffers for the GRO reads of a wake-up, reused: a fresh
        # 64 KiB object per read made the allocator give memory back and fault
        # it in again (about 26,000 page faults a second at 800 Mbit/s). The
        # device opens a wake-up's reads where they lie, in one call, so each
        # read of several datagrams keeps its buffer until then; the pool
        # grows to _RX_POOL buffers, and a wake-up with more such reads hands
        # them over in several calls.
        self._rx_pool: list[bytearray] = [bytearray(65535)]
        self._rx_views: list[memoryview] = [memoryview(self._rx_pool[0])]
        self._locals: dict[bytes, str] = {}  # PKTINFO data -> local address
        self._source_anc: dict[str, list[tuple[int, int, bytes]]] = {}  # local -> cmsg
        self._failed_sources: set[str] = set()  # refused during this apply()
        #: Datagrams sent again without their sticky source because the
        #: kernel refused it (the address went away).
        self.source_fallbacks = 0
        # Between close_socket() and open_socket() (the interface is down).
        self._listening = True

    # --- lifecycle ---------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._loop is not None

    @property
    def gro_active(self) -> bool:
        """Whether the kernel hands us coalesced datagrams (UDP GRO)."""
        return self._gro_on

    def set_fwmark(self, mark: int) -> None:
        """Mark the tunnel's datagrams (SO_MARK, for policy routing), now and
        after every :meth:`rebind`, as wireguard-go keeps its fwmark. Raises
        OSError (and keeps the old mark) if the kernel refuses it. Sticky
        sources are forgotten (routes may differ under the new mark)."""
        if self._sock is not None:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        if mark != self._fwmark:
            self.device.clear_endpoint_sources()
        self._fwmark = mark

    @property
    def socket_wrapped(self) -> bool:
        """Whether :meth:`wrap_socket` was called (one wrapper per tunnel)."""
        return self._wrap is not None

    def wrap_socket(self, wrap: Callable[[socket.socket], socket.socket]) -> None:
        """Send and receive through ``wrap(sock)`` instead of the UDP socket
        itself, from now on and after every :meth:`rebind` (how
        :mod:`wireguard.io.tap` captures and misbehaves). The wrapper must
        keep the socket's file descriptor. One wrapper per tunnel."""
        if self._wrap is not None:
            raise ValueError("this tunnel's socket is already wrapped")
        self._wrap = wrap
        if self._loop is not None and self._sock is not None:
            if self._gro_on:
                # Read whole from now on: the wrapper sees each datagram (a
                # wrapper that takes GRO buffers is not one this supports).
                self._sock.setsockopt(SOL_UDP, UDP_GRO, 0)
                self._gro_on = False
            self._sock = wrap(self._sock)

    async def start(self, *, listen: bool = True) -> None:
        """Bind (or take the socket given) and start serving; with
        ``listen=False`` the tunnel starts without a socket, as if
        :meth:`close_socket` had been called, until :meth:`open_socket`."""
        _note_slow_aead()
        self._loop = asyncio.get_running_loop()
        self._timer = DeadlineTimer(self._loop, self._on_timer)
        self.device.wall_clock_offset = time.time() - self._loop.time()
        if not listen and self._sock is None:
            self._listening = False
            return
        sock = self._sock if self._sock is not None else self._make_socket(self._listen_port)
        self._attach(sock)
        self._reschedule()

    @property
    def listening(self) -> bool:
        """Whether the UDP socket is open (see :meth:`close_socket`)."""
        return self._sock is not None

    def close_socket(self) -> None:
        """Stop listening (the interface went down): the socket is closed and
        the timer stopped; datagrams the device asks for meanwhile are
        counted in :attr:`dropped_datagrams`. The port is kept for
        :meth:`open_socket`; :meth:`rebind` only records a new one."""
        self._listening = False
        if self._timer is not None:
            self._timer.cancel()
        self._detach()

    def open_socket(self) -> int:
        """Listen again on the recorded port (0: any); returns the port.
        Raises OSError (and stays closed) if it cannot be bound."""
        if self._sock is None:
            assert self._loop is not None, "the tunnel is not started"
            sock = self._make_socket(self._listen_port)
            self._attach(sock)
        self._listening = True
        self._reschedule()
        return self.listen_port

    def _attach(self, sock: socket.socket) -> None:
        assert self._loop is not None
        sock.setblocking(False)
        self._sock = sock
        self._family = sock.family
        self._sockaddrs.clear()
        _grow_buffers(sock)
        # Receive offload through the wrapper, which may refuse it (a tap
        # takes datagrams one by one).
        wrapped = self._wrap(sock) if self._wrap is not None else sock
        self._gro_on = False
        if self.gro:
            try:
                wrapped.setsockopt(SOL_UDP, UDP_GRO, 1)
                self._gro_on = True
            except OSError:
                pass
        self._pktinfo_on = False
        self._locals.clear()
        self._source_anc.clear()
        if self.sticky:
            v6 = sock.family == socket.AF_INET6
            try:
                if v6:
                    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
                else:
                    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                self._pktinfo_on = True
                self._pktinfo_level = socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP
            except OSError as exc:
                log.info("sticky sources unavailable (%s)", exc.strerror)
        self._anc_space = self._gro_space + (self._pktinfo_space if self._pktinfo_on else 0)
        if self._fwmark:
            with contextlib.suppress(OSError):  # it was accepted on the old socket
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self._fwmark)
        self._loop.add_reader(sock.fileno(), self._on_readable)
        self._sock = wrapped
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
        port bound. Raises OSError (and changes nothing) if it is taken.
        While the socket is closed (:meth:`close_socket`) the port is only
        recorded, as the kernel does for an interface that is down."""
        if self._loop is not None and not self._listening:
            self._listen_port = port
            self.device.clear_endpoint_sources()
            return port
        sock = self._make_socket(port)
        self._listen_port = port
        if self._loop is None:
            sock.close()
            return port
        self._detach()
        self._attach(sock)
        self.device.clear_endpoint_sources()
        return self.listen_port

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._detach()
        for stream in list(self._streams):
            stream.close()
        for peer, (_, unlogged) in self._endpoint_logged.items():
            if unlogged:
                log.info("peer %s: %d more endpoint changes not logged", peer, unlogged)
        self._endpoint_logged.clear()
        self._closed.set()
        with contextlib.suppress(asyncio.QueueFull):  # full: no reader is waiting
            self._packets.put_nowait(None)  # wakes a reader waiting: the end

    def receive_buffer_drops(self) -> int | None:
        """Datagrams the kernel dropped because this socket's receive buffer
        was full (the ``drops`` column of ``/proc/net/udp6`` or ``udp`` for
        this socket); None without a socket or where that is not readable.
        Counted from when the socket was opened."""
        sock = self._sock
        if sock is None:
            return None
        try:
            inode = str(os.fstat(sock.fileno()).st_ino)
            table = "/proc/net/udp6" if self._family == socket.AF_INET6 else "/proc/net/udp"
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if len(fields) > 12 and fields[9] == inode:
                        return int(fields[-1])
        except (OSError, ValueError, StopIteration):
            pass
        return None

    def counters(self) -> dict[str, int]:
        """What this tunnel's socket lost, by stage: ``udp_send_buffer_full``
        (a full send buffer: the datagrams are dropped, as UDP does),
        ``udp_send_errors`` (refused otherwise), ``udp_receive_errors``
        (errors reading; none expected, see :meth:`_receive_failed`), ``udp_receive_buffer_full``
        (dropped by the kernel before we read them), ``packets_queue_full``
        (out of the tunnel with nobody reading :meth:`recv_packet`)."""
        found = {
            "udp_send_buffer_full": self.dropped_datagrams,
            "udp_send_errors": self.send_errors,
            "udp_receive_errors": self.receive_errors,
            "packets_queue_full": self.dropped_packets,
        }
        drops = self.receive_buffer_drops()
        if drops is not None:
            found["udp_receive_buffer_full"] = drops
        return found

    @property
    def now(self) -> float:
        assert self._loop is not None, "the tunnel is not started"
        return self._loop.time()

    # --- packets -----------------------------------------------------------

    def send_packet(self, packet: bytes) -> None:
        """Send an IP packet into the tunnel (routed by its destination)."""
        self.apply(self.device.send_packet(packet, self.now))

    def send_packets(self, packets: list[bytes], now: float | None = None) -> None:
        """Send IP packets into the tunnel, sealed and sent together (at
        *now*, default the loop's time)."""
        if now is None:
            now = self.now
        self.apply(self.device.send_packets(packets, now), now)

    async def recv_packet(self) -> bytes:
        """The next IP packet that came out of the tunnel; raises
        :class:`EOFError` once the tunnel is closed and none is left (as
        :meth:`EventStream.get` does), also in a reader waiting then."""
        packets = self._packets
        if packets.empty() and self._closed.is_set():
            raise EOFError("the tunnel is closed")
        # Awaited directly: a reader cancelled while waiting leaves the queue
        # as it was (Queue.get takes the packet only in the reader's own step).
        packet = await packets.get()
        if packet is None:  # close()'s mark: no packet will come
            with contextlib.suppress(asyncio.QueueFull):
                packets.put_nowait(None)  # for the next reader waiting
            raise EOFError("the tunnel is closed")
        return packet

    def initiate_handshake(self, peer) -> None:  # type: ignore[no-untyped-def]
        self.apply(self.device.initiate_handshake(peer, self.now))

    # --- events ------------------------------------------------------------

    def subscribe(self, maxsize: int = 1024) -> EventStream:
        """A stream of the events from now on (bounded: see :class:`EventStream`)."""
        stream = EventStream(self, maxsize)
        self._streams.append(stream)
        return stream

    def _unsubscribe(self, stream: EventStream) -> None:
        with contextlib.suppress(ValueError):
            self._streams.remove(stream)

    def _log_event(self, event: Event) -> None:
        if not isinstance(event, EndpointChanged):
            log.info("%s", event)
            return
        now = self._loop.time() if self._loop is not None else time.monotonic()
        last = self._endpoint_logged.get(event.peer)
        if last is not None and now - last[0] < self.endpoint_log_interval:
            self._endpoint_logged[event.peer] = (last[0], last[1] + 1)
            return
        unlogged = last[1] if last is not None else 0
        if len(self._endpoint_logged) > 2 * len(self.device.peers) + 16:
            # Forget peers that are gone (bounded by the peers there are).
            for key in [k for k in self._endpoint_logged if k not in self.device.peers]:
                del self._endpoint_logged[key]
        self._endpoint_logged[event.peer] = (now, 0)
        if unlogged:
            log.info(
                "%s (and %d more endpoint changes in the %.0f s before, not logged)",
                event,
                unlogged,
                now - last[0],  # type: ignore[index]
            )
        else:
            log.info("%s", event)

    # --- driving the device ------------------------------------------------

    def _on_readable(self) -> None:
        """Read every datagram waiting (up to a batch), then hand them to the
        device together and act once: one Effects and one timer update per
        wake-up, not per datagram."""
        sock = self._sock
        if sock is None:
            return
        if self._gro_on or self._pktinfo_on:
            self._read_gro(sock)
            return
        got: list[tuple[bytes, Address]] = []
        recv = sock.recvfrom
        add = got.append
        for _ in range(self.batch):
            try:
                data, addr = recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._receive_failed(exc)
                break
            add((data, _plain(addr)))
        if got:
            self.wakeups += 1
            self.datagrams_read += len(got)
            now = self.now
            self.apply(self.device.receive_datagrams(got, now), now)

    def _receive_failed(self, exc: OSError) -> None:
        """A read of the UDP socket failed: counted in
        ``udp_receive_errors``; the wake-up ends there. None is expected:
        Linux reports an ICMP error (port unreachable...) only to a
        connected socket or one with ``IP_RECVERR``, and this one is
        neither; what is left is the rare ENOMEM and the like."""
        self.receive_errors += 1
        log.debug("UDP receive error: %s", exc)

    def _read_gro(self, sock: socket.socket) -> None:
        """recvmsg with UDP_GRO: one buffer may hold several datagrams of
        ``gso_size`` bytes each (the last may be shorter), from one source;
        with sticky sources, each buffer's local address from its PKTINFO.
        The reads go to the device as they lie (:meth:`Device.receive_reads`),
        together, then it acts once."""
        recv = sock.recvmsg_into
        pool, views = self._rx_pool, self._rx_views
        reads: list[tuple[bytes | bytearray, int, int, Address]] = []
        out: Effects | None = None
        now = 0.0
        space = self._anc_space
        taken = 0  # pool buffers holding a read not yet handed over
        n = 0
        batch = self.batch
        last_addr = last_info = None
        source: Address = ("", 0)
        pktinfo = self._pktinfo_level if self._pktinfo_on else -1
        while n < batch:
            if taken == len(pool):
                if taken < _RX_POOL:
                    pool.append(bytearray(65535))
                    views.append(memoryview(pool[-1]))
                else:  # every buffer holds a read: hand them over
                    if out is None:
                        out, now = Effects(), self.now
                    self.device.receive_reads(reads, now, out)
                    reads.clear()
                    taken = 0
            buffer = pool[taken]
            try:
                length, anc, _flags, addr = recv([buffer], space)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._receive_failed(exc)
                break
            size = 0
            if anc:
                info = None
                for level, kind, value in anc:
                    if level == SOL_UDP and kind == UDP_GRO:
                        size = _native_i32(value)[0]
                    elif level == pktinfo:
                        info = value
                if addr != last_addr or info != last_info:
                    last_addr, last_info = addr, info
                    source = _plain(addr) if info is None else self._sticky_source(addr, info)
            elif addr != last_addr or last_info is not None:
                last_addr, last_info = addr, None
                source = _plain(addr)
            if size and length > size:
                reads.append((buffer, length, size, source))
                taken += 1
                n += -(-length // size)
            else:  # one datagram: copied out, its buffer read into again
                reads.append((bytes(views[taken][:length]), length, 0, source))
                n += 1
        if not reads and out is None:
            return
        self.wakeups += 1
        self.datagrams_read += n
        if out is None:
            out, now = Effects(), self.now
        if reads:
            self.device.receive_reads(reads, now, out)
        self.apply(out, now)

    _gro_space = socket.CMSG_SPACE(4)
    _pktinfo_space = socket.CMSG_SPACE(20)  # struct in6_pktinfo (in_pktinfo: 12)

    def _sticky_source(self, addr: tuple, info: bytes) -> Address:  # type: ignore[type-arg]
        """``(host, port, local)`` for a datagram from *addr* whose PKTINFO
        data is *info*."""
        local = self._locals.get(info)
        if local is None:
            if self._pktinfo_level == socket.IPPROTO_IPV6:  # struct in6_pktinfo
                raw = info[:16]
                if raw[:12] == _V4_MAPPED:
                    local = socket.inet_ntop(socket.AF_INET, raw[12:])
                else:
                    local = socket.inet_ntop(socket.AF_INET6, raw)
            else:  # struct in_pktinfo: ifindex, spec_dst, addr
                local = socket.inet_ntop(socket.AF_INET, info[4:8])
            if len(self._locals) > 1024:
                self._locals.clear()
            self._locals[info] = local
        host, port = _plain(addr)
        return host, port, local

    def _source_cmsg(self, local: str) -> list[tuple[int, int, bytes]]:
        """The control message that makes *local* a datagram's source."""
        anc = self._source_anc.get(local)
        if anc is None:
            if self._family == socket.AF_INET6:
                if ":" in local:
                    raw = socket.inet_pton(socket.AF_INET6, local.split("%", 1)[0])
                else:
                    raw = _V4_MAPPED + socket.inet_pton(socket.AF_INET, local)
                anc = [(socket.IPPROTO_IPV6, IPV6_PKTINFO, raw + bytes(4))]  # ifindex 0
            elif ":" in local:
                anc = []  # an IPv6 local address cannot be the source on an IPv4 socket
            else:
                anc = [(socket.IPPROTO_IP, IP_PKTINFO,
                        bytes(4) + socket.inet_pton(socket.AF_INET, local) + bytes(4))]  # fmt: skip
            if len(self._source_anc) > 1024:
                self._source_anc.clear()
            self._source_anc[local] = anc
        return anc

    def _send_from(
        self,
        sock: socket.socket,
        buffers: list[bytes],
        anc: list[tuple[int, int, bytes]],
        address: tuple,  # type: ignore[type-arg]
        local: str,
    ) -> None:
        """sendmsg from the local address *local*; if the kernel refuses that
        source (it is no longer an address of this host), the device forgets
        it and the datagram goes out from the source the kernel picks (what
        the second attempt raises, the caller handles)."""
        refused = None
        if local not in self._failed_sources:
            try:
                sock.sendmsg(buffers, [*anc, *self._source_cmsg(local)], 0, address)
                return
            except OSError as exc:
                if exc.errno not in _SOURCE_ERRORS:
                    raise
                refused = exc
                self._failed_sources.add(local)
                forgot = self.device.clear_endpoint_sources(local)
        self.source_fallbacks += 1
        sock.sendmsg(buffers, anc, 0, address)
        if refused is not None:  # (not when the network is unreachable anyway)
            log.info(
                "source address %s refused (%s): sent from the kernel's choice; "
                "forgotten for %d peer(s)", local, refused.strerror, forgot,
            )  # fmt: skip

    def _sockaddr(self, endpoint: Address) -> tuple:  # type: ignore[type-arg]
        host, port = endpoint[0], endpoint[1]
        if self._family == socket.AF_INET6 and ":" not in host:
            host = "::ffff:" + host
        address = (host, port)
        if len(self._sockaddrs) > 4096:
            self._sockaddrs.clear()
        self._sockaddrs[endpoint] = address
        return address

    def _send_datagrams(self, sock: socket.socket, datagrams: list[tuple[bytes, Address]]) -> None:
        sockaddrs = self._sockaddrs
        send = sock.sendto
        if self.gso and len(datagrams) > 1:
            self._send_gso(sock, datagrams)
            return
        for data, endpoint in datagrams:
            address = sockaddrs.get(endpoint) or self._sockaddr(endpoint)
            try:
                if len(endpoint) == 2:
                    send(data, address)
                else:
                    self._send_from(sock, [data], [], address, endpoint[2])
            except (BlockingIOError, InterruptedError):
                self.dropped_datagrams += 1  # a full socket buffer drops, as UDP does
            except OSError as exc:
                self.send_errors += 1
                log.debug("UDP send to %s:%s failed: %s", *address[:2], exc)

    def _send_gso(self, sock: socket.socket, datagrams: list[tuple[bytes, Address]]) -> None:
        """Runs of equal-size datagrams to one endpoint go out as one GSO send
        (the last of a run may be shorter, as the kernel allows)."""
        sockaddrs = self._sockaddrs
        i, total = 0, len(datagrams)
        while i < total:
            data, endpoint = datagrams[i]
            size = len(data)
            j = i + 1
            limit = min(total, i + GSO_MAX_SEGMENTS, i + GSO_MAX_BYTES // size)
            while j < limit:
                nxt, where = datagrams[j]
                if where != endpoint or len(nxt) > size:
                    break
                j += 1
                if len(nxt) < size:
                    break
            address = sockaddrs.get(endpoint) or self._sockaddr(endpoint)
            try:
                # The datagrams go to the kernel as they are (scatter-gather),
                # not joined into one buffer first.
                if len(endpoint) > 2:
                    buffers = [data] if j - i == 1 else [d for d, _ in datagrams[i:j]]
                    anc = [] if j - i == 1 else [(SOL_UDP, UDP_SEGMENT, _native_u16(size))]
                    self._send_from(sock, buffers, anc, address, endpoint[2])
                elif j - i == 1:
                    sock.sendto(data, address)
                else:
                    sock.sendmsg(
                        [d for d, _ in datagrams[i:j]],
                        [(SOL_UDP, UDP_SEGMENT, _native_u16(size))],
                        0,
                        address,
                    )
            except (BlockingIOError, InterruptedError):
                self.dropped_datagrams += j - i
            except OSError as exc:
                if j - i > 1 and exc.errno in _GSO_ERRORS:
                    log.info("UDP GSO unavailable (%s): one datagram per send", exc.strerror)
                    self.gso = False
                    self._send_datagrams(sock, datagrams[i:])
                    return
                self.send_errors += j - i
                log.debug("UDP send to %s:%s failed: %s", *address[:2], exc)
            i = j

    def apply(self, effects: Effects, now: float | None = None) -> None:
        """Carry out what the device decided, then rearm the timer. With an
        :attr:`inside`, the packets out of the tunnel go to it first and its
        answer is sealed into the same effects (at *now*, default the loop's
        time), so one transmit sends both."""
        inside = self.inside
        if inside is not None and effects.packets:
            if now is None:
                now = self.now
            packets, effects.packets = effects.packets, []
            self._seal(inside.receive_packets(packets, now), now, effects)
        sock = self._sock
        if effects.datagrams:
            if sock is not None:
                self._send_datagrams(sock, effects.datagrams)
                if self._failed_sources:
                    self._failed_sources.clear()
            else:  # closed (or not started): nowhere to send them
                self.dropped_datagrams += len(effects.datagrams)
        if effects.packets:
            if self.on_packets is not None:
                self.on_packets(effects.packets)
            elif self.on_packet is not None:
                for packet in effects.packets:
                    self.on_packet(packet)
            else:
                for packet in effects.packets:
                    try:
                        self._packets.put_nowait(packet)
                    except asyncio.QueueFull:
                        self.dropped_packets += 1
        for event in effects.events:
            self._log_event(event)
            for stream in self._streams:
                stream._put(event)
            if self.on_event is not None:
                self.on_event(event)
        self._reschedule()

    def _reschedule(self) -> None:
        timer = self._timer
        if timer is None or self._sock is None:
            return
        deadline = self.device.next_deadline()
        if self.inside is not None:
            inner = self.inside.next_deadline()
            if inner is not None and (deadline is None or inner < deadline):
                deadline = inner
        timer.set(deadline)

    def _on_timer(self, now: float) -> None:
        out = self.device.handle_timer(now)
        if self.inside is not None:
            self._seal(self.inside.handle_timer(now), now, out)
        self.apply(out, now)

    def _seal(self, packets: list[bytes], now: float, effects: Effects) -> None:
        """The inside's answer, sealed by the device, joins *effects*."""
        if packets:
            sealed = self.device.send_packets(packets, now)
            effects.datagrams += sealed.datagrams
            effects.events += sealed.events


def _grow_buffers(sock: socket.socket) -> None:
    """Large socket buffers, so a burst is queued rather than dropped: FORCE
    (beyond net.core.rmem_max) when we may, else as much as allowed."""
    for force, plain in (
        (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF),
        (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF),
    ):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


async def device_from_config(config: Config, **device_options) -> Device:  # type: ignore[no-untyped-def]
    """A Device configured as *config* says (endpoints resolved here, since
    resolution is I/O). The interface needs a private key.

    A peer with the interface's own public key is skipped with a warning, as
    wireguard-go (device/uapi.go handlePublicKeyLine) and the kernel (netlink
    set_peer) ignore it, and as our UAPI does."""
    if config.interface.private_key is None:
        raise ValueError("the configuration has no PrivateKey")
    mtu = config.interface.mtu or 1420
    device = Device(config.interface.private_key, mtu=mtu, **device_options)
    device.listen_port = config.interface.listen_port
    device.fwmark = config.interface.fwmark or 0
    loop = asyncio.get_running_loop()
    for peer in config.peers:
        if device.has_identity and peer.public_key == device.public_key:
            filename, lineno = peer.location or (None, None)
            note = ConfigWarning(
                f"peer {peer.public_key} ignored: it has the interface's own public key"
                " (as wg ignores it)",
                filename=filename,
                lineno=lineno,
                key="PublicKey",
            )
            log.warning("%s", note)
            continue
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
