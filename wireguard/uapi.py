"""The cross-platform configuration protocol that ``wg`` speaks (sans-I/O).

``wg show``, ``wg set``, ``wg setconf`` and friends talk to a userspace
WireGuard through a Unix socket with a line protocol
(https://www.wireguard.com/xplatform/): ``get=1`` answers every setting and
counter of the interface as ``key=value`` lines, ``set=1`` changes them, and
each answer ends with ``errno=N`` and a blank line. The behaviour, error
numbers included, follows wireguard-go's ``device/uapi.go``, the
implementation ``wg`` is tested against.

As in wireguard-go, a ``set`` is applied line by line as the lines arrive: a
``public_key=`` line creates the peer there and then, and each later line
changes it. The first bad line ends the request: what the lines before it did
stays done, that line and the rest of the request are not applied (the peer
it was configuring is not started: no immediate keepalive, no staged packets
sent), and the answer is that line's ``errno``. The rest of the request is
read and dropped up to its blank line, and the connection then serves the
next request, as wireguard-go's does for a client that waits for each
answer. Nothing is collected: a request of any length costs one line of
memory.

Nothing here does I/O. :class:`UAPI` answers requests for one device;
:class:`UAPIConnection` frames the byte stream of one control-socket
connection into requests (several per connection, as wireguard-go serves
them) and does the work a slice at a time, so that a binding can let other
work run between slices and write each answer before it reads on;
:mod:`wireguard.io.control` is the asyncio server around them. Because the
UDP socket and the timers live in the binding, the binding is told through
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
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from .allowedips import Network
from .device import Device, Effects
from .errors import LocalProtocolError
from .keys import PresharedKey, PrivateKey, PublicKey, looks_like_key

if TYPE_CHECKING:
    from .address import Address
    from .peer import Peer

__all__ = [
    "IPC_ERROR_INVALID",
    "IPC_ERROR_IO",
    "IPC_ERROR_PORT_IN_USE",
    "IPC_ERROR_PROTOCOL",
    "UAPI",
    "SetRequest",
    "UAPIConnection",
    "UAPIError",
    "UAPIUnknownOperation",
    "format_allowed_ip",
    "format_endpoint",
    "parse_allowed_ip",
    "parse_allowed_ip_packed",
    "parse_endpoint",
]

# wireguard-go's ipc/uapi_unix.go: negated errno values, written as is
# ("errno=-22"); wg turns the number back into errno and prints strerror.
IPC_ERROR_IO = -errno.EIO
IPC_ERROR_PROTOCOL = -errno.EPROTO
IPC_ERROR_INVALID = -errno.EINVAL
IPC_ERROR_PORT_IN_USE = -errno.EADDRINUSE

# bufio.Scanner's buffer in wireguard-go (bufio.MaxScanTokenSize): a line must
# fit in it with its "\n", so one of MAX_LINE bytes or more (its "\r"
# counted, a newline after it or not) is an I/O error (ErrTooLong).
MAX_LINE = 64 * 1024
# How much work one UAPIConnection.next_output() call does at most: this many
# lines of a set request, a public_key line counting as PEER_LINE_COST (it
# creates a peer, with an X25519 computation), or the get answer's lines for
# this many peers. A few milliseconds each.
LINES_PER_STEP = 256
PEER_LINE_COST = 8
PEERS_PER_STEP = 64
# ... and at most this many allowed_ip lines (one peer's may fill many steps).
ALLOWED_IPS_PER_STEP = 1024

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_DIGITS = re.compile(r"[0-9]+")
_PREFIX_BITS = re.compile(r"0|[1-9][0-9]{0,2}")
# The prefix lengths as netip.ParsePrefix takes them: no sign, no leading zero.
_LENGTHS = {str(n): n for n in range(129)}
_inet_pton, _inet_ntop = socket.inet_pton, socket.inet_ntop
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6
_ZEROS_10 = bytes(10)


class UAPIError(LocalProtocolError):
    """A ``set`` request was refused; :attr:`errno` is the (negative) number
    sent back to the client."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno = code


