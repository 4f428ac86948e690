"""``python -m wireguard forward CONFIG -L ... -R ...``: port forwarding
through a rootless tunnel, like ``ssh -L`` / ``ssh -R`` (the forwards
themselves are :mod:`wireguard.io.forward`).

This module is also the runtime ``python -m wireguard proxy`` shares
(:mod:`wireguard.cli.proxy`): :func:`add_runtime_arguments` adds the options
both commands take to a parser, :func:`serve` runs the tunnel with its
forwards and proxies. The tunnel state and per-forward counters are printed
to stderr every ``--status`` seconds, on SIGUSR1 and at exit. SIGINT or
SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..config import ConfigError
from ..errors import LocalProtocolError
from ..io.forward import (
    DEFAULT_TCP_CONNECTIONS,
    DEFAULT_UDP_FLOWS,
    Forward,
    ForwardOptions,
    ForwardSpec,
    ForwardSpecError,
    fit_descriptors,
    make_forward,
    parse_forward,
    why,
)
from ..io.rootless import RootlessTunnel, format_bytes
from . import PROG as _PROG
from . import CommandError, log_level, seconds
from . import ops as _ops

PROG = f"{_PROG} forward"

__all__ = ["add_parser", "add_runtime_arguments", "run", "runtime_options", "serve"]


def _log(text: str, name: str = "forward") -> None:
    print(f"{name}: {text}", file=sys.stderr, flush=True)


def _short(f: Any) -> str:
    """A forward's or a proxy's part of the periodic status line."""
    if not isinstance(f, Forward):
        return str(f.short())
    c = f.counters
    return (
        f"-{f.spec.kind}{f.spec.bind_port} {c.active}/{c.total} "
        f"up {format_bytes(c.to_tunnel)} down {format_bytes(c.from_tunnel)}"
        + (f" evicted {c.evicted}" if c.evicted else "")
        + (f" refused {c.refused}" if c.refused else "")
        + (f" lost {c.discarded} B" if c.discarded else "")
        + (f" dropped {c.dropped}" if c.dropped else "")
    )


def _status_line(tunnel: RootlessTunnel, forwards: list[Any]) -> str:
    return " | ".join([tunnel.status().summary(), *(_short(f) for f in forwards)])


# The stack's counters that _report's "stack:" line shows whatever their value.
_STACK_LINE = frozenset(
    {
        "packets_received",
        "packets_sent",
        "tcp_retransmits",
        "tcp_fast_recoveries",
        "tcp_recoveries_undone",
        "tcp_loss_probes",
        "tcp_timeouts",
        "icmp_echo_answered",
    }
)


def _report(
    tunnel: RootlessTunnel, forwards: list[Any], title: str, name: str = "forward"
) -> None:
    def _log(text: str) -> None:
        print(f"{name}: {text}", file=sys.stderr, flush=True)

    status = tunnel.status()
    _log(f"{title}: addresses {', '.join(status.addresses)}, UDP port {status.listen_port}")
    for line in status.summary().split("; "):
        _log(f"  {line}")
    _log(f"  {tunnel.names.describe()}")
    names = tunnel.names.stats
    if names:
        _log("  names: " + ", ".join(f"{k} {v}" for k, v in sorted(names.items())))
    st = status.stack
    if st is not None:
        _log(
            f"  stack: {st.packets_received} packets in, {st.packets_sent} out, "
            f"{status.tcp_connections} TCP connections, {st.tcp_retransmits} retransmits "
            f"({st.tcp_fast_recoveries} fast recoveries, {st.tcp_recoveries_undone} undone, "
            f"{st.tcp_loss_probes} loss probes, "
            f"{st.tcp_timeouts} timeouts), "
            f"{st.icmp_echo_answered} pings answered"
        )
        # Every other counter that is not zero: what the stack dropped or
        # refused (a hostile peer's SYN floods, out-of-order data, ...).
        others = [
            f"{f.name} {getattr(st, f.name)}"
            for f in dataclasses.fields(st)
            if f.name not in _STACK_LINE and getattr(st, f.name)
        ]
        if others:
            _log("  stack counters: " + ", ".join(others))
    drops = {k: v for k, v in tunnel.device.drops.items() if v}
    if drops:
        _log("  device drops: " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
    if status.losses:
        _log("  not passed on: " + ", ".join(f"{k} {v}" for k, v in status.losses.items()))
    for f in forwards:
        _log(f"  {f.line()}")


def runtime_options(args: argparse.Namespace) -> ForwardOptions:
    """The forwards' options from the shared arguments."""
    return ForwardOptions(
        args.connect_timeout, args.udp_timeout, args.udp_flows, args.max_connections
    )


