"""``python -m wireguard show [NAME]``: what ``wg show`` prints, for the
project's own endpoints (or any userspace one), read through the control
socket at ``/var/run/wireguard/NAME.sock`` with ``get=1``.

Works without the ``wg`` tool installed, which is the point: an unprivileged
service embedding the library can still be inspected.
"""

from __future__ import annotations

import argparse
import base64
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from ..io.control import SOCKET_DIRECTORY, query
from ..keys import PrivateKey
from . import PROG, CommandError


@dataclass
class PeerState:
    public_key: str
    preshared_key: bool = False
    endpoint: str | None = None
    allowed_ips: list[str] = field(default_factory=list)
    last_handshake: float = 0.0
    rx_bytes: int = 0
    tx_bytes: int = 0
    persistent_keepalive: int = 0


@dataclass
class InterfaceState:
    name: str
    public_key: str | None = None
    private_key: bool = False
    listen_port: int = 0
    fwmark: int = 0
    peers: list[PeerState] = field(default_factory=list)


def _b64(hex_key: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_key)).decode()


def parse_get(name: str, answer: str) -> InterfaceState:
    state = InterfaceState(name)
    peer: PeerState | None = None
    errno = None
    for line in answer.splitlines():
        if not line:
            break
        key, _, value = line.partition("=")
        if key == "errno":
            errno = int(value)
        elif key == "public_key":
            peer = PeerState(_b64(value))
            state.peers.append(peer)
        elif peer is None:
            if key == "private_key":
                state.private_key = True
                state.public_key = PrivateKey.from_hex(value).public_key.to_base64()
            elif key == "listen_port":
                state.listen_port = int(value)
            elif key == "fwmark":
                state.fwmark = int(value)
        elif key == "preshared_key":
            peer.preshared_key = value != "0" * 64
        elif key == "endpoint":
            peer.endpoint = value
        elif key == "allowed_ip":
            peer.allowed_ips.append(value)
        elif key == "last_handshake_time_sec":
            peer.last_handshake += int(value)
        elif key == "last_handshake_time_nsec":
            peer.last_handshake += int(value) / 1e9
        elif key == "rx_bytes":
            peer.rx_bytes = int(value)
        elif key == "tx_bytes":
            peer.tx_bytes = int(value)
        elif key == "persistent_keepalive_interval":
            peer.persistent_keepalive = int(value)
    if errno:
        raise CommandError(f"{name}: the endpoint answered errno={errno}")
    return state


# Units as wireguard-tools src/show.c bytes() and pretty_time() use them.
_BYTE_UNITS = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))
_TIME_UNITS = (("year", 365 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def _bytes(n: int) -> str:
    for unit, size in _BYTE_UNITS:
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _duration(seconds: int) -> str:
    """*seconds* as show.c's pretty_time() spells them ("1 year, 1 day, 5
    seconds"): a year is 365 days, units that are zero are left out (so 0 is
    the empty string)."""
    parts = []
    for unit, size in _TIME_UNITS:
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count} {unit}{'' if count == 1 else 's'}")
    return ", ".join(parts)


def _ago(now: float, then: float) -> str:
    """show.c's ago(): whole seconds of the wall clock, as time(NULL) and
    tv_sec are."""
    seconds = math.floor(now) - math.floor(then)
    if seconds == 0:
        return "Now"
    if seconds < 0:
        return "(System clock wound backward; connection problems may ensue.)"
    return _duration(seconds) + " ago"


def format_state(state: InterfaceState, now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = [f"interface: {state.name}"]
    if state.public_key:
        lines += [f"  public key: {state.public_key}", "  private key: (hidden)"]
    if state.listen_port:
        lines.append(f"  listening port: {state.listen_port}")
    if state.fwmark:
        lines.append(f"  fwmark: {state.fwmark:#x}")
    # Like wg: peers with the most recent handshake first.
    for peer in sorted(state.peers, key=lambda p: -p.last_handshake):
        lines += ["", f"peer: {peer.public_key}"]
        if peer.preshared_key:
            lines.append("  preshared key: (hidden)")
        if peer.endpoint:
            lines.append(f"  endpoint: {peer.endpoint}")
        lines.append(f"  allowed ips: {', '.join(peer.allowed_ips) or '(none)'}")
        if peer.last_handshake:
            lines.append(f"  latest handshake: {_ago(now, peer.last_handshake)}")
        if peer.rx_bytes or peer.tx_bytes:
            lines.append(
                f"  transfer: {_bytes(peer.rx_bytes)} received, {_bytes(peer.tx_bytes)} sent"
            )
        if peer.persistent_keepalive:
            lines.append(f"  persistent keepalive: every {_duration(peer.persistent_keepalive)}")
    return "\n".join(lines)


def interfaces(directory: str = SOCKET_DIRECTORY) -> list[str]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n[:-5] for n in names if n.endswith(".sock"))


def cmd_show(args: argparse.Namespace) -> int:
    directory = args.socket_dir
    names = interfaces(directory) if args.name in (None, "all") else [args.name]
    if not names:
        return 0  # as `wg show` with no interface: nothing, status 0
    status = 0
    blocks: list[str] = []
    for name in names:
        path = os.path.join(directory, f"{name}.sock")
        try:
            state = parse_get(name, query(path))
        except OSError as exc:
            print(f"{PROG} show: cannot query {path}: {exc.strerror or exc}", file=sys.stderr)
            status = 1
            continue
        except (CommandError, ValueError) as exc:
            print(f"{PROG} show: {exc}", file=sys.stderr)
            status = 1
            continue
        blocks.append(format_state(state))
    if blocks:
        print("\n\n".join(blocks))
    return status


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "show", help="show an endpoint's peers, handshakes and transfer (like wg show)"
    )
    parser.add_argument("name", nargs="?", help="interface name (default: all)")
    parser.add_argument(
        "--socket-dir", default=SOCKET_DIRECTORY, help=f"where the sockets are ({SOCKET_DIRECTORY})"
    )
    parser.set_defaults(func=cmd_show)
    return parser
