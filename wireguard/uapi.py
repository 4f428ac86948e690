"""The cross-platform configuration protocol that ``wg`` speaks (sans-I/O).

``wg show``, ``wg set``, ``wg setconf`` and friends talk to a userspace
WireGuard through a Unix socket with a line protocol
(https://www.wireguard.com/xplatform/): ``get=1`` answers every setting and
counter of the interface as ``key=value`` lines, ``set=1`` changes them, and
each answer ends with ``errno=N`` and a blank line. The behaviour, error
numbers included, follows wireguard-go's ``device/uapi.go``, the
implementation ``wg`` is tested against.

One deliberate difference: wireguard-go applies a ``set`` line by line and
stops at the first bad line, leaving the lines before it applied. Here the
whole request is parsed and validated first, and applied only if every line
is valid, so a malformed request answers ``errno=-22`` (or ``-71``) and changes
nothing. The one step that can fail after validation, rebinding the UDP socket
to a new ``listen_port``, is done before anything else is touched.

Nothing here does I/O. :class:`UAPI` answers one request at a time;
:class:`UAPIConnection` frames the byte stream of one control-socket
connection into requests (several per connection, as wireguard-go serves
them); :mod:`wireguard.io.control` is the asyncio server around them. Because
the UDP socket and the timers live in the binding, the binding is told through
callbacks: ``on_listen_port`` to rebind, ``on_fwmark`` to mark the socket and
``on_effects`` to send what a configuration change produced (the immediate
keepalive of a newly enabled persistent keepalive) and re-arm its timer.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import ipaddress
import math
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .allowedips import Network
from .device import Device, Effects
from .errors import LocalProtocolError
from .keys import PresharedKey, PrivateKey, PublicKey

if TYPE_CHECKING:
    from .peer import Address, Peer

__all__ = [
    "IPC_ERROR_INVALID",
    "IPC_ERROR_IO",
    "IPC_ERROR_PORT_IN_USE",
    "IPC_ERROR_PROTOCOL",
    "UAPI",
    "UAPIConnection",
    "UAPIError",
    "format_endpoint",
    "parse_allowed_ip",
    "parse_endpoint",
]

# wireguard-go's ipc/uapi_unix.go: negated errno values, written as is
# ("errno=-22"); wg turns the number back into errno and prints strerror.
IPC_ERROR_IO = -errno.EIO
IPC_ERROR_PROTOCOL = -errno.EPROTO
IPC_ERROR_INVALID = -errno.EINVAL
IPC_ERROR_PORT_IN_USE = -errno.EADDRINUSE

# bufio.Scanner's default limit in wireguard-go: a longer line is an I/O error.
MAX_LINE = 64 * 1024

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_DIGITS = re.compile(r"[0-9]+")
_PREFIX_BITS = re.compile(r"0|[1-9][0-9]*")


class UAPIError(LocalProtocolError):
    """A ``set`` request was refused; :attr:`errno` is the (negative) number
    sent back to the client."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno = code


# --- value parsers (as strict as Go's strconv and net/netip) -------------------


def _uint(value: str, bits: int, what: str) -> int:
    # strconv.ParseUint(value, 10, bits): ASCII digits only, no sign, no
    # spaces, no underscores; Python's int() would accept all of those.
    if not _DIGITS.fullmatch(value) or int(value) >= 1 << bits:
        raise UAPIError(IPC_ERROR_INVALID, f"invalid {what}: {value!r}")
    return int(value)


def _true(value: str, key: str) -> None:
    if value != "true":
        raise UAPIError(IPC_ERROR_INVALID, f"{key} must be 'true', got {value!r}")


def _hex_key(value: str, what: str) -> bytes:
    # bytes.fromhex skips whitespace; the protocol has exactly 64 digits.
    if not _HEX_KEY.fullmatch(value):
        raise UAPIError(IPC_ERROR_INVALID, f"{what} is not 64 hexadecimal digits")
    return bytes.fromhex(value)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise UAPIError(IPC_ERROR_INVALID, f"not an IP address: {text!r}") from None


