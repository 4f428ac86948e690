"""Where the fields of IPv4 and IPv6 headers are (RFC 791 section 3.1, RFC
8200 section 3), named once for every module that reads them: the Device
(cryptokey routing out by destination, in by source, and the kernel's
inner-packet checks), the capture reader, the TUN offloads and the
userspace stack.

Offsets are byte offsets from the start of the IP header; addresses are
slices, so ``packet[IPV4_DST]`` is the 4 raw bytes the allowed-IPs table
looks up.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "IPPROTO_ICMP",
    "IPPROTO_ICMPV6",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "IPV4_DST",
    "IPV4_FLAGS_FRAGMENT",
    "IPV4_HEADER_LEN",
    "IPV4_PROTOCOL",
    "IPV4_SRC",
    "IPV4_TOTAL_LENGTH",
    "IPV6_DST",
    "IPV6_HEADER_LEN",
    "IPV6_NEXT_HEADER",
    "IPV6_PAYLOAD_LENGTH",
    "IPV6_SRC",
    "destination",
]

# Protocol numbers (IANA), in IPv4's protocol field and IPv6's next header.
IPPROTO_ICMP: Final = 1
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
IPPROTO_ICMPV6: Final = 58

# IPv4 (RFC 791): version and IHL in byte 0, the header length in 32-bit words.
IPV4_HEADER_LEN: Final = 20  # without options
IPV4_TOTAL_LENGTH: Final = 2  # 16 bits, big-endian, header included
IPV4_FLAGS_FRAGMENT: Final = 6  # 3 flag bits and the 13-bit fragment offset
IPV4_PROTOCOL: Final = 9
IPV4_SRC: Final = slice(12, 16)
IPV4_DST: Final = slice(16, 20)

# IPv6 (RFC 8200): version in the top 4 bits of byte 0; a fixed 40-byte header.
IPV6_HEADER_LEN: Final = 40
IPV6_PAYLOAD_LENGTH: Final = 4  # 16 bits, big-endian, what follows the header
IPV6_NEXT_HEADER: Final = 6
IPV6_SRC: Final = slice(8, 24)
IPV6_DST: Final = slice(24, 40)


def destination(packet: bytes) -> bytes | None:
    """The destination address (4 or 16 raw bytes) of an IPv4 or IPv6 packet
    long enough to hold it, else None (kernel allowedips.c
    wg_allowedips_lookup_dst: what cryptokey routing sends by)."""
    n = len(packet)
    if n >= IPV4_HEADER_LEN and packet[0] >> 4 == 4:
        return packet[IPV4_DST]
    if n >= IPV6_HEADER_LEN and packet[0] >> 4 == 6:
        return packet[IPV6_DST]
    return None
