"""Scale (issue 15, item 5): memory and CPU grow linearly with peers and
allowed IPs. No timing: CPU is counted as Python lines executed in the
package (``sys.settrace``), which a busy machine does not change, and memory
with tracemalloc."""

from __future__ import annotations

import gc
import ipaddress
import random
import sys
import tracemalloc
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wireguard.allowedips import AllowedIPs
from wireguard.device import Device
from wireguard.keys import PrivateKey, PublicKey
from wireguard.uapi import (
    UAPI,
    UAPIConnection,
    UAPIError,
    _format_ip,
    _parse_endpoint_ipaddress,
    format_allowed_ip,
    format_endpoint,
    parse_allowed_ip,
    parse_allowed_ip_packed,
    parse_endpoint,
)

PACKAGE = str(Path(__file__).resolve().parents[1] / "wireguard")


def lines_run(fn: Callable[[], Any]) -> int:
    """How many lines of the package's Python code one call of *fn* runs."""
    count = 0

    def local(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def global_(frame: FrameType, event: str, arg: object) -> Any:
        if frame.f_code.co_filename.startswith(PACKAGE):
            return local
        return None

    old = sys.gettrace()
    sys.settrace(global_)
    try:
        fn()
    finally:
        sys.settrace(old)
    return count


class Value:
    __slots__ = ()


def test_readding_a_prefix_costs_the_same_however_many_a_peer_has() -> None:
    # Re-adding a prefix a peer owns moves it to the end of its list (as
    # wireguard-go): once a scan of the whole list, now one dict move. Also a
    # prefix moving from a peer with many prefixes to another.
    def costs(n: int) -> tuple[int, int, int]:
        table: AllowedIPs[Value] = AllowedIPs()
        big, other = Value(), Value()
        for i in range(n):
            table.insert(IPv4Network((10 << 24 | i << 8, 24)), big)
        # The middle one: a scan of the list would go half way.
        first = IPv4Network((10 << 24 | n // 2 << 8, 24))
        second = IPv4Network("10.0.1.0/24")
        readd = lines_run(lambda: table.insert(first, big))
        assert table.entries_for(big)[-1] == first
        move = lines_run(lambda: table.insert(second, other))
        assert table.lookup("10.0.1.1") is other and len(table.entries_for(big)) == n - 1
        remove = lines_run(lambda: table.remove(first, big))
        assert len(table.entries_for(big)) == n - 2
        return readd, move, remove

    assert costs(100) == costs(20_000)


def device_memory_per_peer(count: int) -> float:
    rng = random.Random(count)
    keys = [PublicKey(rng.randbytes(32)) for _ in range(count)]
    device = Device(PrivateKey(rng.randbytes(32)).clamped())
    endpoints = [(f"198.51.{i >> 8 & 255}.{i & 255}", 51820) for i in range(count)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, key in enumerate(keys):
            device.add_peer(key, allowed_ips=[f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32"],
                            endpoint=endpoints[i])  # fmt: skip
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(device.peers) == count
    return used / count


def test_memory_per_configured_peer_is_linear_and_below_the_old_figure() -> None:
    # Issue 15 measured 1,352 bytes per peer (public key, one allowed IP, an
    # endpoint: bench_transport.py); the handshake-only state (cookie keys)
    # is now made at the first handshake, the timer callback is one bound
    # method, the allowed-IPs bookkeeping one int per single-prefix peer.
    # The endpoints are the caller's and not counted here.
    small, large = device_memory_per_peer(1_000), device_memory_per_peer(10_000)
    assert large < 1.15 * small, (small, large)
    assert large < 1_000, large


def test_lazy_cookie_state_is_made_once_and_only_when_used() -> None:
    a, b = Device(PrivateKey.generate()), Device(PrivateKey.generate())
    peer = a.add_peer(b.public_key, endpoint=("192.0.2.2", 51820))
    b.add_peer(a.public_key, endpoint=("192.0.2.1", 51820))
    assert peer._cookies is None
    out = a.initiate_handshake(b.public_key, 1.0)
    cookies = peer.cookies
    assert cookies is peer.cookies is not None
    (init, _), = out.datagrams
    (resp, _), = b.receive_datagram(init, ("192.0.2.1", 51820), 1.0).datagrams
    a.receive_datagram(resp, ("192.0.2.2", 51820), 1.0)
    assert peer.current is not None and peer.cookies is cookies


# --- the UAPI's fast paths against what they replaced ------------------------------------

# Text near the forms a prefix takes: valid ones, and the ways to get one wrong
# (leading zeros, a zone, a netmask, a sign, spaces, too many digits or groups).
_V4_PARTS = st.sampled_from(["0", "1", "9", "10", "01", "255", "256", "00", "192", " 1", "1 "])
_HEXTETS = st.sampled_from(["0", "1", "ffff", "FFFF", "0db8", "2001", "12345", "g", "", "00000"])


@st.composite
def prefix_texts(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 6))
    if kind == 0:
        address = ".".join(draw(st.lists(_V4_PARTS, min_size=3, max_size=5)))
    elif kind == 1:
        address = ":".join(draw(st.lists(_HEXTETS, min_size=2, max_size=9)))
        if draw(st.booleans()):
            address += ":" + ".".join(draw(st.lists(_V4_PARTS, min_size=4, max_size=4)))
    elif kind in (2, 5):
        address = str(ipaddress.IPv6Address(draw(st.integers(0, 2**128 - 1)) >> draw(
            st.integers(0, 128))))  # fmt: skip
    elif kind in (3, 6):
        address = str(ipaddress.IPv4Address(draw(st.integers(0, 2**32 - 1))))
    else:
        return draw(st.text(alphabet="0123456789abcdef:./%-+ x\x00\u0663", max_size=24))
    if draw(st.integers(0, 9)) == 0:
        address += draw(st.sampled_from(["%eth0", "%1", "%"]))
    odd = st.sampled_from(["", "-1", "+8", "08", "0x8", "255.0.0.0", " 8"])
    lengths = st.integers(0, 129).map(str)
    length = draw(st.one_of(lengths, lengths, lengths, odd))
    return address + draw(st.sampled_from(["/"] * 6 + ["//", ""])) + length


def slow_parse(text: str) -> tuple[bytes, int] | tuple[int, str]:
    try:
        network = parse_allowed_ip(text)
    except UAPIError as exc:
        return exc.errno, str(exc)
    return network.network_address.packed, network.prefixlen


def fast_parse(text: str) -> tuple[bytes, int] | tuple[int, str]:
    try:
        packed, length = parse_allowed_ip_packed(text)
    except UAPIError as exc:
        return exc.errno, str(exc)
    # Host bits stay in the fast path's address; the table masks them off.
    network = ipaddress.ip_network((packed, length), strict=False)
    return network.network_address.packed, network.prefixlen


@settings(max_examples=3000, deadline=None)
@given(text=prefix_texts())
def test_fast_prefix_parser_agrees_with_the_ipaddress_one(text: str) -> None:
    assert fast_parse(text) == slow_parse(text)


@pytest.mark.parametrize(
    "text",
    ["10.0.0.1/24", "0.0.0.0/0", "::/0", "::ffff:10.1.2.3/128", "::1.2.3.4/128", "fd00::1/64",
     "01.2.3.4/8", "1.2.3.4/033", "1.2.3.4/33", "::/129", "fe80::1%eth0/64", "1.2.3/8",
     "::ffff:01.2.3.4/128", "1:2:3:4:5:6:7:8:9/128", "1::2::3/64", "1.2.3.4/-1", "10.0.0.0",
     "/8", "\u0661.2.3.4/8", "1.2.3.4\x00/8", "1.2.3.4/8\x00"],
)  # fmt: skip
def test_fast_prefix_parser_on_known_forms(text: str) -> None:
    assert fast_parse(text) == slow_parse(text)


_SPECIAL_V6 = [
    0, 1, 0xFFFF, 0x1_0000, 0xFFFF_0000_0000, 0xFFFF_0102_0304, 0x0102_0304,
    0x1_0000_0000, 1 << 80, 1 << 79, 0xFFFF << 80, 0x2001_0DB8 << 96, 2**128 - 1,
]  # fmt: skip
_FLIPPED = st.tuples(st.sampled_from(_SPECIAL_V6), st.integers(0, 127)).map(
    lambda p: p[0] ^ 1 << p[1]
)


@settings(max_examples=2000, deadline=None)
@given(
    address=st.one_of(
        st.integers(0, 2**128 - 1),
        st.sampled_from(_SPECIAL_V6),
        _FLIPPED,
        st.integers(0, 2**128 - 1).map(lambda n: n & ~(0xFFFF_FFFF << 32 * (n % 4))),
    ),
    length=st.integers(0, 128),
)
def test_allowed_ip_formatting_agrees_with_ipaddress(address: int, length: int) -> None:
    # What get wrote before: Python's text, IPv4-mapped with a dotted quad
    # as netip prints it.
    expected = f"{_format_ip(ipaddress.IPv6Address(address))}/{length}"
    assert format_allowed_ip(128, address, length) == expected
    v4 = address & 0xFFFF_FFFF
    assert format_allowed_ip(32, v4, length % 33) == f"{ipaddress.IPv4Address(v4)}/{length % 33}"


class GetModel:
    """Allowed IPs of peers as plain lists: a prefix added to a peer leaves
    any peer that had it and goes to the end of its new (or same) peer's
    list (wireguard-go's allowedips insert); "-prefix" removes it only from
    the peer that has it; replace_allowed_ips empties the peer's list."""

    def __init__(self) -> None:
        self.peers: dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}

    def apply(self, peer: str, op: str, text: str) -> None:
        nets = self.peers.setdefault(peer, [])
        if op == "replace":
            nets.clear()
            return
        network = ipaddress.ip_network(text, strict=False)
        if op == "remove":
            if network in nets:
                nets.remove(network)
            return
        for other in self.peers.values():
            if network in other:
                other.remove(network)
        nets.append(network)


_POOL = ["10.0.0.0/8", "10.1.2.3/8", "10.0.0.0/24", "10.0.0.7/32", "0.0.0.0/0", "::/0",
         "fd00::/8", "fd00::1/128", "::ffff:10.0.0.1/128", "::ffff:0:0/96", "2001:db8::/32",
         "192.168.0.0/16", "1.0.0.0/8", "0.1.0.0/16"]  # fmt: skip
_PEER_NAMES = ["a", "b", "c"]


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(_PEER_NAMES),
            st.sampled_from(["add", "add", "add", "remove", "replace"]),
            st.sampled_from(_POOL),
        ),
        max_size=40,
    ),
    split=st.integers(1, 8),
)
def test_get_lists_allowed_ips_in_the_order_of_the_model(
    steps: list[tuple[str, str, str]], split: int
) -> None:
    device = Device(PrivateKey(bytes([9]) * 32).clamped())
    uapi = UAPI(device, now=lambda: 0.0)
    model = GetModel()
    keys = {name: PublicKey(bytes([ord(name)]) * 32) for name in _PEER_NAMES}
    # Several requests, each a run of lines for one peer after another.
    for start in range(0, len(steps), split):
        lines = []
        for name, op, text in steps[start : start + split]:
            lines.append(f"public_key={keys[name].to_hex()}")
            if op == "replace":
                lines.append("replace_allowed_ips=true")
            else:
                lines.append(f"allowed_ip={'-' if op == 'remove' else ''}{text}")
            model.apply(name, op, text)
        assert uapi.set(lines) == "errno=0\n\n"
    listed: dict[str, list[str]] = {}
    current = None
    names = {key.to_hex(): name for name, key in keys.items()}
    for line in uapi.get().splitlines():
        key, _, value = line.partition("=")
        if key == "public_key":
            current = listed.setdefault(names[value], [])
        elif key == "allowed_ip":
            assert current is not None
            current.append(value)
    expected = {
        name: [f"{_format_ip(net.network_address)}/{net.prefixlen}" for net in nets]
        for name, nets in model.peers.items()
    }
    assert listed == expected
    # The routing agrees with the listing: the longest listed prefix wins.
    owned = [(net, name) for name, nets in model.peers.items() for net in nets]
    for net, _ in owned:
        address = net.network_address
        matches = [(n.prefixlen, nm) for n, nm in owned if n.version == address.version
                   and address in n]  # fmt: skip
        best = device.peers[keys[max(matches)[1]]]
        assert device.allowed_ips.lookup(address) is best


