"""Full handshakes per second: ours against `noiseprotocol`, in the same run.

A full handshake = initiation created, consumed, response created, consumed.
Ours includes the WireGuard framing and mac1 (more work than the bare Noise
handshake of the reference). Also reports the share of our time spent in
X25519 (counted calls x the measured cost of one call).

    python benchmarks/bench_handshake.py [--seconds 3]

Times are CPU time of this process (time.process_time), so other load on
the machine slows the clock less than it slows wall time; both sides of each
ratio are measured alternately in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from noise.connection import Keypair, NoiseConnection

from wireguard import crypto, handshake
from wireguard.constants import CONSTRUCTION, IDENTIFIER
from wireguard.cookie import CookieGenerator
from wireguard.crypto import dh_generate, dh_public, tai64n


def ours_once(
    si: crypto.DHPrivateKey, sr: crypto.DHPrivateKey, si_pub: bytes, sr_pub: bytes, ss: bytes
) -> None:
    gen_r, gen_i = CookieGenerator(sr_pub), CookieGenerator(si_pub)
    init, initiator = handshake.create_initiation(
        static_private=si, peer_public=sr_pub, psk=bytes(32), sender_index=1,
        ephemeral_private=dh_generate(), timestamp=tai64n(time.time()), cookies=gen_r,
        now=0.0, precomputed_ss=ss,
    )  # fmt: skip
    consumed = handshake.consume_initiation(init, static_private=sr, static_static={si_pub: ss})
    resp, _ = handshake.create_response(
        consumed, psk=bytes(32), sender_index=2, ephemeral_private=dh_generate(),
        cookies=gen_i, now=0.0,
    )  # fmt: skip
    handshake.consume_response(resp, initiator, 1)


def reference_once(si: bytes, sr: bytes, sr_pub: bytes) -> None:
    a = NoiseConnection.from_name(CONSTRUCTION)
    a.set_as_initiator()
    a.set_psks(bytes(32))
    a.set_prologue(IDENTIFIER)
    a.set_keypair_from_private_bytes(Keypair.STATIC, si)
    a.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, sr_pub)
    b = NoiseConnection.from_name(CONSTRUCTION)
    b.set_as_responder()
    b.set_psks(bytes(32))
    b.set_prologue(IDENTIFIER)
    b.set_keypair_from_private_bytes(Keypair.STATIC, sr)
    a.start_handshake()
    b.start_handshake()
    b.read_message(a.write_message(tai64n(time.time())))
    a.read_message(b.write_message(b""))


def rate(fn, seconds: float) -> float:
    n, start = 0, time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        for _ in range(20):
            fn()
        n += 20
    return n / elapsed


def x25519_cost(n: int = 2000) -> float:
    priv = X25519PrivateKey.generate()
    pub = X25519PublicKey.from_public_bytes(dh_public(dh_generate()))
    start = time.process_time()
    for _ in range(n):
        priv.exchange(pub)
    return (time.process_time() - start) / n


def count_x25519_calls(fn) -> int:
    """X25519 operations in one call of *fn*: exchanges and key loads (loading
    a private key derives its public key, a scalar multiplication too)."""
    calls = 0
    patched = []
    for cls in (crypto.DHPrivateKey, crypto.EphemeralDHKey):
        orig_init, orig_exchange = cls.__init__, cls.exchange

        def init(self, raw, _orig=orig_init):
            nonlocal calls
            calls += 1
            _orig(self, raw)

        def exchange(self, public, _orig=orig_exchange):
            nonlocal calls
            calls += 1
            return _orig(self, public)

        patched.append((cls, orig_init, orig_exchange))
        cls.__init__, cls.exchange = init, exchange
    try:
        fn()
    finally:
        for cls, orig_init, orig_exchange in patched:
            cls.__init__, cls.exchange = orig_init, orig_exchange
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    si, sr = dh_generate(os.urandom), dh_generate(os.urandom)
    si_pub, sr_pub = dh_public(si), dh_public(sr)
    ss = crypto.dh(si, sr_pub)
    # A device loads its static key once, as here; the reference is given
    # the same keys as bytes.
    si_key, sr_key = crypto.DHPrivateKey(si), crypto.DHPrivateKey(sr)

    def ours():
        ours_once(si_key, sr_key, si_pub, sr_pub, ss)

    def ref():
        reference_once(si, sr, sr_pub)

    ours_rates, ref_rates = [], []
    for r in range(args.rounds):
        ours_rates.append(rate(ours, args.seconds))
        ref_rates.append(rate(ref, args.seconds))
        print(f"round {r + 1}: ours {ours_rates[-1]:7.0f}/s  noiseprotocol {ref_rates[-1]:7.0f}/s",
              file=sys.stderr)  # fmt: skip
    o, n = statistics.median(ours_rates), statistics.median(ref_rates)
    calls = count_x25519_calls(ours)
    cost = x25519_cost()
    share = calls * cost * o
    print(f"python {platform.python_version()} on {platform.machine()}")
    print(f"ours:           {o:8.0f} full handshakes/s (median of {args.rounds})")
    print(f"noiseprotocol:  {n:8.0f} full handshakes/s (median of {args.rounds})")
    ratios = sorted(x / y for x, y in zip(ours_rates, ref_rates, strict=True))
    print(f"ratio:          {statistics.median(ratios):8.2f}x (median of the rounds' ratios; "
          f"{ratios[0]:.2f}-{ratios[-1]:.2f})")  # fmt: skip
    print(f"X25519:         {calls} operations per handshake x {cost * 1e6:.1f} us "
          f"= {share:.0%} of our time")  # fmt: skip


if __name__ == "__main__":
    main()
