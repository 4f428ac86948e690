"""A SOCKS5 server without I/O (RFC 1928, with RFC 1929 username/password
authentication): one client connection's bytes in, events and replies out.

:class:`Socks5Server` is the state machine of one TCP connection::

    core = Socks5Server(credentials={"alice": "secret"})     # or None: no auth
    try:
        for event in core.receive_data(data):
            Request(...)   -> connect (CONNECT) or open a UDP relay (UDP ASSOCIATE),
                              then core.connected(bound) or core.failed(Reply.HOST_UNREACHABLE)
            Data(...)      -> bytes for the target (they may come before connected():
                              hold them until then, pausing reads)
    except Socks5Error:     # the reply (if any) is already in data_to_send()
        ...
    write(core.data_to_send()); close if core.closing

UDP ASSOCIATE's datagrams (section 7) are read and written by
:func:`parse_udp_datagram` / :func:`build_udp_datagram`; a
:class:`UdpAssociation` applies the rules of one association (the client's
address, no fragmentation) and counts what it drops.

Every byte a client sends is either consumed, returned as :class:`Data`, or
counted in :attr:`Socks5Server.discarded`; what the core holds is at most one
incomplete negotiation message (513 bytes, the longest RFC 1929 request).
"""

from __future__ import annotations

import enum
import errno
import hmac
import ipaddress
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from .address import Address
from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "AddressType",
    "Command",
    "Data",
    "Reply",
    "Request",
    "Socks5AuthError",
    "Socks5DatagramError",
    "Socks5Error",
    "Socks5Server",
    "State",
    "UdpAssociation",
    "UdpDatagram",
    "build_udp_datagram",
    "encode_address",
    "parse_udp_datagram",
]

VERSION = 5
AUTH_VERSION = 1  # RFC 1929 section 2
NO_AUTH = 0x00
USERNAME_PASSWORD = 0x02
NO_ACCEPTABLE_METHODS = 0xFF
MAX_MESSAGE = 513  # the longest negotiation message: RFC 1929's 1+1+255+1+255


