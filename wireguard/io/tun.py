"""The Linux TUN binding: ``/dev/net/tun``, addresses and routes by netlink.

:class:`Tun` opens a layer-3 TUN interface (``IFF_TUN | IFF_NO_PI``: raw IPv4
and IPv6 packets, no link header) and :func:`configure` sets it up as
``wg-quick`` would: MTU (unless the config sets one, that of the routes to
the peers' endpoints less 80, as wg-quick chooses it), the
``Address`` entries, link up, and a route for every peer's ``AllowedIPs``
(through pyroute2, in the caller's network namespace). A default route
(``0.0.0.0/0`` or ``::/0``) gets wg-quick's policy routing: its own table, a
rule sending everything not carrying our firewall mark there, the UDP
socket marked so the tunnel's own datagrams still take the main table, and
wg-quick's firewall rules (by ``nft``, else ``iptables-restore``).

:class:`TunPump` moves packets between the TUN file descriptor and a
:class:`~wireguard.io.tunnel.Tunnel`: on each wake-up it reads the TUN until
it would block, hands every packet to the device with one shared
:class:`~wireguard.device.Effects`, and lets the tunnel act once for the whole
batch; packets out of the tunnel are written back in one batch.

Offloads (``IFF_VNET_HDR``). When the kernel offers it, the TUN is opened
with a virtio-net header (``WG_PY_TUN_OFFLOAD``: ``gro``, the default;
``tso``; ``off``). Out of the tunnel, consecutive in-order segments of one TCP
flow are joined into one super-packet (:class:`Coalescer`, the GRO half, as
wireguard-go's ``tun/offload_linux.go``) and written with one system call, so
the kernel's TCP receives a few large packets; every packet written is marked
``DATA_VALID``, since the AEAD already authenticated every byte (the kernel
module skips the checksum the same way). Into the tunnel, ``tso`` also lets
the kernel hand over 64 KB TCP super-packets, cut here into segments with
their checksums (:func:`split_gso`). That costs more CPU in this process than
it saves (the kernel segments and checksums in C, in the sender's context),
so it is not the default; see ``docs/performance.md``.

The TUN's transmit queue (the packets the kernel holds for us to read) is
made :data:`TUN_TXQUEUELEN` long, not the kernel's 500: the kernel drops what
does not fit without slowing the sending TCP, and a TCP window of full-size
packets outgrows 500 whenever we are briefly behind. :meth:`Tun.kernel_drops`
reads what it dropped there.

:class:`LinkMonitor` follows the interface through rtnetlink: its MTU, whether
it is up, and where it is. An interface moved to another network namespace
(``ip link set NAME netns NS``) is followed there, by that namespace's id in
ours (``NETLINK_LISTEN_ALL_NSID``; an id is assigned if it has none, as
``ip netns set NS auto`` would), without holding the namespace open; an
interface deleted (``ip link del``) is noticed by its TUN file descriptor,
which the kernel then detaches (``EBADFD``).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import ipaddress
import logging
import operator
import os
import re
import shutil
import socket
import struct
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import LocalProtocolError
from ..ipheader import (
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV4_FLAGS_FRAGMENT,
    IPV4_HEADER_LEN,
    IPV4_PROTOCOL,
    IPV4_SRC,
    IPV6_HEADER_LEN,
    IPV6_NEXT_HEADER,
    IPV6_SRC,
)
from ..keys import looks_like_key

if TYPE_CHECKING:
    import asyncio

    from ..config import Config
    from .tunnel import Tunnel

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MTU",
    "Coalescer",
    "LinkMonitor",
    "LinkState",
    "NetlinkConfig",
    "Tun",
    "TunError",
    "TunPump",
    "configure",
    "interface_name",
    "routing_table",
    "split_gso",
    "validate_name",
]

DEFAULT_MTU = 1420
TUN_PATH = "/dev/net/tun"

# linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNGETFEATURES = 0x800454CF
TUNGETIFF = 0x800454D2
TUNSETVNETHDRSZ = 0x400454D8
TUNGETDEVNETNS = 0x54E3
# linux/sockios.h
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
SIOCGIFTXQLEN = 0x8942
SIOCSIFTXQLEN = 0x8943
IFNAMSIZ = 16
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04

# linux/virtio_net.h
VNET_HDR_LEN = 10
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_ECN = 0x80
_vnet_hdr = struct.Struct("=BBHHHH")
_VALID_HDR = _vnet_hdr.pack(VIRTIO_NET_HDR_F_DATA_VALID, 0, 0, 0, 0, 0)

# The TUN's transmit queue (the ring the kernel puts packets in for us to
# read; the kernel's default is 500). The kernel drops, without back-pressure
# to the sending TCP, whatever does not fit while we are busy: with 500, a
# TCP flow's window outgrows it and is cut back by loss again and again. This
# many full-size packets hold a default receive window (tcp_rmem's 6 MiB) of
# 1,420-byte packets; wireguard-go's ring holds as many 64 KB super-packets.
TUN_TXQUEUELEN = 5000

# wg-quick's choice: the table and the firewall mark are both 51820 unless taken.
POLICY_TABLE = 51820
# wg-quick's add_default: the comment on its iptables rules, its nft table.
FIREWALL_MARKER = '-m comment --comment "wg-quick(8) rule for {name}"'
FIREWALL_TABLE = "wg-quick-{name}"

_NAME = re.compile(r"[a-zA-Z0-9_=+.-]{1,15}")


class TunError(LocalProtocolError):
    """Setting up the interface failed; the message is one line for a user,
    :attr:`errno` the system error behind it, if one was."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


def validate_kernel_name(name: str) -> str:
    """An interface name as the kernel takes it (``dev_valid_name``): 1 to 15
    bytes, not ``.`` or ``..``, no ``/``, ``:`` or white space. wireguard-go
    takes any such name; wg-quick's rule (:func:`validate_name`) is narrower."""
    if len(name.encode()) >= IFNAMSIZ:
        raise TunError(f"interface name too long: {name!r}", errno.ENAMETOOLONG)
    if not name or name in (".", "..") or any(c in "/:" or c.isspace() for c in name):
        raise TunError(f"invalid interface name {name!r}", errno.EINVAL)
    return name


def validate_name(name: str) -> str:
    """An interface name as wg-quick accepts it: 1 to 15 (IFNAMSIZ - 1)
    characters from ``[a-zA-Z0-9_=+.-]``."""
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise TunError(
            f"invalid interface name {name!r}: 1 to 15 characters from a-z A-Z 0-9 _ = + . -"
        )
    return name


def interface_name(config_path: str | os.PathLike[str]) -> str:
    """The interface a config file names: its file name without ``.conf``,
    as ``wg-quick up /etc/wireguard/wg0.conf`` makes ``wg0``."""
    base = os.path.basename(os.fspath(config_path))
    stem = base[:-5] if base.endswith(".conf") else base
    return validate_name(stem)


# --------------------------------------------------------------------------- the device


