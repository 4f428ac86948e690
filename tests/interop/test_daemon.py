"""``wireguard-sansio``, the drop-in for wireguard-go (issue 13): its command
line, exit statuses and messages against wireguard-go's own; its lifetime
(as long as its interface); and everything configured from outside taking
effect at once (``wg set``/``setconf``/``addconf``, ``ip link`` MTU, up and
down, counters), each scenario run with wireguard-go in its place too
(``impl``), the other side of the tunnel being wireguard-go.

The network behaviours (roaming, NAT, sticky sources, floods, huge
configurations) are in ``test_daemon_network.py``, wg-quick in
``test_wg_quick.py``.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.conftest import need
from tests.interop.daemon import (
    GO,
    IMPLS,
    PORT_A,
    PORT_B,
    ROOT,
    RUN_DIR,
    SANSIO,
    TUN_V4,
    TUN_V6,
    Impl,
    Node,
    Pair,
    alive,
    daemon_pid,
    endpoint_of,
    interface_section,
    make_impl,
    netns,
    pair,
    peer_section,
    socket_pid,
    topology,
    unique,
    wait_until,
)
from tests.interop.harness import UNDER_V4, run
from wireguard.io.control import query
from wireguard.keys import PresharedKey, PrivateKey

pytestmark = pytest.mark.interop

_STAMP = re.compile(r"^(ERROR|DEBUG): \([^)]*\) \d{4}/\d\d/\d\d \d\d:\d\d:\d\d ")


def errors(output: str) -> list[str]:
    """wireguard-go's log lines without the interface name and time."""
    return [_STAMP.sub(r"\1: ", line) for line in output.splitlines() if _STAMP.match(line)]


def answers(name: str) -> bool:
    try:
        return "errno=0" in query(str(RUN_DIR / f"{name}.sock"), timeout=2)
    except OSError:
        return False


def command(which: Impl, *args: str, prefix: tuple[str, ...] = (), ns: str | None = None,
            **env: str) -> subprocess.CompletedProcess:  # fmt: skip
    where = ("ip", "netns", "exec", ns) if ns else ()
    return run(*where, *prefix, *which.argv, *args, check=False,
               env=dict(os.environ, **which.env, **env))  # fmt: skip


# --------------------------------------------------------------------------- command line


def test_console_script_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"][SANSIO] == "wireguard.cli.daemon:main"


@pytest.mark.parametrize(
    "args", [(), ("a", "b", "c"), ("-f",), ("--foreground",), ("-f", "x", "y")], ids=repr
)
def test_usage_as_wireguard_go(args: tuple[str, ...], tmp_path: Path) -> None:
    """A wrong command line prints the usage, and exits 0, as wireguard-go."""
    need(os.geteuid() == 0 or not args, "a command line that names an interface needs root")
    results = {}
    for name in IMPLS:
        got = command(make_impl(name, tmp_path), *args)
        results[name] = (got.returncode, got.stdout.replace(name, "PROG"))
    assert results[SANSIO] == results[GO]
    assert results[SANSIO] == (0, "Usage: PROG [-f/--foreground] INTERFACE-NAME\n")


def test_version_and_help(tmp_path: Path) -> None:
    ours, theirs = make_impl(SANSIO, tmp_path), make_impl(GO, tmp_path)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    mine, go_version = command(ours, "--version"), command(theirs, "--version")
    assert mine.returncode == go_version.returncode == 0
    lines, reference = mine.stdout.splitlines(), go_version.stdout.splitlines()
    assert lines[0] == f"{SANSIO} v{version}" and reference[0].startswith(f"{GO} v")
    assert lines[1] == reference[1] == ""
    assert lines[2].startswith("Userspace WireGuard daemon for linux-")
    assert reference[2].startswith("Userspace WireGuard daemon for linux-")
    # --help: the usage and what the command does; no interface called --help.
    got = command(ours, "--help")
    assert got.returncode == 0 and got.stdout.splitlines()[0] == f"Usage: {SANSIO} " + (
        "[-f/--foreground] INTERFACE-NAME"
    )
    assert "WG_QUICK_USERSPACE_IMPLEMENTATION" in got.stdout
    assert not (RUN_DIR / "--help.sock").exists()


