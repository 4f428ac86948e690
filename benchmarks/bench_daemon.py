"""The drop-in daemon against wireguard-go, each on both ends of a tunnel,
measured alternately in the same run (issue 13).

Two network namespaces joined by a veth pair (IPv4 and IPv6). Each round
brings up, in turn, a pair of ``wireguard-sansio`` interfaces and a pair of
wireguard-go interfaces, started and configured as wg-quick would (the
command, then ``wg setconf``, addresses, MTU 1420, up), and measures through
the tunnel with iperf3: TCP A->B and UDP A->B at an unlimited rate (received
rate), over IPv4 inside IPv4 and over IPv6 inside IPv6, with the CPU seconds
both daemons used per GB carried. Then, per implementation, the time of one
``wg setconf`` of a peer with 130,000 allowed IPs (65,000 IPv4 /16s and
65,000 IPv6 /128s) and of ``wg show NAME allowed-ips`` after it. Medians
over the rounds and the ratio ours / wireguard-go.

    sudo python benchmarks/bench_daemon.py [--rounds 3] [--seconds 5]
        [--wireguard-go PATH] [--sansio COMMAND]

Needs root, ``ip``, ``wg``, ``iperf3`` and a wireguard-go (Debian's by
default; ``--wireguard-go`` takes another build). Everything it creates is
removed at the end; it kills only processes it started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from netbench import MTU, WG_GO_ENV, cpu_seconds, genkey, run

ROOT = Path(__file__).resolve().parents[1]
UNDER = {4: ("192.168.232.1", "192.168.232.2"), 6: ("fd82::1", "fd82::2")}
INNER = {4: ("10.232.0.1", "10.232.0.2"), 6: ("fd83::1", "fd83::2")}
PORT = 51820


def endpoint(host: str) -> str:
    return f"[{host}]:{PORT}" if ":" in host else f"{host}:{PORT}"


class Bench:
    def __init__(self, seconds: float, workdir: Path, commands: dict[str, list[str]]) -> None:
        self.seconds, self.dir, self.commands = seconds, workdir, commands
        tag = self.tag = secrets.token_hex(3)
        self.a, self.b = f"bd-{tag}-a", f"bd-{tag}-b"
        self.names: list[str] = []
        self.iperf: int | None = None

    def create(self) -> None:
        run("ip", "netns", "add", self.a)
        run("ip", "netns", "add", self.b)
        va, vb = f"vd{self.tag}a", f"vd{self.tag}b"
        run("ip", "link", "add", va, "netns", self.a, "type", "veth", "peer", "name", vb,
            "netns", self.b)  # fmt: skip
        for i, (ns, dev) in enumerate(((self.a, va), (self.b, vb))):
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "addr", "add", f"{UNDER[4][i]}/24", "dev", dev)
            run("ip", "-n", ns, "addr", "add", f"{UNDER[6][i]}/64", "dev", dev, "nodad")
            run("ip", "-n", ns, "link", "set", dev, "up")

    def destroy(self) -> None:
        for name in self.names:
            for ns in (self.a, self.b):
                run("ip", "-n", ns, "link", "del", name, check=False)
        for ns in (self.a, self.b):
            for pid in run("ip", "netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)  # only what this run started lives there
            run("ip", "netns", "del", ns, check=False)
        for name in self.names:
            with contextlib.suppress(FileNotFoundError):
                Path(f"/var/run/wireguard/{name}.sock").unlink()

    # --- interfaces -------------------------------------------------------

    def start(self, impl: str, ns: str, name: str) -> int:
        """Start *impl* as wg-quick does (it daemonizes); the daemon's pid."""
        self.names.append(name)
        run("ip", "netns", "exec", ns, *self.commands[impl], name)
        for pid in run("ip", "netns", "pids", ns).stdout.split():
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
            if argv[-1] == name.encode():
                return int(pid)
        raise RuntimeError(f"{impl} {name}: no daemon process")

    def setconf(self, name: str, text: str) -> float:
        path = self.dir / f"{name}.conf"
        path.write_text(text)
        path.chmod(0o600)
        start = time.monotonic()
        run("wg", "setconf", name, str(path), timeout=900)
        return time.monotonic() - start

    def up_pair(self, impl: str) -> tuple[str, str, int, int]:
        tag = secrets.token_hex(3)
        names = (f"{impl[:2]}{tag}a", f"{impl[:2]}{tag}b")
        keys = [genkey(), genkey()]
        pids = []
        for i, (ns, name) in enumerate(zip((self.a, self.b), names, strict=True)):
            pids.append(self.start(impl, ns, name))
            other = 1 - i
            self.setconf(
                name,
                f"[Interface]\nPrivateKey = {keys[i][0]}\nListenPort = {PORT}\n"
                f"[Peer]\nPublicKey = {keys[other][1]}\n"
                f"AllowedIPs = {INNER[4][other]}/32, {INNER[6][other]}/128\n"
                f"Endpoint = {endpoint(UNDER[4][other])}\n",
            )
            run("ip", "-n", ns, "addr", "add", f"{INNER[4][i]}/24", "dev", name)
            run("ip", "-n", ns, "addr", "add", f"{INNER[6][i]}/64", "dev", name, "nodad")
            run("ip", "-n", ns, "link", "set", name, "mtu", str(MTU), "up")
        self.keys = keys
        return names[0], names[1], pids[0], pids[1]

    def outer(self, names: tuple[str, str], family: int) -> None:
        """Both ends use IPv4 or IPv6 outside."""
        for i, name in enumerate(names):
            peer = self.keys[1 - i][1]
            run("wg", "set", name, "peer", peer, "endpoint", endpoint(UNDER[family][1 - i]))

    def down(self, names: tuple[str, str]) -> None:
        for ns, name in zip((self.a, self.b), names, strict=True):
            run("ip", "-n", ns, "link", "del", name, check=False)
        deadline = time.monotonic() + 10
        while any(Path(f"/var/run/wireguard/{n}.sock").exists() for n in names):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)

    # --- measurements -----------------------------------------------------

    def iperf3(self, family: int, *extra: str) -> dict:  # type: ignore[type-arg]
        for _ in range(3):
            result = run("ip", "netns", "exec", self.a, "iperf3", "-J", "-c", INNER[family][1],
                         "-t", str(self.seconds), *extra, check=False,
                         timeout=self.seconds + 30)  # fmt: skip
            if result.returncode == 0:
                return json.loads(result.stdout)["end"]
            time.sleep(1)
        raise RuntimeError(f"iperf3 {' '.join(extra)} failed: {result.stdout[-500:]}")

    def measure(self, impl: str) -> dict[str, float]:
        name_a, name_b, pid_a, pid_b = self.up_pair(impl)
        figures: dict[str, float] = {}
        server = None
        try:
            server = run_bg("ip", "netns", "exec", self.b, "iperf3", "-s")
            time.sleep(0.3)
            for family in (4, 6):
                self.outer((name_a, name_b), family)
                # The first pings carry the handshake.
                run("ip", "netns", "exec", self.a, "ping", "-c", "3", "-i", "0.2", "-W", "5",
                    INNER[family][1], check=False)  # fmt: skip
                for label, extra in (("tcp", ()), ("udp", ("-u", "-b", "0", "-l", "1372"))):
                    before = cpu_seconds(pid_a) + cpu_seconds(pid_b)
                    end = self.iperf3(family, *extra)
                    cpu = cpu_seconds(pid_a) + cpu_seconds(pid_b) - before
                    got = end.get("sum_received") or end["sum"]
                    bits = got["bits_per_second"]
                    if label == "udp" and "sum_received" not in end:
                        bits *= 1 - got.get("lost_percent", 0.0) / 100
                    key = f"{label}{family}"
                    figures[f"{key}_mbit"] = bits / 1e6
                    gbytes = bits * self.seconds / 8e9
                    figures[f"{key}_cpu_s_per_gb"] = cpu / gbytes if gbytes else float("nan")
        finally:
            if server is not None:
                server.terminate()
                server.wait(5)
            self.down((name_a, name_b))
        return figures

    def setconf_huge(self, impl: str) -> dict[str, float]:
        name = f"{impl[:2]}{secrets.token_hex(3)}h"
        self.start(impl, self.a, name)
        try:
            nets = [f"{i >> 8}.{i & 255}.0.0/16" for i in range(65000)]
            nets += [f"2001:db8::{i:x}/128" for i in range(65000)]
            text = (
                f"[Interface]\nPrivateKey = {genkey()[0]}\n"
                f"[Peer]\nPublicKey = {genkey()[1]}\nAllowedIPs = {', '.join(nets)}\n"
            )
            took = self.setconf(name, text)
            start = time.monotonic()
            shown = run("wg", "show", name, "allowed-ips", timeout=900).stdout
            show = time.monotonic() - start
            assert len(shown.split()) == 130_001, "not every allowed IP listed"
            return {"setconf_130k_s": took, "show_130k_s": show}
        finally:
            run("ip", "-n", self.a, "link", "del", name, check=False)