class Tun:
    """An open layer-3 TUN interface. The file descriptor is non-blocking;
    closing it removes the interface (it is never made persistent), and with
    it every address and route the kernel tied to it."""

    def __init__(self, fd: int, name: str, vnet_hdr: bool) -> None:
        self.fd = fd
        self.name = name
        self.vnet_hdr = vnet_hdr
        self.offload = "gro" if vnet_hdr else "off"
        #: Packets not passed on, by reason: "write_queue_full" and
        #: "write_error" (into the kernel), "unsupported_gso" (out of it: a
        #: GSO type not handled, or a virtio-net header that does not fit
        #: its packet), "closed" (for an interface already gone).
        self.drops: collections.Counter[str] = collections.Counter()

    @classmethod
    def create(
        cls,
        name: str,
        *,
        offload: str | None = None,
        strict_name: bool = True,
        exclusive: bool = True,
    ) -> Tun:
        """Create interface *name*; fails if any interface of that name exists.
        The name must follow wg-quick's rule (:func:`validate_name`), or with
        ``strict_name=False`` only the kernel's (:func:`validate_kernel_name`).
        With ``exclusive=False`` (wireguard-go's way) a persistent TUN of that
        name that nobody has open is taken over rather than refused.

        *offload* (default: ``WG_PY_TUN_OFFLOAD``, else ``"gro"``):

        - ``"off"``: plain packets both ways;
        - ``"gro"``: a virtio-net header, so segments out of the tunnel are
          written coalesced; the kernel still hands over finished segments
          (its TCP segments and checksums them in C, in the sender's context,
          which is cheaper than doing it here);
        - ``"tso"``: also TSO and checksum offload from the kernel: super-packets
          cut here by :func:`split_gso`.
        """
        if strict_name:
            validate_name(name)
        else:
            validate_kernel_name(name)
        offload = _offload_mode(offload)
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise TunError(
                f"{TUN_PATH} does not exist (no TUN support in this kernel?)", errno.ENOENT
            ) from None
        except PermissionError:
            raise TunError(
                f"cannot open {TUN_PATH}: permission denied (run as root)", errno.EACCES
            ) from None
        try:
            vnet = False
            if offload != "off":
                try:
                    features = struct.unpack("I", fcntl.ioctl(fd, TUNGETFEATURES, bytes(4)))[0]
                    vnet = bool(features & IFF_VNET_HDR)
                except OSError:
                    vnet = False
            flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet else 0)
            if exclusive:
                flags |= IFF_TUN_EXCL
            try:
                ifr = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
            except OSError as exc:
                if exc.errno in (errno.EBUSY, errno.EEXIST, errno.EINVAL):
                    raise TunError(f"interface {name!r} already exists", exc.errno) from None
                if exc.errno == errno.EPERM:
                    raise TunError(
                        f"cannot create {name!r}: permission denied (run as root)", exc.errno
                    ) from None
                raise TunError(f"cannot create {name!r}: {exc.strerror}", exc.errno) from None
            actual = ifr[:16].split(b"\0", 1)[0].decode()
            mode = _set_offloads(fd, vnet, offload)
            try:
                set_txqueuelen(actual, TUN_TXQUEUELEN)
            except OSError as exc:  # not fatal: the kernel's default queue works, with losses
                log.info("TUN %s: cannot set txqueuelen: %s", actual, exc.strerror)
        except BaseException:
            os.close(fd)
            raise
        tun = cls(fd, actual, vnet)
        tun.offload = mode
        return tun

    @classmethod
    def from_fd(cls, fd: int, *, offload: str | None = None) -> Tun:
        """A TUN interface someone else opened (wireguard-go's ``WG_TUN_FD``):
        its name and whether it carries a virtio-net header are asked of the
        kernel, and the offloads set as :meth:`create` sets them. The
        descriptor is made non-blocking; the Tun owns it from now on."""
        try:
            ifr = fcntl.ioctl(fd, TUNGETIFF, bytes(40))
        except OSError as exc:
            raise TunError(
                f"file descriptor {fd} is not a TUN interface: {exc.strerror}", exc.errno
            ) from None
        flags = struct.unpack_from("H", ifr, IFNAMSIZ)[0]
        if flags & 0x000F != IFF_TUN or not flags & IFF_NO_PI:
            raise TunError(f"file descriptor {fd} is not a layer-3 TUN without packet info")
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
        vnet = bool(flags & IFF_VNET_HDR)
        mode = _set_offloads(fd, vnet, _offload_mode(offload))
        tun = cls(fd, ifr[:IFNAMSIZ].split(b"\0", 1)[0].decode(), vnet)
        tun.offload = mode
        return tun

    def attached(self) -> str | None:
        """The interface's current name (it may have been renamed), or None if
        it was deleted (the kernel detaches the file: ``EBADFD``)."""
        if self.fd < 0:
            return None
        try:
            ifr = fcntl.ioctl(self.fd, TUNGETIFF, bytes(40))
        except OSError:
            return None
        return ifr[:IFNAMSIZ].split(b"\0", 1)[0].decode()

    def kernel_drops(self) -> dict[str, int]:
        """What the kernel dropped at this interface (its statistics, read by
        name in this process's network namespace; {} if it is not there):
        ``read_queue_full``, packets for us that did not fit in the transmit
        queue while we were busy (``tx_dropped``), and ``write_dropped``,
        packets we wrote that the kernel could not take (``rx_dropped``)."""
        found: dict[str, int] = {}
        base = f"/sys/class/net/{self.name}/statistics/"
        for key, stat in (("read_queue_full", "tx_dropped"), ("write_dropped", "rx_dropped")):
            try:
                with open(base + stat) as f:
                    found[key] = int(f.read())
            except (OSError, ValueError):
                return {}
        return found

    def get_mtu(self) -> int:
        """The interface's MTU, asked by name in this process's network
        namespace (OSError if it is not there)."""
        return get_mtu(self.name)

    def set_mtu(self, mtu: int) -> None:
        """Set the MTU, by name in this process's network namespace."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock, SIOCSIFMTU, struct.pack("16si20x", self.name.encode(), mtu))

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self.fd < 0

    # --- packets: the plain and the offload paths -------------------------

    def read_packets(self, limit: int = 256) -> list[bytes]:
        """Every IP packet waiting (up to about *limit*): super-packets are cut
        into segments, partial checksums completed."""
        fd = self.fd
        read = os.read
        packets: list[bytes] = []
        if not self.vnet_hdr:
            append = packets.append
            for _ in range(limit):
                try:
                    append(read(fd, 65535))
                except (BlockingIOError, InterruptedError):
                    break
            return packets
        n = 0
        while n < limit:
            try:
                data = read(fd, 65535 + VNET_HDR_LEN)
            except (BlockingIOError, InterruptedError):
                break
            if len(data) >= VNET_HDR_LEN and data[0] == 0 and data[1] == 0:  # no GSO, checksum done
                packets.append(data[VNET_HDR_LEN:])
                n += 1
            else:
                got = split_gso(data, packets)
                if not got:
                    self.drops["unsupported_gso"] += 1
                n += got
        return packets

    def write_packets(self, packets: list[bytes]) -> int:
        """Write packets out of the tunnel into the kernel; returns how many
        were dropped (a full queue drops, as a NIC would)."""
        fd = self.fd
        dropped = 0
        if self.vnet_hdr:
            write, chunks = _write_buffers, Coalescer.join(packets)
        else:
            write, chunks = os.write, packets  # type: ignore[assignment]
        for chunk in chunks:
            try:
                write(fd, chunk)
            except (BlockingIOError, InterruptedError):
                lost = _packets_in(chunk) if self.vnet_hdr else 1
                dropped += lost
                self.drops["write_queue_full"] += lost
            except OSError as exc:
                lost = _packets_in(chunk) if self.vnet_hdr else 1
                dropped += lost
                self.drops["write_error"] += lost
                log.debug("TUN write failed: %s", exc)
        return dropped


_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


def _write_buffers(fd: int, buffers: list[bytes | memoryview]) -> int:
    """One packet from its buffers: a ``writev``, or a joined ``write`` when
    there are more than one ``writev`` takes (a flow of tiny segments)."""
    if len(buffers) > _IOV_MAX:
        return os.write(fd, b"".join(buffers))
    return os.writev(fd, buffers)


def get_mtu(name: str) -> int:
    """The MTU of interface *name* in this process's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifr = fcntl.ioctl(sock, SIOCGIFMTU, struct.pack("16s24x", name.encode()))
    return int(struct.unpack_from("i", ifr, IFNAMSIZ)[0])


def get_txqueuelen(name: str) -> int:
    """The transmit queue length of interface *name* (this network namespace)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifr = fcntl.ioctl(sock, SIOCGIFTXQLEN, struct.pack("16s24x", name.encode()))
    return int(struct.unpack_from("i", ifr, IFNAMSIZ)[0])


def set_txqueuelen(name: str, length: int) -> None:
    """Set the transmit queue length of interface *name* (``ip link set NAME
    txqueuelen N``), in this network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, SIOCSIFTXQLEN, struct.pack("16si20x", name.encode(), length))


def _offload_mode(offload: str | None) -> str:
    if offload is None:
        offload = os.environ.get("WG_PY_TUN_OFFLOAD", "gro")
    offload = {"0": "off", "1": "tso", "": "gro"}.get(offload, offload)
    if offload not in ("off", "gro", "tso"):
        raise TunError(f"unknown TUN offload mode {offload!r} (off, gro or tso)")
    return offload


