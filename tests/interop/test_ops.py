"""``forward`` under an orchestrator, against wireguard-go in another namespace:
``--metrics`` (``/metrics`` parsed by prometheus_client's text parser, its
counters checked against wireguard-go's ``wg show``, ``/healthz`` flipping to
503 when the peer goes away and back when it returns) and endpoint names
re-resolved when the name changes address in dnsmasq during a session.

    A: forwarder (user nobody, no TUN)         B: wireguard-go, tun 10.77.0.2
       stack address 10.77.0.1                    python -m http.server
       curl -> 127.0.0.1:8080 (-L)                dnsmasq on 192.168.77.2:53
       /etc/resolv.conf -> 192.168.77.2           (its hosts file names the peer)

The forwarder resolves the peer's Endpoint name with the host's resolver; its
namespace's resolv.conf is /etc/netns/A/resolv.conf, which ``ip netns exec``
bind-mounts over /etc/resolv.conf for the command only (removed afterwards).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import IN_CI, need, need_tool, self_signed_pem
from tests.interop.harness import UNDER_V4, Hosts, WireGuardGo, hosts
from tests.interop.test_forward import Forwarder, nobody_script
from wireguard.keys import PrivateKey

pytestmark = pytest.mark.interop

TUN_A, TUN_B = "10.77.0.1", "10.77.0.2"
PORT_A, PORT_B = 51821, 51820
HTTP_B = 8000
METRICS = 9109
FILE_SIZE = 1 << 20


class Site:
    """Namespaces A and B, wireguard-go and an HTTP server in B, a config for A."""

    def __init__(self, h: Hosts, workdir: Path, endpoint: str, b_knows_a: bool) -> None:
        self.h, self.workdir = h, workdir
        self.key_a, self.key_b = PrivateKey.generate(), PrivateKey.generate()
        www = workdir / "www"
        www.mkdir()
        (www / "file").write_bytes(hashlib.shake_256(b"ops").digest(FILE_SIZE))
        self.sha = hashlib.sha256((www / "file").read_bytes()).hexdigest()
        self.wg = WireGuardGo(h, h.b, f"wgo{h.tag}")
        self.b_knows_a = b_knows_a
        self.start_peer()
        confdir = workdir / "conf"
        confdir.mkdir(mode=0o700)
        self.config = confdir / "wgops.conf"
        self.config.write_text(
            f"[Interface]\nPrivateKey = {self.key_a}\nListenPort = {PORT_A}\n"
            f"Address = {TUN_A}/24\n"
            f"[Peer]\nPublicKey = {self.key_b.public_key}\nAllowedIPs = {TUN_B}/32\n"
            f"Endpoint = {endpoint}\n"
        )
        self.config.chmod(0o600)
        nobody = pwd.getpwnam("nobody")
        os.chown(confdir, nobody.pw_uid, nobody.pw_gid)
        os.chown(self.config, nobody.pw_uid, nobody.pw_gid)
        self.servers: list[subprocess.Popen[bytes]] = []
        self.spawn(h.b, sys.executable, "-m", "http.server", "--bind", TUN_B,
                   "--directory", str(www), str(HTTP_B))  # fmt: skip

    def start_peer(self) -> None:
        """wireguard-go in B; if it knows A's endpoint, it starts the handshake
        itself (a keepalive every second, the first at once)."""
        peer = f"[Peer]\nPublicKey = {self.key_a.public_key}\nAllowedIPs = {TUN_A}/32\n"
        if self.b_knows_a:
            peer += f"Endpoint = {UNDER_V4[0]}:{PORT_A}\nPersistentKeepalive = 1\n"
        self.wg.start(
            f"[Interface]\nPrivateKey = {self.key_b}\nListenPort = {PORT_B}\n" + peer,
            [f"{TUN_B}/24"],
        )

    def spawn(self, ns: str, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *args], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        self.servers.append(proc)
        return proc

    def sh(self, script: str, timeout: float = 180, check: bool = True) -> str:
        result = subprocess.run(["ip", "netns", "exec", self.h.a, "sh", "-c", script],
                                capture_output=True, text=True, timeout=timeout)  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"{script!r} failed: {result.stderr.strip()}")
        return result.stdout

    def download(self, max_time: int = 120) -> str:
        got = self.workdir / "got"
        cmd = shlex.join(["curl", "-sS", "--fail", "--noproxy", "*", "--max-time", str(max_time),
                          "-o", str(got), "http://127.0.0.1:8080/file"])  # fmt: skip
        self.sh(cmd, timeout=max_time + 30)
        return hashlib.sha256(got.read_bytes()).hexdigest()

    def http(self, path: str) -> tuple[int, str]:
        """(status, body) of GET *path* on the metrics server, fetched by curl in A."""
        cmd = shlex.join(["curl", "-sS", "--noproxy", "*", "--max-time", "30",
                          "-w", "\n%{http_code}", f"http://127.0.0.1:{METRICS}{path}"])  # fmt: skip
        out = self.sh(cmd, timeout=60)
        body, _, code = out.rpartition("\n")
        return int(code), body

    def close(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait(5)
        self.wg.stop()


@contextlib.contextmanager
def site(endpoint: str, *, b_knows_a: bool) -> Iterator[Site]:
    for tool in ("setpriv", "curl"):
        need_tool(tool)
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        need(False, "there is no user nobody")
    with hosts() as h, tempfile.TemporaryDirectory(prefix="pywg-ops-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        s = Site(h, workdir, endpoint, b_knows_a)
        try:
            yield s
        finally:
            s.close()


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _sample(families: dict, family: str, **labels: str) -> float:
    found = [s.value for s in families[family].samples
             if all(s.labels.get(k) == v for k, v in labels.items())]  # fmt: skip
    assert len(found) == 1, (family, labels, families[family].samples)
    return found[0]


def _wait(predicate, what: str, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


# ------------------------------------------------------------- metrics and health


def test_metrics_and_healthz_follow_the_peer() -> None:
    max_age = 20
    with site(f"{UNDER_V4[1]}:{PORT_B}", b_knows_a=True) as s:
        forwarder = Forwarder(s.h.a, s.workdir, s.config, [
            "-L", f"8080:{TUN_B}:{HTTP_B}", "--metrics", f"127.0.0.1:{METRICS}",
            "--healthz-max-age", str(max_age),
        ])  # fmt: skip
        try:
            forwarder.wait_for(r"forward: ready", timeout=30)
            assert f"metrics on http://127.0.0.1:{METRICS}/metrics" in forwarder.output
            assert s.download() == s.sha
            # A handshake just happened: healthy.
            status, body = s.http("/healthz")
            assert status == 200, body
            families = _families(s.http("/metrics")[1])
            peer = {"interface": "wgops", "public_key": s.key_b.public_key.to_base64()}
            # prometheus_wireguard_exporter's names and labels, and wg's view on
            # the other side: what we sent is what wireguard-go received, give or
            # take keepalives in flight.
            peer_labels = families["wireguard_sent_bytes"].samples[0].labels
            assert peer_labels["allowed_ips"] == f"{TUN_B}/32"
            assert peer_labels["remote_ip"] == UNDER_V4[1]
            assert peer_labels["remote_port"] == str(PORT_B)
            sent = _sample(families, "wireguard_sent_bytes", **peer)
            received = _sample(families, "wireguard_received_bytes", **peer)
            _, their_rx, their_tx = s.wg.wg("show", s.wg.name, "transfer").split()
            assert abs(sent - int(their_rx)) <= 2000, (sent, their_rx)
            assert abs(received - int(their_tx)) <= 2000, (received, their_tx)
            assert received > FILE_SIZE
            their_hs = s.wg.latest_handshake()
            ours = _sample(families, "wireguard_latest_handshake_seconds", **peer)
            assert abs(ours - their_hs) <= 2, (ours, their_hs)
            # the forward's and the stack's counters
            forward = {"forward": f"-L tcp 127.0.0.1:8080 -> {TUN_B}:{HTTP_B}"}
            assert _sample(families, "wireguard_forward_total", **forward) >= 1
            assert _sample(families, "wireguard_forward_from_tunnel", **forward) >= FILE_SIZE
            assert _sample(families, "wireguard_stack_packets_received", interface="wgops") > 0
            assert "wireguard_stack_tcp_retransmits" in families

            # The peer goes away: no handshake can happen, /healthz turns 503 ...
            s.wg.stop()
            _wait(lambda: s.http("/healthz")[0] == 503, "/healthz 503 after the peer stopped")
            status, body = s.http("/healthz")
            assert f"no handshake with a peer in the last {max_age} s" in body
            families = _families(s.http("/metrics")[1])
            latest = _sample(families, "wireguard_latest_handshake_seconds", **peer)
            assert time.time() - latest >= max_age - 1  # the same story in /metrics
            # ... and back to 200 when it returns and shakes hands again.
            s.start_peer()
            _wait(lambda: s.http("/healthz")[0] == 200, "/healthz 200 after the peer returned")
            assert s.wg.latest_handshake() > 0
            assert s.download() == s.sha
        finally:
            forwarder.stop()
            print("\n" + forwarder.output)


# ------------------------------------------------------------------ re-resolution


class Dnsmasq:
    """dnsmasq in B answering from a hosts file, and A's resolv.conf pointing at it."""

    def __init__(self, s: Site) -> None:
        need_tool("dnsmasq")
        self.s = s
        self.hosts = s.workdir / "dns-hosts"
        self.netns_etc = Path(f"/etc/netns/{s.h.a}")
        self.proc: subprocess.Popen[str] | None = None

    def start(self, name: str, address: str) -> None:
        self.name = name
        self.set(address, reload=False)
        self.hosts.chmod(0o644)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.s.h.b, "dnsmasq", "--keep-in-foreground",
             "--conf-file=/dev/null", "--no-resolv", "--no-hosts", f"--addn-hosts={self.hosts}",
             f"--listen-address={UNDER_V4[1]}", "--bind-interfaces", "--user=root",
             f"--pid-file={self.s.workdir / 'dnsmasq.pid'}", "--log-queries",
             "--log-facility=-"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.netns_etc.mkdir(parents=True, exist_ok=True)
        (self.netns_etc / "resolv.conf").write_text(
            f"nameserver {UNDER_V4[1]}\noptions timeout:1 attempts:2\n"
        )
        # dnsmasq answers, seen from A as the forwarder will ask:
        _wait(lambda: address in self.s.sh(f"getent ahostsv4 {name}", check=False),
              "dnsmasq answering", timeout=30)  # fmt: skip

    def set(self, address: str, reload: bool = True) -> None:
        self.hosts.write_text(f"{address} {self.name}\n")
        if reload and self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)  # dnsmasq reads its hosts files again
            _wait(lambda: address in self.s.sh(f"getent ahostsv4 {self.name}", check=False),
                  "dnsmasq answering the new address", timeout=30)  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
        shutil.rmtree(self.netns_etc, ignore_errors=True)


