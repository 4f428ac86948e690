"""wireguard.misbehaviour: scripted misbehaviour, checked against our own Device
(sans-I/O, fake clock). The kernel's reactions are in tests/interop/test_kernel.py."""

from __future__ import annotations

import argparse
import heapq
import struct

import pytest

from tests.sim import ipv4_packet
from wireguard.cli.misbehave import add_parser
from wireguard.device import Device
from wireguard.device import Drop as DropReason
from wireguard.keys import PrivateKey
from wireguard.misbehaviour import (
    FIELDS,
    Corrupt,
    Delay,
    Drop,
    Duplicate,
    Policy,
    Reorder,
    Replay,
    Rule,
    StaleTimestamp,
    classify,
    field_range,
    parse_rule,
)

A_ADDR, B_ADDR = ("192.0.2.1", 1000), ("192.0.2.2", 2000)


class Pair:
    """Device A (with the policy) and device B, joined by a perfect wire."""

    def __init__(self, policy: Policy, *, wall_clock: float = 1_700_000_000.0) -> None:
        self.now = 100.0
        self.a = Device(PrivateKey.generate(), wall_clock_offset=wall_clock)
        self.b = Device(PrivateKey.generate(), wall_clock_offset=wall_clock)
        self.a.add_peer(self.b.public_key, allowed_ips=["10.0.0.2/32"], endpoint=B_ADDR)
        self.b.add_peer(self.a.public_key, allowed_ips=["10.0.0.1/32"], endpoint=A_ADDR)
        self.policy = policy.bind(self.a)
        self.queue: list[tuple[float, int, str, bytes]] = []
        self.seq = 0
        self.at_b: list[bytes] = []  # datagrams that reached B
        self.delivered_b: list[bytes] = []
        self.delivered_a: list[bytes] = []

    def _push(self, at: float, to: str, data: bytes) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (at, self.seq, to, data))

    def from_a(self, effects) -> None:  # type: ignore[no-untyped-def]
        for data, _ in effects.datagrams:
            for send in self.policy.outgoing(data, B_ADDR, self.now):
                self._push(send.at, "b", send.data)
        self.delivered_a += effects.packets

    def from_b(self, effects) -> None:  # type: ignore[no-untyped-def]
        for data, _ in effects.datagrams:
            for send in self.policy.incoming(data, B_ADDR, self.now):
                self._push(send.at, "a", send.data)
        self.delivered_b += effects.packets

    def run(self, seconds: float = 0.5) -> None:
        end = self.now + seconds
        while True:
            deadline = self.policy.next_deadline()
            if self.queue and (deadline is None or self.queue[0][0] <= deadline):
                at = self.queue[0][0]
            else:
                at = deadline
            if at is None or at > end:
                break
            self.now = max(self.now, at)
            if self.queue and self.queue[0][0] <= self.now:
                _, _, to, data = heapq.heappop(self.queue)
                if to == "b":
                    self.at_b.append(data)
                    self.from_b(self.b.receive_datagram(data, A_ADDR, self.now))
                else:
                    self.from_a(self.a.receive_datagram(data, B_ADDR, self.now))
            for direction, send in self.policy.poll(self.now):
                self._push(send.at, "b" if direction == "out" else "a", send.data)
        self.now = end

    def ping(self, n: int) -> bytes:
        packet = ipv4_packet("10.0.0.1", "10.0.0.2", n.to_bytes(8, "big"))
        self.from_a(self.a.send_packet(packet, self.now))
        self.run()
        return packet

    def rehandshake(self) -> None:
        peer = self.a.peers[self.b.public_key]
        peer.last_sent_handshake = None
        self.from_a(self.a.initiate_handshake(self.b.public_key, self.now))
        self.run()

    def handshakes(self) -> int:
        return len(self.policy.history.get(("in", "response"), []))


# --- the message table ------------------------------------------------------------------


def test_classify_and_fields() -> None:
    pair = Pair(Policy())
    pair.ping(1)
    kinds = [classify(d) for d in pair.at_b]
    assert kinds == ["initiation", "transport"]  # the staged packet confirms the session
    assert classify(b"\x05\0\0\0") is None and classify(b"\x01") is None
    assert field_range("initiation", "mac1", 148) == (116, 132)
    assert field_range("data", "tag", 96) == (80, 96)
    assert field_range("keepalive", "counter", 32) == (8, 16)
    with pytest.raises(ValueError, match="has no field 'counter'"):
        field_range("initiation", "counter", 148)
    # The table matches the message sizes it describes.
    assert FIELDS["initiation"]["mac2"][1] == 148 and FIELDS["response"]["mac2"][1] == 92


