"""Captures, key logs and the decrypt command, checked against our own core
and against Wireshark's independent WireGuard dissector (tshark).

The traffic is made in memory with the protocol core: a cookie reply, then two
handshakes (over IPv4 and over IPv6) each followed by transport data carrying
real ICMP, ICMPv6 and UDP packets, padded as WireGuard pads them."""

from __future__ import annotations

import base64
import datetime
import io
import os
import random
import stat
import struct
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import need_tool
from wireguard import decrypt
from wireguard.capture import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    SECRETS_TYPE_WIREGUARD,
    CaptureFormatError,
    KeyLogWriter,
    PcapngWriter,
    PcapReader,
    PcapWriter,
    UDPDatagram,
    build_udp_packet,
    extract_udp,
    internet_checksum,
    parse_keylog,
    read_keylog,
    udp_datagrams,
)
from wireguard.cli import decrypt as decrypt_cli
from wireguard.cli import main as cli_main
from wireguard.cookie import CookieChecker, CookieGenerator, mac1_key
from wireguard.crypto import aead_encrypt, dh_generate, dh_public, mac, tai64n
from wireguard.handshake import (
    HandshakeResult,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
)
from wireguard.keys import PresharedKey, PrivateKey
from wireguard.messages import CookieReply, pack_transport_header

# --- inner packets, built by hand so they do not share code with the reader ----


def _checksum(data: bytes) -> int:
    # The obvious RFC 1071 loop, as an independent check of internet_checksum.
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int = 1) -> bytes:
    head = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        ident,
        0,
        64,
        proto,
        0,
        bytes(map(int, src.split("."))),
        bytes(map(int, dst.split("."))),
    )
    return head[:10] + struct.pack("!H", _checksum(head)) + head[12:] + payload


def icmp_echo(src: str, dst: str, kind: int, ident: int, seq: int, data: bytes) -> bytes:
    body = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + data
    body = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]
    return ipv4(src, dst, 1, body, ident=seq)


def icmpv6_echo(src: str, dst: str, kind: int, ident: int, seq: int, data: bytes) -> bytes:
    import ipaddress

    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    body = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + data
    pseudo = s + d + struct.pack("!I3xB", len(body), 58)
    body = body[:2] + struct.pack("!H", _checksum(pseudo + body)) + body[4:]
    return struct.pack("!IHBB16s16s", 0x60000000, len(body), 58, 64, s, d) + body


def pad(packet: bytes) -> bytes:
    # Whitepaper 5.4.6: zero padding to a multiple of 16.
    return packet + bytes(-len(packet) % 16)


# --- the scenario --------------------------------------------------------------------


@dataclass
class Handshake:
    initiator: HandshakeResult
    responder: HandshakeResult
    initiator_ephemerals: list[bytes]
    responder_ephemeral: bytes


@dataclass
class Scenario:
    ik: PrivateKey
    rk: PrivateKey
    psk: PresharedKey
    datagrams: list[UDPDatagram] = field(default_factory=list)
    inner: dict[int, bytes] = field(default_factory=dict)
    """Frame number (1-based) -> the inner packet it carries."""
    handshakes: list[Handshake] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)

    def add(self, kind: str, t: float, src, dst, payload: bytes) -> int:
        self.datagrams.append(UDPDatagram(t, src, dst, payload))
        self.kinds.append(kind)
        return len(self.datagrams)


T0 = 1_700_000_000.25
I4, R4 = ("192.0.2.1", 51820), ("198.51.100.2", 51821)
I6, R6 = ("2001:db8::1", 40000), ("2001:db8::2", 51821)


def build_scenario(seed: int = 7) -> Scenario:
    rng = random.Random(seed)
    rand = rng.randbytes
    sc = Scenario(PrivateKey.generate(rand), PrivateKey.generate(rand), PresharedKey.generate(rand))
    ik, rk, q = sc.ik.raw, sc.rk.raw, sc.psk.raw
    ipub, rpub = sc.ik.public_key.raw, sc.rk.public_key.raw
    cookies_i = CookieGenerator(rpub)
    checker = CookieChecker(rpub, rand)

    def handshake(t: float, i_addr, r_addr, index_i: int, index_r: int, cookie_first: bool):
        ephemerals = []
        if cookie_first:
            # The responder is under load: it answers with a cookie reply, and
            # the initiator retries with mac2 and a fresh ephemeral.
            e = dh_generate(rand)
            ephemerals.append(e)
            msg, _ = create_initiation(
                static_private=ik,
                peer_public=rpub,
                psk=q,
                sender_index=index_i - 1,
                ephemeral_private=e,
                timestamp=tai64n(t),
                cookies=cookies_i,
                now=t,
            )
            sc.add("initiation", t, i_addr, r_addr, msg)
            reply = checker.create_reply(msg, index_i - 1, i_addr, t)
            sc.add("cookie reply", t + 0.001, r_addr, i_addr, reply.pack())
            cookies_i.consume_reply(CookieReply.parse(reply.pack()), t + 0.001)
            t += 0.002
        e_i, e_r = dh_generate(rand), dh_generate(rand)
        ephemerals.append(e_i)
        msg, initiator = create_initiation(
            static_private=ik,
            peer_public=rpub,
            psk=q,
            sender_index=index_i,
            ephemeral_private=e_i,
            timestamp=tai64n(t),
            cookies=cookies_i,
            now=t,
        )
        sc.add("initiation", t, i_addr, r_addr, msg)
        consumed = consume_initiation(msg, static_private=rk)
        resp, r_result = create_response(
            consumed,
            psk=q,
            sender_index=index_r,
            ephemeral_private=e_r,
            cookies=CookieGenerator(ipub),
            now=t,
        )
        sc.add("response", t + 0.01, r_addr, i_addr, resp)
        i_result = consume_response(resp, initiator, index_i)
        sc.handshakes.append(Handshake(i_result, r_result, ephemerals, e_r))
        return i_result, r_result

    def send(t, sender: HandshakeResult, counter: int, src, dst, inner: bytes, kind: str) -> None:
        data = pack_transport_header(sender.remote_index, counter) + aead_encrypt(
            sender.sending_key, counter, pad(inner), b""
        )
        frame = sc.add(kind, t, src, dst, data)
        if inner:
            sc.inner[frame] = inner

    a, b = "10.0.0.1", "10.0.0.2"
    i1, r1 = handshake(T0, I4, R4, 0x11111112, 0x22222222, cookie_first=True)
    t = T0 + 1
    for seq in range(1, 4):
        data = bytes(range(seq * 7 % 50))  # lengths that need padding, or not
        send(t, i1, seq - 1, I4, R4, icmp_echo(a, b, 8, 0x77, seq, data), "transport data")
        send(t + 0.02, r1, seq - 1, R4, I4, icmp_echo(b, a, 0, 0x77, seq, data), "transport data")
        t += 1
    dns_query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x07example\x03com\0\0\1\0\1"
    udp_inner = build_udp_packet((a, 5000), (b, 53), dns_query)
    send(t, i1, 3, I4, R4, udp_inner, "transport data")
    send(t + 0.1, r1, 3, R4, I4, b"", "keepalive")

    # A second handshake, over IPv6, carrying IPv4 and IPv6 inside.
    i2, r2 = handshake(T0 + 10, I6, R6, 0x33333333, 0x44444444, cookie_first=False)
    t = T0 + 11
    send(t, i2, 0, I6, R6, icmp_echo(a, b, 8, 0x78, 1, b"v4 over v6"), "transport data")
    send(t + 0.01, r2, 0, R6, I6, icmp_echo(b, a, 0, 0x78, 1, b"v4 over v6"), "transport data")
    req6 = icmpv6_echo("fd00::1", "fd00::2", 128, 0x79, 1, b"hello six")
    rep6 = icmpv6_echo("fd00::2", "fd00::1", 129, 0x79, 1, b"hello six")
    send(t + 1, i2, 1, I6, R6, req6, "transport data")
    send(t + 1.01, r2, 1, R6, I6, rep6, "transport data")
    return sc


