"""The hybrid estate of docs/hybrid-estate.md as one mesh of four
implementations, rendered by ``python -m wireguard mesh`` from one inventory
and brought up the way the rendered files and the docs say
(tests/interop/estate.py draws the LAN):

    node  kind                 runs                                      underlay
    db    kernel, behind NAT   Debian's kernel WireGuard in the qemu     slirp (a NAT) in ...-vm
                               guest: httpd with the files
    go    userspace            wireguard-go, by wg-quick; dnsmasq on     192.168.88.2:51820
                               its mesh address (db.mesh.internal)
    hub   userspace, hub       wireguard-sansio, by wg-quick             192.168.88.3:51820
    pod   rootless, behind NAT python -m wireguard proxy, user nobody    192.168.88.4
    new   userspace (added)    wireguard-sansio, by wg-quick             192.168.88.5:51820

The guest is behind qemu's user-mode network, a NAT, so it is a node without
an endpoint; so is the pod. The two reach each other through the hub, as the
topology says, and the pod reaches the guest's httpd by name, through its
proxy, with the name answered by dnsmasq on go (the pod's ``DNS =`` line).

The kernel node has no wg-quick in the guest (busybox): its file is stripped
by ``wg-quick strip`` on the host and applied with ``wg setconf`` (later
``wg syncconf``) in the guest, its ``Address`` lines with ``ip``, as wg-quick
would.

Then, with two TCP downloads from the guest running (to go, whose session
with the guest the change leaves alone, and to the hub, which is rekeyed):
``mesh add new``, ``mesh rekey hub``, ``mesh render``, ``wg syncconf IF
<(wg-quick strip FILE)`` on go and the hub, ``wg syncconf`` in the guest,
``wg-quick up`` on the new node. Both downloads complete with the guest's
sha256, the unchanged peers keep their counters, the new node reaches the
others.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need, need_tool
from tests.interop import kernel_vm
from tests.interop.daemon import SANSIO, make_impl
from tests.interop.estate import (
    Download,
    Estate,
    Host,
    interface_addresses,
    lan_address,
    run,
)
from tests.interop.harness import WG_GO_ENV, need_netns
from tests.interop.kernel_vm import SLIRP_HOST, KernelVM
from tests.interop.test_forward import nobody_script

pytestmark = pytest.mark.interop

V4, V6 = "10.77.0.0/24", "fd00:77::/64"
DB, GO, HUB, POD, NEW = "db", "go", "hub", "pod", "new"
ADDR = {DB: ("10.77.0.1", "fd00:77::1"), GO: ("10.77.0.2", "fd00:77::2"),
        HUB: ("10.77.0.3", "fd00:77::3"), POD: ("10.77.0.4", "fd00:77::4"),
        NEW: ("10.77.0.5", "fd00:77::5")}  # fmt: skip
LAN = {GO: 2, HUB: 3, POD: 4, NEW: 5}  # the vm's namespace is .1
NAME = "db.mesh.internal"
SOCKS5, HTTP_PROXY = "127.0.0.1:1080", "127.0.0.1:8080"
BLOB = 1024 * 1024  # the rootless node's download
BIG = 3 * 1024 * 1024  # each download across the change


class Mesh:
    """The running estate: the hosts, the guest, what the test needs of them."""

    def __init__(self, estate: Estate, vm: KernelVM, sansio: list[str]) -> None:
        self.estate, self.vm, self.sansio = estate, vm, sansio
        self.hosts = estate.hosts
        self.dnsmasq: subprocess.Popen | None = None
        self.pod: subprocess.Popen | None = None
        self.pod_output: list[str] = []  # the proxy's output lines

    def public_key(self, node: str) -> str:
        text = self.estate.mesh("list").stdout
        for line in text.splitlines():
            fields = line.split()
            if fields and fields[0] == node:
                return fields[-1]
        raise AssertionError(f"{node} is not in `mesh list`:\n{text}")

    # the guest

    def guest_apply(self, verb: str) -> None:
        """The kernel node's file, stripped on the host, applied in the guest."""
        conf = self.estate.rendered(DB)
        stripped = run("wg-quick", "strip", str(conf)).stdout
        if not stripped.endswith("\n"):
            stripped += "\n"
        if verb == "setconf":
            addresses = tuple(interface_addresses(conf.read_text()))
            self.vm.configure(stripped, addresses=addresses)
        else:
            self.vm.sh(f"umask 077\ncat > /tmp/wg0.conf <<'EOF'\n{stripped}EOF\n"
                       f"wg {verb} wg0 /tmp/wg0.conf\n")  # fmt: skip

    def guest_ping(self, address: str, count: int = 3) -> str:
        ping = "ping6" if ":" in address else "ping"
        result = self.vm.run(f"{ping} -c {count} -w 30 {address}", timeout=45)
        assert result.status == 0, f"guest: {ping} {address}: {result.output}"
        return result.output

    def guest_transfer(self) -> dict[str, tuple[int, int]]:
        out = self.vm.wg("show", "wg0", "transfer")
        return {f[0]: (int(f[1]), int(f[2])) for f in (x.split() for x in out.splitlines()) if f}

    # the TUN hosts

    def ping(self, node: str, address: str) -> None:
        result = self.hosts[node].ping(address)
        assert result.returncode == 0, f"{node}: ping {address}: {result.stdout}{result.stderr}"