def _next_wake(now: float, next_status: float | None) -> float:
    """How long the serving loop sleeps: at most a second (idle UDP flows
    expire), and no later than the next status line (--status may be below a
    second)."""
    if next_status is None:
        return 1.0
    return max(0.0, min(1.0, next_status - now))


async def serve(
    args: argparse.Namespace,
    specs: list[ForwardSpec],
    proxies: Sequence[Callable[[RootlessTunnel], Any]] = (),
    name: str = "forward",
) -> int:
    """Run the tunnel of ``args.config`` with the forwards *specs* and the
    proxies *proxies* make (each a callable taking the tunnel and returning
    an object with ``start``, ``close``, ``expire``, ``line``, ``short``,
    ``where`` and ``spec``), until SIGINT or SIGTERM; *name* prefixes the
    lines on stderr."""

    def say(text: str) -> None:
        _log(text, name)

    try:
        tunnel = await RootlessTunnel.from_config(
            args.config, control=args.control, host_resolver=args.host_resolver
        )
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"{args.config}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CommandError(f"{args.config}: {exc}") from None
    try:
        await tunnel.start()
    except OSError as exc:
        raise CommandError(f"cannot open the tunnel: {why(exc)}") from None
    running: list[Any] = []
    ops: _ops.Ops | None = None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    try:
        made: list[Any] = [make_forward(spec, tunnel, runtime_options(args)) for spec in specs]
        made += [make(tunnel) for make in proxies]
        for note in fit_descriptors(made):
            say(note)
        for service in made:
            try:
                await service.start()
            except (OSError, LocalProtocolError) as exc:
                raise CommandError(f"{service.spec}: cannot listen: {why(exc)}") from None
            running.append(service)
            say(f"{service.spec}: listening on {service.where}")
        ops = await _ops.Ops.start(args, tunnel, lambda: running, say=say)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, _report, tunnel, running, "status", name)
        _report(tunnel, running, "ready", name)
        interval = args.status
        next_status = loop.time() + interval if interval > 0 else None
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_next_wake(loop.time(), next_status)):
                    await stop.wait()
            now = loop.time()
            for service in running:
                service.expire(now)
            if next_status is not None and now >= next_status:
                next_status = now + interval
                say(time.strftime("%H:%M:%S ") + _status_line(tunnel, running))
        _report(tunnel, running, "exiting", name)
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
        if ops is not None:
            await ops.close()
        for service in running:
            await service.close()
        await tunnel.close()


_DESCRIPTION = """\
Forward ports through WireGuard like ssh -L / -R, as an unprivileged user: no
TUN device, a userspace TCP/IP stack owns the config's [Interface] Address."""