class Reply(enum.IntEnum):
    """The REP field of a reply (RFC 1928 section 6)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08

    @classmethod
    def for_error(cls, exc: BaseException) -> Reply:
        """The reply for a failure to reach the target: refused (RST) is
        CONNECTION_REFUSED, a timeout is TTL_EXPIRED; no route to the host
        (ENETUNREACH: no peer's AllowedIPs cover it, the rootless tunnel's
        error), a name that does not resolve or a host that does not answer
        is HOST_UNREACHABLE (it is that host this proxy cannot reach, the
        tunnel itself works); a permission error NOT_ALLOWED; anything else
        GENERAL_FAILURE."""
        if isinstance(exc, ConnectionRefusedError):
            return cls.CONNECTION_REFUSED
        if isinstance(exc, TimeoutError):
            return cls.TTL_EXPIRED
        if isinstance(exc, PermissionError):
            return cls.NOT_ALLOWED
        if isinstance(exc, OSError) and exc.errno is not None:
            return _BY_ERRNO.get(exc.errno, cls.GENERAL_FAILURE)
        if type(exc).__name__ == "ResolutionError":  # wireguard.dns, without importing it
            return cls.HOST_UNREACHABLE
        return cls.GENERAL_FAILURE


_BY_ERRNO = {
    errno.ENETUNREACH: Reply.HOST_UNREACHABLE,
    errno.EHOSTUNREACH: Reply.HOST_UNREACHABLE,
    errno.EHOSTDOWN: Reply.HOST_UNREACHABLE,
    errno.ECONNREFUSED: Reply.CONNECTION_REFUSED,
    errno.ETIMEDOUT: Reply.TTL_EXPIRED,
    errno.EACCES: Reply.NOT_ALLOWED,
    errno.EPERM: Reply.NOT_ALLOWED,
    errno.EAFNOSUPPORT: Reply.ADDRESS_TYPE_NOT_SUPPORTED,
}


class Command(enum.IntEnum):
    """The CMD field of a request (RFC 1928 section 4)."""

    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class AddressType(enum.IntEnum):
    """The ATYP field (RFC 1928 section 5)."""

    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class State(enum.Enum):
    GREETING = "greeting"  # waiting for the version/methods message (section 3)
    AUTH = "auth"  # waiting for the RFC 1929 username/password request
    REQUEST = "request"  # waiting for the request (section 4)
    WAITING = "waiting"  # the request is out; the caller reports connected() or failed()
    CONNECTED = "connected"  # CONNECT succeeded: bytes pass through
    ASSOCIATED = "associated"  # UDP ASSOCIATE succeeded: the TCP connection only holds it
    CLOSED = "closed"  # a failure reply was sent (or nothing can be): close


class Socks5Error(RemoteProtocolError):
    """The client sent something the protocol does not allow. ``reply`` is
    the reply code that was queued for it (None when no reply applies, e.g.
    a wrong version in the greeting)."""

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class Socks5AuthError(Socks5Error):
    """No acceptable authentication method, or a wrong username/password."""


class Socks5DatagramError(Socks5Error):
    """A UDP ASSOCIATE datagram is malformed."""


@dataclass(frozen=True, slots=True)
class Request:
    """A client's request (RFC 1928 section 4): ``host`` is an IP address
    in text or a domain name (``address_type`` tells which), ``username``
    the RFC 1929 user it authenticated as (None without authentication).
    For UDP ASSOCIATE, host and port are where the client says it will
    send from (all zeros when it does not know)."""

    command: Command
    host: str
    port: int
    address_type: AddressType
    username: str | None = None


@dataclass(frozen=True, slots=True)
class Data:
    """Bytes from the client for the target (after a CONNECT request)."""

    data: bytes


Event = Request | Data


def encode_address(host: str, port: int) -> bytes:
    """ATYP, ADDR and PORT for ``host`` (an IP literal, or else a domain
    name of at most 255 bytes), as in requests, replies and UDP headers."""
    if not 0 <= port <= 0xFFFF:
        raise LocalProtocolError(f"port {port} is not in 0..65535")
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        try:
            raw = host.encode("idna") if not host.isascii() else host.encode()
        except UnicodeError:
            raise LocalProtocolError(f"not a domain name: {host!r}") from None
        if not 1 <= len(raw) <= 255:
            raise LocalProtocolError(f"a SOCKS5 domain name is 1 to 255 bytes: {host!r}") from None
        return bytes([AddressType.DOMAIN, len(raw)]) + raw + struct.pack("!H", port)
    kind = AddressType.IPV4 if ip.version == 4 else AddressType.IPV6
    return bytes([kind]) + ip.packed + struct.pack("!H", port)


def _reply(code: Reply, bound: Address = ("0.0.0.0", 0)) -> bytes:
    return bytes([VERSION, code, 0]) + encode_address(*bound)


def _decode_domain(raw: bytes) -> str | None:
    try:
        text = raw.decode("ascii") if raw.isascii() else raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text or any(c <= " " or c == "\x7f" for c in text):
        return None
    return text


def _read_address(buffer: bytes | bytearray, pos: int) -> tuple[AddressType, str, int, int] | None:
    """(ATYP, host, port, end) at ``pos``, None if more bytes are needed.
    Raises ValueError('atyp') for an unknown type, ValueError('name') for a
    domain name that is empty or not text."""
    if pos >= len(buffer):
        return None
    atyp = buffer[pos]
    if atyp == AddressType.IPV4:
        end = pos + 1 + 4
        if end + 2 > len(buffer):
            return None
        host = str(ipaddress.IPv4Address(bytes(buffer[pos + 1 : end])))
    elif atyp == AddressType.IPV6:
        end = pos + 1 + 16
        if end + 2 > len(buffer):
            return None
        host = str(ipaddress.IPv6Address(bytes(buffer[pos + 1 : end])))
    elif atyp == AddressType.DOMAIN:
        if pos + 1 >= len(buffer):
            return None
        end = pos + 2 + buffer[pos + 1]
        if end + 2 > len(buffer):
            return None
        name = _decode_domain(bytes(buffer[pos + 2 : end]))
        if name is None:
            raise ValueError("name")
        host = name
    else:
        raise ValueError("atyp")
    port = (buffer[end] << 8) | buffer[end + 1]
    return AddressType(atyp), host, port, end + 2


class Socks5Server:
    """One client connection, server side (RFC 1928 sections 3-6).

    ``credentials`` (username -> password) requires RFC 1929 authentication;
    without it only "no authentication required" is accepted. A client that
    offers no acceptable method gets X'FF' and the connection closes (section
    3). BIND is answered "command not supported" (X'07'); an unknown address
    type "address type not supported" (X'08'); any other malformed request
    "general failure" (X'01'). Every failure reply closes the connection
    (section 6: the server MUST terminate it)."""

    def __init__(self, credentials: Mapping[str, str] | None = None) -> None:
        self._credentials = (
            None
            if credentials is None
            else {u.encode(): p.encode() for u, p in credentials.items()}
        )
        self.state = State.GREETING
        self.username: str | None = None
        self.request: Request | None = None
        self.discarded = 0  # bytes received and not passed on (after a failure, on a UDP hold)
        self._buffer = bytearray()
        self._out = bytearray()

    # --- outputs --------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes for the client (method selection, auth status, the reply)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def closing(self) -> bool:
        """True once the connection must close after writing data_to_send()."""
        return self.state is State.CLOSED

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete negotiation message held (at most 513)."""
        return len(self._buffer)

    # --- the caller's reports ------------------------------------------

    def connected(self, bound: Address) -> None:
        """The target is connected (CONNECT: ``bound`` is the local address
        of the connection to it) or the relay is ready (UDP ASSOCIATE:
        ``bound`` is the UDP address clients send to): the success reply."""
        if self.state is not State.WAITING or self.request is None:
            raise LocalProtocolError(f"connected() in state {self.state.value}")
        self._out += _reply(Reply.SUCCEEDED, bound)
        if self.request.command == Command.UDP_ASSOCIATE:
            self.state = State.ASSOCIATED
        else:
            self.state = State.CONNECTED

    def failed(self, reply: Reply) -> None:
        """The target could not be reached (or is not allowed): the failure
        reply, then close (section 6)."""
        if self.state is not State.WAITING:
            raise LocalProtocolError(f"failed() in state {self.state.value}")
        if reply == Reply.SUCCEEDED:
            raise LocalProtocolError("failed() needs a failure code")
        self._out += _reply(Reply(reply))
        self.state = State.CLOSED

    # --- input ----------------------------------------------------------

    def _waiting(self) -> bool:
        return self.state is State.WAITING

    def receive_data(self, data: bytes) -> list[Event]:
        """Consume bytes from the client. Raises :class:`Socks5Error` (after
        queuing the reply that applies) when they break the protocol."""
        if self.state is State.CONNECTED:
            return [Data(bytes(data))] if data else []
        if self.state in (State.CLOSED, State.ASSOCIATED):
            self.discarded += len(data)
            return []
        if self.state is State.WAITING:
            return [Data(bytes(data))] if data else []
        self._buffer += data
        events: list[Event] = []
        while self._buffer and self.state in (State.GREETING, State.AUTH, State.REQUEST):
            step = {
                State.GREETING: self._greeting,
                State.AUTH: self._auth,
                State.REQUEST: self._request,
            }[self.state]
            try:
                used = step(events)
            except Socks5Error:
                self.discarded += len(self._buffer)
                self._buffer.clear()
                self.state = State.CLOSED
                raise
            if used == 0:
                break
            del self._buffer[:used]
        if self._buffer and self._waiting():  # a step may have moved the state on
            events.append(Data(bytes(self._buffer)))
            self._buffer.clear()
        assert len(self._buffer) < MAX_MESSAGE
        return events

    def _greeting(self, events: list[Event]) -> int:
        buf = self._buffer
        if buf[0] != VERSION:
            raise Socks5Error(f"not SOCKS5: version byte {buf[0]:#04x}")
        if len(buf) < 2 or len(buf) < 2 + buf[1]:
            return 0
        methods = set(buf[2 : 2 + buf[1]])
        wanted = NO_AUTH if self._credentials is None else USERNAME_PASSWORD
        if wanted not in methods:
            self._out += bytes([VERSION, NO_ACCEPTABLE_METHODS])
            offered = ", ".join(f"{m:#04x}" for m in sorted(methods)) or "none"
            raise Socks5AuthError(
                f"no acceptable authentication method (offered {offered}, "
                f"{'username/password' if wanted else 'no authentication'} required)"
            )
        self._out += bytes([VERSION, wanted])
        self.state = State.AUTH if wanted == USERNAME_PASSWORD else State.REQUEST
        return 2 + buf[1]

    def _auth(self, events: list[Event]) -> int:
        # RFC 1929 section 2: VER(1) ULEN UNAME PLEN PASSWD; a failure status
        # means the server MUST close the connection.
        buf = self._buffer
        if buf[0] != AUTH_VERSION:
            self._out += bytes([AUTH_VERSION, 0x01])
            raise Socks5AuthError(f"username/password version {buf[0]:#04x}, not 0x01")
        if len(buf) < 2:
            return 0
        ulen = buf[1]
        if len(buf) < 3 + ulen:
            return 0
        plen = buf[2 + ulen]
        end = 3 + ulen + plen
        if len(buf) < end:
            return 0
        username = bytes(buf[2 : 2 + ulen])
        password = bytes(buf[3 + ulen : end])
        assert self._credentials is not None
        expected = self._credentials.get(username)
        # compare even when the user is unknown, so both take the same time
        ok = hmac.compare_digest(password, expected if expected is not None else password + b"!")
        if not ok or expected is None:
            self._out += bytes([AUTH_VERSION, 0x01])
            raise Socks5AuthError(
                f"wrong username or password for {username.decode('utf-8', 'replace')!r}"
            )
        self._out += bytes([AUTH_VERSION, 0x00])
        self.username = username.decode("utf-8", "replace")
        self.state = State.REQUEST
        return end

    def _request(self, events: list[Event]) -> int:
        buf = self._buffer
        if buf[0] != VERSION:
            return self._refuse(Reply.GENERAL_FAILURE, f"request version {buf[0]:#04x}, not 5")
        if len(buf) < 4:
            return 0
        command, reserved = buf[1], buf[2]
        try:
            address = _read_address(buf, 3)
        except ValueError as exc:
            if str(exc) == "atyp":
                return self._refuse(
                    Reply.ADDRESS_TYPE_NOT_SUPPORTED, f"unknown address type {buf[3]:#04x}"
                )
            return self._refuse(Reply.GENERAL_FAILURE, "the domain name is empty or not text")
        if address is None:
            return 0
        atyp, host, port, end = address
        if command not in (Command.CONNECT, Command.UDP_ASSOCIATE):
            name = "BIND" if command == Command.BIND else f"command {command:#04x}"
            return self._refuse(Reply.COMMAND_NOT_SUPPORTED, f"{name} is not supported")
        if reserved != 0:
            return self._refuse(Reply.GENERAL_FAILURE, f"reserved byte {reserved:#04x}, not 0")
        if command == Command.CONNECT and port == 0:
            return self._refuse(Reply.GENERAL_FAILURE, "CONNECT to port 0")
        self.request = Request(Command(command), host, port, atyp, self.username)
        events.append(self.request)
        self.state = State.WAITING
        return end

    def _refuse(self, reply: Reply, why: str) -> int:
        self._out += _reply(reply)
        raise Socks5Error(why, reply)


