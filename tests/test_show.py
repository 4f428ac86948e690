"""`python -m wireguard show` against the stock `wg show` on the same socket."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import subprocess
import sys

from tests.conftest import need, need_tool
from wireguard.device import Device
from wireguard.io.interface import Interface
from wireguard.keys import PresharedKey, PrivateKey
from wireguard.netstack.icmp import build_echo
from wireguard.netstack.ip import addr_bytes


async def _pair_with_traffic(name: str, directory: str):
    ka, kb = PrivateKey.generate(), PrivateKey.generate()
    a = Interface(name, Device(ka), host="127.0.0.1", control_path=f"{directory}/{name}.sock")
    b = Interface(name + "b", Device(kb), host="127.0.0.1", control=False)
    await a.start()
    await b.start()
    psk = PresharedKey.generate()
    a.device.add_peer(
        kb.public_key,
        preshared_key=psk,
        allowed_ips=["10.9.0.2/32", "fd09::2/128"],
        endpoint=("127.0.0.1", b.tunnel.listen_port),
        persistent_keepalive=25,
    )
    b.device.add_peer(ka.public_key, preshared_key=psk, allowed_ips=["10.9.0.1/32"])
    got: asyncio.Queue[bytes] = asyncio.Queue()
    b.tunnel.on_packet = got.put_nowait
    a.tunnel.send_packet(
        build_echo(addr_bytes("10.9.0.1"), addr_bytes("10.9.0.2"), 1, 1, b"x", reply=False)
    )
    await asyncio.wait_for(got.get(), 5)
    return a, b


def _add_peers_with_long_times_and_large_transfers(device: Device) -> None:
    """Two more peers whose keepalive, transfer and handshake age reach the
    minutes, hours, years, GiB and TiB of show.c's pretty_time() and bytes()."""
    (real,) = device.peers.values()
    assert real.last_handshake is not None
    year, day = 365 * 86400, 86400
    cases = [
        # keepalive, handshake age, rx, tx
        (65, year + day + 5, 1023, 1024),
        (3700, 2 * year + 3 * day + 4 * 3600 + 7, (3 << 40) + 123_456_789, (1 << 40) - 1),
    ]
    for keepalive, age, rx, tx in cases:
        peer = device.add_peer(PrivateKey.generate().public_key, persistent_keepalive=keepalive)
        peer.last_handshake = real.last_handshake - age
        peer.rx_bytes, peer.tx_bytes = rx, tx


def _show(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wireguard", "show", *args], capture_output=True, text=True
    )


def test_show_matches_wg_show():
    wg = need_tool("wg")
    need(os.geteuid() == 0, "wg reads sockets in /var/run/wireguard, which needs root")
    name = "pyshow" + secrets.token_hex(3)

    async def body():
        a, b = await _pair_with_traffic(name, "/var/run/wireguard")
        try:
            _add_peers_with_long_times_and_large_transfers(a.device)
            ours = await asyncio.to_thread(_show, name)
            theirs = await asyncio.to_thread(
                subprocess.run, [wg, "show", name], capture_output=True, text=True
            )
        finally:
            await a.close()
            await b.close()
        assert ours.returncode == 0, ours.stderr
        assert theirs.returncode == 0, theirs.stderr
        for out in (ours.stdout, theirs.stdout):
            # The cases of show.c's pretty_time() and bytes() that the
            # comparison below must have gone through.
            assert "persistent keepalive: every 1 minute, 5 seconds" in out
            assert "persistent keepalive: every 1 hour, 1 minute, 40 seconds" in out
            assert " TiB received" in out and " GiB sent" in out
            assert "latest handshake: 1 year, 1 day, " in out
        # The two commands run a moment apart: "Now" may become "1 second ago",
        # and an old handshake's seconds may tick on.
        age = re.compile(r"latest handshake: (Now|\d+ seconds? ago)")
        assert age.search(ours.stdout) and age.search(theirs.stdout)
        tick = re.compile(r", \d+ seconds? ago")

        def masked(out: str) -> str:
            return tick.sub(", - ago", age.sub("latest handshake: -", out.strip()))

        assert masked(ours.stdout) == masked(theirs.stdout)

    asyncio.run(body())