class UAPIUnknownOperation(UAPIError):
    """Not ``get=1`` or ``set=1``: the connection is hung up on without an
    answer, so no errno reaches the client (reported to
    :attr:`UAPIConnection.on_error` all the same)."""


# --- value parsers (as strict as Go's strconv and net/netip) -------------------


def _shown(value: str) -> str:
    """*value* for an error message, unless it is long or could be a key
    (a private key pasted into the wrong field must not reach a log)."""
    if len(value) > 64 or looks_like_key(value):
        return "(value not shown)"
    return repr(value)


def _uint(value: str, bits: int, what: str) -> int:
    # strconv.ParseUint(value, 10, bits): ASCII digits only, no sign, no
    # spaces, no underscores (Python's int() would accept all of those);
    # leading zeros are fine. The length is checked before int(), which
    # refuses more than 4300 digits with an error of its own.
    significant = value.lstrip("0")
    if (
        not _DIGITS.fullmatch(value)
        or len(significant) > 20
        or int(significant or "0") >= 1 << bits
    ):
        raise UAPIError(IPC_ERROR_INVALID, f"invalid {what}: {_shown(value)}")
    return int(significant or "0")


def _true(value: str, key: str) -> None:
    if value != "true":
        raise UAPIError(IPC_ERROR_INVALID, f"{key} must be 'true', got {_shown(value)}")


def _hex_key(value: str, what: str) -> bytes:
    # bytes.fromhex skips whitespace; the protocol has exactly 64 digits.
    if not _HEX_KEY.fullmatch(value):
        raise UAPIError(IPC_ERROR_INVALID, f"{what} is not 64 hexadecimal digits")
    return bytes.fromhex(value)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise UAPIError(IPC_ERROR_INVALID, f"not an IP address: {_shown(text)}") from None


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
    if sep and host and port and _DIGITS.fullmatch(port) and len(port) <= 5:
        # The usual form, read by inet_pton; anything else (and an IPv6
        # address whose first five groups are zero: mapped, compatible) as
        # _parse_endpoint_ipaddress reads it.
        number = int(port)
        try:
            if host[0] == "[" and host[-1] == "]":
                packed = _inet_pton(_AF_INET6, host[1:-1])
                if number < 65536 and packed[:10] != _ZEROS_10:
                    return _inet_ntop(_AF_INET6, packed), number
            elif number < 65536:
                return _inet_ntop(_AF_INET, _inet_pton(_AF_INET, host)), number
        except (OSError, ValueError):
            pass
    return _parse_endpoint_ipaddress(value)


