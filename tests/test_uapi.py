"""The `wg` configuration protocol against a Device, without sockets."""

from __future__ import annotations

import errno
import ipaddress

import pytest

from tests.sim import Network, payload_id
from wireguard.device import Device, Drop, Effects
from wireguard.keys import PresharedKey, PrivateKey, PublicKey
from wireguard.messages import INITIATION_LEN
from wireguard.uapi import UAPI, UAPIConnection

EINVAL = f"errno={-errno.EINVAL}\n\n"
EPROTO = f"errno={-errno.EPROTO}\n\n"
OK = "errno=0\n\n"


def key(n: int) -> PrivateKey:
    return PrivateKey(bytes([n]) * 32).clamped()


def pub(n: int) -> PublicKey:
    return key(n).public_key


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def device() -> Device:
    return Device(key(1), listen_port=51820, random=lambda n: bytes(range(n)))


@pytest.fixture
def effects() -> list[Effects]:
    return []


@pytest.fixture
def ports() -> list[int]:
    return []


@pytest.fixture
def uapi(device: Device, effects: list[Effects], ports: list[int]) -> UAPI:
    def rebind(port: int) -> int:
        ports.append(port)
        return port or 40000  # 0 asks for any port: the "kernel" picks 40000

    return UAPI(device, now=Clock(), on_listen_port=rebind, on_effects=effects.append)


def set_(uapi: UAPI, *lines: str) -> str:
    return uapi.handle("set=1\n" + "".join(line + "\n" for line in lines) + "\n")


def get(uapi: UAPI) -> dict[str, list[str]]:
    """The get answer as key -> values, checking its framing."""
    answer = uapi.handle("get=1\n\n")
    assert answer.endswith("\nerrno=0\n\n")
    out: dict[str, list[str]] = {}
    for line in answer[:-2].split("\n"):
        k, _, v = line.partition("=")
        out.setdefault(k, []).append(v)
    return out


def snapshot(device: Device) -> tuple:
    """Everything a set request may change, by value and by identity."""
    peers = [
        (
            k.raw,
            id(p),
            p.preshared_key.raw if p.preshared_key is not None else None,
            p.endpoint,
            p.persistent_keepalive,
            p.timers.persistent_keepalive,
            p.current is not None,
            [str(n) for n in device.allowed_ips.entries_for(p)],
        )
        for k, p in device.peers.items()
    ]
    return (
        device.private_key.raw,
        device.listen_port,
        device.fwmark,
        peers,
        len(device.allowed_ips),
        device.next_deadline(),
    )


# --- get ---------------------------------------------------------------------------


def test_get_empty_device(uapi: UAPI, device: Device) -> None:
    assert uapi.handle("get=1\n\n") == (
        f"private_key={device.private_key.to_hex()}\nlisten_port=51820\nerrno=0\n\n"
    )


def test_get_every_key(uapi: UAPI, device: Device) -> None:
    device.fwmark = 0x1234
    device.wall_clock_offset = 1_700_000_000.0
    psk = PresharedKey(bytes(range(32)))
    a = device.add_peer(
        pub(2),
        preshared_key=psk,
        allowed_ips=["10.0.0.2/32", "fd00::2/128", "::ffff:10.1.2.3/128"],
        endpoint=("2001:db8::1", 51820),
        persistent_keepalive=25,
    )
    a.last_handshake = 1000.25
    a.rx_bytes, a.tx_bytes = 148, 92
    device.add_peer(pub(3), endpoint=("192.0.2.3", 1))
    assert uapi.handle("get=1\n\n") == "".join(
        line + "\n"
        for line in [
            f"private_key={key(1).to_hex()}",
            "listen_port=51820",
            "fwmark=4660",
            f"public_key={pub(2).to_hex()}",
            f"preshared_key={psk.to_hex()}",
            "protocol_version=1",
            "endpoint=[2001:db8::1]:51820",
            "last_handshake_time_sec=1700001000",
            "last_handshake_time_nsec=250000000",
            "tx_bytes=92",
            "rx_bytes=148",
            "persistent_keepalive_interval=25",
            "allowed_ip=10.0.0.2/32",
            "allowed_ip=fd00::2/128",
            "allowed_ip=::ffff:10.1.2.3/128",  # as Go and inet_ntop print it
            f"public_key={pub(3).to_hex()}",
            "preshared_key=" + "0" * 64,
            "protocol_version=1",
            "endpoint=192.0.2.3:1",
            "last_handshake_time_sec=0",
            "last_handshake_time_nsec=0",
            "tx_bytes=0",
            "rx_bytes=0",
            "persistent_keepalive_interval=0",
            "errno=0",
            "",
        ]
    )