# --------------------------------------------------------------------------- setup errors


def _failure(which: Impl, tmp: Path, case: str) -> tuple[int, list[str], bool]:
    """Run *case* with *impl*: exit status, error lines, and whether a
    process of it is left serving (it must not be, except the first one)."""
    with topology() as h:
        name = unique("se")
        node = Node(which, h.a, name)
        first: Node | None = None
        prefix: tuple[str, ...] = ()
        try:
            if case == "name in use":
                first = node
                node.start()
            elif case == "not a TUN":
                peer = "p" + name[:14]
                run("ip", "-n", h.a, "link", "add", name, "type", "veth", "peer", "name", peer)
            elif case == "no privilege":
                prefix = ("setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin")
            elif case == "no /dev/net/tun":
                prefix = ("unshare", "-m", "sh", "-c",
                          'mount -t tmpfs none /dev/net && exec "$@"', "sh")  # fmt: skip
            elif case == "control socket in use":
                first = node
                node.start()  # in A; the second is in B: another TUN, the same socket
            elif case == "name too long":
                name = "sixteen-chars-xx"
            elif case == "bad name":
                name = "bad/name"
            ns = h.b if case == "control socket in use" else h.a
            got = command(which, name, prefix=prefix, ns=ns)
            left = False
            if case == "control socket in use":
                # The first still serves; the second left no interface behind.
                assert first is not None and first.pid is not None and alive(first.pid)
                assert answers(name)
                left = run("ip", "-n", h.b, "link", "show", name, check=False).returncode == 0
            elif case != "name in use" and case not in ("name too long", "bad name"):
                left = (RUN_DIR / f"{name}.sock").exists()
            return got.returncode, [x.replace(name, "NAME") for x in errors(got.stdout)], left
        finally:
            node.stop()


@pytest.mark.parametrize(
    "case",
    [
        "name in use",
        "not a TUN",
        "no privilege",
        "no /dev/net/tun",
        "control socket in use",
        "name too long",
        "bad name",
    ],
)
def test_setup_errors_as_wireguard_go(case: str, tmp_path: Path) -> None:
    """Each way of failing to set up: exit status 1 and the error line
    wireguard-go prints, word for word, and nothing left behind."""
    results = {name: _failure(make_impl(name, tmp_path), tmp_path, case) for name in IMPLS}
    print(results)
    assert results[SANSIO] == results[GO]
    status, lines, left = results[SANSIO]
    assert status == 1 and len(lines) == 1 and lines[0].startswith("ERROR: ") and not left


# --------------------------------------------------------------------------- lifetime