def test_no_rules_is_a_perfect_wire() -> None:
    pair = Pair(Policy())
    packets = [pair.ping(n) for n in range(3)]
    assert pair.delivered_b == packets
    assert pair.b.drops == {}
    assert pair.policy.log == []


# --- handshake messages ----------------------------------------------------------------


def test_corrupt_mac1_is_dropped_and_the_next_initiation_works() -> None:
    pair = Pair(Policy([Rule("initiation", Corrupt("mac1"), count=1)]))
    pair.ping(1)
    assert pair.b.drops == {DropReason.INVALID_MAC1: 1}
    assert pair.handshakes() == 0
    pair.rehandshake()
    assert pair.handshakes() == 1
    assert [e.note for e in pair.policy.log] == ["corrupt mac1 ^ 0x01"]


@pytest.mark.parametrize(
    ("field", "remac", "reason"),
    [
        ("timestamp", None, DropReason.HANDSHAKE_INVALID),  # macs recomputed: the AEAD fails
        ("timestamp", False, DropReason.INVALID_MAC1),  # left alone, mac1 gives it away
        ("static", None, DropReason.HANDSHAKE_INVALID),
        ("tag", None, DropReason.HANDSHAKE_INVALID),
        ("reserved", None, DropReason.MALFORMED),
        ("sender", None, None),  # B accepts any index, answers to one A never gave out
    ],
)
def test_corrupt_initiation_field(field: str, remac: bool | None, reason) -> None:  # type: ignore[no-untyped-def]
    pair = Pair(Policy([Rule("initiation", Corrupt(field, remac=remac), count=1)]))
    pair.ping(1)
    if reason is None:
        assert pair.b.drops == {}
        assert pair.a.drops == {DropReason.UNKNOWN_INDEX: 1}
    else:
        assert pair.b.drops == {reason: 1}
        assert pair.handshakes() == 0


def test_corrupt_mac2_passes_when_not_under_load() -> None:
    # Like the kernel, mac2 is only looked at under load.
    pair = Pair(Policy([Rule("initiation", Corrupt("mac2"), count=1)]))
    pair.ping(1)
    assert pair.handshakes() == 1 and pair.b.drops == {}


def test_corrupt_remac_keeps_a_cookie_mac2() -> None:
    pair = Pair(Policy([Rule("initiation", Corrupt("timestamp"), count=1)]))
    peer = pair.a.peers[pair.b.public_key]
    peer.cookies._cookie = b"c" * 16  # as if a cookie reply had come
    peer.cookies._cookie_birth = pair.now
    pair.ping(1)
    sent = pair.at_b[0]
    assert sent[132:148] != bytes(16)  # mac2 recomputed with the cookie
    assert pair.b.drops == {DropReason.HANDSHAKE_INVALID: 1}


def test_corrupt_response_field_incoming_is_remaced_with_our_key() -> None:
    pair = Pair(Policy([Rule("response", Corrupt("empty"), direction="in", count=1)]))
    pair.ping(1)
    assert pair.a.drops == {DropReason.HANDSHAKE_INVALID: 1}


def test_stale_timestamp_is_rejected_and_a_fresh_one_is_not() -> None:
    pair = Pair(Policy([Rule("initiation", StaleTimestamp(age=10), first=2, count=1)]))
    pair.ping(1)
    assert pair.handshakes() == 1
    pair.now += 1
    pair.rehandshake()
    assert pair.b.drops == {DropReason.REPLAYED_TIMESTAMP: 1}
    assert pair.handshakes() == 1
    # The forged initiation replaced ours and the device's clock is restored.
    assert pair.a.wall_clock_offset == 1_700_000_000.0
    pair.now += 1
    pair.rehandshake()
    assert pair.handshakes() == 2


def test_stale_timestamp_needs_a_bound_policy() -> None:
    policy = Policy([Rule("initiation", StaleTimestamp())])
    pair = Pair(Policy())
    pair.from_a(pair.a.initiate_handshake(pair.b.public_key, pair.now))
    with pytest.raises(RuntimeError, match="bound"):
        policy.outgoing(pair.queue[0][3], B_ADDR, pair.now)
    with pytest.raises(ValueError, match="initiations we send"):
        Rule("response", StaleTimestamp())


