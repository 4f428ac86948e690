"""``python -m wireguard proxy`` as an unprivileged user (namespace A) against
wireguard-go, dnsmasq and an ordinary HTTP server (namespace B).

    A: proxy (user nobody, no TUN)            B: wireguard-go, tun 10.77.0.2 / fd10::2
       stack 10.77.0.1 / fd10::1                 dnsmasq on 10.77.0.2:53 (web.internal,
       SOCKS5 127.0.0.1:1080, HTTP :8080            six.internal AAAA only)
       curl, httpx, a stdlib UDP client  ->      python -m http.server :8000, UDP echo

Names are resolved by dnsmasq in B, through the tunnel (the config's
``DNS = 10.77.0.2, internal`` line; ``web`` needs the search domain). Every
client is a real one: curl (``--socks5-hostname``, ``--proxy http://``),
httpx with socksio, and a UDP ASSOCIATE client written with the standard
socket module from RFC 1928's byte layout. The proxy runs as ``nobody`` as
tests/interop/test_forward.py runs the forwarder (same helper), on the
interpreter of the test run: .ci/matrix runs this file on Debian's
/usr/bin/python3 and on 3.13 too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import shlex
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need, need_tool
from tests.interop.harness import UNDER_V4, Hosts, WireGuardGo, hosts
from tests.interop.test_forward import UDP_ECHO, Forwarder, _write_random, nobody_script
from wireguard.keys import PrivateKey

pytestmark = pytest.mark.interop

TUN_A = ("10.77.0.1", "fd10::1")
TUN_B = ("10.77.0.2", "fd10::2")
PORT_A, PORT_B = 51831, 51830
BIG = 50 * 1000 * 1000  # the 50 MB
HTTP_B, UDP_ECHO_B = 8000, 5353
SOCKS, HTTP = 1080, 8080
TIMEOUT = 600

HTTPX_CLIENT = r"""
import hashlib, sys
import httpx
with httpx.Client(proxy=sys.argv[1], timeout=120) as client:
    with client.stream("GET", sys.argv[2]) as response:
        response.raise_for_status()
        h = hashlib.sha256()
        for chunk in response.iter_bytes():
            h.update(chunk)
print(h.hexdigest())
"""

UDP_ASSOCIATE_CLIENT = r"""
import ipaddress, socket, struct, sys
tcp = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
tcp.sendall(b"\x05\x01\x00")
assert tcp.recv(2) == b"\x05\x00"
tcp.sendall(b"\x05\x03\x00\x01" + bytes(6))          # UDP ASSOCIATE 0.0.0.0:0
reply = b""
while len(reply) < 10:
    reply += tcp.recv(10 - len(reply))
assert reply[:4] == b"\x05\x00\x00\x01", reply
relay = (str(ipaddress.IPv4Address(reply[4:8])), struct.unpack("!H", reply[8:10])[0])
name = sys.argv[2].encode()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.settimeout(1.0)
got = 0
for i in range(int(sys.argv[4])):
    msg = f"datagram {i}".encode()
    header = b"\x00\x00\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", int(sys.argv[3]))
    for attempt in range(5):
        udp.sendto(header + msg, relay)
        try:
            data = udp.recv(65535)
        except TimeoutError:
            continue
        # the reply's header carries the origin's address (IPv4 here), then the data
        if data[3] == 1 and data[10:] == b"echo:" + msg:
            got += 1
            break
