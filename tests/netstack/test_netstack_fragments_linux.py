"""IP reassembly and fragmentation (wireguard.netstack.fragment) where
Linux's choices are finer than the RFCs' or easy to miss: each test names
the kernel function or RFC section it holds the stack to (each failed on
the first version of the module).

Fragments are cut by test_netstack_fragments.cut(), built straight from RFC
791 3.1 and RFC 8200 4.5, not by the module under test.
"""

from __future__ import annotations

import gc
import ipaddress
import struct
import tracemalloc

import pytest
from netstack_helpers import PulledStack
from test_netstack_fragments import A6, B6, cut, datagram, received

from wireguard.netstack.fragment import (
    IPV4_REASSEMBLY_TIMEOUT,
    IPV6_REASSEMBLY_TIMEOUT,
    REASSEMBLY_MEMORY,
)
from wireguard.netstack.icmp import build_echo, parse_icmp
from wireguard.netstack.ip import build_ipv6, checksum, parse_ip

HEADER = {4: 20, 6: 40}
TIMEOUT = {4: IPV4_REASSEMBLY_TIMEOUT, 6: IPV6_REASSEMBLY_TIMEOUT}


def _stack() -> PulledStack:
    return PulledStack(["10.0.0.2", "fd00::2"], mtu=1420)


def _v4_header_fixed(frag: bytearray) -> bytes:
    frag[10:12] = b"\0\0"
    frag[10:12] = struct.pack("!H", checksum(bytes(frag[:20])))
    return bytes(frag)


def _with_ecn(frag: bytes, ecn: int) -> bytes:
    """*frag* with the ECN field (RFC 3168 5) set to *ecn*."""
    out = bytearray(frag)
    if out[0] >> 4 == 4:
        out[1] = (out[1] & ~3) | ecn
        return _v4_header_fixed(out)
    out[1] = (out[1] & ~0x30) | (ecn << 4)  # the low 2 bits of the Traffic Class
    return bytes(out)


def _problem(packet: bytes) -> tuple[int, int, int]:
    """Type, code and pointer of an ICMPv6 Parameter Problem."""
    msg = parse_icmp(parse_ip(packet))
    return msg.type, msg.code, struct.unpack("!I", struct.pack("!HH", msg.ident, msg.seq))[0]


# ------------------------------------------------- duplicate or overlap


@pytest.mark.parametrize("version", [4, 6])
def test_fragment_spanning_two_fragments_that_came_out_of_order_is_an_overlap(
    version: int,
) -> None:
    """Linux net/ipv4/inet_fragment.c inet_frag_queue_insert (both versions):
    a fragment is a duplicate only if it lies inside one run of the rb-tree,
    and runs only grow by fragments appended at the tail in order; fragments
    that came out of order are separate nodes, and a fragment spanning two of
    them is IPFRAG_OVERLAP, which drops the whole queue (RFC 5722 4 with
    erratum 3089; RFC 8200 4.5 allows only *exact* duplicates to be dropped
    alone). (The first version merged adjacent runs and called it a duplicate.)"""
    stack = _stack()
    sock = stack.udp_bind(53)
    whole = datagram(version, 3000)
    total = len(whole) - HEADER[version]
    stack.receive_packet(cut(whole, 1000, 2000, 7), 0.0)
    stack.receive_packet(cut(whole, 0, 1000, 7), 0.0)  # before it: a node of its own
    stack.receive_packet(cut(whole, 504, 1504, 7), 0.0)  # spans both: an overlap
    assert stack.stats.fragments_duplicate == 0
    assert stack.stats.reassembly_failures == 1
    assert stack.reassembling == 0
    stack.receive_packet(cut(whole, 2000, total, 7), 0.0)  # a new datagram now
    assert received(sock) == []


# ------------------------------------------------------------- time


@pytest.mark.parametrize("version", [4, 6])
def test_fragment_after_the_deadline_does_not_complete_the_datagram(version: int) -> None:
    """RFC 8200 4.5: reassembly must be abandoned if it is not done within 60
    seconds of the first-arriving fragment (30 s, Linux's ipfrag_time, for
    IPv4); Linux's timer (ip_expire / ip6_frag_expire, armed once in
    inet_frag_create) kills the queue at that time, so a fragment that comes
    later starts a new one. A fragment given to the stack past the
    deadline, before handle_timer ran, must not complete the stale datagram."""
    stack = _stack()
    sock = stack.udp_bind(53)
    whole = datagram(version, 2000)
    total = len(whole) - HEADER[version]
    stack.receive_packet(cut(whole, 0, 1000, 5), 0.0)
    assert stack.next_deadline() == TIMEOUT[version]
    stack.receive_packet(cut(whole, 1000, total, 5), TIMEOUT[version] + 1.0)
    assert received(sock) == []
    assert stack.stats.datagrams_reassembled == 0