def _set_offloads(fd: int, vnet: bool, offload: str) -> str:
    """Header size and offloads for a TUN with a virtio-net header; the mode
    in effect."""
    if not vnet:
        return "off"
    mode = "gro"
    try:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
        if offload == "tso":
            fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
            mode = "tso"
        else:
            fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
    except OSError as exc:
        # The header stays (it was chosen at TUNSETIFF); without TSO the
        # kernel just never sends super-packets.
        log.info("TUN offloads unavailable (%s); plain segments", exc.strerror)
    return mode


# --------------------------------------------------------------------------- TSO / GRO

_u16 = struct.Struct("!H")
_u32 = struct.Struct("!I")
_pack_u16_into = _u16.pack_into
_pack_u32_into = _u32.pack_into
_unpack_u16 = _u16.unpack_from
_unpack_u32 = _u32.unpack_from
# IPv4 (no options) + TCP, for the coalescer's fast path: TOS, flags and
# fragment offset, TTL, protocol, sequence number, and the 8 bytes from the
# acknowledgment number to the window (ack, data offset, flags, window).
_v4_tcp_fields = struct.Struct("!xB4xHBB14xI8s").unpack_from
_NO_FLOW: list = [None] * 14  # type: ignore[type-arg]


def _finish(total: int) -> int:
    """Checksum field value from a sum congruent mod 0xFFFF (0 stands for
    both 0x0000 and 0xFFFF in one's complement; TCP accepts either)."""
    total %= 0xFFFF
    return 0xFFFF - total if total else 0xFFFF


def _sum(data: bytes | memoryview) -> int:
    if len(data) & 1:
        return int.from_bytes(data, "big") << 8
    return int.from_bytes(data, "big")


def _complete_checksum(packet: bytearray, start: int, offset: int) -> None:
    """NEEDS_CSUM: the field at start+offset holds the pseudo-header sum;
    the checksum covers everything from *start* (RFC 1071 over L4)."""
    where = start + offset
    _pack_u16_into(packet, where, _finish(_sum(memoryview(packet)[start:])))


def split_gso(data: bytes, out: list[bytes]) -> int:
    """Cut one read from a TUN with a virtio-net header into IP packets
    appended to *out*; returns how many. A TCP super-packet becomes segments of
    ``gso_size`` payload bytes with their own lengths, IPv4 ids, sequence
    numbers and checksums (what the NIC would do for TSO). A read whose
    header does not fit its packet gives none (0), as wireguard-go's
    ``handleVirtioRead`` refuses it."""
    if len(data) < VNET_HDR_LEN:
        log.debug("TUN: a read of %d bytes, shorter than its virtio-net header", len(data))
        return 0
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = _vnet_hdr.unpack_from(data)
    kind = gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    if kind == VIRTIO_NET_HDR_GSO_NONE:
        packet = data[VNET_HDR_LEN:]
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            if csum_start + csum_offset + 2 > len(packet):
                log.debug("TUN: checksum field past the end of a %d-byte packet", len(packet))
                return 0
            buf = bytearray(packet)
            _complete_checksum(buf, csum_start, csum_offset)
            packet = bytes(buf)
        out.append(packet)
        return 1
    if kind not in (VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6) or not gso_size:
        log.debug("TUN: unsupported GSO type %d dropped", gso_type)
        return 0
    pkt = memoryview(data)[VNET_HDR_LEN:]
    v4 = kind == VIRTIO_NET_HDR_GSO_TCPV4
    if not pkt or pkt[0] >> 4 != (4 if v4 else 6):
        log.debug("TUN: GSO type %d on a packet of another IP version", gso_type)
        return 0
    ip_len = (pkt[0] & 15) * 4 if v4 else IPV6_HEADER_LEN
    # csum_start is authoritative for where TCP begins (IPv6 extension headers).
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and csum_start:
        ip_len = csum_start
    # wireguard-go's handleVirtioRead: the TCP header (20 to 60 bytes) after
    # the IP header and within the read; its hdr_len is not trusted.
    tcp_len = (pkt[ip_len + 12] >> 4) * 4 if len(pkt) > ip_len + 12 else 0
    hlen = ip_len + tcp_len
    least = IPV4_HEADER_LEN if v4 else IPV6_HEADER_LEN
    if ip_len < least or not 20 <= tcp_len <= 60 or len(pkt) < hlen:
        log.debug("TUN: a GSO read whose headers do not fit its %d bytes", len(pkt))
        return 0
    payload = pkt[hlen:]
    total = len(payload)
    template = bytearray(pkt[:hlen])
    seq0 = _unpack_u32(template, ip_len + 4)[0]
    tcp_flags = template[ip_len + 13]
    # The headers differ per segment only in a few fields: their sums are
    # taken once with those fields zero, and each segment adds its own.
    if v4:
        ip_id = _unpack_u16(template, 4)[0]
        ip_hdr = bytearray(template[:ip_len])
        ip_hdr[2:6] = bytes(4)  # total length, id
        ip_hdr[10:12] = bytes(2)  # checksum
        ip_base = int.from_bytes(ip_hdr, "big")
        pseudo = int.from_bytes(template[12:20], "big") + 6 + tcp_len
    else:
        ip_id = ip_base = 0
        pseudo = int.from_bytes(template[8:40], "big") + 6 + tcp_len
    tcp_hdr = bytearray(template[ip_len:])
    tcp_hdr[4:8] = bytes(4)  # sequence number
    tcp_hdr[13] = 0  # flags
    tcp_hdr[16:18] = bytes(2)  # checksum
    tcp_base = pseudo + int.from_bytes(tcp_hdr, "big")
    seq_at, flags_at, csum_at = ip_len + 4, ip_len + 13, ip_len + 16
    count = 0
    offset = 0
    append = out.append
    join = b"".join
    while offset < total:
        chunk = payload[offset : offset + gso_size]
        n = len(chunk)
        hdr = bytearray(template)
        if v4:
            ident = (ip_id + count) & 0xFFFF
            _pack_u16_into(hdr, 2, hlen + n)
            _pack_u16_into(hdr, 4, ident)
            _pack_u16_into(hdr, 10, _finish(ip_base + hlen + n + ident))
        else:
            # RFC 8200 section 3: the payload length counts extension headers.
            _pack_u16_into(hdr, 4, hlen - IPV6_HEADER_LEN + n)
        seq = (seq0 + offset) & 0xFFFFFFFF
        _pack_u32_into(hdr, seq_at, seq)
        # CWR only on the first segment; FIN and PSH only on the last.
        f = tcp_flags
        if count:
            f &= ~0x80
        if offset + n < total:
            f &= ~0x09
        hdr[flags_at] = f
        body = int.from_bytes(chunk, "big")
        if n & 1:
            body <<= 8
        _pack_u16_into(
            hdr, csum_at, _finish(body % 0xFFFF + tcp_base + n + (seq >> 16) + (seq & 0xFFFF) + f)
        )
        append(join((hdr, chunk)))
        offset += n
        count += 1
    return count


_NO_GSO = _vnet_hdr.pack(VIRTIO_NET_HDR_F_DATA_VALID, 0, 0, 0, 0, 0)


def _flush(
    flows: dict[bytes, list[Any]], append: Callable[[list[bytes | memoryview]], None]
) -> None:
    """Emit every flow being joined, in the order they began, and forget them."""
    for flow in flows.values():
        append(_emit(flow, 20 if flow[0][0] == 0x45 else 40))
    flows.clear()


def _may_be_tcp(packet: bytes) -> bool:
    """Whether a packet the coalescer does not parse could be TCP (IPv4 with
    options, IPv6 with extension headers, anything unknown): UDP and ICMP
    cannot be of a TCP flow, and need not wait for one."""
    version = packet[0] >> 4 if packet else 0
    if version == 4 and len(packet) > IPV4_PROTOCOL:
        return packet[IPV4_PROTOCOL] == IPPROTO_TCP
    if version == 6 and len(packet) > IPV6_NEXT_HEADER:
        return packet[IPV6_NEXT_HEADER] not in (IPPROTO_UDP, IPPROTO_ICMPV6)
    return True


def _packets_in(write: list[bytes | memoryview]) -> int:
    """How many packets one of :meth:`Coalescer.join`'s writes carries: a
    single packet is [header, packet], a joined one [header, headers, payload
    of each segment...]."""
    return len(write) - 2 if len(write) > 2 else 1


