"""``python -m wireguard``: the command line, one module per command.

Every command reports a mistake the same way: one line on stderr,
``python -m wireguard COMMAND: what is wrong``, and exit status 1 (130 on
Ctrl-C). A command raises :class:`CommandError` for that; the library's own
errors (a :class:`~wireguard.errors.WireGuardError`, among them
:class:`~wireguard.config.ConfigError`, which names the file, line and key)
and an :class:`OSError` are reported alike; so is a mistake in the command
line itself (a missing or unknown argument), with where to find the usage,
instead of argparse's usage text and status 2. Warnings that a config or key
file can be read by others are printed as wg-quick prints them.

Logging: the library logs under the ``wireguard`` logger and its children
(``wireguard.io.tunnel``, ...) and prints nothing; a command shows those lines
on stderr, from its own default level (warnings; ``forward`` and ``up`` also
what they do, at info). Each ``-v`` shows one level more (down to debug),
each ``-q`` one less (down to nothing but the error that ends a command,
which is printed anyway).
Without either, wireguard-go's ``LOG_LEVEL`` names apply: ``verbose`` (or
``debug``), ``error``, ``silent``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn, TextIO

from ..errors import WireGuardError

__all__ = ["PROG", "CommandError", "build_parser", "log_level", "main", "seconds"]

PROG = "python -m wireguard"


class CommandError(Exception):
    """A command cannot do what was asked: one line on stderr, exit status 1."""


def seconds(text: str) -> float:
    """The ``type`` of an option taking a time in seconds: a number, and not
    ``nan`` (which :func:`float` takes, and which every range check passes)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with wg's manners: a mistake in the command line is one line
    naming the command, and status 1 (``--help`` and ``--version`` exit 0)."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _command_parser(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """The (sub)parser of the command *args* chose, the innermost one."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, subs[0].dest, None) if subs else None
        if chosen not in (subs[0].choices if subs else {}):
            return parser
        parser = subs[0].choices[chosen]


def build_parser() -> argparse.ArgumentParser:
    # Imported here: each command pulls in only what it needs when it runs,
    # so `genkey` does not load asyncio, pyroute2 or the netstack.
    from .. import __version__
    from . import decrypt, demo, forward, keys, mesh, misbehave, proxy, show, up, walkthrough

    parser = _Parser(prog=PROG, description="A pure-Python WireGuard endpoint and toolkit.")
    parser.add_argument(
        "--version", action="version", version=f"wireguard-sansio {__version__}"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (keys, walkthrough, decrypt, up, show, misbehave, forward, proxy, mesh, demo):
        module.add_parser(sub)
    for command in sub.choices.values():
        _add_logging_options(command)
    return parser


def _add_logging_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("logging")
    group.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (one level each: -vv debug)"
    )
    group.add_argument(
        "-q", "--quiet", action="count", default=0, help="log less (one level each)"
    )


# wireguard-go's LOG_LEVEL names (device/logger.go: verbose, error, silent).
_LOG_LEVEL_NAMES = {
    "verbose": logging.DEBUG,
    "debug": logging.DEBUG,
    "error": logging.ERROR,
    "silent": logging.CRITICAL + 10,
}
_STEPS = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL + 10)


def log_level(args: argparse.Namespace, default: int | None = None) -> int:
    """The level a command logs at: its default (``log_default``, else
    warnings, or *default*) moved one level by each ``-v``/``-q``, else
    ``LOG_LEVEL`` if set. (A command
    may also set ``log_formatter``, a function of the arguments returning the
    :class:`logging.Formatter` of its lines.)"""
    if default is None:
        default = getattr(args, "log_default", logging.WARNING)
    verbose, quiet = getattr(args, "verbose", 0), getattr(args, "quiet", 0)
    if not verbose and not quiet:
        named = _LOG_LEVEL_NAMES.get(os.environ.get("LOG_LEVEL", "").lower())
        return default if named is None else named
    step = min(range(len(_STEPS)), key=lambda i: abs(_STEPS[i] - default))
    return _STEPS[max(0, min(len(_STEPS) - 1, step - verbose + quiet))]


class _LineFormatter(logging.Formatter):
    """Info and debug lines as they are; warnings and errors with their
    level in front (``warning: ...``), as the commands print their own."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text}"
        return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the command they were given to, not by the top level
        _command_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    args.log_level = log_level(args)
    logger = logging.getLogger("wireguard")
    handler = logging.StreamHandler(sys.stderr)
    formatter = getattr(args, "log_formatter", None)
    handler.setFormatter(_LineFormatter() if formatter is None else formatter(args))
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(args.log_level)
    try:
        return _run(args)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


def _run(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        _show_access_warnings_as_wg_quick()
        try:
            status = int(args.func(args))
            sys.stdout.flush()  # a reader gone shows here, not at exit
            return status
        except BrokenPipeError:
            # The reader of our output left (``| head``): a C tool is ended
            # by SIGPIPE without a word; say nothing, and fail as it does.
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            return 128 + signal.SIGPIPE
        except (CommandError, WireGuardError) as exc:
            print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            what = exc.strerror or str(exc)
            if exc.filename is not None:
                what = f"{exc.filename}: {what}"
            print(f"{PROG} {args.command}: {what}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130


def _show_access_warnings_as_wg_quick() -> None:
    """Print a config or key file's :class:`~wireguard.config.AccessWarning`
    as wg-quick does, one line on stderr (``Warning: `FILE' is world
    accessible``), once per file; other warnings as Python shows them."""
    from ..config import AccessWarning

    show = warnings.showwarning

    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if isinstance(message, AccessWarning):
            print(message, file=sys.stderr if file is None else file)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning
    warnings.filterwarnings("once", category=AccessWarning)
