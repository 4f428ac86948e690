"""The SOCKS5 server core: curl through a small asyncio server built on it
(CONNECT by address and by name, with and without RFC 1929 credentials,
failures as curl reads them), UDP ASSOCIATE with a standard-library client,
bytes written from RFC 1928/1929, and fuzzing."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import http.server
import os
import socket
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import need_tool
from tests.socks5_harness import Harness
from wireguard import socks5 as s
from wireguard.errors import LocalProtocolError, RemoteProtocolError

BODY = os.urandom(1 << 20)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


async def _curl(*args: str) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        need_tool("curl"),
        "-sS",
        "--max-time",
        "20",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode, out, err


@pytest.mark.parametrize(
    "scheme, host, atyp",
    [
        ("socks5", "127.0.0.1", s.AddressType.IPV4),  # curl resolves: an address
        ("socks5h", "localhost", s.AddressType.DOMAIN),  # the proxy resolves: a name
    ],
)
@pytest.mark.parametrize("credentials", [None, {"alice": "s3cret:x"}])
def test_curl_downloads_through_the_core(web, scheme, host, atyp, credentials):
    async def main():
        async with Harness(credentials) as h:
            auth = "alice:s3cret%3Ax@" if credentials else ""
            code, out, err = await _curl(
                "-x", f"{scheme}://{auth}127.0.0.1:{h.port}", f"http://{host}:{web}/file"
            )
            return h, code, out, err

    h, code, out, err = asyncio.run(main())
    assert code == 0, err
    assert hashlib.sha256(out).digest() == hashlib.sha256(BODY).digest()
    (request,) = h.requests
    assert request.command == s.Command.CONNECT and request.address_type == atyp
    assert (request.host, request.port) == (host, web)
    assert request.username == ("alice" if credentials else None)
    assert h.errors == []


def test_curl_sees_the_reply_codes():
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens: the connection is refused

    async def main():
        results = {}
        async with Harness({"alice": "secret"}) as h:
            base = f"127.0.0.1:{h.port}"
            results["refused"] = await _curl(
                "-x", f"socks5h://alice:secret@{base}", f"http://127.0.0.1:{port}/"
            )
            results["wrong password"] = await _curl(
                "-x", f"socks5h://alice:nope@{base}", "http://127.0.0.1:1/"
            )
            results["no credentials"] = await _curl(
                "-x", f"socks5h://{base}", "http://127.0.0.1:1/"
            )
            return h, results

    h, results = asyncio.run(main())
    assert results["refused"][0] == 97 and b"(5)" in results["refused"][2]  # X'05'
    assert results["wrong password"][0] == 97 and b"rejected" in results["wrong password"][2]
    assert b"No authentication method" in results["no credentials"][2]
    assert [type(e) for e in h.errors] == [s.Socks5AuthError, s.Socks5AuthError]


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        self.seen.append(data)
        self.transport.sendto(b"echo:" + data, addr)


def _udp_client(proxy_port: int, target: tuple[str, int]) -> list[bytes]:
    """A SOCKS5 UDP client written from RFC 1928 with the socket module."""
    control = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    control.sendall(b"\x05\x01\x00")
    assert control.recv(2) == b"\x05\x00"
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(10)
    control.sendall(
        b"\x05\x03\x00\x01"
        + socket.inet_aton("127.0.0.1")
        + struct.pack("!H", udp.getsockname()[1])
    )
    reply = control.recv(10)
    assert reply[:4] == b"\x05\x00\x00\x01"
    relay = (socket.inet_ntoa(reply[4:8]), struct.unpack("!H", reply[8:10])[0])
    header = b"\x00\x00\x00\x01" + socket.inet_aton(target[0]) + struct.pack("!H", target[1])
    named = b"\x00\x00\x00\x03\x09localhost" + struct.pack("!H", target[1])
    udp.sendto(b"\x00\x00\x01" + header[3:] + b"fragment", relay)  # FRAG=1: dropped
    udp.sendto(header + b"hello", relay)
    udp.sendto(named + b"by name", relay)
    got = [udp.recv(2048), udp.recv(2048)]
    control.close()
    udp.close()
    return got


def test_udp_associate_with_a_standard_library_client():
    async def main():
        loop = asyncio.get_running_loop()
        echo_transport, echo = await loop.create_datagram_endpoint(
            _Echo, local_addr=("127.0.0.1", 0)
        )
        target = echo_transport.get_extra_info("sockname")
        async with Harness() as h:
            got = await asyncio.to_thread(_udp_client, h.port, target)
        echo_transport.close()
        return h, got, echo.seen, target

    h, got, seen, target = asyncio.run(main())
    header = b"\x00\x00\x00\x01" + socket.inet_aton(target[0]) + struct.pack("!H", target[1])
    assert sorted(got) == sorted([header + b"echo:hello", header + b"echo:by name"])
    assert sorted(seen) == [b"by name", b"hello"]  # the fragment never reached the target
    (association,) = h.associations
    assert association.drops == {"fragmented": 1}
    assert h.requests[0].command == s.Command.UDP_ASSOCIATE


# --- bytes from RFC 1928 and RFC 1929 ----------------------------------------------


def _core(credentials=None, greeting=b"\x05\x01\x00"):
    core = s.Socks5Server(credentials)
    assert core.receive_data(greeting) == []
    return core


def test_no_auth_connect_by_name():
    core = _core()
    assert core.data_to_send() == b"\x05\x00"  # VER, METHOD X'00'
    (req,) = core.receive_data(b"\x05\x01\x00\x03\x0bexample.com\x00\x50")
    assert (req.command, req.host, req.port, req.address_type) == (
        s.Command.CONNECT,
        "example.com",
        80,
        s.AddressType.DOMAIN,
    )
    assert core.state is s.State.WAITING
    core.connected(("10.0.0.2", 40000))
    assert core.data_to_send() == b"\x05\x00\x00\x01\x0a\x00\x00\x02\x9c\x40"
    assert core.receive_data(b"GET / HTTP/1.1\r\n") == [s.Data(b"GET / HTTP/1.1\r\n")]


def test_ipv6_request_and_reply():
    core = _core()
    core.data_to_send()
    addr = socket.inet_pton(socket.AF_INET6, "fd00::1")
    (req,) = core.receive_data(b"\x05\x01\x00\x04" + addr + b"\x01\xbb")
    assert (req.host, req.port, req.address_type) == ("fd00::1", 443, s.AddressType.IPV6)
    core.connected(("fd00::2", 1))
    assert (
        core.data_to_send()
        == b"\x05\x00\x00\x04" + socket.inet_pton(socket.AF_INET6, "fd00::2") + b"\x00\x01"
    )


def test_username_password():
    core = _core({"bob": "pw"}, b"\x05\x02\x00\x02")
    assert core.data_to_send() == b"\x05\x02"
    assert core.receive_data(b"\x01\x03bob\x02pw") == []
    assert core.data_to_send() == b"\x01\x00"  # RFC 1929: STATUS X'00' success
    (req,) = core.receive_data(b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x16")
    assert req.username == "bob"


@pytest.mark.parametrize(
    "auth", [b"\x01\x03bob\x03pwx", b"\x01\x03eve\x02pw", b"\x02\x03bob\x02pw"]
)
def test_wrong_credentials_fail_and_close(auth):
    core = _core({"bob": "pw"}, b"\x05\x01\x02")
    core.data_to_send()
    with pytest.raises(s.Socks5AuthError):
        core.receive_data(auth)
    assert core.data_to_send() == b"\x01\x01" and core.closing


@pytest.mark.parametrize("greeting", [b"\x05\x01\x00", b"\x05\x00", b"\x05\x02\x01\x80"])
def test_no_acceptable_method(greeting):
    core = s.Socks5Server({"bob": "pw"})
    with pytest.raises(s.Socks5AuthError, match="no acceptable"):
        core.receive_data(greeting)
    assert core.data_to_send() == b"\x05\xff" and core.closing
    assert core.receive_data(b"more") == [] and core.discarded == len(greeting) + 4


def test_no_auth_refuses_a_client_that_only_offers_a_password():
    with pytest.raises(s.Socks5AuthError):
        s.Socks5Server().receive_data(b"\x05\x01\x02")


@pytest.mark.parametrize(
    "request_bytes, code",
    [
        (b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x16", s.Reply.COMMAND_NOT_SUPPORTED),  # BIND
        (b"\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x16", s.Reply.COMMAND_NOT_SUPPORTED),
        (b"\x05\x01\x00\x05\x7f\x00\x00\x01\x00\x16", s.Reply.ADDRESS_TYPE_NOT_SUPPORTED),
        (b"\x05\x01\x00\x03\x00\x00\x16", s.Reply.GENERAL_FAILURE),  # empty name
        (b"\x05\x01\x00\x03\x03a\x00b\x00\x16", s.Reply.GENERAL_FAILURE),  # NUL in the name
        (b"\x05\x01\x01\x01\x7f\x00\x00\x01\x00\x16", s.Reply.GENERAL_FAILURE),  # RSV
        (b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", s.Reply.GENERAL_FAILURE),  # SOCKS4 request
        (b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x00", s.Reply.GENERAL_FAILURE),  # port 0
    ],
)
def test_bad_requests_get_their_reply_and_close(request_bytes, code):
    core = _core()
    core.data_to_send()
    with pytest.raises(s.Socks5Error) as info:
        core.receive_data(request_bytes)
    assert info.value.reply == code
    assert core.data_to_send() == bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0]) and core.closing


@pytest.mark.parametrize("reply", [r for r in s.Reply if r != s.Reply.SUCCEEDED])
def test_failed_replies(reply):
    core = _core()
    core.receive_data(b"\x05\x01\x00\x01\x0a\x00\x00\x01\x00\x50")
    core.data_to_send()
    core.failed(reply)
    assert core.data_to_send() == bytes([5, reply, 0, 1, 0, 0, 0, 0, 0, 0]) and core.closing
    assert core.receive_data(b"late") == [] and core.discarded == 4


def test_caller_errors_are_local():
    core = _core()
    with pytest.raises(LocalProtocolError):
        core.connected(("1.2.3.4", 1))
    core.receive_data(b"\x05\x01\x00\x01\x0a\x00\x00\x01\x00\x50")
    with pytest.raises(LocalProtocolError):
        core.failed(s.Reply.SUCCEEDED)


def test_reply_for_errors():
    assert s.Reply.for_error(ConnectionRefusedError()) == s.Reply.CONNECTION_REFUSED
    assert s.Reply.for_error(TimeoutError()) == s.Reply.TTL_EXPIRED
    # The rootless tunnel's error for a destination no peer's AllowedIPs
    # cover: host unreachable (0x04), as issue 14 asks.
    assert s.Reply.for_error(OSError(errno.ENETUNREACH, "x")) == s.Reply.HOST_UNREACHABLE
    assert s.Reply.for_error(OSError(errno.EHOSTUNREACH, "x")) == s.Reply.HOST_UNREACHABLE
    assert s.Reply.for_error(ValueError()) == s.Reply.GENERAL_FAILURE
    from wireguard.dns import ResolutionError

    assert s.Reply.for_error(ResolutionError("x", "NXDOMAIN", [], [])) == s.Reply.HOST_UNREACHABLE


def test_pipelined_negotiation_and_early_data():
    core = s.Socks5Server({"u": "p"})
    events = core.receive_data(
        b"\x05\x01\x02" + b"\x01\x01u\x01p" + b"\x05\x01\x00\x01\x0a\x00\x00\x01\x00\x50" + b"hi"
    )
    assert [type(e) for e in events] == [s.Request, s.Data] and events[1].data == b"hi"
    assert core.data_to_send() == b"\x05\x02\x01\x00"


def test_a_megabyte_greeting_is_an_error_not_a_buffer():
    core = s.Socks5Server()
    with pytest.raises(s.Socks5Error):
        core.receive_data(b"\x05\xff" + bytes(range(256))[1:] + b"\x05" * (1 << 20))
    assert core.buffered == 0 and core.closing
    # byte by byte the core never holds more than one negotiation message
    core = s.Socks5Server({"u" * 255: "p" * 255})
    for byte in b"\x05\x01\x02\x01\xff" + b"u" * 255 + b"\xff" + b"p" * 254:
        core.receive_data(bytes([byte]))
        assert core.buffered <= s.MAX_MESSAGE


# --- UDP datagrams ------------------------------------------------------------


def test_udp_datagram_round_trip_and_errors():
    for host in ("10.0.0.1", "fd00::1", "db.internal"):
        packet = s.build_udp_datagram(host, 53, b"query")
        d = s.parse_udp_datagram(packet)
        assert (d.host, d.port, d.frag, d.data) == (host, 53, 0, b"query")
    assert (
        s.build_udp_datagram("10.0.0.1", 53, b"x") == b"\x00\x00\x00\x01\x0a\x00\x00\x01\x00\x35x"
    )
    for bad in (
        b"",
        b"\x00\x00\x00",
        b"\x01\x00\x00\x01" + bytes(6),
        b"\x00\x00\x00\x07" + bytes(6),
        b"\x00\x00\x00\x01\x0a\x00",
    ):
        with pytest.raises(s.Socks5DatagramError):
            s.parse_udp_datagram(bad)


def test_association_drops_are_counted():
    req = s.Request(s.Command.UDP_ASSOCIATE, "0.0.0.0", 0, s.AddressType.IPV4)
    a = s.UdpAssociation("127.0.0.1", req)
    good = s.build_udp_datagram("10.0.0.1", 53, b"q")
    assert a.client is None
    assert a.from_client(good, ("10.9.9.9", 5000)) is None  # another host
    assert (
        a.from_client(s.build_udp_datagram("10.0.0.1", 53, b"q", frag=1), ("127.0.0.1", 5000))
        is None
    )
    assert a.from_client(b"\x00", ("127.0.0.1", 5000)) is None
    assert a.from_client(good, ("127.0.0.1", 5000)).data == b"q"
    assert a.client == ("127.0.0.1", 5000)
    assert a.from_client(good, ("127.0.0.1", 5001)) is None  # the port is now fixed
    assert a.drops == {"wrong_source": 2, "fragmented": 1, "malformed": 1}
    assert a.to_client(b"r", ("10.0.0.1", 53)) == b"\x00\x00\x00\x01\x0a\x00\x00\x01\x00\x35r"


# --- fuzzing ------------------------------------------------------------------


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=12), st.booleans())
def test_random_input_raises_only_socks5_errors(chunks, with_auth):
    core = s.Socks5Server({"u": "p"} if with_auth else None)
    out = b""
    try:
        for chunk in chunks:
            core.receive_data(chunk)
            out += core.data_to_send()
            assert core.buffered < s.MAX_MESSAGE
    except s.Socks5Error as exc:
        assert isinstance(exc, RemoteProtocolError)
        out += core.data_to_send()
        assert core.closing
    # whatever was sent is a sequence of well-formed server messages
    if out:
        assert out[:1] == b"\x05"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_udp_datagrams(packet):
    try:
        d = s.parse_udp_datagram(packet)
    except s.Socks5DatagramError:
        return
    assert s.build_udp_datagram(d.host, d.port, d.data, d.frag) == packet or d.address_type == (
        s.AddressType.DOMAIN
    )


def test_encode_address_refuses_bad_names_with_a_local_error():
    for host in ("é" * 70, "a." + "ü" * 64 + ".de"):
        with pytest.raises(LocalProtocolError):
            s.encode_address(host, 80)
