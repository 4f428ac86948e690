"""The DNS stub resolver core: against a real dnsmasq (A, AAAA, AAAA only,
NXDOMAIN with its SOA, CNAME, truncation to TCP, search domains, dead
servers, TTL expiry), against dnspython (an independent encoder and
decoder), fuzzed, and its cache against a model."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import dns.message
import dns.rcode
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.conftest import need_tool
from tests.dns_driver import resolve
from wireguard import dns as d
from wireguard.config import parse_wg_quick
from wireguard.crypto import seeded_random
from wireguard.errors import LocalProtocolError, RemoteProtocolError

# --- a real dnsmasq on loopback ----------------------------------------------

HOSTS = [
    "10.1.2.3 web.test",
    "fd00::3 web.test",
    "fd00::6 six.test",
    "10.5.5.5 db.corp.test",
    *(f"10.9.0.{i} big.test" for i in range(1, 101)),  # 1.6 kB: truncated over UDP
]
AUTH_TTL = 120


def _free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def _answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(d.build_query("web.test", d.A, 1), ("127.0.0.1", port))
            return bool(s.recv(512))
        except OSError:
            return False


class Dnsmasq:
    def __init__(self, directory: Path) -> None:
        self.hosts = directory / "hosts"
        self.hosts.write_text("\n".join(HOSTS) + "\n")
        self.port = _free_port()
        self.server = ("127.0.0.1", self.port)
        args = [
            need_tool("dnsmasq"),
            "--no-daemon",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--no-resolv",
            "--no-hosts",
            f"--addn-hosts={self.hosts}",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--local=/test/",
            "--cname=alias.test,web.test",
            # authoritative for test.: answers carry TTLs, negative ones an SOA
            "--auth-zone=test",
            "--auth-server=ns.test,127.0.0.1",
            f"--auth-ttl={AUTH_TTL}",
            "--auth-soa=7,hostmaster.test,1200,180,1209600",
            "--log-queries",
        ]
        if os.geteuid() == 0:
            args.append("--user=root")  # to read the hosts file again on SIGHUP
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(100):
            if _answers(self.port):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited: {self.proc.stderr.read().decode()}")
            time.sleep(0.05)
        raise RuntimeError("dnsmasq does not answer")

    def reload(self, lines: list[str]) -> None:
        self.hosts.write_text("\n".join(lines) + "\n")
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory):
    need_tool("dnsmasq")
    server = Dnsmasq(tmp_path_factory.mktemp("dnsmasq"))
    yield server
    server.close()


class Clock:
    """Real time (so that timeouts happen) plus a shift a test moves on."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.shift


def _names(sent: list[d.Query]) -> list[tuple[str, int, bool]]:
    out = []
    for q in sent:
        question = d.parse_message(q.data).questions[0]
        out.append((question.name, question.type, q.tcp))
    return out


def test_a_and_aaaa_from_dnsmasq(dnsmasq):
    sent: list[d.Query] = []
    r = d.Resolver([dnsmasq.server])
    got = resolve(r, "web.test", sent=sent)
    assert got.addresses == (ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("fd00::3"))
    assert got.ttl == AUTH_TTL
    assert _names(sent) == [("web.test", d.A, False), ("web.test", d.AAAA, False)]
    assert len({q.id for q in sent}) == 2


def test_query_ids_come_from_the_random_source(dnsmasq):
    sent: list[d.Query] = []
    r = d.Resolver([dnsmasq.server], random=seeded_random(b"ids"))
    resolve(r, "web.test", sent=sent)
    expected = seeded_random(b"ids")
    assert [q.id for q in sent] == [int.from_bytes(expected(2), "big") for _ in sent]


def test_name_with_only_aaaa(dnsmasq):
    r = d.Resolver([dnsmasq.server])
    assert resolve(r, "six.test").addresses == (ipaddress.ip_address("fd00::6"),)
    with pytest.raises(d.ResolutionError) as info:
        resolve(r, "six.test", families=(d.A,))
    assert info.value.reason == "NODATA" and info.value.permanent


