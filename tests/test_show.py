"""`python -m wireguard show` against the stock `wg show` on the same socket."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
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
            ours = await asyncio.to_thread(_show, name)
            theirs = await asyncio.to_thread(
                subprocess.run, [wg, "show", name], capture_output=True, text=True
            )
        finally:
            await a.close()
            await b.close()
        assert ours.returncode == 0, ours.stderr
        assert theirs.returncode == 0, theirs.stderr
        # The two commands run a moment apart: "Now" may become "1 second ago".
        age = re.compile(r"latest handshake: (Now|\d+ seconds? ago)")
        assert age.search(ours.stdout) and age.search(theirs.stdout)
        assert age.sub("latest handshake: -", ours.stdout.strip()) == age.sub(
            "latest handshake: -", theirs.stdout.strip()
        )

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
