"""The package's curated API: what ``import wireguard`` gives, and that it
stays light (the asyncio bindings load on first use)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import wireguard


def test_every_public_name_resolves() -> None:
    for name in wireguard.__all__:
        assert getattr(wireguard, name) is not None, name
    from wireguard.device import Device
    from wireguard.io.rootless import RootlessTunnel
    from wireguard.io.tunnel import Tunnel

    assert wireguard.Device is Device
    assert wireguard.Tunnel is Tunnel and wireguard.RootlessTunnel is RootlessTunnel


def test_import_does_not_load_the_bindings() -> None:
    code = (
        "import sys, wireguard; "
        "print(sorted(m for m in ('asyncio', 'wireguard.io.tunnel', 'wireguard.netstack')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        wireguard.NoSuchThing  # noqa: B018


def test_one_version_from_the_package_metadata() -> None:
    from importlib.metadata import version

    expected = version("wireguard-sansio")
    assert wireguard.__version__ == expected
    out = subprocess.run([sys.executable, "-m", "wireguard", "--version"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout == f"wireguard-sansio {expected}\n"