def _boot(vm: KernelVM, errors: list[BaseException]) -> None:
    try:
        vm.start()
    except BaseException as exc:  # reported by the fixture
        errors.append(exc)


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    need_netns()
    reason = kernel_vm.missing()
    need(reason is None, reason or "")
    for tool in ("wg-quick", "dnsmasq", "curl", "setpriv", "ping", "bash"):
        need_tool(tool)
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        need(False, "there is no user nobody")
    directory = Path(tempfile.mkdtemp(prefix="pywg-estate-"))
    directory.chmod(0o755)  # traversable by nobody (the pod's directory, mount points)
    vm = KernelVM()
    errors: list[BaseException] = []
    boot = threading.Thread(target=_boot, args=(vm, errors))
    boot.start()  # about 10 s of emulation, while the rest is set up
    estate: Estate | None = None
    try:
        estate = Estate(directory)
        impl_dir = directory / "impl"
        impl_dir.mkdir()
        sansio = make_impl(SANSIO, impl_dir).argv
        # The inventory, as a user makes it.
        estate.mesh("init", "--ipv4", V4, "--ipv6", V6, "--interface", estate.interface)
        estate.mesh("add", DB, "--kind", "kernel")  # behind qemu's NAT: no endpoint
        estate.mesh("add", GO, "--kind", "userspace", "--endpoint", lan_address(LAN[GO]))
        estate.mesh("add", HUB, "--kind", "userspace", "--endpoint", lan_address(LAN[HUB]),
                    "--hub")  # fmt: skip
        estate.mesh("add", POD, "--kind", "rootless", "--dns", ADDR[GO][0],
                    "--dns", "mesh.internal", "--socks5", SOCKS5, "--http", HTTP_PROXY)  # fmt: skip
        estate.render()
        m = Mesh(estate, vm, sansio)
        go = estate.host(GO, LAN[GO])
        hub = estate.host(HUB, LAN[HUB])
        estate.host(POD, LAN[POD])
        estate.wg_quick_up(go, "g", ["wireguard-go"], WG_GO_ENV)
        estate.wg_quick_up(hub, "h", sansio)
        # db.mesh.internal, answered on go's mesh address only.
        m.dnsmasq = estate.popen(go.ns, [
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
            "--no-hosts", "--bind-interfaces", f"--listen-address={ADDR[GO][0]}",
            "--pid-file=", "--local=/mesh.internal/", "--log-queries", "--log-facility=-",
            f"--host-record={NAME},{ADDR[DB][0]},{ADDR[DB][1]}",
        ])  # fmt: skip
        boot.join()
        if errors:
            pytest.fail(f"the kernel VM did not start: {errors[0]}")
        estate.attach(vm.ns, 1)
        # The guest's way out: slirp's gateway, the namespace's sockets.
        vm.sh(f"ip route add default via {SLIRP_HOST}")
        m.guest_apply("setconf")
        vm.sh(f"dd if=/dev/urandom of=/www/blob bs=64k count={BLOB // 65536} 2>/dev/null\n"
              f"dd if=/dev/urandom of=/www/big bs=64k count={BIG // 65536} 2>/dev/null\n"
              f"httpd -p {ADDR[DB][0]}:80 -h /www\n")  # fmt: skip
        yield m
    finally:
        boot.join()
        if estate is not None:
            estate.close()
        vm.stop()
        shutil.rmtree(directory, ignore_errors=True)


def guest_sha256(m: Mesh, name: str) -> str:
    return m.vm.sh(f"sha256sum /www/{name}").split()[0]


# ------------------------------------------------------------------ the mesh as rendered


