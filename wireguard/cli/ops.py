"""Options of the long-running commands for running under an orchestrator:
endpoint re-resolution (``forward``, ``proxy``, ``up``) and the ``/metrics``
and ``/healthz`` server (``forward``, ``proxy``).

:func:`add_reresolve_arguments` and :func:`add_metrics_arguments` add the
options to a parser; :class:`Ops` starts what they ask for next to a running
:class:`~wireguard.io.rootless.RootlessTunnel` and stops it again.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from ..config import Config, ConfigError, load
from ..errors import KeyFormatError
from ..io import metricsserver, resolve
from ..io.metricsserver import (
    DEFAULT_HEALTH_AGE,
    Collector,
    HandshakeHealth,
    MetricsServer,
    parse_listen,
    rootless_collectors,
)
from ..io.resolve import REKEY_FAILED_AFTER, EndpointReresolver, reresolver_for
from ..io.rootless import RootlessTunnel
from ..keys import PublicKey
from . import CommandError, seconds

__all__ = [
    "Ops",
    "add_metrics_arguments",
    "add_reresolve_arguments",
    "check_ops_arguments",
    "reresolve_settings",
]


def add_reresolve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reresolve-after",
        type=seconds,
        default=REKEY_FAILED_AFTER,
        metavar="SECONDS",
        help="look a peer's Endpoint name up again while its latest handshake is older than "
        f"this, as wireguard-tools' reresolve-dns (default {REKEY_FAILED_AFTER:g}; 0: never)",
    )
    parser.add_argument(
        "--reresolve-interval",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="also look every Endpoint name up this often, following a changed address "
        "(default 0: only the handshake rule)",
    )


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics on /metrics and a health check on /healthz "
        "(HOST 127.0.0.1 unless given; * for every address)",
    )
    parser.add_argument(
        "--healthz-max-age",
        type=seconds,
        default=DEFAULT_HEALTH_AGE,
        metavar="SECONDS",
        help="/healthz answers 200 while a handshake is younger than this, else 503 "
        f"(default {DEFAULT_HEALTH_AGE:g})",
    )
    parser.add_argument(
        "--healthz-peer",
        metavar="PUBLIC_KEY",
        help="/healthz looks at this peer's handshakes only (default: any peer's)",
    )


def reresolve_settings(args: argparse.Namespace) -> tuple[float | None, float | None]:
    """(interval, stale_after) from the options, None for off; CommandError if negative."""
    for flag in ("reresolve_after", "reresolve_interval"):
        if getattr(args, flag) < 0:
            raise CommandError(f"--{flag.replace('_', '-')} must not be negative")
    return (args.reresolve_interval or None), (args.reresolve_after or None)


def check_ops_arguments(args: argparse.Namespace) -> None:
    """Refuse bad values of these options with one line, before anything starts."""
    reresolve_settings(args)
    if getattr(args, "metrics", None) is not None:
        try:
            parse_listen(args.metrics)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    if getattr(args, "healthz_max_age", DEFAULT_HEALTH_AGE) <= 0:
        raise CommandError("--healthz-max-age must be positive")
    if getattr(args, "healthz_peer", None) is not None:
        _peer_key(args.healthz_peer)


def _peer_key(text: str) -> PublicKey:
    try:
        return PublicKey.from_base64(text)
    except (KeyFormatError, ValueError):
        raise CommandError("--healthz-peer: not a public key (44 characters of base64)") from None


def interface_label(config_path: str | os.PathLike[str]) -> str:
    """The ``interface`` label: the config file's name without ``.conf``, as wg-quick names it."""
    base = os.path.basename(os.fspath(config_path))
    return base[:-5] if base.endswith(".conf") else base


def log_to_stderr(prefix: str, level: int = logging.INFO) -> Callable[[], None]:
    """Send re-resolution and metrics-server records of *level* and above to
    stderr as *prefix* lines; returns what undoes it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prefix}: %(message)s"))
    loggers = [resolve.log, metricsserver.log]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(level)
        lg.propagate = False

    def undo() -> None:
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.level, lg.propagate = level, propagate

    return undo


class Ops:
    """The re-resolver and the metrics server of one rootless command."""

    def __init__(self) -> None:
        self.reresolver: EndpointReresolver | None = None
        self.server: MetricsServer | None = None

    @classmethod
    async def start(
        cls,
        args: argparse.Namespace,
        tunnel: RootlessTunnel,
        forwards: Callable[[], Iterable[Any]] | None = None,
        *,
        collectors: Iterable[Collector] = (),
        say: Callable[[str], None] = print,
    ) -> Ops:
        """Start what *args* asks for: re-resolution of the config's endpoint
        names, and with ``--metrics`` the server, whose collectors are the
        tunnel's, the forwards', and *collectors* (a proxy's resolver, say)."""
        ops = cls()
        config = getattr(tunnel, "config", None)
        if not isinstance(config, Config):
            try:
                config = load(args.config)
            except (ConfigError, OSError) as exc:
                raise CommandError(f"{args.config}: {exc}") from None
        interval, stale_after = reresolve_settings(args)
        ops.reresolver = reresolver_for(
            tunnel.tunnel, config, interval=interval, stale_after=stale_after
        )
        if ops.reresolver.active:
            ops.reresolver.start()
            rules = []
            if stale_after is not None:
                rules.append(f"handshake older than {stale_after:g} s")
            if interval is not None:
                rules.append(f"every {interval:g} s")
            names = len(ops.reresolver.names)
            say(f"endpoint names re-resolved ({' or '.join(rules)}): {names} peer(s)")
        if getattr(args, "metrics", None) is not None:
            host, port = parse_listen(args.metrics)
            peer = None if args.healthz_peer is None else _peer_key(args.healthz_peer)
            health = HandshakeHealth(
                tunnel.device, lambda: tunnel.tunnel.now, args.healthz_max_age, peer
            )
            found = rootless_collectors(
                tunnel,
                interface_label(args.config),
                forwards=forwards,
                reresolver=ops.reresolver,
            )
            ops.server = MetricsServer([*found, *collectors], health, host=host, port=port)
            try:
                await ops.server.start()
            except OSError as exc:
                await ops.close()
                raise CommandError(
                    f"--metrics {args.metrics}: cannot listen: {exc.strerror or exc}"
                ) from None
            for h, p in ops.server.addresses:
                shown = f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
                say(f"metrics on http://{shown}/metrics, health on http://{shown}/healthz")
        return ops

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
        if self.reresolver is not None:
            await self.reresolver.close()