def test_replayed_initiation_is_rejected() -> None:
    pair = Pair(Policy([Rule("data", Replay(kind="initiation", index=0), first=2, count=1)]))
    pair.ping(1)
    pair.ping(2)
    assert pair.b.drops == {DropReason.REPLAYED_TIMESTAMP: 1}
    assert pair.handshakes() == 1


# --- transport data --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "reason", "delivered"),
    [
        (Replay(), DropReason.REPLAYED_COUNTER, [1, 2]),  # packet 1 again after 2
        (Duplicate(), DropReason.REPLAYED_COUNTER, [1, 2]),
        (Corrupt("counter"), DropReason.DECRYPTION_FAILED, [1]),
        (Corrupt("tag"), DropReason.DECRYPTION_FAILED, [1]),
        (Corrupt("packet"), DropReason.DECRYPTION_FAILED, [1]),
        (Corrupt("receiver"), DropReason.UNKNOWN_INDEX, [1]),
        (Corrupt("reserved"), DropReason.MALFORMED, [1]),
        (Drop(), None, [1]),
    ],
)
def test_transport_actions(action, reason, delivered) -> None:  # type: ignore[no-untyped-def]
    pair = Pair(Policy([Rule("data", action, first=2, count=1)]))
    packets = [pair.ping(1), pair.ping(2)]
    assert pair.delivered_b == [packets[n - 1] for n in delivered]
    assert pair.b.drops == ({reason: 1} if reason else {})


def test_delay_and_reorder() -> None:
    pair = Pair(Policy([Rule("data", Delay(0.3), first=1, count=1)]))
    p1 = ipv4_packet("10.0.0.1", "10.0.0.2", b"one-----")
    p2 = ipv4_packet("10.0.0.1", "10.0.0.2", b"two-----")
    pair.ping(0)  # handshake done
    pair.policy.rules[0].seen = 0
    pair.from_a(pair.a.send_packet(p1, pair.now))
    pair.from_a(pair.a.send_packet(p2, pair.now))
    pair.run(0.1)
    assert pair.delivered_b[-1] == p2  # the delayed one is not there yet
    pair.run(0.5)
    assert pair.delivered_b[-2:] == [p2, p1]

    pair = Pair(Policy([Rule("data", Reorder(), first=2, count=1)]))
    pair.ping(0)
    pair.from_a(pair.a.send_packet(p1, pair.now))  # held
    assert pair.policy.next_deadline() is not None
    pair.from_a(pair.a.send_packet(p2, pair.now))  # goes, then releases p1
    pair.run(0.1)
    assert pair.delivered_b[-2:] == [p2, p1]
    # Held alone, a message is released after max_hold.
    pair.from_a(pair.a.send_packet(p1, pair.now))
    pair.policy.rules[0].seen = 1
    pair.policy.rules[0].count = 2
    pair.from_a(pair.a.send_packet(p2, pair.now))  # this one is held
    pair.run(0.5)
    assert pair.delivered_b[-1] == p1
    pair.run(1.0)
    assert pair.delivered_b[-1] == p2


def test_incoming_drop_of_responses() -> None:
    pair = Pair(Policy([Rule("response", Drop(), direction="in")]))
    pair.ping(1)
    assert pair.handshakes() == 1  # seen (recorded) on arrival, then dropped
    assert pair.a.peers[pair.b.public_key].current is None


def test_rule_windows_and_when() -> None:
    rule = Rule("data", Drop(), first=2, count=2)
    data = b"\x04\0\0\0" + bytes(28) + b"x" * 16
    taken = [rule.takes("out", "transport", data) for _ in range(5)]
    assert taken == [False, True, True, False, False]
    assert not rule.takes("in", "transport", data)
    keepalive = b"\x04\0\0\0" + bytes(28)
    assert not Rule("data", Drop()).takes("out", "transport", keepalive)
    assert Rule("keepalive", Drop()).takes("out", "transport", keepalive)
    assert Rule("any", Drop()).takes("out", None, b"junk")
    assert not Rule("data", Drop(), when=lambda d: len(d) > 100).takes("out", "transport", data)
    assert (
        str(Rule("initiation", Corrupt("mac1"), count=1))
        == "out initiation #1: corrupt mac1 ^ 0x01"
    )
    with pytest.raises(ValueError, match="unknown message kind"):
        Rule("handshake", Drop())
    with pytest.raises(ValueError, match="no field"):
        Rule("transport", Corrupt("mac1"))