def write_capture(sc: Scenario, path: Path) -> None:
    with PcapWriter(path) as w:
        for d in sc.datagrams:
            w.write_udp(d.timestamp, d.src, d.dst, d.payload)


def write_keylog(sc: Scenario, path: Path, side: str) -> None:
    """The key log an endpoint on *side* writes: its static private key, the
    peer's public key, each of its ephemeral private keys, the psk."""
    with KeyLogWriter(path) as log:
        for hs in sc.handshakes:
            if side == "initiator":
                for e in hs.initiator_ephemerals:
                    log.log_handshake(
                        local_static_private=sc.ik,
                        remote_static_public=sc.rk.public_key,
                        local_ephemeral_private=e,
                        preshared_key=sc.psk,
                    )
            else:
                log.log_handshake(
                    local_static_private=sc.rk,
                    remote_static_public=sc.ik.public_key,
                    local_ephemeral_private=hs.responder_ephemeral,
                    preshared_key=sc.psk,
                )


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return build_scenario()


@pytest.fixture
def files(scenario: Scenario, tmp_path: Path) -> dict[str, Path]:
    out = {
        "cap": tmp_path / "cap.pcap",
        "initiator": tmp_path / "initiator.keys",
        "responder": tmp_path / "responder.keys",
    }
    write_capture(scenario, out["cap"])
    write_keylog(scenario, out["initiator"], "initiator")
    write_keylog(scenario, out["responder"], "responder")
    return out


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli_main(["decrypt", *(str(a) for a in argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- checksums, headers, writer and reader --------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 3, 20, 21, 1500])
def test_internet_checksum_matches_the_rfc1071_loop(n: int) -> None:
    rng = random.Random(n)
    for _ in range(50):
        data = rng.randbytes(n)
        # 0 and 0xFFFF are the same number in ones' complement; the stack's
        # checksum gives 0xFFFF, which UDP needs (RFC 768).
        assert internet_checksum(data) % 0xFFFF == _checksum(data) % 0xFFFF
    assert _checksum(b"\xff\xff" * 3) == 0
    assert internet_checksum(b"\xff\xff" * 3) == 0xFFFF


@pytest.mark.parametrize(
    ("src", "dst"),
    [(("192.0.2.1", 1), ("192.0.2.2", 51820)), (("2001:db8::1", 51820), ("fe80::2%eth0", 9))],
)
def test_udp_packet_lengths_and_checksums(src, dst) -> None:
    payload = b"wireguard" * 11
    packet = build_udp_packet(src, dst, payload)
    got = extract_udp(packet)
    assert got == (src[:1] + src[1:], (dst[0].split("%")[0], dst[1]), payload)
    if packet[0] >> 4 == 4:
        assert _checksum(packet[:20]) == 0 and len(packet) == struct.unpack("!H", packet[2:4])[0]
        pseudo = packet[12:20] + struct.pack("!BBH", 0, 17, len(packet) - 20)
        udp = packet[20:]
    else:
        assert struct.unpack("!H", packet[4:6])[0] == len(packet) - 40
        pseudo = packet[8:40] + struct.pack("!I3xB", len(packet) - 40, 17)
        udp = packet[40:]
    assert struct.unpack("!H", udp[4:6])[0] == len(udp)
    assert struct.unpack("!H", udp[6:8])[0] != 0
    assert _checksum(pseudo + udp) == 0  # a valid checksum sums to all ones


def test_udp_packet_rejects_mixed_families() -> None:
    with pytest.raises(ValueError, match="same IP version"):
        build_udp_packet(("192.0.2.1", 1), ("2001:db8::1", 2), b"")


def test_writer_reader_round_trip(scenario: Scenario, tmp_path: Path) -> None:
    path = tmp_path / "rt.pcap"
    write_capture(scenario, path)
    raw = path.read_bytes()
    assert raw[:4] == bytes.fromhex("d4c3b2a1")  # a1b2c3d4, little-endian, microseconds
    assert struct.unpack_from("<I", raw, 20)[0] == LINKTYPE_RAW
    with PcapReader(path) as reader:
        got = list(reader.udp_datagrams())
        assert reader.format == "pcap" and reader.linktype == LINKTYPE_RAW
    assert [(d.src, d.dst, d.payload) for d in got] == [
        (d.src, d.dst, d.payload) for d in scenario.datagrams
    ]
    assert all(
        abs(a.timestamp - b.timestamp) < 1e-6 for a, b in zip(got, scenario.datagrams, strict=True)
    )


def _frame(linktype: int, packet: bytes) -> bytes:
    if linktype == LINKTYPE_ETHERNET:
        # With a VLAN tag and the 60-byte minimum frame padding, which the
        # reader must not take for packet bytes.
        frame = bytes(6) + bytes(6) + b"\x81\x00\x00\x05" + b"\x08\x00" + packet
        return frame + bytes(max(0, 60 - len(frame)))
    if linktype == LINKTYPE_LINUX_SLL:
        return struct.pack("!HHH8sH", 0, 1, 6, bytes(8), 0x0800) + packet
    if linktype == LINKTYPE_LINUX_SLL2:
        return struct.pack("!HHIHBB8s", 0x0800, 0, 3, 1, 0, 6, bytes(8)) + packet
    if linktype == LINKTYPE_NULL:
        return struct.pack("<I", 2) + packet
    return packet


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nanos", [False, True])
@pytest.mark.parametrize(
    "linktype",
    [LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, 0],
)
def test_reader_classic_pcap_variants(endian: str, nanos: bool, linktype: int) -> None:
    packet = build_udp_packet(("10.1.1.1", 1234), ("10.1.1.2", 51820), b"\x04\0\0\0" + bytes(28))
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    data = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    frame = _frame(linktype, packet)
    frac = 123456789 if nanos else 123456
    data += struct.pack(endian + "IIII", 1700000000, frac, len(frame), len(frame)) + frame
    if linktype == LINKTYPE_ETHERNET:  # and an ARP frame, which is skipped
        arp = bytes(12) + b"\x08\x06" + bytes(28)
        data += struct.pack(endian + "IIII", 1700000001, 0, len(arp), len(arp)) + arp
    reader = PcapReader(io.BytesIO(data))
    got = list(reader)
    assert [p.packet for p in got] == [packet]
    assert got[0].timestamp == pytest.approx(1700000000.123456789, abs=1e-6)
    assert reader.skipped == (1 if linktype == LINKTYPE_ETHERNET else 0)


def _pcapng_block(endian: str, kind: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    n = len(body) + 12
    return struct.pack(endian + "II", kind, n) + body + struct.pack(endian + "I", n)


@pytest.mark.parametrize("endian", ["<", ">"])
def test_reader_pcapng_blocks(endian: str) -> None:
    packet = build_udp_packet(("2001:db8::1", 1), ("2001:db8::2", 2), b"hi")
    shb = struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1)
    # Interface 0: Ethernet with nanosecond resolution; interface 1: raw IP.
    tsresol = struct.pack(endian + "HH", 9, 1) + b"\x09\0\0\0" + struct.pack(endian + "HH", 0, 0)
    idb0 = struct.pack(endian + "HHI", LINKTYPE_ETHERNET, 0, 0) + tsresol
    idb1 = struct.pack(endian + "HHI", LINKTYPE_RAW, 0, 0)
    eth = bytes(12) + b"\x86\xdd" + packet
    ns = 1700000000_500000000
    epb0 = struct.pack(endian + "IIIII", 0, ns >> 32, ns & 0xFFFFFFFF, len(eth), len(eth)) + eth
    us = 1700000001_250000
    epb1 = struct.pack(endian + "IIIII", 1, us >> 32, us & 0xFFFFFFFF, len(packet), len(packet))
    secrets = b"LOCAL_STATIC_PRIVATE_KEY = " + base64.b64encode(bytes(32)) + b"\n"
    dsb = struct.pack(endian + "II", SECRETS_TYPE_WIREGUARD, len(secrets)) + secrets
    data = b"".join(
        [
            _pcapng_block(endian, 0x0A0D0D0A, shb),
            _pcapng_block(endian, 1, idb0),
            _pcapng_block(endian, 1, idb1),
            _pcapng_block(endian, 0x0A, dsb),
            _pcapng_block(endian, 6, epb0),
            _pcapng_block(endian, 6, epb1 + packet),
            _pcapng_block(endian, 3, struct.pack(endian + "I", len(eth)) + eth),
        ]
    )
    reader = PcapReader(io.BytesIO(data))
    got = list(reader)
    assert reader.format == "pcapng"
    assert [p.packet for p in got] == [packet] * 3
    assert got[0].timestamp == pytest.approx(1700000000.5)
    assert got[1].timestamp == pytest.approx(1700000001.25)
    assert reader.secrets == [(SECRETS_TYPE_WIREGUARD, secrets)]
    assert reader.frames == 3


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (b"hello, this is not a capture at all", "not a pcap or pcapng"),
        (struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 105), "link type 105"),
    ],
)
def test_reader_rejects_what_it_cannot_read(data: bytes, message: str) -> None:
    with pytest.raises(CaptureFormatError, match=message):
        list(PcapReader(io.BytesIO(data)))