def set_lines_cost(count: int) -> int:
    device = Device(PrivateKey(bytes([9]) * 32).clamped())
    uapi = UAPI(device, now=lambda: 0.0)
    lines = "".join(f"allowed_ip=10.{i >> 8 & 255}.{i & 255}.0/24\n" for i in range(count))
    request = f"set=1\npublic_key={'ab' * 32}\nreplace_allowed_ips=true\n{lines}\n".encode()

    def run() -> None:
        connection = UAPIConnection(uapi)
        connection.receive_data(request)
        assert b"".join(connection.outputs()) == b"errno=0\n\n"

    return lines_run(run)


def get_cost(peers: int, per_peer: int) -> int:
    device = Device(PrivateKey(bytes([9]) * 32).clamped())
    for n in range(peers):
        nets = [f"10.{n & 255}.{i >> 8 & 255}.{i & 255}/32" for i in range(per_peer)]
        device.add_peer(PublicKey(n.to_bytes(32, "big")), endpoint=("192.0.2.1", 1 + n),
                        allowed_ips=nets)  # fmt: skip
    uapi = UAPI(device, now=lambda: 0.0)
    return lines_run(uapi.get)


def test_set_and_get_cost_linear_in_lines_and_peers() -> None:
    # Lines of Python run per allowed IP set, per peer listed, per allowed IP
    # listed: the same for a small and a 10x larger request (within the
    # per-request and per-slice overhead).
    small, large = set_lines_cost(1_000), set_lines_cost(10_000)
    assert large < 10.5 * small, (small, large)
    small, large = get_cost(100, 1), get_cost(1_000, 1)
    assert large < 10.5 * small, (small, large)
    small, large = get_cost(1, 2_000), get_cost(1, 20_000)
    assert large < 10.5 * small, (small, large)


