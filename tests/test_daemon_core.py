"""What the drop-in daemon (issue 13) needs of the core and of the UDP
binding, without root:

- sticky sources in the Device: an endpoint with the local address the peer
  reached us on, kept per peer, handed back with every datagram, forgotten
  where the kernel forgets it (timers.c, netlink.c, socket.c);
- the sessions forgotten when the interface goes down (device.c wg_stop);
- the UDP binding sending from that address (IPV6_PKTINFO), on loopback's
  127.0.0.2, and falling back when the kernel refuses it;
- the UDP socket closed and opened with the link;
- a ``get`` answer for a peer with very many allowed IPs in bounded pieces.
"""

from __future__ import annotations

import asyncio
import socket
import time

from wireguard.constants import KEEPALIVE_TIMEOUT, REKEY_TIMEOUT
from wireguard.device import Device, Drop, EndpointChanged, HandshakeCompleted
from wireguard.io.tunnel import Tunnel
from wireguard.keys import PrivateKey
from wireguard.uapi import ALLOWED_IPS_PER_STEP, UAPI, UAPIConnection, format_endpoint
from wireguard.uapi import _format_ip as format_ip


def ipv4_ping(src: str, dst: str, size: int = 64) -> bytes:
    total = 20 + size
    header = bytearray(20)
    header[0], header[8], header[9] = 0x45, 64, 1
    header[2:4] = total.to_bytes(2, "big")
    header[12:16] = socket.inet_aton(src)
    header[16:20] = socket.inet_aton(dst)
    return bytes(header) + bytes(size)


def devices() -> tuple[Device, Device]:
    a, b = Device(PrivateKey.generate()), Device(PrivateKey.generate())
    a.add_peer(b.public_key, allowed_ips=["10.0.0.2/32"], endpoint=("192.0.2.2", 51820))
    b.add_peer(a.public_key, allowed_ips=["10.0.0.1/32"], endpoint=("192.0.2.1", 51821))
    return a, b


# b's view of a: a reached b's local address 192.0.2.20 (of two).
A_VIA_20 = ("192.0.2.1", 51821, "192.0.2.20")
A_VIA_30 = ("192.0.2.1", 51821, "192.0.2.30")


def handshake(a: Device, b: Device, now: float, source=A_VIA_20):  # type: ignore[no-untyped-def]
    """a initiates; b sees it arrive from *source*; returns b's effects."""
    init = a.initiate_handshake(b.public_key, now).datagrams[0][0]
    out = b.receive_datagram(init, source, now)
    response = out.datagrams[0][0]
    a.receive_datagrams([(response, ("192.0.2.2", 51820))], now)
    return out


def test_reply_goes_back_by_the_path_it_came() -> None:
    a, b = devices()
    out = handshake(a, b, 1.0)
    peer = b.peers[a.public_key]
    # The response goes to the source as given, local address and all, and
    # the peer's endpoint is that path: what b sends next leaves from it.
    assert out.datagrams[0][1] == A_VIA_20 and peer.endpoint == A_VIA_20
    # Only the local address was added to what was configured: not roaming.
    assert not [e for e in out.events if isinstance(e, EndpointChanged)]
    sent = b.send_packet(ipv4_ping("10.0.0.2", "10.0.0.1"), 1.1)
    # (b is the responder: its packet waits for key confirmation.)
    data = a.send_packet(ipv4_ping("10.0.0.1", "10.0.0.2"), 1.1).datagrams[0][0]
    got = b.receive_datagrams([(data, A_VIA_20)], 1.2)
    assert all(where == A_VIA_20 for _, where in sent.datagrams + got.datagrams)
    assert len(got.packets) == 1


def test_a_new_local_address_alone_is_not_roaming() -> None:
    a, b = devices()
    handshake(a, b, 1.0)
    data = a.send_packet(ipv4_ping("10.0.0.1", "10.0.0.2"), 1.1).datagrams[0][0]
    got = b.receive_datagrams([(data, A_VIA_30)], 1.2)
    assert b.peers[a.public_key].endpoint == A_VIA_30
    assert not [e for e in got.events if isinstance(e, EndpointChanged)]
    # The remote address changing is roaming, reported as ever.
    data = a.send_packet(ipv4_ping("10.0.0.1", "10.0.0.2"), 1.3).datagrams[0][0]
    moved = ("192.0.2.9", 40000, "192.0.2.30")
    got = b.receive_datagrams([(data, moved)], 1.4)
    changed = [e for e in got.events if isinstance(e, EndpointChanged)]
    assert [(e.old, e.new) for e in changed] == [(A_VIA_30, moved)]


