"""An HTTP/1.1 forward proxy without I/O (RFC 9110, RFC 9112): a client
connection's bytes in, what to send to the target out, and the target's
response framed back for the client.

Two state machines, one for each side of a proxied exchange:

- :class:`HTTPProxyServer` reads one client connection: ``CONNECT host:port``
  (then a tunnel) and absolute-URI requests (``GET http://host:port/path
  HTTP/1.1``), which it turns into origin-form requests for the target with
  the hop-by-hop fields removed (RFC 9110 section 7.6.1) and a ``Via``
  (section 7.6.3); request bodies (Content-Length or chunked, RFC 9112
  sections 6-7) come out already framed for the target. It checks
  ``Proxy-Authorization: Basic`` (RFC 9110 section 11.7, RFC 7617) when
  credentials are set, enforces limits on the request line (414), the
  header section (431) and malformed input (400), and answers the failures
  the caller reports (502, 504);
- :class:`UpstreamResponse` reads the target's response to one request and
  says how it is framed (RFC 9112 section 6.3: HEAD, 1xx, 204 and 304 have
  no body, then chunked, Content-Length, or until the connection closes;
  a transfer coding other than chunked is an error, as the field is hop by
  hop),
  so that the client connection can stay open: the response goes back to the
  client through :meth:`HTTPProxyServer.send_response`.

A binding::

    client = HTTPProxyServer(credentials={"alice": "secret"})
    for event in client.receive_data(data):           # HTTPProxyError: answer queued
        TunnelRequest  -> connect; client.tunnel_established() (or client.failed(502))
        ForwardRequest -> connect to (host, port), send event.head;
                          upstream = UpstreamResponse(event.method)
        RequestBody / RequestEnd -> send event.data to the target
        TunnelData     -> send event.data to the target
    for event in upstream.receive_data(target_bytes):  # UpstreamError: client.failed(502)
        client.send_response(event)
    write(client.data_to_send()); close if client.closing; stop reading while client.paused
    after a ResponseEnd: client.receive_data(b"") reads a pipelined next request

Nothing here touches a socket; every limit holds whatever either side sends.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hmac
import ipaddress
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ForwardRequest",
    "HTTPProxyError",
    "HTTPProxyServer",
    "Limits",
    "RequestBody",
    "RequestEnd",
    "ResponseBody",
    "ResponseEnd",
    "ResponseHead",
    "TunnelData",
    "TunnelRequest",
    "UpstreamError",
    "UpstreamResponse",
]

Headers = list[tuple[bytes, bytes]]

REASONS = {
    200: "OK",
    400: "Bad Request",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

# RFC 9110 section 7.6.1: fields that apply to one connection only; RFC 9112
# section 6.1 (Transfer-Encoding) and 7.4 (TE); Proxy-Authorization is ours.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VERSION = re.compile(rb"^HTTP/([0-9])\.([0-9])$")
_HOST = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=]+$")  # reg-name without pct-encoding
_STATUS = re.compile(rb"^[0-9]{3}$")


@dataclass(frozen=True, slots=True)
class Limits:
    """What one message may make the core hold (defaults as Apache's and
    nginx's: an 8 KiB request line, 64 KiB and 100 fields of header)."""

    max_request_line: int = 8192
    max_header_bytes: int = 65536
    max_headers: int = 100
    max_chunk_line: int = 4096
    max_pipelined: int = 65536  # bytes of a next request held while one is answered


class HTTPProxyError(RemoteProtocolError):
    """The client's request cannot be served; ``status`` is the response
    that was queued for it (the connection then closes)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class UpstreamError(RemoteProtocolError):
    """The target's response is malformed or cut short (answer the client
    with 502 if nothing of the response was sent yet)."""


class _HeadError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- events ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TunnelRequest:
    """``CONNECT host:port`` (RFC 9110 section 9.3.6)."""

    host: str
    port: int
    headers: Headers
    username: str | None = None


@dataclass(frozen=True, slots=True)
class ForwardRequest:
    """An absolute-URI request: connect to ``host``:``port`` and send
    ``head`` (origin-form request line and the forwarded header fields)."""

    method: str
    host: str
    port: int
    target: str
    head: bytes
    username: str | None = None


@dataclass(frozen=True, slots=True)
class RequestBody:
    """Request body bytes, framed for the target (chunk-encoded if the
    request is chunked)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class RequestEnd:
    """The end of the request body; ``data`` ends it for the target."""

    data: bytes


