"""Scale to many peers and many allowed IPs (issue 15, item 5), each figure
with its reference measured in the same run.

    python benchmarks/bench_scale.py [PART ...] [--peers 10000] [--rounds 3]
        [--seconds 2] [--allowed-ips 130000] [--wireguard-go PATH]

PART is any of (all by default; ``wg`` is left out when not root):

- ``handshake``: full handshakes per second of the sans-I/O Device, a
  responder with ``--peers`` configured peers (each initiator a Device of its
  own, taken in turn) against a responder with one peer, alternating in 10
  slices per round; CPU time of this process, medians of the rounds. A handshake is
  the initiation made, consumed, the response made, consumed, and the
  initiator's confirming keepalive received. Simulated time moves by
  REKEY_TIMEOUT + 0.1 s per handshake in both, so neither is under load and
  no initiation is rate limited; timers are not run.
- ``memory``: bytes per configured peer (tracemalloc) at ``--peers`` and at a
  tenth of that (the two should be alike: memory linear in peers), each peer
  with a public key, one allowed IP and an endpoint.
- ``lookup``: allowed-IPs lookups per second with ``--peers`` peers of one
  /32 each (addresses spread over all of them, half not routed), against a
  table of one peer routing the same addresses, and ``dict.get`` on a dict
  as large with the same addresses.
- ``uapi``: CPU time in this process of the UAPI requests ``wg`` sends: one
  peer with ``--allowed-ips`` allowed IPs (half IPv4 /16s, half IPv6 /128s,
  as ``bench_daemon.py``), and ``get=1`` of it; ``--peers`` peers in one set,
  and ``get=1`` of them.
- ``wg`` (root): the same through ``wg`` against a ``wireguard-sansio``
  daemon and against wireguard-go (Debian's by default, ``--wireguard-go``
  another build), each in a network namespace of its own, alternately:
  ``wg setconf`` of the big peer, ``wg show NAME allowed-ips`` of it,
  ``wg setconf`` of ``--peers`` peers and ``wg show NAME dump`` of them
  (the UAPI get of every peer). Wall-clock medians; the ratio is ours /
  wireguard-go.

Everything the ``wg`` part creates is removed at the end; it kills only
processes it started.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import os
import platform
import random
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wireguard.allowedips import AllowedIPs  # noqa: E402
from wireguard.constants import REKEY_TIMEOUT  # noqa: E402
from wireguard.device import Device  # noqa: E402
from wireguard.keys import PrivateKey, PublicKey  # noqa: E402
from wireguard.uapi import UAPI, UAPIConnection  # noqa: E402

WG_GO_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
STEP = REKEY_TIMEOUT + 0.1
CLK_TCK = os.sysconf("SC_CLK_TCK")


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- handshakes --------------------------------------------------------------------------


class HandshakeBench:
    """A responder with *peers* peers, and one initiator Device per peer."""

    def __init__(self, peers: int, seed: int) -> None:
        rng = random.Random(seed)

        def key() -> PrivateKey:
            return PrivateKey(rng.randbytes(32)).clamped()

        self.server = Device(key(), random=rng.randbytes)
        self.server_addr = ("192.0.2.1", 51820)
        self.clients: list[tuple[Device, tuple[str, int]]] = []
        for n in range(peers):
            client = Device(key(), random=rng.randbytes)
            addr = (f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 51820)
            client.add_peer(self.server.public_key, allowed_ips=["0.0.0.0/0"],
                            endpoint=self.server_addr)  # fmt: skip
            self.server.add_peer(client.public_key, allowed_ips=[f"{addr[0]}/32"], endpoint=addr)
            self.clients.append((client, addr))
        self.turn = 0
        self.now = 1000.0
        self.server_cpu = 0.0

    def once(self) -> None:
        client, addr = self.clients[self.turn]
        self.turn = (self.turn + 1) % len(self.clients)
        self.now += STEP
        now, server, clock = self.now, self.server, time.process_time
        (init, _), = client.initiate_handshake(server.public_key, now).datagrams
        t = clock()
        (resp, _), = server.receive_datagram(init, addr, now).datagrams
        self.server_cpu += clock() - t
        (keepalive, _), = client.receive_datagram(resp, self.server_addr, now).datagrams
        t = clock()
        server.receive_datagram(keepalive, addr, now)
        self.server_cpu += clock() - t

    def run_for(self, seconds: float) -> tuple[int, float, float]:
        """Handshakes for *seconds* of CPU: (count, CPU seconds, of them the
        responder's)."""
        n, self.server_cpu = 0, 0.0
        start = time.process_time()
        while (elapsed := time.process_time() - start) < seconds:
            for _ in range(10):
                self.once()
            n += 10
        return n, elapsed, self.server_cpu


def alternate(
    benches: list[HandshakeBench], seconds: float, slices: int
) -> list[tuple[float, float]]:
    """(full handshakes/s, responder's handshakes/s) of each bench, measured
    in *slices* alternating slices (a change of the machine's speed falls on
    all alike)."""
    totals = [[0, 0.0, 0.0] for _ in benches]
    for i in range(slices):
        order = list(enumerate(benches))
        if i % 2:
            order.reverse()
        for index, bench in order:
            n, cpu, server = bench.run_for(seconds / slices)
            totals[index][0] += n
            totals[index][1] += cpu
            totals[index][2] += server
    return [(n / cpu, n / server) for n, cpu, server in totals]


def part_handshake(args: argparse.Namespace) -> None:
    t = time.process_time()
    many = HandshakeBench(args.peers, 1)
    one = HandshakeBench(1, 2)
    print(f"handshake: set up {args.peers:,} initiator Devices in "
          f"{time.process_time() - t:.1f} s CPU", file=sys.stderr)  # fmt: skip
    # Every initiator once before measuring, so both sides measure steady state.
    for _ in range(args.peers):
        many.once()
    one.once()
    rates: dict[str, list[tuple[float, float]]] = {"one": [], "many": []}
    for r in range(args.rounds):
        gc.collect()
        rate_one, rate_many = alternate([one, many], args.seconds, 10)
        rates["one"].append(rate_one)
        rates["many"].append(rate_many)
        print(f"round {r + 1}: 1 peer {rates['one'][-1][0]:6.0f}/s  {args.peers:,} peers "
              f"{rates['many'][-1][0]:6.0f}/s", file=sys.stderr)  # fmt: skip
    drops = {**many.server.drops, **one.server.drops}
    assert not drops, f"handshakes dropped: {drops}"
    full_ratios = sorted(m[0] / o[0] for m, o in zip(rates["many"], rates["one"], strict=True))
    resp_ratios = sorted(m[1] / o[1] for m, o in zip(rates["many"], rates["one"], strict=True))
    print(f"\nfull handshakes/s, CPU time, medians of {args.rounds} rounds")
    print(f"| | 1 peer | {args.peers:,} peers | ratio (rounds) |")
    print("| --- | --- | --- | --- |")
    for label, index, ratios in (("both sides", 0, full_ratios),
                                 ("responder's share", 1, resp_ratios)):  # fmt: skip
        o = median([x[index] for x in rates["one"]])
        m = median([x[index] for x in rates["many"]])
        print(f"| {label} | {o:,.0f} | {m:,.0f} | **{median(ratios):.2f}** "
              f"({ratios[0]:.2f}-{ratios[-1]:.2f}) |")  # fmt: skip


# --- memory ------------------------------------------------------------------------------


def memory_per_peer(peers: int) -> float:
    rng = random.Random(peers)
    keys = [PublicKey(rng.randbytes(32)) for _ in range(peers)]
    device = Device(PrivateKey(rng.randbytes(32)).clamped())
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i, key in enumerate(keys):
        device.add_peer(
            key,
            allowed_ips=[f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32"],
            endpoint=(f"198.51.{i >> 8 & 255}.{i & 255}", 51820),
        )
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / peers


def part_memory(args: argparse.Namespace) -> None:
    small = max(args.peers // 10, 1)
    print("\nmemory per configured peer (tracemalloc; public key, one allowed IP, endpoint)")
    print("| peers | bytes per peer |")
    print("| --- | --- |")
    for n in (small, args.peers):
        print(f"| {n:,} | {memory_per_peer(n):,.0f} |")


# --- lookups -----------------------------------------------------------------------------


def part_lookup(args: argparse.Namespace) -> None:
    rng = random.Random(3)
    table: AllowedIPs[object] = AllowedIPs()
    routed = []
    for n in range(args.peers):
        address = (10 << 24 | n).to_bytes(4, "big")
        table.insert(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}/32", object())
        routed.append(address)
    addresses = []
    for index in range(max(args.peers, 10_000)):
        if index % 2:
            addresses.append(rng.choice(routed))
        else:
            addresses.append(rng.getrandbits(32).to_bytes(4, "big"))
    rng.shuffle(addresses)
    reference = {address: object() for address in routed}
    # The same addresses, all the routed ones under one peer's 10.0.0.0/16
    # (--peers <= 65,536): what a lookup costs with one peer.
    single: AllowedIPs[object] = AllowedIPs()
    single.insert("10.0.0.0/16" if args.peers <= 1 << 16 else "10.0.0.0/8", object())

    def loop(lookup: Callable[[bytes], object]) -> float:
        start = time.process_time()
        n = 0
        while time.process_time() - start < args.seconds / 3:
            for address in addresses:
                lookup(address)
            n += len(addresses)
        return n / (time.process_time() - start)

    rates: dict[str, list[float]] = {"many": [], "one": [], "dict": []}
    for _ in range(args.rounds):
        rates["many"].append(loop(table.lookup))
        rates["one"].append(loop(single.lookup))
        rates["dict"].append(loop(reference.get))
    print(f"\nallowed-IPs lookups of {len(addresses):,} addresses in turn (half routed), "
          f"CPU time, medians of {args.rounds}")  # fmt: skip
    print(f"| | lookups/s | {args.peers:,} peers' rate / this |")
    print("| --- | --- | --- |")
    many = median(rates["many"])
    for key, label in (("many", f"AllowedIPs.lookup, {args.peers:,} peers with a /32 each"),
                       ("one", "AllowedIPs.lookup, 1 peer with the /16 of them"),
                       ("dict", f"dict.get on {args.peers:,} keys (one hash probe)")):  # fmt: skip
        rate = median(rates[key])
        print(f"| {label} | {rate:,.0f} | {many / rate:.2f} |")


# --- UAPI in-process ---------------------------------------------------------------------


def big_peer_lines(count: int) -> list[str]:
    half = count // 2
    nets = [f"{i >> 8 & 255}.{i & 255}.0.0/16" for i in range(half)]
    nets += [f"2001:db8::{i:x}/128" for i in range(count - half)]
    return nets


def peer_keys(count: int) -> list[bytes]:
    rng = random.Random(count)
    return [rng.randbytes(32) for _ in range(count)]


def many_peer_entries(count: int) -> list[tuple[bytes, str, str]]:
    return [
        (key, f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}/32",
         f"192.0.2.{n % 250 + 1}:{1024 + n % 60000}")
        for n, key in enumerate(peer_keys(count))
    ]  # fmt: skip


def uapi_request(private: bytes, peers: list[tuple[bytes, list[str], str | None]]) -> bytes:
    """The set request ``wg setconf`` sends for these peers."""
    out = [f"set=1\nprivate_key={private.hex()}\nreplace_peers=true\n"]
    for key, nets, endpoint in peers:
        out.append(f"public_key={key.hex()}\n")
        if endpoint:
            out.append(f"endpoint={endpoint}\n")
        out.append("replace_allowed_ips=true\n")
        out.extend(f"allowed_ip={net}\n" for net in nets)
    out.append("\n")
    return "".join(out).encode()


def serve(uapi: UAPI, data: bytes, read_size: int = 64 * 1024) -> bytes:
    """Feed *data* as the control server does (one read, then every slice of
    work), returning the answers."""
    connection = UAPIConnection(uapi)
    answers = []
    for start in range(0, len(data), read_size):
        connection.receive_data(data[start : start + read_size])
        while (out := connection.next_output()) is not None:
            if out:
                answers.append(out)
    connection.receive_eof()
    while (out := connection.next_output()) is not None:
        if out:
            answers.append(out)
    return b"".join(answers)


def part_uapi(args: argparse.Namespace) -> None:
    private = bytes(range(1, 33))
    big = uapi_request(private, [(peer_keys(1)[0], big_peer_lines(args.allowed_ips), None)])
    many = uapi_request(private, [(k, [n], e) for k, n, e in many_peer_entries(args.peers)])
    rows: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for label, request in ((f"set, 1 peer x {args.allowed_ips:,} allowed IPs", big),
                               (f"set, {args.peers:,} peers", many)):  # fmt: skip
            device = Device(PrivateKey(bytes(32)))
            uapi = UAPI(device, now=lambda: 0.0)
            gc.collect()
            start = time.process_time()
            answer = serve(uapi, request)
            rows.setdefault(label, []).append(time.process_time() - start)
            assert answer == b"errno=0\n\n", answer
            start = time.process_time()
            got = serve(uapi, b"get=1\n\n")
            rows.setdefault(label.replace("set", "get of it"), []).append(
                time.process_time() - start
            )
            assert got.endswith(b"errno=0\n\n")
    print(f"\nUAPI in-process, CPU seconds, medians of {args.rounds}")
    print("| request | CPU s |")
    print("| --- | --- |")
    for label, values in rows.items():
        print(f"| {label} | {median(values):.3f} |")


# --- through wg --------------------------------------------------------------------------


def run(*argv: str, timeout: float = 900, **kw: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)}: {result.stderr.strip()}")
    return result  # type: ignore[no-any-return]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class WgBench:
    def __init__(self, workdir: Path, commands: dict[str, list[str]]) -> None:
        self.dir, self.commands = workdir, commands
        self.ns = f"bs-{secrets.token_hex(3)}"
        self.names: list[str] = []

    def __enter__(self) -> WgBench:
        run("ip", "netns", "add", self.ns)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.names:
            subprocess.run(["ip", "-n", self.ns, "link", "del", name], capture_output=True)
        for pid in subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True,
                                  text=True).stdout.split():  # fmt: skip
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)  # only what this run started lives there
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        for name in self.names:
            with contextlib.suppress(FileNotFoundError):
                Path(f"/var/run/wireguard/{name}.sock").unlink()

    def start(self, impl: str) -> tuple[str, int]:
        """Start *impl* as wg-quick does (it daemonizes): the name and the
        daemon's pid."""
        name = f"{impl[:2]}{secrets.token_hex(3)}s"
        self.names.append(name)
        run("ip", "netns", "exec", self.ns, *self.commands[impl], name)
        for pid in run("ip", "netns", "pids", self.ns).stdout.split():
            with contextlib.suppress(FileNotFoundError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
                if argv[-1] == name.encode():
                    return name, int(pid)
        raise RuntimeError(f"{impl} {name}: no daemon process")

    def stop(self, name: str) -> None:
        subprocess.run(["ip", "-n", self.ns, "link", "del", name], capture_output=True)
        deadline = time.monotonic() + 10
        while Path(f"/var/run/wireguard/{name}.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def timed(self, pid: int, *argv: str) -> tuple[float, float, str]:
        """Wall-clock seconds of *argv*, CPU seconds the daemon used meanwhile,
        and the output."""
        cpu = cpu_seconds(pid)
        start = time.monotonic()
        out = run(*argv).stdout
        return time.monotonic() - start, cpu_seconds(pid) - cpu, out

    def setconf(self, name: str, pid: int, text: str) -> tuple[float, float]:
        path = self.dir / f"{name}.conf"
        path.write_text(text)
        path.chmod(0o600)
        return self.timed(pid, "wg", "setconf", name, str(path))[:2]

    def measure(
        self, impl: str, big_conf: str, many_conf: str, big: int, peers: int
    ) -> dict[str, float]:
        figures: dict[str, float] = {}
        name, pid = self.start(impl)
        try:
            figures["setconf_big"], figures["setconf_big_cpu"] = self.setconf(name, pid, big_conf)
            took, cpu, shown = self.timed(pid, "wg", "show", name, "allowed-ips")
            assert len(shown.split()) == big + 1, "not every allowed IP listed"
            figures["show_big"], figures["show_big_cpu"] = took, cpu
            figures["setconf_many"], figures["setconf_many_cpu"] = self.setconf(
                name, pid, many_conf
            )
            took, cpu, dump = self.timed(pid, "wg", "show", name, "dump")
            assert len(dump.splitlines()) == peers + 1, "not every peer listed"
            figures["dump_many"], figures["dump_many_cpu"] = took, cpu
        finally:
            self.stop(name)
        return figures


def part_wg(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        print("\nwg: needs root (a network namespace and TUN devices); skipped")
        return
    for tool in ("ip", "wg", args.wireguard_go):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench_scale: `{tool}` is not installed")
    sansio = shlex.split(args.sansio) if args.sansio else [
        sys.executable, "-m", "wireguard.cli.daemon"]  # fmt: skip
    commands = {"sansio": sansio, "wireguard-go": [args.wireguard_go]}
    os.environ.update(WG_GO_ENV)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    version = run(args.wireguard_go, "--version").stdout.splitlines()[0]
    private = b64(bytes(range(1, 33)))
    big_conf = (f"[Interface]\nPrivateKey = {private}\n[Peer]\nPublicKey = "
                f"{b64(peer_keys(1)[0])}\nAllowedIPs = "
                f"{', '.join(big_peer_lines(args.allowed_ips))}\n")  # fmt: skip
    many_conf = f"[Interface]\nPrivateKey = {private}\n" + "".join(
        f"[Peer]\nPublicKey = {b64(k)}\nAllowedIPs = {n}\nEndpoint = {e}\n"
        for k, n, e in many_peer_entries(args.peers)
    )
    results: dict[str, list[dict[str, float]]] = {"sansio": [], "wireguard-go": []}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, WgBench(
        Path(tmp), commands
    ) as bench:
        for r in range(args.rounds):
            order = ["sansio", "wireguard-go"] if r % 2 == 0 else ["wireguard-go", "sansio"]
            for impl in order:
                figures = bench.measure(impl, big_conf, many_conf, args.allowed_ips, args.peers)
                results[impl].append(figures)
                shown = "  ".join(f"{k}={v:.2f}" for k, v in figures.items())
                print(f"round {r + 1} {impl:>12}: {shown}", file=sys.stderr)
    labels = [
        ("setconf_big", f"`wg setconf`, 1 peer x {args.allowed_ips:,} allowed IPs"),
        ("show_big", "`wg show NAME allowed-ips` of them"),
        ("setconf_many", f"`wg setconf`, {args.peers:,} peers"),
        ("dump_many", f"`wg show NAME dump` of {args.peers:,} peers"),
    ]
    print(f"\nthrough wg, medians of {args.rounds} rounds: wall-clock seconds of the wg "
          f"command (the daemon's CPU seconds meanwhile); reference {version}")  # fmt: skip
    print("| | wireguard-sansio | wireguard-go | ratio |")
    print("| --- | --- | --- | --- |")
    for key, label in labels:
        ours = median([r[key] for r in results["sansio"]])
        theirs = median([r[key] for r in results["wireguard-go"]])
        ours_cpu = median([r[f"{key}_cpu"] for r in results["sansio"]])
        theirs_cpu = median([r[f"{key}_cpu"] for r in results["wireguard-go"]])
        print(f"| {label} | {ours:.2f} ({ours_cpu:.2f}) | {theirs:.2f} ({theirs_cpu:.2f}) "
              f"| {ours / theirs:.2f} ({ours_cpu / max(theirs_cpu, 0.01):.2f}) |")  # fmt: skip


PARTS = {"handshake": part_handshake, "memory": part_memory, "lookup": part_lookup,
         "uapi": part_uapi, "wg": part_wg}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", metavar="PART", help=" ".join(PARTS))
    parser.add_argument("--peers", type=int, default=10_000)
    parser.add_argument("--allowed-ips", type=int, default=130_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="per CPU-time measurement")
    parser.add_argument("--wireguard-go", default="wireguard-go", metavar="PATH",
                        help="the wireguard-go binary (default: the one on PATH)")  # fmt: skip
    parser.add_argument("--sansio", metavar="COMMAND",
                        help="how to run ours (default: this tree's python -m "
                             "wireguard.cli.daemon)")  # fmt: skip
    args = parser.parse_args()
    unknown = [name for name in args.parts if name not in PARTS]
    if unknown:
        parser.error(f"unknown part {unknown[0]!r}: choose from {', '.join(PARTS)}")

    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    for name in args.parts or list(PARTS):
        PARTS[name](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
