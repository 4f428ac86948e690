"""Real WireGuard peers for tests: network namespaces, wireguard-go, the
kernel's WireGuard in a qemu guest, and a misbehaving peer.

- :mod:`wireguard.testbed.netns`: namespaces joined by a veth pair, a UDP
  socket inside one, wireguard-go configured with ``wg``;
- :mod:`wireguard.testbed.kernel_vm`: Debian's kernel (with ``wireguard.ko``)
  booted in qemu, commands on its serial port;
- :mod:`wireguard.testbed.peers`: ready tunnels, each with fresh keys,
  addresses and the client's configuration: :class:`WireGuardGoPeer`,
  :class:`KernelPeer`, :class:`MisbehavingPeer`, :class:`RootlessClient`.

The pytest fixtures on top are in :mod:`wireguard.pytest_plugin`
(docs/pytest-plugin.md). These modules need root, ``ip``, ``wg``,
``wireguard-go`` and, for the guest, qemu and a kernel image;
:func:`~wireguard.testbed.netns.missing_netns` and
:func:`~wireguard.testbed.kernel_vm.missing` say what is missing. Nothing
here imports pytest, and nothing is imported until asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .peers import KernelPeer, MisbehavingPeer, Peer, RootlessClient, WireGuardGoPeer

__all__ = ["KernelPeer", "MisbehavingPeer", "Peer", "RootlessClient", "WireGuardGoPeer"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import peers

        return getattr(peers, name)
    raise AttributeError(f"module 'wireguard.testbed' has no attribute {name!r}")