def test_reader_reports_a_capture_cut_short(tmp_path: Path, scenario: Scenario) -> None:
    path = tmp_path / "cut.pcap"
    write_capture(scenario, path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CaptureFormatError, match="cut short in the middle of packet"):
        list(PcapReader(path))


def _pcapng_of(sc: Scenario, *, tsresol: int = 6, tsoffset: int = 0) -> bytes:
    """The scenario as a pcapng on one raw-IP interface whose if_tsresol and
    if_tsoffset (pcapng draft section 4.2: a power of ten, and a signed offset
    in seconds added to every timestamp) are given, each Enhanced Packet Block
    holding the time of its datagram in those units."""
    shb = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
    options = struct.pack("<HHB3x", 9, 1, tsresol) + struct.pack("<HHq", 14, 8, tsoffset)
    idb = struct.pack("<HHI", LINKTYPE_RAW, 0, 0) + options + struct.pack("<HH", 0, 0)
    blocks = [_pcapng_block("<", 0x0A0D0D0A, shb), _pcapng_block("<", 1, idb)]
    for d in sc.datagrams:
        packet = build_udp_packet(d.src, d.dst, d.payload)
        units = round(d.timestamp * 10**tsresol)
        assert 0 <= units < 2**64
        head = struct.pack("<IIIII", 0, units >> 32, units & 0xFFFFFFFF, len(packet), len(packet))
        blocks.append(_pcapng_block("<", 6, head + packet))
    return b"".join(blocks)


# Captures whose times classic pcap's unsigned 32-bit seconds cannot hold.
OUT_OF_PCAP_RANGE = {
    # A negative if_tsoffset puts the packets in 1960.
    "before 1970": lambda sc: (_pcapng_of(sc, tsoffset=-2_000_000_000), -2_000_000_000),
    # A positive one puts them in 2118.
    "after 2106": lambda sc: (_pcapng_of(sc, tsoffset=3_000_000_000), 3_000_000_000),
    # Nanoseconds since 1970 in 64 bits reach 2554 with no offset at all.
    "after 2106 in nanoseconds": lambda sc: (
        _pcapng_of(_shifted(sc, 3_000_000_000), tsresol=9),
        3_000_000_000,
    ),
}


def _shifted(sc: Scenario, seconds: int) -> Scenario:
    return Scenario(
        sc.ik,
        sc.rk,
        sc.psk,
        [d._replace(timestamp=d.timestamp + seconds) for d in sc.datagrams],
        sc.inner,
        sc.handshakes,
        sc.kinds,
    )


@pytest.mark.parametrize("case", list(OUT_OF_PCAP_RANGE))
def test_decrypt_w_refuses_times_classic_pcap_cannot_hold(
    case: str, scenario: Scenario, files: dict[str, Path], tmp_path: Path, capsys
) -> None:
    data, shift = OUT_OF_PCAP_RANGE[case](scenario)
    ng = tmp_path / "odd-time.pcapng"
    ng.write_bytes(data)
    with PcapReader(ng) as reader:
        stamps = [p.timestamp for p in reader]
    assert stamps == pytest.approx([d.timestamp + shift for d in scenario.datagrams], abs=1e-6)
    # Without -w the times are only printed relative to the first: all is well.
    code, out, err = run_cli(capsys, ng, "--keylog", files["initiator"])
    assert (code, err) == (0, "")
    assert "12 of 12 transport data messages decrypted" in out
    # With -w, one line naming the first packet that cannot be written, and
    # the output is not touched (newer Wireshark's pcap writer refuses too,
    # rather than wrap the seconds round as Debian 12's editcap 4.0 does).
    out_pcap = tmp_path / "inner.pcap"
    out_pcap.write_bytes(b"what was there before")
    code, out, err = run_cli(capsys, ng, "--keylog", files["initiator"], "-w", out_pcap)
    first = min(scenario.inner)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("python -m wireguard decrypt: "), err
    assert f"frame {first}:" in err and "classic pcap" in err, err
    assert ("1960-" if shift < 0 else "2118-") in err, err
    assert out_pcap.read_bytes() == b"what was there before"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["odd-time.pcapng", "inner.pcap", "cap.pcap", "initiator.keys", "responder.keys"]
    )
    # A new output file is not left behind half written either.
    out_pcap.unlink()
    code, _, err = run_cli(capsys, ng, "--keylog", files["initiator"], "-w", out_pcap)
    assert code == 1 and f"frame {first}:" in err
    assert not out_pcap.exists()


