"""A DNS stub resolver without I/O: queries out, answers in, addresses or a
clear error at the end.

Four parts, each usable alone:

- the wire format (RFC 1035 section 4): :func:`build_query`,
  :func:`parse_message` (compression pointers followed with loop protection;
  anything malformed or cut short raises :class:`DNSFormatError`, never
  ``IndexError`` or ``struct.error``), A and AAAA (RFC 3596) records, CNAME and
  SOA; the two-byte length framing of DNS over TCP (RFC 7766 section 8,
  RFC 1035 section 4.2.2): :func:`tcp_frame` and :class:`TCPFrameReader`;
- :func:`interpret`: what one response says about one question (addresses
  at the end of a CNAME chain, the TTL, NXDOMAIN or NODATA with the negative
  TTL of RFC 2308 section 5);
- :class:`DNSCache`: answers and negative answers kept for their TTL, at most
  ``max_entries`` of them (the least recently used evicted, and counted);
- :class:`Resolver` and :class:`Lookup`: which names to try in which order
  (resolv.conf's ``search`` and ``ndots``, as glibc's ``res_search`` tries
  them), which server next on a timeout or a failure (glibc's ``res_send``:
  every server in turn, ``attempts`` rounds, the same server again over TCP
  when an answer is truncated), with ``now`` and the random source as inputs.

A binding drives one :class:`Lookup`::

    lookup = resolver.lookup("db")
    send(lookup.start(now))                  # [Query(id, server, data, tcp)]
    while not lookup.done:
        # a UDP datagram, or one message read from a TCP connection
        send(lookup.receive(data, server, now, tcp=False))
        send(lookup.failed(query_id, now))   # a TCP connect refused, ICMP unreachable
        send(lookup.handle_timer(now))       # at lookup.next_deadline()
    addresses = lookup.result()              # or ResolutionError

A :class:`Query` with ``tcp=True`` goes on a new TCP connection to its server,
framed by :func:`tcp_frame`; its answer comes back through a
:class:`TCPFrameReader`.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .address import Address
from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "AAAA",
    "CLASS_IN",
    "CNAME",
    "SOA",
    "Answer",
    "DNSCache",
    "DNSFormatError",
    "DNSNameError",
    "Lookup",
    "Message",
    "Query",
    "Question",
    "Rcode",
    "Record",
    "ResolutionError",
    "Resolved",
    "Resolver",
    "SOAData",
    "TCPFrameReader",
    "build_query",
    "encode_name",
    "interpret",
    "parse_message",
    "tcp_frame",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

A = 1
NS = 2
CNAME = 5
SOA = 6
PTR = 12
AAAA = 28
OPT = 41
NXDOMAIN_KEY = -1  # the cache key of "no such name, whatever the type" (RFC 2308 section 5)
CLASS_IN = 1

MAX_NAME = 255  # octets on the wire, lengths and root included (RFC 1035 section 2.3.4)
MAX_LABEL = 63
MAX_UDP = 512  # without EDNS (RFC 1035 section 4.2.1)
MAX_MESSAGE = 65535  # the TCP length field (RFC 1035 section 4.2.2)
_MAX_POINTERS = 127  # a legal name has at most 127 labels, so never needs more jumps

_header = struct.Struct("!HHHHHH")
_rr_fixed = struct.Struct("!HHIH")
_qfixed = struct.Struct("!HH")
_soa_fixed = struct.Struct("!IIIII")


class Rcode(enum.IntEnum):
    """Response codes (RFC 1035 section 4.1.1)."""

    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5


class DNSFormatError(RemoteProtocolError):
    """A DNS message is malformed or cut short."""


class DNSNameError(LocalProtocolError, ValueError):
    """A name that cannot be asked for: an empty label, a label over 63
    octets, more than 255 octets in all (RFC 1035 section 2.3.4), or
    characters that do not encode."""


class ResolutionError(RemoteProtocolError):
    """A name did not resolve. The message names the name, the names tried
    (search domains) and the servers asked; ``reason`` is one of
    ``"NXDOMAIN"``, ``"NODATA"``, ``"SERVFAIL"``, ``"timeout"``,
    ``"no servers"``; ``permanent`` is True when the servers said the name
    has no address (asking again will not help until its negative TTL runs
    out)."""

    def __init__(
        self,
        name: str,
        reason: str,
        tried: Sequence[str],
        servers: Sequence[Address],
        *,
        via: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.name = name
        self.reason = reason
        self.tried = tuple(tried)
        self.servers = tuple(servers)
        self.permanent = reason in ("NXDOMAIN", "NODATA")
        text = {
            "NXDOMAIN": "no such name (NXDOMAIN)",
            "NODATA": "the name has no address of the requested family (NODATA)",
            "SERVFAIL": "the servers failed to answer (SERVFAIL or REFUSED)",
            "timeout": "no server answered (timed out)",
            "no servers": "no DNS servers are configured (a DNS = line)",
        }.get(reason, reason)
        names = ", ".join(self.tried) if self.tried else name
        asked = via or ("servers " + (", ".join(_show_server(s) for s in self.servers) or "none"))
        message = f"cannot resolve {name!r}: {text}; tried {names}; {asked}"
        super().__init__(message + (f" ({hint})" if hint else ""))


def _show_server(server: Address) -> str:
    host, port = server[0], server[1]
    shown = f"[{host}]" if ":" in host else host
    return shown if port == 53 else f"{shown}:{port}"


# --- names ---------------------------------------------------------------


def _key(name: str) -> str:
    """A name as compared: ASCII case folded (RFC 4343), no trailing dot."""
    name = name[:-1] if name.endswith(".") else name
    return name.translate(_LOWER)


_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def encode_name(name: str) -> bytes:
    """``name`` (dotted, a trailing dot optional) in wire form. Non-ASCII
    labels are IDNA-encoded. Raises :class:`DNSNameError`."""
    if name == ".":
        return b"\x00"  # the root: its null label is the only empty one (RFC 1035 3.1)
    text = name[:-1] if name.endswith(".") else name
    if not text:
        raise DNSNameError("an empty name cannot be resolved")
    out = bytearray()
    for label in text.split("."):
        if not label:
            raise DNSNameError(f"{name!r} has an empty label")
        try:
            raw = label.encode("ascii")
        except UnicodeEncodeError:
            try:
                raw = label.encode("idna")
            except UnicodeError as exc:
                raise DNSNameError(f"{name!r}: label {label!r} does not encode ({exc})") from None
        if len(raw) > MAX_LABEL:
            raise DNSNameError(f"{name!r}: label {label!r} is longer than {MAX_LABEL} octets")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > MAX_NAME:
        raise DNSNameError(f"{name!r} is longer than {MAX_NAME} octets")
    return bytes(out)


def _label_text(raw: bytes) -> str:
    # Printable ASCII as is, anything else (and the dot and backslash that
    # would change the meaning) as \DDD, as RFC 1035 section 5.1 writes it.
    if all(0x21 <= c <= 0x7E and c not in (0x2E, 0x5C) for c in raw):
        return raw.decode("ascii")
    return "".join(
        chr(c) if 0x21 <= c <= 0x7E and c not in (0x2E, 0x5C) else f"\\{c:03d}" for c in raw
    )


def _read_name(msg: bytes, offset: int) -> tuple[str, int]:
    """The name at ``offset`` and the offset just after it (after its first
    pointer, if compressed). A pointer must point before the start of the run
    of labels it ends (so the runs' starts strictly decrease and no loop is
    possible), and a name stays within 255 octets (RFC 1035 section 4.1.4)."""
    labels: list[str] = []
    size = 1
    pos = offset
    run_start = offset
    after: int | None = None
    jumps = 0
    n = len(msg)
    while True:
        if pos >= n:
            raise DNSFormatError(f"name at offset {offset} runs past the end of the message")
        length = msg[pos]
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= n:
                raise DNSFormatError(f"compression pointer at offset {pos} is cut short")
            target = ((length & 0x3F) << 8) | msg[pos + 1]
            if target >= run_start:
                raise DNSFormatError(
                    f"compression pointer at offset {pos} points forward or into itself"
                )
            jumps += 1
            if jumps > _MAX_POINTERS:
                raise DNSFormatError(f"name at offset {offset} has too many pointers")
            if after is None:
                after = pos + 2
            pos = run_start = target
            continue
        if kind:
            raise DNSFormatError(f"unknown label type {length:#04x} at offset {pos}")
        if length == 0:
            return ".".join(labels), (pos + 1 if after is None else after)
        end = pos + 1 + length
        if end > n:
            raise DNSFormatError(f"label at offset {pos} runs past the end of the message")
        size += length + 1
        if size > MAX_NAME:
            raise DNSFormatError(f"name at offset {offset} is longer than {MAX_NAME} octets")
        labels.append(_label_text(msg[pos + 1 : end]))
        pos = end


# --- messages ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Question:
    """One entry of the question section (RFC 1035 section 4.1.2)."""

    name: str
    type: int
    cls: int = CLASS_IN

    def matches(self, other: Question) -> bool:
        return (
            self.type == other.type
            and self.cls == other.cls
            and _key(self.name) == _key(other.name)
        )


@dataclass(frozen=True, slots=True)
class SOAData:
    """The fields of an SOA record (RFC 1035 section 3.3.13)."""

    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


@dataclass(frozen=True, slots=True)
class Record:
    """A resource record (RFC 1035 section 4.1.3). ``value`` is the parsed
    rdata for A and AAAA (an address), CNAME, NS and PTR (a name) and SOA
    (:class:`SOAData`), else None (``data`` holds the raw rdata). A TTL with
    the top bit set reads as 0 (RFC 2181 section 8)."""

    name: str
    type: int
    cls: int
    ttl: int
    data: bytes
    value: IPAddress | str | SOAData | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """A parsed DNS message. Flag properties follow RFC 1035 section 4.1.1."""

    id: int
    flags: int
    questions: tuple[Question, ...]
    answers: tuple[Record, ...] = ()
    authorities: tuple[Record, ...] = ()
    additionals: tuple[Record, ...] = ()

    @property
    def is_response(self) -> bool:
        return bool(self.flags & 0x8000)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def authoritative(self) -> bool:
        return bool(self.flags & 0x0400)

    @property
    def truncated(self) -> bool:
        """TC: the answer did not fit; ask again over TCP (RFC 7766 section 5)."""
        return bool(self.flags & 0x0200)

    @property
    def recursion_desired(self) -> bool:
        return bool(self.flags & 0x0100)

    @property
    def recursion_available(self) -> bool:
        return bool(self.flags & 0x0080)

    @property
    def rcode(self) -> int:
        return self.flags & 0xF


def build_query(
    name: str,
    qtype: int,
    query_id: int,
    *,
    recursion_desired: bool = True,
    edns_payload: int | None = None,
) -> bytes:
    """A standard query (opcode 0) for one question, class IN. With
    ``edns_payload`` an OPT record (RFC 6891 section 6.1.2) offers that UDP
    payload size; without, answers over 512 bytes come truncated."""
    if not 0 <= query_id <= 0xFFFF:
        raise LocalProtocolError(f"query id {query_id} does not fit in 16 bits")
    if not 0 <= qtype <= 0xFFFF:
        raise LocalProtocolError(f"query type {qtype} does not fit in 16 bits")
    flags = 0x0100 if recursion_desired else 0
    arcount = 0 if edns_payload is None else 1
    out = _header.pack(query_id, flags, 1, 0, 0, arcount) + encode_name(name)
    out += _qfixed.pack(qtype, CLASS_IN)
    if edns_payload is not None:
        if not 512 <= edns_payload <= 0xFFFF:
            raise LocalProtocolError(f"EDNS payload size {edns_payload} not in 512..65535")
        out += b"\x00" + _rr_fixed.pack(OPT, edns_payload, 0, 0)
    return out


def _read_record(msg: bytes, pos: int) -> tuple[Record, int]:
    name, pos = _read_name(msg, pos)
    if pos + _rr_fixed.size > len(msg):
        raise DNSFormatError(f"record {name!r} is cut short")
    rtype, cls, ttl, rdlength = _rr_fixed.unpack_from(msg, pos)
    pos += _rr_fixed.size
    end = pos + rdlength
    if end > len(msg):
        raise DNSFormatError(f"record {name!r}: rdata runs past the end of the message")
    data = msg[pos:end]
    if ttl & 0x80000000:
        ttl = 0
    value: IPAddress | str | SOAData | None = None
    if cls == CLASS_IN and rtype == A:
        if rdlength != 4:
            raise DNSFormatError(f"A record {name!r} has {rdlength} bytes of rdata, not 4")
        value = ipaddress.IPv4Address(data)
    elif cls == CLASS_IN and rtype == AAAA:
        if rdlength != 16:
            raise DNSFormatError(f"AAAA record {name!r} has {rdlength} bytes of rdata, not 16")
        value = ipaddress.IPv6Address(data)
    elif rtype in (CNAME, NS, PTR):
        target, after = _read_name(msg[:end], pos)
        if after != end:
            raise DNSFormatError(f"record {name!r}: the name does not fill the rdata")
        value = target
    elif rtype == SOA:
        mname, after = _read_name(msg[:end], pos)
        rname, after = _read_name(msg[:end], after)
        if after + _soa_fixed.size != end:
            raise DNSFormatError(f"SOA record {name!r} has the wrong rdata length")
        value = SOAData(mname, rname, *_soa_fixed.unpack_from(msg, after))
    return Record(name, rtype, cls, ttl, data, value), end


def _read_header(
    msg: bytes,
) -> tuple[int, int, tuple[int, int, int, int], tuple[Question, ...], int]:
    if len(msg) < _header.size:
        raise DNSFormatError(f"a DNS message is at least 12 bytes, not {len(msg)}")
    if len(msg) > MAX_MESSAGE:
        raise DNSFormatError(f"a DNS message is at most {MAX_MESSAGE} bytes, not {len(msg)}")
    qid, flags, qd, an, ns, ar = _header.unpack_from(msg)
    pos = _header.size
    questions = []
    for _ in range(qd):
        name, pos = _read_name(msg, pos)
        if pos + 4 > len(msg):
            raise DNSFormatError(f"question {name!r} is cut short")
        qtype, cls = _qfixed.unpack_from(msg, pos)
        pos += 4
        questions.append(Question(name, qtype, cls))
    return qid, flags, (qd, an, ns, ar), tuple(questions), pos


def parse_message(data: bytes, *, header_only: bool = False) -> Message:
    """Parse a whole DNS message (RFC 1035 section 4.1). With
    ``header_only`` the record sections are not read (a truncated answer's
    records may be cut anywhere: RFC 2181 section 9). Raises only
    :class:`DNSFormatError`; bytes after the last record are ignored."""
    msg = bytes(data)
    qid, flags, counts, questions, pos = _read_header(msg)
    if header_only:
        return Message(qid, flags, questions)
    sections: list[list[Record]] = [[], [], []]
    for section, count in zip(sections, counts[1:], strict=True):
        for _ in range(count):
            record, pos = _read_record(msg, pos)
            section.append(record)
    return Message(qid, flags, questions, *(tuple(s) for s in sections))


# --- TCP framing ---------------------------------------------------------


def tcp_frame(message: bytes) -> bytes:
    """A message as sent over TCP: its length in two bytes, then the message
    (RFC 1035 section 4.2.2, RFC 7766 section 8)."""
    if len(message) > MAX_MESSAGE:
        raise LocalProtocolError(f"a DNS message is at most {MAX_MESSAGE} bytes")
    return struct.pack("!H", len(message)) + message


class TCPFrameReader:
    """Splits a TCP byte stream into DNS messages. Holds at most one
    incomplete message (65,537 bytes)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The messages completed by ``data``, in order."""
        self._buffer += data
        out = []
        while len(self._buffer) >= 2:
            length = (self._buffer[0] << 8) | self._buffer[1]
            if len(self._buffer) < 2 + length:
                break
            out.append(bytes(self._buffer[2 : 2 + length]))
            del self._buffer[: 2 + length]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message held (nonzero at EOF: cut short)."""
        return len(self._buffer)