# --- rules as text ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("initiation:corrupt:mac1@1", Rule("initiation", Corrupt("mac1"), count=1)),
        ("in:data:drop", Rule("data", Drop(), "in")),
        ("data:delay:0.5@2+3", Rule("data", Delay(0.5), first=2, count=3)),
        ("transport:duplicate:2@1+", Rule("transport", Duplicate(2))),
        ("data:replay@3", Rule("data", Replay(), first=3, count=1)),
        ("data:replay:initiation", Rule("data", Replay(kind="initiation"))),
        ("initiation:stale:60@2", Rule("initiation", StaleTimestamp(60), first=2, count=1)),
        ("response:reorder", Rule("response", Reorder())),
    ],
)
def test_parse_rule(text: str, rule: Rule) -> None:
    assert parse_rule(text) == rule


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("drop", "expected KIND:ACTION"),
        ("data:explode", "unknown action 'explode'"),
        ("data:corrupt", "corrupt needs a field"),
        ("data:corrupt:mac1", "no field 'mac1'"),
        ("bogus:drop", "unknown message kind"),
        ("data:drop@x", "invalid literal"),
    ],
)
def test_parse_rule_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rule(text)


def test_cli_registration() -> None:
    parser = argparse.ArgumentParser(prog="python -m wireguard")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(
        ["misbehave", "wg0.conf", "--rule", "data:drop@2", "--ping", "10.0.0.2", "--pcap", "x"]
    )
    assert args.rule == ["data:drop@2"] and args.ping == "10.0.0.2" and args.pcap == "x"
    assert callable(args.func)


# --- review: defects found and fixed ---------------------------------------------------


@pytest.mark.parametrize("name", ["mac1", "mac2"])
def test_corrupting_a_mac_is_never_undone_by_remac(name: str) -> None:
    # "Corrupting mac1 or mac2 never recomputes anything": remac=True on a
    # rule for every kind must not put back the MAC it was asked to break.
    pair = Pair(Policy([Rule("any", Corrupt(name, remac=True), count=1)]))
    pair.ping(1)
    sent = pair.at_b[0]
    start, _ = field_range("initiation", name, len(sent))
    assert sent[start] & 1 != pair.policy.history[("out", "initiation")][0][0][start] & 1
    if name == "mac1":
        assert pair.b.drops == {DropReason.INVALID_MAC1: 1}
    # On a rule for the kind itself, the contradiction is refused.
    with pytest.raises(ValueError, match="never recomputes"):
        Rule("initiation", Corrupt(name, remac=True))
    with pytest.raises(ValueError, match="no MACs"):
        Rule("data", Corrupt("counter", remac=True))