def test_returns_when_ready_and_works_moved_to_another_namespace(
    impl: Impl, go: Impl, tmp_path: Path
) -> None:
    """The command returns once the interface exists and the socket answers,
    so a script may move the interface at once; in the other namespace it is
    configured (addresses, MTU, up and down) and carries traffic, while the
    process and its UDP socket stay where they were started."""
    with topology() as h:
        inside = netns(h, "c")
        a, b = Node(impl, h.a, unique("mv")), Node(go, h.b, unique("gb"))
        try:
            # Debian's wireguard-go 0.0.20220316 cannot be moved at once: its
            # background process opens the TUN again by name after the command
            # returned ("Failed to create TUN device: no such device" in 6 of
            # 15 tries here), so the reference waits until it answers. Ours
            # is moved the moment the command returns.
            settle = "" if impl.ours else f"wg show {a.name} >/dev/null && "
            script = (
                f'"$@" {a.name} && {settle}ip link set {a.name} netns {inside} && wg show {a.name}'
            )
            env = dict(os.environ, **impl.env)
            got = run("ip", "netns", "exec", h.a, "sh", "-c", script, "sh", *impl.argv,
                      env=env, check=False)  # fmt: skip
            assert got.returncode == 0, got.stdout + got.stderr
            assert f"interface: {a.name}" in got.stdout
            a.pid = daemon_pid(h.a, a.name)
            a.where = inside
            b.start()
            a.setconf(
                interface_section(a, PORT_A)
                + peer_section(b, [f"{TUN_V4[1]}/32"], endpoint_of(UNDER_V4[1], PORT_B)),
                tmp_path,
            )
            b.setconf(
                interface_section(b, PORT_B)
                + peer_section(a, [f"{TUN_V4[0]}/32"], endpoint_of(UNDER_V4[0], PORT_A)),
                tmp_path,
            )
            a.up([f"{TUN_V4[0]}/24"])
            b.up([f"{TUN_V4[1]}/24"])
            p = Pair(h, a, b, tmp_path, UNDER_V4)
            assert p.reaches(a, TUN_V4[1]) and p.reaches(b, TUN_V4[0])
            # The process and its UDP socket are in A; the interface is not.
            assert PORT_A in a.udp_ports()
            assert run("ip", "-n", h.a, "link", "show", a.name, check=False).returncode != 0
            assert run("ip", "netns", "identify", str(a.pid)).stdout.strip() == h.a
            # Its MTU, set in there, is honoured: 8,000-byte pings, unfragmented inside.
            a.ip("link", "set", a.name, "mtu", "9000")
            b.ip("link", "set", b.name, "mtu", "9000")
            got = p.ping(a, TUN_V4[1], 3, 10, "-s", "8000", "-M", "do")
            assert got.returncode == 0, got.stdout
            # Down and up in there: traffic again after. (Ours also closes the
            # UDP socket in A meanwhile, as the kernel module does: see
            # test_link_down_and_up.)
            a.ip("link", "set", a.name, "down")
            if impl.ours:
                wait_until(lambda: PORT_A not in a.udp_ports(), 10, "the UDP socket to close")
            a.ip("link", "set", a.name, "up")
            wait_until(lambda: PORT_A in a.udp_ports(), 10, "the UDP socket to open")
            assert p.reaches(a, TUN_V4[1], 3, 15)
        finally:
            a.stop()
            b.stop()


@pytest.mark.parametrize(
    "way", ["ip link del", "ip link del elsewhere", "socket removed", "SIGTERM", "SIGINT"]
)
def test_lives_as_long_as_its_interface(impl: Impl, way: str) -> None:
    """The process ends, and takes its interface and socket file with it,
    when the interface is deleted (also from the namespace it was moved to),
    when the socket file is removed, and on SIGTERM or SIGINT."""
    with topology() as h:
        node = Node(impl, h.a, unique("lt"))
        try:
            node.start()
            pid = node.pid
            assert pid is not None and node.link_exists()
            sock = RUN_DIR / f"{node.name}.sock"
            if way == "ip link del":
                node.ip("link", "del", node.name)
            elif way == "ip link del elsewhere":
                inside = netns(h, "c")
                node.ip("link", "set", node.name, "netns", inside)
                node.where = inside
                time.sleep(0.5)
                assert alive(pid)
                node.ip("link", "del", node.name)
            elif way == "socket removed":
                sock.unlink()
            else:
                os.kill(pid, getattr(signal, way))
            wait_until(lambda: not alive(pid), 15, f"{impl.name} to end after {way}")
            assert not sock.exists()
            assert not node.link_exists()
        finally:
            node.stop()