def test_nxdomain_names_the_name_and_server_and_is_cached_for_the_soa_ttl(dnsmasq):
    clock = Clock()
    r = d.Resolver([dnsmasq.server])
    with pytest.raises(d.ResolutionError) as info:
        resolve(r, "nothere.test", clock)
    message = str(info.value)
    assert info.value.reason == "NXDOMAIN"
    assert "'nothere.test'" in message and f"127.0.0.1:{dnsmasq.port}" in message
    sent: list[d.Query] = []
    clock.shift = AUTH_TTL - 5  # within the negative TTL: from the cache
    with pytest.raises(d.ResolutionError):
        resolve(r, "nothere.test", clock, sent)
    assert sent == []
    clock.shift = AUTH_TTL + 1
    with pytest.raises(d.ResolutionError):
        resolve(r, "nothere.test", clock, sent)
    assert sent


def test_truncated_answer_is_asked_again_over_tcp(dnsmasq):
    sent: list[d.Query] = []
    r = d.Resolver([dnsmasq.server])
    got = resolve(r, "big.test", sent=sent, families=(d.A,))
    assert sorted(got.addresses) == [ipaddress.ip_address(f"10.9.0.{i}") for i in range(1, 101)]
    assert _names(sent) == [("big.test", d.A, False), ("big.test", d.A, True)]
    assert sent[1].server == dnsmasq.server
    assert r.stats["truncated"] == 1


def test_cname(dnsmasq):
    got = resolve(d.Resolver([dnsmasq.server]), "alias.test")
    assert got.canonical_name == "web.test"
    assert ipaddress.ip_address("10.1.2.3") in got.addresses


def test_search_domains_in_order(dnsmasq):
    sent: list[d.Query] = []
    r = d.Resolver([dnsmasq.server], ["nope.test", "corp.test"])
    got = resolve(r, "db", sent=sent, families=(d.A,))
    assert got.name == "db.corp.test" and got.addresses == (ipaddress.ip_address("10.5.5.5"),)
    assert [n for n, _, _ in _names(sent)] == ["db.nope.test", "db.corp.test"]


def test_dead_server_then_a_live_one(dnsmasq):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound, never answers
        r = d.Resolver([silent.getsockname(), dnsmasq.server], timeout=0.3)
        got = resolve(r, "web.test", families=(d.A,))
    assert got.addresses == (ipaddress.ip_address("10.1.2.3"),)
    assert r.stats["timeouts"] == 1


def test_unreachable_server_moves_on_at_once(dnsmasq):
    closed = ("127.0.0.1", _free_port())  # nothing listens: ICMP port unreachable
    r = d.Resolver([closed, dnsmasq.server], timeout=30)
    got = resolve(r, "web.test", families=(d.A,))
    assert got.addresses == (ipaddress.ip_address("10.1.2.3"),)
    assert r.stats["send_failures"] == 1 and r.stats["timeouts"] == 0


def test_no_server_answers():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        server = silent.getsockname()
        r = d.Resolver([server], timeout=0.2, attempts=2)
        with pytest.raises(d.ResolutionError) as info:
            resolve(r, "web.test")
    assert info.value.reason == "timeout" and not info.value.permanent
    assert f"127.0.0.1:{server[1]}" in str(info.value)
    assert r.stats["timeouts"] == 4  # two families, two rounds


def test_ttl_expiry_follows_a_changed_address(dnsmasq):
    clock = Clock()
    r = d.Resolver([dnsmasq.server])
    name = "moving.test"
    try:
        dnsmasq.reload([*HOSTS, f"10.7.0.1 {name}"])
        assert resolve(r, name, clock, families=(d.A,)).addresses[0] == ipaddress.ip_address(
            "10.7.0.1"
        )
        dnsmasq.reload([*HOSTS, f"10.7.0.2 {name}"])
        clock.shift = AUTH_TTL - 1
        sent: list[d.Query] = []
        assert resolve(r, name, clock, sent, families=(d.A,)).addresses[0] == (
            ipaddress.ip_address("10.7.0.1")
        )
        assert sent == []  # from the cache
        clock.shift = AUTH_TTL + 1
        assert resolve(r, name, clock, sent, families=(d.A,)).addresses[0] == (
            ipaddress.ip_address("10.7.0.2")
        )
        assert sent
    finally:
        dnsmasq.reload(HOSTS)


def test_resolver_from_a_wg_quick_dns_line(dnsmasq):
    config = parse_wg_quick(
        "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n"
        "DNS = 127.0.0.1, corp.test\n",
        "wg0.conf",
    )
    r = d.Resolver.from_config(config.interface, port=dnsmasq.port)
    assert r.servers == (dnsmasq.server,) and r.search == ("corp.test",)
    assert resolve(r, "db").name == "db.corp.test"