def test_timers_forget_the_local_address_as_the_kernel_does() -> None:
    """A handshake retried (no response within REKEY_TIMEOUT) and one renewed
    (data unanswered for KEEPALIVE + REKEY_TIMEOUT) go out without the
    local address, in case it is the trouble (timers.c,
    wg_socket_clear_peer_endpoint_src)."""
    a, b = devices()
    handshake(a, b, 1.0)
    peer = b.peers[a.public_key]
    first = b.initiate_handshake(a.public_key, 10.0)  # unanswered
    assert first.datagrams[0][1] == A_VIA_20
    retry = b.handle_timer(10.0 + REKEY_TIMEOUT + 0.4)
    assert retry.datagrams and {w for _, w in retry.datagrams} == {A_VIA_20[:2]}
    assert peer.endpoint == A_VIA_20[:2]
    # Learnt again from the next authenticated packet, silently.
    a2, b2 = devices()
    handshake(a2, b2, 1.0)
    data = a2.send_packet(ipv4_ping("10.0.0.1", "10.0.0.2"), 1.1).datagrams[0][0]
    b2.receive_datagrams([(data, A_VIA_20)], 1.2)
    later = b2.send_packet(ipv4_ping("10.0.0.2", "10.0.0.1"), 1.3)  # data, no answer
    assert later.datagrams[0][1] == A_VIA_20
    renewed = b2.handle_timer(1.3 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + 0.4)
    assert renewed.datagrams and renewed.datagrams[-1][1] == A_VIA_20[:2]


def test_clear_endpoint_sources() -> None:
    a, b = devices()
    c = Device(PrivateKey.generate())
    b.add_peer(c.public_key, allowed_ips=["10.0.0.3/32"], endpoint=("192.0.2.3", 1, "192.0.2.30"))
    handshake(a, b, 1.0)
    assert b.clear_endpoint_sources("192.0.2.99") == 0
    assert b.clear_endpoint_sources("192.0.2.20") == 1
    assert b.peers[a.public_key].endpoint == A_VIA_20[:2]
    assert b.peers[c.public_key].endpoint == ("192.0.2.3", 1, "192.0.2.30")
    assert b.clear_endpoint_sources() == 1
    assert b.peers[c.public_key].endpoint == ("192.0.2.3", 1)
    # `wg show` shows the peer's address, never ours.
    assert format_endpoint(A_VIA_20) == "192.0.2.1:51821"
    assert format_endpoint(("fd00::1", 5, "fd00::20")) == "[fd00::1]:5"


def test_clear_sessions_as_the_interface_goes_down() -> None:
    a, b = devices()
    handshake(a, b, 1.0)
    data = a.send_packet(ipv4_ping("10.0.0.1", "10.0.0.2"), 1.1).datagrams[0][0]
    b.receive_datagrams([(data, A_VIA_20)], 1.2)
    peer = b.peers[a.public_key]
    replay = a.initiate_handshake(b.public_key, 7.0).datagrams[0][0]
    b.receive_datagram(replay, A_VIA_20, 7.0)  # consumed: a replay from now on
    rx, tx, last = peer.rx_bytes, peer.tx_bytes, peer.last_handshake
    peer.stage(b"x")
    b.clear_sessions()
    assert peer.current is peer.previous is peer.next is None and peer.handshake is None
    assert not b._index and b.next_deadline() is None
    assert b.drops[Drop.STAGED_PURGED] == 1
    assert (peer.rx_bytes, peer.tx_bytes, peer.last_handshake) == (rx, tx, last)
    # An old initiation is still a replay; a packet starts a handshake at once.
    before = b.drops[Drop.REPLAYED_TIMESTAMP]
    b.receive_datagram(replay, A_VIA_20, 8.0)
    assert b.drops[Drop.REPLAYED_TIMESTAMP] == before + 1
    out = b.send_packet(ipv4_ping("10.0.0.2", "10.0.0.1"), 8.1)
    assert len(out.datagrams) == 1 and len(out.datagrams[0][0]) == 148
    answer = a.receive_datagram(out.datagrams[0][0], ("192.0.2.2", 51820), 8.2)
    done = b.receive_datagram(answer.datagrams[0][0], A_VIA_20, 8.3)
    assert any(isinstance(e, HandshakeCompleted) for e in done.events)


# --------------------------------------------------------------------------- the binding


async def _loopback_pair(sticky: bool) -> tuple[Tunnel, Tunnel, Device, Device]:
    a, b = Device(PrivateKey.generate()), Device(PrivateKey.generate())
    ta = Tunnel(a, listen_port=0, host="127.0.0.1")  # the peer, at 127.0.0.1
    tb = Tunnel(b, listen_port=0, sticky=sticky)  # ours: every address of the host
    await ta.start()
    await tb.start()
    # The peer reaches us at 127.0.0.2, not the address the kernel would
    # choose for a reply to 127.0.0.1 (127.0.0.1 itself).
    a.add_peer(b.public_key, allowed_ips=["10.0.0.2/32"], endpoint=("127.0.0.2", tb.listen_port))
    b.add_peer(a.public_key, allowed_ips=["10.0.0.1/32"])
    return ta, tb, a, b


