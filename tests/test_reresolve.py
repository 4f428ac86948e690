"""Endpoint re-resolution (wireguard.io.resolve.EndpointReresolver) against
the rule of wireguard-tools' contrib reresolve-dns: a peer whose latest
handshake is older than 135 s gets ``wg set ... endpoint NAME`` again. The
clock and the resolver are the test's; the device is a real one, and what it
sends after the change is checked to go to the new address."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from wireguard.config import parse_wg_quick as parse
from wireguard.device import Device, Effects
from wireguard.io.resolve import REKEY_FAILED_AFTER, EndpointReresolver, endpoint_names
from wireguard.keys import PrivateKey


class Binding:
    """A stand-in for a Tunnel: its device, a settable clock, what was applied."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.now = 1000.0
        self.applied: list[Effects] = []

    def apply(self, effects: Effects, now: float | None = None) -> None:
        self.applied.append(effects)


class Dns:
    """Answers as getaddrinfo does: the current address of each name, or an error."""

    def __init__(self, **names: str) -> None:
        self.names = dict(names)
        self.error: OSError | None = None
        self.asked = 0

    async def __call__(self, host, port, **kw):  # type: ignore[no-untyped-def]
        self.asked += 1
        if self.error is not None:
            raise self.error
        if host not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", (self.names[host], port))]


def _setup(**options):  # type: ignore[no-untyped-def]
    ours, theirs = PrivateKey.generate(), PrivateKey.generate()
    config = parse(
        f"[Interface]\nPrivateKey = {ours}\n"
        f"[Peer]\nPublicKey = {theirs.public_key}\nAllowedIPs = 10.0.0.2/32\n"
        "Endpoint = peer.example:51820\n"
        f"[Peer]\nPublicKey = {PrivateKey.generate().public_key}\nAllowedIPs = 10.0.0.3/32\n"
        "Endpoint = 192.0.2.9:51820\n"
    )
    device = Device(ours)
    for peer in config.peers:
        device.add_peer(peer.public_key, allowed_ips=[str(n) for n in peer.allowed_ips])
    key = theirs.public_key
    device.add_peer(key, endpoint=("192.0.2.1", 51820))
    binding = Binding(device)
    dns = Dns(**{"peer.example": "192.0.2.1"})
    reresolver = EndpointReresolver(binding, endpoint_names(config), lookup=dns, **options)
    return binding, dns, reresolver, key


def test_only_names_are_re_resolved():
    _binding, _dns, r, key = _setup()
    assert r.names == {key: ("peer.example", 51820)}


def test_stale_handshakes_follow_a_changed_name_and_packets_go_there(caplog):
    binding, dns, r, key = _setup()
    peer = binding.device.peers[key]
    peer.last_handshake = binding.now
    dns.names["peer.example"] = "198.51.100.7"

    async def main() -> None:
        # A handshake 135 s old is not "older than 135 s": nothing is asked.
        assert await r.check(binding.now + REKEY_FAILED_AFTER) == 0
        assert dns.asked == 0
        with caplog.at_level(logging.INFO, "wireguard.io.resolve"):
            assert await r.check(binding.now + REKEY_FAILED_AFTER + 1) == 1
        assert peer.endpoint == ("198.51.100.7", 51820)
        assert "now resolves to 198.51.100.7:51820 (was 192.0.2.1:51820)" in caplog.text
        # While it stays stale it is asked again, every 30 s at most.
        assert await r.check(binding.now + REKEY_FAILED_AFTER + 10) == 0
        assert dns.asked == 1
        await r.check(binding.now + REKEY_FAILED_AFTER + 31)
        assert dns.asked == 2
        # A handshake makes it fresh again: nothing is asked.
        peer.last_handshake = binding.now + 200
        await r.check(binding.now + 300)
        assert dns.asked == 2

    asyncio.run(main())
    assert r.counters.changes == 1 and r.counters.endpoint_updates == 1
    # The device, asked to send, addresses the handshake to the new endpoint.
    out = binding.device.send_packets([_packet("10.0.0.2")], binding.now + 400)
    assert {dest[:2] for _, dest in out.datagrams} == {("198.51.100.7", 51820)}


def _packet(dst: str) -> bytes:
    import ipaddress
    import struct

    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0,
        ipaddress.ip_address("10.0.0.1").packed, ipaddress.ip_address(dst).packed,
    )  # fmt: skip
    return header + bytes(8)