# --- UDP ASSOCIATE (section 7) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    """One UDP request header and its data (RFC 1928 section 7)."""

    host: str
    port: int
    address_type: AddressType
    frag: int
    data: bytes


def parse_udp_datagram(packet: bytes) -> UdpDatagram:
    """RSV(2) FRAG(1) ATYP DST.ADDR DST.PORT DATA. Raises
    :class:`Socks5DatagramError` for a datagram that is cut short, has a
    non-zero RSV or an unknown address type."""
    if len(packet) < 4:
        raise Socks5DatagramError(f"a SOCKS5 UDP datagram is at least 10 bytes, not {len(packet)}")
    if packet[0] or packet[1]:
        raise Socks5DatagramError("reserved bytes of a UDP datagram are not zero")
    try:
        address = _read_address(packet, 3)
    except ValueError as exc:
        raise Socks5DatagramError(f"bad destination address ({exc})") from None
    if address is None:
        raise Socks5DatagramError("UDP datagram header is cut short")
    atyp, host, port, end = address
    return UdpDatagram(host, port, atyp, packet[2], bytes(packet[end:]))


def build_udp_datagram(host: str, port: int, data: bytes, frag: int = 0) -> bytes:
    """The header for a datagram from (or to) ``host``:``port``, then ``data``."""
    return b"\x00\x00" + bytes([frag]) + encode_address(host, port) + data


