"""``genkey``, ``genpsk`` and ``pubkey``, as ``wg`` has them."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from typing import Any

from ..errors import WireGuardError
from ..keys import PresharedKey, PrivateKey
from . import CommandError

# What `wg pubkey` says of anything but one key (pubkey.c), and the
# whitespace it allows after it (char_is_space in ctype.h).
_NOT_A_KEY = "Key is not the correct length or format"
_TRAILING = "Trailing characters found after key"
_SPACE = " \t\n\v\f\r\0"


def _warn_if_world_accessible() -> None:
    """What ``wg genkey`` and ``wg genpsk`` say (genkey.c) when standard
    output is a regular file with a permission bit for others."""
    try:
        mode = os.fstat(sys.stdout.fileno()).st_mode
    except (OSError, ValueError):
        return
    if stat.S_ISREG(mode) and mode & stat.S_IRWXO:
        sys.stderr.write(
            "Warning: writing to world accessible file.\n"
            "Consider setting the umask to 077 and trying again.\n"
        )


def cmd_genkey(args: argparse.Namespace) -> int:
    _warn_if_world_accessible()
    print(PrivateKey.generate().to_base64())
    return 0


def cmd_genpsk(args: argparse.Namespace) -> int:
    _warn_if_world_accessible()
    print(PresharedKey.generate().to_base64())
    return 0


def cmd_pubkey(args: argparse.Namespace) -> int:
    # As `wg pubkey` (pubkey.c): 44 characters, then what follows them, read to
    # the end, may only be whitespace or NULs, then those 44 must be the key.
    text = sys.stdin.read(44)
    if len(text) != 44:
        raise CommandError(_NOT_A_KEY)
    while rest := sys.stdin.read(4096):
        if rest.strip(_SPACE):
            raise CommandError(_TRAILING)
    if text != text.strip(_SPACE):  # from_base64 would take that whitespace
        raise CommandError(_NOT_A_KEY)
    try:
        key = PrivateKey.from_base64(text)
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