def test_decrypt_w_failing_at_the_end_is_one_line(
    files: dict[str, Path], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The output is complete only when it is renamed into place; a failure
    # there (a full disk, say) is one line naming OUT, and nothing is left.
    import errno

    def full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "somewhere")

    monkeypatch.setattr(decrypt_cli.os, "replace", full)
    out_pcap = tmp_path / "inner.pcap"
    code, _, err = run_cli(capsys, files["cap"], "--keylog", files["initiator"], "-w", out_pcap)
    assert code == 1
    assert err == f"python -m wireguard decrypt: {out_pcap}: No space left on device\n", err
    assert not out_pcap.exists() and not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_tshark_reads_the_out_of_range_fixtures_as_we_do(
    scenario: Scenario, tmp_path: Path
) -> None:
    # The fixtures above mean what they claim: Wireshark's reader, not ours,
    # puts their first packet before 1970 and after 2106.
    for case, make in OUT_OF_PCAP_RANGE.items():
        data, shift = make(scenario)
        ng = tmp_path / "odd.pcapng"
        ng.write_bytes(data)
        # (UTC dates: tshark 4.0 prints a negative frame.time_epoch sign-magnitude.)
        line = tshark("-r", ng, "-c", "1", "-t", "ud")[0][0].split()
        when = datetime.datetime.fromisoformat(f"{line[1]}T{line[2]}+00:00").timestamp()
        assert when == pytest.approx(scenario.datagrams[0].timestamp + shift, abs=1e-6), case
        assert (when < 0) if shift < 0 else (when >= 2**32), case


def test_pcap_writer_time_range(tmp_path: Path) -> None:
    packet = build_udp_packet(("10.0.0.1", 1), ("10.0.0.2", 2), b"x")
    path = tmp_path / "edges.pcap"
    last = 2**32 - 0.5  # 2106-02-07 06:28:15.5, the last half second there is
    with PcapWriter(path) as w:
        w.write_ip(0.0, packet)
        w.write_ip(last, packet)
        for bad in (-0.5, -1e-6, 2.0**32, 2**32 - 1e-7, 1e300, float("inf"), float("nan")):
            with pytest.raises(CaptureFormatError, match="classic pcap"):
                w.write_ip(bad, packet)
    # Wireshark reads the seconds as unsigned, as the pcap draft defines them.
    rows = tshark("-r", path, "-T", "fields", "-e", "frame.time_epoch")
    assert [float(r[0]) for r in rows] == [0.0, last]


# --- key log ---------------------------------------------------------------------------------


def test_pcapng_with_secrets_is_owner_only_and_follows_no_link(tmp_path: Path) -> None:
    # As the key log: an existing file is made 0600 before keys go in, and a
    # symbolic link is refused rather than followed (to a file others read).
    path = tmp_path / "old.pcapng"
    path.write_bytes(b"")
    path.chmod(0o644)
    with PcapngWriter(path) as out:
        out.log_handshake(
            local_static_private=bytes(range(32)),
            remote_static_public=bytes(32),
            local_ephemeral_private=bytes(range(1, 33)),
        )
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    target = tmp_path / "shared.pcapng"
    target.write_bytes(b"")
    target.chmod(0o644)
    link = tmp_path / "link.pcapng"
    link.symlink_to(target)
    with pytest.raises(OSError):
        PcapngWriter(link)
    assert target.read_bytes() == b"" and stat.S_IMODE(os.stat(target).st_mode) == 0o644