@dataclass(frozen=True, slots=True)
class TunnelData:
    """Bytes from the client for the target, after CONNECT succeeded."""

    data: bytes


ClientEvent = TunnelRequest | ForwardRequest | RequestBody | RequestEnd | TunnelData


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """The target's status line and end-to-end header fields. ``framing``
    is ``"none"``, ``"length"``, ``"chunked"`` or ``"close"``."""

    status: int
    reason: bytes
    headers: Headers
    framing: str
    length: int | None = None

    @property
    def informational(self) -> bool:
        return 100 <= self.status < 200


@dataclass(frozen=True, slots=True)
class ResponseBody:
    """Response body bytes, decoded of their chunk framing."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ResponseEnd:
    """The end of the response (with its chunked trailer fields, if any)."""

    trailers: Headers


ResponseEvent = ResponseHead | ResponseBody | ResponseEnd


# --- the shared pieces: header sections, bodies --------------------------------


class _HeadReader:
    """Reads a start line and header fields (RFC 9112 sections 2-5) line by
    line, each line looked at once whatever the size of the pieces it comes
    in. CRLF ends a line; a bare LF is accepted (section 2.2 allows it), a
    bare CR is not; obs-fold is refused (section 5.2 lets a proxy refuse it
    with 400)."""

    def __init__(self, limits: Limits, first_line_status: int) -> None:
        self.limits = limits
        self.first_line_status = first_line_status
        self.reset()

    def reset(self) -> None:
        self.lines: list[bytes] = []
        self.scan = 0
        self.size = 0

    def feed(self, buf: bytearray) -> int | None:
        """The offset just past the blank line ending the head, or None."""
        limits = self.limits
        while True:
            nl = buf.find(b"\n", self.scan)
            if nl < 0:
                pending = len(buf) - self.scan
                if not self.lines and pending > limits.max_request_line:
                    raise _HeadError(self.first_line_status, "the start line is too long")
                if self.lines and self.size + pending > limits.max_header_bytes:
                    raise _HeadError(431, "the header section is too large")
                return None
            line = bytes(buf[self.scan : nl])
            self.scan = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if b"\r" in line:
                raise _HeadError(400, "a bare CR in the message head")
            if not line:
                if not self.lines:
                    if self.scan > 64:  # RFC 9112 section 2.2: ignore empty lines first
                        raise _HeadError(400, "too many empty lines before the start line")
                    continue
                return self.scan
            if not self.lines:
                if len(line) > limits.max_request_line:
                    raise _HeadError(self.first_line_status, "the start line is too long")
            else:
                self.size += len(line) + 2
                if self.size > limits.max_header_bytes:
                    raise _HeadError(431, "the header section is too large")
                if len(self.lines) > limits.max_headers:
                    raise _HeadError(431, f"more than {limits.max_headers} header fields")
            self.lines.append(line)


def _parse_fields(lines: list[bytes], response: bool = False) -> Headers:
    """Field lines (RFC 9112 section 5.1): a token name, a colon with no
    space before it, the value without surrounding whitespace. In a
    ``response`` whitespace before the colon is removed (section 5.1: a
    proxy MUST remove it from a response; a request with it gets 400)."""
    out: Headers = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise _HeadError(400, "obsolete line folding in a header field")
        name, colon, value = line.partition(b":")
        if response:
            name = name.rstrip(b" \t")
        if not colon or not _TOKEN.match(name):
            raise _HeadError(400, f"malformed header field {line[:40]!r}")
        value = value.strip(b" \t")
        if b"\x00" in value:
            raise _HeadError(400, "a NUL in a header field value")
        out.append((name, value))
    return out


def _get_all(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n.lower() == name]


def _tokens(headers: Headers, name: bytes) -> list[bytes]:
    return [
        t.strip(b" \t").lower() for v in _get_all(headers, name) for t in v.split(b",") if t.strip()
    ]


def _content_length(values: list[bytes]) -> int | None:
    """RFC 9110 section 8.6: one value, or a list of identical ones."""
    if not values:
        return None
    parts = {p.strip(b" \t") for v in values for p in v.split(b",")}
    if len(parts) != 1:
        raise ValueError("several different Content-Length values")
    (text,) = parts
    if not text.isdigit() or len(text) > 18:
        raise ValueError(f"Content-Length {text[:20]!r} is not a number")
    return int(text)


class _Chunked:
    """Decodes chunked transfer coding (RFC 9112 section 7.1): sizes in hex
    (at most 16 digits), extensions ignored, the CRLF after each chunk's
    data required, trailer fields limited as header fields are."""

    def __init__(self, limits: Limits, response: bool = False) -> None:
        self.limits = limits
        self.response = response
        self.remaining = 0
        self.state = "size"  # size, data, crlf, trailers
        self.trailers = _HeadReader(limits, 400)
        self.trailers.lines = [b"(trailers)"]  # a start line already read

    def feed(self, buf: bytearray, out: list[bytes]) -> Headers | None:
        """Decode from the front of ``buf`` (consumed bytes are removed),
        appending data to ``out``; the trailer fields once the last chunk
        and the trailer section are read, else None."""
        limits = self.limits
        while True:
            if self.state == "size":
                nl = buf.find(b"\n", 0, limits.max_chunk_line + 1)
                if nl < 0:
                    if len(buf) > limits.max_chunk_line:
                        raise _HeadError(400, "a chunk size line is too long")
                    return None
                line = bytes(buf[:nl])
                if line.endswith(b"\r"):
                    line = line[:-1]
                if b"\r" in line:
                    raise _HeadError(400, "a bare CR in a chunk size line")
                size_text = line.split(b";", 1)[0].strip(b" \t")
                if not 0 < len(size_text) <= 16 or size_text.strip(b"0123456789abcdefABCDEF"):
                    raise _HeadError(400, f"bad chunk size {size_text[:20]!r}")
                del buf[: nl + 1]
                self.remaining = int(size_text, 16)
                self.state = "data" if self.remaining else "trailers"
            elif self.state == "data":
                if not buf:
                    return None
                take = min(self.remaining, len(buf))
                out.append(bytes(buf[:take]))
                del buf[:take]
                self.remaining -= take
                if self.remaining == 0:
                    self.state = "crlf"
            elif self.state == "crlf":
                if buf[:2] == b"\r\n":
                    del buf[:2]
                elif buf[:1] == b"\n":
                    del buf[:1]
                elif bytes(buf) in (b"", b"\r"):
                    return None
                else:
                    raise _HeadError(400, "chunk data is not followed by CRLF")
                self.state = "size"
            elif self.state == "trailers":
                end = self.trailers.feed(buf)
                if end is None:
                    return None
                lines = self.trailers.lines[1:]
                del buf[:end]
                self.state = "done"
                return _parse_fields(lines, self.response)
            else:
                return []


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


def _last_chunk(trailers: Headers) -> bytes:
    return b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n"


def _parse_authority(text: str, default_port: int | None) -> tuple[str, int]:
    """host[:port] (RFC 3986 section 3.2): a reg-name, IPv4, or [IPv6]."""
    if "@" in text:
        raise _HeadError(400, "userinfo in the request target")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise _HeadError(400, f"unclosed IPv6 literal in {text!r}")
        host, rest = text[1:close], text[close + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _HeadError(400, f"bad IPv6 literal {host!r}") from None
        if rest and not rest.startswith(":"):
            raise _HeadError(400, f"bad authority {text!r}")
        port_text: str | None = rest[1:] if rest else None
    else:
        host, colon, after = text.rpartition(":")
        port_text = after if colon else None
        if not colon:
            host = text
        if not host or not _HOST.match(host):
            raise _HeadError(400, f"bad host {host!r}")
    if port_text is None or port_text == "":
        if default_port is None:
            raise _HeadError(400, f"{text!r} has no port")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise _HeadError(400, f"bad port {port_text!r}")
    return host, int(port_text)


def _check_credentials(headers: Headers, credentials: Mapping[bytes, bytes]) -> str | None:
    """The user named by a valid ``Proxy-Authorization: Basic`` (RFC 7617
    section 2), None when missing or wrong."""
    values = _get_all(headers, b"proxy-authorization")
    if len(values) != 1:
        return None
    scheme, _, token = values[0].partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    expected = credentials.get(user)
    ok = hmac.compare_digest(password, expected if expected is not None else password + b"!")
    return user.decode("utf-8", "replace") if ok and expected is not None else None


# --- the client side -------------------------------------------------------------


class State(enum.Enum):
    HEAD = "head"  # reading a request head
    BODY = "body"  # reading a request body
    WAIT = "wait"  # the request is read; its response is not finished
    TUNNEL_WAIT = "tunnel-wait"  # CONNECT read; waiting for tunnel_established/failed
    TUNNEL = "tunnel"  # bytes pass through
    CLOSED = "closed"


class HTTPProxyServer:
    """One client connection of a forward proxy (see the module docstring).

    ``credentials`` (user -> password) requires ``Proxy-Authorization:
    Basic``: without it, or wrong, a 407 with ``Proxy-Authenticate: Basic
    realm=...`` (RFC 9110 section 11.7.1). ``via`` is the pseudonym in the
    ``Via`` field this proxy adds (RFC 9110 section 7.6.3; None adds none).
    ``stats`` counts requests, tunnels, errors by status and trailers dropped."""

    def __init__(
        self,
        credentials: Mapping[str, str] | None = None,
        *,
        realm: str = "wireguard-sansio",
        limits: Limits = Limits(),
        via: str | None = "wireguard-sansio",
    ) -> None:
        self._credentials = (
            None
            if credentials is None
            else {u.encode(): p.encode() for u, p in credentials.items()}
        )
        self.realm = realm
        self.limits = limits
        self.via = via
        self.state = State.HEAD
        self.stats: Counter[str] = Counter()
        self._buffer = bytearray()
        self._out = bytearray()
        self._head = _HeadReader(limits, 414)
        self._close_after = False
        self._body: _Chunked | int | None = None  # chunked decoder, or bytes left
        self._request_done = False
        self._response_done = False
        self._method = b""
        self._client_version = (1, 1)
        self._response: ResponseHead | None = None
        self._response_framing = ""

    # --- outputs ----------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def closing(self) -> bool:
        """Close the connection once data_to_send() is written."""
        return self.state is State.CLOSED

    @property
    def paused(self) -> bool:
        """Stop reading from the client until the current response is done
        or the tunnel is up (what it sent meanwhile is held, at most
        ``limits.max_pipelined`` bytes; beyond that, a 400 if the response
        has not started, else the held bytes are dropped, counted in
        ``stats["discarded_bytes"]``, and the connection closes after the
        response)."""
        return (
            self.state in (State.WAIT, State.TUNNEL_WAIT)
            and len(self._buffer) >= self.limits.max_pipelined
        )

    # --- input from the client --------------------------------------------

    def receive_data(self, data: bytes) -> list[ClientEvent]:
        """Consume bytes from the client (b"" just reads what is held).
        Raises :class:`HTTPProxyError` after queuing the error response."""
        if self.state is State.TUNNEL:
            return [TunnelData(bytes(data))] if data else []
        if self.state is State.CLOSED:
            self.stats["discarded_bytes"] += len(data)
            return []
        self._buffer += data
        if self.state is State.TUNNEL_WAIT:
            if len(self._buffer) > self.limits.max_pipelined:
                self._error(400, "too much data before the tunnel was established")
            return []
        events: list[ClientEvent] = []
        try:
            while self._buffer or self.state is State.BODY:
                if self.state is State.HEAD:
                    if not self._read_head(events):
                        break
                elif self.state is State.BODY:
                    if not self._read_body(events):
                        break
                else:
                    break
        except _HeadError as exc:
            self._error(exc.status, str(exc))
        if self.state is State.WAIT and len(self._buffer) > self.limits.max_pipelined:
            if self._response is None:
                self._error(400, "too much pipelined data while a response is pending")
            # the response is under way: a 400 now would land inside it; finish
            # it, then close (the client retries what it pipelined)
            self.stats["pipelined_overflow"] += 1
            self.stats["discarded_bytes"] += len(self._buffer)
            self._buffer.clear()
            self._close_after = True
        return events

    def receive_eof(self) -> None:
        """The client closed its side: no more requests."""
        if self.state in (State.HEAD, State.BODY) and (self._buffer or self.state is State.BODY):
            self.stats["incomplete_requests"] += 1
        if self.state in (State.HEAD, State.TUNNEL_WAIT):
            self.state = State.CLOSED
        self._close_after = True

    def _error(self, status: int, message: str, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
        self.stats[f"error_{status}"] += 1
        self._out += _error_response(status, message, extra)
        self.stats["discarded_bytes"] += len(self._buffer)
        self._buffer.clear()
        self.state = State.CLOSED
        raise HTTPProxyError(status, message)

    def _read_head(self, events: list[ClientEvent]) -> bool:
        end = self._head.feed(self._buffer)
        if end is None:
            return False
        lines = self._head.lines
        self._head.reset()
        del self._buffer[:end]
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not all(parts):
            raise _HeadError(400, f"malformed request line {lines[0][:60]!r}")
        method, target, version = parts
        if not _TOKEN.match(method):
            raise _HeadError(400, "malformed method")
        matched = _VERSION.match(version)
        if not matched:
            raise _HeadError(400, f"malformed HTTP version {version[:20]!r}")
        major, minor = int(matched[1]), int(matched[2])
        if major != 1:
            raise _HeadError(505, f"HTTP/{major}.{minor} is not supported")
        self._client_version = (1, minor)
        headers = _parse_fields(lines[1:])
        if len(_get_all(headers, b"host")) > 1:  # RFC 9112 section 3.2
            raise _HeadError(400, "more than one Host field")
        if any(c < 0x21 or c > 0x7E or c == 0x23 for c in target):  # CTLs, space, '#'
            raise _HeadError(400, "invalid characters in the request target")
        self.stats["requests"] += 1
        username = None
        if self._credentials is not None:
            username = _check_credentials(headers, self._credentials)
            if username is None:
                realm = self.realm.replace("\\", "\\\\").replace('"', '\\"')
                challenge = f'Basic realm="{realm}", charset="UTF-8"'.encode()
                self._error(
                    407, "proxy authentication required", [(b"Proxy-Authenticate", challenge)]
                )
        connection = _tokens(headers, b"connection") + _tokens(headers, b"proxy-connection")
        if minor == 0:
            self._close_after = b"keep-alive" not in connection
        else:
            self._close_after = b"close" in connection
        self._method = method
        text_target = target.decode("ascii")
        if method == b"CONNECT":
            host, port = _parse_authority(text_target, None)
            self.stats["tunnels"] += 1
            self.state = State.TUNNEL_WAIT
            events.append(TunnelRequest(host, port, headers, username))
            return False
        lower = text_target.lower()
        if not lower.startswith(("http://", "https://", "ws://", "wss://", "ftp://")):
            if text_target.startswith("/") or text_target == "*":
                self._error(
                    405, "this is a proxy: send absolute-URI requests or CONNECT", [(b"Allow", b"")]
                )
            raise _HeadError(400, "the request target is not an absolute URI")
        if not lower.startswith("http://"):
            raise _HeadError(501, "only http:// URIs are forwarded (use CONNECT for https)")
        rest = text_target[7:]
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        authority, path = rest[:cut], rest[cut:]
        host, port = _parse_authority(authority, 80)
        if not path.startswith("/"):
            path = "/" + path  # RFC 9112 section 3.2.1: an empty path is sent as "/"
        # framing of the request body (RFC 9112 section 6.3, items 3-6)
        te = _tokens(headers, b"transfer-encoding")
        lengths = _get_all(headers, b"content-length")
        if te:
            if minor == 0:
                raise _HeadError(400, "Transfer-Encoding in an HTTP/1.0 request")
            if lengths:
                raise _HeadError(400, "both Transfer-Encoding and Content-Length")
            if te != [b"chunked"]:
                raise _HeadError(501, f"transfer coding {b', '.join(te).decode()!r}")
            self._body = _Chunked(self.limits)
            framing = [(b"Transfer-Encoding", b"chunked")]
        else:
            try:
                length = _content_length(lengths)
            except ValueError as exc:
                raise _HeadError(400, str(exc)) from None
            self._body = length or 0
            framing = [(b"Content-Length", b"%d" % length)] if length is not None else []
        head = bytearray(b"%s %s HTTP/1.1\r\n" % (method, path.encode("ascii")))
        head += b"Host: " + authority.encode("ascii") + b"\r\n"
        dropped = set(connection)  # RFC 9110 section 7.6.1: the fields Connection names
        for name, value in headers:
            low = name.lower()
            if low in HOP_BY_HOP or low in dropped or low in (b"host", b"content-length"):
                continue
            head += name + b": " + value + b"\r\n"
        for name, value in framing:
            head += name + b": " + value + b"\r\n"
        if self.via is not None:
            head += b"Via: 1.%d %s\r\n" % (minor, self.via.encode("ascii", "replace"))
        head += b"\r\n"
        events.append(
            ForwardRequest(method.decode("ascii"), host, port, path, bytes(head), username)
        )
        self._response_done = False
        self._response = None
        self._request_done = False
        self.state = State.BODY
        return True

    def _read_body(self, events: list[ClientEvent]) -> bool:
        body = self._body
        if isinstance(body, int):
            take = min(body, len(self._buffer))
            if take:
                events.append(RequestBody(bytes(self._buffer[:take])))
                del self._buffer[:take]
                body -= take
                self._body = body
            if body:
                return False
            events.append(RequestEnd(b""))
        else:
            assert body is not None
            pieces: list[bytes] = []
            trailers = body.feed(self._buffer, pieces)
            events.extend(RequestBody(_chunk(p)) for p in pieces if p)
            if trailers is None:
                return False
            trailers = [(n, v) for n, v in trailers if n.lower() not in HOP_BY_HOP]
            events.append(RequestEnd(_last_chunk(trailers)))
        self._request_done = True
        self.state = State.WAIT
        self._maybe_next()
        return self.state is State.HEAD

    def _maybe_next(self) -> None:
        if self._request_done and self._response_done and self.state is State.WAIT:
            self.state = State.CLOSED if self._close_after else State.HEAD
            if self.state is State.CLOSED:  # requests pipelined after the last one
                self.stats["discarded_bytes"] += len(self._buffer)
                self._buffer.clear()

    # --- the caller's reports -----------------------------------------------

    def tunnel_established(self) -> list[ClientEvent]:
        """The CONNECT target is connected: 200, then bytes pass through.
        Returns what the client sent after its request meanwhile."""
        if self.state is not State.TUNNEL_WAIT:
            raise LocalProtocolError(f"tunnel_established() in state {self.state.value}")
        self._out += b"HTTP/1.1 200 Connection established\r\n\r\n"
        self.state = State.TUNNEL
        early = bytes(self._buffer)
        self._buffer.clear()
        return [TunnelData(early)] if early else []

    def failed(self, status: int, message: str) -> None:
        """The target could not be reached (502) or did not answer in time
        (504). Before any of the response was sent: that error response,
        then close; after: close (the client sees a cut response)."""
        if status not in (502, 503, 504):
            raise LocalProtocolError("failed() takes 502, 503 or 504")
        if self.state is State.CLOSED:
            return
        if self._response is None:
            self.stats[f"error_{status}"] += 1
            self._out += _error_response(status, message)
        else:
            self.stats["responses_cut"] += 1
        self.stats["discarded_bytes"] += len(self._buffer)
        self._buffer.clear()
        self.state = State.CLOSED

    def send_response(self, event: ResponseEvent) -> None:
        """Frame one event of the target's response for the client."""
        if self.state is State.CLOSED:
            return
        if isinstance(event, ResponseHead):
            self._send_head(event)
        elif isinstance(event, ResponseBody):
            if self._response is None:
                raise LocalProtocolError("response body before its head")
            if self._response_framing == "chunked":
                self._out += _chunk(event.data)
            else:
                self._out += event.data
        else:
            if self._response is None:
                raise LocalProtocolError("response end before its head")
            if self._response_framing == "chunked":
                self._out += _last_chunk(event.trailers)
            elif event.trailers:
                self.stats["trailers_dropped"] += 1
            self._response_done = True
            if self._response_framing == "close":
                self._close_after = True
            if not self._request_done:
                # the rest of the request body cannot be told from a next request
                self.stats["discarded_bytes"] += len(self._buffer)
                self._buffer.clear()
                self.state = State.CLOSED
                return
            self._maybe_next()

    def _send_head(self, head: ResponseHead) -> None:
        minor = self._client_version[1]
        if head.informational:
            if head.status == 101 or minor == 0:  # no 1xx to HTTP/1.0 (RFC 9110 15.2)
                self.stats["informational_dropped"] += 1
                return
            self._out += _status_line(head) + _fields(head.headers) + b"\r\n"
            return
        if self._response is not None:
            raise LocalProtocolError("a second final response")
        self._response = head
        framing = head.framing
        fields = list(head.headers)
        if framing in ("chunked", "close"):
            framing = "chunked" if minor >= 1 else "close"
            if framing == "chunked":
                fields.append((b"Transfer-Encoding", b"chunked"))
        elif framing == "length":
            fields.append((b"Content-Length", b"%d" % (head.length or 0)))
        self._response_framing = framing
        if framing == "close" or (not self._request_done and self._body):
            self._close_after = True
        if self._close_after:
            fields.append((b"Connection", b"close"))
        elif minor == 0:
            fields.append((b"Connection", b"keep-alive"))
        if self.via is not None:
            fields.append((b"Via", b"1.1 " + self.via.encode("ascii", "replace")))
        self._out += _status_line(head) + _fields(fields) + b"\r\n"