def test_get_omits_unset_port_and_fwmark() -> None:
    uapi = UAPI(Device(key(1)), now=Clock())
    assert list(get(uapi)) == ["private_key", "errno"]


# --- set: every key ----------------------------------------------------------------------


def test_set_device_keys(uapi: UAPI, device: Device, ports: list[int]) -> None:
    new = PrivateKey(bytes(range(32)))  # unclamped on purpose
    assert set_(uapi, f"private_key={new.to_hex()}", "listen_port=1234", "fwmark=7") == OK
    assert device.private_key == new.clamped()
    assert device.public_key == new.public_key
    assert device.listen_port == 1234 and ports == [1234]
    assert device.fwmark == 7
    got = get(uapi)
    assert got["private_key"] == [new.clamped().to_hex()]
    assert got["listen_port"] == ["1234"] and got["fwmark"] == ["7"]


def test_listen_port_zero_takes_the_bound_port(uapi: UAPI, device: Device) -> None:
    assert set_(uapi, "listen_port=0") == OK
    assert device.listen_port == 40000


def test_same_listen_port_does_not_rebind(uapi: UAPI, ports: list[int]) -> None:
    assert set_(uapi, "listen_port=51820") == OK
    assert ports == []


def test_listen_port_in_use_changes_nothing(device: Device) -> None:
    def busy(port: int) -> int:
        raise OSError(errno.EADDRINUSE, "in use")

    uapi = UAPI(device, now=Clock(), on_listen_port=busy)
    before = snapshot(device)
    answer = set_(uapi, "replace_peers=true", "listen_port=9", f"public_key={pub(2).to_hex()}")
    assert answer == f"errno={-errno.EADDRINUSE}\n\n"
    assert snapshot(device) == before


def test_fwmark_failure_restores_the_port(device: Device) -> None:
    calls: list[int] = []

    def fail(mark: int) -> None:
        raise OSError(errno.EPERM, "no")

    uapi = UAPI(device, now=Clock(), on_listen_port=calls.append, on_fwmark=fail)
    assert set_(uapi, "listen_port=9", "fwmark=1") == f"errno={-errno.EADDRINUSE}\n\n"
    assert calls == [9, 51820] and device.listen_port == 51820 and device.fwmark == 0


def test_without_binding_the_port_is_just_stored(device: Device) -> None:
    uapi = UAPI(device, now=Clock())
    assert set_(uapi, "listen_port=4242", "fwmark=1") == OK
    assert device.listen_port == 4242 and device.fwmark == 1


def test_set_peer_keys(uapi: UAPI, device: Device) -> None:
    psk = PresharedKey(bytes(range(1, 33)))
    answer = set_(
        uapi,
        f"public_key={pub(2).to_hex().upper()}",  # Go's hex decoder takes both cases
        "protocol_version=1",
        f"preshared_key={psk.to_hex()}",
        "endpoint=192.0.2.2:51820",
        "persistent_keepalive_interval=25",
        "allowed_ip=10.0.0.0/24",
        "allowed_ip=fd00::1/64",
    )
    assert answer == OK
    peer = device.peers[pub(2)]
    assert peer.preshared_key == psk
    assert peer.endpoint == ("192.0.2.2", 51820)
    assert peer.persistent_keepalive == 25
    assert [str(n) for n in device.allowed_ips.entries_for(peer)] == ["10.0.0.0/24", "fd00::/64"]
    assert device.allowed_ips.lookup("10.0.0.77") is peer
    got = get(uapi)
    assert got["public_key"] == [pub(2).to_hex()]
    assert got["preshared_key"] == [psk.to_hex()]
    assert got["endpoint"] == ["192.0.2.2:51820"]
    assert got["persistent_keepalive_interval"] == ["25"]
    assert got["allowed_ip"] == ["10.0.0.0/24", "fd00::/64"]