def run_bg(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


METRICS = [
    ("tcp4_mbit", "TCP A->B, IPv4 in IPv4, Mbit/s"),
    ("tcp6_mbit", "TCP A->B, IPv6 in IPv6, Mbit/s"),
    ("udp4_mbit", "UDP A->B received, IPv4, Mbit/s"),
    ("udp6_mbit", "UDP A->B received, IPv6, Mbit/s"),
    ("tcp4_cpu_s_per_gb", "both daemons CPU s/GB, TCP IPv4"),
    ("tcp6_cpu_s_per_gb", "both daemons CPU s/GB, TCP IPv6"),
    ("udp4_cpu_s_per_gb", "both daemons CPU s/GB, UDP IPv4"),
    ("setconf_130k_s", "wg setconf, 130,000 allowed IPs, s"),
    ("show_130k_s", "wg show allowed-ips of them, s"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per iperf3 test")
    parser.add_argument("--wireguard-go", default="wireguard-go", metavar="PATH",
                        help="the wireguard-go binary (default: the one on PATH)")  # fmt: skip
    parser.add_argument("--sansio", metavar="COMMAND",
                        help="how to run ours (default: this tree's python -m "
                             "wireguard.cli.daemon)")  # fmt: skip
    parser.add_argument("--json", metavar="FILE", help="also write every figure here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_daemon: needs root (network namespaces)", file=sys.stderr)
        return 1
    for tool in ("ip", "wg", "iperf3", args.wireguard_go):
        if shutil.which(tool) is None:
            print(f"bench_daemon: `{tool}` is not installed", file=sys.stderr)
            return 1
    sansio = shlex.split(args.sansio) if args.sansio else [
        sys.executable, "-m", "wireguard.cli.daemon"]  # fmt: skip
    commands = {"sansio": sansio, "wireguard-go": [args.wireguard_go]}
    os.environ.update(WG_GO_ENV)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    version = run(args.wireguard_go, "--version").stdout.splitlines()[0]
    results: dict[str, list[dict[str, float]]] = {"sansio": [], "wireguard-go": []}
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp:
        bench = Bench(args.seconds, Path(tmp), commands)
        try:
            bench.create()
            for r in range(args.rounds):
                # Alternate which goes first, so a drift in machine load
                # weighs on both sides alike.
                order = ["sansio", "wireguard-go"] if r % 2 == 0 else ["wireguard-go", "sansio"]
                for impl in order:
                    figures = bench.measure(impl)
                    figures.update(bench.setconf_huge(impl))
                    results[impl].append(figures)
                    shown = "  ".join(f"{k}={v:.2f}" for k, v in figures.items())
                    print(f"round {r + 1} {impl:>12}: {shown}", file=sys.stderr)
        finally:
            bench.destroy()
    print(f"\n{args.rounds} rounds, {args.seconds:g} s per iperf3 test, medians; both ends "
          f"the same implementation; reference {version}")  # fmt: skip
    print(f"| {'metric':<38} | {'sansio':>9} | {'wireguard-go':>12} | {'ratio':>6} |")
    print(f"|{'-' * 40}|{'-' * 11}|{'-' * 14}|{'-' * 8}|")
    for key, label in METRICS:
        ours = statistics.median(r[key] for r in results["sansio"])
        theirs = statistics.median(r[key] for r in results["wireguard-go"])
        ratio = f"{ours / theirs:6.2f}" if theirs else "     -"
        print(f"| {label:<38} | {ours:9.2f} | {theirs:12.2f} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
