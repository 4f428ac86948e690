"""``wg-quick`` (Debian's wireguard-tools) with this implementation in the
place of wireguard-go: ``WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-sansio
wg-quick up CONFIG`` and ``down``, against wireguard-go in another
namespace; the same with wireguard-go itself (``impl``), so that a failure
is ours and not the scenario's.

DNS lines go through openresolv; its configuration is redirected for the
test's namespace (``ip netns exec`` mounts ``/etc/netns/NS/resolvconf.conf``
over ``/etc/resolvconf.conf``), so the host's ``/etc/resolv.conf`` is never
touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need_tool
from tests.interop.daemon import (
    PORT_A,
    PORT_B,
    RUN_DIR,
    TUN_V4,
    TUN_V6,
    Impl,
    Node,
    Pair,
    alive,
    daemon_pid,
    endpoint_of,
    interface_section,
    peer_section,
    topology,
    unique,
    wait_until,
)
from tests.interop.harness import UNDER_V4, Hosts, run
from wireguard.keys import PrivateKey

pytestmark = pytest.mark.interop

B_V4_BEYOND = "203.0.113.80"  # on B's loopback: reachable only through the tunnel
B_V6_BEYOND = "2001:db8:80::1"


def wg_quick(impl: Impl, ns: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, **impl.env)
    if impl.ours:
        env["WG_QUICK_USERSPACE_IMPLEMENTATION"] = impl.argv[0]
    return run("ip", "netns", "exec", ns, "wg-quick", *args, check=False, env=env, timeout=60)


@contextlib.contextmanager
def resolvconf_for(ns: str, tmp: Path) -> Iterator[Path]:
    """openresolv, inside *ns*, writing to a file of the test's own."""
    need_tool("resolvconf")
    etc = Path("/etc/netns") / ns
    etc.mkdir(parents=True)
    resolv = tmp / "resolv.conf"
    resolv.write_text("# the test's resolv.conf\n")
    (etc / "resolvconf.conf").write_text(f"resolv_conf={resolv}\nstate_dir={tmp / 'resolvconf'}\n")
    try:
        yield resolv
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        with contextlib.suppress(OSError):
            etc.parent.rmdir()  # if nothing else is in /etc/netns


@contextlib.contextmanager
def peer_b(h: Hosts, go: Impl, tmp: Path, a_key: PrivateKey) -> Iterator[Node]:
    """B: wireguard-go with the tunnel's other end, and addresses beyond it."""
    b = Node(go, h.b, unique("gb"))
    try:
        b.start()
        a_pub = Node(go, h.a, "x", a_key)
        allowed = [f"{TUN_V4[0]}/32", f"{TUN_V6[0]}/128"]
        to_a = endpoint_of(UNDER_V4[0], PORT_A)
        b.setconf(interface_section(b, PORT_B) + peer_section(a_pub, allowed, to_a), tmp)
        b.up([f"{TUN_V4[1]}/24", f"{TUN_V6[1]}/64"])
        run("ip", "-n", h.b, "addr", "add", f"{B_V4_BEYOND}/32", "dev", "lo")
        run("ip", "-n", h.b, "addr", "add", f"{B_V6_BEYOND}/128", "dev", "lo")
        yield b
    finally:
        b.stop()


def write_config(path: Path, key: PrivateKey, b: Node, allowed: str, extra: str = "") -> None:
    path.write_text(
        "[Interface]\n"
        f"PrivateKey = {key}\n"
        f"ListenPort = {PORT_A}\n"
        f"Address = {TUN_V4[0]}/24, {TUN_V6[0]}/64\n"
        f"{extra}"
        "\n[Peer]\n"
        f"PublicKey = {b.public}\n"
        f"AllowedIPs = {allowed}\n"
        f"Endpoint = {UNDER_V4[1]}:{PORT_B}\n"
    )
    path.chmod(0o600)