print(got)
"""


class Setup:
    def __init__(self, h: Hosts, workdir: Path, proxy: Forwarder) -> None:
        self.h, self.workdir, self.proxy = h, workdir, proxy
        self.blob_sha = hashlib.sha256((workdir / "www" / "blob").read_bytes()).hexdigest()

    def sh(self, script: str, timeout: float = TIMEOUT) -> str:
        result = subprocess.run(
            ["ip", "netns", "exec", self.h.a, "sh", "-c", script],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if result.returncode != 0:
            raise AssertionError(
                f"{script!r} failed ({result.returncode}): {result.stderr.strip()}\n"
                f"proxy:\n{self.proxy.output}"
            )
        return result.stdout

    def curl_sha(self, *args: str) -> str:
        cmd = shlex.join(["curl", "-sS", "--fail", "--max-time", str(TIMEOUT), *args])
        return self.sh(f"{cmd} | sha256sum").split()[0]


@contextlib.contextmanager
def proxy_setup() -> Iterator[Setup]:
    for tool in ("setpriv", "curl", "dnsmasq"):
        need_tool(tool)
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        need(False, "there is no user nobody")
    with hosts() as h, tempfile.TemporaryDirectory(prefix="pywg-proxy-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        _write_random(workdir / "www" / "blob", BIG, b"proxy-blob")
        _write_random(workdir / "www" / "part", 1 << 20, b"proxy-part")
        key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
        wg = WireGuardGo(h, h.b, f"wgp{h.tag}")
        wg.start(
            "[Interface]\n"
            f"PrivateKey = {key_b}\nListenPort = {PORT_B}\n"
            "[Peer]\n"
            f"PublicKey = {key_a.public_key}\n"
            f"AllowedIPs = {TUN_A[0]}/32, {TUN_A[1]}/128\nEndpoint = {UNDER_V4[0]}:{PORT_A}\n",
            [f"{TUN_B[0]}/24", f"{TUN_B[1]}/64"],
        )
        names = workdir / "hosts"
        names.write_text(
            f"{TUN_B[0]} web.internal\n{TUN_B[1]} web.internal\n{TUN_B[1]} six.internal\n"
        )
        confdir = workdir / "conf"
        confdir.mkdir(mode=0o700)
        config = confdir / "a.conf"
        # An ordinary wg-quick file: wg-quick would take it as it is.
        config.write_text(
            "[Interface]\n"
            f"PrivateKey = {key_a}\nListenPort = {PORT_A}\n"
            f"Address = {TUN_A[0]}/24, {TUN_A[1]}/64\n"
            f"DNS = {TUN_B[0]}, internal\n"
            "[Peer]\n"
            f"PublicKey = {key_b.public_key}\n"
            f"AllowedIPs = {TUN_B[0]}/32, {TUN_B[1]}/128\nEndpoint = {UNDER_V4[1]}:{PORT_B}\n"
        )
        config.chmod(0o600)
        nobody = pwd.getpwnam("nobody")
        os.chown(confdir, nobody.pw_uid, nobody.pw_gid)
        os.chown(config, nobody.pw_uid, nobody.pw_gid)
        servers: list[subprocess.Popen[bytes]] = []

        def spawn(*args: str) -> None:
            servers.append(
                subprocess.Popen(["ip", "netns", "exec", h.b, *args], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )  # fmt: skip

        py = sys.executable
        spawn(py, "-m", "http.server", "--bind", "::", "--directory", str(workdir / "www"),
              str(HTTP_B))  # fmt: skip
        spawn(py, "-c", UDP_ECHO, TUN_B[0], str(UDP_ECHO_B))
        spawn(need_tool("dnsmasq"), "--no-daemon", "--conf-file=/dev/null", "--pid-file=",
              "--no-resolv", "--no-hosts", f"--addn-hosts={names}", "--port=53",
              f"--listen-address={TUN_B[0]}", "--bind-interfaces", "--local=/internal/",
              "--user=root")  # fmt: skip
        proxy = ProxyProcess(h.a, workdir, config)
        try:
            proxy.wait_for(r"proxy: ready", timeout=30)
            yield Setup(h, workdir, proxy)
        finally:
            proxy.stop()
            for server in servers:
                server.kill()
                server.wait(5)
            wg.stop()


class ProxyProcess(Forwarder):
    """``python -m wireguard proxy`` in namespace A, as nobody (the
    forwarder's runner, the other command)."""

    def __init__(self, ns: str, workdir: Path, config: Path) -> None:
        args = ["-m", "wireguard", "proxy", str(config), "--socks5", str(SOCKS),
                "--http", str(HTTP), "--status", "5"]  # fmt: skip
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "sh", "-c", nobody_script(workdir, args)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    with proxy_setup() as s:
        yield s


def test_proxy_runs_as_nobody(setup: Setup) -> None:
    status = Path(f"/proc/{setup.proxy.proc.pid}/status").read_text()
    uid = pwd.getpwnam("nobody").pw_uid
    assert re.search(rf"^Uid:\s+{uid}\s+{uid}\s+{uid}\s+{uid}$", status, re.M), status
    assert re.search(r"^CapEff:\s+0+$", status, re.M), status
    assert f"names through the tunnel by {TUN_B[0]}:53, search internal" in setup.proxy.output


def test_curl_socks5_hostname_downloads_50mb_named_by_dnsmasq(setup: Setup) -> None:
    # "web": the search domain of the DNS = line makes it web.internal
    digest = setup.curl_sha("--socks5-hostname", f"127.0.0.1:{SOCKS}", f"http://web:{HTTP_B}/blob")
    assert digest == setup.blob_sha


def test_curl_http_proxy_downloads_50mb(setup: Setup) -> None:
    digest = setup.curl_sha("--proxy", f"http://127.0.0.1:{HTTP}",
                            f"http://web.internal:{HTTP_B}/blob")  # fmt: skip
    assert digest == setup.blob_sha


def test_an_aaaa_only_name_over_ipv6_inside_the_tunnel(setup: Setup) -> None:
    digest = setup.curl_sha("--proxy", f"socks5h://127.0.0.1:{SOCKS}",
                            f"http://six.internal:{HTTP_B}/part")  # fmt: skip
    part = (setup.workdir / "www" / "part").read_bytes()
    assert digest == hashlib.sha256(part).hexdigest()


def test_httpx_through_the_socks5_proxy(setup: Setup) -> None:
    out = setup.sh(shlex.join([sys.executable, "-c", HTTPX_CLIENT, f"socks5://127.0.0.1:{SOCKS}",
                               f"http://web.internal:{HTTP_B}/blob"]))  # fmt: skip
    assert out.strip() == setup.blob_sha


def test_udp_through_udp_associate(setup: Setup) -> None:
    out = setup.sh(shlex.join([sys.executable, "-c", UDP_ASSOCIATE_CLIENT, str(SOCKS),
                               "web.internal", str(UDP_ECHO_B), "20"]), timeout=120)  # fmt: skip
    assert out.split() == ["20"]


def test_unknown_names_and_the_report(setup: Setup) -> None:
    """Runs last: it stops the proxy."""
    result = subprocess.run(
        ["ip", "netns", "exec", setup.h.a, "curl", "-sS", "--proxy",
         f"http://127.0.0.1:{HTTP}", "http://nothere.internal/"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "502" in result.stdout and "nothere.internal" in result.stdout, result
    assert setup.proxy.stop() == 0
    out = setup.proxy.output
    assert re.search(r"--socks5 127\.0\.0\.1:1080: \d+ clients, [1-9]\d* total", out), out
    assert re.search(r"--http 127\.0\.0\.1:8080: .*refused: host unreachable 1", out), out
    print("\n" + out)
