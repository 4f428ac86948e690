"""A lossy UDP relay: the netem this kernel lacks, in a thread.

It sits between two UDP endpoints (here: our forwarder and wireguard-go), on
two sockets: ``near`` faces endpoint A, ``far`` faces endpoint B. A datagram
from A arriving on ``near`` leaves from ``far`` to B, and the reverse. Each
direction independently, per datagram and from a seeded :class:`random.Random`
(the same decisions every run for the same sequence of datagrams):

* drop it with probability *drop*;
* send it twice with probability *duplicate*;
* hold it back with probability *reorder*, to be sent after the next 1 to 3
  datagrams of that direction (or after *hold* seconds if none follow), so it
  arrives out of order.

A keeps talking to ``near`` and B to ``far``: each side sees the relay as its
peer's endpoint, as with any NAT in between. Run standalone for a manual test::

    python -m tests.interop.relay --near 127.0.0.1:40000 --a 127.0.0.1:51821 \\
        --far 0.0.0.0:40001 --b 192.168.77.2:51820
"""

from __future__ import annotations

import argparse
import random
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

Address = tuple[str, int]


@dataclass
class DirectionStats:
    received: int = 0
    sent: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0


@dataclass
class _Direction:
    rng: random.Random
    out: socket.socket
    to: Address | None
    stats: DirectionStats = field(default_factory=DirectionStats)
    held: list[list] = field(default_factory=list)  # [data, datagrams still to pass, deadline]


class LossyRelay:
    """Relay between endpoint A (reached from *near*) and B (from *far*).

    *a* is where datagrams from B go; if None, the source of the last datagram
    that arrived on *near* (A may then start from any port). *b* is B's
    address.
    """

    def __init__(
        self,
        near: socket.socket,
        far: socket.socket,
        *,
        b: Address,
        a: Address | None = None,
        drop: float = 0.02,
        duplicate: float = 0.01,
        reorder: float = 0.02,
        hold: float = 0.005,
        seed: int = 1,
    ) -> None:
        self.near, self.far = near, far
        self.drop, self.duplicate, self.reorder, self.hold = drop, duplicate, reorder, hold
        # Two generators derived from one seed: a direction's decisions do not
        # depend on how the two directions interleave.
        self.a_to_b = _Direction(random.Random(f"{seed}/a->b"), far, b)
        self.b_to_a = _Direction(random.Random(f"{seed}/b->a"), near, a)
        self._fixed_a = a is not None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()

    @property
    def near_address(self) -> Address:
        return self.near.getsockname()[:2]  # type: ignore[no-any-return]

    @property
    def far_address(self) -> Address:
        return self.far.getsockname()[:2]  # type: ignore[no-any-return]

    def start(self) -> LossyRelay:
        for sock in (self.near, self.far):
            sock.setblocking(False)
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        self._thread = threading.Thread(target=self._run, name="lossy-relay", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(5)
        for sock in (self.near, self.far, self._wake_r, self._wake_w):
            sock.close()

    def __enter__(self) -> LossyRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, DirectionStats]:
        return {"a->b": self.a_to_b.stats, "b->a": self.b_to_a.stats}

    # ------------------------------------------------------------------ loop

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.near, selectors.EVENT_READ, self.a_to_b)
        sel.register(self.far, selectors.EVENT_READ, self.b_to_a)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        while not self._stop.is_set():
            timeout = self._next_timeout()
            for key, _ in sel.select(timeout):
                if key.data is None:
                    return
                self._drain(key.fileobj, key.data)  # type: ignore[arg-type]
            self._release_expired(time.monotonic())

    def _drain(self, sock: socket.socket, direction: _Direction) -> None:
        for _ in range(256):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # ICMP errors surface on Linux UDP sockets
            if direction is self.a_to_b and not self._fixed_a:
                self.b_to_a.to = addr[:2]
            self._one(direction, data)

    def _one(self, d: _Direction, data: bytes) -> None:
        st = d.stats
        st.received += 1
        rng = d.rng
        # Draw every decision for every datagram, so one decision never shifts
        # the random stream of another.
        r_drop, r_dup, r_reorder, r_depth = rng.random(), rng.random(), rng.random(), rng.random()
        # Held datagrams come due as later ones pass.
        due = []
        for h in d.held:
            h[1] -= 1
            if h[1] <= 0:
                due.append(h)
        if r_drop < self.drop:
            st.dropped += 1
        elif r_reorder < self.reorder:
            st.reordered += 1
            d.held.append([data, 1 + int(r_depth * 3), time.monotonic() + self.hold])
        else:
            self._send(d, data)
            if r_dup < self.duplicate:
                st.duplicated += 1
                self._send(d, data)
        for h in due:
            d.held.remove(h)
            self._send(d, h[0])

    def _send(self, d: _Direction, data: bytes) -> None:
        if d.to is None:
            return
        try:
            d.out.sendto(data, d.to)
            d.stats.sent += 1
        except (BlockingIOError, InterruptedError):
            pass  # a full buffer drops, as a link would
        except OSError:
            pass

    def _next_timeout(self) -> float | None:
        deadlines = [h[2] for d in (self.a_to_b, self.b_to_a) for h in d.held]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _release_expired(self, now: float) -> None:
        for d in (self.a_to_b, self.b_to_a):
            for h in [h for h in d.held if h[2] <= now]:
                d.held.remove(h)
                self._send(d, h[0])


def _addr(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main() -> None:
    p = argparse.ArgumentParser(description="A lossy UDP relay between A and B.")
    p.add_argument("--near", required=True, help="address A sends to (HOST:PORT)")
    p.add_argument("--a", help="A's address (default: where A's datagrams come from)")
    p.add_argument("--far", required=True, help="address to send to B from (HOST:PORT)")
    p.add_argument("--b", required=True, help="B's address")
    p.add_argument("--drop", type=float, default=0.02)
    p.add_argument("--duplicate", type=float, default=0.01)
    p.add_argument("--reorder", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    socks = []
    for text in (args.near, args.far):
        host, port = _addr(text)
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.bind((host, port))
        socks.append(s)
    relay = LossyRelay(
        socks[0], socks[1], b=_addr(args.b), a=_addr(args.a) if args.a else None,
        drop=args.drop, duplicate=args.duplicate, reorder=args.reorder, seed=args.seed,
    )  # fmt: skip
    with relay:
        try:
            while True:
                time.sleep(5)
                print({k: vars(v) for k, v in relay.stats().items()}, flush=True)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