class Coalescer:
    """Joins in-order TCP segments of a flow into one super-packet for a TUN
    with a virtio-net header (the GRO half, as wireguard-go's
    ``tun/offload_linux.go`` and the kernel's ``tcp_gro_receive``). Only ACK
    segments with payload are joined: equal sizes (the last may be shorter
    and may carry PSH), consecutive sequence numbers, and headers identical
    apart from length, IPv4 id, sequence number, PSH and checksums, so the
    kernel's segmentation gives back exactly the packets that came in. Other
    packets pass unchanged; flows are flushed before them so no flow's
    packets are reordered."""

    MAX_BYTES = 65535

    @staticmethod
    def join(packets: list[bytes], *, fast: bool = True) -> list[list[bytes | memoryview]]:
        """The writes for *packets*: joined super-packets and single packets,
        each with its virtio-net header, as the buffers of one ``writev``
        (the payloads are views of the packets, not copied into one
        buffer). ``fast=False`` leaves out the fast paths for the common
        cases (the tests hold them to the same answer)."""
        if fast and len(packets) > 2:
            whole = _join_one_flow(packets)
            if whole is not None:
                return whole
        chunks: list[list[bytes | memoryview]] = []
        append = chunks.append
        # flow (addresses and ports) -> [first packet, payloads, header length,
        # segment size, total size, next sequence number, PSH of the last
        # segment, and what must match: ack + data offset, window, urgent
        # pointer + options, TOS/traffic class + flow label, TTL/hop limit,
        # the fast path's ack-to-window bytes, IPv4 DF (as flags and offset)]
        flows: dict[bytes, list] = {}  # type: ignore[type-arg]
        last_key = None
        last: list = _NO_FLOW  # type: ignore[type-arg]  # the flow made last
        for packet in packets:
            b0 = packet[0]
            if (
                b0 == 0x45
                and last_key is not None
                and fast
                and last[12] is not None
                and len(packet) > 40
            ):
                # Fast path: the next segment of the flow being joined (IPv4),
                # taken only where the general path below would join it, with
                # the same effect; anything else goes on to that path.
                tos, frag, ttl, proto, seq, block = _v4_tcp_fields(packet)
                cur = last
                th = cur[2]
                plen = len(packet) - th
                if (
                    block == cur[12]  # ack, data offset, flags ACK only, window
                    and seq == cur[5]
                    and proto == IPPROTO_TCP
                    and frag == cur[13]  # no fragment, the same DF (inet_gro_flush)
                    and 0 < plen <= cur[3]
                    and cur[4] + plen <= 65535
                    and tos == cur[10]
                    and ttl == cur[11]
                    and packet[12:24] == last_key
                    and packet[38:th] == cur[9]
                ):
                    cur[1].append(memoryview(packet)[th:])
                    cur[4] += plen
                    cur[5] = (seq + plen) & 0xFFFFFFFF
                    if plen < cur[3]:
                        cur[6] = 0
                        del flows[last_key]
                        last_key = None
                        append(_emit(cur, 20))
                    continue
            if b0 == 0x45:
                # IPv4 TCP, no IP options, not a fragment.
                if (
                    packet[IPV4_PROTOCOL] != IPPROTO_TCP
                    or packet[IPV4_FLAGS_FRAGMENT] & 0x3F
                    or packet[IPV4_FLAGS_FRAGMENT + 1]
                    or len(packet) < IPV4_HEADER_LEN + 20  # (a pure ACK goes on below)
                ):
                    if flows and packet[IPV4_PROTOCOL] == IPPROTO_TCP:
                        _flush(flows, append)  # it may be of a flow: after its segments
                        last_key = None
                    append([_NO_GSO, packet])
                    continue
                ip = IPV4_HEADER_LEN
                key = packet[IPV4_SRC.start : ip + 4]  # addresses and ports
            elif (
                b0 >> 4 == 6
                and packet[IPV6_NEXT_HEADER] == IPPROTO_TCP
                and len(packet) >= IPV6_HEADER_LEN + 20
            ):
                ip = IPV6_HEADER_LEN
                key = packet[IPV6_SRC.start : ip + 4]
            else:
                if flows and _may_be_tcp(packet):
                    # TCP with IP options or IPv6 extension headers, not joined:
                    # after the segments of its flow, which may be waiting.
                    _flush(flows, append)
                    last_key = None
                append([_NO_GSO, packet])
                continue
            th = ip + ((packet[ip + 12] >> 4) << 2)
            plen = len(packet) - th
            flags = packet[ip + 13]
            flow = last if key == last_key else flows.get(key)
            # Only ACK (and PSH) with data, and a TCP header of 20 bytes or more
            # (a smaller data offset is malformed: passed on as it came).
            if plen <= 0 or flags & 0xF7 != 0x10 or th < ip + 20:
                if flow is not None:
                    del flows[key]
                    last_key = None
                    append(_emit(flow, ip))
                append([_NO_GSO, packet])
                continue
            seq = _unpack_u32(packet, ip + 4)[0]
            if flow is not None:
                if (
                    seq == flow[5]
                    and th == flow[2]
                    and plen <= flow[3]
                    and flow[4] + plen <= 65535
                    and packet[ip + 8 : ip + 13] == flow[7]
                    and packet[ip + 14 : ip + 16] == flow[8]
                    and packet[ip + 18 : th] == flow[9]
                    and (
                        # TOS, TTL, and DF (the kernel's inet_gro_flush)
                        (
                            packet[1] == flow[10]
                            and packet[8] == flow[11]
                            and packet[6] << 8 == flow[13]
                        )
                        if ip == 20
                        else (packet[:4] == flow[10] and packet[7] == flow[11])
                    )
                ):
                    flow[1].append(memoryview(packet)[th:])
                    flow[4] += plen
                    flow[5] = (seq + plen) & 0xFFFFFFFF
                    if plen < flow[3] or flags & 0x08:
                        flow[6] = flags & 0x08  # PSH goes on the joined packet, as GRO does
                        del flows[key]
                        last_key = None
                        append(_emit(flow, ip))
                    continue
                del flows[key]
                last_key = None
                append(_emit(flow, ip))
            if flags & 0x08:  # PSH: a burst ends here
                append([_NO_GSO, packet])
                continue
            flow = [
                packet, [memoryview(packet)[th:]], th, plen, len(packet),
                (seq + plen) & 0xFFFFFFFF, 0,
                packet[ip + 8 : ip + 13], packet[ip + 14 : ip + 16], packet[ip + 18 : th],
                packet[1] if ip == 20 else packet[:4], packet[8] if ip == 20 else packet[7],
                packet[28:36] if ip == 20 else None,  # the fast path's ack-to-window bytes
                packet[6] << 8 if ip == 20 else None,  # flags and fragment offset: DF only
            ]  # fmt: skip
            flows[key] = last = flow
            last_key = key
        _flush(flows, append)
        return chunks


_seq_column = struct.Struct("!I").unpack_from
# The header bytes that differ between segments a write joins: IP total
# length, id and checksum, the sequence number, TCP flags (PSH) and checksum.
_VARYING = (2, 3, 4, 5, 10, 11, 24, 25, 26, 27, 33, 36, 37)
# The bytes every segment of a wake-up must share for the whole-batch path:
# version and header length, the fragment bits, protocol, addresses and
# ports, TCP data offset.
_SAME_IN_BATCH = (0, 6, 7, 9, *range(12, 24), 32)
_as_view: Callable[[bytes], memoryview] = memoryview


