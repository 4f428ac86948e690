"""``python -m wireguard``: key tools like ``wg genkey | wg pubkey | wg genpsk``
and the handshake walkthrough."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Sequence

from .crypto import seeded_random
from .errors import WireGuardError
from .keys import PresharedKey, PrivateKey


class CLIError(Exception):
    """An error to print on one line, exit status 1."""


def _read_key_from_stdin() -> str:
    # `wg pubkey` reads at most one line of base64 from stdin.
    data = sys.stdin.read(4096)
    if not data.strip():
        raise CLIError("Key is not the correct length or format")
    return data


def cmd_genkey(args: argparse.Namespace) -> int:
    print(PrivateKey.generate().to_base64())
    return 0


def cmd_genpsk(args: argparse.Namespace) -> int:
    print(PresharedKey.generate().to_base64())
    return 0


def cmd_pubkey(args: argparse.Namespace) -> int:
    try:
        key = PrivateKey.from_base64(_read_key_from_stdin())
    except WireGuardError:
        raise CLIError("Key is not the correct length or format") from None
    print(key.public_key.to_base64())
    return 0


def _optional_key(cls, text: str | None, what: str):  # type: ignore[no-untyped-def]
    if text is None:
        return None
    try:
        return cls.from_base64(text)
    except WireGuardError as exc:
        raise CLIError(f"{what}: {exc}") from None


def cmd_walkthrough(args: argparse.Namespace) -> int:
    from .walkthrough import format_walkthrough, run

    w = run(
        _optional_key(PrivateKey, args.initiator_key, "--initiator-key"),
        _optional_key(PrivateKey, args.responder_key, "--responder-key"),
        _optional_key(PresharedKey, args.psk, "--psk"),
        now=args.time if args.time is not None else time.time(),
        random=seeded_random(args.seed.encode()) if args.seed is not None else os.urandom,
    )
    print(format_walkthrough(w))
    return 0 if w.keys_agree else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(args.count)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wireguard", description="A pure-Python WireGuard endpoint and toolkit."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("genkey", help="print a new private key").set_defaults(func=cmd_genkey)
    sub.add_parser("genpsk", help="print a new preshared key").set_defaults(func=cmd_genpsk)
    sub.add_parser("pubkey", help="read a private key on stdin, print its public key").set_defaults(
        func=cmd_pubkey
    )
    w = sub.add_parser("walkthrough", help="print one full handshake step by step")
    w.add_argument("--initiator-key", metavar="BASE64", help="initiator's private key")
    w.add_argument("--responder-key", metavar="BASE64", help="responder's private key")
    w.add_argument("--psk", metavar="BASE64", help="preshared key")
    w.add_argument("--time", type=float, help="Unix time for the TAI64N timestamp")
    w.add_argument(
        "--seed",
        help="draw keys, ephemerals and indices from this seed: the same output every run",
    )
    w.set_defaults(func=cmd_walkthrough)
    from .decrypt import add_parser as add_decrypt_parser

    add_decrypt_parser(sub)
    from .io.up import add_parser as add_up_parser

    add_up_parser(sub)
    from .show import add_parser as add_show_parser

    add_show_parser(sub)
    from .misbehave import add_parser as add_misbehave_parser

    add_misbehave_parser(sub)
    from .forward import add_parser as add_forward_parser

    add_forward_parser(sub)
    d = sub.add_parser("demo", help="two endpoints on loopback: handshake, pings both ways, report")
    d.add_argument("--count", type=int, default=3, help="pings each way (default 3)")
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        _show_access_warnings_as_wg_quick()
        try:
            return int(args.func(args))
        except CLIError as exc:
            print(f"{parser.prog} {args.command}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130


def _show_access_warnings_as_wg_quick() -> None:
    """Print a config or key file's :class:`~wireguard.config.AccessWarning`
    as wg-quick does, one line on stderr (``Warning: `FILE' is world
    accessible``), once per file; other warnings as Python shows them."""
    from .config import AccessWarning

    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if isinstance(message, AccessWarning):
            print(message, file=sys.stderr if file is None else file)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning
    warnings.filterwarnings("once", category=AccessWarning)
