"""``python -m wireguard proxy CONFIG --socks5 [HOST:]PORT --http [HOST:]PORT``:
SOCKS5 and HTTP proxies through a rootless tunnel, for applications that
cannot be changed (the proxies themselves are :mod:`wireguard.io.proxy`).

It shares the ``forward`` command's runtime and options
(:func:`wireguard.cli.forward.add_runtime_arguments`): one command may run
proxies and ``-L`` / ``-R`` forwards together. Credentials come from
``--user USER:PASSWORD``, ``--users-file FILE`` or ``--users-env VARIABLE``
(one ``user:password`` a line), so that passwords need not be on the
command line; nothing is added to the wg-quick file.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from ..io.proxy import (
    ProxyOptions,
    ProxySpec,
    ProxySpecError,
    make_proxy,
    parse_listen,
)
from ..io.rootless import RootlessTunnel
from . import CommandError, seconds
from .forward import add_runtime_arguments, check_runtime_arguments, run_runtime

__all__ = ["add_parser", "parse_users", "run"]

_DESCRIPTION = """\
SOCKS5 (CONNECT, UDP ASSOCIATE) and HTTP (CONNECT, absolute-URI) proxies
through WireGuard, as an unprivileged user: no TUN device, a userspace TCP/IP
stack owns the config's [Interface] Address. Names are resolved through the
tunnel by the config's DNS = servers (--host-resolver: by this host's, when
there is no DNS = line)."""

_EPILOG = """\
examples:
  --socks5 1080                   SOCKS5 on 127.0.0.1:1080 (curl --socks5-hostname)
  --http 8080                     HTTP proxy on 127.0.0.1:8080 (curl --proxy http://...)
  --socks5 '[::1]:1080' --http '*:8080'
  --socks5 1080 -L 5432:db.internal:5432   a proxy and a forward in one process
  --socks5 1080 --users-file users.txt     RFC 1929 / Basic auth, user:password a line

Refusals (connection cap, handshake timeout, bad requests, authentication,
unreachable hosts) are counted by reason in the status, printed to stderr
every --status seconds, on SIGUSR1 and at exit. SIGINT or SIGTERM stops it."""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add_runtime_arguments(parser)
    parser.add_argument(
        "--socks5", action="append", default=[], metavar="[HOST:]PORT",
        help="a SOCKS5 proxy on HOST:PORT (default host 127.0.0.1; '*' for all)",
    )  # fmt: skip
    parser.add_argument(
        "--http", action="append", default=[], metavar="[HOST:]PORT",
        help="an HTTP proxy on HOST:PORT (default host 127.0.0.1; '*' for all)",
    )  # fmt: skip
    parser.add_argument(
        "--user", action="append", default=[], metavar="USER:PASSWORD",
        help="require this username and password (repeatable; prefer --users-file)",
    )  # fmt: skip
    parser.add_argument(
        "--users-file", metavar="FILE",
        help="require the users of FILE: user:password a line, # comments",
    )  # fmt: skip
    parser.add_argument(
        "--users-env", metavar="VARIABLE",
        help="require the users in environment VARIABLE: user:password a line",
    )  # fmt: skip
    parser.add_argument(
        "--handshake-timeout", type=seconds, default=10.0, metavar="SECONDS",
        help="close a client that has not sent its SOCKS5 request or HTTP request head "
        "within this long (counted; default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--idle-timeout", type=seconds, default=60.0, metavar="SECONDS",
        help="close a keep-alive HTTP client idle this long (default 60)",
    )  # fmt: skip


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``proxy`` on the ``python -m wireguard`` sub-commands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "proxy",
        help="SOCKS5 and HTTP proxies through a rootless tunnel (names by its DNS), no root",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def parse_users(lines: list[str], where: str) -> dict[str, str]:
    """``user:password`` lines (blank lines and ``#`` comments skipped)."""
    users: dict[str, str] = {}
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user:
            raise CommandError(f"{where}:{n}: expected user:password")
        if len(user.encode()) > 255 or len(password.encode()) > 255:
            raise CommandError(f"{where}:{n}: a username or password is at most 255 bytes")
        users[user] = password
    return users


def _credentials(args: argparse.Namespace) -> dict[str, str] | None:
    users: dict[str, str] = {}
    for i, text in enumerate(args.user, 1):
        users.update(parse_users([text], f"--user #{i}"))
    if args.users_file:
        try:
            with open(args.users_file, encoding="utf-8") as f:
                users.update(parse_users(f.read().splitlines(), args.users_file))
        except OSError as exc:
            raise CommandError(f"{args.users_file}: {exc.strerror or exc}") from None
    if args.users_env:
        value = os.environ.get(args.users_env)
        if value is None:
            raise CommandError(f"--users-env: ${args.users_env} is not set")
        users.update(parse_users(value.splitlines(), f"${args.users_env}"))
    if (args.user or args.users_file or args.users_env) and not users:
        raise CommandError("the users given are empty: no one could authenticate")
    return users or None


def run(args: argparse.Namespace) -> int:
    if not (args.socks5 or args.http):
        raise CommandError("nothing to serve: give --socks5 and/or --http (or use `forward`)")
    try:
        specs: list[ProxySpec] = [parse_listen(t, "socks5") for t in args.socks5]
        specs += [parse_listen(t, "http") for t in args.http]
    except ProxySpecError as exc:
        raise CommandError(str(exc)) from None
    if args.handshake_timeout <= 0 or args.idle_timeout <= 0:
        raise CommandError("--handshake-timeout and --idle-timeout must be positive")
    forwards = check_runtime_arguments(args)
    options = ProxyOptions(
        credentials=_credentials(args),
        max_connections=args.max_connections,
        handshake_timeout=args.handshake_timeout,
        idle_timeout=args.idle_timeout,
        connect_timeout=args.connect_timeout,
    )

    def maker(spec: ProxySpec) -> Callable[[RootlessTunnel], Any]:
        return lambda tunnel: make_proxy(spec, tunnel, options)

    return run_runtime(args, forwards, [maker(s) for s in specs], name="proxy")