OLD, NEW = "192.168.77.10", "192.168.77.11"
OLD_RE, NEW_RE = re.escape(OLD), re.escape(NEW)
CHANGED = (
    rf"endpoint peer-ops\.test:{PORT_B} now resolves to {NEW_RE}:{PORT_B} "
    rf"\(was {OLD_RE}:{PORT_B}\)"
)


def move(s: Site, dns: Dnsmasq, veth: str) -> None:
    """The peer's host moves: new record, new address, the old one gone,
    its WireGuard restarted (not knowing our endpoint, it cannot roam us)."""
    dns.set(NEW)
    s.h.exec(s.h.b, "ip", "addr", "add", f"{NEW}/24", "dev", veth)
    s.h.exec(s.h.b, "ip", "addr", "del", f"{OLD}/24", "dev", veth)
    s.wg.stop()
    s.start_peer()


@pytest.mark.parametrize(
    "rule",
    [
        pytest.param(["--reresolve-after", "8"], id="failing-handshakes"),
        pytest.param(["--reresolve-interval", "2", "--reresolve-after", "0"], id="interval"),
    ],
)
def test_the_tunnel_follows_its_peers_name_to_a_new_address(rule: list[str]) -> None:
    """The peer's host moves from OLD to NEW and its WireGuard restarts (it
    cannot reach us: it never knew our endpoint), the name's record changes
    in dnsmasq: the same forwarder process reaches it again. (Our session
    with the old process lives on until no answer for 15 s starts a new
    handshake, as in the kernel: hence a connect timeout past the SYN
    retransmission at 31 s.)"""
    with site(f"peer-ops.test:{PORT_B}", b_knows_a=False) as s:
        veth = f"vb{s.h.tag}"
        s.h.exec(s.h.b, "ip", "addr", "add", f"{OLD}/24", "dev", veth)
        dns = Dnsmasq(s)
        forwarder = None
        try:
            dns.start("peer-ops.test", OLD)
            forwarder = Forwarder(s.h.a, s.workdir, s.config,
                                  ["-L", f"8080:{TUN_B}:{HTTP_B}", "--connect-timeout", "120",
                                   *rule])  # fmt: skip
            forwarder.wait_for(r"forward: ready", timeout=30)
            assert "endpoint names re-resolved" in forwarder.output
            assert f"{OLD}:{PORT_B}" in forwarder.output  # the status names the endpoint
            assert s.download() == s.sha
            mark = len(forwarder.lines)
            move(s, dns, veth)
            forwarder.wait_for(CHANGED, timeout=90, after=mark)
            assert s.download() == s.sha
            # wireguard-go (the new one) shook hands with us at our address
            dump = s.wg.wg("show", s.wg.name, "endpoints").split()
            assert dump[1] == f"{UNDER_V4[0]}:{PORT_A}", dump
            assert s.wg.latest_handshake() > 0
            forwarder.proc.send_signal(signal.SIGUSR1)
            forwarder.wait_for(rf"peer .* {NEW_RE}:{PORT_B} handshake",
                               after=mark)  # fmt: skip
            assert forwarder.proc.poll() is None  # no restart
        finally:
            if forwarder is not None:
                forwarder.stop()
                print("\n" + forwarder.output)
            dns.stop()
        assert not dns.netns_etc.exists()