_EPILOG = """\
examples:
  -L 8080:10.0.0.1:80            127.0.0.1:8080 here -> 10.0.0.1:80 behind the peer
  -L '*:8080:10.0.0.1:80'        the same on all local addresses
  -L [::1]:8080:[fd00::1]:80     IPv6 in brackets
  -L udp:5353:10.0.0.1:53        UDP, one flow per client (at most --udp-flows)
  -R 2222:127.0.0.1:22           peers reach our local sshd at <Address>:2222
  -R udp:10.0.0.2:514:localhost:514

The tunnel state and per-forward counters go to stderr every --status seconds,
on SIGUSR1 and at exit. SIGINT or SIGTERM stops it."""


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``forward`` and ``proxy`` share (the one place to add
    another): the config, -L/-R, the control socket, the status interval,
    the timeouts and caps, the resolver."""
    parser.add_argument(
        "config", metavar="CONFIG",
        help="wg-quick file; Address = the stack's own, DNS = the servers names go to",
    )  # fmt: skip
    parser.add_argument(
        "-L",
        dest="local",
        action="append",
        default=[],
        metavar="[udp:][BIND:]PORT:HOST:HOSTPORT",
        help="listen here on BIND:PORT (default 127.0.0.1), connect through the tunnel to HOST "
        "(an address, or a name the DNS = servers resolve)",
    )
    parser.add_argument(
        "-R",
        dest="remote",
        action="append",
        default=[],
        metavar="[udp:][ADDR:]PORT:LOCAL_HOST:LOCAL_PORT",
        help="listen in the tunnel on the stack's PORT (0: a free one, named at start-up), "
        "pass connections to LOCAL_HOST:LOCAL_PORT",
    )
    parser.add_argument(
        "--control",
        metavar="NAME|PATH",
        help="open the `wg` control socket: NAME for /var/run/wireguard/NAME.sock, or a path",
    )
    parser.add_argument(
        "--status",
        type=seconds,
        default=10.0,
        metavar="SECONDS",
        help="print a status line this often (0: only on SIGUSR1 and at exit; default 10)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="give up on a connection's other side after this long (default 30)",
    )
    parser.add_argument(
        "--udp-timeout",
        type=seconds,
        default=60.0,
        metavar="SECONDS",
        help="forget a UDP flow idle this long (default 60)",
    )
    parser.add_argument(
        "--udp-flows",
        type=int,
        default=DEFAULT_UDP_FLOWS,
        metavar="N",
        help="at most N UDP flows per forward; a new one evicts the least recently active "
        f"(counted; default {DEFAULT_UDP_FLOWS})",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_TCP_CONNECTIONS,
        metavar="N",
        help="at most N TCP connections open per forward; beyond it -R leaves them in the "
        f"stack's accept queue, -L refuses them (counted; default {DEFAULT_TCP_CONNECTIONS})",
    )
    parser.add_argument(
        "--host-resolver",
        action="store_true",
        help="without a DNS = line, resolve names with this host's resolver (default: refuse "
        "names, so internal names never leak to the local resolver)",
    )
    _ops.add_reresolve_arguments(parser)
    _ops.add_metrics_arguments(parser)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``forward`` on the ``python -m wireguard`` sub-commands (the
    result of ``parser.add_subparsers()``); sets ``func`` to :func:`run`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "forward",
        help="forward ports through a rootless tunnel (like ssh -L / -R), no root, no TUN",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_runtime_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def check_runtime_arguments(args: argparse.Namespace) -> list[ForwardSpec]:
    """The -L/-R specs; a CommandError for any shared option out of range."""
    specs: list[ForwardSpec] = []
    try:
        specs += [parse_forward(t, "L") for t in args.local]
        specs += [parse_forward(t, "R") for t in args.remote]
    except ForwardSpecError as exc:
        raise CommandError(str(exc)) from None
    for value, flag in ((args.status, "--status"), (args.udp_timeout, "--udp-timeout")):
        if value < 0:
            raise CommandError(f"{flag} must not be negative")
    if args.connect_timeout <= 0:
        raise CommandError("--connect-timeout must be positive")
    if args.udp_flows < 1:
        raise CommandError("--udp-flows must be at least 1")
    if args.max_connections < 1:
        raise CommandError("--max-connections must be at least 1")
    _ops.check_ops_arguments(args)
    if not os.path.exists(args.config):
        raise CommandError(f"{args.config}: No such file or directory")
    return specs


def run_runtime(
    args: argparse.Namespace,
    specs: list[ForwardSpec],
    proxies: Sequence[Callable[[RootlessTunnel], Any]] = (),
    name: str = "forward",
) -> int:
    """:func:`serve` in a new event loop, the runtime's log on stderr."""
    # What the forwards and proxies log about their connections goes where the status does.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{name}: %(message)s"))
    from ..io import forward as forward_runtime
    from ..io import proxy as proxy_runtime

    loggers = [forward_runtime.log, proxy_runtime.log]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(log_level(args, logging.INFO))
        lg.propagate = False
    undo_ops_log = _ops.log_to_stderr(name, log_level(args, logging.INFO))
    try:
        return asyncio.run(serve(args, specs, proxies, name))
    finally:
        undo_ops_log()
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.level, lg.propagate = level, propagate


def run(args: argparse.Namespace) -> int:
    return run_runtime(args, check_runtime_arguments(args))