# --- the wire format against dnspython -----------------------------------------


def test_query_is_byte_for_byte_dnspythons():
    for name, qtype in (("web.test", d.A), ("Ünïcode.example", d.AAAA), ("a.b.c.", d.A)):
        ours = d.build_query(name, qtype, 0xBEEF)
        theirs = dns.message.make_query(name.encode("idna").decode(), qtype, use_edns=False)
        theirs.id = 0xBEEF
        assert ours == theirs.to_wire()
    ours = d.build_query("web.test", d.A, 7, edns_payload=1232)
    theirs = dns.message.make_query("web.test", d.A, use_edns=0, payload=1232)
    theirs.id = 7
    assert ours == theirs.to_wire()


labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
names = st.lists(labels, min_size=1, max_size=4).map(".".join)


@st.composite
def responses(draw):
    qname = draw(names)
    query = dns.message.make_query(qname, draw(st.sampled_from(["A", "AAAA"])), use_edns=False)
    response = dns.message.make_response(query)
    response.set_rcode(draw(st.sampled_from([0, 3])))
    for section in (response.answer, response.authority):
        for _ in range(draw(st.integers(0, 4))):
            owner = draw(st.one_of(st.just(qname), names))
            kind = draw(st.sampled_from(["A", "AAAA", "CNAME", "SOA", "TXT"]))
            ttl = draw(st.integers(0, 2**31 - 1))
            value = {
                "A": lambda: str(ipaddress.IPv4Address(draw(st.integers(0, 2**32 - 1)))),
                "AAAA": lambda: str(ipaddress.IPv6Address(draw(st.integers(0, 2**128 - 1)))),
                "CNAME": lambda: draw(names) + ".",
                "SOA": lambda: f"ns.{qname}. h.{qname}. 1 2 3 4 {draw(st.integers(0, 2**31))}",
                "TXT": lambda: '"hello"',
            }[kind]()
            section.append(dns.rrset.from_text(owner + ".", ttl, "IN", kind, value))
    return response


def _theirs(rrsets) -> list[tuple[str, int, int, str]]:
    out = []
    for rrset in rrsets:
        for rdata in rrset:
            out.append((rrset.name.to_text(omit_final_dot=True), rrset.rdtype, rrset.ttl, rdata))
    return out


@settings(max_examples=300, deadline=None)
@given(responses())
def test_parse_agrees_with_dnspython(response):
    wire = response.to_wire()  # compressed names
    ours = d.parse_message(wire)
    assert ours.id == response.id and ours.rcode == response.rcode()
    for mine, theirs in ((ours.answers, response.answer), (ours.authorities, response.authority)):
        expected = _theirs(theirs)
        assert len(mine) == len(expected)
        for record, (name, rtype, ttl, rdata) in zip(mine, expected, strict=True):
            assert (record.name, record.type, record.ttl) == (name, rtype, ttl)
            if rtype in (d.A, d.AAAA):
                assert record.value == ipaddress.ip_address(rdata.address)
            elif rtype == d.CNAME:
                assert record.value == rdata.target.to_text(omit_final_dot=True)
            elif rtype == d.SOA:
                assert record.value.minimum == rdata.minimum
                assert record.value.mname == rdata.mname.to_text(omit_final_dot=True)
    # dnspython reads back what we would answer for the question, and so do we
    question = d.Question(ours.questions[0].name, ours.questions[0].type)
    answer = d.interpret(ours, question)
    assert all(
        isinstance(a, ipaddress.IPv4Address | ipaddress.IPv6Address) for a in answer.addresses
    )


def _raises_only_ours(data: bytes) -> None:
    try:
        message = d.parse_message(data)
    except d.DNSFormatError:
        return
    with contextlib.suppress(d.DNSFormatError):
        if message.questions:
            d.interpret(message, message.questions[0])


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_dns_format_error(data):
    _raises_only_ours(data)
    _raises_only_ours(b"\x12\x34\x81\x80\x00\x01\x00\x02\x00\x01\x00\x00" + data)


@settings(max_examples=500, deadline=None)
@given(responses(), st.data())
def test_mutated_messages_raise_only_dns_format_error(response, data):
    wire = bytearray(response.to_wire())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    _raises_only_ours(bytes(wire))
    cut = data.draw(st.integers(0, len(wire)))
    _raises_only_ours(bytes(wire[:cut]))


