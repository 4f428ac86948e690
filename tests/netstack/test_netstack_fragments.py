"""IP fragment reassembly and fragmentation (wireguard.netstack.fragment).

Fragments are cut here by the tests' own code, straight from RFC 791 3.1
and RFC 8200 4.5 (not by the module under test), at arbitrary 8-octet
boundaries, in any order, with duplicates and overlaps. What the stack
delivers is checked against a model that keeps the held octets as sets
(RFC 5722 with erratum 3089, as Linux applies it to both versions: a
fragment inside a run of held data is a duplicate and dropped alone, any
other overlap abandons the datagram). test_netstack_fragments_linux.py
holds the cases where Linux's choices are finer than the RFCs'; the
kernel's side, fragmenting and joining for real, is in
test_netstack_kernel.py.
"""

from __future__ import annotations

import ipaddress
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from netstack_helpers import PulledStack

from wireguard.netstack.fragment import (
    DATAGRAM_OVERHEAD,
    FRAGMENT_OVERHEAD,
    IPV4_REASSEMBLY_TIMEOUT,
    IPV6_REASSEMBLY_TIMEOUT,
    REASSEMBLY_MEMORY,
)
from wireguard.netstack.icmp import build_echo, parse_icmp
from wireguard.netstack.ip import build_ipv6, checksum, parse_ip
from wireguard.netstack.udp import build_udp

A4 = ipaddress.ip_address("10.0.0.1").packed
B4 = ipaddress.ip_address("10.0.0.2").packed
A6 = ipaddress.ip_address("fd00::1").packed
B6 = ipaddress.ip_address("fd00::2").packed
ADDRS = {4: (A4, B4), 6: (A6, B6)}


def _stack(**kwargs: object) -> PulledStack:
    return PulledStack(["10.0.0.2", "fd00::2"], mtu=1420, **kwargs)