def test_keylog_format_and_mode(scenario: Scenario, files: dict[str, Path]) -> None:
    path = files["initiator"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    lines = path.read_text().splitlines()
    hs = scenario.handshakes[0]
    e = hs.initiator_ephemerals[0]
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    assert lines[:4] == [
        f"LOCAL_STATIC_PRIVATE_KEY = {b64(scenario.ik.raw)}",
        f"REMOTE_STATIC_PUBLIC_KEY = {b64(scenario.rk.public_key.raw)}",
        f"LOCAL_EPHEMERAL_PRIVATE_KEY = {b64(e)}",
        f"PRESHARED_KEY = {b64(scenario.psk.raw)}",
    ]
    log = read_keylog(path)
    assert log.static_private[0] == scenario.ik.raw
    assert log.psk_by_ephemeral[dh_public(e)] == [scenario.psk.raw]


def test_keylog_tightens_an_existing_file_and_skips_a_zero_psk(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("")
    path.chmod(0o644)
    with KeyLogWriter(path) as log:
        log.log_handshake(
            local_static_private=bytes(range(32)),
            remote_static_public=bytes(32),
            local_ephemeral_private=bytes(range(1, 33)),
            preshared_key=PresharedKey.zero(),
        )
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [line.split(" = ")[0] for line in path.read_text().splitlines()] == [
        "LOCAL_STATIC_PRIVATE_KEY",
        "REMOTE_STATIC_PUBLIC_KEY",
        "LOCAL_EPHEMERAL_PRIVATE_KEY",
    ]


def test_keylog_reads_extract_handshakes_output() -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    text = (
        "New handshake session:\n"
        f"  LOCAL_STATIC_PRIVATE_KEY = {key}\n"
        f"  REMOTE_STATIC_PUBLIC_KEY={key}\r\n"
        f"  PRESHARED_KEY = {key}\n"
    )
    log = parse_keylog(text)
    assert log.static_private == [bytes(range(32))]
    assert log.remote_static_public == [bytes(range(32))]
    assert log.orphan_psks == [bytes(range(32))]
    with pytest.raises(CaptureFormatError, match="line 2: PRESHARED_KEY"):
        parse_keylog(f"LOCAL_EPHEMERAL_PRIVATE_KEY = {key}\nPRESHARED_KEY = abc=\n")


# --- decrypt ---------------------------------------------------------------------------------


def _frames(out: str) -> dict[int, str]:
    return {int(line.split()[0]): line for line in out.splitlines() if line[:4].strip().isdigit()}


@pytest.mark.parametrize("side", ["initiator", "responder"])
def test_decrypt_reproduces_the_inner_packets(
    side: str, scenario: Scenario, files: dict[str, Path], tmp_path: Path, capsys
) -> None:
    out_pcap = tmp_path / "inner.pcap"
    code, out, err = run_cli(capsys, files["cap"], "--keylog", files[side], "-w", out_pcap)
    assert (code, err) == (0, "")
    lines = _frames(out)
    assert len(lines) == len(scenario.datagrams)
    for number, kind in enumerate(scenario.kinds, 1):
        assert f" {kind} " in lines[number] + " ", lines[number]
    # Every initiation opens: the responder's static key opens any initiation
    # sent to it, the initiator's log has the ephemeral of each it sent.
    for number, kind in enumerate(scenario.kinds, 1):
        if kind == "initiation":
            line = lines[number]
            assert f"initiator={scenario.ik.public_key}" in line, line
            assert "timestamp=2023-11-14T22:13:" in line, line
        if kind == "response":
            assert "handshake ok" in lines[number]
        if kind == "cookie reply":
            assert "cookie=" in lines[number]
    assert "ICMP echo request 10.0.0.1 -> 10.0.0.2 id=119 seq=1" in lines[5]
    assert "UDP 10.0.0.1:5000 -> 10.0.0.2:53 len=29" in out
    assert "ICMPv6 echo reply fd00::2 -> fd00::1 id=121 seq=1" in out
    transports = sum(k in ("transport data", "keepalive") for k in scenario.kinds)
    assert out.splitlines()[-1].endswith(
        f"{transports} of {transports} transport data messages decrypted"
    )
    with PcapReader(out_pcap) as reader:
        written = [p.packet for p in reader]
    assert written == [scenario.inner[n] for n in sorted(scenario.inner)]


def test_decrypt_library_form(scenario: Scenario) -> None:
    keys = decrypt.KeyRing()
    keys.add_static_private(scenario.ik.raw)
    keys.add_static_public(scenario.rk.public_key.raw)
    keys.add_psk(scenario.psk.raw)
    for hs in scenario.handshakes:
        for e in hs.initiator_ephemerals:
            keys.add_ephemeral_private(e)
    records = decrypt.decrypt_datagrams(keys, scenario.datagrams)
    got = {r.frame: r.inner for r in records if r.inner}
    assert got == scenario.inner


def test_decrypt_with_the_responder_private_key_alone(
    scenario: Scenario, files: dict[str, Path], capsys
) -> None:
    code, out, err = run_cli(capsys, files["cap"], "--private-key", str(scenario.rk), "--trace")
    assert (code, err) == (0, "")
    lines = _frames(out)
    first_real = scenario.kinds.index("initiation", scenario.kinds.index("cookie reply")) + 1
    assert f"initiator={scenario.ik.public_key}" in lines[first_real]
    assert "timestamp=2023-11-14T22:13:20.2" in lines[first_real]
    # The response and the data need an ephemeral key too; the line says so.
    assert "responder's ephemeral private key" in lines[first_real + 1]
    assert "no transport keys" in lines[first_real + 2]
    # The trace is the walkthrough's: every step, the decrypted static among them.
    assert "== Responder consumes the handshake initiation ==" in out
    assert "s: S_pub_i = AEAD-open(k, 0, enc_static, h)" in out
    assert f"s_pub_i     {scenario.ik.public_key.raw.hex()}" in out


def test_decrypt_with_a_key_file_and_trace_of_the_whole_handshake(
    scenario: Scenario, files: dict[str, Path], tmp_path: Path, capsys
) -> None:
    key_file = tmp_path / "responder.key"
    key_file.write_text(str(scenario.rk) + "\n")
    e_log = tmp_path / "eph.keys"
    with KeyLogWriter(e_log) as log:
        for hs in scenario.handshakes:
            log.log_local_ephemeral_private_key(hs.responder_ephemeral)
            log.log_preshared_key(scenario.psk)
    code, out, _ = run_cli(
        capsys, files["cap"], "--private-key", key_file, "--keylog", e_log, "--trace"
    )
    assert code == 0
    assert "== Responder creates the handshake response (replayed) ==" in out
    assert "psk: (ck, tau, k) = KDF3(ck, Q)" in out
    assert out.count("handshake ok") == 2


def test_decrypt_wrong_psk_does_not_open(scenario: Scenario, files: dict[str, Path], capsys):
    # A responder log without its psk lines: the zero psk is tried and fails.
    text = "\n".join(
        line for line in files["responder"].read_text().splitlines() if "PRESHARED" not in line
    )
    files["responder"].write_text(text)
    code, out, _ = run_cli(capsys, files["cap"], "--keylog", files["responder"])
    assert code == 0
    assert "does not open with the keys given" in out
    assert "0 handshakes followed, 0 of" in out


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (lambda p: p.write_text("not a capture"), [], "not a pcap or pcapng file"),
        (None, ["--private-key", "c2hvcnQ="], "--private-key: a key is 44 characters"),
        (None, ["--keylog", "/nonexistent/keys"], "--keylog /nonexistent/keys: No such file"),
    ],
)
def test_decrypt_bad_input_is_one_line_and_status_1(
    make, args: list[str], message: str, files: dict[str, Path], tmp_path: Path, capsys
) -> None:
    cap = files["cap"]
    if make is not None:
        cap = tmp_path / "bad.pcap"
        make(cap)
    code, _, err = run_cli(capsys, cap, *args)
    assert code == 1
    assert err.count("\n") == 1 and message in err, err
    assert err.startswith("python -m wireguard decrypt: ")


def _initiations_like(sc: Scenario, count: int, first_index: int = 0x5000_0000) -> list[bytes]:
    """*count* copies of the scenario's (real) second initiation, each with its
    own sender index and a mac1 that verifies (whitepaper 5.4.4: the index is
    covered by mac1, not by the AEAD, so each opens with the responder's key):
    what a flood of distinct initiations in a capture looks like."""
    real = sc.datagrams[sc.kinds.index("initiation", 1)].payload
    key = mac1_key(sc.rk.public_key.raw)
    out = []
    for index in range(first_index, first_index + count):
        m = bytearray(real)
        m[4:8] = struct.pack("<I", index)
        m[116:132] = mac(key, bytes(m[:116]))
        out.append(bytes(m))
    return out