def _status_line(head: ResponseHead) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (head.status, head.reason)


def _fields(headers: Headers) -> bytes:
    return b"".join(n + b": " + v + b"\r\n" for n, v in headers)


def _error_response(
    status: int, message: str, extra: Sequence[tuple[bytes, bytes]] = ()
) -> bytes:
    body = f"{status} {REASONS.get(status, '')}: {message}\n".encode()
    fields = [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", b"%d" % len(body)),
        (b"Connection", b"close"),
        *extra,
    ]
    return (
        b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "Error").encode())
        + _fields(fields)
        + b"\r\n"
        + body
    )


# --- the target side ---------------------------------------------------------------


class UpstreamResponse:
    """The target's response to one request (RFC 9112 section 6.3): status
    line and fields (hop-by-hop ones removed), then the body decoded of its
    framing. ``method`` is the request's (a response to HEAD has no body).
    ``reusable`` says, once it ended, whether the connection to the target
    can carry another request."""

    def __init__(self, method: str, limits: Limits = Limits()) -> None:
        self.method = method.upper()
        self.limits = limits
        self._buffer = bytearray()
        self._head = _HeadReader(limits, 502)
        self._body: _Chunked | int | None = None
        self._framing = ""
        self.done = False
        self.reusable = False
        self.discarded = 0  # bytes after the end of the response

    def receive_data(self, data: bytes) -> list[ResponseEvent]:
        """Events for these bytes. Raises :class:`UpstreamError`."""
        if self.done:
            self.discarded += len(data)
            if data:  # not asked for (no pipelining to the target): not reusable
                self.reusable = False
            return []
        self._buffer += data
        events: list[ResponseEvent] = []
        try:
            while not self.done:
                if self._body is None and self._framing != "close":
                    end = self._head.feed(self._buffer)
                    if end is None:
                        break
                    lines = self._head.lines
                    self._head.reset()
                    del self._buffer[:end]
                    head = self._parse_head(lines)
                    events.append(head)
                    if head.informational:
                        continue
                    if head.framing == "none" or (head.framing == "length" and not head.length):
                        self._finish(events, [])
                    continue
                if not self._read_body(events):
                    break
        except _HeadError as exc:
            raise UpstreamError(f"the target's response: {exc}") from None
        return events

    def receive_eof(self) -> list[ResponseEvent]:
        """The target closed: the end of a close-delimited body, else an
        error (the response is cut short)."""
        if self.done:
            return []
        if self._framing == "close":
            events: list[ResponseEvent] = []
            if self._buffer:
                events.append(ResponseBody(bytes(self._buffer)))
                self._buffer.clear()
            self.done = True
            self.reusable = False
            events.append(ResponseEnd([]))
            return events
        raise UpstreamError("the target closed the connection before the end of its response")

    def _finish(self, events: list[ResponseEvent], trailers: Headers) -> None:
        events.append(ResponseEnd(trailers))
        self.done = True
        if self._buffer:
            # bytes past the end would be taken for the next response
            self.reusable = False
            self.discarded += len(self._buffer)
            self._buffer.clear()

    def _parse_head(self, lines: list[bytes]) -> ResponseHead:
        version, _, rest = lines[0].partition(b" ")
        status, _, reason = rest.partition(b" ")
        matched = _VERSION.match(version)
        if not matched or matched[1] != b"1" or not _STATUS.match(status):
            raise _HeadError(502, f"malformed status line {lines[0][:60]!r}")
        if any((c < 0x20 and c != 0x09) or c == 0x7F for c in reason):
            raise _HeadError(502, "control characters in the reason phrase")
        code = int(status)
        if code < 100:  # RFC 9110 section 15: 100..599 (and it would go out as "99")
            raise _HeadError(502, f"status code {code:03d} is below 100")
        headers = _parse_fields(lines[1:], response=True)
        connection = _tokens(headers, b"connection")
        keep = (b"close" not in connection) if matched[2] != b"0" else (b"keep-alive" in connection)
        kept = [
            (n, v)
            for n, v in headers
            if n.lower() not in HOP_BY_HOP
            and n.lower() not in connection
            and n.lower() != b"content-length"
        ]
        length = None
        if 100 <= code < 200:
            return ResponseHead(code, reason, kept, "none")
        te = _tokens(headers, b"transfer-encoding")
        if self.method == "HEAD" or code in (204, 304):
            framing = "none"
            if code != 204:  # the length of what a GET would get (RFC 9110 section 8.6)
                kept += [(b"Content-Length", v) for v in _get_all(headers, b"content-length")][:1]
        elif te:
            if te != [b"chunked"]:
                # Transfer-Encoding is hop by hop and removed: a body in another
                # coding would reach the client undecodable (as nginx, 502)
                raise _HeadError(502, f"transfer coding {b', '.join(te).decode()!r}")
            framing = "chunked"
            self._body = _Chunked(self.limits, response=True)
        else:
            try:
                length = _content_length(_get_all(headers, b"content-length"))
            except ValueError as exc:
                raise _HeadError(502, str(exc)) from None
            if length is None:
                framing, keep = "close", False
            else:
                framing = "length"
                self._body = length
        self._framing = framing
        self.reusable = keep
        return ResponseHead(code, reason, kept, framing, length)

    def _read_body(self, events: list[ResponseEvent]) -> bool:
        body = self._body
        if self._framing == "close":
            if self._buffer:
                events.append(ResponseBody(bytes(self._buffer)))
                self._buffer.clear()
            return False
        if isinstance(body, int):
            take = min(body, len(self._buffer))
            if take:
                events.append(ResponseBody(bytes(self._buffer[:take])))
                del self._buffer[:take]
                body -= take
                self._body = body
            if body:
                return False
            self._finish(events, [])
            return True
        assert body is not None
        pieces: list[bytes] = []
        trailers = body.feed(self._buffer, pieces)
        events.extend(ResponseBody(p) for p in pieces if p)
        if trailers is None:
            return False
        self._finish(events, [(n, v) for n, v in trailers if n.lower() not in HOP_BY_HOP])
        return True
