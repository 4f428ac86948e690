"""A pure-Python, sans-I/O implementation of the WireGuard protocol.

The public API, importable from here:

- keys: :class:`PrivateKey`, :class:`PublicKey`, :class:`PresharedKey`;
- the sans-I/O endpoint: :class:`Device` and what its calls return,
  :class:`Effects` with the events :class:`HandshakeCompleted`,
  :class:`KeypairRotated`, :class:`EndpointChanged`, :class:`HandshakeFailed`,
  :class:`PeerExpired`, and the drop reasons :class:`Drop`;
- the asyncio bindings :class:`Tunnel` (a UDP socket driving a Device) and
  :class:`RootlessTunnel` (a Tunnel with a userspace TCP/IP stack, no root),
  loaded on first use so that ``import wireguard`` stays light;
- the error types, split as h11 splits them: :class:`LocalProtocolError`
  (the caller asked for something the protocol cannot do) and
  :class:`RemoteProtocolError` (what arrived is not acceptable).

Everything else lives in its module (``wireguard.config``, ``wireguard.uapi``,
``wireguard.capture``, ...); docs/api.md lists it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .device import (
    Device,
    Drop,
    Effects,
    EndpointChanged,
    Event,
    HandshakeCompleted,
    HandshakeFailed,
    KeypairRotated,
    PeerExpired,
)
from .errors import (
    AddressFormatError,
    CaptureCutShortError,
    CaptureFormatError,
    DecryptionError,
    HandshakeError,
    InvalidDHError,
    KeyFormatError,
    LocalProtocolError,
    MacError,
    MessageFormatError,
    RemoteProtocolError,
    ReplayError,
    WireGuardError,
)
from .keys import PresharedKey, PrivateKey, PublicKey

if TYPE_CHECKING:
    __version__: str
    from .io.rootless import RootlessTunnel
    from .io.tunnel import Tunnel

# A library logs and leaves the output to the application (the commands of
# ``python -m wireguard`` add their own handler): without one, nothing shows.
logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {"Tunnel": ".io.tunnel", "RootlessTunnel": ".io.rootless"}


def _version() -> str:
    """The installed distribution's version: one place, the package metadata
    (pyproject.toml), for ``wireguard.__version__`` and every ``--version``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wireguard-sansio")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value = globals()["__version__"] = _version()
        return value
    # The bindings import asyncio, sockets and the netstack: only when asked.
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AddressFormatError",
    "CaptureCutShortError",
    "CaptureFormatError",
    "DecryptionError",
    "Device",
    "Drop",
    "Effects",
    "EndpointChanged",
    "Event",
    "HandshakeCompleted",
    "HandshakeError",
    "HandshakeFailed",
    "InvalidDHError",
    "KeyFormatError",
    "KeypairRotated",
    "LocalProtocolError",
    "MacError",
    "MessageFormatError",
    "PeerExpired",
    "PresharedKey",
    "PrivateKey",
    "PublicKey",
    "RemoteProtocolError",
    "ReplayError",
    "RootlessTunnel",
    "Tunnel",
    "WireGuardError",
]