_ODD_HOSTS = ["fe80::1%eth0", "FD00::1", "0:0:0:0:0:0:0:1", "01.2.3.4", "host",
              "::ffff:1.2.3.4", "::1.2.3.4", "1.2.3.4 ", "", "[", "]", "[::1]"]  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(
    host=st.one_of(
        st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
        st.one_of(st.integers(0, 2**128 - 1), st.sampled_from(_SPECIAL_V6), _FLIPPED).map(
            lambda n: str(ipaddress.IPv6Address(n))
        ),
        st.sampled_from(_ODD_HOSTS),
    ),
    port=st.integers(0, 65535),
)
def test_endpoint_formatting_agrees_with_ipaddress(host: str, port: int) -> None:
    try:
        shown = _format_ip(ipaddress.ip_address(host))
    except ValueError:
        shown = host
    expected = f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}"
    assert format_endpoint((host, port)) == expected


def endpoint_result(parse: Callable[[str], object], text: str) -> object:
    try:
        return parse(text)
    except UAPIError as exc:
        return exc.errno, str(exc)


@settings(max_examples=3000, deadline=None)
@given(
    host=st.one_of(
        prefix_texts().map(lambda t: t.split("/")[0]),
        st.sampled_from(_ODD_HOSTS),
        st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n))),
    ),
    brackets=st.sampled_from(["[]", "[]", "", "[", "]"]),
    port=st.one_of(
        st.integers(0, 70000).map(str),
        st.sampled_from(["", "00080", "000000080", "-1", "+1", " 1", "1_0", "\u0661", "65536"]),
    ),
)
def test_fast_endpoint_parser_agrees_with_the_ipaddress_one(
    host: str, brackets: str, port: str
) -> None:
    left = brackets[:1] if brackets != "]" else ""
    right = brackets[-1:] if brackets != "[" else ""
    text = f"{left}{host}{right}:{port}"
    assert endpoint_result(parse_endpoint, text) == endpoint_result(
        _parse_endpoint_ipaddress, text
    )


