"""``up`` and ``down``: a TUN interface from a wg-quick file, as ``wg-quick
up`` / ``down`` bring one up and down (the service is :mod:`wireguard.io.up`)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from ..io.up import LOG_DIRECTORY


def _service_formatter(args: argparse.Namespace) -> logging.Formatter:
    """The service's lines in its log file: time, interface, pid, level."""
    if not args.foreground:
        return _Plain()
    from ..io.tun import interface_name
    from ..io.up import config_file

    name = interface_name(config_file(args.config))
    return logging.Formatter(f"%(asctime)s {name}[%(process)d] %(levelname)s %(message)s")


class _Plain(logging.Formatter):
    """What ``up`` and ``down`` say, as wg-quick says it (warnings marked)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"warning: {text}" if record.levelno >= logging.WARNING else text


def cmd_up(args: argparse.Namespace) -> int:
    from ..io.up import up
    from .ops import reresolve_settings

    interval, stale_after = reresolve_settings(args)
    return up(
        args.config,
        foreground=args.foreground,
        log_file=args.log,
        verbose=args.log_level <= logging.DEBUG,
        ready_fd=args.ready_fd,
        reresolve_interval=interval,
        reresolve_after=stale_after,
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
    up.add_argument(
        "config",
        metavar="CONFIG|NAME",
        help="wg-quick file, e.g. wg0.conf, or an interface name for /etc/wireguard/NAME.conf",
    )
    up.add_argument("--foreground", action="store_true", help="stay attached and log to stderr")
    up.add_argument("--log", metavar="FILE", help=f"log file (default {LOG_DIRECTORY}/NAME.log)")
    up.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    from .ops import add_reresolve_arguments

    add_reresolve_arguments(up)
    up.set_defaults(func=cmd_up, log_default=logging.INFO, log_formatter=_service_formatter)
    down = subparsers.add_parser(
        "down", help="stop an interface started by up (like wg-quick down)"
    )
    down.add_argument("target", metavar="CONFIG|NAME", help="its wg-quick file or its name")
    down.set_defaults(func=cmd_down, log_default=logging.INFO, log_formatter=lambda _: _Plain())
