"""A simulated network of Devices with a fake clock, for the endpoint tests.

Links can drop, duplicate, reorder (random delay) and delay datagrams, from a
seeded random source, so every run is reproducible. Inner packets are real
IPv4 packets whose payload carries a unique id, so the tests can check that
every payload is delivered at most once and to the right place.
"""

from __future__ import annotations

import heapq
import ipaddress
import random
import struct
from dataclasses import dataclass, field

from wireguard.device import Device, Effects
from wireguard.keys import PrivateKey


def ipv4_packet(src: str, dst: str, payload: bytes, proto: int = 17) -> bytes:
    total = 20 + len(payload)
    header = struct.pack(
        ">BBHHHBBH4s4s",
        0x45, 0, total, 0, 0, 64, proto, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )  # fmt: skip
    return header + payload


def payload_id(packet: bytes) -> int:
    return struct.unpack_from(">Q", packet, 20)[0]


@dataclass
class Link:
    loss: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.01
    jitter: float = 0.0  # extra random delay: reorders


@dataclass
class Node:
    name: str
    device: Device
    address: tuple[str, int]
    tunnel_ip: str
    delivered: list[bytes] = field(default_factory=list)
    events: list = field(default_factory=list)


class Network:
    def __init__(self, seed: int = 0, link: Link | None = None, start: float = 1_000.0) -> None:
        self.rng = random.Random(seed)
        self.now = start
        self.link = link or Link()
        self.nodes: dict[tuple[str, int], Node] = {}
        self.by_name: dict[str, Node] = {}
        self.queue: list[tuple[float, int, tuple[str, int], bytes, tuple[str, int]]] = []
        self.seq = 0
        self.sent_datagrams = 0
        self.tap: list[tuple[float, tuple[str, int], tuple[str, int], bytes]] = []
        # Datagrams to these addresses vanish (a host that went away).
        self.blackholes: set[tuple[str, int]] = set()

    def random_bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def add(
        self, name: str, index: int, *, key: PrivateKey | None = None, random=None, **kw
    ) -> Node:
        key = key or PrivateKey.generate(self.random_bytes)
        device = Device(key, random=random or self.random_bytes, **kw)
        node = Node(name, device, (f"192.0.2.{index}", 51820), f"10.0.0.{index}")
        self.nodes[node.address] = node
        self.by_name[name] = node
        return node

    def connect(self, a: Node, b: Node, *, keepalive: int = 0, psk=None) -> None:
        a.device.add_peer(
            b.device.public_key, allowed_ips=[f"{b.tunnel_ip}/32"], endpoint=b.address,
            persistent_keepalive=keepalive, preshared_key=psk,
        )  # fmt: skip
        b.device.add_peer(
            a.device.public_key, allowed_ips=[f"{a.tunnel_ip}/32"], endpoint=a.address,
            persistent_keepalive=keepalive, preshared_key=psk,
        )  # fmt: skip

    def apply(self, node: Node, effects: Effects, link: Link | None = None) -> None:
        link = link or self.link
        node.delivered.extend(effects.packets)
        node.events.extend(effects.events)
        for data, dst in effects.datagrams:
            self.sent_datagrams += 1
            self.tap.append((self.now, node.address, dst, data))
            copies = 1
            if self.rng.random() < link.loss:
                copies = 0
            elif self.rng.random() < link.duplicate:
                copies = 2
            for _ in range(copies):
                when = self.now + link.delay + self.rng.random() * link.jitter
                self.seq += 1
                heapq.heappush(self.queue, (when, self.seq, dst, data, node.address))

    def inject(self, dst: tuple[str, int], data: bytes, src: tuple[str, int]) -> None:
        """An attacker's datagram, delivered now."""
        self.seq += 1
        heapq.heappush(self.queue, (self.now, self.seq, dst, data, src))

    def send(self, src: Node, dst: Node, ident: int, size: int = 64) -> None:
        body = struct.pack(">Q", ident) + bytes(max(0, size - 8))
        packet = ipv4_packet(src.tunnel_ip, dst.tunnel_ip, body)
        self.apply(src, src.device.send_packet(packet, self.now))

    def next_time(self) -> float | None:
        times = [t for n in self.nodes.values() if (t := n.device.next_deadline()) is not None]
        if self.queue:
            times.append(self.queue[0][0])
        return min(times) if times else None

    def run_until(self, until: float) -> None:
        while True:
            t = self.next_time()
            if t is None or t > until:
                break
            self.now = max(self.now, t)
            if self.queue and self.queue[0][0] <= self.now:
                _, _, dst, data, src = heapq.heappop(self.queue)
                node = self.nodes.get(dst)
                if node is not None and dst not in self.blackholes:
                    self.apply(node, node.device.receive_datagram(data, src, self.now))
                continue
            for node in self.nodes.values():
                deadline = node.device.next_deadline()
                if deadline is not None and deadline <= self.now:
                    self.apply(node, node.device.handle_timer(self.now))
        self.now = max(self.now, until)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)