def _join_one_flow(packets: list[bytes]) -> list[list[bytes | memoryview]] | None:
    """:meth:`Coalescer.join` for a wake-up whose packets are all in-order
    full-size segments of one IPv4 TCP flow (the last may be shorter; any may
    carry PSH), the common case of a bulk transfer; ``None`` for anything
    else, which the per-packet path takes. Same writes as that path, but the
    checks run over the whole batch at once: the headers are laid end to end,
    so byte k of every header is the extended slice ``[k::th]`` (C loops,
    nothing in Python per packet)."""
    first = packets[0]
    n = len(first)
    if (
        first[0] != 0x45
        or n <= 40
        or first[9] != IPPROTO_TCP
        or first[6] & 0x3F
        or first[7]
        or first[12:24] != packets[-1][12:24]  # a cheap first test of one flow
    ):
        return None
    th = 20 + ((first[32] >> 4) << 2)
    mss = n - th
    count = len(packets)
    lengths = list(map(len, packets))
    if th < 40 or mss <= 0 or lengths[:-1].count(n) != count - 1 or not th < lengths[-1] <= n:
        return None
    headers = b"".join(map(operator.itemgetter(slice(0, th)), packets))
    head = headers[:th]
    # The same for all, or the batch is not this case: version and header
    # length, the fragment bits (DF included: segments differing in it are
    # not joined, as the per-packet path does not join them), protocol,
    # addresses and ports, data offset.
    for k in _SAME_IN_BATCH:
        if headers[k::th] != head[k : k + 1] * count:
            return None
    flags = headers[33::th]
    if flags.translate(None, b"\x10\x18"):
        return None  # ACK and ACK+PSH only
    seq0 = _seq_column(first, 24)[0]
    end = seq0 + mss * count
    if end > 0xFFFFFFFF:
        return None  # the sequence space wraps within the batch
    expected = struct.pack(f"!{count}I", *range(seq0, end, mss))
    for k in range(4):
        if headers[24 + k :: th] != expected[k::4]:
            return None  # a gap or a retransmission
    # What else a write's segments must share (TOS, TTL, ack, window, urgent
    # pointer, options such as the timestamps): a change starts a new write,
    # as in the per-packet path. The varying bytes are overwritten, and runs
    # of equal headers found by comparing them whole.
    masked = bytearray(headers)
    for k in _VARYING:
        masked[k::th] = head[k : k + 1] * count
    out: list[list[bytes | memoryview]] = []
    if masked == head * count:
        _join_run(packets, 0, count, flags, lengths, th, out)
        return out
    # Runs of equal headers (a new TSval every millisecond or so, so a few
    # per wake-up): each run's end found by galloping, then halving, over
    # whole spans; only spans past what is known equal are compared, so the
    # work stays about linear even if every header differs.
    i = 0
    while i < count:
        block = masked[i * th : (i + 1) * th]
        low, high, step = i + 1, count, 1  # [i, low) equal; the end is in [low, high]
        while low < high:
            mid = min(low + step, high)
            if masked[low * th : mid * th] == block * (mid - low):
                low, step = mid, step * 2
            elif step > 1:
                high, step = mid - 1, 1  # a difference in [low, mid): halve from here
            else:
                break  # packets[low] differs
        _join_run(packets, i, low, flags, lengths, th, out)
        i = low
    return out


def _join_run(
    packets: list[bytes],
    i: int,
    stop: int,
    flags: bytes,
    lengths: list[int],
    th: int,
    out: list[list[bytes | memoryview]],
) -> None:
    """The writes for packets[i:stop], in-order segments with equal headers
    (see :func:`_join_one_flow`), appended to *out*."""
    append = out.append
    payload = operator.itemgetter(slice(th, None))  # of a memoryview: a view, not a copy
    n = len(packets[i])
    mss = n - th
    per_write = (Coalescer.MAX_BYTES - th) // mss  # full segments in one write
    last = len(packets) - 1
    while i < stop:
        if flags[i] != 0x10:  # PSH on a flow's first segment: it goes alone
            append([_NO_GSO, packets[i]])
            i += 1
            continue
        psh = flags.find(b"\x18", i + 1, stop)
        j = stop if psh < 0 else psh + 1  # a PSH segment ends the write
        if j - i > per_write:
            j = i + per_write
            if j == last and per_write * mss + lengths[-1] <= Coalescer.MAX_BYTES:
                j = stop  # a shorter last segment (headers and payload) still fits
        size = n + sum(lengths[i + 1 : j]) - th * (j - i - 1)
        payloads = list(map(payload, map(_as_view, packets[i:j])))
        append(_emit([packets[i], payloads, th, mss, size, 0, flags[j - 1] & 0x08], 20))
        i = j  # (a write of one segment: _emit gives it back as it came)


def _emit(flow: list[Any], ip_len: int) -> list[bytes | memoryview]:
    """One write's buffers: the virtio-net header, the first packet's headers
    with the total length, and every payload."""
    head: bytes = flow[0]
    parts, hlen, gso, size = flow[1], flow[2], flow[3], flow[4]
    if len(parts) == 1:
        return [_NO_GSO, head]
    hdr = bytearray(head[:hlen])
    hdr[ip_len + 13] |= flow[6]
    if ip_len == 20:
        _pack_u16_into(hdr, 2, size)
        hdr[10] = hdr[11] = 0
        _pack_u16_into(hdr, 10, _finish(int.from_bytes(hdr[:20], "big")))
        pseudo = int.from_bytes(hdr[12:20], "big") + 6 + size - 20
        gso_type = VIRTIO_NET_HDR_GSO_TCPV4
    else:
        _pack_u16_into(hdr, 4, size - 40)
        pseudo = int.from_bytes(hdr[8:40], "big") + 6 + size - 40
        gso_type = VIRTIO_NET_HDR_GSO_TCPV6
    # NEEDS_CSUM: the TCP checksum field holds the folded pseudo-header sum
    # (not complemented); the kernel adds the rest when it segments.
    p = pseudo % 0xFFFF
    _pack_u16_into(hdr, ip_len + 16, p if p else 0xFFFF)
    vnet = _vnet_hdr.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, hlen, gso, ip_len, 16)
    return [vnet, bytes(hdr), *parts]


# --------------------------------------------------------------------------- the pump


