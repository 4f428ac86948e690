"""Interface: a Device, its UDP socket and the control socket, from a config.

``FwMark =`` marks the interface's UDP datagrams (SO_MARK), as the kernel
module and wireguard-go do with the mark they are given; where the mark
cannot be set (no CAP_NET_ADMIN), it is not claimed either.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import need, need_tool
from wireguard.config import parse_wg_quick as parse
from wireguard.io.interface import Interface
from wireguard.keys import PrivateKey


def config_text(mark: str) -> str:
    peer = PrivateKey.generate().public_key
    return (
        f"[Interface]\nPrivateKey = {PrivateKey.generate()}\nFwMark = {mark}\n"
        f"[Peer]\nPublicKey = {peer}\nAllowedIPs = 10.77.0.2/32\n"
    )


def test_fwmark_of_a_config_marks_the_udp_socket(tmp_path: Path) -> None:
    need(os.geteuid() == 0, "SO_MARK needs CAP_NET_ADMIN")

    async def main() -> tuple[int, int]:
        interface = await Interface.from_config(
            "pyfm0", parse(config_text("0x1234")), control_path=tmp_path / "pyfm0.sock"
        )
        await interface.start()
        try:
            sock = interface.tunnel._sock
            assert sock is not None
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK), interface.device.fwmark
        finally:
            await interface.close()

    assert asyncio.run(main()) == (0x1234, 0x1234)


def test_fwmark_that_cannot_be_set_is_a_warning_and_not_claimed(tmp_path: Path) -> None:
    # Without CAP_NET_ADMIN and CAP_NET_RAW the kernel refuses SO_MARK
    # (sock_setsockopt); the interface still runs, says so, and reports no mark.
    setpriv = need_tool("setpriv")
    need(os.geteuid() == 0, "dropping capabilities needs them first")
    script = textwrap.dedent(f"""
        import asyncio, logging, socket
        from wireguard.config import parse_wg_quick as parse
        from wireguard.io.interface import Interface
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        async def main():
            interface = await Interface.from_config(
                "pyfm1", parse({config_text("4660")!r}), control=False)
            await interface.start()
            mark = interface.tunnel._sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK)
            print("socket", mark, "device", interface.device.fwmark)
            await interface.close()
        asyncio.run(main())
    """)
    result = subprocess.run(
        [setpriv, "--bounding-set", "-net_admin,-net_raw", sys.executable, "-c", script],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["socket", "0", "device", "0"]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "0x1234" in warnings[0], result.stderr