def test_up_follows_its_peers_name_to_a_new_address() -> None:
    """The same with ``up`` (a TUN interface, the kernel's TCP in namespace A)."""
    with site(f"peer-ops.test:{PORT_B}", b_knows_a=False) as s:
        veth = f"vb{s.h.tag}"
        s.h.exec(s.h.b, "ip", "addr", "add", f"{OLD}/24", "dev", veth)
        dns = Dnsmasq(s)
        name = f"pyo{s.h.tag}"
        conf = s.workdir / f"{name}.conf"
        conf.write_text(s.config.read_text())
        conf.chmod(0o600)
        log = s.workdir / f"{name}.log"
        up = [sys.executable, "-m", "wireguard", "up", "--log", str(log)]
        url = f"http://{TUN_B}:{HTTP_B}/file"
        got = s.workdir / "got-up"
        curl = shlex.join(["curl", "-sS", "--fail", "--noproxy", "*", "--max-time", "150",
                           "-o", str(got), url])  # fmt: skip
        try:
            dns.start("peer-ops.test", OLD)
            result = s.h.exec(s.h.a, *up, "--reresolve-after", "8", str(conf), check=False)
            assert result.returncode == 0, result.stderr + (log.read_text() if log.exists() else "")
            s.sh(curl, timeout=180)
            assert hashlib.sha256(got.read_bytes()).hexdigest() == s.sha
            move(s, dns, veth)
            _wait(lambda: re.search(CHANGED, log.read_text()) is not None,
                  "the re-resolution logged", timeout=90)  # fmt: skip
            got.unlink()
            s.sh(curl, timeout=180)
            assert hashlib.sha256(got.read_bytes()).hexdigest() == s.sha
            assert s.wg.latest_handshake() > 0
            endpoints = subprocess.run(["wg", "show", name, "endpoints"], capture_output=True,
                                       text=True, timeout=30).stdout.split()  # fmt: skip
            assert endpoints[1] == f"{NEW}:{PORT_B}", endpoints
        finally:
            subprocess.run([sys.executable, "-m", "wireguard", "down", name],
                           capture_output=True, timeout=60)  # fmt: skip
            if log.exists():
                print("\n" + log.read_text())
            dns.stop()