class TunPump:
    """Moves packets between a :class:`Tun` and a started
    :class:`~wireguard.io.tunnel.Tunnel`, in batches."""

    def __init__(self, tun: Tun, tunnel: Tunnel, *, batch: int | None = None) -> None:
        self.tun = tun
        self.tunnel = tunnel
        # Packets read from the TUN per wake-up at most (then the UDP socket
        # gets its turn).
        self.batch = batch or int(os.environ.get("WG_PY_TUN_BATCH", "64"))
        self.dropped = 0
        #: Wake-ups that read packets, and the packets they read (the mean
        #: batch: what the per-wake-up costs are spread over).
        self.wakeups = 0
        self.packets_read = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        # Called once if the TUN fails for good (the interface was deleted).
        self.on_error: Callable[[OSError], None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        from ..device import Effects

        self._effects = Effects
        self._loop = loop
        self.tunnel.on_packets = self._write
        loop.add_reader(self.tun.fd, self._on_readable)

    def stop(self) -> None:
        if self._loop is not None and not self.tun.closed:
            self._loop.remove_reader(self.tun.fd)
        self._loop = None
        if getattr(self.tunnel, "on_packets", None) == self._write:
            self.tunnel.on_packets = None

    def _write(self, packets: list[bytes]) -> None:
        if self.tun.closed:
            self.tun.drops["closed"] += len(packets)  # the interface went away
            self.dropped += len(packets)
        else:
            self.dropped += self.tun.write_packets(packets)

    def _on_readable(self) -> None:
        try:
            packets = self.tun.read_packets(self.batch)
        except OSError as exc:
            # EBADFD/EIO/ENODEV: the interface is gone (``ip link del``).
            log.error("TUN %s: %s", self.tun.name, exc.strerror or exc)
            self.stop()
            if self.on_error is not None:
                self.on_error(exc)
            return
        if not packets:
            return
        self.wakeups += 1
        self.packets_read += len(packets)
        tunnel = self.tunnel
        now = tunnel.now
        tunnel.apply(tunnel.device.send_packets(packets, now, self._effects()))


# --------------------------------------------------------------------------- the link

# linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/net_namespace.h
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_RTM_NEWLINK = 16
_RTM_DELLINK = 17
_RTM_GETLINK = 18
_RTM_NEWNSID = 88
_RTM_GETNSID = 90
_NLM_F_REQUEST = 1
_NLM_F_ACK = 4
_RTMGRP_LINK = 1
_SOL_NETLINK = 270
_NETLINK_LISTEN_ALL_NSID = 8
_IFLA_IFNAME = 3
_IFLA_MTU = 4
_IFLA_TARGET_NETNSID = 46
_NETNSA_NSID = 1
_NETNSA_FD = 3
_IFF_UP = 0x1
_nlmsghdr = struct.Struct("=IHHII")
_ifinfomsg = struct.Struct("=BxHiII")
_rtattr = struct.Struct("=HH")


def _attr(kind: int, data: bytes) -> bytes:
    length = _rtattr.size + len(data)
    return _rtattr.pack(length, kind) + data + bytes(-length % 4)


def _attrs(data: bytes, start: int, end: int) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while start + _rtattr.size <= end:
        length, kind = _rtattr.unpack_from(data, start)
        if length < _rtattr.size:
            break
        found[kind & 0x3FFF] = data[start + _rtattr.size : start + length]
        start += (length + 3) & ~3
    return found


def _messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each netlink message in *data*."""
    offset = 0
    while offset + _nlmsghdr.size <= len(data):
        length, kind, _flags, _seq, _pid = _nlmsghdr.unpack_from(data, offset)
        if length < _nlmsghdr.size:
            break
        yield kind, data[offset + _nlmsghdr.size : offset + length]
        offset += (length + 3) & ~3


def _request(kind: int, flags: int, payload: bytes) -> list[tuple[int, bytes]]:
    """One rtnetlink request and its answer (blocking, two seconds at most):
    the messages up to the first answer; an error answer raises OSError."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(2.0)
        sock.bind((0, 0))
        sock.send(_nlmsghdr.pack(_nlmsghdr.size + len(payload), kind, flags, 1, 0) + payload)
        answer = list(_messages(sock.recv(65536)))
    for got, body in answer:
        if got == _NLMSG_ERROR:
            code = struct.unpack_from("i", body)[0]
            if code:
                raise OSError(-code, os.strerror(-code))
    return answer


def _nsid_of(netns_fd: int) -> int:
    """The id our network namespace knows the namespace *netns_fd* by,
    assigned first if it has none (``ip netns set NS auto``): link events of
    a namespace reach a listener elsewhere only through such an id."""
    ask = struct.pack("=Bxxx", socket.AF_UNSPEC) + _attr(_NETNSA_FD, struct.pack("=I", netns_fd))
    for attempt in range(2):
        for kind, body in _request(_RTM_GETNSID, _NLM_F_REQUEST, ask):
            if kind == _RTM_NEWNSID:
                nsid = struct.unpack("=i", _attrs(body, 4, len(body))[_NETNSA_NSID])[0]
                if nsid >= 0:
                    return int(nsid)
        if attempt == 0:
            assign = ask + _attr(_NETNSA_NSID, struct.pack("=i", -1))
            _request(_RTM_NEWNSID, _NLM_F_REQUEST | _NLM_F_ACK, assign)
    raise OSError(errno.ENOENT, "the namespace has no id")


@dataclass(frozen=True)
class LinkState:
    """The interface as rtnetlink last reported it: where it is (*nsid*: the
    id of its network namespace in ours, None for ours), its index and name
    there, its MTU, and whether it is up (``IFF_UP``)."""

    nsid: int | None
    index: int
    name: str
    mtu: int
    up: bool


def _link_state(nsid: int | None, kind: int, body: bytes) -> tuple[int, LinkState]:
    _family, _type, index, flags, _change = _ifinfomsg.unpack_from(body)
    attrs = _attrs(body, _ifinfomsg.size, len(body))
    name = attrs.get(_IFLA_IFNAME, b"").split(b"\0", 1)[0].decode(errors="replace")
    mtu = struct.unpack("=I", attrs[_IFLA_MTU])[0] if _IFLA_MTU in attrs else 0
    return kind, LinkState(nsid, index, name, mtu, bool(flags & _IFF_UP))


def query_link(name: str, nsid: int | None = None) -> LinkState:
    """The state of interface *name* in our namespace, or in the one with id
    *nsid* (``IFLA_TARGET_NETNSID``, Linux 4.20)."""
    payload = _ifinfomsg.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(
        _IFLA_IFNAME, name.encode() + b"\0"
    )
    if nsid is not None:
        payload += _attr(_IFLA_TARGET_NETNSID, struct.pack("=i", nsid))
    for kind, body in _request(_RTM_GETLINK, _NLM_F_REQUEST, payload):
        if kind == _RTM_NEWLINK:
            return _link_state(nsid, kind, body)[1]
    raise OSError(errno.ENODEV, f"no interface {name}")


class LinkMonitor:
    """Follows the TUN interface *tun* (see the module): *on_change* is called
    with each new :class:`LinkState` (MTU or up/down changed, or it moved),
    *on_gone* once when the interface is deleted. Every *check_interval*
    seconds the TUN is also asked whether it is still attached, in case an
    event was missed."""

    def __init__(
        self,
        tun: Tun,
        on_change: Callable[[LinkState], None],
        on_gone: Callable[[], None],
        *,
        check_interval: float = 2.0,
    ) -> None:
        self.tun = tun
        self.on_change = on_change
        self.on_gone = on_gone
        self.check_interval = check_interval
        self.state: LinkState | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._own_netns = _netns_identity(None)
        self._gone = False

    def start(self, loop: asyncio.AbstractEventLoop) -> LinkState | None:
        """Subscribe to link events and read the interface's state (returned;
        None if it cannot be found, e.g. already moved away and no id)."""
        self._loop = loop
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            sock.bind((0, _RTMGRP_LINK))
            with contextlib.suppress(OSError):  # old kernels: only our namespace
                sock.setsockopt(_SOL_NETLINK, _NETLINK_LISTEN_ALL_NSID, 1)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        loop.add_reader(sock.fileno(), self._on_readable)
        self._locate()
        self._arm()
        return self.state

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()

    def _arm(self) -> None:
        if self._loop is not None and self._sock is not None:
            self._timer = self._loop.call_later(self.check_interval, self._check)

    def _check(self) -> None:
        self._timer = None
        name = self.tun.attached()
        if name is None:
            self._lost()
            return
        if self.state is None or name != self.state.name:
            self._locate()
        self._arm()

    def _lost(self) -> None:
        if not self._gone:
            self._gone = True
            self.stop()
            self.on_gone()

    def _update(self, state: LinkState) -> None:
        old, self.state = self.state, state
        if state != old:
            self.on_change(state)

    def _locate(self) -> None:
        """Find the interface again: its namespace from the TUN
        (``TUNGETDEVNETNS``), that namespace's id in ours, its state there."""
        name = self.tun.attached()
        if name is None:
            self._lost()
            return
        nsid: int | None = None
        try:
            netns = fcntl.ioctl(self.tun.fd, TUNGETDEVNETNS)
        except OSError:
            netns = -1  # older kernels: assume it stayed here
        if netns >= 0:
            try:
                if _netns_identity(netns) != self._own_netns:
                    nsid = _nsid_of(netns)
            except OSError as exc:
                log.info("cannot follow %s into its network namespace: %s", name, exc)
                self.state = None
                return
            finally:
                os.close(netns)
        try:
            state = query_link(name, nsid)
        except OSError as exc:
            log.info("cannot read the state of %s: %s", name, exc.strerror or exc)
            self.state = None
            return
        self._update(state)

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                data, anc, _flags, _addr = sock.recvmsg(65536, socket.CMSG_SPACE(4))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # events were lost: ask afresh
                    self._locate()
                    continue
                log.error("link events: %s", exc.strerror)
                return
            nsid = None
            for level, kind, value in anc:
                if level == _SOL_NETLINK and kind == _NETLINK_LISTEN_ALL_NSID:
                    nsid = struct.unpack("=i", value[:4])[0]
            for kind, body in _messages(data):
                if kind not in (_RTM_NEWLINK, _RTM_DELLINK) or len(body) < _ifinfomsg.size:
                    continue
                _, state = _link_state(nsid, kind, body)
                current = self.state
                if current is None:
                    if state.name == self.tun.name or kind == _RTM_DELLINK:
                        self._locate()
                    continue
                if (state.nsid, state.index) != (current.nsid, current.index):
                    continue
                if kind == _RTM_DELLINK:
                    # Deleted, or moved to another namespace: the TUN knows which.
                    self._locate()
                    if self._sock is None:
                        return
                else:
                    self._update(state)


def _netns_identity(fd: int | None) -> tuple[int, int]:
    st = os.stat("/proc/self/ns/net") if fd is None else os.fstat(fd)
    return st.st_dev, st.st_ino


# --------------------------------------------------------------------------- netlink


@dataclass
class NetlinkConfig:
    """What :func:`configure` set up beyond the interface itself, so that
    :meth:`undo` can take it down (routes and addresses go with the link):
    policy rules, and whether wg-quick's firewall rules were added.

    *note*, if given, is called with it before each rule or firewall change
    is made and after :meth:`undo`: what it holds then covers what the
    kernel may hold, so a process killed at any moment has noted all it
    added (``up`` writes it to NAME.rules for ``down``)."""

    name: str
    index: int
    fwmark: int = 0
    table: int | None = None
    rules: list[dict] = field(default_factory=list)  # type: ignore[type-arg]
    firewall: bool = False
    note: Callable[[NetlinkConfig], None] | None = field(default=None, repr=False, compare=False)

    def noted(self) -> None:
        if self.note is not None:
            self.note(self)

    def undo(self) -> int:
        """Delete the rules (routes and addresses went with the link) and
        the firewall rules; how many policy rules were still there to delete."""
        removed = 0
        if self.rules:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                for rule in reversed(self.rules):
                    with contextlib.suppress(Exception):
                        ipr.rule("del", **rule)
                        removed += 1
            self.rules.clear()
        if self.firewall:
            remove_firewall(self.name)
            self.firewall = False
        self.noted()
        return removed


def _is_default(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return network.prefixlen == 0


# Where ``ip`` finds table names (iproute2's rt_names.c), the first file that
# exists, then each directory's rt_tables.d/*.conf.
RT_TABLES = ("/etc/iproute2/rt_tables", "/usr/lib/iproute2/rt_tables",
             "/usr/share/iproute2/rt_tables")  # fmt: skip
_BUILTIN_TABLES = {"unspec": 0, "default": 253, "main": 254, "local": 255}
_TABLE_LINE = re.compile(r"\s*(0[xX][0-9a-fA-F]+|[0-9]+)\s+([^\s#]+)")


def _rt_tables() -> str:
    """The rt_tables file ``ip`` reads: the first of :data:`RT_TABLES` there is."""
    return next((f for f in RT_TABLES if os.path.isfile(f)), RT_TABLES[0])


def _table_names() -> dict[str, int]:
    names = dict(_BUILTIN_TABLES)
    files = [_rt_tables()]
    for directory in dict.fromkeys(os.path.dirname(f) for f in RT_TABLES):
        with contextlib.suppress(OSError):
            d = os.path.join(directory, "rt_tables.d")
            files += sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".conf"))
    for path in files:
        with contextlib.suppress(OSError), open(path, errors="replace") as f:
            for line in f:
                found = _TABLE_LINE.match(line)
                if found and not line.lstrip().startswith("#"):
                    names[found.group(2)] = _number(found.group(1))
    return names


