"""Write vectors/wireguard_golden.json: one WireGuard handshake with fixed keys,
ephemerals, indices and timestamp, computed WITHOUT this project's code.

The Noise bodies and the transport keys come from the independent
`noiseprotocol` package; the wire layout, mac1 and the transport messages are
built here from hashlib and `cryptography` directly, following the whitepaper
section 5.4. The project's tests then check its own handshake against this file
and re-run this computation to show the file is still what the reference gives.

    python -m tests.tools.make_golden > vectors/wireguard_golden.json
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import warnings

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from noise.connection import Keypair, NoiseConnection

INPUTS = {
    "initiator_static_private": "e84d0d3a6f3a6f8bd4b2d3f1b6e1f0f6a3b0c6c1d2e3f405162738495a6b7c4d",
    "responder_static_private": "c0ffee00112233445566778899aabbccddeeff00112233445566778899aabb4e",
    "initiator_ephemeral_private": "5851a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e6f",  # noqa: E501
    "responder_ephemeral_private": "40112233445566778899aabbccddeeff00112233445566778899aabbccddee7f",  # noqa: E501
    "preshared_key": "fa1afe1fa1afe1fa1afe1fa1afe1fa1afe1fa1afe1fa1afe1fa1afe1fa1afe1f",
    "initiator_index": 0x1A2B3C4D,
    "responder_index": 0x0BADCAFE,
    "timestamp": "4000000065a1b2c300000000",
    "transport": [
        {"from": "initiator", "counter": 0, "payload": ""},
        {"from": "responder", "counter": 0, "payload": "4500001c000000004001"},
        {"from": "initiator", "counter": 1, "payload": "00" * 33},
    ],
}

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"


def _pub(private_hex: str) -> bytes:
    key = X25519PrivateKey.from_private_bytes(bytes.fromhex(private_hex))
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _mac1(receiver_public: bytes, data: bytes) -> bytes:
    key = hashlib.blake2s(b"mac1----" + receiver_public).digest()
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def _conn(initiator: bool, static: str, ephemeral: str, psk: bytes, remote: bytes | None):
    conn = NoiseConnection.from_name(CONSTRUCTION)
    conn.set_as_initiator() if initiator else conn.set_as_responder()
    conn.set_psks(psk)
    conn.set_prologue(IDENTIFIER)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, bytes.fromhex(static))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, bytes.fromhex(ephemeral))
        if remote is not None:
            conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote)
        conn.start_handshake()
    return conn


def compute(inputs: dict = INPUTS) -> dict:
    psk = bytes.fromhex(inputs["preshared_key"])
    i_pub = _pub(inputs["initiator_static_private"])
    r_pub = _pub(inputs["responder_static_private"])
    ini = _conn(True, inputs["initiator_static_private"],
                inputs["initiator_ephemeral_private"], psk, r_pub)  # fmt: skip
    res = _conn(False, inputs["responder_static_private"],
                inputs["responder_ephemeral_private"], psk, None)  # fmt: skip

    body1 = bytes(ini.write_message(bytes.fromhex(inputs["timestamp"])))
    head1 = struct.pack("<II", 1, inputs["initiator_index"]) + body1
    initiation = head1 + _mac1(r_pub, head1) + bytes(16)
    res.read_message(body1)
    body2 = bytes(res.write_message(b""))
    head2 = struct.pack("<III", 2, inputs["responder_index"], inputs["initiator_index"]) + body2
    response = head2 + _mac1(i_pub, head2) + bytes(16)
    ini.read_message(body2)

    # noiseprotocol's split: the initiator's outbound cipher is T_send_i.
    t_i2r = bytes(ini.noise_protocol.cipher_state_encrypt.k)
    t_r2i = bytes(ini.noise_protocol.cipher_state_decrypt.k)
    transport = []
    for t in inputs["transport"]:
        payload = bytes.fromhex(t["payload"])
        padded = payload + bytes(-len(payload) % 16)
        key, receiver = (
            (t_i2r, inputs["responder_index"])
            if t["from"] == "initiator"
            else (t_r2i, inputs["initiator_index"])
        )
        nonce = bytes(4) + struct.pack("<Q", t["counter"])
        sealed = ChaCha20Poly1305(key).encrypt(nonce, padded, b"")
        transport.append(struct.pack("<IIQ", 4, receiver, t["counter"]).hex() + sealed.hex())

    return {
        "description": "One WireGuard handshake and three transport messages with fixed "
        "inputs; Noise bodies and keys from the noiseprotocol package, wire layout and "
        "mac1 from hashlib (tests/tools/make_golden.py).",
        "inputs": inputs,
        "initiator_static_public": i_pub.hex(),
        "responder_static_public": r_pub.hex(),
        "initiation": initiation.hex(),
        "response": response.hex(),
        "handshake_hash": bytes(ini.get_handshake_hash()).hex(),
        "transport_key_initiator_to_responder": t_i2r.hex(),
        "transport_key_responder_to_initiator": t_r2i.hex(),
        "transport_messages": transport,
    }


if __name__ == "__main__":
    json.dump(compute(), sys.stdout, indent=1)
    sys.stdout.write("\n")