def test_every_prefix_of_a_message_is_cut_short():
    wire = dns.message.from_text(
        "id 1\nflags QR RD RA\n;QUESTION\nweb.test. IN A\n;ANSWER\n"
        "web.test. 60 IN CNAME www.web.test.\nwww.web.test. 60 IN A 10.0.0.1\n"
    ).to_wire()
    assert d.parse_message(wire).answers[1].value == ipaddress.ip_address("10.0.0.1")
    for cut in range(len(wire)):
        with pytest.raises(d.DNSFormatError):
            d.parse_message(wire[:cut])


HEADER = b"\x00\x01\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00"


@pytest.mark.parametrize(
    "question, why",
    [
        (b"\xc0\x0c\x00\x01\x00\x01", "into itself"),  # a pointer to itself
        (b"\x01a\xc0\x0c\x00\x01\x00\x01", "into itself"),  # to the start of its own run
        (b"\xc0\x20\x00\x01\x00\x01", "forward"),  # forward
        (b"\x41a\x00\x00\x01\x00\x01", "label type"),  # extended label type 0x40
        (b"\x3fa", "past the end"),
        (b"".join([b"\x3f" + b"a" * 63] * 4) + b"\x00\x00\x01\x00\x01", "longer than 255"),
    ],
)
def test_bad_names(question, why):
    with pytest.raises(d.DNSFormatError, match=why):
        d.parse_message(HEADER + question)


def _chain(count: int) -> bytes:
    # question 0 is "a"; question i points at question i-1's name: each
    # pointer leads to an earlier one, legal, but the last needs count-1 jumps
    msg = bytearray(HEADER[:4] + count.to_bytes(2, "big") + HEADER[6:])
    starts = []
    for i in range(count):
        starts.append(len(msg))
        msg += b"\x01a\x00" if i == 0 else bytes([0xC0 | starts[i - 1] >> 8, starts[i - 1] & 0xFF])
        msg += b"\x00\x01\x00\x01"
    return bytes(msg)


def test_pointer_chains_are_bounded():
    assert {q.name for q in d.parse_message(_chain(100)).questions} == {"a"}
    with pytest.raises(d.DNSFormatError, match="too many pointers"):
        d.parse_message(_chain(200))


def test_names_that_cannot_be_asked_for():
    # RFC 1035 3.1: the null label is the root's alone, so an empty label
    # anywhere else (a leading dot, two dots, '..') is not a name.
    for bad in ("", "a..b", "..", ".a", "a...", "x" * 64 + ".test", ".".join(["abcdefg"] * 40)):
        with pytest.raises(d.DNSNameError):
            d.encode_name(bad)
        with pytest.raises(d.DNSNameError):
            d.Resolver(["10.0.0.53"]).lookup(bad)  # lookup() says so, not start()
        assert issubclass(d.DNSNameError, LocalProtocolError)
    assert d.encode_name("a" * 63) == b"\x3f" + b"a" * 63 + b"\x00"
    assert d.encode_name(".") == b"\x00" and d.encode_name("a.") == b"\x01a\x00"
    with pytest.raises(d.DNSNameError):
        d.Resolver(["10.0.0.53"]).lookup(".")  # the root has no address to look up


def test_tcp_frames_split_anywhere():
    messages = [d.build_query(f"n{i}.test", d.A, i) for i in range(5)]
    stream = b"".join(d.tcp_frame(m) for m in messages)
    for step in (1, 2, 3, 7, len(stream)):
        reader = d.TCPFrameReader()
        got = []
        for i in range(0, len(stream), step):
            got += reader.feed(stream[i : i + step])
        assert got == messages and reader.pending == 0


# --- what an answer means (RFC 2308, RFC 1034) --------------------------------------


def _response(text: str) -> d.Message:
    return d.parse_message(dns.message.from_text("id 1\nflags QR RD RA\n" + text).to_wire())


@pytest.mark.parametrize("soa_ttl, minimum, expected", [(300, 60, 60), (30, 600, 30)])
def test_negative_ttl_is_the_smaller_of_the_soas_ttl_and_minimum(soa_ttl, minimum, expected):
    for rcode in ("NXDOMAIN", "NOERROR"):
        message = _response(
            f"rcode {rcode}\n;QUESTION\nx.test. IN A\n;AUTHORITY\n"
            f"test. {soa_ttl} IN SOA ns.test. h.test. 1 2 3 4 {minimum}\n"
        )
        answer = d.interpret(message, d.Question("x.test", d.A))
        assert answer.ttl == expected and not answer.addresses
        assert answer.nxdomain == (rcode == "NXDOMAIN") and answer.nodata == (rcode == "NOERROR")