def test_up_save_down_with_hooks_and_dns(impl: Impl, go: Impl, tmp_path: Path) -> None:
    need_tool("wg-quick")
    with topology() as h, resolvconf_for(h.a, tmp_path) as resolv:
        key = PrivateKey.generate()
        with peer_b(h, go, tmp_path, key) as b:
            name = unique("wq")
            conf = tmp_path / f"{name}.conf"
            hooks = tmp_path / "hooks"
            write_config(
                conf, key, b, f"{TUN_V4[1]}/32, {TUN_V6[1]}/128",
                f"DNS = 10.80.0.53\nPostUp = echo up %i >> {hooks}\n"
                f"PreDown = echo down %i >> {hooks}\n",
            )  # fmt: skip
            a = Node(impl, h.a, name, key)
            try:
                up = wg_quick(impl, h.a, "up", str(conf))
                assert up.returncode == 0, up.stderr
                # A userspace interface of the implementation asked for (a
                # host with the kernel module would not have used it).
                assert "tun type tun" in a.ip("-d", "link", "show", name).stdout
                pid = daemon_pid(h.a, name)
                assert pid is not None
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                assert (b"wireguard.cli.daemon" if impl.ours else b"wireguard-go") in cmdline
                addrs = a.ip("addr", "show", name).stdout
                assert f"{TUN_V4[0]}/24" in addrs and f"{TUN_V6[0]}/64" in addrs
                assert "mtu 1420" in a.ip("link", "show", name).stdout
                p = Pair(h, a, b, tmp_path, UNDER_V4)
                assert p.reaches(a, TUN_V4[1]) and p.reaches(a, TUN_V6[1])
                assert p.reaches(b, TUN_V4[0])
                assert hooks.read_text() == f"up {name}\n"
                assert "nameserver 10.80.0.53" in resolv.read_text()
                # save: what was changed at run time goes into the file.
                extra = PrivateKey.generate().public_key
                a.wg("set", name, "peer", str(extra), "allowed-ips", "10.80.0.9/32")
                saved = wg_quick(impl, h.a, "save", str(conf))
                assert saved.returncode == 0, saved.stderr
                text = conf.read_text()
                assert f"PublicKey = {extra}" in text and "AllowedIPs = 10.80.0.9/32" in text
                assert f"PrivateKey = {key}" in text and "DNS = 10.80.0.53" in text
                assert f"Address = {TUN_V4[0]}/24" in text and "PostUp = echo up %i" in text
                down = wg_quick(impl, h.a, "down", str(conf))
                assert down.returncode == 0, down.stderr
                assert not a.link_exists()
                assert hooks.read_text() == f"up {name}\ndown {name}\n"
                assert "10.80.0.53" not in resolv.read_text()
                wait_gone(pid, name)
                # And up again from the saved file.
                again = wg_quick(impl, h.a, "up", str(conf))
                assert again.returncode == 0, again.stderr
                assert str(extra) in a.wg("show", name, "peers")
                assert p.reaches(a, TUN_V4[1])
                assert wg_quick(impl, h.a, "down", str(conf)).returncode == 0
            finally:
                a.stop()


def wait_gone(pid: int, name: str) -> None:
    wait_until(lambda: not alive(pid), 15, "the daemon to end")
    assert not (RUN_DIR / f"{name}.sock").exists()


def test_default_route(impl: Impl, go: Impl, tmp_path: Path) -> None:
    """AllowedIPs = 0.0.0.0/0, ::/0: wg-quick's policy routing with the
    firewall mark on our UDP socket; addresses beyond B are reached through
    the tunnel while the tunnel's own datagrams still go by the veth."""
    need_tool("wg-quick")
    need_tool("iptables-restore")
    with topology() as h:
        key = PrivateKey.generate()
        with peer_b(h, go, tmp_path, key) as b:
            name = unique("wd")
            conf = tmp_path / f"{name}.conf"
            write_config(conf, key, b, "0.0.0.0/0, ::/0")
            a = Node(impl, h.a, name, key)
            try:
                up = wg_quick(impl, h.a, "up", str(conf))
                assert up.returncode == 0, up.stderr
                assert "tun type tun" in a.ip("-d", "link", "show", name).stdout
                mark = a.wg("show", name, "fwmark").strip()
                assert mark == "0xca6c"
                for family in ("-4", "-6"):
                    rules = run("ip", "-n", h.a, family, "rule").stdout
                    assert "not from all fwmark 0xca6c lookup 51820" in rules
                p = Pair(h, a, b, tmp_path, UNDER_V4)
                assert p.reaches(a, B_V4_BEYOND) and p.reaches(a, B_V6_BEYOND)
                assert p.reaches(a, TUN_V4[1])
                pid = daemon_pid(h.a, name)
                down = wg_quick(impl, h.a, "down", str(conf))
                assert down.returncode == 0, down.stderr
                for family in ("-4", "-6"):
                    assert "51820" not in run("ip", "-n", h.a, family, "rule").stdout
                assert pid is not None
                wait_gone(pid, name)
            finally:
                a.stop()