def test_every_connected_pair_of_tun_nodes_exchanges_icmp(mesh: Mesh) -> None:
    """db, go and hub: every pair is connected (each has an endpoint but db,
    and db initiates). The guest pings first: it is behind NAT, the others
    learn where it is from its handshakes."""
    m = mesh
    for node in (GO, HUB):
        for address in ADDR[node]:
            m.guest_ping(address)
    for src, dst in ((GO, DB), (GO, HUB), (HUB, DB), (HUB, GO)):
        for address in ADDR[dst]:
            m.ping(src, address)
    # Over TCP too, to the kernel node's httpd, from both TUN nodes.
    want = guest_sha256(m, "blob")
    for node in (GO, HUB):
        got = (
            m.hosts[node]
            .exec(
                "curl",
                "-sf",
                "--max-time",
                "120",
                f"http://{ADDR[DB][0]}/blob",
                text=False,
                timeout=150,
            )
            .stdout
        )
        assert hashlib.sha256(got).hexdigest() == want, node
    # Every peer of every TUN node has had a handshake, with the keys in the inventory.
    for node in (GO, HUB):
        shown = m.hosts[node].wg_show("latest-handshakes")
        for peer in (n for n in (DB, GO, HUB) if n != node):
            key = m.public_key(peer)
            assert key in shown and int(shown[key][0]) > 0, (node, peer, shown)


# ------------------------------------------------------------------ the rootless node


def start_pod(m: Mesh) -> None:
    """The pod's rendered files, installed for nobody, run by the rendered command."""
    estate = m.estate
    pod = estate.hosts[POD]
    home = estate.dir / "pod"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(mode=0o700)
    for name in (f"{estate.interface}.conf", "run.sh"):
        shutil.copyfile(estate.rendered(POD, name), home / name)
    nobody = pwd.getpwnam("nobody")
    for path in (home, *home.iterdir()):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    (home / f"{estate.interface}.conf").chmod(0o600)
    # run.sh: `exec PYTHON -m wireguard proxy FILE --socks5 ... --http ...`
    # from its own directory; the same arguments as nobody, FILE made absolute.
    line = next(x for x in (home / "run.sh").read_text().splitlines() if x.startswith("exec "))
    argv = shlex.split(line)[2:]
    assert argv[:3] == ["-m", "wireguard", "proxy"], line
    argv[3] = str(home / argv[3])
    m.pod = estate.popen(pod.ns, ["sh", "-c", nobody_script(estate.dir, argv)])
    m.pod_output = estate.output[m.pod.pid]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listening = pod.exec("ss", "-Htln").stdout.split()
        if SOCKS5 in listening and HTTP_PROXY in listening:
            return
        if m.pod.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError("the proxy does not listen:\n" + "\n".join(m.pod_output))


def test_rootless_node_downloads_by_name_through_its_proxy(mesh: Mesh) -> None:
    m = mesh
    start_pod(m)
    pod = m.hosts[POD]
    assert pod.exec("ps", "-o", "user=", "-p", str(_pid_in(pod, "proxy"))).stdout.strip() in (
        "nobody", "65534")  # fmt: skip
    want = guest_sha256(m, "blob")
    url = f"http://{NAME}/blob"
    for how in (["--socks5-hostname", SOCKS5], ["--proxy", f"http://{HTTP_PROXY}"]):
        got = pod.exec("curl", "-sf", "--max-time", "120", *how, url, text=False,
                       check=False, timeout=150)  # fmt: skip
        assert got.returncode == 0, (how, got.stderr, "\n".join(m.pod_output[-30:]))
        assert hashlib.sha256(got.stdout).hexdigest() == want, how
    # The name was asked of go's dnsmasq, through the tunnel: from the pod's
    # mesh address (dnsmasq's log: "query[A] NAME from ADDRESS").
    assert m.dnsmasq is not None
    log = m.estate.output[m.dnsmasq.pid]
    assert any(f"{NAME} from {ADDR[POD][0]}" in line and "query[" in line for line in log), log
    # The pod's direct peers (go, hub) reach its stack's address; the guest,
    # behind NAT like the pod, reaches it through the hub.
    for node in (GO, HUB):
        m.ping(node, ADDR[POD][0])
    m.guest_ping(ADDR[POD][0])


def _pid_in(host: Host, word: str) -> int:
    for pid in run("ip", "netns", "pids", host.ns).stdout.split():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if word.encode() in argv and b"wireguard" in argv:
            return int(pid)
    raise AssertionError(f"no {word} process in {host.ns}")


# ------------------------------------------------------------------ changing the running mesh