def test_binding_replies_from_the_address_the_peer_reached() -> None:
    """With sticky sources our replies leave from 127.0.0.2, so the peer's
    endpoint for us stays there; without, they leave from 127.0.0.1 and the
    peer sees us roam (what breaks a NAT or a firewall keyed on it)."""

    async def main(sticky: bool) -> tuple[object, object]:
        ta, tb, a, b = await _loopback_pair(sticky)
        try:
            ta.send_packet(ipv4_ping("10.0.0.1", "10.0.0.2"))
            await asyncio.wait_for(tb.recv_packet(), 10)
            tb.send_packet(ipv4_ping("10.0.0.2", "10.0.0.1"))
            await asyncio.wait_for(ta.recv_packet(), 10)
            return a.peers[b.public_key].endpoint, b.peers[a.public_key].endpoint
        finally:
            await ta.close()
            await tb.close()

    seen, ours = asyncio.run(main(True))
    assert seen[:2] == ("127.0.0.2", seen[1]) and ours[2] == "127.0.0.2"  # type: ignore[index]
    seen, ours = asyncio.run(main(False))
    assert seen[0] == "127.0.0.1" and len(ours) == 2  # type: ignore[arg-type]


def test_binding_falls_back_when_the_source_is_refused() -> None:
    """A local address that is not (any more) one of the host's: the kernel
    refuses it, the datagram goes out from the kernel's choice, and the
    device forgets that address for every peer."""

    async def main() -> tuple[int, object, int]:
        ta, tb, a, b = await _loopback_pair(True)
        try:
            ta.send_packet(ipv4_ping("10.0.0.1", "10.0.0.2"))
            await asyncio.wait_for(tb.recv_packet(), 10)
            peer = b.peers[a.public_key]
            peer.endpoint = (*peer.endpoint[:2], "192.0.2.77")  # type: ignore[assignment]
            tb.send_packet(ipv4_ping("10.0.0.2", "10.0.0.1"))
            await asyncio.wait_for(ta.recv_packet(), 10)
            return tb.source_fallbacks, peer.endpoint, tb.send_errors
        finally:
            await ta.close()
            await tb.close()

    fallbacks, endpoint, errors = asyncio.run(main())
    assert fallbacks == 1 and len(endpoint) == 2 and errors == 0  # type: ignore[arg-type]


def test_socket_closes_and_opens_with_the_link() -> None:
    async def main() -> None:
        device = Device(PrivateKey.generate())
        tunnel = Tunnel(device, listen_port=0, sticky=True)
        await tunnel.start(listen=False)
        try:
            assert not tunnel.listening
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            probe.close()
            assert tunnel.rebind(port) == port and not tunnel.listening  # only recorded
            assert tunnel.open_socket() == port and tunnel.listening
            assert device.listen_port == port
            tunnel.close_socket()
            assert not tunnel.listening
            free = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            free.bind(("::", port))  # the port is free while down
            free.close()
            assert tunnel.open_socket() == port
        finally:
            await tunnel.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- get in pieces


def test_get_of_a_huge_peer_comes_in_bounded_pieces() -> None:
    """130,000 allowed IPs of one peer: each step of the answer makes at
    most ALLOWED_IPS_PER_STEP allowed_ip lines (one piece of 130,000 lines
    held the event loop, and so the data path, for about 1.5 s), and the
    pieces together are the whole listing, in order."""
    device = Device(PrivateKey.generate())
    peer = PrivateKey.generate().public_key
    nets = [f"{i >> 8}.{i & 255}.0.0/16" for i in range(65000)]
    nets += [f"2001:db8::{i:x}/128" for i in range(65000)]
    device.add_peer(peer, allowed_ips=nets)
    connection = UAPIConnection(UAPI(device, now=time.monotonic))
    connection.receive_data(b"get=1\n\n")
    pieces = []
    while (out := connection.next_output()) is not None:
        pieces.append(out)
        if out.endswith(b"errno=0\n\n"):
            break
    counts = [piece.count(b"\nallowed_ip=") + piece.startswith(b"allowed_ip=") for piece in pieces]
    assert max(counts) <= ALLOWED_IPS_PER_STEP and sum(counts) == 130_000
    listed = [
        line[len("allowed_ip=") :]
        for line in b"".join(pieces).decode().splitlines()
        if line.startswith("allowed_ip=")
    ]
    expected = [
        f"{format_ip(n.network_address)}/{n.prefixlen}"
        for n in device.allowed_ips.entries_for(device.peers[peer])
    ]
    assert listed == expected
    assert list(device.allowed_ips.iter_entries_for(device.peers[peer])) == list(
        device.allowed_ips.entries_for(device.peers[peer])
    )