def test_ipv4_fragment_past_65535_octets_leaves_the_datagram_to_time_out() -> None:
    """Linux net/ipv4/ip_fragment.c: ip_frag_queue has no length limit (only
    ip_frag_reasm refuses ihl + len > 65535, "Oversized IP packet"), so a
    fragment past 65,535 octets is queued, the datagram never completes, and
    ip_expire sends a Time Exceeded (code 1) at 30 s, its first fragment
    having come (RFC 792). (The first version dropped the datagram at once,
    and sent no Time Exceeded.)"""
    stack = _stack()
    whole = datagram(4, 2000)
    first = cut(whole, 0, 1000, 5)
    stack.receive_packet(first, 0.0)
    far = bytearray(cut(whole, 1000, 1400, 5, last=True))
    far[6:8] = struct.pack("!H", 65200 // 8)  # 65,200 + 400 + 20 > 65,535
    stack.receive_packet(_v4_header_fixed(far), 0.0)
    stack.handle_timer(IPV4_REASSEMBLY_TIMEOUT)
    sent = stack.packets_to_send()
    assert len(sent) == 1
    msg = parse_icmp(parse_ip(sent[0]))
    assert (msg.type, msg.code) == (11, 1)
    assert first.startswith(msg.body)


# ---------------------------------------------------- the joined packet


@pytest.mark.parametrize("version", [4, 6])
def test_fragments_mixing_ce_and_not_ect_are_not_reassembled(version: int) -> None:
    """RFC 3168 5.3: if a fragment has CE, the reassembled packet must carry
    CE, which MUST NOT be set if another fragment is Not-ECT, so such a
    datagram is dropped; Linux's ip_frag_reasm / ip6_frag_reasm drop it
    (ip_frag_ecn_table[IPFRAG_ECN_NOT_ECT | IPFRAG_ECN_CE] == 0xff,
    net/ipv4/inet_fragment.c) and count a reassembly failure. (The first
    version ignored the ECN field and delivered the datagram.)"""
    stack = _stack()
    sock = stack.udp_bind(53)
    whole = datagram(version, 2000)
    total = len(whole) - HEADER[version]
    stack.receive_packet(_with_ecn(cut(whole, 0, 1000, 3), 3), 0.0)  # CE
    stack.receive_packet(_with_ecn(cut(whole, 1000, total, 3), 0), 0.0)  # Not-ECT
    assert received(sock) == []
    assert stack.stats.datagrams_reassembled == 0
    assert stack.stats.reassembly_failures == 1


# ------------------------------------------- IPv6 Fragment headers


def _atomic_before(frag: bytes, ident: int) -> bytes:
    """*frag* (an IPv6 header, then a Fragment header) with an atomic Fragment
    header (offset 0, M 0; RFC 6946) put before its Fragment header."""
    head = bytearray(frag[:40])
    head[4:6] = struct.pack("!H", len(frag) - 40 + 8)
    return bytes(head) + struct.pack("!BBHI", 44, 0, 0, ident) + frag[40:]


@pytest.mark.parametrize("case", ["after an atomic fragment", "inside a reassembled datagram"])
def test_second_fragment_header_is_refused_with_a_parameter_problem(case: str) -> None:
    """Linux net/ipv6/reassembly.c ipv6_frag_rcv: a packet that went through
    a Fragment header once (IP6SKB_FRAGMENTED: reassembled, or an atomic
    fragment) and meets another goes to fail_hdr, a Parameter Problem code 0
    pointing at that second Fragment header (skb_network_header_len), and is
    never reassembled again (RFC 8200 4.1: each extension header at most
    once). (The first version reassembled a fragment behind an atomic
    fragment, and dropped one inside a joined datagram without a word.)"""
    stack = _stack()
    sock = stack.udp_bind(53)
    whole = datagram(6, 2000)
    if case == "after an atomic fragment":
        total = len(whole) - 40
        pieces = [_atomic_before(cut(whole, a, b, 9), 77) for a, b in ((0, 1000), (1000, total))]
        pointer = 48
    else:
        inner = cut(whole, 0, 1000, 1)  # a fragment, itself cut in two
        pieces = [cut(inner, 0, 504, 9), cut(inner, 504, len(inner) - 40, 9)]
        pointer = 40
    stack.receive_packets(pieces, 0.0)
    assert received(sock) == []
    problems = [_problem(p) for p in stack.packets_to_send()]
    assert problems and all(p == (4, 0, pointer) for p in problems)


# ------------------------------------- no error about an ICMPv6 error


def _icmpv6_error_behind_destination_options() -> bytes:
    """A Destination Unreachable (an ICMPv6 error, RFC 4443 3.1) behind a
    Destination Options header (PadN only), too long for one fragment."""
    options = bytes((58, 0, 1, 4, 0, 0, 0, 0))
    error = bytes((1, 4, 0, 0, 0, 0, 0, 0)) + bytes(2000)
    return build_ipv6(A6, B6, 60, options + error)


@pytest.mark.parametrize("case", ["time exceeded", "parameter problem"])
def test_no_error_about_an_icmpv6_error_behind_extension_headers(case: str) -> None:
    """RFC 4443 2.4(e.1): no ICMPv6 error about an ICMPv6 error message.
    Linux's icmp6_send checks it with is_ineligible (net/ipv6/icmp.c), which
    walks the extension headers with ipv6_skip_exthdr (past the Fragment
    header of a first fragment, and a Destination Options header after it)
    to the ICMPv6 type, for the Time Exceeded of ip6frag_expire_frag_queue
    and the Parameter Problem of ipv6_frag_rcv alike. (The first version
    looked only at the Fragment header's Next Header, so an extension header
    between it and the ICMPv6 error hid the error.)"""
    stack = _stack()
    packet = _icmpv6_error_behind_destination_options()
    if case == "time exceeded":
        stack.receive_packet(cut(packet, 0, 1000, 5), 0.0)
        stack.handle_timer(IPV6_REASSEMBLY_TIMEOUT)
        assert stack.stats.reassembly_timeouts == 1
    else:
        stack.receive_packet(cut(packet, 0, 1001, 5, last=False), 0.0)  # not a multiple of 8
        assert stack.stats.fragments_refused == 1
    assert stack.packets_to_send() == []


# ------------------------------------------------------------ memory


def _fill_with_first_fragments(data: int, padding: int) -> tuple[int, int]:
    """Python memory (tracemalloc) held once IPv4 first fragments of *data*
    octets, each of another datagram and followed by *padding* octets of link
    padding (which parse_ip ignores, RFC 1122 3.2.1.2), fill the reassembly
    budget; and how many datagrams are held then."""
    stack = _stack()
    whole = datagram(4, 1400)
    piece = cut(whole, 0, data, 0)
    pad = bytes(padding)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        n = 0
        while stack.stats.fragments_memory_full == 0:
            frag = bytearray(piece)
            frag[4:6] = struct.pack("!H", n & 0xFFFF)
            frag[12:16] = struct.pack("!I", 0x0A000100 + n // 0x10000)  # another source
            stack.receive_packet(_v4_header_fixed(frag) + pad, 0.0)
            n += 1
        del frag
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    return held, stack.reassembling


def test_link_padding_of_a_first_fragment_is_not_held_uncharged() -> None:
    """Linux charges each queued fragment its skb->truesize (ip_frag_queue,
    add_frag_mem_limit), the memory it really holds, against
    ipfrag_high_thresh, and ip_rcv_core has trimmed the link padding off
    before. The first version charged a first fragment its stated length
    but kept the whole packet it arrived in, padding included, so 2,000
    octets of padding each made the full budget hold about 40 % more memory
    than without."""
    unpadded, count = _fill_with_first_fragments(1000, 0)
    padded, count_padded = _fill_with_first_fragments(1000, 2000)
    assert count_padded == count
    assert padded <= unpadded * 1.1, (padded, unpadded)


def test_tiny_first_fragments_hold_no_more_than_the_budget() -> None:
    """fragment.py: every held fragment is charged "a fixed overhead ... so
    that many tiny fragments cannot hold more than the budget says", as
    Linux charges skb->truesize (ip_frag_queue, add_frag_mem_limit) against
    ipfrag_high_thresh, 4 MiB. Held non-first fragments do stay within it,
    but the first version kept a first fragment as its FragmentArrived
    exception, with the traceback and the frames it kept alive, none of it
    charged: 8-octet first fragments made the 4 MiB budget hold 4.7 times as
    much."""
    held, count = _fill_with_first_fragments(8, 0)
    assert count > 1000
    assert held <= REASSEMBLY_MEMORY * 1.2, held / REASSEMBLY_MEMORY


# ------------------------------------------------------------- sending


def test_ipv6_identification_cannot_be_predicted_from_another_peers_fragments() -> None:
    """RFC 7739 (Security Implications of Predictable Fragment Identification
    Values): a simple global counter makes the Identification predictable,
    so that a third party can forge fragments of another's datagram; the
    stack's own comment claims "not predictable from outside". Linux's
    ipv6_select_ident (net/ipv6/output_core.c, __ipv6_select_ident) draws a
    random 32-bit Identification for each datagram. (The first version
    counted one global counter up: a peer that elicited a fragmented echo
    reply learned the Identification of the next datagram fragmented for
    anyone else.)"""
    attacker = ipaddress.ip_address("fd00::66").packed
    stack = _stack()
    request = build_echo(attacker, B6, 1, 1, bytes(3000), reply=False)
    total = len(request) - 40
    stack.receive_packets(
        [cut(request, a, min(a + 1000, total), 4) for a in range(0, total, 1000)], 0.0
    )
    replies = stack.packets_to_send()
    assert len(replies) > 1 and replies[0][6] == 44
    learned = int.from_bytes(replies[0][44:48], "big")
    sock = stack.udp_bind(53)
    sock.sendto(bytes(3000), ("fd00::1", 53))  # to someone else
    victim = stack.packets_to_send()
    assert len(victim) > 1 and victim[0][6] == 44
    assert int.from_bytes(victim[0][44:48], "big") != (learned + 1) & 0xFFFFFFFF