# --- the set's line framing: fast run of lines against a plain model -------------------

_SET_LINES = [
    f"public_key={'ab' * 32}", f"public_key={'cd' * 32}", "allowed_ip=10.0.0.0/8",
    "allowed_ip=fd00::/8", "allowed_ip=-10.0.0.0/8", "allowed_ip=10.0.0.0/33",
    "replace_allowed_ips=true", "endpoint=192.0.2.1:51820", "persistent_keepalive_interval=x",
    "fwmark=5", "nonsense", "allowed_ip=1.2.3.4/32\r", "allowed_ip=1.2.3.5/32\r\r",
    "listen_port=51820",
]  # fmt: skip


def model_answers(uapi: UAPI, requests: list[list[str]]) -> list[str]:
    """Each request's lines applied with SetRequest, as the protocol reads
    them: one "\\r" dropped from a line's end, a bad line answered and the
    rest of the request dropped (the blank line that ends each request is
    the stream's business)."""
    answers = []
    for lines in requests:
        request = uapi.begin_set()
        answer = None
        for line in lines:
            if line.endswith("\r"):
                line = line[:-1]
            try:
                request.line(line)
            except UAPIError as exc:
                answer = request.abort(exc)
                break
        answers.append(answer if answer is not None else request.end())
    return answers


@settings(max_examples=300, deadline=None)
@given(
    requests=st.lists(st.lists(st.sampled_from(_SET_LINES), max_size=12), min_size=1, max_size=4),
    cuts=st.lists(st.integers(1, 40), min_size=1, max_size=8),
    blank=st.sampled_from(["\n", "\r\n"]),
)
def test_set_framing_matches_a_line_model(
    requests: list[list[str]], cuts: list[int], blank: str
) -> None:
    def fresh() -> UAPI:
        return UAPI(Device(PrivateKey(bytes([9]) * 32).clamped()), now=lambda: 0.0)

    ours, model = fresh(), fresh()
    stream = b"".join(
        ("set=1\n" + "".join(f"{line}\n" for line in lines) + blank).encode() for lines in requests
    )
    connection = UAPIConnection(ours)
    out = []
    position, turn = 0, 0
    while position < len(stream):  # in pieces of varying size, as reads come
        size = cuts[turn % len(cuts)]
        connection.receive_data(stream[position : position + size])
        position, turn = position + size, turn + 1
        while (piece := connection.next_output()) is not None:
            out.append(piece)
    answers = [a + "\n\n" for a in b"".join(out).decode().split("\n\n") if a]
    assert answers == model_answers(model, requests)
    assert ours.get() == model.get()
