"""``python -m wireguard``: the command line, one module per command.

Every command reports a mistake the same way: one line on stderr,
``python -m wireguard COMMAND: what is wrong``, and exit status 1 (130 on
Ctrl-C). A command raises :class:`CommandError` for that; the library's own
errors (a :class:`~wireguard.errors.WireGuardError`, among them
:class:`~wireguard.config.ConfigError`, which names the file, line and key)
and an :class:`OSError` are reported alike. Warnings that a config or key
file can be read by others are printed as wg-quick prints them.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from ..errors import WireGuardError

__all__ = ["PROG", "CommandError", "build_parser", "main"]

PROG = "python -m wireguard"


class CommandError(Exception):
    """A command cannot do what was asked: one line on stderr, exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    # Imported here: each command pulls in only what it needs when it runs,
    # so `genkey` does not load asyncio, pyroute2 or the netstack.
    from .. import __version__
    from . import decrypt, demo, forward, keys, mesh, misbehave, proxy, show, up, walkthrough

    parser = argparse.ArgumentParser(
        prog=PROG, description="A pure-Python WireGuard endpoint and toolkit."
    )
    parser.add_argument(
        "--version", action="version", version=f"wireguard-sansio {__version__}"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (keys, walkthrough, decrypt, up, show, misbehave, forward, proxy, mesh, demo):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        _show_access_warnings_as_wg_quick()
        try:
            return int(args.func(args))
        except (CommandError, WireGuardError) as exc:
            print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130


def _show_access_warnings_as_wg_quick() -> None:
    """Print a config or key file's :class:`~wireguard.config.AccessWarning`
    as wg-quick does, one line on stderr (``Warning: `FILE' is world
    accessible``), once per file; other warnings as Python shows them."""
    from ..config import AccessWarning

    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if isinstance(message, AccessWarning):
            print(message, file=sys.stderr if file is None else file)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning
    warnings.filterwarnings("once", category=AccessWarning)