def test_corrupt_for_any_kind_skips_messages_without_the_field() -> None:
    # Was: ValueError out of Policy.outgoing on the initiation (no counter),
    # i.e. out of the endpoint's send path.
    pair = Pair(Policy([Rule("any", Corrupt("counter"))]))
    pair.ping(1)
    assert pair.b.drops == {DropReason.DECRYPTION_FAILED: 1}  # the data packet, not the init
    assert pair.handshakes() == 1
    assert pair.policy.log[0].note == "corrupt: no field counter here"
    with pytest.raises(ValueError, match="no message has a field 'bogus'"):
        Rule("any", Corrupt("bogus"))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Corrupt("counter", xor=0x100), "xor is a byte"),  # was: crash when sending
        (lambda: Corrupt("counter", xor=0), "xor is a byte"),  # was: a no-op
        (lambda: Corrupt("counter", value=b""), "empty value"),
        (lambda: Duplicate(0), "1 or more copies"),
        (lambda: Duplicate(gap=-1), "0 or more seconds"),
        (lambda: Delay(-0.5), "0 or more seconds"),
        (lambda: Delay(float("nan")), "0 or more seconds"),
        (lambda: Reorder(max_hold=-1), "0 or more seconds"),
        (lambda: Replay(kind="handshake"), "unknown message kind"),
        (lambda: StaleTimestamp(age=-60), "in the past"),
        (lambda: Rule("data", Drop(), count=0), "count is 1 or more"),
        (lambda: Rule("keepalive", Corrupt("packet")), "packet is empty"),
    ],
    ids=[
        "xor-256",
        "xor-0",
        "empty-value",
        "no-copies",
        "negative-gap",
        "negative-delay",
        "nan-delay",
        "negative-hold",
        "replay-kind",
        "future-stale",
        "count-0",
        "keepalive-packet",
    ],
)
def test_actions_refuse_arguments_that_do_nothing_or_crash_later(make, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data:drop:5", "drop takes no argument"),
        ("data:reorder:2", "reorder takes no argument"),
        ("data:corrupt:counter:extra", "corrupt takes one argument"),
        ("data:replay:handshake", "unknown message kind 'handshake'"),
        ("data:duplicate:0", "1 or more copies"),
        ("data:drop@2+0", "count is 1 or more"),
    ],
)
def test_parse_rule_refuses_ignored_or_void_arguments(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rule(text)


def _transport(counter: int, size: int = 64) -> bytes:
    """A transport datagram as classify() sees one: type 4, an index, a counter."""
    return struct.pack("<IIQ", 4, 7, counter) + bytes(size)


def test_history_and_log_stay_bounded_on_a_long_run() -> None:
    """`misbehave` runs until stopped, and every datagram passes the policy:
    its history keeps the first message of each kind and the latest `keep`,
    its log the latest `keep` entries at least, and counts what it forgot, so
    memory does not grow with the traffic. Replay still finds the first and
    the latest."""
    keep = 50
    policy = Policy([Rule("data", Drop(), direction="out")], keep=keep)
    for counter in range(5_000):
        policy.outgoing(_transport(counter), A_ADDR, float(counter))
    for key in (("out", "transport"), ("out", "data")):
        kept = policy.history[key]
        assert len(kept) == keep + 1, (key, len(kept))
        assert kept[0][0] == _transport(0) and kept[-1][0] == _transport(4_999)
        assert policy.forgotten[key] == 5_000 - keep - 1
    assert keep <= len(policy.log) <= 2 * keep
    assert policy.log_forgotten + len(policy.log) == 5_000
    assert policy.log[-1].now == 4_999.0
    first = Policy([Rule("data", Replay(index=0, instead=True), direction="out")], keep=keep)
    for counter in range(500):
        (sent,) = first.outgoing(_transport(counter), A_ADDR, 0.0)
    assert sent.data == _transport(0)


def test_misbehave_shows_each_log_entry_once_while_the_log_is_trimmed() -> None:
    from wireguard.cli.misbehave import unseen_entries

    policy = Policy([Rule("data", Drop(), direction="out")], keep=10)
    shown, seen = 0, []
    for counter in range(1_000):
        policy.outgoing(_transport(counter), A_ADDR, float(counter))
        if counter % 7 == 0:  # the command shows the log now and then
            entries, missed, shown = unseen_entries(policy, shown)
            assert missed == 0
            seen += [e.now for e in entries]
    entries, missed, shown = unseen_entries(policy, shown)
    seen += [e.now for e in entries]
    assert seen == [float(c) for c in range(1_000)] and shown == 1_000


def test_misbehave_says_how_many_log_entries_went_before_they_were_shown() -> None:
    """Faster traffic than the command shows: entries the log trimmed before
    they were shown are counted in a line of their own, not skipped unsaid."""
    from wireguard.cli.misbehave import log_lines

    policy = Policy([Rule("data", Drop(), direction="out")], keep=10)
    for counter in range(25):
        policy.outgoing(_transport(counter), A_ADDR, float(counter))
    lines, shown = log_lines(policy, 0)
    assert shown == 25
    assert lines[0] == "(10 log entries not shown: the log keeps the latest 10 at least)"
    assert len(lines) == 1 + 15 and all("drop" in line for line in lines[1:])
    assert log_lines(policy, shown) == ([], 25)


def test_misbehave_stopped_with_ctrl_c_reports_and_closes_its_capture(tmp_path) -> None:
    """Run until stopped (no --ping, no --duration), the usual way out is
    Ctrl-C: the command still prints what the policy did and its drops, and
    closes the capture, and exits 130 as the other commands do."""
    import os
    import signal
    import subprocess
    import sys

    from wireguard.capture import PcapReader

    conf = tmp_path / "wg0.conf"
    peer = PrivateKey.generate().public_key
    conf.write_text(
        f"[Interface]\nPrivateKey = {PrivateKey.generate()}\n\n"
        f"[Peer]\nPublicKey = {peer}\nAllowedIPs = 10.9.0.2/32\n"
    )
    os.chmod(conf, 0o600)
    pcap = tmp_path / "out.pcap"
    proc = subprocess.Popen(
        [sys.executable, "-m", "wireguard", "misbehave", str(conf), "--pcap", str(pcap),
         "--rule", "data:drop"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("listening on UDP port"), first
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "our drops: " in out, (out, err)
    assert "Traceback" not in err, err
    with open(pcap, "rb") as f:
        assert list(PcapReader(f)) == []  # a whole, empty capture