@pytest.mark.parametrize(
    ("sent", "stored", "shown"),
    [
        ("[2001:db8::1]:51820", ("2001:db8::1", 51820), "[2001:db8::1]:51820"),
        ("[2001:DB8:0:0::1]:1", ("2001:db8::1", 1), "[2001:db8::1]:1"),
        ("[fe80::1%eth0]:7", ("fe80::1%eth0", 7), "[fe80::1%eth0]:7"),
        # IPv4-mapped is stored as IPv4: the form the UDP binding reports.
        ("[::ffff:192.0.2.1]:9", ("192.0.2.1", 9), "192.0.2.1:9"),
        ("192.0.2.1:0", ("192.0.2.1", 0), "192.0.2.1:0"),
    ],
)
def test_endpoints(uapi: UAPI, device: Device, sent: str, stored: tuple, shown: str) -> None:
    assert set_(uapi, f"public_key={pub(2).to_hex()}", f"endpoint={sent}") == OK
    assert device.peers[pub(2)].endpoint == stored
    assert get(uapi)["endpoint"] == [shown]


def test_zero_preshared_key_clears_it(uapi: UAPI, device: Device) -> None:
    device.add_peer(pub(2), preshared_key=PresharedKey.generate())
    assert set_(uapi, f"public_key={pub(2).to_hex()}", "preshared_key=" + "0" * 64) == OK
    assert device.peers[pub(2)].preshared_key is None


def test_replace_peers(uapi: UAPI, device: Device) -> None:
    old = device.add_peer(pub(2), allowed_ips=["10.0.0.2/32"])
    device.add_peer(pub(3), allowed_ips=["10.0.0.3/32"])
    answer = set_(uapi, "replace_peers=true", f"public_key={pub(2).to_hex()}", "allowed_ip=::/0")
    assert answer == OK
    assert list(device.peers) == [pub(2)]
    assert device.peers[pub(2)] is not old  # recreated, as wireguard-go does
    assert [str(n) for n, _ in device.allowed_ips] == ["::/0"]


def test_remove(uapi: UAPI, device: Device) -> None:
    device.add_peer(pub(2), allowed_ips=["10.0.0.2/32"])
    device.add_peer(pub(3), allowed_ips=["10.0.0.3/32"])
    answer = set_(
        uapi,
        f"public_key={pub(2).to_hex()}",
        "remove=true",
        "allowed_ip=10.9.0.0/16",  # after remove: validated, ignored
        f"public_key={pub(4).to_hex()}",  # unknown: nothing to remove
        "remove=true",
    )
    assert answer == OK
    assert list(device.peers) == [pub(3)]
    assert device.allowed_ips.lookup("10.0.0.2") is None
    assert device.allowed_ips.lookup("10.9.0.1") is None


def test_update_only(uapi: UAPI, device: Device) -> None:
    device.add_peer(pub(2))
    answer = set_(
        uapi,
        f"public_key={pub(2).to_hex()}",
        "update_only=true",
        "endpoint=192.0.2.2:1",
        f"public_key={pub(3).to_hex()}",
        "update_only=true",
        "endpoint=192.0.2.3:1",
        "allowed_ip=10.0.0.3/32",
    )
    assert answer == OK
    assert list(device.peers) == [pub(2)]
    assert device.peers[pub(2)].endpoint == ("192.0.2.2", 1)
    assert len(device.allowed_ips) == 0


def test_replace_allowed_ips(uapi: UAPI, device: Device) -> None:
    a = device.add_peer(pub(2), allowed_ips=["10.0.0.0/24", "10.0.1.0/24"])
    b = device.add_peer(pub(3), allowed_ips=["10.0.3.0/24"])
    answer = set_(
        uapi,
        f"public_key={pub(2).to_hex()}",
        "replace_allowed_ips=true",
        "allowed_ip=10.0.1.0/24",
        "allowed_ip=10.0.3.0/24",  # taken from the other peer
    )
    assert answer == OK
    assert [str(n) for n in device.allowed_ips.entries_for(a)] == ["10.0.1.0/24", "10.0.3.0/24"]
    assert device.allowed_ips.entries_for(b) == []
    assert device.allowed_ips.lookup("10.0.0.1") is None


def test_own_public_key_is_ignored(uapi: UAPI, device: Device) -> None:
    answer = set_(uapi, f"public_key={device.public_key.to_hex()}", "allowed_ip=10.0.0.0/8")
    assert answer == OK
    assert device.peers == {} and len(device.allowed_ips) == 0


def test_new_private_key_drops_peer_with_that_public_key(uapi: UAPI, device: Device) -> None:
    device.add_peer(pub(2))
    device.add_peer(pub(3))
    assert set_(uapi, f"private_key={key(2).to_hex()}") == OK
    assert list(device.peers) == [pub(3)]