def test_negative_answer_without_soa_is_not_cached():
    message = _response("rcode NXDOMAIN\n;QUESTION\nx.test. IN A\n")
    answer = d.interpret(message, d.Question("x.test", d.A))
    cache = d.DNSCache()
    cache.put(answer, 0.0)
    assert answer.ttl == 0 and len(cache) == 0 and cache.stats["not_stored"] == 1


def test_cname_chain_ttl_is_its_smallest_and_loops_stop():
    message = _response(
        ";QUESTION\na.test. IN A\n;ANSWER\na.test. 300 IN CNAME b.test.\n"
        "b.test. 50 IN CNAME c.test.\nc.test. 200 IN A 10.0.0.3\nz.test. 1 IN A 10.0.0.9\n"
    )
    answer = d.interpret(message, d.Question("A.TEST", d.A))  # names compare case-insensitively
    assert answer.addresses == (ipaddress.ip_address("10.0.0.3"),)
    assert answer.ttl == 50 and answer.canonical_name == "c.test"
    looped = _response(
        ";QUESTION\na.test. IN A\n;ANSWER\na.test. 300 IN CNAME b.test.\n"
        "b.test. 50 IN CNAME a.test.\n"
    )
    assert d.interpret(looped, d.Question("a.test", d.A)).nodata


def test_ttl_with_the_top_bit_set_reads_as_zero():
    wire = bytearray(
        dns.message.from_text(
            "id 1\nflags QR\n;QUESTION\na.test. IN A\n;ANSWER\na.test. 60 IN A 10.0.0.1\n"
        ).to_wire()
    )
    ttl_at = len(wire) - 10  # ttl, rdlength, four bytes of address
    assert wire[ttl_at : ttl_at + 4] == b"\x00\x00\x00\x3c"
    wire[ttl_at : ttl_at + 4] = b"\x80\x00\x00\x01"
    assert d.parse_message(bytes(wire)).answers[0].ttl == 0


# --- the lookup state machine with a scripted server -----------------------------------


def _reply(query: d.Query, text: str = "", rcode: str = "NOERROR", tc: bool = False) -> bytes:
    q = dns.message.from_wire(query.data)
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.from_text(rcode))
    if tc:
        r.flags |= 0x0200
    for line in filter(None, text.split("\n")):
        r.answer.append(dns.rrset.from_text(*line.split(" ", 4)))
    return r.to_wire()


def _qname(query: d.Query) -> str:
    return d.parse_message(query.data).questions[0].name


S1, S2 = ("10.0.0.53", 53), ("10.0.0.54", 53)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("db", ["db.a.test", "db.b.test", "db"]),  # fewer dots than ndots: search first
        ("db.x", ["db.x", "db.x.a.test", "db.x.b.test"]),  # enough dots: as is first
        ("db.x.", ["db.x"]),  # absolute
    ],
)
def test_search_order_follows_ndots(name, expected):
    r = d.Resolver([S1], ["a.test", "b.test."])
    assert r.candidates(name) == expected
    lookup = r.lookup(name, (d.A,))
    asked = []
    queries = lookup.start(0)
    while queries:
        (q,) = queries
        asked.append(_qname(q))
        queries = lookup.receive(_reply(q, rcode="NXDOMAIN"), q.server, 0)
    assert asked == expected
    with pytest.raises(d.ResolutionError) as info:
        lookup.result()
    assert info.value.tried == tuple(expected)


def test_ndots_option():
    r = d.Resolver([S1], ["a.test"], ndots=3)
    assert r.candidates("x.y.z") == ["x.y.z.a.test", "x.y.z"]


def test_timeouts_rotate_through_servers_for_each_round():
    r = d.Resolver([S1, S2], timeout=5, attempts=2)
    lookup = r.lookup("web.test", (d.A,))
    order = []
    now = 0.0
    queries = lookup.start(now)
    while queries:
        (q,) = queries
        order.append(q.server)
        assert lookup.next_deadline() == now + 5
        now += 5
        queries = lookup.handle_timer(now)
    assert order == [S1, S2, S1, S2]
    with pytest.raises(d.ResolutionError, match="timed out"):
        lookup.result()


