"""Scripted misbehaviour, for testing other WireGuard implementations.

A :class:`Policy` sits between an endpoint and the network and, per message
type and direction, drops, duplicates, delays, reorders, replays an earlier
message, corrupts a chosen field, or forges an initiation with a stale
timestamp. It is a list of :class:`Rule`, each naming which messages it takes
(the *n*-th to the *m*-th initiation we send, say) and what it does to them::

    from wireguard.misbehaviour import Corrupt, Policy, Replay, Rule

    policy = Policy([
        Rule("initiation", Corrupt("mac1"), count=1),      # the first one only
        Rule("data", Replay(), first=3, count=1),          # send the 2nd again after the 3rd
    ])

Like the rest of the package the policy is sans-I/O: :meth:`Policy.outgoing`
and :meth:`Policy.incoming` take a datagram and ``now`` and return the
datagrams to put through, each with the time it is due; held messages come out
of :meth:`Policy.poll` at :meth:`Policy.next_deadline`. The asyncio binding is
:func:`wireguard.io.tap.attach`, which also writes pcap captures and key logs.

Fields and MACs. mac1 covers every byte before it, so flipping a bit in the
timestamp or the reserved bytes would also make mac1 wrong, and the receiver
would drop the message for its mac1 without ever looking at the field under
test. :class:`Corrupt` therefore recomputes mac1 (and mac2, from the cookie
the endpoint holds) after changing a field that lies before them, when it
knows the receiver's public key: for what we send, from the :class:`Device`
the policy is bound to; for what we receive, our own key. ``remac=False``
turns that off. Corrupting ``mac1`` or ``mac2`` never recomputes anything.

A stale timestamp cannot be written into an initiation after the fact (it is
encrypted under keys derived inside the handshake), so :class:`StaleTimestamp`
asks the device for a new initiation instead: the device computes TAI64N as
``now + wall_clock_offset``, and for that one initiation the offset is moved
back by ``age`` seconds. Everything else about the message (ephemeral key,
static, macs) is genuine, so a receiver that rejects it rejects it for the
timestamp alone (whitepaper 5.1: the timestamp must grow per peer).
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .address import Address
from .constants import (
    COOKIE_REPLY_LEN,
    INITIATION_LEN,
    MAC_LEN,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT_DATA,
    RESPONSE_LEN,
    TRANSPORT_MIN_LEN,
)
from .cookie import mac1_key
from .crypto import mac

if TYPE_CHECKING:
    from .device import Device, Effects
    from .keys import PublicKey

Direction = Literal["out", "in"]

KINDS = ("initiation", "response", "cookie_reply", "transport", "keepalive", "data", "any")
"""What a rule can select: the four message types; ``keepalive`` (transport
data with an empty payload) and ``data`` (transport data with a packet) are
the two halves of ``transport``; ``any`` is every datagram."""

# Byte ranges of each field (Python slices; negative counts from the end).
FIELDS: dict[str, dict[str, tuple[int, int | None]]] = {
    "initiation": {
        "type": (0, 1),
        "reserved": (1, 4),
        "sender": (4, 8),
        "ephemeral": (8, 40),
        "static": (40, 88),
        "timestamp": (88, 116),  # encrypted TAI64N and its tag
        "tag": (100, 116),  # the timestamp's AEAD tag
        "mac1": (116, 132),
        "mac2": (132, 148),
    },
    "response": {
        "type": (0, 1),
        "reserved": (1, 4),
        "sender": (4, 8),
        "receiver": (8, 12),
        "ephemeral": (12, 44),
        "empty": (44, 60),
        "tag": (44, 60),  # the empty payload is its tag alone
        "mac1": (60, 76),
        "mac2": (76, 92),
    },
    "cookie_reply": {
        "type": (0, 1),
        "reserved": (1, 4),
        "receiver": (4, 8),
        "nonce": (8, 32),
        "cookie": (32, 64),
        "tag": (48, 64),
    },
    "transport": {
        "type": (0, 1),
        "reserved": (1, 4),
        "receiver": (4, 8),
        "counter": (8, 16),
        "packet": (16, -16),
        "tag": (-16, None),
    },
}

_MAC1_END = {"initiation": INITIATION_LEN - MAC_LEN, "response": RESPONSE_LEN - MAC_LEN}
# A message of each kind as long as it can be, for checking a field exists
# and is not empty (a keepalive is a transport message with no packet).
_LONGEST = {
    "initiation": INITIATION_LEN,
    "response": RESPONSE_LEN,
    "cookie_reply": COOKIE_REPLY_LEN,
    "transport": 1 << 16,
    "data": 1 << 16,
    "keepalive": TRANSPORT_MIN_LEN,
}
_u32 = struct.Struct("<I").unpack_from

#: What a :class:`Policy` keeps of each kind of message, and of its log: a
#: run of `misbehave` lasts until it is stopped, and every datagram passes.
HISTORY_KEEP = 1000


def classify(data: bytes) -> str | None:
    """``initiation``, ``response``, ``cookie_reply``, ``transport``, or None
    for a datagram that is none of them (by type word and size)."""
    if len(data) < 4:
        return None
    kind = _u32(data)[0] & 0xFF
    n = len(data)
    if kind == MESSAGE_INITIATION and n == INITIATION_LEN:
        return "initiation"
    if kind == MESSAGE_RESPONSE and n == RESPONSE_LEN:
        return "response"
    if kind == MESSAGE_COOKIE_REPLY and n == COOKIE_REPLY_LEN:
        return "cookie_reply"
    if kind == MESSAGE_TRANSPORT_DATA and n >= TRANSPORT_MIN_LEN:
        return "transport"
    return None


def _selects(selector: str, kind: str | None, data: bytes) -> bool:
    if selector == "any":
        return True
    if selector == kind:
        return True
    if kind == "transport":
        if selector == "keepalive":
            return len(data) == TRANSPORT_MIN_LEN
        if selector == "data":
            return len(data) > TRANSPORT_MIN_LEN
    return False


def field_range(kind: str, name: str, length: int) -> tuple[int, int]:
    """The ``(start, end)`` byte offsets of field *name* in a message of
    *kind* (``keepalive`` and ``data`` are transport data) and *length*."""
    table = FIELDS["transport" if kind in ("keepalive", "data") else kind]
    if name not in table:
        raise ValueError(f"a {kind} has no field {name!r} (fields: {', '.join(table)})")
    start, end = table[name]
    s, e, _ = slice(start, end).indices(length)
    return s, e


# --- actions ----------------------------------------------------------------------


@dataclass(frozen=True)
class Drop:
    """The message never goes through."""

    def __str__(self) -> str:
        return "drop"


@dataclass(frozen=True)
class Duplicate:
    """Send *copies* more copies, each *gap* seconds after the one before."""

    copies: int = 1
    gap: float = 0.0

    def __post_init__(self) -> None:
        if self.copies < 1:
            raise ValueError(f"duplicate sends 1 or more copies, not {self.copies}")
        _not_negative("the gap between copies", self.gap)

    def __str__(self) -> str:
        return f"duplicate x{self.copies}" + (f" every {self.gap}s" if self.gap else "")


@dataclass(frozen=True)
class Delay:
    """Let the message through *seconds* later."""

    seconds: float

    def __post_init__(self) -> None:
        _not_negative("a delay", self.seconds)

    def __str__(self) -> str:
        return f"delay {self.seconds}s"


@dataclass(frozen=True)
class Reorder:
    """Hold the message until the next datagram in the same direction has
    gone through, so the two arrive swapped; released after *max_hold*
    seconds if nothing else comes."""

    max_hold: float = 1.0

    def __post_init__(self) -> None:
        _not_negative("max_hold", self.max_hold)

    def __str__(self) -> str:
        return "reorder (held for the next datagram)"


@dataclass(frozen=True)
class Replay:
    """Besides this message (or *instead* of it), send again an earlier one
    that went the same way: of *kind* (default: the kind this rule matched),
    the *index*-th of the ones seen before (``-1``: the latest; ``0``: the
    first), *delay* seconds later. Earlier messages are kept as the endpoint
    made them, before any corruption."""

    kind: str | None = None
    index: int = -1
    delay: float = 0.0
    instead: bool = False

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"unknown message kind {self.kind!r} (one of {', '.join(KINDS)})")
        _not_negative("a replay's delay", self.delay)

    def __str__(self) -> str:
        which = {-1: "the latest", 0: "the first"}.get(self.index, f"#{self.index} of the")
        what = f"{which} earlier {self.kind or 'message of this kind'}"
        return f"replay {what}" + (" instead" if self.instead else "")


@dataclass(frozen=True)
class Corrupt:
    """Change field *name* (see :data:`FIELDS`): XOR its first byte with
    *xor*, or overwrite its start with *value*. *remac* (default: when the
    field lies before mac1 of a handshake message) recomputes the MACs so
    that only the field is wrong."""

    name: str
    xor: int = 0x01
    value: bytes | None = None
    remac: bool | None = None

    def __post_init__(self) -> None:
        if not any(self.name in table for table in FIELDS.values()):
            raise ValueError(f"no message has a field {self.name!r}")
        if self.value is None and not 0 < self.xor < 256:
            raise ValueError(f"xor is a byte from 1 to 255, not {self.xor}")
        if self.value is not None and not self.value:
            raise ValueError("an empty value changes nothing")

    def __str__(self) -> str:
        how = f"= {self.value.hex()}" if self.value is not None else f"^ {self.xor:#04x}"
        return f"corrupt {self.name} {how}"


@dataclass(frozen=True)
class StaleTimestamp:
    """Replace an initiation we send by one whose TAI64N timestamp is *age*
    seconds in the past (a genuine message otherwise); outgoing initiations
    only, and the policy must be bound to the device."""

    age: float = 3600.0

    def __post_init__(self) -> None:
        if not self.age > 0:
            raise ValueError(f"a stale timestamp is in the past: age > 0, not {self.age}")

    def __str__(self) -> str:
        return f"stale timestamp (-{self.age:g}s)"


def _not_negative(what: str, seconds: float) -> None:
    if not seconds >= 0:  # NaN too
        raise ValueError(f"{what} is 0 or more seconds, not {seconds}")


Action = Drop | Duplicate | Delay | Reorder | Replay | Corrupt | StaleTimestamp


@dataclass
class Rule:
    """Apply *action* to the *first*-th through ``first + count - 1``-th
    datagrams of *kind* going in *direction* (``count=None``: all from
    *first* on), and only those for which *when* (if given) is true."""

    kind: str
    action: Action
    direction: Direction = "out"
    first: int = 1
    count: int | None = None
    when: Callable[[bytes], bool] | None = None
    seen: int = field(default=0, init=False)
    applied: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown message kind {self.kind!r} (one of {', '.join(KINDS)})")
        if self.direction not in ("out", "in"):
            raise ValueError("direction is 'out' (what we send) or 'in' (what we receive)")
        if self.first < 1:
            raise ValueError("first counts from 1")
        if self.count is not None and self.count < 1:
            raise ValueError(f"count is 1 or more (None: no end), not {self.count}")
        if isinstance(self.action, Corrupt) and self.kind != "any":
            name = self.action.name
            start, end = field_range(self.kind, name, _LONGEST[self.kind])  # the field exists
            if start == end:
                raise ValueError(f"a {self.kind}'s {name} is empty: nothing to corrupt")
            if self.action.remac and self.kind not in _MAC1_END:
                raise ValueError(f"remac: a {self.kind} has no MACs to recompute")
            if self.action.remac and end > _MAC1_END[self.kind] - MAC_LEN:
                raise ValueError(f"remac: corrupting {name} never recomputes the MACs")
        if isinstance(self.action, StaleTimestamp) and (
            self.kind != "initiation" or self.direction != "out"
        ):
            raise ValueError("a stale timestamp is forged on initiations we send")

    def takes(self, direction: str, kind: str | None, data: bytes) -> bool:
        if direction != self.direction or not _selects(self.kind, kind, data):
            return False
        if self.when is not None and not self.when(data):
            return False
        self.seen += 1
        last = None if self.count is None else self.first + self.count - 1
        return self.seen >= self.first and (last is None or self.seen <= last)

    def __str__(self) -> str:
        span = f"#{self.first}" + (
            ""
            if self.count == 1
            else f"..{'' if self.count is None else self.first + self.count - 1}"
        )
        return f"{self.direction} {self.kind} {span}: {self.action}"


@dataclass(frozen=True)
class Send:
    """A datagram to let through at time *at* (to *address*, for outgoing;
    from *address*, for incoming)."""

    at: float
    data: bytes
    address: Address
    note: str = ""


@dataclass(frozen=True)
class LogEntry:
    now: float
    direction: Direction
    kind: str | None
    rule: str
    note: str


class Policy:
    """Rules applied to the datagrams of one endpoint (sans-I/O).

    Bind it to the endpoint's :class:`Device` (:meth:`bind`; the binding does
    it) for what needs the endpoint's keys: recomputing MACs, forging stale
    timestamps."""

    def __init__(self, rules: Iterable[Rule] = (), *, keep: int = HISTORY_KEEP) -> None:
        if keep < 1:
            raise ValueError(f"keep is 1 or more, not {keep}")
        self.rules = list(rules)
        self.device: Device | None = None
        self.keep = keep
        # What was done, the latest *keep* entries at least (trimmed in steps
        # of *keep*); log_forgotten counts the older ones.
        self.log: list[LogEntry] = []
        self.log_forgotten = 0
        # Per (direction, kind): the first message and the latest *keep*;
        # forgotten counts the ones between.
        self.history: dict[tuple[str, str], list[tuple[bytes, Address]]] = {}
        self.forgotten: Counter[tuple[str, str]] = Counter()
        self._held: list[tuple[float, Direction, Send]] = []

    def bind(self, device: Device) -> Policy:
        self.device = device
        return self

    def reset(self) -> Policy:
        """Forget what was seen and done: the rules count from their first
        message again, and the log, history and held datagrams are emptied
        (a policy reused for a new endpoint, or a new test)."""
        for rule in self.rules:
            rule.seen = rule.applied = 0
        self.log.clear()
        self.log_forgotten = 0
        self.history.clear()
        self.forgotten.clear()
        self._held.clear()
        return self

    # what the binding calls

    def outgoing(self, data: bytes, address: Address, now: float) -> list[Send]:
        """What to send, and when, for a datagram the endpoint sends."""
        return self._process("out", data, address, now)

    def incoming(self, data: bytes, address: Address, now: float) -> list[Send]:
        """What to hand to the endpoint, and when, for a datagram received."""
        return self._process("in", data, address, now)

    def next_deadline(self) -> float | None:
        return min((t for t, _, _ in self._held), default=None)

    def poll(self, now: float) -> list[tuple[Direction, Send]]:
        """Held datagrams whose time has come (:class:`Reorder` gave up
        waiting for a datagram to swap with)."""
        due = [(d, s) for t, d, s in self._held if t <= now]
        self._held = [h for h in self._held if h[0] > now]
        return [(d, Send(now, s.data, s.address, s.note)) for d, s in due]

    # the pipeline

    def _record(self, direction: str, kind: str | None, data: bytes, address: Address) -> None:
        if kind is None:
            return
        self._remember((direction, kind), (data, address))
        if kind == "transport":
            half = "keepalive" if len(data) == TRANSPORT_MIN_LEN else "data"
            self._remember((direction, half), (data, address))

    def _remember(self, key: tuple[str, str], item: tuple[bytes, Address]) -> None:
        kept = self.history.setdefault(key, [])
        kept.append(item)
        if len(kept) > self.keep + 1:  # the first stays: Replay(index=0)
            del kept[1]
            self.forgotten[key] += 1

    def _process(
        self, direction: Direction, data: bytes, address: Address, now: float
    ) -> list[Send]:
        kind = classify(data)
        pending = [Send(now, data, address)]
        released: list[Send] = []
        # A datagram passing releases what Reorder held in this direction.
        keep = []
        for t, d, s in self._held:
            if d == direction:
                released.append(Send(now, s.data, s.address, s.note))
            else:
                keep.append((t, d, s))
        self._held = keep
        for rule in self.rules:
            if not rule.takes(direction, kind, data):
                continue
            rule.applied += 1
            pending = self._apply(rule, direction, kind, pending, now)
        self._record(direction, kind, data, address)
        return pending + released

    def _note(
        self, rule: Rule, direction: Direction, kind: str | None, now: float, note: str
    ) -> None:
        log = self.log
        log.append(LogEntry(now, direction, kind, str(rule), note))
        if len(log) > 2 * self.keep:
            del log[: self.keep]
            self.log_forgotten += self.keep

    def _apply(
        self, rule: Rule, direction: Direction, kind: str | None, pending: list[Send], now: float
    ) -> list[Send]:
        action = rule.action
        note = str(action)
        if isinstance(action, Drop):
            self._note(rule, direction, kind, now, note)
            return []
        if isinstance(action, Duplicate):
            out = []
            for s in pending:
                out.append(s)
                out += [
                    Send(s.at + action.gap * (i + 1), s.data, s.address, "duplicate")
                    for i in range(action.copies)
                ]
            self._note(rule, direction, kind, now, note)
            return out
        if isinstance(action, Delay):
            self._note(rule, direction, kind, now, note)
            return [Send(s.at + action.seconds, s.data, s.address, s.note) for s in pending]
        if isinstance(action, Reorder):
            for s in pending:
                self._held.append((now + action.max_hold, direction, s))
            self._note(rule, direction, kind, now, note)
            return []
        if isinstance(action, Replay):
            which = action.kind or rule.kind
            if which == "any":
                which = kind or "any"
            earlier = self.history.get((direction, which), [])
            try:
                old, old_address = earlier[action.index]
            except IndexError:
                self._note(rule, direction, kind, now, f"replay: no earlier {which}")
                return pending
            replayed = Send(now + action.delay, old, old_address, f"replayed {which}")
            self._note(rule, direction, kind, now, note)
            return [replayed] if action.instead else [*pending, replayed]
        if isinstance(action, Corrupt):
            if kind is None or action.name not in FIELDS[kind]:  # a rule for "any"
                self._note(rule, direction, kind, now, f"corrupt: no field {action.name} here")
                return pending
            out = [
                Send(s.at, self._corrupt(direction, s.data, action, now), s.address, note)
                for s in pending
            ]
            self._note(rule, direction, kind, now, note)
            return out
        if isinstance(action, StaleTimestamp):
            out = []
            for s in pending:
                forged = self._forge_stale(s.data, action.age, now)
                out += [Send(s.at, d, a, note) for d, a in forged]
            self._note(rule, direction, kind, now, note)
            return out
        raise TypeError(f"not an action: {action!r}")  # pragma: no cover

    def _corrupt(self, direction: str, data: bytes, action: Corrupt, now: float) -> bytes:
        kind = classify(data)
        if kind is None:
            return data
        start, end = field_range(kind, action.name, len(data))
        out = bytearray(data)
        if action.value is not None:
            value = action.value[: end - start]
            out[start : start + len(value)] = value
        elif end > start:
            out[start] ^= action.xor
        # The MACs are recomputed over a change before them (unless
        # remac=False), never over mac1 or mac2 themselves: that would undo
        # the corruption.
        if action.remac is not False and kind in _MAC1_END and end <= _MAC1_END[kind] - MAC_LEN:
            return self._remac(direction, kind, bytes(data), bytes(out), now)
        return bytes(out)

    def _remac(
        self, direction: str, kind: str, original: bytes, changed: bytes, now: float
    ) -> bytes:
        """mac1 (and mac2 when the original had one) over *changed*, keyed
        for the message's receiver. Without the keys, *changed* as it is."""
        device = self.device
        if device is None:
            return changed
        if direction == "out":
            peer = device.peer_for_index(_u32(original, 4)[0])
            if peer is None:
                return changed
            # The peer's CookieGenerator computes both macs as the device
            # would have, mac2 from the cookie it holds.
            return peer.cookies.add_macs(changed, now)
        # Received: mac1 is keyed by our own public key. mac2 (a cookie only
        # we could check) is left as it came.
        end1 = len(changed) - 2 * MAC_LEN
        body = changed[:end1]
        return body + mac(mac1_key(device.public_key.raw), body) + changed[end1 + MAC_LEN :]

    def _forge_stale(self, data: bytes, age: float, now: float) -> list[tuple[bytes, Address]]:
        device = self.device
        if device is None:
            raise RuntimeError("StaleTimestamp needs the policy bound to the device (Policy.bind)")
        peer = device.peer_for_index(_u32(data, 4)[0])
        if peer is None:
            return []
        effects = forge_initiation(device, peer.public_key, now, clock_offset=-age)
        return [(d, a) for d, a in effects.datagrams if classify(d) == "initiation"]

    def describe(self) -> str:
        return "\n".join(str(r) for r in self.rules)


