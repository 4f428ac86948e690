"""``walkthrough``: one full handshake, every step printed beside the
whitepaper (the steps themselves are :mod:`wireguard.walkthrough`)."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, TypeVar

from ..crypto import TAI64_EPOCH, seeded_random
from ..errors import WireGuardError
from ..keys import PresharedKey, PrivateKey
from . import CommandError, seconds

_K = TypeVar("_K", PrivateKey, PresharedKey)


def _optional_key(cls: type[_K], text: str | None, what: str) -> _K | None:
    if text is None:
        return None
    try:
        return cls.from_base64(text)
    except WireGuardError as exc:
        raise CommandError(f"{what}: {exc}") from None


# The time a seeded run takes when none is given: the docs' example's, so that
# `--seed` alone repeats (the timestamp changes everything after it).
_SEEDED_TIME = 1_700_000_000.0


def cmd_walkthrough(args: argparse.Namespace) -> int:
    from ..walkthrough import format_walkthrough, run

    if args.time is not None:
        now = args.time
        # A TAI64 label (2**62 + 10 + the Unix seconds) is below 2**63.
        if not -TAI64_EPOCH <= now < (1 << 63) - TAI64_EPOCH:
            raise CommandError(f"--time {now:g}: outside what a TAI64N timestamp holds")
    elif args.seed is not None:
        now = _SEEDED_TIME
    else:
        now = time.time()
    w = run(
        _optional_key(PrivateKey, args.initiator_key, "--initiator-key"),
        _optional_key(PrivateKey, args.responder_key, "--responder-key"),
        _optional_key(PresharedKey, args.psk, "--psk"),
        now=now,
        # The seed's bytes as given: argv need not be UTF-8 (os.fsencode
        # undoes the surrogateescape that decoded it).
        random=seeded_random(os.fsencode(args.seed)) if args.seed is not None else os.urandom,
    )
    print(format_walkthrough(w))
    return 0 if w.keys_agree else 1


def add_parser(sub: Any) -> None:
    w = sub.add_parser("walkthrough", help="print one full handshake step by step")
    w.add_argument("--initiator-key", metavar="BASE64", help="initiator's private key")
    w.add_argument("--responder-key", metavar="BASE64", help="responder's private key")
    w.add_argument("--psk", metavar="BASE64", help="preshared key")
    w.add_argument(
        "--time",
        type=seconds,
        help="Unix time for the TAI64N timestamp (default: now; with --seed, 1700000000)",
    )
    w.add_argument(
        "--seed",
        help="draw keys, ephemerals and indices from this seed: the same output every run",
    )
    w.set_defaults(func=cmd_walkthrough)