def test_same_private_key_keeps_sessions() -> None:
    net = Network(seed=3)
    a, b = net.add("a", 1), net.add("b", 2)
    net.connect(a, b)
    net.send(a, b, 1)
    net.run_for(1)
    peer = a.device.peers[b.device.public_key]
    assert peer.current is not None
    uapi = UAPI(a.device, now=lambda: net.now)
    assert set_(uapi, f"private_key={a.device.private_key.to_hex()}") == OK
    assert peer.current is not None and peer.current.sending_valid
    # A new key: the session still receives but sends no more (kernel
    # noise.c wg_noise_expire_current_peer_keypairs).
    assert set_(uapi, f"private_key={key(9).to_hex()}") == OK
    assert peer.current is not None and not peer.current.sending_valid


def test_all_zero_private_key_leaves_the_device_without_one() -> None:
    """`wg set wg0 private-key /dev/null` sends an all-zero key: no key, as
    for wireguard-go and the kernel. The peers stay, their sessions send no
    more (what is in flight is still received), no handshake is made or
    answered, and get has no private_key line; a key given again makes the
    tunnel work again, and what waited meanwhile goes out."""
    net = Network(seed=4)
    a, b = net.add("a", 1), net.add("b", 2)
    net.connect(a, b)
    net.send(a, b, 1)
    net.run_for(1)
    key_a = a.device.private_key
    uapi = UAPI(a.device, now=lambda: net.now)
    assert set_(uapi, "private_key=" + "0" * 64) == OK
    peer = a.device.peers[b.device.public_key]
    assert not a.device.has_identity and not peer.current.sending_valid
    assert "private_key" not in get(uapi)
    net.send(a, b, 2)  # a cannot start a handshake: 2 waits
    net.send(b, a, 3)  # b's session with a still delivers
    net.run_for(20)
    assert a.device.drops[Drop.NO_PRIVATE_KEY] >= 1
    assert [payload_id(p) for p in b.delivered] == [1]
    assert [payload_id(p) for p in a.delivered] == [3]
    # b's new handshake (its data went unanswered) is not answered either.
    b_peer = b.device.peers[key_a.public_key]
    b_peer.last_sent_handshake = None
    net.apply(b, b.device.initiate_handshake(key_a.public_key, net.now))
    net.run_for(1)
    assert a.device.drops[Drop.NO_PRIVATE_KEY] >= 2
    assert set_(uapi, f"private_key={key_a.to_hex()}") == OK
    net.send(a, b, 4)
    net.run_for(10)
    assert [payload_id(p) for p in b.delivered] == [1, 2, 4]


def test_persistent_keepalive_turned_on_sends_at_once(
    uapi: UAPI, device: Device, effects: list[Effects]
) -> None:
    device.add_peer(pub(2), endpoint=("192.0.2.2", 51820))
    assert set_(uapi, f"public_key={pub(2).to_hex()}", "persistent_keepalive_interval=25") == OK
    # No session yet, so the keepalive starts a handshake: an initiation.
    [sent] = effects
    assert [(len(d), a) for d, a in sent.datagrams] == [(INITIATION_LEN, ("192.0.2.2", 51820))]
    effects.clear()
    # A new interval for a running keepalive sends nothing extra.
    assert set_(uapi, f"public_key={pub(2).to_hex()}", "persistent_keepalive_interval=30") == OK
    assert device.peers[pub(2)].persistent_keepalive == 30
    assert effects == [Effects()]
    assert set_(uapi, f"public_key={pub(2).to_hex()}", "persistent_keepalive_interval=0") == OK
    peer = device.peers[pub(2)]
    assert peer.persistent_keepalive == 0 and peer.timers.persistent_keepalive is None


def test_persistent_keepalive_without_callback_is_left_to_the_timer(device: Device) -> None:
    uapi = UAPI(device, now=Clock(500.0))
    device.add_peer(pub(2), endpoint=("192.0.2.2", 51820))
    assert set_(uapi, f"public_key={pub(2).to_hex()}", "persistent_keepalive_interval=25") == OK
    assert device.next_deadline() == 500.0
    assert device.handle_timer(500.0).datagrams


def test_crlf_lines_are_accepted(uapi: UAPI, device: Device) -> None:
    answer = uapi.handle(f"set=1\npublic_key={pub(2).to_hex()}\r\nallowed_ip=10.0.0.0/8\r\n\r\n")
    assert answer == OK
    assert device.allowed_ips.lookup("10.1.1.1") is device.peers[pub(2)]


# --- malformed requests: an errno answer and nothing changed -----------------------------

