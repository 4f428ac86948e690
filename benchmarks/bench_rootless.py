"""Throughput of the rootless path (``forward -L``, userspace TCP/IP stack, no
TUN) against the TUN path, measured alternately in the same run.

Two network namespaces joined by a veth pair; B runs wireguard-go and an
iperf3 server on its tunnel address for the whole run. A runs, in turn:

* **rootless**: ``python -m wireguard forward CONFIG -L 5201:B:5201`` (what
  ``python -m wireguard forward`` runs) as user nobody when the interpreter is
  reachable by nobody, else as root (the code path is the same: no privilege is
  used). iperf3 in A connects to 127.0.0.1:5201, so every byte crosses A's
  loopback into the forwarder, our userspace TCP, our WireGuard and the UDP
  socket; B's side is kernel TCP behind wireguard-go.
* **tun**: our endpoint with a TUN device (``python -m wireguard up``),
  iperf3 in A straight to B's tunnel address: kernel TCP on both ends, our
  WireGuard in between. Skipped (and said so) when that module is missing.
* **wireguard-go**: wireguard-go in A as well: the reference implementation
  on the same path.

Each measures iperf3 TCP A->B and B->A (``-R``) and the CPU seconds the A-side
process used per GB. Prints medians and the ratios rootless/tun and
rootless/wireguard-go (the issue's goal: rootless >= 0.5 of the TUN path).

With ``--compare TREE`` the rootless side runs a second time per round with
the ``wireguard`` package of another tree (a checkout of an earlier commit,
say): a before/after in the same run, the order rotated each round, with each
figure's range across rounds.

    sudo python benchmarks/bench_rootless.py [--rounds 3] [--seconds 5] [--compare TREE]
        [--wireguard-go PATH]

``--in-process MIB`` needs neither root nor namespaces: two rootless tunnels
back to back on loopback in this process (both stacks, both WireGuards), one
TCP connection moving MIB MiB; it prints the CPU milliseconds per MiB. Run
under ``valgrind --tool=callgrind`` (twice, with two sizes) it gives the
instructions per MiB, which the machine's load does not move.

    python benchmarks/bench_rootless.py --in-process 32
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from netbench import MTU, PORT, WG_GO_ENV, NamespacePair, cpu_seconds, iperf3, run, tree_env

UNDER = ("192.168.232.1", "192.168.232.2")
INNER = ("10.232.0.1", "10.232.0.2")
IPERF_PORT = 5201


def nobody_prefix() -> list[str]:
    """setpriv to nobody, if nobody can run this interpreter with this tree."""
    if shutil.which("setpriv") is None:
        return []
    prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    probe = subprocess.run([*prefix, sys.executable, "-c", "import wireguard.io.forward"],
                           cwd="/", capture_output=True)  # fmt: skip
    return prefix if probe.returncode == 0 else []


class Bench(NamespacePair):
    def __init__(self, seconds: float, workdir: Path) -> None:
        super().__init__(seconds, workdir, letter="r", under=UNDER, inner=INNER)
        self.as_nobody = nobody_prefix()

    def config_a(self) -> Path:
        conf = self.dir / f"{self.name_a}.conf"
        conf.write_text(
            f"[Interface]\nPrivateKey = {self.key_a}\nListenPort = {PORT}\n"
            f"Address = {INNER[0]}/24\nMTU = {MTU}\n"
            f"[Peer]\nPublicKey = {self.pub_b}\nAllowedIPs = {INNER[1]}/32\n"
            f"Endpoint = {UNDER[1]}:{PORT}\n"
        )
        conf.chmod(0o644 if self.as_nobody else 0o600)  # a throwaway key
        return conf

    # --- the A side: (pid, iperf3 target, teardown) -------------------------

    def up_rootless(self, tree: str | None = None):  # type: ignore[no-untyped-def]
        """The forwarder, with this tree's package or *tree*'s."""
        log = self.dir / "forward.log"
        env = tree_env(tree)
        with open(log, "w") as f:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.a, *self.as_nobody, sys.executable, "-m",
                 "wireguard", "forward", str(self.config_a()), "-L",
                 f"{IPERF_PORT}:{INNER[1]}:{IPERF_PORT}", "--status", "0"],
                stdout=subprocess.DEVNULL, stderr=f, text=True, cwd="/", env=env,
            )  # fmt: skip
        self.procs.append(proc)
        deadline = time.monotonic() + 30
        while "forward: ready" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the forwarder did not start: {log.read_text()}")
            time.sleep(0.05)
        return proc.pid, "127.0.0.1", lambda: self.stop(proc)

    def up_tun(self):  # type: ignore[no-untyped-def]
        run("ip", "netns", "exec", self.a, sys.executable, "-m", "wireguard", "up",
            "--log", str(self.dir / "tun.log"), str(self.config_a()))  # fmt: skip
        pid = int(Path(f"/var/run/wireguard/{self.name_a}.pid").read_text().split()[0])

        def down() -> None:
            run("ip", "netns", "exec", self.a, sys.executable, "-m", "wireguard", "down",
                self.name_a)  # fmt: skip

        return pid, INNER[1], down

    def up_wggo(self):  # type: ignore[no-untyped-def]
        proc = self.start_wireguard_go(self.a, self.name_a, self.key_a, self.pub_b, INNER[1],
                                       UNDER[1], INNER[0])  # fmt: skip
        pids = run("ip", "netns", "pids", self.a).stdout.split()
        pid = next(int(p) for p in pids
                   if Path(f"/proc/{p}/comm").read_text().strip()
                   == Path(self.wireguard_go).name[:15])  # fmt: skip

        def down() -> None:
            self.stop(proc)
            with contextlib.suppress(FileNotFoundError):
                Path(f"/var/run/wireguard/{self.name_a}.sock").unlink()
            deadline = time.monotonic() + 5
            while Path(f"/sys/class/net/{self.name_a}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)

        return pid, INNER[1], down

    # --- measurements -------------------------------------------------------

    def iperf(self, target: str, *extra: str) -> dict:  # type: ignore[type-arg]
        return iperf3("ip", "netns", "exec", self.a, "iperf3", "-J", "-c", target,
                      "-p", str(IPERF_PORT), "-t", str(self.seconds), *extra,
                      timeout=self.seconds + 60)  # fmt: skip

    def measure(self, pid: int, target: str) -> dict[str, float]:
        self.iperf(target, "-t", "1")  # warm-up: handshake, slow start
        result: dict[str, float] = {}
        for label, extra in (("tcp_up", ()), ("tcp_down", ("-R",))):
            before = cpu_seconds(pid)
            end = self.iperf(target, *extra)
            cpu = cpu_seconds(pid) - before
            bits = end["sum_received"]["bits_per_second"]
            result[f"{label}_mbit"] = bits / 1e6
            gbytes = bits * self.seconds / 8e9
            result[f"{label}_cpu_s_per_gb"] = cpu / gbytes if gbytes else float("nan")
        return result


def in_process(mib: int) -> None:
    """Two RootlessTunnels on loopback in this process, MIB MiB from A to B."""
    from wireguard.device import Device
    from wireguard.io.rootless import RootlessTunnel
    from wireguard.keys import PrivateKey

    def udp() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        return s

    async def transfer() -> tuple[float, float]:
        key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
        sock_a, sock_b = udp(), udp()
        dev_a, dev_b = Device(key_a), Device(key_b)
        dev_a.add_peer(key_b.public_key, allowed_ips=[f"{INNER[1]}/32"],
                       endpoint=sock_b.getsockname())  # fmt: skip
        dev_b.add_peer(key_a.public_key, allowed_ips=[f"{INNER[0]}/32"],
                       endpoint=sock_a.getsockname())  # fmt: skip
        a = RootlessTunnel(dev_a, [f"{INNER[0]}/24"], sock=sock_a)
        b = RootlessTunnel(dev_b, [f"{INNER[1]}/24"], sock=sock_b)
        done = asyncio.Event()

        async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await reader.read(1 << 20):
                pass
            done.set()
            writer.close()

        async with a, b:
            await b.start_server(sink, port=IPERF_PORT)
            _reader, writer = await a.open_connection(INNER[1], IPERF_PORT)
            chunk = bytes(256 * 1024)
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(mib * 4):
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()
            await done.wait()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            writer.close()
        return wall, cpu

    wall, cpu = asyncio.run(transfer())
    print(f"in-process, {mib} MiB A->B: {mib / wall:.1f} MiB/s, "
          f"{cpu / mib * 1000:.2f} ms CPU per MiB")  # fmt: skip


METRICS = [
    ("tcp_up_mbit", "TCP A->B, Mbit/s"),
    ("tcp_down_mbit", "TCP B->A, Mbit/s"),
    ("tcp_up_cpu_s_per_gb", "A process CPU s/GB, A->B"),
    ("tcp_down_cpu_s_per_gb", "A process CPU s/GB, B->A"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per iperf3 test")
    parser.add_argument("--no-tun", action="store_true", help="leave out the TUN path")
    parser.add_argument("--wireguard-go", default="wireguard-go", metavar="PATH",
                        help="the wireguard-go binary for B and the reference A "
                             "(default: the one on PATH)")  # fmt: skip
    parser.add_argument("--json", metavar="FILE", help="also write every figure here")
    parser.add_argument("--compare", metavar="TREE",
                        help="run rootless also with TREE's package")  # fmt: skip
    parser.add_argument("--in-process", type=int, metavar="MIB",
                        help="only the in-process transfer of MIB MiB (no root)")  # fmt: skip
    args = parser.parse_args()
    if args.in_process:
        in_process(args.in_process)
        return 0
    if os.geteuid() != 0:
        print("bench_rootless: needs root (network namespaces)", file=sys.stderr)
        return 1
    for tool in ("ip", "wg", args.wireguard_go, "iperf3"):
        if shutil.which(tool) is None:
            print(f"bench_rootless: `{tool}` is not installed", file=sys.stderr)
            return 1
    sides = ["rootless", "tun", "wireguard-go"]
    if args.compare:
        tree = str(Path(args.compare).resolve())
        if not (Path(tree) / "wireguard" / "__init__.py").is_file():
            print(f"bench_rootless: {tree} has no wireguard package", file=sys.stderr)
            return 1
        sides.insert(1, "compare")
    if args.no_tun or importlib.util.find_spec("wireguard.io.up") is None:
        print("bench_rootless: no TUN path (wireguard.io.up): comparing with wireguard-go only",
              file=sys.stderr)  # fmt: skip
        sides.remove("tun")
    os.environ.update(WG_GO_ENV)
    version = run(args.wireguard_go, "--version").stdout.splitlines()[0]
    results: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="bench-rootless-") as tmp:
        os.chmod(tmp, 0o755)
        bench = Bench(args.seconds, Path(tmp))
        bench.wireguard_go = args.wireguard_go
        who = "nobody" if bench.as_nobody else "root (nobody cannot run this interpreter)"
        print(f"bench_rootless: the forwarder runs as {who}", file=sys.stderr)
        try:
            bench.create()
            for r in range(args.rounds):
                # Rotate the order, so a drift in machine load weighs on all alike.
                order = sides[r % len(sides) :] + sides[: r % len(sides)]
                for side in order:
                    if side not in sides:
                        continue
                    up = {"rootless": bench.up_rootless, "tun": bench.up_tun,
                          "wireguard-go": bench.up_wggo,
                          "compare": lambda: bench.up_rootless(tree)}[side]  # fmt: skip
                    try:
                        pid, target, down = up()
                    except RuntimeError as exc:
                        if side != "tun":
                            raise
                        # The TUN binding is young: measure the rest, say why.
                        print(f"bench_rootless: TUN path left out: {exc}", file=sys.stderr)
                        sides.remove("tun")
                        del results["tun"]
                        continue
                    try:
                        figures = bench.measure(pid, target)
                    finally:
                        down()
                    results[side].append(figures)
                    shown = "  ".join(f"{k}={v:.1f}" for k, v in figures.items())
                    print(f"round {r + 1} {side:>12}: {shown}", file=sys.stderr)
        finally:
            bench.destroy()
    med = {s: {k: statistics.median(r[k] for r in results[s]) for k, _ in METRICS} for s in sides}
    if args.compare:
        print(f"\ncompare = rootless with {tree}; ranges (min-max) across rounds:")
        for key, label in METRICS:
            for s in ("rootless", "compare"):
                values = [r[key] for r in results[s]]
                print(f"  {label:<28} {s:>17}: {min(values):8.1f} - {max(values):8.1f}")
    print(f"\n{args.rounds} rounds, {args.seconds:g} s per iperf3 test, medians; "
          f"B = {version} + kernel TCP; A = the side under test")  # fmt: skip
    head = "".join(f" {s:>12} |" for s in sides)
    ratios = [s for s in sides if s != "rootless"]
    print(f"| {'metric':<28} |{head}" + "".join(f" {'rootless/' + s[:7]:>16} |" for s in ratios))
    print(
        "|" + "-" * 30 + "|" + "--------------|" * len(sides) + "------------------|" * len(ratios)
    )
    for key, label in METRICS:
        cells = "".join(f" {med[s][key]:12.1f} |" for s in sides)
        rs = "".join(
            f" {med['rootless'][key] / med[s][key]:16.2f} |" if med[s][key] else f" {'-':>16} |"
            for s in ratios
        )
        print(f"| {label:<28} |{cells}{rs}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