def test_foreground_stays_and_passes_the_environment(sansio: Impl) -> None:
    """-f stays in the foreground and logs at LOG_LEVEL=verbose on standard
    output, as wireguard-go; a TUN and a control socket passed as WG_TUN_FD
    and WG_UAPI_FD are the ones served."""
    with topology() as h:
        name = unique("fg")
        env = dict(os.environ, LOG_LEVEL="verbose")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", h.a, *sansio.argv, "-f", name],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        try:
            wait_until(lambda: answers(name), 15, "the socket to answer")
            assert socket_pid(name) == proc.pid  # `ip netns exec` execs: no fork
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=15)
            assert proc.returncode == 0, out
            lines = errors(out)
            assert lines[0].startswith(f"DEBUG: Starting {SANSIO} version")
            assert "DEBUG: UAPI listener started" in lines
            assert any(line.startswith("DEBUG: Shutting down") for line in lines)
            assert all(f"({name})" in line for line in out.splitlines() if line[:1] in "ED")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        # The fds of wireguard-go's daemonizing, passed by hand.
        helper = (
            "import os, socket, subprocess, sys\n"
            "from wireguard.io.tun import Tun\n"
            "from wireguard.io import control\n"
            "tun = Tun.create(sys.argv[1])\n"
            "sock = control._bind(control.socket_path(sys.argv[1]))\n"
            "os.dup2(tun.fd, 3); os.dup2(sock.fileno(), 4)\n"
            "env = dict(os.environ, WG_TUN_FD='3', WG_UAPI_FD='4', WG_PROCESS_FOREGROUND='1')\n"
            "sys.exit(subprocess.run(sys.argv[2:] + [sys.argv[1]], env=env, pass_fds=(3, 4),\n"
            "                        timeout=60).returncode)\n"
        )
        name = unique("fd")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", h.a, sys.executable, "-c", helper, name, *sansio.argv],
            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_until(lambda: answers(name), 15, "the socket to answer")
            assert f"interface: {name}" in run("wg", "show", name).stdout
            run("ip", "-n", h.a, "link", "del", name)
            assert proc.wait(15) == 0
            assert not (RUN_DIR / f"{name}.sock").exists()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            (RUN_DIR / f"{name}.sock").unlink(missing_ok=True)


# --------------------------------------------------------------------------- configuration


def test_wg_set_takes_effect_at_once(impl: Impl, go: Impl, tmp_path: Path) -> None:
    """Peers, allowed IPs, endpoints, persistent keepalive and addconf, set
    on a running interface, act on the next packet."""
    with pair(impl, go, tmp_path) as p:
        a, b = p.a, p.b
        assert p.reaches(a, TUN_V4[1])
        # Allowed IPs: a prefix routed to the interface goes nowhere until
        # the peer has it.
        b.ip("addr", "add", "10.82.0.2/32", "dev", b.name)
        b.wg("set", b.name, "peer", a.public, "allowed-ips", f"{TUN_V4[0]}/32,{TUN_V6[0]}/128")
        a.ip("route", "add", "10.82.0.0/24", "dev", a.name)
        assert not p.reaches(a, "10.82.0.2", 2, 3)
        a.wg("set", a.name, "peer", b.public, "allowed-ips",
             f"{TUN_V4[1]}/32,{TUN_V6[1]}/128,10.82.0.0/24")  # fmt: skip
        assert p.reaches(a, "10.82.0.2")
        # Endpoint: to B's IPv6 address; B sees us arrive from ours.
        a.wg("set", a.name, "peer", b.public, "endpoint", f"[fd77::2]:{PORT_B}")
        assert p.reaches(a, TUN_V4[1])
        assert b.endpoint(a.public) == f"[fd77::1]:{PORT_A}"
        # Persistent keepalive: B hears from us with no traffic at all.
        before = b.wg("show", b.name, "transfer").split()
        a.wg("set", a.name, "peer", b.public, "persistent-keepalive", "1")
        time.sleep(3.5)
        after = b.wg("show", b.name, "transfer").split()
        assert int(after[1]) >= int(before[1]) + 3 * 32, (before, after)
        # addconf adds a peer (and keeps the old one working).
        extra = PrivateKey.generate().public_key
        a.setconf(f"[Peer]\nPublicKey = {extra}\nAllowedIPs = 10.83.0.0/24\n", tmp_path, "addconf")
        assert str(extra) in a.wg("show", a.name, "peers").split()
        assert p.reaches(a, TUN_V4[1])
        a.wg("set", a.name, "peer", str(extra), "remove")
        assert a.wg("show", a.name, "peers").split() == [b.public]


