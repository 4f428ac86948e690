"""The one UDP address type of the package: ``(host, port)``, as asyncio's
datagram API gives and takes it (an IPv6 host without brackets, a scope id
if any in the host: ``("fe80::1%eth0", 51820)``). An endpoint, the source
of a datagram, where to send one."""

from __future__ import annotations

__all__ = ["Address"]

Address = tuple[str, int]
