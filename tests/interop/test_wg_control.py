"""The stock `wg` tool (Debian wireguard-tools) configuring our endpoint
through the control socket, and wireguard-go answering the same raw requests.

Our :class:`ControlServer` runs in a background thread with its own event
loop, at ``/var/run/wireguard/<unique name>.sock`` where `wg` looks for a
userspace interface; every read or change of the device from the test goes
through that loop, as a binding's would.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import secrets
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import need, need_tool
from tests.test_uapi import MALFORMED, snapshot
from wireguard.device import Device, Effects
from wireguard.io.control import SOCKET_DIRECTORY, ControlServer, socket_path
from wireguard.keys import PresharedKey, PrivateKey, PublicKey
from wireguard.messages import INITIATION_LEN
from wireguard.uapi import UAPI

pytestmark = pytest.mark.interop

T = TypeVar("T")


def unique_name() -> str:
    return "pywgt" + secrets.token_hex(5)  # 15 characters: IFNAMSIZ - 1


class Served:
    """A device and its control socket, served from a thread's event loop."""

    def __init__(self, name: str, device: Device) -> None:
        self.name = name
        self.device = device
        self.path = socket_path(name)
        self.ports: list[int] = []
        self.marks: list[int] = []
        self.effects: list[Effects] = []
        self.uapi = UAPI(
            device,
            now=time.monotonic,
            on_listen_port=self._rebind,
            on_fwmark=self.marks.append,
            on_effects=self.effects.append,
        )
        self.server = ControlServer(self.uapi, self.path)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.run(self.server.start())

    def _rebind(self, port: int) -> int:
        self.ports.append(port)
        return port or 43210

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def call(self, fn: Callable[[], T]) -> T:
        """Run *fn* on the device's loop: the device belongs to that thread."""

        async def wrapper() -> T:
            return fn()

        return self.run(wrapper())

    def snapshot(self) -> tuple:
        return self.call(lambda: snapshot(self.device))

    def close(self) -> None:
        if self.loop.is_closed():
            return
        try:
            self.run(self.server.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def wg() -> str:
    need(os.geteuid() == 0, f"the control socket lives in {SOCKET_DIRECTORY}: needs root")
    return need_tool("wg")


@pytest.fixture
def served(wg: str) -> Iterator[Served]:
    device = Device(
        PrivateKey.generate(),
        listen_port=51820,
        wall_clock_offset=time.time() - time.monotonic(),
    )
    s = Served(unique_name(), device)
    try:
        yield s
    finally:
        s.close()


def run_wg(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["wg", *args], capture_output=True, text=True, timeout=20)
    if check:
        assert result.returncode == 0, f"wg {' '.join(args)}: {result.stderr}"
    return result


def raw(path: str, request: bytes) -> bytes:
    """Send *request* and read until an answer ends with a blank line (or
    the server hangs up)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(request)
        answer = b""
        while not answer.endswith(b"\n\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def keyfile(tmp_path: Path, key: PrivateKey | PresharedKey) -> str:
    path = tmp_path / secrets.token_hex(4)
    path.write_text(key.to_base64() + "\n")
    return str(path)


def add_peer(served: Served, key: PublicKey, **kw: Any) -> None:
    served.call(lambda: served.device.add_peer(key, **kw))


# --- the socket file ---------------------------------------------------------------------


def test_socket_is_owner_only_and_removed_on_close(served: Served) -> None:
    st = os.stat(served.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert stat.S_IMODE(os.stat(SOCKET_DIRECTORY).st_mode) == 0o755
    assert served.name in run_wg("show", "interfaces").stdout.split()
    served.close()
    assert not os.path.exists(served.path)
    assert run_wg("show", served.name, check=False).returncode != 0


def test_live_socket_is_not_taken_over(served: Served) -> None:
    other = ControlServer(served.uapi, served.path)
    with pytest.raises(OSError) as info:
        asyncio.run(other.start())
    assert info.value.errno == errno.EADDRINUSE
    assert run_wg("show", served.name).returncode == 0  # the first one still serves


def test_stale_socket_is_replaced(wg: str) -> None:
    path = socket_path(unique_name())
    os.makedirs(SOCKET_DIRECTORY, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)  # bound, never listening, then closed: a crashed process
    uapi = UAPI(Device(PrivateKey.generate()), now=time.monotonic)

    async def serve() -> bytes:
        async with ControlServer(uapi, path):
            return await asyncio.to_thread(raw, path, b"get=1\n\n")

    assert asyncio.run(serve()).endswith(b"errno=0\n\n")
    assert not os.path.exists(path)


def test_a_file_that_is_not_a_socket_is_left_alone(wg: str) -> None:
    path = socket_path(unique_name())
    os.makedirs(SOCKET_DIRECTORY, exist_ok=True)
    Path(path).write_text("not a socket")
    try:
        server = ControlServer(UAPI(Device(PrivateKey.generate()), now=time.monotonic), path)
        with pytest.raises(FileExistsError):
            asyncio.run(server.start())
        assert Path(path).read_text() == "not a socket"
    finally:
        os.unlink(path)


# --- wg show / showconf ----------------------------------------------------------------


@pytest.fixture
def configured(served: Served) -> tuple[Served, PublicKey, PresharedKey]:
    peer_key = PrivateKey.generate().public_key
    psk = PresharedKey.generate()

    def setup() -> None:
        served.device.fwmark = 0x10
        peer = served.device.add_peer(
            peer_key,
            preshared_key=psk,
            allowed_ips=["10.0.0.0/24", "fd00::/64"],
            endpoint=("2001:db8::1", 51820),
            persistent_keepalive=25,
        )
        peer.last_handshake = time.monotonic() - 65
        peer.rx_bytes, peer.tx_bytes = 2048, 1536

    served.call(setup)
    return served, peer_key, psk


def test_wg_show(configured: tuple[Served, PublicKey, PresharedKey]) -> None:
    served, peer_key, _ = configured
    out = run_wg("show", served.name).stdout
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    assert lines[:5] == [
        f"interface: {served.name}",
        f"public key: {served.device.public_key.to_base64()}",
        "private key: (hidden)",
        "listening port: 51820",
        "fwmark: 0x10",
    ]
    assert lines[5:9] == [
        f"peer: {peer_key.to_base64()}",
        "preshared key: (hidden)",
        "endpoint: [2001:db8::1]:51820",
        "allowed ips: 10.0.0.0/24, fd00::/64",
    ]
    # Wall-clock time: wg subtracts last_handshake_time_sec from time(NULL).
    assert re.fullmatch(r"latest handshake: 1 minute, [56] seconds ago", lines[9])
    assert lines[10:] == [
        "transfer: 2.00 KiB received, 1.50 KiB sent",
        "persistent keepalive: every 25 seconds",
    ]


def test_wg_show_dump(configured: tuple[Served, PublicKey, PresharedKey]) -> None:
    served, peer_key, psk = configured
    interface, peer = (
        line.split("\t") for line in run_wg("show", served.name, "dump").stdout.splitlines()
    )
    device = served.device
    assert interface == [
        device.private_key.to_base64(),
        device.public_key.to_base64(),
        "51820",
        "0x10",
    ]
    assert peer[:4] == [
        peer_key.to_base64(),
        psk.to_base64(),
        "[2001:db8::1]:51820",
        "10.0.0.0/24,fd00::/64",
    ]
    assert abs(int(peer[4]) - (time.time() - 65)) <= 2
    assert peer[5:] == ["2048", "1536", "25"]


def test_wg_show_fields(configured: tuple[Served, PublicKey, PresharedKey]) -> None:
    served, peer_key, _ = configured
    b64 = peer_key.to_base64()
    assert run_wg("show", served.name, "public-key").stdout.strip() == (
        served.device.public_key.to_base64()
    )
    assert run_wg("show", served.name, "listen-port").stdout.strip() == "51820"
    assert run_wg("show", served.name, "peers").stdout.split() == [b64]
    assert run_wg("show", served.name, "endpoints").stdout.split() == [b64, "[2001:db8::1]:51820"]
    assert run_wg("show", served.name, "allowed-ips").stdout.split() == [
        b64,
        "10.0.0.0/24",
        "fd00::/64",
    ]
    assert run_wg("show", served.name, "persistent-keepalive").stdout.split() == [b64, "25"]


def test_wg_showconf(configured: tuple[Served, PublicKey, PresharedKey]) -> None:
    served, peer_key, psk = configured
    assert run_wg("showconf", served.name).stdout == (
        "[Interface]\n"
        "ListenPort = 51820\n"
        "FwMark = 0x10\n"
        f"PrivateKey = {served.device.private_key.to_base64()}\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {peer_key.to_base64()}\n"
        f"PresharedKey = {psk.to_base64()}\n"
        "AllowedIPs = 10.0.0.0/24, fd00::/64\n"
        "Endpoint = [2001:db8::1]:51820\n"
        "PersistentKeepalive = 25\n"
    )


# --- wg set --------------------------------------------------------------------------------


def test_wg_set_interface(served: Served, tmp_path: Path) -> None:
    new = PrivateKey.generate()
    run_wg("set", served.name, "listen-port", "12345", "fwmark", "0x20",
           "private-key", keyfile(tmp_path, new))  # fmt: skip
    device = served.device
    assert served.call(lambda: (device.private_key, device.listen_port, device.fwmark)) == (
        new,
        12345,
        0x20,
    )
    assert served.ports == [12345] and served.marks == [0x20]
    assert run_wg("show", served.name, "public-key").stdout.strip() == new.public_key.to_base64()
    run_wg("set", served.name, "listen-port", "0", "fwmark", "off")
    assert served.call(lambda: (device.listen_port, device.fwmark)) == (43210, 0)
    # wg sends an all-zero key for /dev/null: the device has no key then, as
    # for the kernel and wireguard-go, and `wg show` says so.
    run_wg("set", served.name, "private-key", "/dev/null")
    assert served.call(lambda: device.has_identity) is False
    assert run_wg("show", served.name, "public-key").stdout.strip() == "(none)"
    assert run_wg("show", served.name, "private-key").stdout.strip() == "(none)"
    run_wg("set", served.name, "private-key", keyfile(tmp_path, new))
    assert served.call(lambda: (device.has_identity, device.private_key)) == (True, new)


def test_wg_set_peer(served: Served, tmp_path: Path) -> None:
    peer_key = PrivateKey.generate().public_key
    psk = PresharedKey.generate()
    name, b64 = served.name, peer_key.to_base64()
    run_wg("set", name, "peer", b64, "preshared-key", keyfile(tmp_path, psk),
           "allowed-ips", "10.0.0.0/24,fd00::/64", "endpoint", "[2001:db8::1]:51820",
           "persistent-keepalive", "25")  # fmt: skip
    device = served.device

    def state() -> tuple:
        peer = device.peers[peer_key]
        return (
            peer.preshared_key,
            peer.endpoint,
            peer.persistent_keepalive,
            [str(n) for n in device.allowed_ips.entries_for(peer)],
        )

    assert served.call(state) == (
        psk,
        ("2001:db8::1", 51820),
        25,
        ["10.0.0.0/24", "fd00::/64"],
    )
    # The keepalive turned on went out at once: no session yet, so it started
    # a handshake, handed to the binding with the answer.
    datagrams = [d for e in served.effects for d in e.datagrams]
    assert [(len(d), a) for d, a in datagrams] == [(INITIATION_LEN, ("2001:db8::1", 51820))]

    run_wg("set", name, "peer", b64, "allowed-ips", "192.168.0.0/16", "endpoint", "192.0.2.7:1",
           "persistent-keepalive", "off", "preshared-key", "/dev/null")  # fmt: skip
    assert served.call(state) == (None, ("192.0.2.7", 1), 0, ["192.168.0.0/16"])
    run_wg("set", name, "peer", b64, "allowed-ips", "")
    assert served.call(state)[3] == []

    run_wg("set", name, "peer", b64, "remove")
    assert served.call(lambda: list(device.peers)) == []
    assert run_wg("show", name, "peers").stdout == ""


def test_wg_set_refused_changes_nothing(served: Served) -> None:
    # wg catches most mistakes itself; this one only the server can see.
    own = served.device.public_key.to_base64()
    before = served.snapshot()
    run_wg("set", served.name, "peer", own, "allowed-ips", "10.0.0.0/8")  # ignored, as wg-go
    assert served.snapshot() == before


# --- wg setconf / addconf / syncconf -----------------------------------------------------


def conf(private: PrivateKey, *peers: tuple[PublicKey, str], port: int = 51821) -> str:
    text = f"[Interface]\nPrivateKey = {private.to_base64()}\nListenPort = {port}\n"
    for key, ips in peers:
        text += f"\n[Peer]\nPublicKey = {key.to_base64()}\nAllowedIPs = {ips}\n"
    return text


def peers_of(served: Served) -> dict[PublicKey, list[str]]:
    device = served.device
    return served.call(
        lambda: {
            k: [str(n) for n in device.allowed_ips.entries_for(p)] for k, p in device.peers.items()
        }
    )


def test_wg_setconf_addconf_syncconf(served: Served, tmp_path: Path) -> None:
    private = served.device.private_key
    a, b, c, old = (PrivateKey.generate().public_key for _ in range(4))
    add_peer(served, old, allowed_ips=["10.9.0.0/16"])
    file = tmp_path / "wg.conf"

    file.write_text(conf(private, (a, "10.0.1.0/24"), (b, "10.0.2.0/24, fd00:2::/64")))
    run_wg("setconf", served.name, str(file))
    assert peers_of(served) == {a: ["10.0.1.0/24"], b: ["10.0.2.0/24", "fd00:2::/64"]}
    assert served.call(lambda: served.device.listen_port) == 51821

    file.write_text(conf(private, (c, "10.0.3.0/24"), (a, "10.0.4.0/24")))
    run_wg("addconf", served.name, str(file))
    # addconf keeps the peers it does not name; those it names get the
    # file's allowed IPs (wg sends replace_allowed_ips for each).
    assert peers_of(served) == {
        a: ["10.0.4.0/24"],
        b: ["10.0.2.0/24", "fd00:2::/64"],
        c: ["10.0.3.0/24"],
    }

    peer_a = served.call(lambda: served.device.peers[a])
    file.write_text(conf(private, (a, "10.0.1.0/24"), (c, "10.0.3.0/24, 10.0.5.0/24")))
    run_wg("syncconf", served.name, str(file))
    assert peers_of(served) == {a: ["10.0.1.0/24"], c: ["10.0.3.0/24", "10.0.5.0/24"]}
    # syncconf only removes what went away: a's state (sessions) survives.
    assert served.call(lambda: served.device.peers[a]) is peer_a
    assert run_wg("showconf", served.name).stdout.count("[Peer]") == 2


# --- raw requests --------------------------------------------------------------------------


def test_several_requests_on_one_connection(served: Served) -> None:
    key = PrivateKey.generate().public_key.to_hex().encode()
    stream = (
        b"set=1\npublic_key=" + key + b"\nallowed_ip=10.0.0.0/8\n\n"
        b"set=1\nlisten_port=x\n\n"
        b"get=1\n\n"
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(served.path)
        sock.sendall(stream)
        answer = b""
        while answer.count(b"\n\n") < 3:
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    first, second, third = answer.split(b"\n\n")[:3]
    assert (first, second) == (b"errno=0", b"errno=-22")
    assert b"public_key=" + key in third and b"allowed_ip=10.0.0.0/8" in third


# --- the same raw requests to wireguard-go -----------------------------------------------

# Where we knowingly answer differently from wireguard-go:
# - a prefix length with a sign or a leading zero ("/+8", "/08"): Go's
#   net/netip refuses it since Go 1.22, as we do; a wireguard-go built with an
#   older Go (Debian's) takes it;
# - wireguard-go on Linux resolves an endpoint's zone to an interface index and
#   refuses an unknown one; the sans-I/O parser cannot look interfaces up.
KNOWN_DIFFERENCES = {
    "allowed_ip=10.0.0.0/08",
    "allowed_ip=10.0.0.0/+8",
    "allowed_ip=10.0.0.0/" + "0" * 4999 + "8",
}


@pytest.fixture(scope="module")
def wireguard_go() -> Iterator[str]:
    need(os.geteuid() == 0, "wireguard-go needs root")
    need_tool("wireguard-go")
    need_tool("unshare")
    name = unique_name()
    path = socket_path(name)
    # In a network namespace of its own, so its TUN device disappears with it.
    process = subprocess.Popen(
        ["unshare", "--net", "wireguard-go", "-f", name],
        env={**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(path):
            assert process.poll() is None, "wireguard-go exited"
            assert time.monotonic() < deadline, "wireguard-go did not create its socket"
            time.sleep(0.05)
        yield path
    finally:
        process.terminate()
        process.wait(10)


def request_for(lines: list[str]) -> bytes:
    return ("set=1\n" + "".join(f"{line}\n" for line in lines) + "\n").encode()


@pytest.mark.parametrize(("expected", "lines"), MALFORMED, ids=lambda v: repr(v)[:60])
def test_same_errno_as_wireguard_go(
    served: Served, wireguard_go: str, expected: str, lines: list[str]
) -> None:
    request = request_for(lines)
    theirs = raw(wireguard_go, request)
    ours = raw(served.path, request)
    assert ours == expected.encode()
    if lines[-1] not in KNOWN_DIFFERENCES:  # documented where KNOWN_DIFFERENCES is
        assert ours == theirs


@pytest.mark.parametrize("keyless", [False, True], ids=["key", "no-key"])
def test_same_get_as_wireguard_go(served: Served, wireguard_go: str, keyless: bool) -> None:
    """One configuration, given to both: the same get answer, line for line
    (but the port, which wireguard-go binds for real); also with the all-zero
    private key `wg set private-key /dev/null` sends, which means no key."""
    private = PrivateKey(bytes(32)) if keyless else PrivateKey.generate()
    peer_key = PrivateKey.generate().public_key
    psk = PresharedKey.generate()
    lines = [
        f"private_key={private.to_hex()}",
        "replace_peers=true",
        f"public_key={peer_key.to_hex()}",
        f"preshared_key={psk.to_hex()}",
        "endpoint=[2001:db8::1]:51820",
        "replace_allowed_ips=true",
        "allowed_ip=10.0.0.7/24",
        "allowed_ip=fd00::1/64",
        "allowed_ip=::ffff:10.1.2.3/128",
    ]
    for path in (wireguard_go, served.path):
        assert raw(path, request_for(lines)) == b"errno=0\n\n"

    def lines_of(path: str) -> list[bytes]:
        return [
            ln for ln in raw(path, b"get=1\n\n").split(b"\n") if not ln.startswith(b"listen_port")
        ]

    assert lines_of(served.path) == lines_of(wireguard_go)
    assert (b"private_key=" + private.to_hex().encode() in lines_of(served.path)) != keyless
    assert raw(wireguard_go, b"get=1\nx") == raw(served.path, b"get=1\nx") == b"errno=-22\n\n"


def config_of(path: str) -> tuple[list[bytes], dict[bytes, list[bytes]]]:
    """A get answer as (interface lines, {public key: peer lines}): peers in
    any order (wireguard-go walks a Go map), the port left out (it binds one
    for real)."""
    interface: list[bytes] = []
    peers: dict[bytes, list[bytes]] = {}
    current = interface
    for line in raw(path, b"get=1\n\n").split(b"\n"):
        if line.startswith(b"public_key="):
            current = peers.setdefault(line, [])
        elif line.startswith(b"errno="):
            interface.append(line)
        elif line and not line.startswith(b"listen_port="):
            current.append(line)
    return interface, peers


def test_same_peer_semantics_as_wireguard_go(served: Served, wireguard_go: str) -> None:
    """remove, update_only, replace_allowed_ips, prefixes moving between
    peers, our own key as a peer and keepalives, request after request: both
    end in the same state."""
    private = PrivateKey.generate()
    a, b, c, d = (PrivateKey.generate().public_key.to_hex() for _ in range(4))
    requests = [
        [f"private_key={private.to_hex()}", "fwmark=7", "replace_peers=true",
         f"public_key={a}", "allowed_ip=10.0.0.0/24", "allowed_ip=10.0.1.0/24",
         "persistent_keepalive_interval=25",
         f"public_key={b}", "allowed_ip=10.0.2.0/24", "endpoint=192.0.2.2:2",
         f"public_key={c}", "allowed_ip=10.0.3.0/24"],
        [f"public_key={a}", "replace_allowed_ips=true", "allowed_ip=10.0.2.0/24",
         "persistent_keepalive_interval=0",
         f"public_key={b}", "update_only=true", "allowed_ip=10.0.9.0/24",
         f"public_key={d}", "update_only=true", "endpoint=192.0.2.4:4",
         f"public_key={c}", "remove=true", "allowed_ip=10.0.3.0/24",
         f"public_key={private.public_key.to_hex()}", "allowed_ip=10.0.7.0/24"],
        [f"private_key={private.to_hex()}", "fwmark=0",
         f"public_key={d}", "remove=true",
         f"public_key={b}", f"preshared_key={'ab' * 32}", "endpoint=[fd00::2]:2"],
    ]  # fmt: skip
    for lines in requests:
        assert raw(wireguard_go, request_for(lines)) == b"errno=0\n\n"
        assert raw(served.path, request_for(lines)) == b"errno=0\n\n"
        assert config_of(served.path) == config_of(wireguard_go)
    interface, peers = config_of(served.path)
    assert len(peers) == 2 and interface == [f"private_key={private.to_hex()}".encode(), b"errno=0"]


# --- a set stopped by a bad line, next to wireguard-go ------------------------------------

MALFORMED_RAW = [
    b"set=1\nlisten_port=notanumber\n\n",
    b"set=1\nno_such_key=1\n\n",
    b"set=1\npublic_key=nothex\n\n",
    b"set=1\npublic_key=" + b"a" * 64 + b"\nallowed_ip=10.0.0.0/33\n\n",
    b"set=1\nreplace_peers=true\npublic_key=" + b"a" * 64 + b"\nendpoint=host:1\n\n",
    b"set=1\nfwmark=9\nwhat\n\n",
    b"set=1\nfwmark=" + b"9" * 5000 + b"\n\n",
    b"set=1\npublic_key=" + b"b" * 64 + b"\nallowed_ip=10.0.0.0/8\n"
    b"persistent_keepalive_interval=" + b"9" * 5000 + b"\nallowed_ip=10.1.0.0/16\n\n",
]


@pytest.fixture
def both(served: Served, wireguard_go: str) -> list[str]:
    """Our socket and wireguard-go's, given the same key and one peer."""
    private = PrivateKey.generate()
    peer = PrivateKey.generate().public_key.to_hex()
    baseline = request_for([f"private_key={private.to_hex()}", "fwmark=0", "replace_peers=true",
                            f"public_key={peer}", "allowed_ip=10.0.0.0/8"])  # fmt: skip
    for path in (wireguard_go, served.path):
        assert raw(path, baseline) == b"errno=0\n\n"
    return [served.path, wireguard_go]


@pytest.mark.parametrize("request_", MALFORMED_RAW, ids=lambda r: repr(r)[:60])
def test_malformed_raw_request_leaves_what_wireguard_go_leaves(
    both: list[str], request_: bytes
) -> None:
    """A set is applied line by line: the lines before the bad one stay
    applied, the rest is not, in both implementations alike."""
    ours, theirs = (raw(path, request_) for path in both)
    assert re.fullmatch(rb"errno=-\d+\n\n", ours)
    assert ours == theirs
    assert config_of(both[0]) == config_of(both[1])


def conversation(path: str, requests: list[bytes]) -> list[bytes]:
    """Send each request on one connection once the previous one is
    answered; the answers (or b"" if the server hung up)."""
    answers = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        for request in requests:
            sock.sendall(request)
            answer = b""
            while not answer.endswith(b"\n\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            answers.append(answer)
    return answers


def test_after_a_bad_line_the_connection_serves_on_as_wireguard_go(both: list[str]) -> None:
    """wireguard-go answers the bad line and serves the next request of a
    client that waited for the answer; so do we. Also for a number of 5000
    digits, which once raised in int() and hung up."""
    requests = [
        b"set=1\nfwmark=3\nlisten_port=x\nfwmark=4\n\n",
        b"set=1\nlisten_port=" + b"9" * 5000 + b"\n\n",
        b"get=1\n\n",
    ]
    ours, theirs = (conversation(path, requests) for path in both)
    assert ours[:2] == theirs[:2] == [b"errno=-22\n\n"] * 2

    def without_port(answer: bytes) -> list[bytes]:
        return [ln for ln in answer.split(b"\n") if not ln.startswith(b"listen_port=")]

    assert without_port(ours[2]) == without_port(theirs[2])
    assert b"fwmark=3\n" in ours[2] and ours[2].endswith(b"errno=0\n\n")


def test_numbers_with_leading_zeros_as_wireguard_go(both: list[str]) -> None:
    """Go's strconv.ParseUint takes any number of leading zeros."""
    zeros = "0" * 5000
    # (The keepalive on a peer without an endpoint, so that neither sends.)
    lines = [f"fwmark={zeros}7", f"public_key={'c' * 64}",
             f"persistent_keepalive_interval={zeros}25", "allowed_ip=10.0.0.0/24",
             f"public_key={'d' * 64}", f"endpoint=192.0.2.9:{zeros}51820"]  # fmt: skip
    for path in both:
        assert raw(path, request_for(lines)) == b"errno=0\n\n"
    assert config_of(both[0]) == config_of(both[1])
    assert b"fwmark=7" in config_of(both[0])[0]


# --- an endpoint's host name, resolved as wg resolves it -----------------------------------

_RESOLVE = """
import asyncio, logging, sys
logging.basicConfig(format="%(message)s", stream=sys.stderr)
from wireguard.io.resolve import resolve_endpoint
try:
    asyncio.run(resolve_endpoint("example.com", 1))
except OSError as exc:
    print(exc.strerror, file=sys.stderr)
    sys.exit(1)
"""


def test_endpoint_resolution_is_retried_as_wg_retries() -> None:
    """In a network namespace of its own no DNS server answers: a transient
    failure, which wg retries WG_ENDPOINT_RESOLUTION_RETRIES times with
    growing pauses. Ours says the same, line for line."""
    need(os.geteuid() == 0, "unshare --net needs root")
    need_tool("wg")
    need_tool("unshare")
    env = {**os.environ, "WG_ENDPOINT_RESOLUTION_RETRIES": "2",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # fmt: skip
    key = PrivateKey.generate().public_key.to_base64()
    theirs = subprocess.run(
        ["unshare", "--net", "wg", "set", "nonexist0", "peer", key, "endpoint", "example.com:1"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    ours = subprocess.run(["unshare", "--net", sys.executable, "-c", _RESOLVE],
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert theirs.returncode == ours.returncode == 1
    assert theirs.stderr.count("Trying again") == 2
    assert ours.stderr == theirs.stderr
