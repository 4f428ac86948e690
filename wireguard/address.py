"""The one UDP address type of the package: ``(host, port)``, as asyncio's
datagram API gives and takes it (an IPv6 host without brackets, a scope id
if any in the host: ``("fe80::1%eth0", 51820)``). An endpoint, the source
of a datagram, where to send one.

A binding that learns which local address each datagram arrived on (the
TUN binding does, from ``IP_PKTINFO``/``IPV6_PKTINFO``) adds it as a third
element: ``(host, port, local)``, the path to the peer rather than its
address alone, as the kernel's ``struct endpoint`` pairs the peer's address
with our source address. The :class:`~wireguard.device.Device` does not look
inside it: it compares and keeps the whole tuple as the peer's endpoint
(roaming to the same remote address from another local address changes the
endpoint but is not reported as roaming), hands it back with every datagram
for that peer so that replies leave from the address the peer last reached,
and drops the third element where the kernel clears an endpoint's source
(a handshake retried or renewed by a timer), keeping ``(host, port)``.
"""

from __future__ import annotations

__all__ = ["Address"]

Address = tuple[str, int] | tuple[str, int, str]
