"""``python -m wireguard demo``: two endpoints in one process, on loopback, no
root: a handshake, ICMP echo both ways through the tunnel, and a short report.

Endpoint B has no TUN device and no IP stack: the packets that come out of
its tunnel are read by this script, and echo requests answered by building
the reply (as a host's kernel would). That is the library's rootless mode in
its smallest form.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..device import Device, HandshakeCompleted
from ..io.tunnel import Tunnel
from ..keys import PrivateKey
from ..netstack.icmp import build_echo, echo_reply_for, parse_icmp
from ..netstack.ip import addr_bytes, parse_ip


@dataclass
class DemoResult:
    report: str
    ok: bool


def _answer_pings(
    tunnel: Tunnel, replies: asyncio.Queue[tuple[float, bytes]]
) -> Callable[[bytes], None]:
    def on_packet(packet: bytes) -> None:
        ip = parse_ip(packet)
        msg = parse_icmp(ip)
        reply = echo_reply_for(ip, msg)
        if reply is not None:
            tunnel.send_packet(reply)
        else:
            replies.put_nowait((time.perf_counter(), packet))

    return on_packet


async def run_demo(count: int = 3, *, host: str = "127.0.0.1") -> DemoResult:
    start = time.perf_counter()
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    a, b = Device(key_a), Device(key_b)
    a.trace_handshakes = True
    replies_a: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    replies_b: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    lines: list[str] = []
    ok = True
    async with Tunnel(a, host=host, listen_port=0) as ta, Tunnel(b, host=host, listen_port=0) as tb:
        ta.on_packet = _answer_pings(ta, replies_a)
        tb.on_packet = _answer_pings(tb, replies_b)
        events_a = ta.subscribe()
        a.add_peer(key_b.public_key, allowed_ips=["10.0.0.2/32"], endpoint=(host, tb.listen_port))
        b.add_peer(key_a.public_key, allowed_ips=["10.0.0.1/32"], endpoint=(host, ta.listen_port))
        lines += [
            "WireGuard demo: two endpoints in this process, on loopback, no root",
            f"  A  tunnel 10.0.0.1  udp {host}:{ta.listen_port}  key {key_a.public_key}",
            f"  B  tunnel 10.0.0.2  udp {host}:{tb.listen_port}  key {key_b.public_key}",
            "",
        ]
        for name, src, dst, tunnel, replies in (
            ("A", "10.0.0.1", "10.0.0.2", ta, replies_a),
            ("B", "10.0.0.2", "10.0.0.1", tb, replies_b),
        ):
            lines.append(f"ping {dst} from {name} ({src}) through the tunnel:")
            for seq in range(1, count + 1):
                sent = time.perf_counter()
                tunnel.send_packet(
                    build_echo(
                        addr_bytes(src), addr_bytes(dst), 0x5747, seq, b"wireguard", reply=False
                    )
                )
                try:
                    got_at, packet = await asyncio.wait_for(replies.get(), 5.0)
                except TimeoutError:
                    lines.append(f"  seq={seq} no reply within 5 s")
                    ok = False
                    continue
                reply = parse_icmp(parse_ip(packet))
                lines.append(
                    f"  seq={reply.seq} {len(packet)} bytes from {dst}: "
                    f"time={(got_at - sent) * 1000:.2f} ms"
                )
                if seq == 1 and name == "A":
                    done = [e for e in events_a.drain() if isinstance(e, HandshakeCompleted)]
                    events_a.close()
                    lines.append(
                        f"  (the first ping waited for the handshake: "
                        f"{'completed' if done else 'NOT completed'})"
                    )
            lines.append("")
        lines.append("Handshake, as A saw it (ck = chaining key, h = hash; first 16 hex digits):")
        for title, trace in a.last_trace:
            lines.append(f"  {title}")
            for step in trace.steps:
                ck, h = step.get("ck"), step.get("h")
                if ck is None:
                    continue
                token = step.name.split(":")[0]
                hh = h.hex()[:16] if h else ""
                lines.append(f"    {token:<18} ck {ck.hex()[:16]}  h {hh}")
        lines.append("")
        lines.append("Counters:")
        for name, dev, peer_key in (("A", a, key_b.public_key), ("B", b, key_a.public_key)):
            peer = dev.peers[peer_key]
            drops = ", ".join(f"{k}={v}" for k, v in dev.drops.items()) or "none"
            lines.append(
                f"  {name}: tx {peer.tx_bytes} B, rx {peer.rx_bytes} B, "
                f"handshake {'yes' if peer.last_handshake is not None else 'no'}, drops: {drops}"
            )
            ok = ok and peer.last_handshake is not None
    lines.append("")
    lines.append(f"{'OK' if ok else 'FAILED'} in {time.perf_counter() - start:.2f} s")
    return DemoResult("\n".join(lines), ok)


def main(count: int = 3) -> int:
    result = asyncio.run(run_demo(count))
    print(result.report)
    return 0 if result.ok else 1


def add_parser(sub: Any) -> None:
    d = sub.add_parser("demo", help="two endpoints on loopback: handshake, pings both ways, report")
    d.add_argument("--count", type=int, default=3, help="pings each way (default 3)")
    d.set_defaults(func=lambda args: main(args.count))