class UdpAssociation:
    """The relay rules of one UDP ASSOCIATE (RFC 1928 section 7).

    ``client_host`` is the IP address of the TCP connection that asked for
    it; ``request`` its request (its port, when not zero, is the only source
    port accepted). Datagrams from any other IP address are dropped, as the
    section requires; so are fragments (FRAG not X'00': this implementation
    does not reassemble, and the section says such an implementation MUST
    drop them) and malformed datagrams. Each drop is counted in ``drops``
    by reason. The first accepted datagram fixes the client's port when the
    request gave none; replies go to :attr:`client`."""

    def __init__(self, client_host: str, request: Request | None = None) -> None:
        self.client_host = str(ipaddress.ip_address(client_host.split("%", 1)[0]))
        self.client_port = request.port if request is not None else 0
        self.drops: Counter[str] = Counter()
        self.received = 0
        self.sent = 0

    @property
    def client(self) -> Address | None:
        """Where datagrams for the client go (None until one arrived)."""
        return (self.client_host, self.client_port) if self.client_port else None

    def from_client(self, packet: bytes, source: Address) -> UdpDatagram | None:
        """The datagram to relay, or None (dropped and counted)."""
        try:
            host = str(ipaddress.ip_address(source[0].split("%", 1)[0]))
        except ValueError:
            host = source[0]
        if host != self.client_host or (self.client_port and source[1] != self.client_port):
            self.drops["wrong_source"] += 1
            return None
        try:
            datagram = parse_udp_datagram(packet)
        except Socks5DatagramError:
            self.drops["malformed"] += 1
            return None
        if datagram.frag != 0:
            self.drops["fragmented"] += 1
            return None
        if datagram.port == 0:
            self.drops["port_zero"] += 1
            return None
        if not self.client_port:
            self.client_port = source[1]
        self.received += 1
        return datagram

    def to_client(self, data: bytes, origin: Address) -> bytes:
        """A datagram from ``origin`` for the client, with its header."""
        self.sent += 1
        return build_udp_datagram(origin[0], origin[1], data)
