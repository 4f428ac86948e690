"""Tunnel throughput through a real TUN: our interface against wireguard-go,
and wireguard-go against wireguard-go, measured alternately in the same run.

Two network namespaces joined by a veth pair. B always runs wireguard-go
(``--wireguard-go PATH``: the build under comparison; default the one on
PATH). A runs, in turn, (a) our endpoint, brought up with ``python -m
wireguard up`` (the TUN engine the ``wireguard-sansio`` daemon also runs),
and (b) the same wireguard-go. Each round measures, for each side in turn:
ping RTT idle and under a TCP A->B transfer, iperf3 TCP A->B and B->A with
the sender's retransmissions, and iperf3 UDP A->B at an unlimited rate
(received rate and loss), plus the CPU seconds the A-side endpoint process
used per GB carried (and how much of that was system time), the share of a
core it got and the machine's idle share. Where packets were lost is counted
per stage for every test: both namespaces' ``Udp`` send and receive buffer
errors and ``Tcp RetransSegs`` (``/proc/net/snmp``), and both TUN
interfaces' dropped counters (a TUN's ``tx_dropped``: packets the kernel had
for the endpoint that did not fit in its queue). Our endpoint's own counters
by stage and its mean batch per wake-up come from its log at the end of each
round. Reports medians over the rounds and the ratio ours / wireguard-go.
With ``--compare TREE`` our endpoint also runs with the ``wireguard``
package of another tree (a checkout of an earlier commit): a before/after
in the same run, the three sides rotated each round.

    sudo python benchmarks/bench_tunnel.py [--rounds 3] [--seconds 5] [--wireguard-go PATH]
        [--compare TREE]

Needs root, ``ip``, ``wg``, a wireguard-go and ``iperf3``. Everything it
creates is removed at the end; it kills only processes it started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from netbench import (
    MTU,
    PORT,
    WG_GO_ENV,
    NamespacePair,
    cpu_seconds,
    iperf3,
    machine_jiffies,
    run,
    tree_env,
)

from wireguard.crypto import aead_backend

UNDER = ("192.168.231.1", "192.168.231.2")
INNER = ("10.231.0.1", "10.231.0.2")


class Bench(NamespacePair):
    def __init__(self, seconds: float, workdir: Path) -> None:
        super().__init__(seconds, workdir, letter="t", under=UNDER, inner=INNER)

    # --- the A side -------------------------------------------------------

    def up_ours(self, tree: str | None = None) -> int:
        """Our endpoint, with this tree's package or *tree*'s."""
        conf = self.dir / f"{self.name_a}.conf"
        conf.write_text(
            f"[Interface]\nPrivateKey = {self.key_a}\nListenPort = {PORT}\n"
            f"Address = {INNER[0]}/24\nMTU = {MTU}\n"
            f"[Peer]\nPublicKey = {self.pub_b}\nAllowedIPs = {INNER[1]}/32\n"
            f"Endpoint = {UNDER[1]}:{PORT}\n"
        )
        run("ip", "netns", "exec", self.a, sys.executable, "-m", "wireguard", "up",
            "--log", str(self.dir / "ours.log"), str(conf), env=tree_env(tree))  # fmt: skip
        return int(Path(f"/var/run/wireguard/{self.name_a}.pid").read_text().split()[0])

    def down_ours(self) -> dict[str, float]:
        """Down; what our endpoint counted as lost, by stage, over the round
        (the last line it logs, see TunInterface.counters)."""
        run("ip", "netns", "exec", self.a, sys.executable, "-m", "wireguard", "down",
            self.name_a)  # fmt: skip
        lines = [line for line in (self.dir / "ours.log").read_text().splitlines()
                 if "packets lost, by stage:" in line]  # fmt: skip
        found: dict[str, float] = {}
        batches = re.findall(r"batches: TUN (\d+) packets in (\d+) wake-ups, UDP (\d+) datagrams "
                             r"in (\d+) wake-ups", (self.dir / "ours.log").read_text())  # fmt: skip
        if batches:
            tun, tun_wakeups, udp, udp_wakeups = (int(x) for x in batches[-1])
            found["ours_tun_batch"] = tun / max(tun_wakeups, 1)
            found["ours_udp_batch"] = udp / max(udp_wakeups, 1)
        if lines:
            for part in lines[-1].split("by stage:", 1)[1].split(","):
                key, _, value = part.strip().rpartition(" ")
                if key:
                    found[f"ours_{key}"] = float(value)
        return found

    def up_wggo(self) -> int:
        self.wg_a = self.start_wireguard_go(self.a, self.name_a, self.key_a, self.pub_b,
                                            INNER[1], UNDER[1], INNER[0])  # fmt: skip
        # `ip netns exec` forks wireguard-go: its pid is the child's.
        pids = run("ip", "netns", "pids", self.a).stdout.split()
        return next(int(p) for p in pids if Path(f"/proc/{p}/comm").read_text().strip()
                    == Path(self.wireguard_go).name[:15])  # fmt: skip

    def down_wggo(self) -> None:
        self.wg_a.terminate()
        self.wg_a.wait(5)
        self.procs.remove(self.wg_a)
        with contextlib.suppress(FileNotFoundError):
            Path(f"/var/run/wireguard/{self.name_a}.sock").unlink()
        deadline = time.monotonic() + 5
        while Path(f"/sys/class/net/{self.name_a}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    # --- measurements -----------------------------------------------------

    def ping(self) -> float:
        # The first pings carry the handshake; measure after it.
        run("ip", "netns", "exec", self.a, "ping", "-c", "3", "-i", "0.2", "-W", "5", INNER[1],
            check=False)  # fmt: skip
        out = run("ip", "netns", "exec", self.a, "ping", "-c", "20", "-i", "0.05", "-W", "2",
                  INNER[1]).stdout  # fmt: skip
        match = re.search(r"= [\d.]+/([\d.]+)/", out)
        assert match, out
        return float(match.group(1))

    def ping_under_load(self) -> float:
        """Mean ping RTT through the tunnel while a TCP A->B transfer fills
        it: what queueing (our TUN's 5,000-packet queue among it) adds."""
        load = subprocess.Popen(["ip", "netns", "exec", self.a, "iperf3", "-c", INNER[1],
                                 "-t", str(max(self.seconds, 4))],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            time.sleep(1.5)  # past slow start: the window and the queues are full
            out = run("ip", "netns", "exec", self.a, "ping", "-c", "20", "-i", "0.1", "-W", "2",
                      INNER[1], check=False).stdout  # fmt: skip
        finally:
            load.wait(self.seconds + 30)
        time.sleep(0.5)  # let the iperf3 server take the next test
        match = re.search(r"= [\d.]+/([\d.]+)/", out)
        return float(match.group(1)) if match else float("nan")

    def iperf(self, *extra: str) -> dict:  # type: ignore[type-arg]
        return iperf3("ip", "netns", "exec", self.a, "iperf3", "-J", "-c", INNER[1],
                      "-t", str(self.seconds), *extra, timeout=self.seconds + 30)  # fmt: skip

    def counters(self, side: str) -> dict[str, int]:
        """Where packets can be lost, summed over both namespaces' stages:
        the kernel's UDP and TCP counters and the TUN interfaces' drops."""
        a, b = self.snmp(self.a), self.snmp(self.b)
        tun_a = self.link_stats(self.a, self.name_a)
        tun_b = self.link_stats(self.b, self.name_b)
        return {
            "a_udp_sndbuf_errors": a["Udp.SndbufErrors"],
            "a_udp_rcvbuf_errors": a["Udp.RcvbufErrors"],
            "b_udp_rcvbuf_errors": b["Udp.RcvbufErrors"],
            "b_udp_sndbuf_errors": b["Udp.SndbufErrors"],
            "a_tcp_retrans_segs": a["Tcp.RetransSegs"],
            "b_tcp_retrans_segs": b["Tcp.RetransSegs"],
            "a_tun_tx_dropped": tun_a.get("tx_dropped", 0),
            "a_tun_rx_dropped": tun_a.get("rx_dropped", 0),
            "b_tun_tx_dropped": tun_b.get("tx_dropped", 0),
            "b_tun_rx_dropped": tun_b.get("rx_dropped", 0),
        }

    def measure(self, pid: int, side: str) -> dict[str, float]:
        result: dict[str, float] = {"rtt_ms": self.ping()}
        result["rtt_loaded_ms"] = self.ping_under_load()
        for label, extra in (("tcp_up", ()), ("tcp_down", ("-R",))):
            before, seen, jiffies = cpu_seconds(pid), self.counters(side), machine_jiffies()
            sys_before = cpu_seconds(pid, system=True)
            end = self.iperf(*extra)
            cpu = cpu_seconds(pid) - before
            system = cpu_seconds(pid, system=True) - sys_before
            busy, idle = (b - a for a, b in zip(jiffies, machine_jiffies(), strict=True))
            # How much of one core the A endpoint used, and how much of the
            # machine's two cores nobody used (the room a second worker has).
            result[f"{label}_a_core_share"] = cpu / self.seconds
            result[f"{label}_machine_idle"] = idle / (busy + idle) if busy + idle else 0.0
            after = self.counters(side)
            bits = end["sum_received"]["bits_per_second"]
            result[f"{label}_mbit"] = bits / 1e6
            # The sender's retransmissions (iperf3 reports the server's with -R).
            result[f"{label}_retr"] = end["sum_sent"].get("retransmits", 0)
            gbytes = bits * self.seconds / 8e9
            result[f"{label}_cpu_s_per_gb"] = cpu / gbytes if gbytes else float("nan")
            # Of which in the kernel, in the endpoint's system calls.
            result[f"{label}_sys_s_per_gb"] = system / gbytes if gbytes else float("nan")
            for key, value in after.items():
                result[f"{label}_{key}"] = value - seen[key]
        seen = self.counters(side)
        end = self.iperf("-u", "-b", "0", "-l", str(MTU - 28 - 20))
        after = self.counters(side)
        udp = end.get("sum_received") or end["sum"]
        result["udp_mbit"] = udp["bits_per_second"] / 1e6
        result["udp_loss_pct"] = udp.get("lost_percent", 0.0)
        for key, value in after.items():
            result[f"udp_{key}"] = value - seen[key]
        return result


METRICS = [
    ("tcp_up_mbit", "TCP A->B, Mbit/s"),
    ("tcp_down_mbit", "TCP B->A, Mbit/s"),
    ("udp_mbit", "UDP A->B received, Mbit/s"),
    ("udp_loss_pct", "UDP A->B loss, %"),
    ("rtt_ms", "ping RTT, ms"),
    ("rtt_loaded_ms", "ping RTT under TCP A->B load, ms"),
    ("tcp_up_cpu_s_per_gb", "A endpoint CPU s/GB, TCP A->B"),
    ("tcp_down_cpu_s_per_gb", "A endpoint CPU s/GB, TCP B->A"),
    ("tcp_up_sys_s_per_gb", "  of which kernel (system time)"),
    ("tcp_down_sys_s_per_gb", "  of which kernel, TCP B->A"),
    ("tcp_up_a_core_share", "A endpoint, cores used, TCP A->B"),
    ("tcp_down_a_core_share", "A endpoint, cores used, TCP B->A"),
    ("tcp_up_machine_idle", "machine idle share, TCP A->B"),
    ("tcp_down_machine_idle", "machine idle share, TCP B->A"),
    ("tcp_up_retr", "TCP A->B retransmits"),
    ("tcp_down_retr", "TCP B->A retransmits"),
    ("tcp_up_b_udp_rcvbuf_errors", "A->B: B UDP receive buffer drops"),
    ("tcp_up_a_udp_sndbuf_errors", "A->B: A UDP send buffer drops"),
    ("tcp_up_a_tun_tx_dropped", "A->B: A TUN read queue drops"),
    ("tcp_up_b_tun_rx_dropped", "A->B: B TUN write drops"),
    ("tcp_down_a_udp_rcvbuf_errors", "B->A: A UDP receive buffer drops"),
    ("tcp_down_a_tun_rx_dropped", "B->A: A TUN write drops"),
    ("udp_b_udp_rcvbuf_errors", "UDP: B UDP receive buffer drops"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per iperf3 test")
    parser.add_argument("--wireguard-go", default="wireguard-go", metavar="PATH",
                        help="the wireguard-go binary for B and the reference A "
                             "(default: the one on PATH)")  # fmt: skip
    parser.add_argument("--only", choices=("ours", "wireguard-go"),
                        help="one A side only (quick experiments; no ratio)")  # fmt: skip
    parser.add_argument("--json", metavar="FILE", help="also write every figure here")
    parser.add_argument("--compare", metavar="TREE",
                        help="also run our endpoint with the wireguard package of TREE "
                             "(an earlier checkout): a before/after in one run")  # fmt: skip
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_tunnel: needs root (network namespaces)", file=sys.stderr)
        return 1
    for tool in ("ip", "wg", args.wireguard_go, "iperf3"):
        if shutil.which(tool) is None:
            print(f"bench_tunnel: `{tool}` is not installed", file=sys.stderr)
            return 1
    os.environ.update(WG_GO_ENV)
    version = run(args.wireguard_go, "--version").stdout.splitlines()[0]
    sides = ["ours", "wireguard-go"]
    tree = None
    if args.compare:
        tree = str(Path(args.compare).resolve())
        if not (Path(tree) / "wireguard" / "__init__.py").is_file():
            print(f"bench_tunnel: {tree} has no wireguard package", file=sys.stderr)
            return 1
        sides.append("compare")
    results: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="bench-tunnel-") as tmp:
        bench = Bench(args.seconds, Path(tmp))
        bench.wireguard_go = args.wireguard_go
        try:
            bench.create()
            for r in range(args.rounds):
                # Alternate which goes first, so a drift in machine load
                # weighs on both sides alike.
                order = sides[r % len(sides) :] + sides[: r % len(sides)]
                if len(sides) == 2 and r % 2:
                    order = order[::-1]
                if args.only:
                    order = [args.only]
                for side in order:
                    is_ours = side != "wireguard-go"
                    pid = bench.up_ours(tree if side == "compare" else None) if is_ours else (
                        bench.up_wggo())  # fmt: skip
                    try:
                        figures = bench.measure(pid, side)
                    finally:
                        lost = bench.down_ours() if is_ours else bench.down_wggo()
                    figures.update(lost or {})
                    results[side].append(figures)
                    shown = "  ".join(f"{k}={v:.1f}" for k, v in figures.items())
                    print(f"round {r + 1} {side:>12}: {shown}", file=sys.stderr)
        finally:
            bench.destroy()
    print(f"\n{args.rounds} rounds, {args.seconds:g} s per iperf3 test, medians; "
          f"A = the side under test, B = {version}; ours on {aead_backend()}")  # fmt: skip
    print(f"| {'metric':<34} | {'ours':>9} | {'wireguard-go':>12} | {'ratio':>6} |")
    print(f"|{'-' * 36}|{'-' * 11}|{'-' * 14}|{'-' * 8}|")
    for key, label in METRICS:
        ours = statistics.median(r[key] for r in results["ours"] or [{key: 0.0}])
        theirs = statistics.median(r[key] for r in results["wireguard-go"] or [{key: 0.0}])
        ratio = f"{ours / theirs:6.2f}" if theirs else "     -"
        print(f"| {label:<34} | {ours:9.2f} | {theirs:12.2f} | {ratio} |")
    if tree is not None:
        print(f"\ncompare = our endpoint with {tree}; medians and ranges across rounds")
        print(f"| {'metric':<34} | {'ours':>19} | {'compare':>19} | {'ratio':>6} |")
        print(f"|{'-' * 36}|{'-' * 21}|{'-' * 21}|{'-' * 8}|")
        for key, label in METRICS:
            cells = []
            for side in ("ours", "compare"):
                values = [r[key] for r in results[side]] or [0.0]
                cells.append((statistics.median(values), min(values), max(values)))
            (now_, lo, hi), (then, lo2, hi2) = cells
            ratio = f"{now_ / then:6.2f}" if then else "     -"
            print(f"| {label:<34} | {now_:8.2f} ({lo:.1f}-{hi:.1f}) | "
                  f"{then:8.2f} ({lo2:.1f}-{hi2:.1f}) | {ratio} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