def _format_ip(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address as Go's netip prints it: like Python, except IPv4-mapped
    IPv6, which Go (and inet_ntop) write with a dotted quad."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        zone = f"%{address.scope_id}" if address.scope_id else ""
        return f"::ffff:{address.ipv4_mapped}{zone}"
    return str(address)


def _timespec(t: float) -> tuple[int, int]:
    """Seconds and nanoseconds of a time, without going through t * 1e9,
    which loses the nanoseconds of a present-day time to float rounding."""
    if t <= 0:
        return 0, 0
    seconds = math.floor(t)
    nanoseconds = round((t - seconds) * 1e9)
    if nanoseconds >= 1_000_000_000:
        return seconds + 1, nanoseconds - 1_000_000_000
    return seconds, nanoseconds


def parse_endpoint(value: str) -> Address:
    """``IPv4:port`` or ``[IPv6]:port`` (netip.ParseAddrPort), as the device
    stores it: an IPv4-mapped IPv6 address becomes plain IPv4, the form the
    UDP binding reports sources in. Host names are refused: ``wg`` resolves
    them before it sends the request."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port:
        raise UAPIError(IPC_ERROR_INVALID, f"endpoint is not ip:port: {value!r}")
    bracketed = host[0] == "["
    if bracketed:
        if len(host) < 2 or host[-1] != "]":
            raise UAPIError(IPC_ERROR_INVALID, f"endpoint is missing ']': {value!r}")
        host = host[1:-1]
    number = _uint(port, 16, "endpoint port")
    address = _ip(host)
    if bracketed != (address.version == 6):
        raise UAPIError(
            IPC_ERROR_INVALID, f"only an IPv6 endpoint goes in square brackets: {value!r}"
        )
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped), number
    return _format_ip(address), number


def format_endpoint(endpoint: Address) -> str:
    """``host:port``, with an IPv6 host in brackets (Go's AddrPort.String)."""
    host, port = endpoint
    with contextlib.suppress(ValueError):  # not a literal: print what the binding stored
        host = _format_ip(ipaddress.ip_address(host))
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_allowed_ip(value: str) -> Network:
    """``address/bits`` as netip.ParsePrefix takes it: no netmask form, no
    zone, no sign or leading zero in the length. Host bits are allowed (the
    table masks them off)."""
    address_text, sep, bits_text = value.rpartition("/")
    if not sep:
        raise UAPIError(IPC_ERROR_INVALID, f"allowed_ip has no '/': {value!r}")
    address = _ip(address_text)
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise UAPIError(IPC_ERROR_INVALID, f"allowed_ip cannot have a zone: {value!r}")
    if not _PREFIX_BITS.fullmatch(bits_text) or int(bits_text) > address.max_prefixlen:
        raise UAPIError(IPC_ERROR_INVALID, f"bad prefix length in allowed_ip: {value!r}")
    return ipaddress.ip_network((address, int(bits_text)), strict=False)


# --- set requests ------------------------------------------------------------------


class _Op(enum.Enum):
    PRIVATE_KEY = "private_key"
    LISTEN_PORT = "listen_port"
    FWMARK = "fwmark"
    REPLACE_PEERS = "replace_peers"
    PUBLIC_KEY = "public_key"
    UPDATE_ONLY = "update_only"
    REMOVE = "remove"
    PRESHARED_KEY = "preshared_key"
    ENDPOINT = "endpoint"
    PERSISTENT_KEEPALIVE = "persistent_keepalive_interval"
    REPLACE_ALLOWED_IPS = "replace_allowed_ips"
    ALLOWED_IP = "allowed_ip"


_Operation = tuple[_Op, object]


def _parse_device_line(key: str, value: str) -> _Operation:
    if key == "private_key":
        raw = _hex_key(value, "private_key")
        if not any(raw):
            # All zeros is "no key" (`wg set wg0 private-key /dev/null`), as
            # for wireguard-go and the kernel; not clamped, or it would not be.
            return _Op.PRIVATE_KEY, PrivateKey(raw)
        # Stored clamped, as wireguard-go and the kernel do: `wg show` prints
        # the clamped form.
        return _Op.PRIVATE_KEY, PrivateKey(raw).clamped()
    if key == "listen_port":
        return _Op.LISTEN_PORT, _uint(value, 16, "listen_port")
    if key == "fwmark":
        return _Op.FWMARK, _uint(value, 32, "fwmark")
    if key == "replace_peers":
        _true(value, key)
        return _Op.REPLACE_PEERS, None
    raise UAPIError(IPC_ERROR_INVALID, f"invalid UAPI device key: {key!r}")


def _parse_peer_line(key: str, value: str) -> _Operation | None:
    if key in ("update_only", "remove", "replace_allowed_ips"):
        _true(value, key)
        return _Op(key), None
    if key == "preshared_key":
        raw = _hex_key(value, "preshared_key")
        # All zeros is "no preshared key" (`wg set ... preshared-key /dev/null`).
        return _Op.PRESHARED_KEY, PresharedKey(raw) if any(raw) else None
    if key == "endpoint":
        return _Op.ENDPOINT, parse_endpoint(value)
    if key == "persistent_keepalive_interval":
        return _Op.PERSISTENT_KEEPALIVE, _uint(value, 16, "persistent_keepalive_interval")
    if key == "allowed_ip":
        return _Op.ALLOWED_IP, parse_allowed_ip(value)
    if key == "protocol_version":
        if value != "1":
            raise UAPIError(IPC_ERROR_INVALID, f"invalid protocol version: {value!r}")
        return None
    raise UAPIError(IPC_ERROR_INVALID, f"invalid UAPI peer key: {key!r}")


def _parse_set(lines: Iterable[str]) -> list[_Operation]:
    """Every line of a set request, validated, in order. Raises UAPIError at
    the first bad line, with the errno wireguard-go would answer for it."""
    operations: list[_Operation] = []
    in_peer = False
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            raise UAPIError(IPC_ERROR_PROTOCOL, f"failed to parse line {line!r}")
        if key == "public_key":
            in_peer = True
            operation: _Operation | None = (
                _Op.PUBLIC_KEY,
                PublicKey(_hex_key(value, "public_key")),
            )
        elif in_peer:
            operation = _parse_peer_line(key, value)
        else:
            operation = _parse_device_line(key, value)
        if operation is not None:
            operations.append(operation)
    return operations


class _PeerSection:
    """The peer a ``public_key=`` line selected (wireguard-go's ipcSetPeer).
    With ``peer`` None the section is a dummy: its lines were validated but
    change nothing (our own key, a removed peer, update_only on a new key)."""

    __slots__ = ("created", "keepalive_on", "key", "peer")

    def __init__(self, key: PublicKey, peer: Peer | None, created: bool) -> None:
        self.key = key
        self.peer = peer
        self.created = created
        self.keepalive_on = False


# --- the protocol --------------------------------------------------------------------


class UAPI:
    """Answers ``get=1`` and ``set=1`` requests for one :class:`Device`.

    *now* is the device's clock (the binding's monotonic time), read once per
    ``set``. The callbacks are how a configuration change reaches the I/O
    layer, which owns the socket and the timer:

    - ``on_listen_port(port)`` rebinds the UDP socket and returns the port it
      got (``0`` asks for any port) or None for *port*; it may raise OSError,
      answered ``errno=-98`` (EADDRINUSE) with nothing changed. Called only when
      the port differs from ``device.listen_port``;
    - ``on_fwmark(mark)`` sets SO_MARK on the socket, same error handling;
    - ``on_effects(effects)`` is called after every successful ``set`` with
      what the change made the device send (a keepalive when a persistent
      keepalive is turned on, as wireguard-go sends one at once), possibly
      nothing: the binding sends it and re-arms its timer, since deadlines may
      have moved. Without it the keepalive still goes out, from the timer.
    """

    def __init__(
        self,
        device: Device,
        *,
        now: Callable[[], float],
        on_listen_port: Callable[[int], int | None] | None = None,
        on_fwmark: Callable[[int], None] | None = None,
        on_effects: Callable[[Effects], None] | None = None,
    ) -> None:
        self.device = device
        self.now = now
        self.on_listen_port = on_listen_port
        self.on_fwmark = on_fwmark
        self.on_effects = on_effects

    def handle(self, request: str) -> str:
        """Answer the request(s) in *request*, e.g. ``"get=1\\n\\n"``. An
        unknown operation gets no answer (wireguard-go hangs up on it)."""
        connection = UAPIConnection(self)
        data = request.encode("utf-8", "surrogateescape")
        answer = connection.receive_data(data) + connection.receive_eof()
        return answer.decode("utf-8", "surrogateescape")

    # --- get ------------------------------------------------------------------

    def get(self) -> str:
        """The answer to ``get=1``: the interface, then each peer."""
        device = self.device
        lines: list[str] = []
        if device.has_identity:
            lines.append(f"private_key={device.private_key.to_hex()}")
        if device.listen_port:
            lines.append(f"listen_port={device.listen_port}")
        if device.fwmark:
            lines.append(f"fwmark={device.fwmark}")
        for peer in device.peers.values():
            psk = peer.preshared_key.to_hex() if peer.preshared_key is not None else "0" * 64
            lines += (f"public_key={peer.public_key.to_hex()}", f"preshared_key={psk}")
            lines.append("protocol_version=1")
            if peer.endpoint is not None:
                lines.append(f"endpoint={format_endpoint(peer.endpoint)}")
            # The device keeps monotonic time; `wg show` wants the wall clock.
            seconds = nanoseconds = 0
            if peer.last_handshake is not None:
                seconds, nanoseconds = _timespec(peer.last_handshake + device.wall_clock_offset)
            lines += (
                f"last_handshake_time_sec={seconds}",
                f"last_handshake_time_nsec={nanoseconds}",
                f"tx_bytes={peer.tx_bytes}",
                f"rx_bytes={peer.rx_bytes}",
                f"persistent_keepalive_interval={peer.persistent_keepalive}",
            )
            lines += (
                f"allowed_ip={_format_ip(net.network_address)}/{net.prefixlen}"
                for net in device.allowed_ips.entries_for(peer)
            )
        lines.append("errno=0")
        return "\n".join(lines) + "\n\n"

    # --- set ------------------------------------------------------------------

    def set(self, lines: Iterable[str]) -> str:
        """The answer to ``set=1`` followed by *lines* (without the blank
        line that ends the request): ``errno=0``, or the error's number and
        the device unchanged."""
        try:
            operations = _parse_set(lines)
            self._bind(operations)
        except UAPIError as exc:
            return f"errno={exc.errno}\n\n"
        effects = self._apply(operations, self.now())
        if self.on_effects is not None:
            self.on_effects(effects)
        return "errno=0\n\n"

    def _bind(self, operations: list[_Operation]) -> None:
        """Give the socket its new port and mark before anything else
        changes, so that a port in use leaves the whole request unapplied."""
        device = self.device
        port = mark = None
        for op, value in operations:
            if op is _Op.LISTEN_PORT:
                port = value
            elif op is _Op.FWMARK:
                mark = value
        old_port = device.listen_port
        if port is not None and port != old_port and self.on_listen_port is not None:
            try:
                bound = self.on_listen_port(port)  # type: ignore[arg-type]
            except OSError as exc:
                raise UAPIError(IPC_ERROR_PORT_IN_USE, f"cannot listen on {port}: {exc}") from exc
            device.listen_port = bound if bound is not None else port
        if mark is not None and mark != device.fwmark and self.on_fwmark is not None:
            try:
                self.on_fwmark(mark)  # type: ignore[arg-type]
            except OSError as exc:
                if device.listen_port != old_port and self.on_listen_port is not None:
                    device.listen_port = old_port
                    if old_port is not None:
                        with contextlib.suppress(OSError):  # best effort: it may be gone
                            self.on_listen_port(old_port)
                raise UAPIError(IPC_ERROR_PORT_IN_USE, f"cannot set fwmark {mark}: {exc}") from exc

    def _apply(self, operations: list[_Operation], now: float) -> Effects:
        """Carry out validated operations in order, with wireguard-go's
        semantics; nothing here can fail."""
        device = self.device
        effects = Effects()
        section: _PeerSection | None = None
        for op, value in operations:
            if op is _Op.PUBLIC_KEY:
                self._finish(section, now, effects)
                section = self._select(value)  # type: ignore[arg-type]
                continue
            if section is None:  # a device line
                if op is _Op.PRIVATE_KEY:
                    # Re-sending the same key (every `wg setconf` does) must
                    # not drop the sessions a new key would.
                    if value != device.private_key:
                        device.set_private_key(value)  # type: ignore[arg-type]
                elif op is _Op.LISTEN_PORT:
                    if self.on_listen_port is None:
                        device.listen_port = value  # type: ignore[assignment]
                elif op is _Op.FWMARK:
                    device.fwmark = value  # type: ignore[assignment]
                elif op is _Op.REPLACE_PEERS:
                    device.clear_peers()
                continue
            self._peer_line(section, op, value, now)
        self._finish(section, now, effects)
        return effects

    def _select(self, key: PublicKey) -> _PeerSection:
        device = self.device
        if key == device.public_key:
            return _PeerSection(key, None, False)  # our own key: ignored
        peer = device.peers.get(key)
        if peer is not None:
            return _PeerSection(key, peer, False)
        return _PeerSection(key, device.add_peer(key), True)

    def _peer_line(self, section: _PeerSection, op: _Op, value: object, now: float) -> None:
        device = self.device
        peer = section.peer
        if op is _Op.UPDATE_ONLY:
            # wireguard-go created the peer at its public_key line; update_only
            # takes that back (and what lines before it gave the new peer).
            if section.created and peer is not None:
                device.remove_peer(section.key)
                section.peer = None
        elif op is _Op.REMOVE:
            if peer is not None:
                device.remove_peer(section.key)
                section.peer = None
        elif peer is None:
            pass  # a dummy section: validated, ignored
        elif op is _Op.PRESHARED_KEY:
            device.set_preshared_key(section.key, value)  # type: ignore[arg-type]
        elif op is _Op.ENDPOINT:
            device.add_peer(section.key, endpoint=value)  # type: ignore[arg-type]
        elif op is _Op.PERSISTENT_KEEPALIVE:
            interval: int = value  # type: ignore[assignment]
            old = peer.persistent_keepalive
            if interval == 0 or old == 0:
                # Off, or newly on: wireguard-go sends a keepalive at once when
                # it goes from 0 to on; set_persistent_keepalive schedules it.
                device.set_persistent_keepalive(section.key, interval, now)
                section.keepalive_on = interval != 0
            else:
                # A new interval for a running keepalive takes effect from the
                # next packet, without an extra keepalive now.
                device.add_peer(section.key, persistent_keepalive=interval)
        elif op is _Op.REPLACE_ALLOWED_IPS:
            device.allowed_ips.remove_value(peer)
        elif op is _Op.ALLOWED_IP:
            device.allowed_ips.insert(value, peer)  # type: ignore[arg-type]

    def _finish(self, section: _PeerSection | None, now: float, effects: Effects) -> None:
        """End of a peer section (wireguard-go's handlePostConfig)."""
        if section is None or section.peer is None:
            return
        # wireguard-go flushes a peer's queue after its configuration changed.
        self.device.send_staged(section.key, now, effects)
        if not section.keepalive_on:
            return
        if self.on_effects is not None:
            # Sent here rather than by the timer so that the binding gets it
            # with the answer; the send re-arms the persistent keepalive.
            effects_now = self.device.send_keepalive(section.key, now)
            effects.datagrams += effects_now.datagrams
            effects.packets += effects_now.packets
            effects.events += effects_now.events


# --- framing -------------------------------------------------------------------------


class _State(enum.Enum):
    OPERATION = 0  # expecting "get=1\n" or "set=1\n"
    GET = 1  # expecting the "\n" that ends a get request
    SET = 2  # collecting key=value lines until a blank line


class UAPIConnection:
    """The byte stream of one control-socket connection, as requests and
    answers (sans-I/O, like h11's Connection): feed what was read to
    :meth:`receive_data` and write what it returns; close the connection once
    :attr:`closed` is true. Several requests may follow one another on a
    connection, and may arrive in any fragments.

    As in wireguard-go: an unknown operation ends the connection without an
    answer; ``get=1`` must be followed by exactly one newline (anything else
    answers ``errno=-22``); a ``set`` cut off by the end of the stream is
    applied as if it had ended properly; a line longer than 64 KiB answers
    ``errno=-5`` (EIO) and ends the connection.
    """

    def __init__(self, uapi: UAPI) -> None:
        self.uapi = uapi
        self.closed = False
        self._buffer = bytearray()
        self._state = _State.OPERATION
        self._lines: list[str] = []

    def receive_data(self, data: bytes) -> bytes:
        """Bytes read from the socket; returns the answers they complete."""
        if self.closed:
            return b""
        self._buffer += data
        out = bytearray()
        buffer = self._buffer
        while not self.closed:
            if self._state is _State.GET:
                if not buffer:
                    break
                byte = buffer[0]
                del buffer[0]
                self._state = _State.OPERATION
                if byte == 0x0A:
                    out += self.uapi.get().encode("utf-8", "surrogateescape")
                else:
                    out += f"errno={IPC_ERROR_INVALID}\n\n".encode()
                continue
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > MAX_LINE:
                    if self._state is _State.SET:
                        out += f"errno={IPC_ERROR_IO}\n\n".encode()
                    self._close()
                break
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if self._state is _State.OPERATION:
                if line == b"get=1":
                    self._state = _State.GET
                elif line == b"set=1":
                    self._state = _State.SET
                else:
                    self._close()
                continue
            if len(line) > MAX_LINE:
                out += f"errno={IPC_ERROR_IO}\n\n".encode()
                self._close()
                break
            if line.endswith(b"\r"):  # bufio.ScanLines drops one "\r" too
                line = line[:-1]
            if line:
                self._lines.append(line.decode("utf-8", "surrogateescape"))
            else:
                out += self._answer_set()
        return bytes(out)

    def receive_eof(self) -> bytes:
        """The client closed its side; returns a last answer, if any."""
        out = b""
        if not self.closed and self._state is _State.SET:
            last = bytes(self._buffer)
            if last.endswith(b"\r"):
                last = last[:-1]
            if last:
                self._lines.append(last.decode("utf-8", "surrogateescape"))
            out = self._answer_set()
        self._close()
        return out

    def _answer_set(self) -> bytes:
        lines, self._lines = self._lines, []
        self._state = _State.OPERATION
        return self.uapi.set(lines).encode()

    def _close(self) -> None:
        self.closed = True
        self._buffer.clear()
        self._lines = []