def test_servfail_goes_to_the_next_server_and_nxdomain_does_not():
    r = d.Resolver([S1, S2])
    lookup = r.lookup("web.test", (d.A,))
    (q,) = lookup.start(0)
    (q2,) = lookup.receive(_reply(q, rcode="SERVFAIL"), S1, 0)
    assert q2.server == S2
    assert lookup.receive(_reply(q2, "web.test. 60 IN A 10.0.0.1"), S2, 0) == []
    assert lookup.result().addresses == (ipaddress.ip_address("10.0.0.1"),)
    # REFUSED everywhere: SERVFAIL after every server in every round
    lookup = r.lookup("other.test", (d.A,))
    queries = lookup.start(0)
    count = 0
    while queries:
        (q,) = queries
        count += 1
        queries = lookup.receive(_reply(q, rcode="REFUSED"), q.server, 0)
    assert count == 4
    with pytest.raises(d.ResolutionError) as info:
        lookup.result()
    assert info.value.reason == "SERVFAIL"


def test_stray_answers_are_counted_and_ignored():
    r = d.Resolver([S1])
    lookup = r.lookup("web.test", (d.A,))
    (q,) = lookup.start(0)
    good = _reply(q, "web.test. 60 IN A 10.0.0.1")
    wrong_id = bytes([good[0] ^ 1]) + good[1:]
    other_question = _reply(
        d.Query(q.id, S1, d.build_query("evil.test", d.A, q.id)), "evil.test. 60 IN A 6.6.6.6"
    )
    assert lookup.receive(wrong_id, S1, 0) == []
    assert lookup.receive(good, S2, 0) == []  # from another address
    assert lookup.receive(other_question, S1, 0) == []
    assert lookup.receive(q.data, S1, 0) == []  # a query, not a response
    assert lookup.receive(b"\x00" * 5, S1, 0) == []
    assert not lookup.done
    assert r.stats["mismatched"] == 4 and r.stats["malformed"] == 1
    lookup.receive(good, S1, 0)
    assert lookup.result().addresses == (ipaddress.ip_address("10.0.0.1"),)


def test_a_failure_for_a_query_not_in_flight_is_counted_and_ignored():
    """An unreachable-server report for a query id that is not in flight (a
    stale one, or one the lookup never sent) changes nothing and is counted."""
    r = d.Resolver([S1, S2])
    lookup = r.lookup("web.test", (d.A,))
    (q,) = lookup.start(0)
    assert lookup.failed(q.id ^ 1, 0) == []
    assert r.stats["late"] == 1 and r.stats["send_failures"] == 0
    lookup.receive(_reply(q, "web.test. 60 IN A 10.0.0.1"), S1, 0)
    assert lookup.failed(q.id, 0) == []  # answered: no longer in flight
    assert r.stats["late"] == 2 and r.stats["send_failures"] == 0
    assert lookup.result().addresses == (ipaddress.ip_address("10.0.0.1"),)


def test_truncated_udp_answer_is_asked_over_tcp_of_the_same_server():
    r = d.Resolver([S1, S2])
    lookup = r.lookup("big.test", (d.A,))
    (q,) = lookup.start(0)
    (t,) = lookup.receive(_reply(q, tc=True), S1, 0)
    assert t.tcp and t.server == S1
    assert lookup.receive(_reply(t, "big.test. 60 IN A 10.0.0.1"), S1, 0) == []  # not over UDP
    assert not lookup.done
    lookup.receive(_reply(t, "big.test. 60 IN A 10.0.0.1"), S1, 0, tcp=True)
    assert lookup.result().addresses == (ipaddress.ip_address("10.0.0.1"),)


def test_literals_and_no_servers():
    r = d.Resolver([])
    lookup = r.lookup("fd00::1")
    assert lookup.start(0) == [] and lookup.result().addresses == (ipaddress.ip_address("fd00::1"),)
    lookup = r.lookup("web.test")
    assert lookup.start(0) == []
    with pytest.raises(d.ResolutionError, match="no DNS servers"):
        lookup.result()
    with pytest.raises(d.DNSNameError):
        r.lookup("a..b")
    assert issubclass(d.ResolutionError, RemoteProtocolError)
    for bad in (["dns.example"], [("dns.example", 53)]):
        with pytest.raises(LocalProtocolError, match="not an IP address"):
            d.Resolver(bad)


