"""``python -m wireguard misbehave``: an endpoint whose datagrams follow the
scripted misbehaviour rules of :mod:`wireguard.misbehaviour` (the command;
the policy itself is sans-I/O and lives there)."""

from __future__ import annotations

import argparse
from typing import Any

from ..misbehaviour import LogEntry, Policy, parse_rule
from . import CommandError, seconds


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``misbehave`` on the ``python -m wireguard`` sub-commands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "misbehave",
        help="run an endpoint whose datagrams follow scripted misbehaviour rules",
        description=(
            "Bring up an endpoint from a wg-quick style configuration (no TUN: it answers "
            "pings to --address and can send its own), apply --rule to every datagram it "
            "sends or receives, and print what was done. Rule syntax: "
            "[in|out:]KIND:ACTION[:ARG][@FIRST[+COUNT]]; KIND is initiation, response, "
            "cookie_reply, transport, keepalive, data or any; ACTION is drop, duplicate[:N], "
            "delay[:SECONDS], reorder, replay[:KIND], corrupt:FIELD or stale[:SECONDS]."
        ),
    )
    parser.add_argument("config", help="wg-quick or wg setconf file (PrivateKey, [Peer]s)")
    parser.add_argument("--rule", action="append", default=[], help="a misbehaviour rule")
    parser.add_argument(
        "--address", action="append", default=[], help="our tunnel address (answers pings to it)"
    )
    parser.add_argument("--ping", metavar="ADDR", help="ping this address through the tunnel")
    parser.add_argument("--count", type=int, default=3, help="pings to send (default 3)")
    parser.add_argument("--interval", type=seconds, default=1.0, help="seconds between pings")
    parser.add_argument(
        "--duration", type=seconds, help="seconds to run (default: the pings, or forever)"
    )
    parser.add_argument(
        "--pcap", help="write the datagrams as on the wire to this capture (pcapng if .pcapng)"
    )
    parser.add_argument("--keylog", help="write a Wireshark key log here (holds private keys)")
    parser.add_argument(
        "--embed-keys",
        action="store_true",
        help="put the key log inside the --pcap .pcapng file (it then holds private keys)",
    )
    parser.set_defaults(func=run_cli)
    return parser


def run_cli(args: argparse.Namespace) -> int:
    import asyncio

    try:
        rules = [parse_rule(text) for text in args.rule]
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    try:
        return asyncio.run(_misbehave(args, Policy(rules)))
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def unseen_entries(policy: Policy, shown: int) -> tuple[list[LogEntry], int, int]:
    """The log entries after the first *shown* ever made (forgotten ones
    included: the log is trimmed on a long run), how many of those the log
    forgot before they could be shown, and the new count."""
    start = shown - policy.log_forgotten
    missed = max(0, -start)
    return policy.log[max(0, start) :], missed, policy.log_forgotten + len(policy.log)


def log_lines(policy: Policy, shown: int) -> tuple[list[str], int]:
    """The lines for the entries not shown yet (a count first of any the log
    forgot before they were), and the new count."""
    entries, missed, shown = unseen_entries(policy, shown)
    lines = [f"{e.direction:>3} {e.kind or '?':<12} {e.note}  [{e.rule}]" for e in entries]
    if missed:
        lines.insert(
            0, f"({missed} log entries not shown: the log keeps the latest {policy.keep} at least)"
        )
    return lines, shown


async def _misbehave(args: argparse.Namespace, policy: Policy) -> int:
    import asyncio
    import time

    from ..config import load
    from ..io.tap import attach
    from ..io.tunnel import Tunnel, device_from_config
    from ..netstack.icmp import build_echo, echo_reply_for, parse_icmp
    from ..netstack.ip import addr_bytes, parse_ip

    config = load(args.config)
    device = await device_from_config(config)
    addresses = list(args.address) or [str(a.ip) for a in config.interface.addresses]
    tunnel = Tunnel(device, listen_port=config.interface.listen_port or 0)
    tap = attach(
        tunnel, pcap=args.pcap, keylog=args.keylog, policy=policy, embed_keys=args.embed_keys
    )
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    shown = 0

    def show_log() -> None:
        nonlocal shown
        lines, shown = log_lines(policy, shown)
        for line in lines:
            print(line)

    def on_packet(packet: bytes) -> None:
        try:
            ip = parse_ip(packet)
            reply = echo_reply_for(ip, parse_icmp(ip))
        except Exception:  # not ICMP echo: nothing to answer
            reply = None
        if reply is not None and any(ip.dst == addr_bytes(a) for a in addresses):
            tunnel.send_packet(reply)
        else:
            replies.put_nowait(packet)

    tunnel.on_packet = on_packet
    status = 0
    try:
        async with tunnel:
            rules = policy.describe() or "(none)"
            print(f"listening on UDP port {tunnel.listen_port}; rules:\n{rules}")
            start = time.monotonic()
            if args.ping:
                src = next((a for a in addresses if (":" in a) == (":" in args.ping)), None)
                if src is None:
                    raise ValueError("--ping needs an --address of the same family")
                answered: set[int] = set()
                sent_at: dict[int, float] = {}

                async def collect(until: float, waiting_for: int | None) -> None:
                    """Print replies as they come until *until*, or until the
                    reply to *waiting_for*; late and duplicate replies too."""
                    while (left := until - time.monotonic()) > 0:
                        try:
                            packet = await asyncio.wait_for(replies.get(), left)
                            msg = parse_icmp(parse_ip(packet))
                        except TimeoutError:
                            return
                        except Exception:  # not ICMP: nothing to report
                            continue
                        ms = (time.monotonic() - sent_at.get(msg.seq, time.monotonic())) * 1000
                        if msg.seq in answered:
                            print(f"DUPLICATE reply from {args.ping}: seq={msg.seq}")
                        elif msg.seq in sent_at:
                            late = "" if msg.seq == waiting_for else " (late)"
                            print(f"reply from {args.ping}: seq={msg.seq} time={ms:.1f} ms{late}")
                            answered.add(msg.seq)
                        if msg.seq == waiting_for:
                            return

                for seq in range(1, args.count + 1):
                    sent_at[seq] = sent = time.monotonic()
                    tunnel.send_packet(
                        build_echo(
                            addr_bytes(src),
                            addr_bytes(args.ping),
                            0x6D62,
                            seq,
                            b"misbehave",
                            reply=False,
                        )
                    )
                    await collect(sent + max(args.interval, 1.0), seq)
                    if seq not in answered:
                        print(f"no reply from {args.ping} yet: seq={seq}")
                    show_log()
                    await collect(sent + args.interval, None)
                await collect(time.monotonic() + 1.0, None)  # stragglers and copies
                show_log()
                print(f"{len(answered)} of {args.count} pings answered")
                status = 0 if answered else 2
            while (args.duration is None and not args.ping) or (
                args.duration is not None and time.monotonic() - start < args.duration
            ):
                await asyncio.sleep(0.5)
                show_log()
    finally:
        # Also on Ctrl-C, the way out of a run without --ping or --duration.
        show_log()
        tap.close()
        drops = ", ".join(f"{k} {v}" for k, v in sorted(device.drops.items())) or "none"
        print(f"our drops: {drops}")
    return status
