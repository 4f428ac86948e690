"""The kernel WireGuard guest: a thin re-export of
:mod:`wireguard.testbed.kernel_vm` (the one copy, shared with the pytest
plugin), kept so ``from tests.interop import kernel_vm`` goes on working."""

from wireguard.testbed.kernel_vm import (
    DEBIAN_PACKAGES,
    GUEST_ETH,
    GUEST_MODULES,
    GUEST_TUN,
    GUEST_TUN6,
    GUEST_WG_PORT,
    HOST_TUN,
    HOST_TUN6,
    INIT,
    SLIRP_HOST,
    Cpio,
    GuestError,
    GuestResult,
    Kernel,
    KernelVM,
    build_initramfs,
    find_kernel,
    kernel_vm,
    missing,
    module_order,
)

__all__ = [
    "DEBIAN_PACKAGES",
    "GUEST_ETH",
    "GUEST_MODULES",
    "GUEST_TUN",
    "GUEST_TUN6",
    "GUEST_WG_PORT",
    "HOST_TUN",
    "HOST_TUN6",
    "INIT",
    "SLIRP_HOST",
    "Cpio",
    "GuestError",
    "GuestResult",
    "Kernel",
    "KernelVM",
    "build_initramfs",
    "find_kernel",
    "kernel_vm",
    "missing",
    "module_order",
]
