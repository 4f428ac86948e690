"""``up`` and ``down``: a TUN interface from a wg-quick file, as ``wg-quick
up`` / ``down`` bring one up and down (the service is :mod:`wireguard.io.up`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..io.up import LOG_DIRECTORY


def cmd_up(args: argparse.Namespace) -> int:
    from ..io.up import up

    return up(
        args.config,
        foreground=args.foreground,
        log_file=args.log,
        verbose=args.verbose,
        ready_fd=args.ready_fd,
    )


def cmd_down(args: argparse.Namespace) -> int:
    from ..io.up import down

    return down(args.target)


def add_parser(subparsers: Any) -> None:
    """Register ``up`` and ``down``."""
    up = subparsers.add_parser(
        "up",
        help="bring up a TUN interface from a wg-quick file (like wg-quick up)",
        description="Create interface NAME (the file name without .conf), set its addresses "
        "and routes, and run the endpoint in the background.",
    )
    up.add_argument("config", metavar="CONFIG", help="wg-quick file, e.g. /etc/wireguard/wg0.conf")
    up.add_argument("--foreground", action="store_true", help="stay attached and log to stderr")
    up.add_argument("--log", metavar="FILE", help=f"log file (default {LOG_DIRECTORY}/NAME.log)")
    up.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    up.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    up.set_defaults(func=cmd_up)
    down = subparsers.add_parser(
        "down", help="stop an interface started by up (like wg-quick down)"
    )
    down.add_argument("target", metavar="CONFIG|NAME", help="its wg-quick file or its name")
    down.set_defaults(func=cmd_down)