PK = f"public_key={pub(2).to_hex()}"

MALFORMED = [
    (EPROTO, ["listen_port"]),
    (EPROTO, [PK, "allowed_ip 10.0.0.0/8"]),
    (EINVAL, ["listen_port=notanumber"]),
    (EINVAL, ["listen_port=65536"]),
    (EINVAL, ["listen_port=-1"]),
    (EINVAL, ["listen_port=+1"]),
    (EINVAL, ["listen_port= 1"]),
    (EINVAL, ["listen_port=1_000"]),
    (EINVAL, ["listen_port="]),
    (EINVAL, ["fwmark=4294967296"]),
    (EINVAL, ["fwmark=0x10"]),
    (EINVAL, ["replace_peers=false"]),
    (EINVAL, ["unknown_key=1"]),
    (EINVAL, ["=1"]),
    (EINVAL, ["private_key=" + "a" * 63]),
    (EINVAL, ["preshared_key=" + "a" * 64]),  # a peer key before any public_key
    (EINVAL, ["protocol_version=1"]),
    (EINVAL, ["public_key=" + "g" * 64]),
    (EINVAL, ["public_key=" + "a" * 66]),
    (EINVAL, ["public_key=" + " aa" * 32]),
    (EINVAL, ["public_key=0x" + "a" * 62]),
    (EINVAL, ["public_key=" + pub(2).to_base64()]),
    (EINVAL, [PK, "remove=yes"]),
    (EINVAL, [PK, "update_only=1"]),
    (EINVAL, [PK, "replace_allowed_ips=True"]),
    (EINVAL, [PK, "protocol_version=2"]),
    (EINVAL, [PK, "listen_port=1"]),  # a device key inside a peer section
    (EINVAL, [PK, "tx_bytes=0"]),
    (EINVAL, [PK, "preshared_key=xyz"]),
    (EINVAL, [PK, "persistent_keepalive_interval=65536"]),
    (EINVAL, [PK, "persistent_keepalive_interval=-1"]),
    (EINVAL, [PK, "endpoint=192.0.2.1"]),
    (EINVAL, [PK, "endpoint=192.0.2.1:"]),
    (EINVAL, [PK, "endpoint=:51820"]),
    (EINVAL, [PK, "endpoint=192.0.2.1:65536"]),
    (EINVAL, [PK, "endpoint=::1:51820"]),  # IPv6 needs brackets
    (EINVAL, [PK, "endpoint=[192.0.2.1]:1"]),  # IPv4 must not have them
    (EINVAL, [PK, "endpoint=[::1:1"]),
    (EINVAL, [PK, "endpoint=vpn.example.org:51820"]),  # wg resolves names itself
    (EINVAL, [PK, "endpoint=01.2.3.4:1"]),
    (EINVAL, [PK, "allowed_ip=10.0.0.0"]),
    (EINVAL, [PK, "allowed_ip=10.0.0.0/33"]),
    (EINVAL, [PK, "allowed_ip=::/129"]),
    (EINVAL, [PK, "allowed_ip=10.0.0.0/08"]),
    (EINVAL, [PK, "allowed_ip=10.0.0.0/+8"]),
    (EINVAL, [PK, "allowed_ip=10.0.0.0/-1"]),
    (EINVAL, [PK, "allowed_ip=10.0.0.0/"]),
    (EINVAL, [PK, "allowed_ip=10.0.0.0/255.0.0.0"]),
    (EINVAL, [PK, "allowed_ip=fe80::1%eth0/64"]),
    (EINVAL, [PK, "allowed_ip=10.0.0.256/32"]),
    (EINVAL, [PK, "allowed_ip=bad"]),
]


@pytest.mark.parametrize(("answer", "lines"), MALFORMED, ids=lambda v: repr(v)[:60])
def test_malformed_request_changes_nothing(
    uapi: UAPI, device: Device, ports: list[int], answer: str, lines: list[str]
) -> None:
    device.add_peer(pub(3), allowed_ips=["10.0.0.3/32"], endpoint=("192.0.2.3", 3))
    before = snapshot(device)
    # Valid changes of every kind come first: none of them may survive the bad
    # line, not even the rebinding of the listen port.
    request = [
        f"private_key={key(7).to_hex()}",
        "listen_port=1111",
        "fwmark=5",
        "replace_peers=true",
    ]
    if lines[0].startswith("public_key="):
        request += [
            f"public_key={pub(4).to_hex()}",
            "allowed_ip=10.0.0.3/32",
            "persistent_keepalive_interval=5",
            "endpoint=192.0.2.4:4",
        ]
    assert set_(uapi, *request, *lines) == answer
    assert snapshot(device) == before
    assert ports == []


