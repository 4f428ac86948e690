from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
IN_CI = os.environ.get("CI", "").lower() == "true"


def load_vector(name: str) -> Any:
    with open(VECTORS / name, encoding="utf-8") as f:
        return json.load(f)


def need(condition: bool, reason: str) -> None:
    """Skip a test whose environment is missing, except in CI, where a missing
    environment is a failure: interop must run there."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def need_tool(name: str) -> str:
    path = shutil.which(name)
    need(path is not None, f"`{name}` is not installed")
    assert path is not None
    return path


async def closed_leaving(close: Awaitable[object], what: str, limit: float = 60.0) -> list[Any]:
    """Await *close* (the limit only stops a hang: then the test fails, naming
    *what* it waited for) and return the tasks still running besides this one."""
    try:
        await asyncio.wait_for(close, limit)
    except TimeoutError:
        pytest.fail(f"close() waited for {what}")
    await asyncio.sleep(0)
    me = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t is not me and not t.done()]


async def until(condition: Callable[[], bool], limit: float = 60.0) -> None:
    """Wait for *condition* (polled; the limit only stops a hang)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        assert loop.time() < deadline, "the condition never held"
        await asyncio.sleep(0.02)


def self_signed_pem(path: Path, addresses: Sequence[str]) -> None:
    """A self-signed certificate for *addresses* (IP SANs; the first is the
    common name), its key and itself in one PEM file, for TLS servers the
    tests run behind a tunnel."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, addresses[0])])
    now = datetime.datetime.now(datetime.UTC)
    sans = [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
        + cert.public_bytes(serialization.Encoding.PEM)
    )  # fmt: skip