def test_add_and_rekey_while_tcp_transfers_run(mesh: Mesh) -> None:
    m, estate = mesh, mesh.estate
    go, hub = m.hosts[GO], m.hosts[HUB]
    want = guest_sha256(m, "big")
    old_hub_key = m.public_key(HUB)
    go_key = m.public_key(GO)
    downloads = {
        node: Download(m.hosts[node].ns, ADDR[DB][0], 80, "/big", hold=BIG * 3 // 4)
        for node in (GO, HUB)
    }
    for d in downloads.values():
        d.start()
    try:
        deadline = time.monotonic() + 120
        while not all(d.received >= 256 * 1024 for d in downloads.values()):
            assert time.monotonic() < deadline, {n: d.received for n, d in downloads.items()}
            assert not any(d.finished.is_set() for d in downloads.values()), [
                d.error for d in downloads.values()]  # fmt: skip
            time.sleep(0.1)
        db_key = m.public_key(DB)
        before_go = go.wg_show("transfer")[db_key]
        handshake_go = int(go.wg_show("latest-handshakes")[db_key][0])
        before_guest = m.guest_transfer()[go_key]
        # The change, as the docs say: add, rekey, render, apply.
        estate.mesh("add", NEW, "--kind", "userspace", "--endpoint", lan_address(LAN[NEW]))
        estate.mesh("rekey", HUB)
        estate.render()
        new_hub_key = m.public_key(HUB)
        assert new_hub_key != old_hub_key
        for host in (go, hub):
            estate.install(host, host.interface[-1])
            host.syncconf()
        m.guest_apply("syncconf")
        new = estate.host(NEW, LAN[NEW])
        estate.wg_quick_up(new, "n", m.sansio)
        # The transfers ran across all of it.
        assert not any(d.finished.is_set() for d in downloads.values()), [
            (d.received, d.error) for d in downloads.values()]  # fmt: skip
        for d in downloads.values():
            d.release()
        for node, d in downloads.items():
            d.join(300)
            assert d.finished.is_set(), f"the download to {node} did not end"
            assert d.error is None, f"the download to {node}: {d.error!r}"
            assert d.status.split()[1] == "200" and d.length == BIG, (node, d.status)
            assert len(d.body) == BIG, (node, len(d.body))
            assert hashlib.sha256(d.body).hexdigest() == want, node
    finally:
        for d in downloads.values():
            d.release()
    # go's peer db and the guest's peer go were left alone by syncconf: the
    # same peers, their counters never reset.
    after_go = go.wg_show("transfer")[db_key]
    assert int(after_go[0]) >= int(before_go[0]) + BIG // 2, (before_go, after_go)
    # ... and their session: no new handshake, unless the one before was due
    # for WireGuard's own rekey (REKEY_AFTER_TIME, 120 s) by now.
    handshake = int(go.wg_show("latest-handshakes")[db_key][0])
    assert handshake == handshake_go or handshake >= handshake_go + 110, (
        handshake_go, handshake)  # fmt: skip
    after_guest = m.guest_transfer()[go_key]
    assert after_guest[1] >= before_guest[1] + BIG // 2, (before_guest, after_guest)
    # The rekeyed hub is known to its peers by its new key only.
    for peers in (go.wg_show("endpoints"), m.guest_transfer()):
        assert new_hub_key in peers and old_hub_key not in peers
    guest_handshakes = dict(x.split() for x in m.vm.wg("show", "wg0", "latest-handshakes")
                            .splitlines() if x.strip())  # fmt: skip
    assert int(guest_handshakes[new_hub_key]) > 0
    # The new node joins: it reaches go and the hub directly, and the guest,
    # which initiates to it (the new node has no endpoint for a node behind NAT).
    m.guest_ping(ADDR[NEW][0])
    for dst in (GO, HUB, DB):
        for address in ADDR[dst]:
            m.ping(NEW, address)
    m.ping(GO, ADDR[NEW][1])
    m.ping(HUB, ADDR[NEW][0])


def test_rootless_node_restarted_after_the_change(mesh: Mesh) -> None:
    """A rootless node reads its file when it starts (docs: restart it): with
    the new render it knows the rekeyed hub and the new node."""
    m = mesh
    if m.pod is not None and m.pod.poll() is None:
        m.pod.terminate()
        m.pod.wait(15)
    start_pod(m)
    pod = m.hosts[POD]
    want = guest_sha256(m, "blob")
    got = pod.exec(
        "curl", "-sf", "--max-time", "120", "--socks5-hostname", SOCKS5, f"http://{NAME}/blob",
        text=False, check=False, timeout=150,
    )  # fmt: skip
    assert got.returncode == 0, (got.stderr, "\n".join(m.pod_output[-30:]))
    assert hashlib.sha256(got.stdout).hexdigest() == want
    for node in (NEW, HUB):
        m.ping(node, ADDR[POD][0])