def _number(text: str) -> int:
    return int(text, 16 if text[:2].lower() == "0x" else 10)


def routing_table(setting: str) -> int:
    """The number of the routing table ``Table = setting`` names, as ``ip
    route add ... table setting`` reads it (iproute2's rtnl_rttable_a2n): a
    name from ``/etc/iproute2/rt_tables`` (and ``rt_tables.d/*.conf``), else
    a number as strtoul reads it in base 0 (0x hex, a leading 0 octal, else
    decimal). Raises :class:`TunError` for anything else."""
    number = _table_names().get(setting, -1)
    if number >= 0:
        return number
    if re.fullmatch(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*", setting):
        if setting[:2].lower() == "0x":
            number = int(setting, 16)
        elif setting.startswith("0"):
            number = int(setting, 8)
        else:
            number = int(setting, 10)
        if number <= 0xFFFFFFFF:
            return number
    shown = "(not shown: it could be a key)" if looks_like_key(setting) else repr(setting)
    raise TunError(f"{shown} is not a number or a name in {_rt_tables()}")


def configure(
    tun: Tun,
    config: Config,
    *,
    mtu: int | None = None,
    set_fwmark: Callable[[int], None] | None = None,
    endpoints: Sequence[str] = (),
    note: Callable[[NetlinkConfig], None] | None = None,
) -> NetlinkConfig:
    """Set addresses, MTU, link up and routes for *config* on *tun*, as
    wg-quick's ``add_addr``/``set_mtu_up``/``add_route`` do, in that order
    (an MTU below 1280 takes IPv6, and an IPv6 address, off the link).

    Without ``MTU =`` (or *mtu*) the MTU is wg-quick's: that of the route to
    each of the peers' *endpoints* (IP addresses; the route's own MTU, else
    its device's), the smallest, else the default route's, else 1500; less 80.
    ``Table = off`` adds no routes; ``Table = N`` (a number or a name from
    rt_tables) puts them in table N; by default a route to 0.0.0.0/0 or ::/0
    gets wg-quick's policy routing, for which *set_fwmark* is called to mark
    the tunnel's UDP socket, and its firewall rules. *note* is
    :attr:`NetlinkConfig.note`."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    iface = config.interface
    mtu = mtu or iface.mtu
    table_setting = iface.table or "auto"
    if table_setting.lower() in ("auto", "off"):
        table_setting = table_setting.lower()
        table = None
    else:
        try:
            table = routing_table(table_setting)
        except TunError as exc:
            raise TunError(f"Table: {exc}") from None
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=tun.name)
        if not found:
            raise TunError(f"interface {tun.name!r} vanished")
        index = found[0]
        result = NetlinkConfig(tun.name, index, note=note)
        try:
            for address in iface.addresses:
                try:
                    ipr.addr(
                        "add",
                        index=index,
                        address=str(address.ip),
                        prefixlen=address.network.prefixlen,
                    )
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise
            # wg-quick's cmd_up: the addresses, then `ip link set mtu N up`.
            ipr.link("set", index=index, mtu=mtu or _auto_mtu(ipr, endpoints), state="up")
            if table_setting == "off":
                return result
            # In wg-quick's order, `sort -nr -k 2 -t /` of `wg show
            # allowed-ips`: the longest prefix first, of equal ones the
            # greater text (so ::/0 before 0.0.0.0/0).
            networks = sorted(
                {n for peer in config.peers for n in peer.allowed_ips},
                key=lambda n: (n.prefixlen, str(n)),
                reverse=True,
            )
            for network in networks:
                if table_setting == "auto" and _is_default(network):
                    _default_route(ipr, result, network, set_fwmark, config.interface.fwmark)
                    continue
                kwargs = {"dst": str(network), "oif": index}
                if table is not None:
                    kwargs["table"] = table
                try:
                    ipr.route("add", **kwargs)
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise
                    # Ours already (the prefix route of an Address), as
                    # wg-quick skips it; another interface's, wg-quick's
                    # `ip route add` fails, and so does this.
                    if not _route_is_ours(ipr, network, index, table):
                        raise TunError(
                            f"route {network}: a route to it through another interface exists"
                        ) from None
        except NetlinkError as exc:
            result.undo()
            raise TunError(f"netlink: {exc.args[1] if len(exc.args) > 1 else exc}") from None
        except BaseException:
            result.undo()
            raise
    return result


def _route_is_ours(ipr, network, index: int, table: int | None) -> bool:  # type: ignore[no-untyped-def]
    family = socket.AF_INET if network.version == 4 else socket.AF_INET6
    for route in ipr.get_routes(family=family, table=table or 254):
        if route["dst_len"] != network.prefixlen or route.get_attr("RTA_OIF") != index:
            continue
        dst = route.get_attr("RTA_DST") or str(network.network_address)
        if ipaddress.ip_address(dst) == network.network_address:
            return True
    return False


def _route_mtu(ipr, route) -> int:  # type: ignore[no-untyped-def]
    """What wg-quick reads off ``ip route``: the route's ``mtu``, else its
    device's."""
    metrics = route.get_attr("RTA_METRICS")
    mtu = metrics.get_attr("RTAX_MTU") if metrics is not None else None
    if mtu:
        return int(mtu)
    oif = route.get_attr("RTA_OIF")
    links = ipr.get_links(oif) if oif else []
    return int(links[0].get_attr("IFLA_MTU") or 0) if links else 0


def _auto_mtu(ipr, endpoints: Sequence[str]) -> int:  # type: ignore[no-untyped-def]
    """wg-quick's ``set_mtu_up`` without ``MTU =``: the smallest of the
    endpoints' (wireguard-tools 5150cd6, "use smallest mtu, not largest")."""
    best = 0
    for host in endpoints:
        with contextlib.suppress(Exception):  # no route: wg-quick's `|| true`
            for route in ipr.route("get", dst=host):
                mtu = _route_mtu(ipr, route)
                if mtu > 0:
                    best = min(best, mtu) if best else mtu
    if not best:
        # `ip route show default`: the main table's first IPv4 default route.
        with contextlib.suppress(Exception):
            for route in ipr.get_routes(family=socket.AF_INET, table=254):
                if route["dst_len"] == 0:
                    best = _route_mtu(ipr, route)
                    break
    return (best or 1500) - 80


def _default_route(ipr, result: NetlinkConfig, network, set_fwmark, fwmark) -> None:  # type: ignore[no-untyped-def]
    """wg-quick's ``add_default``: a table and a mark (51820 unless set),
    everything without the mark looks up that table, and the main table is
    consulted first for anything but its default route; then its firewall
    rules (:func:`_add_firewall`)."""
    from pyroute2.netlink.exceptions import NetlinkError

    if result.table is None:
        table = fwmark or POLICY_TABLE
        # The first table number with no routes, from 51820 up, unless a mark
        # is set (off and 0 are none, as for wg-quick's get_fwmark).
        while not fwmark and _table_in_use(ipr, table):
            table += 1
        result.table = table
        result.fwmark = table
        if set_fwmark is not None:
            set_fwmark(table)
    table = result.table
    fam = socket.AF_INET if network.version == 4 else socket.AF_INET6
    # No priority, as wg-quick's `ip rule add`: the kernel puts each just
    # before the first rule after the local table's (fib_default_rule_pref),
    # so before any rule another tool added; a delete without one matches any.
    # (None, not left out: pyroute2 would send its own default, 32000.)
    rules = [
        {"family": fam, "table": table, "fwmark": table, "fwmask": 0xFFFFFFFF,
         "flags": 0x2, "priority": None},  # FIB_RULE_INVERT: "not fwmark"
        {"family": fam, "table": 254, "suppress_prefixlen": 0, "priority": None},
    ]  # fmt: skip
    for rule in rules:
        result.rules.append(rule)
        result.noted()  # before it is in: a kill in between leaves nothing unnoted
        try:
            ipr.rule("add", **rule)
        except NetlinkError as exc:
            result.rules.pop()
            result.noted()
            if exc.code != errno.EEXIST:
                raise
    # The route after the rules, as current wg-quick (wireguard-tools 71799a8,
    # "prevent traffic from momentarily leaking into tunnel"; Debian's
    # v1.0.20210914 adds it first): the table stays empty until the
    # suppress_prefixlength rule is in.
    ipr.route("add", dst=str(network), oif=result.index, table=table)
    if network.version == 4:
        # As wg-quick: let the mark take part in reverse-path filtering (set
        # only if it is not 1 yet, as current wg-quick since wireguard-tools
        # ac74ed6; Debian's v1.0.20210914 sets it every time).
        path = "/proc/sys/net/ipv4/conf/all/src_valid_mark"
        with contextlib.suppress(OSError), open(path, "r+") as f:
            if f.read().strip() != "1":
                f.seek(0)
                f.write("1")
    _add_firewall(ipr, result, network.version, table)


def _add_firewall(ipr, result: NetlinkConfig, version: int, mark: int) -> None:  # type: ignore[no-untyped-def]
    """The rest of wg-quick's ``add_default`` (wireguard-tools
    src/wg-quick/linux.bash), for one family: for each address the interface
    has now, drop packets to it that come in on another interface from a
    source that is not local (raw PREROUTING); and the mark of UDP saved to
    its connection (mangle POSTROUTING) and restored from it (mangle
    PREROUTING). By ``nft -f`` (a table ``wg-quick-NAME`` of family ip or
    ip6) if nft is installed, else by ``iptables-restore -n`` (or
    ip6tables-restore), each rule commented ``wg-quick(8) rule for NAME``;
    with neither, wg-quick's command fails and so does ``up``."""
    name = result.name
    pf, iptables = ("ip", "iptables") if version == 4 else ("ip6", "ip6tables")
    nftable = FIREWALL_TABLE.format(name=name)
    marker = FIREWALL_MARKER.format(name=name)
    nft = [f"add table {pf} {nftable}"] + [
        f"add chain {pf} {nftable} {chain} {{ type filter hook {hook} priority {priority}; }}"
        for chain, hook, priority in (("preraw", "prerouting", -300),
                                      ("premangle", "prerouting", -150),
                                      ("postmangle", "postrouting", -150))
    ]  # fmt: skip
    restore = ["*raw"]
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    # `ip -o -4|-6 addr show dev NAME`: every address, link-local too.
    for message in ipr.get_addr(family=family, index=result.index):
        address = message.get_attr("IFA_LOCAL") or message.get_attr("IFA_ADDRESS")
        if not address:
            continue
        restore.append(f"-I PREROUTING ! -i {name} -d {address} -m addrtype "
                       f"! --src-type LOCAL -j DROP {marker}")  # fmt: skip
        nft.append(f'add rule {pf} {nftable} preraw iifname != "{name}" {pf} daddr {address} '
                   "fib saddr type != local drop")  # fmt: skip
    restore += [
        "COMMIT",
        "*mangle",
        f"-I POSTROUTING -m mark --mark {mark} -p udp -j CONNMARK --save-mark {marker}",
        f"-I PREROUTING -p udp -j CONNMARK --restore-mark {marker}",
        "COMMIT",
    ]
    nft += [
        f"add rule {pf} {nftable} postmangle meta l4proto udp mark {mark} ct mark set mark",
        f"add rule {pf} {nftable} premangle meta l4proto udp meta mark set ct mark",
    ]
    if shutil.which("nft") is not None:
        argv, text = ["nft", "-f", "/dev/stdin"], nft
    elif shutil.which(f"{iptables}-restore") is not None:
        argv, text = [f"{iptables}-restore", "-n"], restore
    else:
        raise TunError(
            f"the firewall rules of a default route need nft or {iptables}-restore: "
            "neither is installed"
        )
    result.firewall = True  # from now on (a failed restore may have done part)
    result.noted()
    log.info("[#] %s", " ".join(argv))
    _run_firewall(argv, "".join(line + "\n" for line in text))


def _run_firewall(argv: list[str], text: str = "", *, check: bool = True) -> str:
    """Run a firewall tool with *text* on its standard input; its output.
    A failure is a :class:`TunError` with its first line of error (or, with
    *check* false, logged)."""
    try:
        done = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
    else:
        if done.returncode == 0:
            return done.stdout
        lines = done.stderr.strip().splitlines()
        why = lines[0] if lines else f"exit status {done.returncode}"
    if check:
        raise TunError(f"{argv[0]}: {why}")
    log.warning("%s: %s", argv[0], why)
    return ""


def remove_firewall(name: str) -> None:
    """wg-quick's ``remove_firewall``: delete the nft tables ``wg-quick-NAME``
    (if nft is installed) and every iptables and ip6tables rule commented
    ``wg-quick(8) rule for NAME`` (if iptables is), whoever added them, as
    ``wg-quick down`` does."""
    if shutil.which("nft") is not None:
        listed = _run_firewall(["nft", "list", "tables"], check=False)
        suffix = " " + FIREWALL_TABLE.format(name=name)
        doomed = [f"delete {t}\n" for t in listed.splitlines() if t.endswith(suffix)]
        if doomed:
            _run_firewall(["nft", "-f", "/dev/stdin"], "".join(doomed), check=False)
    if shutil.which("iptables") is None:
        return
    marker = FIREWALL_MARKER.format(name=name)
    for iptables in ("iptables", "ip6tables"):
        if shutil.which(f"{iptables}-save") is None:
            continue
        restore, found = [], False
        for line in _run_firewall([f"{iptables}-save"], check=False).splitlines():
            if line.startswith("-A ") and marker in line[3:]:
                found = True
                restore.append("-D" + line[2:])
            elif line.startswith("*") or line == "COMMIT":
                restore.append(line)
        if found:
            _run_firewall([f"{iptables}-restore", "-n"], "".join(x + "\n" for x in restore),
                          check=False)  # fmt: skip


def _table_in_use(ipr, table: int) -> bool:  # type: ignore[no-untyped-def]
    for family in (2, 10):
        with contextlib.suppress(Exception):
            if ipr.get_routes(family=family, table=table):
                return True
    return False