def test_error_after_a_valid_section_leaves_no_new_peer(uapi: UAPI, device: Device) -> None:
    before = snapshot(device)
    answer = set_(
        uapi,
        f"public_key={pub(2).to_hex()}",
        "allowed_ip=10.0.0.0/8",
        f"public_key={pub(3).to_hex()}",
        "allowed_ip=10.0.0.0/99",
    )
    assert answer == EINVAL
    assert snapshot(device) == before


def test_first_bad_line_decides_the_errno(uapi: UAPI) -> None:
    assert set_(uapi, "listen_port=x", "garbage") == EINVAL
    assert set_(uapi, "garbage", "listen_port=x") == EPROTO


# --- framing -----------------------------------------------------------------------------


def test_several_requests_on_one_connection(uapi: UAPI, device: Device) -> None:
    conn = UAPIConnection(uapi)
    stream = (
        f"set=1\npublic_key={pub(2).to_hex()}\nallowed_ip=10.0.0.0/8\n\n"
        "set=1\nlisten_port=x\n\n"
        "get=1\n\n"
    ).encode()
    out = b"".join(conn.receive_data(stream[i : i + 1]) for i in range(len(stream)))
    first, second, third = out.decode().split("\n\n")[:3]
    assert first == "errno=0" and second == f"errno={-errno.EINVAL}"
    assert f"public_key={pub(2).to_hex()}" in third and third.endswith("errno=0")
    assert not conn.closed
    assert conn.receive_eof() == b"" and conn.closed


def test_get_with_trailing_character(uapi: UAPI) -> None:
    conn = UAPIConnection(uapi)
    assert conn.receive_data(b"get=1\nx") == f"errno={-errno.EINVAL}\n\n".encode()
    assert not conn.closed


@pytest.mark.parametrize("op", [b"get=2\n", b"hello\n", b"set=1 \n", b"GET=1\n"])
def test_unknown_operation_hangs_up(uapi: UAPI, op: bytes) -> None:
    conn = UAPIConnection(uapi)
    assert conn.receive_data(op + b"get=1\n\n") == b""
    assert conn.closed
    assert conn.receive_data(b"get=1\n\n") == b""


def test_set_cut_short_by_eof_is_applied(uapi: UAPI, device: Device) -> None:
    conn = UAPIConnection(uapi)
    assert conn.receive_data(f"set=1\npublic_key={pub(2).to_hex()}".encode()) == b""
    assert conn.receive_eof() == OK.encode()
    assert pub(2) in device.peers


def test_overlong_line(uapi: UAPI, device: Device) -> None:
    conn = UAPIConnection(uapi)
    before = snapshot(device)
    assert conn.receive_data(b"set=1\nallowed_ip=" + b"1" * 70_000) == (
        f"errno={-errno.EIO}\n\n".encode()
    )
    assert conn.closed and snapshot(device) == before


def test_non_utf8_is_invalid_not_a_crash(uapi: UAPI, device: Device) -> None:
    before = snapshot(device)
    conn = UAPIConnection(uapi)
    assert conn.receive_data(b"set=1\nlisten_port=\xff\n\n") == EINVAL.encode()
    assert snapshot(device) == before


def test_round_trip_through_get(uapi: UAPI, device: Device) -> None:
    """What get prints, set takes back: a second device configured from the
    first one's answer (minus counters) answers the same."""
    device.add_peer(
        pub(2),
        preshared_key=PresharedKey(bytes(32 * [5])),
        allowed_ips=["10.0.0.0/24", "2001:db8::/32"],
        endpoint=("2001:db8::9", 4),
        persistent_keepalive=15,
    )
    device.add_peer(pub(3), allowed_ips=["0.0.0.0/0"])
    text = uapi.handle("get=1\n\n")
    skip = ("last_handshake", "tx_bytes", "rx_bytes", "errno")
    lines = [line for line in text.split("\n") if line and not line.startswith(skip)]
    other = Device(key(8))
    other_uapi = UAPI(other, now=Clock())
    assert set_(other_uapi, *lines) == OK
    assert other_uapi.handle("get=1\n\n") == text
    assert ipaddress.ip_network("2001:db8::/32") in other.allowed_ips.entries_for(
        other.peers[pub(2)]
    )