# --- the cache against a model ------------------------------------------------


class CacheModel(RuleBasedStateMachine):
    """The cache against a dictionary that keeps insertion/use order and
    expiry times by hand, under a fake clock."""

    def __init__(self) -> None:
        super().__init__()
        self.cache = d.DNSCache(max_entries=4, max_ttl=100, max_negative_ttl=50)
        self.model: dict[tuple[str, int], tuple[d.Answer, float]] = {}
        self.now = 0.0
        self.evicted = 0

    def _model_key(self, answer: d.Answer) -> tuple[str, int]:
        return (answer.name, d.NXDOMAIN_KEY if answer.nxdomain else answer.type)

    @rule(
        name=st.sampled_from(["a", "b", "c", "d", "e", "f"]),
        qtype=st.sampled_from([d.A, d.AAAA]),
        ttl=st.integers(0, 200),
        kind=st.sampled_from(["positive", "nodata", "nxdomain"]),
    )
    def put(self, name, qtype, ttl, kind):
        addresses = (ipaddress.ip_address("10.0.0.1"),) if kind == "positive" else ()
        rcode = d.Rcode.NXDOMAIN if kind == "nxdomain" else d.Rcode.NOERROR
        answer = d.Answer(name, qtype, rcode, addresses, name, ttl)
        self.cache.put(answer, self.now)
        ttl = min(ttl, 100 if addresses else 50)
        if ttl <= 0:
            return
        if addresses:
            self.model.pop((name, d.NXDOMAIN_KEY), None)
        key = self._model_key(answer)
        self.model.pop(key, None)
        self.model[key] = (answer, self.now + ttl)
        while len(self.model) > 4:
            del self.model[next(iter(self.model))]
            self.evicted += 1

    @rule(
        name=st.sampled_from(["a", "b", "c", "d", "e", "f"]), qtype=st.sampled_from([d.A, d.AAAA])
    )
    def get(self, name, qtype):
        got = self.cache.get(name.upper(), qtype, self.now)
        expected = None
        for key in ((name, qtype), (name, d.NXDOMAIN_KEY)):
            if key in self.model:
                answer, expires = self.model[key]
                if expires <= self.now:
                    del self.model[key]
                    continue
                self.model[key] = self.model.pop(key)  # most recently used
                expected = (answer, expires)
                break
        if expected is None:
            assert got is None
        else:
            assert got is not None and (got.answer, got.expires) == expected

    @rule(seconds=st.floats(0, 120))
    def tick(self, seconds):
        self.now += seconds

    @invariant()
    def bounded(self):
        assert len(self.cache) <= 4
        assert self.cache.stats["evicted"] == self.evicted


TestCacheModel = CacheModel.TestCase
TestCacheModel.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


def test_cache_eviction_is_counted():
    cache = d.DNSCache(max_entries=2)
    for i in range(5):
        cache.put(d.Answer(f"n{i}", d.A, 0, (ipaddress.ip_address("10.0.0.1"),), f"n{i}", 60), 0)
    assert len(cache) == 2 and cache.stats["evicted"] == 3
    assert cache.get("n4", d.A, 1) is not None and cache.get("n0", d.A, 1) is None


def test_a_server_without_edns_is_asked_again_without_it():
    """RFC 6891 section 7: a responder without EDNS answers FORMERR and no OPT
    record; the requester falls back to a query without EDNS (as glibc does),
    to the same server, instead of counting the server as failed."""
    asked_with_opt = []

    def legacy_server(wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        asked_with_opt.append(query.edns >= 0)
        response = dns.message.make_response(query)
        if query.edns >= 0:
            response.use_edns(False)
            response.set_rcode(dns.rcode.FORMERR)
        else:
            response.answer.append(
                dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "10.0.0.5")
            )
        return response.to_wire()

    resolver = d.Resolver(["10.77.0.2"], edns_payload=1232)
    lookup = resolver.lookup("db.test", (d.A,))
    queries = lookup.start(0.0)
    while queries and not lookup.done:
        query = queries.pop(0)
        queries += lookup.receive(legacy_server(query.data), query.server, 0.0, tcp=query.tcp)
    assert lookup.result().addresses == (ipaddress.ip_address("10.0.0.5"),)
    assert asked_with_opt == [True, False]
    assert resolver.stats["server_failures"] == 0 and resolver.stats["edns_fallbacks"] == 1