def test_preshared_key_and_private_key(impl: Impl, go: Impl, tmp_path: Path) -> None:
    """A preshared key set on one side only fails the next handshake; on
    both, it succeeds. A new private key is used from the next handshake."""
    with pair(impl, go, tmp_path) as p:
        a, b = p.a, p.b
        assert p.reaches(a, TUN_V4[1])
        psk = tmp_path / "psk"
        psk.write_text(str(PresharedKey.generate()) + "\n")
        psk.chmod(0o600)
        # The peer anew, with the key: its next handshake uses it.
        a.wg("set", a.name, "peer", b.public, "remove")
        to_b = endpoint_of(UNDER_V4[1], PORT_B)
        a.wg("set", a.name, "peer", b.public, "preshared-key", str(psk),
             "allowed-ips", f"{TUN_V4[1]}/32", "endpoint", to_b)  # fmt: skip
        assert not p.reaches(a, TUN_V4[1], 3, 4)
        b.wg("set", b.name, "peer", a.public, "preshared-key", str(psk))
        assert p.reaches(a, TUN_V4[1], 3, 20)  # the next retry (5 s) completes
        # A new key: B must learn the new public key to talk to us.
        key = PrivateKey.generate()
        path = tmp_path / "key"
        path.write_text(str(key) + "\n")
        path.chmod(0o600)
        a.wg("set", a.name, "private-key", str(path))
        assert a.wg("show", a.name, "public-key").strip() == str(key.public_key)
        b.wg("set", b.name, "peer", a.public, "remove")
        b.wg("set", b.name, "peer", str(key.public_key), "allowed-ips",
             f"{TUN_V4[0]}/32", "preshared-key", str(psk),
             "endpoint", endpoint_of(UNDER_V4[0], PORT_A))  # fmt: skip
        assert p.reaches(a, TUN_V4[1], 3, 20)


def test_listen_port_and_fwmark(impl: Impl, go: Impl, tmp_path: Path) -> None:
    """A new listen port is bound at once (the old one closed) and the peer
    follows; a firewall mark is on every datagram from then on."""
    with pair(impl, go, tmp_path) as p:
        a, b = p.a, p.b
        assert p.reaches(a, TUN_V4[1])
        a.wg("set", a.name, "listen-port", "51999")
        assert PORT_A not in a.udp_ports() and 51999 in a.udp_ports()
        assert p.reaches(a, TUN_V4[1])
        assert b.endpoint(a.public) == f"{UNDER_V4[0]}:51999"
        assert p.reaches(b, TUN_V4[0])
        # fwmark: an iptables rule in A counts the marked datagrams.
        rule = ["OUTPUT", "-p", "udp", "--dport", str(PORT_B), "-m", "mark", "--mark", "0x77"]
        a.exec("iptables", "-t", "mangle", "-A", *rule, "-j", "ACCEPT")
        a.wg("set", a.name, "fwmark", "0x77")
        assert a.wg("show", a.name, "fwmark").strip() == "0x77"
        assert p.reaches(a, TUN_V4[1], 5)
        counted = a.exec("iptables", "-t", "mangle", "-L", "OUTPUT", "-v", "-n", "-x").stdout
        packets = int(next(line for line in counted.splitlines() if "MARK" in line.upper()
                           or "0x77" in line).split()[0])  # fmt: skip
        assert packets >= 5, counted


def test_mtu_up_to_64k_with_offloads(impl: Impl, go: Impl, tmp_path: Path) -> None:
    """`ip link set mtu 65000` is honoured: 64,000-byte pings go through
    unfragmented inside, and TCP at that MTU carries a transfer whose sha256
    matches, both ways, with the TUN offloads on."""
    with pair(impl, go, tmp_path) as p:
        a, b = p.a, p.b
        for node in (a, b):
            node.ip("link", "set", node.name, "mtu", "65000")
        if impl.ours:
            assert "vnet_hdr on" in a.ip("-d", "link", "show", a.name).stdout
        got = p.ping(a, TUN_V4[1], 3, 15, "-s", "64000", "-M", "do")
        assert got.returncode == 0, got.stdout
        got = p.ping(b, TUN_V6[0], 3, 15, "-s", "64000", "-M", "do")
        assert got.returncode == 0, got.stdout
        transfer(p, b, a, TUN_V4[1], 20_000_000)  # A sends
        transfer(p, a, b, TUN_V6[0], 20_000_000)  # A receives


_SERVER = r"""
import hashlib, socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5999)); s.listen(1); print("listening", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while d := c.recv(1 << 20):
    h.update(d); n += len(d)
print(n, h.hexdigest(), flush=True)
"""

