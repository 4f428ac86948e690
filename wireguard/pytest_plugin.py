"""pytest fixtures with real WireGuard peers, for testing your own software.

Registered through the ``pytest11`` entry point ``wireguard.pytest_plugin``,
so with ``wireguard-sansio`` installed the fixtures are there to request;
``-p wireguard.pytest_plugin`` loads it where plugin autoloading is off
(``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``) and ``-p no:wireguard.pytest_plugin``
turns it off. Installing the package changes nobody's test run: this module
defines fixtures and nothing else (no hooks, options, markers or autouse
fixtures), and imports nothing of the package until a test requests one.

- :func:`wireguard_go_peer`: wireguard-go in a network namespace
  (:class:`~wireguard.testbed.peers.WireGuardGoPeer`);
- :func:`wireguard_kernel_peer`: Linux's WireGuard in a qemu guest
  (:class:`~wireguard.testbed.peers.KernelPeer`), on the session's
  :func:`wireguard_kernel_vm`;
- :func:`wireguard_rootless_tunnel`: this project's
  :class:`~wireguard.io.rootless.RootlessTunnel` as the client of a
  wireguard-go peer (:class:`~wireguard.testbed.peers.RootlessClient`);
- :func:`wireguard_misbehaving_peer`: this project's endpoint doing what
  :func:`wireguard_policy` says (:class:`~wireguard.testbed.peers.MisbehavingPeer`).

Each gives keys, addresses and the client's configuration, and removes what it
made when the test ends. Where the machine lacks what a fixture needs (root,
network namespaces, wireguard-go, qemu, a kernel image) the test is skipped
with the reason, or fails when the environment variable ``CI`` is ``true``.
docs/pytest-plugin.md has an example to copy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .misbehaviour import Policy
    from .testbed.kernel_vm import KernelVM
    from .testbed.peers import KernelPeer, MisbehavingPeer, RootlessClient, WireGuardGoPeer

__all__ = [
    "wireguard_go_peer",
    "wireguard_kernel_peer",
    "wireguard_kernel_vm",
    "wireguard_misbehaving_peer",
    "wireguard_policy",
    "wireguard_rootless_tunnel",
]


def _need(reason: str | None, what: str) -> None:
    """Skip (or, under CI=true, fail) with *reason*, if there is one."""
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {what} {reason}")
    pytest.skip(f"{what} {reason}")


def _need_netns(what: str, tools: tuple[str, ...] = ("ip", "wg", "wireguard-go")) -> None:
    from .testbed.netns import missing_netns

    _need(missing_netns(tools), what)


@pytest.fixture
def wireguard_go_peer() -> Iterator[WireGuardGoPeer]:
    """A wireguard-go peer in a network namespace of its own; you are in
    ``peer.client_ns`` with ``peer.client_config``."""
    _need_netns("wireguard_go_peer:")
    from .testbed.peers import WireGuardGoPeer

    with WireGuardGoPeer() as peer:
        peer.start()
        yield peer


@pytest.fixture(scope="session")
def wireguard_kernel_vm() -> Iterator[KernelVM]:
    """Debian's kernel with ``wireguard.ko`` in qemu, booted once per session
    (about 10 s without KVM) and powered off at its end."""
    from .testbed import kernel_vm

    _need(kernel_vm.missing(), "wireguard_kernel_vm:")
    vm = kernel_vm.KernelVM()
    try:
        vm.start()
    except kernel_vm.GuestError as exc:
        vm.stop()
        pytest.fail(f"the kernel WireGuard guest did not start: {exc}")
    except BaseException:  # OSError, CalledProcessError, KeyboardInterrupt: qemu may run
        vm.stop()
        raise
    try:
        yield vm
    finally:
        vm.stop()


@pytest.fixture
def wireguard_kernel_peer(wireguard_kernel_vm: KernelVM) -> Iterator[KernelPeer]:
    """Linux's WireGuard (``wg0`` in the guest, fresh keys each test); you
    are in ``peer.client_ns`` (the VM's namespace) with ``peer.client_config``."""
    from .testbed.peers import KernelPeer

    with KernelPeer(wireguard_kernel_vm) as peer:
        peer.start()
        yield peer


@pytest.fixture
def wireguard_rootless_tunnel(wireguard_go_peer: WireGuardGoPeer) -> RootlessClient:
    """This project's rootless tunnel, configured as the client of a
    wireguard-go peer: ``async with wireguard_rootless_tunnel.open() as
    tunnel`` in your test's event loop."""
    from .testbed.peers import RootlessClient

    return RootlessClient(wireguard_go_peer)


@pytest.fixture
def wireguard_policy() -> Policy:
    """The misbehaving peer's policy: none by default (a well-behaved peer).
    Parametrize or override this fixture to choose one, e.g.
    ``@pytest.mark.parametrize("wireguard_policy", [Policy([...])])``."""
    from .misbehaviour import Policy

    return Policy()


@pytest.fixture
def wireguard_misbehaving_peer(wireguard_policy: Policy) -> Iterator[MisbehavingPeer]:
    """This project's endpoint in a network namespace, misbehaving as
    ``wireguard_policy`` says, towards your implementation in
    ``peer.client_ns`` with ``peer.client_config``."""
    _need_netns("wireguard_misbehaving_peer:", ("ip",))  # the peer is ours: no wireguard-go
    from .testbed.peers import MisbehavingPeer

    with MisbehavingPeer(wireguard_policy) as peer:
        peer.start()
        yield peer