def test_decrypt_pending_initiations_are_bounded(scenario: Scenario) -> None:
    # Initiations nobody answers are held for their response; a capture with
    # many distinct ones (a flood, a long capture of a peer retrying) must not
    # hold them all: three times as many must not take much more memory.
    keys = decrypt.KeyRing()
    keys.add_static_public(scenario.rk.public_key.raw)
    flood = _initiations_like(scenario, 3 * 2 * decrypt.MAX_PENDING)
    held = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        decryptor = decrypt.CaptureDecryptor(keys)
        for number, payload in enumerate(flood, 1):
            record = decryptor.feed(number, T0 + number, I4, R4, payload)
            assert record is not None and record.kind == "initiation"
            if number in (len(flood) // 3, len(flood)):
                held.append(tracemalloc.get_traced_memory()[0] - before)
    finally:
        tracemalloc.stop()
    assert held[1] < 1.5 * held[0], held
    # ... and what was forgotten is counted, not dropped silently.
    assert decryptor.stats["forgotten initiations"] == len(flood) - decrypt.MAX_PENDING


def test_decrypt_follows_a_handshake_after_a_flood(
    scenario: Scenario, files: dict[str, Path], tmp_path: Path, capsys
) -> None:
    # A flood before the real handshakes (with the responder's key, so each
    # flooded initiation opens and holds a Responder): the handshakes that
    # follow still open, and the summary says how many were forgotten.
    flood = _initiations_like(scenario, decrypt.MAX_PENDING + 100)
    cap = tmp_path / "flood.pcap"
    with PcapWriter(cap) as w:
        for payload in flood:
            w.write_udp(T0 - 1, I4, R4, payload)
        for d in scenario.datagrams:
            w.write_udp(d.timestamp, d.src, d.dst, d.payload)
    code, out, err = run_cli(capsys, cap, "--keylog", files["responder"])
    assert (code, err) == (0, "")
    assert "12 of 12 transport data messages decrypted" in out
    # Before the first response: the flood, the initiation a cookie reply
    # answered (never answered by a response), the initiation that is.
    summary = out.splitlines()[-1]
    assert f"; {100 + 2} unanswered initiations forgotten" in summary, summary
    # The flood between an initiation and its response pushes it out: the
    # response says so instead of "not in the capture".
    keys = decrypt.KeyRing()
    keys.add_keylog(read_keylog(files["responder"]))
    first = scenario.kinds.index("response", scenario.kinds.index("cookie reply"))
    stream = [*scenario.datagrams[:first], *(UDPDatagram(T0, I4, R4, p) for p in flood)]
    records = decrypt.decrypt_datagrams(keys, [*stream, scenario.datagrams[first]])
    assert records[-1].kind == "response" and not records[-1].handshake_ok
    assert "forgotten" in records[-1].note, records[-1].note


def test_decrypt_replayed_handshakes_do_not_pile_up_keys(
    scenario: Scenario, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same initiation and response captured again and again (a replay, or
    # a capture on several interfaces) add no new transport keys to try: a
    # transport message that opens with none costs one attempt, not one per copy.
    keys = decrypt.KeyRing()
    keys.add_keylog(read_keylog(files["responder"]))
    second = scenario.kinds.index("initiation", scenario.kinds.index("cookie reply"))
    handshake = scenario.datagrams[second : second + 2]
    decryptor = decrypt.CaptureDecryptor(keys)
    for number in range(0, 2000, 2):
        for offset, d in enumerate(handshake):
            decryptor.feed(number + offset + 1, d.timestamp, d.src, d.dst, d.payload)
    assert decryptor.stats["handshakes"] == 1000
    attempts = []
    real_decrypt = decrypt.aead_decrypt

    def counting(*args):  # type: ignore[no-untyped-def]
        attempts.append(args)
        return real_decrypt(*args)

    monkeypatch.setattr(decrypt, "aead_decrypt", counting)
    data = scenario.datagrams[second + 2]
    assert scenario.kinds[second + 2] == "transport data"
    broken = data.payload[:-1] + bytes([data.payload[-1] ^ 1])
    record = decryptor.feed(3000, data.timestamp, data.src, data.dst, broken)
    assert record is not None and record.inner is None
    assert len(attempts) == 1


def test_decrypt_subcommand_registration() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m wireguard")
    sub = parser.add_subparsers(dest="command", required=True)
    decrypt_cli.add_parser(sub)
    args = parser.parse_args(["decrypt", "x.pcap", "--keylog", "k", "-w", "o.pcap", "--trace"])
    assert args.func is decrypt_cli.run and args.keylog == ["k"] and args.write == "o.pcap"


def test_udp_datagrams_skips_non_udp() -> None:
    icmp = icmp_echo("10.0.0.1", "10.0.0.2", 8, 1, 1, b"")
    udp = build_udp_packet(("10.0.0.1", 1), ("10.0.0.2", 2), b"x")
    assert list(udp_datagrams([(1.0, icmp), (2.0, udp)])) == [
        UDPDatagram(2.0, ("10.0.0.1", 1), ("10.0.0.2", 2), b"x")
    ]


# --- Wireshark's dissector, independently ---------------------------------------------------


def tshark(*args: str | Path) -> list[list[str]]:
    exe = need_tool("tshark")
    result = subprocess.run(
        [exe, "-n", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [line.split("\t") for line in result.stdout.splitlines()]


FIELDS = [
    "frame.number",
    "wg.type",
    "wg.receiver_pubkey",
    "wg.static",
    "wg.timestamp.value",
    "wg.handshake_ok",
    "wg.counter",
    "wg.decryption_error",
    "_ws.malformed",
    "_ws.expert.severity",
    "ip.checksum.status",
    "udp.checksum.status",
    "icmp.type",
    "icmpv6.type",
]


@pytest.mark.parametrize("side", ["initiator", "responder"])
def test_tshark_decrypts_our_capture_with_our_keylog(
    side: str, scenario: Scenario, files: dict[str, Path]
) -> None:
    args = [
        "-r",
        files["cap"],
        "-o",
        f"wg.keylog_file:{files[side]}",
        "-o",
        "wg.dissect_packet:TRUE",
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "udp.check_checksum:TRUE",
        "-T",
        "fields",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=,",
    ]
    for f in FIELDS:
        args += ["-e", f]
    rows = {int(r[0]): dict(zip(FIELDS, r, strict=True)) for r in tshark(*args)}
    assert len(rows) == len(scenario.datagrams)
    wg_type = {"initiation": "1", "response": "2", "cookie reply": "3"}
    ipub, rpub = str(scenario.ik.public_key), str(scenario.rk.public_key)
    for number, kind in enumerate(scenario.kinds, 1):
        row = rows[number]
        assert row["wg.type"] == wg_type.get(kind, "4"), row
        assert row["_ws.malformed"] == "" and row["wg.decryption_error"] == "", row
        # Our outer (and inner) IPv4 and UDP checksums verify: status 1 = good.
        assert set(row["ip.checksum.status"].split(",")) <= {"1", ""}, row
        assert set(row["udp.checksum.status"].split(",")) == {"1"}, row
        # Nothing worse than a note (a keepalive is "chat"; warning is 0x600000).
        severities = [int(x) for x in row["_ws.expert.severity"].split(",") if x]
        assert all(x < 0x600000 for x in severities), row
        if kind == "initiation":
            assert row["wg.receiver_pubkey"] == rpub
            assert row["wg.static"] == ipub and row["wg.timestamp.value"], row
        elif kind == "response":
            assert row["wg.receiver_pubkey"] == ipub
            assert row["wg.handshake_ok"] in ("1", "True"), row
    # Every inner ICMP and ICMPv6 packet is visible, decrypted by Wireshark.
    icmp_frames = {n for n, pkt in scenario.inner.items() if pkt[0] >> 4 == 4 and pkt[9] == 1} | {
        n for n, pkt in scenario.inner.items() if pkt[0] >> 4 == 6
    }
    seen = {n for n, row in rows.items() if row["icmp.type"] or row["icmpv6.type"]}
    assert seen == icmp_frames
    assert {rows[n]["icmp.type"] for n in icmp_frames} == {"0", "8", ""}
    filtered = tshark(
        "-r",
        files["cap"],
        "-o",
        f"wg.keylog_file:{files[side]}",
        "-o",
        "wg.dissect_packet:TRUE",
        "-Y",
        "icmp.type == 8 && ip.src == 10.0.0.1",
        "-T",
        "fields",
        "-e",
        "frame.number",
    )
    assert len(filtered) == 4


def test_tshark_pcapng_and_embedded_secrets_read_back(
    scenario: Scenario, files: dict[str, Path], tmp_path: Path, capsys
) -> None:
    need_tool("tshark")
    editcap = need_tool("editcap")
    # pcapng as tshark writes it, with the key log embedded by editcap.
    ng = tmp_path / "cap.pcapng"
    subprocess.run(
        [editcap, "-F", "pcapng", "--inject-secrets", f"wg,{files['initiator']}", files["cap"], ng],
        check=True,
        capture_output=True,
    )
    with PcapReader(ng) as reader:
        got = [(d.src, d.dst, d.payload) for d in reader.udp_datagrams()]
        assert reader.format == "pcapng" and reader.secrets
    assert got == [(d.src, d.dst, d.payload) for d in scenario.datagrams]
    # No --keylog: the key log embedded in the pcapng is enough.
    code, out, _ = run_cli(capsys, ng)
    assert code == 0 and out.count("handshake ok") == 2
    assert "12 of 12 transport data messages decrypted" in out
    # Nanosecond pcap, as editcap writes it.
    ns = tmp_path / "cap.ns.pcap"
    subprocess.run([editcap, "-F", "nsecpcap", files["cap"], ns], check=True, capture_output=True)
    with PcapReader(ns) as reader:
        stamps = [p.timestamp for p in reader]
    assert stamps == pytest.approx([d.timestamp for d in scenario.datagrams], abs=1e-6)


def test_decrypt_w_keeps_what_came_before_a_capture_cut_short(
    files: dict[str, Path], tmp_path: Path, capsys
) -> None:
    """As tshark does with a file cut short in the middle of a packet: the
    packets before it are decrypted and written, then one line says where
    the file ends, and the exit status is 1."""
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(files["cap"].read_bytes()[:-10])
    whole_out, cut_out = tmp_path / "whole-inner.pcap", tmp_path / "cut-inner.pcap"
    code, _, _ = run_cli(capsys, files["cap"], "--keylog", files["initiator"], "-w", whole_out)
    assert code == 0
    code, _, err = run_cli(capsys, cut, "--keylog", files["initiator"], "-w", cut_out)
    assert code == 1
    assert err.count("\n") == 1 and "cut short in the middle of packet" in err, err
    assert str(cut_out) in err
    whole = [p for _, p in PcapReader(whole_out)]
    kept = [p for _, p in PcapReader(cut_out)]
    assert kept and len(kept) < len(whole) + 1 and kept == whole[: len(kept)]


def test_pcapng_writer_round_trip_with_secrets(tmp_path: Path) -> None:
    """PcapngWriter's blocks, read back by our reader and by tshark: packets
    with their times (microseconds, any time from 1970, past 2106 too), and
    the secrets block where it was written."""
    from wireguard.capture import PcapngWriter

    path = tmp_path / "x.pcapng"
    packet = build_udp_packet(("10.0.0.1", 51820), ("10.0.0.2", 51821), b"hello")
    with PcapngWriter(path) as writer:
        writer.write_secrets("LOCAL_STATIC_PRIVATE_KEY = " + "A" * 43 + "=\n")
        writer.write_ip(1_700_000_000.25, packet)
        writer.write_ip(2**32 + 0.5, packet)  # after 2106: pcapng holds it
        with pytest.raises(CaptureFormatError):
            writer.write_ip(-1.0, packet)
    assert path.stat().st_mode & 0o777 == 0o600
    with PcapReader(path) as reader:
        got = [(p.timestamp, p.packet) for p in reader]
        assert reader.secrets == [(SECRETS_TYPE_WIREGUARD, b"LOCAL_STATIC_PRIVATE_KEY = "
                                   + b"A" * 43 + b"=\n")]  # fmt: skip
    assert got == [(1_700_000_000.25, packet), (2**32 + 0.5, packet)]
    tshark = need_tool("tshark")
    fields = ["-T", "fields", "-e", "frame.time_epoch", "-e", "udp.length"]
    out = subprocess.run([tshark, "-r", str(path), *fields], capture_output=True, text=True,
                         check=True)  # fmt: skip
    assert out.stdout.split() == ["1700000000.250000000", "13", "4294967296.500000000", "13"]


# --- review: readers against libpcap, the pcapng draft and Wireshark -------------------------


def _pcap_of(linktype: int, *frames: bytes) -> bytes:
    data = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for n, frame in enumerate(frames):
        data += struct.pack("<IIII", 1_700_000_000 + n, 0, len(frame), len(frame)) + frame
    return data


def _tshark_ip_src(path: Path) -> list[str]:
    return [row[0] for row in tshark("-r", path, "-T", "fields", "-e", "ip.src")]


@pytest.mark.parametrize("linktype", [LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2])
def test_reader_linux_cooked_with_a_vlan_tag(linktype: int, tmp_path: Path) -> None:
    """libpcap puts the 802.1Q tag the kernel took off back in at the SLL
    header's protocol field (pcap-linux.c, vlan_offset = SLL_HDR_LEN - 2), so
    a cooked capture on a VLAN's parent reads protocol 0x8100, then the TCI
    and the real protocol; Wireshark reads the IP packet after it."""
    packet = build_udp_packet(("10.1.1.1", 1234), ("10.1.1.2", 51820), b"\x04\0\0\0" + bytes(28))
    tag = struct.pack("!HH", 5, 0x0800)
    if linktype == LINKTYPE_LINUX_SLL:
        frame = struct.pack("!HHH8sH", 0, 1, 6, bytes(8), 0x8100) + tag + packet
    else:
        frame = struct.pack("!HHIHBB8s", 0x8100, 0, 3, 1, 0, 6, bytes(8)) + tag + packet
    path = tmp_path / "vlan.pcap"
    path.write_bytes(_pcap_of(linktype, frame))
    with PcapReader(path) as reader:
        assert [p.packet for p in reader] == [packet]
        assert reader.skipped == 0
    assert _tshark_ip_src(path) == ["10.1.1.1"]


@pytest.mark.parametrize("linktype", [12, 14])
def test_reader_old_dlt_raw_numbers(linktype: int, tmp_path: Path) -> None:
    """Files written before LINKTYPE_RAW (101) carry DLT_RAW as the writing
    system numbered it: 12 on most, 14 on OpenBSD. Wireshark reads both as
    raw IP (wiretap's pcap-common.c), and so must we."""
    packet = build_udp_packet(("10.1.1.1", 1234), ("10.1.1.2", 51820), b"x")
    path = tmp_path / "raw.pcap"
    path.write_bytes(_pcap_of(linktype, packet))
    with PcapReader(path) as reader:
        assert [p.packet for p in reader] == [packet]
    assert _tshark_ip_src(path) == ["10.1.1.1"]


def _pcapng_raw(*blocks: bytes) -> bytes:
    shb = _pcapng_block("<", 0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    return shb + b"".join(blocks)


def _epb(packet: bytes) -> bytes:
    return _pcapng_block("<", 6, struct.pack("<IIIII", 0, 0, 1, len(packet), len(packet)) + packet)


@pytest.mark.parametrize(
    "option",
    [
        struct.pack("<HH", 9, 1),  # if_tsresol with its value missing
        struct.pack("<HH", 14, 8) + bytes(4),  # if_tsoffset with half of it
    ],
)
def test_reader_interface_option_overrunning_its_block_is_one_error(option: bytes) -> None:
    """An option whose length runs past the end of its block (Wireshark:
    "option goes past the end of the block") is a format error saying where,
    not an IndexError or struct.error."""
    idb = _pcapng_block("<", 1, struct.pack("<HHI", LINKTYPE_RAW, 0, 0) + option)
    data = _pcapng_raw(idb)
    with pytest.raises(CaptureFormatError, match=r"option .* overruns the block at offset 28"):
        list(PcapReader(io.BytesIO(data)))


def test_reader_refuses_block_lengths_that_disagree(tmp_path: Path) -> None:
    """A pcapng block gives its total length twice (draft-ietf-opsawg-pcapng
    section 3.1); when the two differ one of them is wrong, and Wireshark
    calls the file damaged rather than read on from a wrong place."""
    packet = build_udp_packet(("10.0.0.1", 1), ("10.0.0.2", 2), b"hi")
    idb = _pcapng_block("<", 1, struct.pack("<HHI", LINKTYPE_RAW, 0, 0))
    epb = bytearray(_epb(packet))
    epb[-4:] = struct.pack("<I", len(epb) + 8)
    path = tmp_path / "disagree.pcapng"
    path.write_bytes(_pcapng_raw(idb, bytes(epb)))
    with pytest.raises(CaptureFormatError, match="block at offset 48 gives its length as"):
        list(PcapReader(path))
    exe = need_tool("tshark")
    result = subprocess.run([exe, "-r", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "damaged or corrupt" in result.stderr


def test_reader_refuses_secrets_overrunning_their_block(tmp_path: Path) -> None:
    """A Decryption Secrets Block whose secrets length is more than its block
    holds is refused (as tshark refuses the file), not cut to a key log that
    ends mid-line."""
    secrets = b"LOCAL_STATIC_PRIVATE_KEY = " + base64.b64encode(bytes(32)) + b"\n"
    dsb = struct.pack("<II", SECRETS_TYPE_WIREGUARD, len(secrets) + 100) + secrets
    idb = _pcapng_block("<", 1, struct.pack("<HHI", LINKTYPE_RAW, 0, 0))
    packet = build_udp_packet(("10.0.0.1", 1), ("10.0.0.2", 2), b"hi")
    path = tmp_path / "dsb.pcapng"
    path.write_bytes(_pcapng_raw(idb, _pcapng_block("<", 0x0A, dsb), _epb(packet)))
    with pytest.raises(CaptureFormatError, match="secrets block at offset 48 overruns"):
        list(PcapReader(path))
    exe = need_tool("tshark")
    result = subprocess.run([exe, "-r", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode != 0


def test_decrypt_counts_datagrams_it_cannot_read(
    scenario: Scenario, files: dict[str, Path], tmp_path: Path, capsys
) -> None:
    """A capture taken with a small snap length (tcpdump -s 100) holds every
    WireGuard datagram, most of them cut short; tshark lists all of them. They
    cannot be opened, but they must not vanish from the summary, and neither
    may UDP fragments (which are not reassembled)."""
    cap = tmp_path / "snap100.pcap"
    with PcapWriter(cap, snaplen=100) as w:
        for d in scenario.datagrams:
            w.write_udp(d.timestamp, d.src, d.dst, d.payload)
        whole = build_udp_packet(I4, R4, scenario.datagrams[3].payload)
        first = bytearray(whole[:20] + whole[20:60])  # MF set, offset 0
        first[2:4], first[6:8] = struct.pack("!H", 60), struct.pack("!H", 0x2000)
        w.write_ip(T0 + 100, bytes(first))
    cut = sum(len(d.payload) + 28 > 100 for d in scenario.datagrams)
    assert 0 < cut < len(scenario.datagrams)
    assert len(tshark("-r", cap)) == len(scenario.datagrams) + 1
    code, out, _ = run_cli(capsys, cap, "--keylog", files["initiator"])
    assert code == 0
    summary = out.splitlines()[-1]
    assert f"; {cut} UDP packets cut short by the capture's snap length, not read" in summary
    assert "; 1 UDP fragment not read (no reassembly)" in summary


def test_decrypt_embed_keys_writes_lines_wireshark_reads(
    scenario: Scenario, files: dict[str, Path], tmp_path: Path, capsys
) -> None:
    """Our key log parser takes a line with trailing spaces or a tab, which
    Wireshark's (packet-wireguard.c, wg_keylog_process_lines: the value runs
    to the end of the line and must be 44 characters) skips. --embed-keys
    promises a file Wireshark opens decrypted, so it must embed the keys as
    Wireshark reads them, not the text as given."""
    loose = tmp_path / "loose.keys"
    text = files["initiator"].read_text()
    loose.write_text("".join(f"\t{line}  \n" for line in text.splitlines()))
    loose.chmod(0o600)
    out = tmp_path / "embedded.pcapng"
    code, summary, _ = run_cli(capsys, files["cap"], "--keylog", loose, "--embed-keys", out)
    assert code == 0 and "2 handshakes followed" in summary
    with PcapReader(out) as reader:
        list(reader)
        assert reader.secrets == [(SECRETS_TYPE_WIREGUARD, text.encode())]
    rows = tshark(
        "-r", out, "-o", "wg.dissect_packet:TRUE", "-T", "fields", "-e", "wg.handshake_ok"
    )
    assert [r[0] for r in rows].count("1") == len(scenario.handshakes)


def test_decrypt_into_a_pipe_closed_early_ends_quietly(files: dict[str, Path]) -> None:
    """``decrypt ... --trace | head -1``: the reader closes the pipe. A C tool
    (``seq``) is ended by SIGPIPE without a word; ours says nothing either
    and fails (it printed ``None: Broken pipe``)."""
    argv = [sys.executable, "-m", "wireguard", "decrypt", str(files["cap"]),
            "--keylog", str(files["initiator"]), "--trace"]  # fmt: skip
    for command in (["seq", "1", "100000000"], argv):
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.read(64)
        proc.stdout.close()
        err = proc.stderr.read()
        status = proc.wait(timeout=60)
        proc.stderr.close()
        assert err == b"", (command[0], err)
        assert status != 0
