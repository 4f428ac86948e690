"""``genkey``, ``genpsk`` and ``pubkey``, as ``wg`` has them."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import WireGuardError
from ..keys import PresharedKey, PrivateKey
from . import CommandError

# What `wg pubkey` says of anything but one key.
_NOT_A_KEY = "Key is not the correct length or format"


def cmd_genkey(args: argparse.Namespace) -> int:
    print(PrivateKey.generate().to_base64())
    return 0


def cmd_genpsk(args: argparse.Namespace) -> int:
    print(PresharedKey.generate().to_base64())
    return 0


def cmd_pubkey(args: argparse.Namespace) -> int:
    # `wg pubkey` reads at most one line of base64 from stdin.
    data = sys.stdin.read(4096)
    try:
        key = PrivateKey.from_base64(data)
    except WireGuardError:
        raise CommandError(_NOT_A_KEY) from None
    print(key.public_key.to_base64())
    return 0


def add_parser(sub: Any) -> None:
    sub.add_parser("genkey", help="print a new private key").set_defaults(func=cmd_genkey)
    sub.add_parser("genpsk", help="print a new preshared key").set_defaults(func=cmd_genpsk)
    sub.add_parser("pubkey", help="read a private key on stdin, print its public key").set_defaults(
        func=cmd_pubkey
    )