def test_a_stale_peer_that_roamed_is_set_back_to_its_name_as_reresolve_dns_does():
    binding, _dns, r, key = _setup()
    peer = binding.device.peers[key]
    peer.last_handshake = binding.now
    peer.endpoint = ("203.0.113.5", 40000)  # roamed, and then went quiet
    asyncio.run(r.check(binding.now + 200))
    assert peer.endpoint == ("192.0.2.1", 51820)
    assert r.counters.changes == 0 and r.counters.endpoint_updates == 1


def test_never_a_handshake_counts_from_the_start():
    binding, dns, r, _key = _setup()
    dns.names["peer.example"] = "198.51.100.7"
    assert asyncio.run(r.check(binding.now + 100)) == 0
    assert asyncio.run(r.check(binding.now + 136)) == 1


def test_the_interval_follows_a_new_address_but_leaves_a_roamed_peer_alone():
    binding, dns, r, key = _setup(interval=10.0, stale_after=None)
    peer = binding.device.peers[key]
    peer.last_handshake = binding.now
    peer.endpoint = ("203.0.113.5", 40000)  # roamed, handshakes fine

    async def main() -> None:
        assert await r.check(binding.now + 5) == 0 and dns.asked == 0
        assert await r.check(binding.now + 10) == 0 and dns.asked == 1
        assert peer.endpoint == ("203.0.113.5", 40000)
        dns.names["peer.example"] = "198.51.100.7"
        assert await r.check(binding.now + 20) == 1
        assert peer.endpoint == ("198.51.100.7", 51820)

    asyncio.run(main())


def test_failures_are_counted_and_logged_once_per_change(caplog):
    binding, dns, r, key = _setup(interval=1.0, stale_after=None)
    dns.error = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    async def main() -> None:
        for t in range(1, 6):
            await r.check(binding.now + t)
        dns.error = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        for t in range(6, 9):
            await r.check(binding.now + t)
        dns.error = None
        await r.check(binding.now + 9)

    with caplog.at_level(logging.INFO, "wireguard.io.resolve"):
        asyncio.run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "Temporary failure in name resolution" in warnings[0]
    assert "`peer.example:51820'" in warnings[0] and "kept 192.0.2.1:51820" in warnings[0]
    assert "Name or service not known" in warnings[1]
    assert "resolves again" in caplog.text
    assert r.counters.failures == 8 and r.counters.attempts == 9
    assert binding.device.peers[key].endpoint == ("192.0.2.1", 51820)  # unchanged


class LoopBinding(Binding):
    """A binding on the running loop's clock (the re-resolver's own task)."""

    now = property(lambda self: asyncio.get_running_loop().time())  # type: ignore[assignment]

    def __init__(self, device: Device) -> None:
        self.device, self.applied = device, []


def test_the_task_runs_on_the_loop_clock_and_stops():
    async def main() -> None:
        _, dns, r, key = _setup(interval=0.05, stale_after=None)

        binding = LoopBinding(r.binding.device)
        r = EndpointReresolver(binding, r.names, interval=0.05, stale_after=None, lookup=dns)
        dns.names["peer.example"] = "198.51.100.7"
        r.start()
        for _ in range(200):
            if binding.device.peers[key].endpoint == ("198.51.100.7", 51820):
                break
            await asyncio.sleep(0.02)
        await r.close()
        assert binding.device.peers[key].endpoint == ("198.51.100.7", 51820)

    asyncio.run(main())


def test_bad_settings_are_refused():
    binding, _dns, r, _key = _setup()
    with pytest.raises(ValueError, match="positive"):
        EndpointReresolver(binding, {}, interval=0)
    assert not EndpointReresolver(binding, r.names, stale_after=None).active


def test_a_peer_removed_and_added_again_is_still_looked_up():
    """``wg set IF peer KEY remove`` and then the peer set again (as a
    reconfiguration does): reresolve-dns runs from its timer whatever the
    peers were in between, so the re-added peer's name is followed again.
    The re-resolver's task must not stop for good while no named peer is
    there."""

    async def main() -> None:
        _, dns, r, key = _setup()

        binding = LoopBinding(r.binding.device)
        device = binding.device
        r = EndpointReresolver(binding, r.names, stale_after=0.05, lookup=dns)
        device.remove_peer(key)
        r.start()
        for _ in range(5):  # the task wakes (nothing to do: the peer is gone)
            await asyncio.sleep(0.02)
        device.add_peer(key, allowed_ips=["10.0.0.2/32"], endpoint=("192.0.2.1", 51820))
        dns.names["peer.example"] = "198.51.100.7"
        try:
            for _ in range(200):
                if device.peers[key].endpoint == ("198.51.100.7", 51820):
                    break
                await asyncio.sleep(0.02)
        finally:
            await r.close()
        assert device.peers[key].endpoint == ("198.51.100.7", 51820)

    asyncio.run(main())