# --- answers -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """What one response says about one (name, type): ``rcode`` NOERROR
    with ``addresses`` (positive), NOERROR without (NODATA) or NXDOMAIN.
    ``canonical_name`` is the end of the CNAME chain; ``ttl`` is the
    smallest TTL along the chain for a positive answer, the negative TTL of
    RFC 2308 section 5 (the smaller of the SOA's TTL and its MINIMUM field)
    for a negative one, 0 (do not cache) when a negative answer has no SOA."""

    name: str
    type: int
    rcode: int
    addresses: tuple[IPAddress, ...]
    canonical_name: str
    ttl: int

    @property
    def nxdomain(self) -> bool:
        return self.rcode == Rcode.NXDOMAIN

    @property
    def nodata(self) -> bool:
        return self.rcode == Rcode.NOERROR and not self.addresses


def interpret(message: Message, question: Question) -> Answer:
    """Follow the CNAME chain of ``question`` through the answer section
    (RFC 1034 section 3.6.2; at most one CNAME per owner, loops stop the
    chain) and collect the addresses of the requested type at its end.
    Records that are not on the chain are ignored. Only NOERROR and NXDOMAIN
    make an answer: any other rcode raises :class:`DNSFormatError`."""
    if message.rcode not in (Rcode.NOERROR, Rcode.NXDOMAIN):
        raise DNSFormatError(f"rcode {message.rcode} carries no answer")
    current = _key(question.name)
    canonical = question.name[:-1] if question.name.endswith(".") else question.name
    ttl: int | None = None
    seen = {current}
    by_owner: dict[str, list[Record]] = {}
    for record in message.answers:
        if record.cls == question.cls:
            by_owner.setdefault(_key(record.name), []).append(record)
    addresses: list[IPAddress] = []
    while True:
        records = by_owner.get(current, ())
        found = [r for r in records if r.type == question.type and r.value is not None]
        if found:
            for r in found:
                if isinstance(r.value, ipaddress.IPv4Address | ipaddress.IPv6Address):
                    if r.value not in addresses:
                        addresses.append(r.value)
                    ttl = r.ttl if ttl is None else min(ttl, r.ttl)
            break
        alias = next((r for r in records if r.type == CNAME and isinstance(r.value, str)), None)
        if alias is None or question.type == CNAME:
            break
        assert isinstance(alias.value, str)
        ttl = alias.ttl if ttl is None else min(ttl, alias.ttl)
        target = _key(alias.value)
        canonical = alias.value
        if target in seen:
            break
        seen.add(target)
        current = target
    if addresses:
        return Answer(
            question.name, question.type, Rcode.NOERROR, tuple(addresses), canonical, ttl or 0
        )
    negative = 0
    for record in message.authorities:
        if record.type == SOA and isinstance(record.value, SOAData):
            negative = min(record.ttl, record.value.minimum)
            break
    return Answer(question.name, question.type, message.rcode, (), canonical, negative)


# --- the cache -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """An answer held until ``expires`` (a ``now`` value)."""

    answer: Answer
    expires: float

    def ttl_left(self, now: float) -> int:
        return max(0, int(self.expires - now))


class DNSCache:
    """Answers, positive and negative, for their TTL (RFC 1035 section
    3.2.1; RFC 2308 sections 5-6 for NXDOMAIN, kept for the name whatever
    the type, and NODATA, kept for the name and type). TTLs are capped at
    ``max_ttl`` and ``max_negative_ttl`` (RFC 2308 section 5 suggests 1 to 3
    hours); an answer with TTL 0 is used once and not kept. At most
    ``max_entries`` are held: storing one more evicts the least recently
    used. ``stats`` counts hits, misses, expired, evicted, stored and
    not_stored."""

    def __init__(
        self, max_entries: int = 1024, *, max_ttl: int = 86400, max_negative_ttl: int = 10800
    ) -> None:
        if max_entries < 1:
            raise LocalProtocolError("a DNS cache holds at least one entry")
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self.max_negative_ttl = max_negative_ttl
        self._entries: OrderedDict[tuple[str, int], CacheEntry] = OrderedDict()
        self.stats: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str, qtype: int, now: float) -> CacheEntry | None:
        """The live entry for (name, type), or the name's live NXDOMAIN."""
        key = _key(name)
        for k in ((key, qtype), (key, NXDOMAIN_KEY)):
            entry = self._entries.get(k)
            if entry is None:
                continue
            if entry.expires <= now:
                del self._entries[k]
                self.stats["expired"] += 1
                continue
            self._entries.move_to_end(k)
            self.stats["hits"] += 1
            return entry
        self.stats["misses"] += 1
        return None

    def put(self, answer: Answer, now: float) -> None:
        """Keep ``answer`` for its TTL (capped)."""
        negative = not answer.addresses
        ttl = min(answer.ttl, self.max_negative_ttl if negative else self.max_ttl)
        if ttl <= 0:
            self.stats["not_stored"] += 1
            return
        key = (_key(answer.name), NXDOMAIN_KEY if answer.nxdomain else answer.type)
        if answer.addresses:
            # a name that has an address of some type exists: forget its NXDOMAIN
            self._entries.pop((key[0], NXDOMAIN_KEY), None)
        self._entries[key] = CacheEntry(answer, now + ttl)
        self._entries.move_to_end(key)
        self.stats["stored"] += 1
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.stats["evicted"] += 1

    def clear(self) -> None:
        self._entries.clear()


# --- the resolver --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    """A query to send: a UDP datagram to ``server``, or (``tcp``) one
    framed message on a new TCP connection to it."""

    id: int
    server: Address
    data: bytes
    tcp: bool = False


@dataclass(frozen=True, slots=True)
class Resolved:
    """A lookup's result: the name that answered (after the search list),
    its canonical name, its addresses (the families in the order asked) and
    the smallest TTL among them."""

    name: str
    canonical_name: str
    addresses: tuple[IPAddress, ...]
    ttl: int


class _InterfaceDNS(Protocol):
    @property
    def dns(self) -> Sequence[IPAddress]: ...
    @property
    def dns_search(self) -> Sequence[str]: ...


def _server(entry: str | IPAddress | Address, port: int) -> Address:
    host, port = (entry[0], entry[1]) if isinstance(entry, tuple) else (entry, port)
    try:
        return (str(ipaddress.ip_address(host)), int(port))
    except ValueError:
        raise LocalProtocolError(f"DNS server {host!r} is not an IP address") from None


class Resolver:
    """What a stub resolver decides, configured as resolv.conf(5) would be:
    ``servers`` (addresses, or (address, port)), ``search`` domains,
    ``ndots`` (1), ``timeout`` seconds for each try (5) and ``attempts``
    rounds over the servers (2). ``random`` gives the query ids (two bytes
    each, RFC 5452 section 9.2). ``edns_payload`` offers EDNS (off, as glibc
    without ``options edns0``). ``stats`` counts what the lookups did
    (queries, tcp, truncated, timeouts, server_failures, mismatched,
    malformed, cache_hits, resolved, failed)."""

    def __init__(
        self,
        servers: Iterable[str | IPAddress | Address],
        search: Iterable[str] = (),
        *,
        ndots: int = 1,
        timeout: float = 5.0,
        attempts: int = 2,
        port: int = 53,
        random: Callable[[int], bytes] = os.urandom,
        cache: DNSCache | None = None,
        edns_payload: int | None = None,
    ) -> None:
        self.servers = tuple(_server(s, port) for s in servers)
        self.search = tuple(d[:-1] if d.endswith(".") else d for d in search if d.strip("."))
        for domain in self.search:
            encode_name(domain)
        if ndots < 0 or attempts < 1 or timeout <= 0:
            raise LocalProtocolError("ndots >= 0, attempts >= 1 and timeout > 0")
        self.ndots = min(ndots, 15)  # resolv.conf caps ndots at 15
        self.timeout = timeout
        self.attempts = attempts
        self.random = random
        self.cache = DNSCache() if cache is None else cache
        self.edns_payload = edns_payload
        self.stats: Counter[str] = Counter()

    @classmethod
    def from_config(cls, interface: _InterfaceDNS, **options: object) -> Resolver:
        """From a wg-quick ``[Interface]``'s ``DNS =`` values (its ``dns``
        servers and ``dns_search`` domains, as :mod:`wireguard.config`
        parses them)."""
        return cls(interface.dns, interface.dns_search, **options)  # type: ignore[arg-type]

    def candidates(self, name: str) -> list[str]:
        """The names to try for ``name``, in order, as glibc's ``res_search``
        tries them: a name with a trailing dot is absolute and tried alone;
        one with at least ``ndots`` dots is tried as is, then with each
        search domain; one with fewer, with each search domain, then as is."""
        encode_name(name)
        if name == ".":
            raise DNSNameError("'.' is the root, which has no address")
        if name.endswith("."):
            return [name[:-1]]
        with_search = [f"{name}.{domain}" for domain in self.search]
        order = [name, *with_search] if name.count(".") >= self.ndots else [*with_search, name]
        out: list[str] = []
        for candidate in order:
            try:
                encode_name(candidate)
            except DNSNameError:
                self.stats["names_too_long"] += 1
                continue
            if _key(candidate) not in (_key(c) for c in out):
                out.append(candidate)
        return out

    def new_id(self) -> int:
        return int.from_bytes(self.random(2), "big")

    def lookup(self, name: str, families: Sequence[int] = (A, AAAA)) -> Lookup:
        """A new lookup of ``name`` for the record types ``families`` (A
        and/or AAAA). An IP literal resolves to itself. Raises
        :class:`DNSNameError` for a name that cannot be asked for."""
        return Lookup(self, name, tuple(families))


@dataclass(slots=True)
class _Try:
    """One question being asked: its current server, round and transport."""

    qtype: int
    name: str
    question: Question
    id: int = 0
    server_index: int = 0
    round: int = 0
    tcp: bool = False
    no_edns: bool = False  # the server answered FORMERR without OPT: ask it without EDNS
    deadline: float = 0.0
    answer: Answer | None = None
    outcome: str | None = None  # "answer", "SERVFAIL", "timeout"
    failures: set[str] = field(default_factory=set)


class Lookup:
    """One name being resolved (see the module's docstring for the loop).
    Every method returns the queries to send now."""

    def __init__(self, resolver: Resolver, name: str, families: tuple[int, ...]) -> None:
        self.resolver = resolver
        self.name = name
        self.families = families
        self._result: Resolved | None = None
        self._error: ResolutionError | None = None
        self._tries: list[_Try] = []
        self._outcomes: list[str] = []  # per finished candidate: NXDOMAIN, NODATA, ...
        self._asked: list[Address] = []
        try:
            literal = ipaddress.ip_address(name.split("%", 1)[0])
        except ValueError:
            literal = None
        if literal is not None:
            self._result = Resolved(name, name, (literal,), 0)
            self._candidates: list[str] = []
            return
        for family in families:
            if family not in (A, AAAA):
                raise LocalProtocolError(f"record type {family} is not an address family")
        self._candidates = resolver.candidates(name)
        self._index = -1

    # --- state --------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._result is not None or self._error is not None

    def result(self) -> Resolved:
        """The addresses, or :class:`ResolutionError`."""
        if self._error is not None:
            raise self._error
        if self._result is None:
            raise LocalProtocolError("the lookup has not finished")
        return self._result

    @property
    def tried(self) -> list[str]:
        return self._candidates[: self._index + 1]

    def next_deadline(self) -> float | None:
        waiting = [t.deadline for t in self._tries if t.outcome is None]
        return min(waiting) if waiting and not self.done else None

    # --- inputs -------------------------------------------------------

    def start(self, now: float) -> list[Query]:
        """The first queries (none when the cache or a literal answers)."""
        if self.done:
            return []
        if not self.resolver.servers:
            self._fail("no servers")
            return []
        return self._next_candidate(now)

    def receive(
        self, data: bytes, server: Address, now: float, *, tcp: bool = False
    ) -> list[Query]:
        """A message from ``server``. One that answers none of our questions
        (wrong source, id or question: RFC 5452 section 9.1) is counted and
        ignored; a truncated UDP answer makes the same server be asked over
        TCP (RFC 7766 section 5); a FORMERR without an OPT record to a query
        with one makes the same server be asked without EDNS (RFC 6891
        section 7); SERVFAIL, REFUSED, NOTIMP and FORMERR otherwise move on to
        the next server, as glibc's ``res_send`` does."""
        stats = self.resolver.stats
        if self.done:
            stats["late"] += 1
            return []
        try:
            message = parse_message(data, header_only=True)
        except DNSFormatError:
            stats["malformed"] += 1
            return []
        current = self._find(message, server, tcp)
        if current is None:
            stats["mismatched"] += 1
            return []
        out: list[Query] = []
        rcode = message.rcode
        if message.truncated and not current.tcp:
            stats["truncated"] += 1
            current.tcp = True
            out.append(self._send(current, now))
            return out
        edns = self.resolver.edns_payload is not None and not current.no_edns
        if rcode == Rcode.FORMERR and edns:
            # RFC 6891 section 7: a server without EDNS says FORMERR and sends no
            # OPT record; ask it again without one (as glibc does).
            try:
                opt = any(r.type == OPT for r in parse_message(data).additionals)
            except DNSFormatError:
                opt = False
            if not opt:
                stats["edns_fallbacks"] += 1
                current.no_edns = True
                return [self._send(current, now)]
        if rcode in (Rcode.NOERROR, Rcode.NXDOMAIN):
            try:
                answer = interpret(parse_message(data), current.question)
            except DNSFormatError:
                stats["malformed"] += 1
                current.failures.add("malformed")
                return self._next_server(current, now)
            answer = Answer(
                current.name,
                current.qtype,
                answer.rcode,
                answer.addresses,
                answer.canonical_name,
                answer.ttl,
            )
            self.resolver.cache.put(answer, now)
            current.answer = answer
            current.outcome = "answer"
            return self._settle(now)
        stats["server_failures"] += 1
        current.failures.add("SERVFAIL")
        return self._next_server(current, now)

    def failed(self, query_id: int, now: float) -> list[Query]:
        """The query ``query_id`` could not be sent or its server is
        unreachable (TCP connection refused or reset, ICMP unreachable):
        the next server is asked at once. A report for a query not in
        flight (answered, moved on, or never sent) is counted as late."""
        for current in () if self.done else self._tries:
            if current.outcome is None and current.id == query_id:
                self.resolver.stats["send_failures"] += 1
                current.failures.add("timeout")
                return self._next_server(current, now)
        self.resolver.stats["late"] += 1
        return []

    def handle_timer(self, now: float) -> list[Query]:
        """Queries whose deadline has passed go to the next server."""
        out: list[Query] = []
        for current in list(self._tries):
            if current.outcome is None and current.deadline <= now and not self.done:
                self.resolver.stats["timeouts"] += 1
                current.failures.add("timeout")
                out += self._next_server(current, now)
        return out

    # --- internals ----------------------------------------------------

    def _find(self, message: Message, server: Address, tcp: bool) -> _Try | None:
        if not message.is_response or message.opcode != 0 or len(message.questions) != 1:
            return None
        servers = self.resolver.servers
        try:
            source = _server((server[0], server[1]), 53)
        except (LocalProtocolError, ValueError, IndexError, TypeError):
            return None
        for current in self._tries:
            if (
                current.outcome is None
                and current.id == message.id
                and current.tcp == tcp
                and servers[current.server_index] == source
                and message.questions[0].matches(current.question)
            ):
                return current
        return None

    def _send(self, current: _Try, now: float) -> Query:
        resolver = self.resolver
        ids = {t.id for t in self._tries if t is not current and t.outcome is None}
        qid = resolver.new_id()
        while qid in ids:
            qid = resolver.new_id()
        current.id = qid
        current.deadline = now + resolver.timeout
        server = resolver.servers[current.server_index]
        if server not in self._asked:
            self._asked.append(server)
        resolver.stats["queries"] += 1
        if current.tcp:
            resolver.stats["tcp"] += 1
        edns = None if current.no_edns else resolver.edns_payload
        data = build_query(current.name, current.qtype, qid, edns_payload=edns)
        return Query(qid, server, data, current.tcp)

    def _next_server(self, current: _Try, now: float) -> list[Query]:
        resolver = self.resolver
        current.tcp = current.no_edns = False
        current.server_index += 1
        if current.server_index >= len(resolver.servers):
            current.server_index = 0
            current.round += 1
        if current.round >= resolver.attempts:
            # every server failed: SERVFAIL if they all answered so, else
            # (one at least never answered) a timeout
            current.outcome = "timeout" if "timeout" in current.failures else "SERVFAIL"
            return self._settle(now)
        return [self._send(current, now)]

    def _next_candidate(self, now: float) -> list[Query]:
        resolver = self.resolver
        self._index += 1
        if self._index >= len(self._candidates):
            order = ("timeout", "NODATA", "SERVFAIL", "NXDOMAIN")
            reason = next((r for r in order if r in self._outcomes), "NXDOMAIN")
            self._fail(reason)
            return []
        name = self._candidates[self._index]
        self._tries = []
        out = []
        for family in self.families:
            current = _Try(family, name, Question(name, family))
            self._tries.append(current)
            entry = resolver.cache.get(name, family, now)
            if entry is not None:
                resolver.stats["cache_hits"] += 1
                a = entry.answer
                current.answer = Answer(
                    name,
                    family,
                    a.rcode,
                    a.addresses if a.type == family else (),
                    a.canonical_name,
                    entry.ttl_left(now),
                )
                current.outcome = "answer"
            else:
                out.append(self._send(current, now))
        if not out:
            return self._settle(now)
        return out

    def _settle(self, now: float) -> list[Query]:
        """When every family of the current name has an outcome: done if one
        has addresses; the next name if all say NXDOMAIN, NODATA or
        SERVFAIL (glibc goes on after those); failed on a timeout."""
        if any(t.outcome is None for t in self._tries):
            return []
        addresses: list[IPAddress] = []
        ttls = []
        canonical = None
        for t in self._tries:
            if t.answer is not None and t.answer.addresses:
                addresses += t.answer.addresses
                ttls.append(t.answer.ttl)
                canonical = canonical or t.answer.canonical_name
        name = self._candidates[self._index]
        if addresses:
            self.resolver.stats["resolved"] += 1
            self._result = Resolved(name, canonical or name, tuple(addresses), min(ttls))
            return []
        outcomes = []
        for t in self._tries:
            if t.answer is not None:
                outcomes.append("NXDOMAIN" if t.answer.nxdomain else "NODATA")
            else:
                outcomes.append(t.outcome or "SERVFAIL")
        if "timeout" in outcomes and "NXDOMAIN" not in outcomes:
            self._outcomes.append("timeout")
            self._fail("timeout")
            return []
        if "NXDOMAIN" in outcomes:  # no such name: no type can have an address
            self._outcomes.append("NXDOMAIN")
        elif "NODATA" in outcomes:
            self._outcomes.append("NODATA")
        elif "SERVFAIL" in outcomes:
            self._outcomes.append("SERVFAIL")
        return self._next_candidate(now)

    def _fail(self, reason: str) -> None:
        self.resolver.stats["failed"] += 1
        self._error = ResolutionError(
            self.name,
            reason,
            self._candidates[: self._index + 1] if self._candidates else [],
            self._asked or list(self.resolver.servers),
        )