def _parse_endpoint_ipaddress(value: str) -> Address:
    """:func:`parse_endpoint` with the ``ipaddress`` module."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port:
        raise UAPIError(IPC_ERROR_INVALID, f"endpoint is not ip:port: {_shown(value)}")
    bracketed = host[0] == "["
    if bracketed:
        if len(host) < 2 or host[-1] != "]":
            raise UAPIError(IPC_ERROR_INVALID, f"endpoint is missing ']': {_shown(value)}")
        host = host[1:-1]
    number = _uint(port, 16, "endpoint port")
    address = _ip(host)
    if bracketed != (address.version == 6):
        raise UAPIError(
            IPC_ERROR_INVALID, f"only an IPv6 endpoint goes in square brackets: {_shown(value)}"
        )
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped), number
    return _format_ip(address), number


def format_endpoint(endpoint: Address) -> str:
    """``host:port``, with an IPv6 host in brackets (Go's AddrPort.String);
    the local address of a binding's endpoint is not part of it."""
    host, port = endpoint[0], endpoint[1]
    if not _is_canonical(host):
        with contextlib.suppress(ValueError):  # not a literal: print what the binding stored
            host = _format_ip(ipaddress.ip_address(host))
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_canonical(host: str) -> bool:
    """Whether *host* is already an address as :func:`_format_ip` writes it
    (the usual case: parse_endpoint and the binding store that form), read
    by inet_pton and written back by inet_ntop, which agree with it except
    where the first five groups of an IPv6 address are zero."""
    try:
        if ":" in host:
            packed = _inet_pton(_AF_INET6, host)
            return packed[:10] != _ZEROS_10 and _inet_ntop(_AF_INET6, packed) == host
        return _inet_ntop(_AF_INET, _inet_pton(_AF_INET, host)) == host
    except (OSError, ValueError):
        return False


def parse_allowed_ip(value: str) -> Network:
    """``address/bits`` as netip.ParsePrefix takes it: no netmask form, no
    zone, no sign or leading zero in the length. Host bits are allowed (the
    table masks them off)."""
    address_text, sep, bits_text = value.rpartition("/")
    if not sep:
        raise UAPIError(IPC_ERROR_INVALID, f"allowed_ip has no '/': {_shown(value)}")
    address = _ip(address_text)
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise UAPIError(IPC_ERROR_INVALID, f"allowed_ip cannot have a zone: {_shown(value)}")
    # At most 3 digits, checked by the pattern before int() sees them.
    if not _PREFIX_BITS.fullmatch(bits_text) or int(bits_text) > address.max_prefixlen:
        raise UAPIError(IPC_ERROR_INVALID, f"bad prefix length in allowed_ip: {_shown(value)}")
    return ipaddress.ip_network((address, int(bits_text)), strict=False)


def parse_allowed_ip_packed(value: str) -> tuple[bytes, int]:
    """:func:`parse_allowed_ip` as (the address's 4 or 16 bytes, prefix
    length), host bits left in, for :meth:`AllowedIPs.insert_packed`. A
    prefix in the usual form is read by ``inet_pton`` (as strict as netip:
    no leading zeros in IPv4, no zone); anything else goes to
    :func:`parse_allowed_ip`, which accepts or refuses it as before."""
    address_text, _, bits_text = value.rpartition("/")
    length = _LENGTHS.get(bits_text)
    if length is not None:
        try:
            if ":" in address_text:
                packed = _inet_pton(_AF_INET6, address_text)
            elif length <= 32:
                packed = _inet_pton(_AF_INET, address_text)
            else:
                packed = b""
        except (OSError, ValueError):  # UnicodeError, NUL: ValueError too
            packed = b""
        if packed:
            return packed, length
    network = parse_allowed_ip(value)
    return network.network_address.packed, network.prefixlen


def format_allowed_ip(bits: int, address: int, length: int) -> str:
    """``address/length`` as wireguard-go's get writes it (netip's
    Prefix.String), from :meth:`AllowedIPs.iter_packed_for`'s triple."""
    if bits == 32:
        return f"{_inet_ntop(_AF_INET, address.to_bytes(4))}/{length}"
    if address >> 80:
        # Not within ::ffff:0:0/96 and the like: no dotted quad in either,
        # and inet_ntop compresses zeros as netip does (RFC 5952).
        return f"{_inet_ntop(_AF_INET6, address.to_bytes(16))}/{length}"
    return f"{_format_ip(ipaddress.IPv6Address(address))}/{length}"


# --- set requests ------------------------------------------------------------------


class _PeerSection:
    """The peer a ``public_key=`` line selected (wireguard-go's ipcSetPeer).
    With ``peer`` None the section is a dummy: its lines are checked but
    change nothing (our own key, a removed peer, update_only on a new key)."""

    __slots__ = ("created", "keepalive_on", "key", "peer")

    def __init__(self, key: PublicKey, peer: Peer | None, created: bool) -> None:
        self.key = key
        self.peer = peer
        self.created = created
        self.keepalive_on = False

    def __repr__(self) -> str:
        return f"<_PeerSection {self.key!r} created={self.created} dummy={self.peer is None}>"


class SetRequest:
    """One ``set=1`` request being applied, a line at a time, as wireguard-go's
    IpcSetOperation applies it. Get one from :meth:`UAPI.begin_set`, give it
    each line (without its newline) with :meth:`line`, which raises
    :class:`UAPIError` at the first bad line, and end it with :meth:`end`
    (after the blank line, or at the end of the stream) or, after an error,
    :meth:`abort`. Both return the answer and call ``on_effects``."""

    __slots__ = ("_effects", "_in_peer", "_now", "_section", "_uapi", "done")

    def __init__(self, uapi: UAPI) -> None:
        self._uapi = uapi
        self._now = uapi.now()
        self._effects = Effects()
        self._in_peer = False
        self._section: _PeerSection | None = None
        self.done = False

    def __repr__(self) -> str:
        return f"<SetRequest section={self._section!r} done={self.done}>"

    def line(self, line: str) -> None:
        """Apply one line; raises :class:`UAPIError` if it is bad (the lines
        before it stay applied)."""
        uapi = self._uapi
        key, sep, value = line.partition("=")
        if key == "allowed_ip" and sep and self._in_peer:
            # The line a big configuration is made of, first and short.
            uapi._allowed_ip(self._section, value)  # type: ignore[arg-type]
            return
        if not sep:
            raise UAPIError(IPC_ERROR_PROTOCOL, f"failed to parse line {_shown(line)}")
        if key == "public_key":
            # wireguard-go ends the previous peer's section before it even
            # parses the new key.
            self._in_peer = True
            section, self._section = self._section, None
            uapi._finish(section, self._now, self._effects)
            self._section = uapi._select(PublicKey(_hex_key(value, "public_key")))
        elif self._in_peer:
            assert self._section is not None, "a bad public_key line ends the request"
            uapi._peer_line(self._section, key, value, self._now)
        else:
            uapi._device_line(key, value)

    def end(self) -> str:
        """The request ended well: finish the last peer and answer ``errno=0``."""
        section, self._section = self._section, None
        self._uapi._finish(section, self._now, self._effects)
        return self._close("errno=0\n\n")

    def abort(self, error: UAPIError) -> str:
        """The request stopped at a bad line: the answer is its errno. The
        peer being configured is not finished (wireguard-go returns before its
        handlePostConfig), but what earlier sections sent still goes out."""
        self._section = None
        return self._close(f"errno={error.errno}\n\n")

    def _close(self, answer: str) -> str:
        if self.done:
            raise RuntimeError("this set request is already answered")
        self.done = True
        if self._uapi.on_effects is not None:
            self._uapi.on_effects(self._effects)
        return answer


# --- the protocol --------------------------------------------------------------------


class UAPI:
    """Answers ``get=1`` and ``set=1`` requests for one :class:`Device`.

    *now* is the device's clock (the binding's monotonic time), read once per
    ``set``. The callbacks are how a configuration change reaches the I/O
    layer, which owns the socket and the timer:

    - ``on_listen_port(port)`` rebinds the UDP socket and returns the port it
      got (``0`` asks for any port) or None for *port*; it may raise OSError,
      answered ``errno=-98`` (EADDRINUSE), the port unchanged. Called only when
      the port differs from ``device.listen_port``;
    - ``on_fwmark(mark)`` sets SO_MARK on the socket, same error handling;
    - ``on_effects(effects)`` is called at the end of every ``set`` (also one
      that stopped at a bad line: the lines before it may have changed
      deadlines) with what the change made the device send (a keepalive when
      a persistent keepalive is turned on, as wireguard-go sends one at once),
      possibly nothing: the binding sends it and re-arms its timer. Without
      it the keepalive still goes out, from the timer.
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

    def __repr__(self) -> str:
        return f"<UAPI for {len(self.device.peers)} peers>"

    def handle(self, request: str) -> str:
        """Answer the request(s) in *request*, e.g. ``"get=1\\n\\n"``. An
        unknown operation gets no answer (wireguard-go hangs up on it)."""
        connection = UAPIConnection(self)
        connection.receive_data(request.encode("utf-8", "surrogateescape"))
        connection.receive_eof()
        return b"".join(connection.outputs()).decode("utf-8", "surrogateescape")

    # --- get ------------------------------------------------------------------

    def get(self) -> str:
        """The answer to ``get=1``: the interface, then each peer."""
        return "".join(self.get_chunks())

    def get_chunks(self, peers_per_chunk: int = PEERS_PER_STEP) -> Iterator[str]:
        """The answer to ``get=1`` in pieces: the interface lines, then
        *peers_per_chunk* peers at a time (a piece ends early after
        :data:`ALLOWED_IPS_PER_STEP` allowed IPs, so one peer with 100,000 of
        them is many pieces), then ``errno=0``. The peers are the ones there
        were when the first piece was taken; whoever interleaves other
        requests between pieces answers for the mix (the control server does
        not: see :mod:`wireguard.io.control`)."""
        device = self.device
        lines: list[str] = []
        if device.has_identity:
            lines.append(f"private_key={device.private_key.to_hex()}")
        if device.listen_port:
            lines.append(f"listen_port={device.listen_port}")
        if device.fwmark:
            lines.append(f"fwmark={device.fwmark}")
        peers = list(device.peers.values())
        entries = device.allowed_ips.iter_packed_for
        for start in range(0, len(peers), peers_per_chunk):
            budget = ALLOWED_IPS_PER_STEP
            for peer in peers[start : start + peers_per_chunk]:
                self._peer_lines(peer, lines)
                for bits, address, length in entries(peer):
                    lines.append(f"allowed_ip={format_allowed_ip(bits, address, length)}")
                    budget -= 1
                    if budget <= 0:
                        yield "".join(f"{line}\n" for line in lines)
                        lines = []
                        budget = ALLOWED_IPS_PER_STEP
            yield "".join(f"{line}\n" for line in lines)
            lines = []
        yield "".join(f"{line}\n" for line in lines) + "errno=0\n\n"

    def _peer_lines(self, peer: Peer, lines: list[str]) -> None:
        """A peer's lines before its allowed IPs."""
        device = self.device
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

    # --- set ------------------------------------------------------------------

    def begin_set(self) -> SetRequest:
        """A ``set=1`` request, to be given its lines as they arrive."""
        return SetRequest(self)

    def set(self, lines: Iterable[str]) -> str:
        """The answer to ``set=1`` followed by *lines* (without the blank
        line that ends the request), applied one by one: ``errno=0``, or the
        errno of the first bad line, with the lines before it applied."""
        request = self.begin_set()
        try:
            for line in lines:
                request.line(line)
        except UAPIError as exc:
            return request.abort(exc)
        return request.end()

    def _device_line(self, key: str, value: str) -> None:
        device = self.device
        if key == "private_key":
            raw = _hex_key(value, "private_key")
            # All zeros is "no key" (`wg set wg0 private-key /dev/null`), as
            # for wireguard-go and the kernel; not clamped, or it would not be.
            # Any other key is stored clamped, as they do: `wg show` prints
            # the clamped form.
            private = PrivateKey(raw).clamped() if any(raw) else PrivateKey(raw)
            # Re-sending the same key (every `wg setconf` does) must not drop
            # the sessions a new key would.
            if private != device.private_key:
                device.set_private_key(private)
        elif key == "listen_port":
            port = _uint(value, 16, "listen_port")
            if self.on_listen_port is None:
                device.listen_port = port
            elif port != device.listen_port:
                try:
                    bound = self.on_listen_port(port)
                except OSError as exc:
                    raise UAPIError(
                        IPC_ERROR_PORT_IN_USE, f"cannot listen on {port}: {exc}"
                    ) from exc
                device.listen_port = bound if bound is not None else port
        elif key == "fwmark":
            mark = _uint(value, 32, "fwmark")
            if mark != device.fwmark and self.on_fwmark is not None:
                try:
                    self.on_fwmark(mark)
                except OSError as exc:
                    raise UAPIError(
                        IPC_ERROR_PORT_IN_USE, f"cannot set fwmark {mark}: {exc}"
                    ) from exc
            device.fwmark = mark
        elif key == "replace_peers":
            _true(value, key)
            device.clear_peers()
        else:
            raise UAPIError(IPC_ERROR_INVALID, f"invalid UAPI device key: {_shown(key)}")

    def _select(self, key: PublicKey) -> _PeerSection:
        """wireguard-go's handlePublicKeyLine: the peer is created here."""
        device = self.device
        if device.has_identity and key == device.public_key:
            return _PeerSection(key, None, False)  # our own key: ignored
        peer = device.peers.get(key)
        if peer is not None:
            return _PeerSection(key, peer, False)
        return _PeerSection(key, device.add_peer(key), True)

    def _peer_line(self, section: _PeerSection, key: str, value: str, now: float) -> None:
        """wireguard-go's handlePeerLine: the value is checked even for a
        dummy section, and applied to a real one."""
        device = self.device
        peer = section.peer
        if key == "update_only":
            _true(value, key)
            # wireguard-go created the peer at its public_key line; update_only
            # takes that back (and what lines before it gave the new peer).
            if section.created and peer is not None:
                device.remove_peer(section.key)
                section.peer = None
        elif key == "remove":
            _true(value, key)
            if peer is not None:
                device.remove_peer(section.key)
                section.peer = None
        elif key == "preshared_key":
            raw = _hex_key(value, "preshared_key")
            if peer is not None:
                # All zeros is "no preshared key" (`wg set ... preshared-key /dev/null`).
                device.set_preshared_key(section.key, PresharedKey(raw) if any(raw) else None)
        elif key == "endpoint":
            endpoint = parse_endpoint(value)
            if peer is not None:
                device.add_peer(section.key, endpoint=endpoint)
        elif key == "persistent_keepalive_interval":
            interval = _uint(value, 16, "persistent_keepalive_interval")
            if peer is None:
                return
            # wireguard-go decides at each such line whether the keepalive was
            # just turned on (pkaOn), and sends one at once only from
            # handlePostConfig, so not if a later line of the section is bad:
            # _finish starts it. A new interval for a running keepalive takes
            # effect from the next packet; off is off at once.
            section.keepalive_on = peer.persistent_keepalive == 0 and interval != 0
            if interval == 0:
                device.set_persistent_keepalive(section.key, 0, now)
            else:
                device.add_peer(section.key, persistent_keepalive=interval)
        elif key == "replace_allowed_ips":
            _true(value, key)
            if peer is not None:
                device.allowed_ips.remove_value(peer)
        elif key == "allowed_ip":
            self._allowed_ip(section, value)
        elif key == "protocol_version":
            if value != "1":
                raise UAPIError(IPC_ERROR_INVALID, f"invalid protocol version: {_shown(value)}")
        else:
            raise UAPIError(IPC_ERROR_INVALID, f"invalid UAPI peer key: {_shown(key)}")

    def _allowed_ip(self, section: _PeerSection, value: str) -> None:
        # "-PREFIX" removes that one prefix, if this peer has it (exactly
        # that prefix, host bits masked off); as `wg set ... allowed-ips
        # -10.0.0.0/24` sends it.
        if value[:1] == "-":
            packed, length = parse_allowed_ip_packed(value[1:])
            if section.peer is not None:
                self.device.allowed_ips.remove_packed(packed, length, section.peer)
            return
        packed, length = parse_allowed_ip_packed(value)
        if section.peer is not None:
            self.device.allowed_ips.insert_packed(packed, length, section.peer)

    def _finish(self, section: _PeerSection | None, now: float, effects: Effects) -> None:
        """End of a peer section (wireguard-go's handlePostConfig)."""
        if section is None or section.peer is None:
            return
        # wireguard-go flushes a peer's queue after its configuration changed.
        self.device.send_staged(section.key, now, effects)
        if not section.keepalive_on:
            return
        # Due at once (set_persistent_keepalive schedules it): from the timer
        # without on_effects.
        self.device.set_persistent_keepalive(section.key, section.peer.persistent_keepalive, now)
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
    SET = 2  # applying key=value lines until a blank line
    ANSWER = 3  # handing out the pieces of a get answer
    SKIP = 4  # dropping the rest of a set request that stopped at a bad line


class UAPIConnection:
    """The byte stream of one control-socket connection, as requests and
    answers (sans-I/O, in the manner of h11's Connection).

    Feed what was read to :meth:`receive_data` (and :meth:`receive_eof` at
    the end of the stream), then call :meth:`next_output` until it returns
    None, writing what it returns; only then read again. Each call does a
    bounded amount of work (:data:`LINES_PER_STEP` lines of a set, fewer if
    they create peers, or :data:`PEERS_PER_STEP` peers of a get answer, at most
    :data:`ALLOWED_IPS_PER_STEP` allowed IPs) and
    returns the bytes to write, possibly none yet, so a binding can let other
    work run between calls. Because nothing is read while buffered input is
    left, the buffer holds at most a line and a read, and each answer is out
    before the next request is looked at: a client that pipelines requests
    and reads slowly stops the reading. Close the connection once
    :attr:`closed` is true.

    As in wireguard-go: an unknown operation ends the connection without an
    answer; ``get=1`` must be followed by exactly one newline (anything else
    answers ``errno=-22``); a ``set`` cut off by the end of the stream is
    ended there, as if it had ended properly; a line of 64 KiB or more
    answers ``errno=-5`` (EIO) and ends the connection. A bad line answers its
    errno at once; the rest of its request is dropped (see the module).
    """

    def __init__(self, uapi: UAPI, *, on_error: Callable[[UAPIError], None] | None = None) -> None:
        self.uapi = uapi
        #: Called with each request refused (the errno the client got; an
        #: unknown operation is hung up on), for the binding to log as
        #: wireguard-go does (IpcHandle: device.log.Errorf).
        self.on_error = on_error
        self.closed = False
        self._buffer = bytearray()
        self._eof = False
        self._state = _State.OPERATION
        self._set: SetRequest | None = None
        self._answer: Iterator[str] | None = None
        self._chunk: str | None = None

    def __repr__(self) -> str:
        return f"<UAPIConnection {self._state.name} closed={self.closed}>"

    @property
    def in_request(self) -> bool:
        """Whether a request is under way that reads or changes the device:
        a set between its first line and its answer, or a get answer not yet
        handed out whole. A server that serves several connections lets one
        at a time be in a request, as wireguard-go's ipcMutex does."""
        return self._state in (_State.SET, _State.ANSWER)

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the socket."""
        if not self.closed:
            self._buffer += data

    def receive_eof(self) -> None:
        """The client closed its side."""
        self._eof = True

    def outputs(self) -> Iterator[bytes]:
        """Everything the buffered input makes, as :meth:`next_output` hands
        it out (for a caller that holds the whole input anyway)."""
        while (out := self.next_output()) is not None:
            if out:
                yield out

    def next_output(self) -> bytes | None:
        """Work through the buffered input, a bounded amount: returns what to
        write (``b""`` when a slice of work was done and there is more to do),
        or None when nothing more can be done without more input (or the
        connection is closed)."""
        if self.closed:
            return None
        if self._state is _State.ANSWER:
            # One piece ahead, so that the last one goes out with the request
            # over (in_request false): the server writes it and drains.
            assert self._answer is not None and self._chunk is not None
            chunk, self._chunk = self._chunk, next(self._answer, None)
            if self._chunk is None:
                self._answer = None
                self._state = _State.OPERATION
            return chunk.encode("utf-8", "surrogateescape")
        buffer = self._buffer
        budget = LINES_PER_STEP
        if self._state is _State.SET:
            budget, answer = self._set_lines(budget)
            if answer is not None:
                return answer
        while budget > 0:
            budget -= 1
            if self._state is _State.GET:
                if not buffer:
                    break
                byte = buffer[0]
                del buffer[0]
                if byte == 0x0A:
                    self._state = _State.ANSWER
                    self._answer = self.uapi.get_chunks()
                    self._chunk = next(self._answer)
                    return self.next_output()
                self._state = _State.OPERATION
                self._refused(
                    UAPIError(IPC_ERROR_INVALID, f"trailing character in UAPI get: {chr(byte)!r}")
                )
                return f"errno={IPC_ERROR_INVALID}\n\n".encode()
            end = buffer.find(b"\n")
            if end < 0:
                break
            if end >= MAX_LINE and self._state is not _State.OPERATION:
                return self._overlong()
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if self._state is _State.OPERATION:
                if line == b"get=1":
                    self._state = _State.GET
                elif line == b"set=1":
                    self._state = _State.SET
                    self._set = self.uapi.begin_set()
                else:
                    self._unknown(_shown(line.decode("utf-8", "surrogateescape")))
                    return None
                continue
            if line.endswith(b"\r"):  # bufio.ScanLines drops one "\r" too
                line = line[:-1]
            if self._state is _State.SKIP:
                if not line:
                    self._state = _State.OPERATION
                continue
            if not line:
                return self._end_set()
            if line.startswith(b"public_key="):
                budget -= PEER_LINE_COST - 1
            answer = self._set_line(line)
            if answer is not None:
                return answer
        else:
            return b""  # the budget is spent: more to do
        # No complete line is buffered.
        if len(buffer) >= MAX_LINE:
            if self._state is _State.OPERATION:
                self._unknown("a line of 64 KiB or more")
                return None
            return self._overlong()
        if not self._eof:
            return None
        # The end of the stream: a set cut short ends with what it has.
        out = None
        if self._state is _State.SET:
            last = bytes(buffer)
            if last.endswith(b"\r"):
                last = last[:-1]
            out = self._set_line(last) if last else None
            if out is None:
                out = self._end_set()
        self._close()
        return out

    def _set_lines(self, budget: int) -> tuple[int, bytes | None]:
        """The common run of a set's lines (what a big configuration is
        made of): complete, non-blank, shorter than MAX_LINE, applied one
        after the other without the general loop's state checks, the
        buffer cut once at the end. Stops at whatever else comes (a blank
        line, a long or incomplete one), for the general loop, or at a bad
        line, with its answer. Returns the budget left and that answer."""
        assert self._set is not None
        buffer = self._buffer
        apply = self._set.line
        find = buffer.find
        pos = 0
        try:
            while budget > 0:
                end = find(b"\n", pos)
                if end <= pos or end - pos >= MAX_LINE:
                    break  # none, blank or too long: the general loop's
                line = buffer[pos:end]
                if line[-1] == 0x0D:  # bufio.ScanLines drops one "\r" too
                    if end - pos == 1:
                        break  # "\r" alone is a blank line
                    line = line[:-1]
                budget -= 1
                if line.startswith(b"public_key="):
                    budget -= PEER_LINE_COST - 1
                pos = end + 1
                try:
                    apply(line.decode("utf-8", "surrogateescape"))
                except UAPIError as exc:
                    self._refused(exc)
                    answer = self._set.abort(exc)
                    self._set = None
                    self._state = _State.SKIP
                    return budget, answer.encode()
        finally:
            del buffer[:pos]
        return budget, None

    def _set_line(self, line: bytes) -> bytes | None:
        """Apply one line of the set; on a bad line, its answer."""
        assert self._set is not None
        try:
            self._set.line(line.decode("utf-8", "surrogateescape"))
        except UAPIError as exc:
            self._refused(exc)
            answer = self._set.abort(exc)
            self._set = None
            self._state = _State.SKIP
            return answer.encode()
        return None

    def _end_set(self) -> bytes:
        assert self._set is not None
        answer = self._set.end()
        self._set = None
        self._state = _State.OPERATION
        return answer.encode()

    def _overlong(self) -> bytes:
        """A line of 64 KiB or more: EIO (as bufio.Scanner's ErrTooLong), and the
        connection ends; a set is ended as wireguard-go ends it, with
        handlePostConfig but EIO for an answer."""
        out = b""
        if self._state is _State.SET:
            assert self._set is not None
            self._set.end()
            out = f"errno={IPC_ERROR_IO}\n\n".encode()
        self._refused(UAPIError(IPC_ERROR_IO, "a line of 64 KiB or more"))
        self._close()
        return out

    def _unknown(self, what: str) -> None:
        """Not an operation: hung up on without an answer, as wireguard-go does."""
        self._refused(UAPIUnknownOperation(IPC_ERROR_INVALID, f"invalid UAPI operation: {what}"))
        self._close()

    def _refused(self, error: UAPIError) -> None:
        if self.on_error is not None:
            self.on_error(error)

    def _close(self) -> None:
        self.closed = True
        self._buffer.clear()
        self._set = None
        self._answer = None
        self._chunk = None