def test_show_without_root_in_any_directory(tmp_path):
    name = "pyshow" + secrets.token_hex(3)

    async def body():
        a, b = await _pair_with_traffic(name, str(tmp_path))
        try:
            result = await asyncio.to_thread(_show, name, "--socket-dir", str(tmp_path))
        finally:
            await a.close()
            await b.close()
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert f"interface: {name}" in out
        assert f"public key: {a.device.public_key}" in out
        assert "preshared key: (hidden)" in out
        assert "allowed ips: 10.9.0.2/32, fd09::2/128" in out
        assert "latest handshake: " in out and "transfer: " in out
        assert "persistent keepalive: every 25 seconds" in out

    asyncio.run(body())


def test_show_missing_interface(tmp_path):
    result = _show("nosuch", "--socket-dir", str(tmp_path))
    assert result.returncode == 1
    assert "cannot query" in result.stderr and result.stdout == ""


def test_show_with_no_interfaces_is_wg_shows_nothing(tmp_path):
    """`wg show` with no interface prints nothing and exits 0 (checked here
    against the real one, with an empty socket directory mounted over
    /var/run/wireguard in a mount namespace and no kernel interfaces in a new
    network namespace). Ours said so on stderr and exited 1."""
    ours = _show("--socket-dir", str(tmp_path))
    wg = need_tool("wg")
    need(os.geteuid() == 0 and shutil.which("unshare") is not None, "needs root and unshare")
    made = not os.path.isdir("/var/run/wireguard")  # the mount point, as wg makes it
    os.makedirs("/var/run/wireguard", exist_ok=True)
    ns = "rvshow" + secrets.token_hex(3)
    script = (f"mount -t tmpfs none /var/run/wireguard && ip netns add {ns} && "
              f"ip netns exec {ns} {wg} show; rc=$?; ip netns del {ns}; exit $rc")  # fmt: skip
    try:
        theirs = subprocess.run(
            ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True
        )
    finally:
        if made:
            os.rmdir("/var/run/wireguard")
    assert (theirs.returncode, theirs.stdout) == (0, ""), theirs
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout), ours
    assert _show("all", "--socket-dir", str(tmp_path)).returncode == 0


def test_format_state_spells_times_and_sizes_as_show_c():
    # Expected strings worked out by hand from wireguard-tools src/show.c:
    # pretty_time() (years of 365 days, days, hours, minutes, seconds; zero
    # units left out; singular for 1), every(), bytes() (B, then KiB..TiB with
    # two decimals) and ago() ("Now" in the same second, a warning if the
    # handshake is in the future).
    from wireguard.cli.show import InterfaceState, PeerState, format_state

    now = 1_700_000_000.25

    def shown(**fields: float) -> str:
        peer = PeerState("DXUNuWQziXKMmaqfYffmUJa2Tel+7aKOMuROZY03jlQ=", **fields)  # type: ignore[arg-type]
        return format_state(InterfaceState("wg0", peers=[peer]), now=now)

    cases = [
        (dict(persistent_keepalive=1), "persistent keepalive: every 1 second"),
        (dict(persistent_keepalive=60), "persistent keepalive: every 1 minute"),
        (dict(persistent_keepalive=65), "persistent keepalive: every 1 minute, 5 seconds"),
        (
            dict(persistent_keepalive=3700),
            "persistent keepalive: every 1 hour, 1 minute, 40 seconds",
        ),
        (
            dict(persistent_keepalive=65535),
            "persistent keepalive: every 18 hours, 12 minutes, 15 seconds",
        ),
        (dict(rx_bytes=1023, tx_bytes=1024), "transfer: 1023 B received, 1.00 KiB sent"),
        (dict(rx_bytes=(1 << 40) - 1, tx_bytes=1), "transfer: 1024.00 GiB received, 1 B sent"),
        (dict(rx_bytes=3 << 40, tx_bytes=5), "transfer: 3.00 TiB received, 5 B sent"),
        (dict(rx_bytes=5000 << 40, tx_bytes=0), "transfer: 5000.00 TiB received, 0 B sent"),
        (
            dict(last_handshake=now - (366 * 86400 + 5)),
            "latest handshake: 1 year, 1 day, 5 seconds ago",
        ),
        (dict(last_handshake=now - 2 * 365 * 86400), "latest handshake: 2 years ago"),
        (dict(last_handshake=now - 0.1), "latest handshake: Now"),
        (dict(last_handshake=now - 0.5), "latest handshake: 1 second ago"),  # 1699999999.75
        (
            dict(last_handshake=now + 1),
            "latest handshake: (System clock wound backward; connection problems may ensue.)",
        ),
    ]
    for fields, line in cases:
        out = shown(**fields)
        assert f"  {line}" in out.split("\n"), (fields, out)