_CLIENT = r"""
import hashlib, random, socket, sys
size = int(sys.argv[2]); rng = random.Random(7); h = hashlib.sha256(); sent = 0
c = socket.create_connection((sys.argv[1], 5999), timeout=60)
while sent < size:
    block = rng.randbytes(min(1 << 20, size - sent)); c.sendall(block); h.update(block)
    sent += len(block)
c.shutdown(socket.SHUT_WR); c.recv(1); print(sent, h.hexdigest(), flush=True)
"""


def transfer(p: Pair, server: Node, client: Node, address: str, size: int) -> None:
    listener = subprocess.Popen(
        ["ip", "netns", "exec", server.where, sys.executable, "-c", _SERVER, address],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "listening"
        sent = client.exec(sys.executable, "-c", _CLIENT, address, str(size), timeout=120)
        got = listener.stdout.readline().split()
        assert sent.stdout.split() == got and int(got[0]) == size
    finally:
        if listener.poll() is None:
            listener.kill()
        listener.wait(5)


def test_link_down_and_up(impl: Impl, go: Impl, tmp_path: Path) -> None:
    """Down stops the tunnel and up starts it again.

    Ours does what the kernel module does (``wg_stop``/``wg_open``) and
    wireguard-go means to do: down closes the UDP socket and forgets every
    session; up opens the socket and the next packet makes a new handshake.
    wireguard-go 0.0.20220316 notices neither on this kernel (its zero-length
    TUN write answers EINVAL up or down, and its netlink listener reports
    down only after an up in the same read), so for it only the traffic is
    checked."""
    with pair(impl, go, tmp_path) as p:
        a, b = p.a, p.b
        assert p.reaches(a, TUN_V4[1])
        first = a.latest_handshake(b.public)
        time.sleep(1.1)  # handshake times have one-second resolution
        a.ip("link", "set", a.name, "down")
        assert not p.reaches(a, TUN_V4[1], 2, 3)
        if impl.ours:
            wait_until(lambda: PORT_A not in a.udp_ports(), 10, "the UDP socket to close")
            assert not p.reaches(b, TUN_V4[0], 2, 3)  # nobody listens on A's port
        a.ip("link", "set", a.name, "up")
        wait_until(lambda: PORT_A in a.udp_ports(), 10, "the UDP socket to open")
        assert p.reaches(a, TUN_V4[1], 3, 15)
        assert p.reaches(b, TUN_V4[0], 3, 15)
        if impl.ours:
            assert a.latest_handshake(b.public) > first


def test_interface_counters(impl: Impl, go: Impl, tmp_path: Path) -> None:
    """`ip -s link` counts the tunnel's traffic: packets and bytes both ways."""
    with pair(impl, go, tmp_path) as p:
        a, b = p.a, p.b
        assert p.reaches(a, TUN_V4[1])
        before = a.stats()
        got = p.ping(a, TUN_V4[1], 20, 20, "-s", "1000")
        assert got.returncode == 0
        transfer(p, a, b, TUN_V4[0], 5_000_000)  # B sends 5 MB to A
        after = a.stats()
        delta = {k: after[k] - before[k] for k in after}
        assert delta["tx_packets"] >= 20 and delta["rx_packets"] >= 20, delta
        assert delta["tx_bytes"] >= 20 * 1028 and delta["rx_bytes"] >= 5_000_000, delta


def test_peer_counters_match_the_other_side(impl: Impl, go: Impl, tmp_path: Path) -> None:
    """`wg show transfer`: what we sent is what the peer received."""
    with pair(impl, go, tmp_path) as p:
        a, b = p.a, p.b
        assert p.reaches(a, TUN_V4[1], 10)
        time.sleep(0.5)
        ours = a.wg("show", a.name, "transfer").split()
        theirs = b.wg("show", b.name, "transfer").split()
        assert int(ours[2]) == int(theirs[1]) and int(ours[1]) == int(theirs[2])
        digest = hashlib.sha256(a.wg("show", a.name, "dump").encode()).hexdigest()
        assert digest  # the dump parses for `wg`