# ------------------------------------------------------- HTTP clients in-process

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def example(name: str) -> str:
    """The runnable example of docs/operations.md marked ``<!-- example: NAME -->``."""
    text = DOCS.read_text()
    found = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)^```", text, re.S | re.M)
    assert found, f"docs/operations.md has no example {name}"
    return found.group(1)


@pytest.mark.parametrize("client", ["httpx", "aiohttp"])
def test_docs_example_fetches_through_the_tunnel_as_nobody(client: str) -> None:
    pytest.importorskip(client) if not IN_CI else __import__(client)
    with site(f"{UNDER_V4[1]}:{PORT_B}", b_knows_a=False) as s:
        script = s.workdir / f"fetch_{client}.py"
        script.write_text(example(client))
        script.chmod(0o644)
        command = nobody_script(s.workdir, [str(script), str(s.config),
                                            f"http://{TUN_B}:{HTTP_B}/file"])  # fmt: skip
        result = subprocess.run(["ip", "netns", "exec", s.h.a, "sh", "-c", command],
                                capture_output=True, text=True, timeout=180)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["200", s.sha], result.stdout + result.stderr
        # and it was wireguard-go that carried it
        their_tx = s.wg.wg("show", s.wg.name, "transfer").split()[2]
        assert int(their_tx) > FILE_SIZE


TLS_SERVER = r"""
import http.server, ssl, sys
handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=sys.argv[4])
server = http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[3])
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""


def test_https_through_the_tunnel_with_httpx_httpcore_and_aiohttp() -> None:
    """TLS runs in the process over the stack's connection: a server with a
    certificate the client is told to trust, and one it does not trust."""
    import asyncio
    import ssl

    import aiohttp
    import httpcore
    import httpx

    from tests.interop.harness import socket_in_netns
    from wireguard.integrations.aiohttp import TunnelConnector
    from wireguard.integrations.httpcore import TunnelBackend
    from wireguard.integrations.httpx import TunnelTransport
    from wireguard.io.rootless import RootlessTunnel

    with site(f"{UNDER_V4[1]}:{PORT_B}", b_knows_a=False) as s:
        pem = s.workdir / "tls.pem"
        self_signed_pem(pem, [TUN_B])
        s.spawn(s.h.b, sys.executable, "-c", TLS_SERVER, TUN_B, "8443", str(pem),
                str(s.workdir / "www"))  # fmt: skip
        url = f"https://{TUN_B}:8443/file"
        trusted = ssl.create_default_context(cafile=str(pem))

        async def main() -> None:
            sock = socket_in_netns(s.h.a, port=PORT_A)
            tunnel = await RootlessTunnel.from_config(s.config, sock=sock)
            async with tunnel:
                # the server may take a moment to listen: retry the first request
                for attempt in range(30):
                    try:
                        async with httpx.AsyncClient(
                            transport=TunnelTransport(tunnel, verify=trusted), timeout=60
                        ) as client:
                            response = await client.get(url)
                        break
                    except httpx.ConnectError:
                        if attempt == 29:
                            raise
                        await asyncio.sleep(0.5)
                assert response.status_code == 200
                assert hashlib.sha256(response.content).hexdigest() == s.sha
                async with httpcore.AsyncConnectionPool(
                    ssl_context=trusted, network_backend=TunnelBackend(tunnel)
                ) as pool:
                    core = await pool.request("GET", url)
                    assert hashlib.sha256(core.content).hexdigest() == s.sha
                connector = TunnelConnector(tunnel, ssl=trusted)
                async with aiohttp.ClientSession(connector=connector) as session:
                    async with session.get(url) as got:
                        body = await got.read()
                        assert got.status == 200
                        assert hashlib.sha256(body).hexdigest() == s.sha
                    # keep-alive: a second request on the pooled connection
                    async with session.get(url) as got:
                        assert hashlib.sha256(await got.read()).hexdigest() == s.sha
                # an untrusted certificate is refused, with the reason
                with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                    async with httpx.AsyncClient(transport=TunnelTransport(tunnel)) as client:
                        await client.get(url)
                with pytest.raises(aiohttp.ClientError):
                    async with aiohttp.ClientSession(connector=TunnelConnector(tunnel)) as session:
                        await session.get(url)
                # outside every peer's AllowedIPs: at once, a clear error
                with pytest.raises(httpx.ConnectError, match="AllowedIPs"):
                    async with httpx.AsyncClient(transport=TunnelTransport(tunnel)) as client:
                        await client.get("http://10.99.0.1/")

        asyncio.run(main())