def cut(packet: bytes, start: int, stop: int, ident: int, *, last: bool | None = None) -> bytes:
    """The fragment of *packet* (no options, no extension headers) holding
    the octets start..stop of its data, from the RFCs' own description:
    IPv4 (RFC 791 3.1) flags and offset in 8-octet units, a new total length
    and header checksum; IPv6 (RFC 8200 4.5) a Fragment header after the
    IPv6 header. *last* clears MF (by default: when stop is the end)."""
    if packet[0] >> 4 == 4:
        data = packet[20:]
        more = stop < len(data) if last is None else not last
        head = bytearray(packet[:20])
        head[2:4] = struct.pack("!H", 20 + stop - start)
        head[4:6] = struct.pack("!H", ident & 0xFFFF)
        head[6:8] = struct.pack("!H", (0x2000 if more else 0) | (start // 8))
        head[10:12] = b"\0\0"
        head[10:12] = struct.pack("!H", checksum(bytes(head)))
        return bytes(head) + data[start:stop]
    data = packet[40:]
    more = stop < len(data) if last is None else not last
    head = bytearray(packet[:40])
    head[4:6] = struct.pack("!H", 8 + stop - start)
    head[6] = 44
    frag = struct.pack("!BBHI", packet[6], 0, start | int(more), ident)
    return bytes(head) + frag + data[start:stop]


def datagram(version: int, size: int, port: int = 53) -> bytes:
    src, dst = ADDRS[version]
    return build_udp(src, dst, 4000, port, bytes(i * 7 % 251 for i in range(size)))


def received(sock: object) -> list[bytes]:
    got = []
    while (item := sock.recvfrom()) is not None:  # type: ignore[attr-defined]
        got.append(item[0])
    return got


# ------------------------------------------------------------ the model test


def model(total: int, pieces: list[tuple[int, int, bool]]) -> tuple[str, int, int]:
    """Whether the datagram of *total* data octets is "delivered",
    "abandoned" or still "held", the duplicates dropped, and how many pieces
    it took to decide, by the rules of RFC 5722 as Linux applies them
    (inet_frag_queue_insert), on sets of octets: the held octets form runs;
    a piece that starts where the highest held octet ends joins the run
    holding it, any other piece starts a run of its own; a piece all of
    whose octets are in one run is a duplicate; one that shares any held
    octet otherwise ends the datagram; delivered once every octet 0..total
    is held."""
    runs: list[set[int]] = []
    duplicates = 0
    for used, (start, stop, _last) in enumerate(pieces, 1):
        octets = set(range(start, stop))
        if any(octets <= run for run in runs):
            duplicates += 1
            continue
        if any(octets & run for run in runs):
            return "abandoned", duplicates, used
        top = max((max(run) + 1 for run in runs), default=None)
        if top == start:
            next(run for run in runs if top - 1 in run).update(octets)
        else:
            runs.append(octets)
        if sum(map(len, runs)) == total:
            return "delivered", duplicates, used
    return "held", duplicates, len(pieces)


@st.composite
def fragmentations(draw: st.DrawFn) -> tuple[int, int, list[tuple[int, int, bool]]]:
    version = draw(st.sampled_from([4, 6]))
    size = draw(st.integers(9, 6000))
    total = size + 8  # the UDP header is data too
    # Cut points at multiples of 8 (at least one: a piece of it all would be
    # no fragment); then shuffled, some repeated, one maybe widened so that
    # it overlaps its neighbour.
    points = sorted(set(draw(st.lists(st.integers(1, (total - 1) // 8), min_size=1, max_size=12))))
    bounds = [0, *(p * 8 for p in points), total]
    pieces = list(itertools.pairwise(bounds))
    extra = draw(st.lists(st.sampled_from(pieces), max_size=3))
    pieces = pieces + extra
    overlap = draw(st.booleans()) and len(pieces) > 1
    if overlap:
        # One piece widened by 8 octets into its neighbour (within the datagram).
        a, b = draw(st.sampled_from(pieces))
        if a >= 8 and (a - 8, b) != (0, total) and draw(st.booleans()):
            pieces.append((a - 8, b))
        elif b + 8 <= total and (a, b + 8) != (0, total):
            pieces.append((a, b + 8))
    order = draw(st.permutations(pieces))
    return version, size, [(a, b, b == total) for a, b in order]


@settings(max_examples=400, deadline=None)
@given(fragmentations(), st.integers(0, 0xFFFF))
def test_reassembly_agrees_with_the_octet_set_model(
    case: tuple[int, int, list[tuple[int, int, bool]]], ident: int
) -> None:
    version, size, pieces = case
    stack = _stack()
    sock = stack.udp_bind(53)
    whole = datagram(version, size)
    header = 20 if version == 4 else 40
    total = len(whole) - header
    outcome, duplicates, used = model(total, pieces)
    delivered = outcome == "delivered"
    for start, stop, _last in pieces[:used]:
        stack.receive_packet(cut(whole, start, stop, ident), 1.0)
        if received_now := received(sock):
            assert received_now == [whole[header + 8 :]]
            break
    else:
        received_now = []
    stats = stack.stats
    assert bool(received_now) == delivered, (pieces, stats)
    assert stats.datagrams_reassembled == int(delivered)
    assert stats.fragments_duplicate == duplicates, (pieces, stats)
    assert stats.malformed == 0
    assert stats.reassembly_failures == int(outcome == "abandoned"), (pieces, stats)
    assert stack.reassembling == int(outcome == "held"), pieces


def test_fragments_in_reverse_order_make_the_datagram_and_a_repeat_starts_another() -> None:
    for version in (4, 6):
        stack = _stack()
        sock = stack.udp_bind(53)
        whole = datagram(version, 3000)
        header = 20 if version == 4 else 40
        total = len(whole) - header
        pieces = [cut(whole, a, min(a + 1000, total), 7) for a in range(0, total, 1000)]
        stack.receive_packets([*reversed(pieces), pieces[1]], 0.0)
        assert received(sock) == [whole[header + 8 :]]
        assert stack.stats.datagrams_reassembled == 1
        assert stack.stats.fragments_received == 5
        assert stack.stats.fragments_duplicate == 0  # the repeat came after: a new datagram
        assert stack.reassembling == 1


# ------------------------------------------------------------- the rules


@pytest.mark.parametrize("version", [4, 6])
def test_overlapping_fragment_abandons_the_datagram(version: int) -> None:
    """RFC 5722 4: an overlap drops the datagram and every fragment held."""
    stack = _stack()
    sock = stack.udp_bind(53)
    whole = datagram(version, 2000)
    total = len(whole) - (20 if version == 4 else 40)
    stack.receive_packet(cut(whole, 0, 1000, 9), 0.0)
    stack.receive_packet(cut(whole, 992, total, 9), 0.0)  # shares 8 octets
    stack.receive_packet(cut(whole, 1000, total, 9), 0.0)  # a new datagram now
    assert received(sock) == []
    assert stack.stats.reassembly_failures == 1
    assert stack.reassembling == 1


@pytest.mark.parametrize("version", [4, 6])
def test_last_fragments_that_disagree_abandon_the_datagram(version: int) -> None:
    stack = _stack()
    whole = datagram(version, 2000)
    stack.receive_packet(cut(whole, 1000, 1600, 3, last=True), 0.0)
    stack.receive_packet(cut(whole, 1600, 1800, 3, last=True), 0.0)  # ends elsewhere
    assert stack.stats.reassembly_failures == 1
    stack.receive_packet(cut(whole, 1000, 1600, 4, last=True), 0.0)
    stack.receive_packet(cut(whole, 1600, 1608, 4), 0.0)  # data past the known end
    assert stack.stats.reassembly_failures == 2
    assert stack.reassembling == 0


def test_ipv4_data_past_a_multiple_of_8_in_a_middle_fragment_is_cut_off() -> None:
    """Linux's ip_frag_queue trims a fragment with MF to a multiple of 8."""
    stack = _stack()
    sock = stack.udp_bind(53)
    whole = datagram(4, 2000)
    total = len(whole) - 20
    stack.receive_packet(cut(whole, 0, 1005, 1), 0.0)  # 5 octets too many
    stack.receive_packet(cut(whole, 1000, total, 1), 0.0)
    assert received(sock) == [whole[28:]]


@pytest.mark.parametrize(
    ("case", "code", "pointer"),
    [("not a multiple of 8", 0, 4), ("too long", 0, 42), ("chain cut", 3, 0)],
)
def test_ipv6_fragments_refused_with_a_parameter_problem(
    case: str, code: int, pointer: int
) -> None:
    """RFC 8200 4.5 and RFC 7112: what to refuse, and the Parameter Problem."""
    stack = _stack()
    whole = datagram(6, 2000)
    if case == "not a multiple of 8":
        frag = cut(whole, 0, 1001, 2, last=False)
    elif case == "too long":
        frag = bytearray(cut(whole, 1000, 1400, 2, last=True))
        frag[42:44] = struct.pack("!H", (65200 & ~7))  # offset 65,200 + 400 > 65,535
        frag = bytes(frag)
    else:
        # Destination Options (8 octets) then TCP, of which the first
        # fragment holds 8 octets: not the 20 of its header.
        options = bytes((6, 0, 1, 4, 0, 0, 0, 0))
        tcp = build_ipv6(A6, B6, 60, options + bytes(40))
        frag = cut(tcp, 0, 16, 2)
    stack.receive_packet(frag, 0.0)
    (problem,) = stack.packets_to_send()
    msg = parse_icmp(parse_ip(problem))
    assert (msg.type, msg.code) == (4, code)
    assert struct.unpack("!I", struct.pack("!HH", msg.ident, msg.seq))[0] == pointer
    assert stack.stats.fragments_refused == 1
    assert stack.reassembling == 0


def test_fragments_for_another_address_are_not_held() -> None:
    stack = PulledStack(["10.0.0.3"])
    stack.receive_packet(cut(datagram(4, 2000), 0, 1000, 1), 0.0)
    assert stack.stats.not_for_us == 1
    assert stack.reassembling == 0


# ----------------------------------------------------------- time and memory


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("with_first", [True, False])
def test_time_exceeded_when_the_first_fragment_came(version: int, with_first: bool) -> None:
    """RFC 792 / RFC 8200 4.5: abandoned after 30 s (IPv4, Linux) or 60 s
    (IPv6); a Time Exceeded code 1 quoting the first fragment, only if it came."""
    stack = _stack()
    whole = datagram(version, 3000)
    first = cut(whole, 0, 1000, 11)
    stack.receive_packet(first if with_first else cut(whole, 1000, 2000, 11), 5.0)
    timeout = IPV4_REASSEMBLY_TIMEOUT if version == 4 else IPV6_REASSEMBLY_TIMEOUT
    assert stack.next_deadline() == 5.0 + timeout
    stack.handle_timer(5.0 + timeout - 0.001)
    assert stack.reassembling == 1
    stack.handle_timer(5.0 + timeout)
    assert stack.reassembling == 0
    assert stack.next_deadline() is None
    assert stack.stats.reassembly_timeouts == 1
    sent = stack.packets_to_send()
    if not with_first:
        assert sent == []
        return
    (error,) = sent
    msg = parse_icmp(parse_ip(error))
    assert (msg.type, msg.code) == ((11, 1) if version == 4 else (3, 1))
    assert len(msg.body) >= 28 and first.startswith(msg.body)


def test_no_time_exceeded_about_an_icmp_error() -> None:
    """RFC 1122 3.2.2: no ICMP error about an ICMP error message."""
    stack = _stack()
    from wireguard.netstack.icmp import build_icmp

    error = build_icmp(A4, B4, 3, 3, bytes(4), bytes(1500))
    stack.receive_packet(cut(error, 0, 1000, 1), 0.0)
    stack.handle_timer(100.0)
    assert stack.stats.reassembly_timeouts == 1
    assert stack.packets_to_send() == []


def test_reassembly_memory_is_bounded_and_drops_are_counted() -> None:
    """Many datagrams that never complete: what is held stays within
    REASSEMBLY_MEMORY per IP version and each refused fragment is counted."""
    stack = _stack()
    whole = datagram(4, 1400)
    piece = cut(whole, 0, 1000, 0)
    n = 0
    per = 1000 + FRAGMENT_OVERHEAD + 1020 + DATAGRAM_OVERHEAD  # data, and the first kept
    while stack.stats.fragments_memory_full < 10:
        frag = bytearray(piece)
        frag[4:6] = struct.pack("!H", n & 0xFFFF)
        frag[12:16] = struct.pack("!I", 0x0A000100 + n // 0x10000)  # another source
        frag[10:12] = b"\0\0"
        frag[10:12] = struct.pack("!H", checksum(bytes(frag[:20])))
        stack.receive_packet(bytes(frag), 0.0)
        n += 1
    held = stack.reassembling
    assert held == REASSEMBLY_MEMORY // per
    assert stack.stats.fragments_received == n
    assert held + stack.stats.fragments_memory_full == n
    # IPv6 has its own budget.
    sock = stack.udp_bind(53)
    whole6 = datagram(6, 1400)
    stack.receive_packets([cut(whole6, 0, 1000, 1), cut(whole6, 1000, 1408, 1)], 0.0)
    assert received(sock) == [whole6[48:]]
    # Time frees it all.
    stack.handle_timer(IPV4_REASSEMBLY_TIMEOUT)
    assert stack.reassembling == 0
    assert stack.stats.reassembly_timeouts == held


# ------------------------------------------------------------- sending


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("size", [1420 - 28, 1420 - 27, 3000, 65507])
def test_udp_larger_than_the_mtu_leaves_in_fragments_another_stack_joins(
    version: int, size: int
) -> None:
    src, dst = ADDRS[version]
    if version == 6 and size == 65507:
        size = 65527
    sender = PulledStack([ipaddress.ip_address(src)], mtu=1420)
    receiver = PulledStack([ipaddress.ip_address(dst)], mtu=1420)
    out = sender.udp_bind(4000)
    sock = receiver.udp_bind(53)
    payload = bytes(i % 253 for i in range(size))
    out.sendto(payload, (str(ipaddress.ip_address(dst)), 53))
    packets = sender.flush(0.0).packets
    assert all(len(p) <= 1420 for p in packets)
    header = 20 if version == 4 else 48
    if size + 8 + (20 if version == 4 else 40) <= 1420:
        assert len(packets) == 1
    else:
        # RFC 791 3.2 / RFC 8200 4.5: all but the last carry a multiple of 8.
        assert all((len(p) - header) % 8 == 0 for p in packets[:-1])
        assert sender.stats.datagrams_fragmented == 1
        assert sender.stats.fragments_created == len(packets)
        if version == 4:
            assert all(p[6] & 0x40 == 0 for p in packets)  # DF clear
            assert len({p[4:6] for p in packets}) == 1
    receiver.receive_packets(packets, 0.0)
    assert received(sock) == [payload]


def test_udp_too_large_for_any_datagram_is_refused() -> None:
    from wireguard.errors import LocalProtocolError

    stack = _stack()
    sock = stack.udp_bind(53)
    with pytest.raises(LocalProtocolError, match="65507"):
        sock.sendto(bytes(65508), ("10.0.0.1", 1))
    with pytest.raises(LocalProtocolError, match="65527"):
        sock.sendto(bytes(65528), ("fd00::1", 1))
    assert stack.flush(0.0).packets == []


def test_identifications_differ_between_fragmented_datagrams() -> None:
    stack = _stack()
    sock = stack.udp_bind(53)
    for _ in range(3):
        sock.sendto(bytes(3000), ("10.0.0.1", 1))
    packets = stack.flush(0.0).packets
    assert len({p[4:6] for p in packets}) == 3


@pytest.mark.parametrize("version", [4, 6])
def test_echo_larger_than_the_mtu_is_answered_in_fragments(version: int) -> None:
    src, dst = ADDRS[version]
    stack = _stack()
    request = build_echo(src, dst, 1, 2, bytes(range(256)) * 12, reply=False)
    header = 20 if version == 4 else 40
    pieces = [
        cut(request, a, min(a + 1000, len(request) - header), 3)
        for a in range(0, len(request) - header, 1000)
    ]
    stack.receive_packets(pieces, 0.0)
    replies = stack.packets_to_send()
    assert len(replies) == 3 and all(len(p) <= 1420 for p in replies)
    # Joined by a stack that only pings (the reply is the request, echoed).
    pinger = PulledStack([ipaddress.ip_address(src)], mtu=1420)
    pinger.receive_packets(replies, 0.0)
    event = pinger.next_event()
    assert event.data == bytes(range(256)) * 12
    assert stack.stats.datagrams_fragmented == 1


def test_a_random_source_of_zeros_does_not_hang_fragmenting() -> None:
    """Randomness is an input (deterministic runs pass their own source): an
    IPv6 Identification of 0 is avoided without drawing until it is not 0."""
    stack = PulledStack(["fd00::2"], mtu=1420, random=lambda n: bytes(n))
    sock = stack.udp_bind(53)
    sock.sendto(bytes(3000), ("fd00::1", 1))
    packets = stack.flush(0.0).packets
    assert len(packets) == 3
    assert {int.from_bytes(p[44:48], "big") for p in packets} == {1}