def forge_initiation(
    device: Device, public_key: PublicKey, now: float, *, clock_offset: float
) -> Effects:
    """A new initiation to peer *public_key*, now, as the device would make
    it with its wall clock moved by *clock_offset* seconds (negative: in the
    past). It replaces any initiation of ours still waiting for its response
    and ignores the once-per-REKEY_TIMEOUT limit, as a forger would."""
    peer = device.peers[public_key]
    saved_offset, saved_last = device.wall_clock_offset, peer.last_sent_handshake
    device.wall_clock_offset = saved_offset + clock_offset
    peer.last_sent_handshake = None
    try:
        effects = device.initiate_handshake(public_key, now)
    finally:
        device.wall_clock_offset = saved_offset
        if peer.last_sent_handshake is None:
            peer.last_sent_handshake = saved_last
    return effects


# --- rules as text, for the command line ---------------------------------------------


def parse_rule(text: str) -> Rule:
    """A rule from ``[in|out:]KIND:ACTION[:ARG][@FIRST[+COUNT|+]]``, e.g.
    ``initiation:corrupt:mac1@1``, ``in:data:drop``, ``data:delay:0.5@2+3``,
    ``data:replay@3``, ``initiation:stale:3600``, ``transport:duplicate:2@1+``.
    ``@N`` alone is the N-th message only; ``@N+`` every one from the N-th;
    no ``@``: every message of that kind."""
    spec, _, span = text.partition("@")
    parts = spec.split(":")
    direction: Direction = "out"
    if parts and parts[0] in ("in", "out"):
        direction = "in" if parts.pop(0) == "in" else "out"
    if len(parts) < 2:
        raise ValueError(f"rule {text!r}: expected KIND:ACTION[:ARG]")
    kind, verb, args = parts[0], parts[1], parts[2:]
    arg = args[0] if args else None
    action: Action
    try:
        if len(args) > 1 or (arg is not None and verb in ("drop", "reorder")):
            raise ValueError(
                f"{verb} takes {'no' if verb in ('drop', 'reorder') else 'one'}"
                f" argument, not {':'.join(args)!r}"
            )
        if verb == "drop":
            action = Drop()
        elif verb == "duplicate":
            action = Duplicate(int(arg) if arg else 1)
        elif verb == "delay":
            action = Delay(float(arg or 1.0))
        elif verb == "reorder":
            action = Reorder()
        elif verb == "replay":
            action = Replay(kind=arg) if arg else Replay()
        elif verb == "corrupt":
            if not arg:
                raise ValueError("corrupt needs a field, e.g. corrupt:mac1")
            action = Corrupt(arg)
        elif verb in ("stale", "stale-timestamp"):
            action = StaleTimestamp(float(arg or 3600.0))
        else:
            raise ValueError(f"unknown action {verb!r}")
        first, count = 1, None
        if span:
            head, plus, tail = span.partition("+")
            first = int(head)
            count = (int(tail) if tail else None) if plus else 1
        return Rule(kind, action, direction, first, count)
    except ValueError as exc:
        raise ValueError(f"rule {text!r}: {exc}") from None


# --- the command line: `python -m wireguard misbehave` ------------------------------


__all__ = [
    "FIELDS",
    "HISTORY_KEEP",
    "KINDS",
    "Action",
    "Corrupt",
    "Delay",
    "Drop",
    "Duplicate",
    "LogEntry",
    "Policy",
    "Reorder",
    "Replay",
    "Rule",
    "Send",
    "StaleTimestamp",
    "classify",
    "field_range",
    "forge_initiation",
    "parse_rule",
]
