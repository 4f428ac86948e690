"""Throughput through the SOCKS5 proxy and the HTTP proxy against ``forward
-L`` and the TUN path, measured alternately in the same run.

Two network namespaces joined by a veth pair (benchmarks/netbench.py); B runs
wireguard-go and ``python -m http.server`` on its tunnel address, serving one
file of ``--mb`` MB. A runs, in turn:

* **proxy**: one ``python -m wireguard proxy CONFIG --socks5 1080 --http 8080
  -L 8081:B:8000`` process (the shared runtime: both proxies and the forward
  in one process), as user nobody when nobody can run this interpreter. curl
  in A downloads the file three ways through it: ``--socks5-hostname``
  (**socks5**), ``--proxy http://`` (**http**, absolute-URI forwarding) and
  from the ``-L`` port (**forward**);
* **tun**: our endpoint with a TUN device (``python -m wireguard up``), curl
  straight to B's tunnel address: kernel TCP on both ends, our WireGuard in
  between (left out, and said so, when the TUN path cannot start).

Each figure is curl's average download speed (MB/s) and the CPU seconds the
A-side process used per GB; the order rotates each round. Prints medians and
the ratio of each proxy to ``forward -L``.

    sudo python benchmarks/bench_proxy.py [--rounds 3] [--mb 200] [--no-tun]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_rootless import INNER, Bench
from netbench import cpu_seconds, run

HTTP_PORT = 8000
SOCKS, HTTP, LOCAL = 1080, 8080, 8081
WAYS = ["socks5", "http", "forward", "tun"]


class ProxyBench(Bench):
    def serve_file(self, mb: int) -> str:
        www = self.dir / "www"
        www.mkdir(exist_ok=True)
        blob = www / "blob"
        blob.write_bytes(hashlib.shake_256(b"bench").digest(mb * 1000 * 1000))
        www.chmod(0o755)
        server = subprocess.Popen(
            ["ip", "netns", "exec", self.b, sys.executable, "-m", "http.server",
             "--bind", INNER[1], "--directory", str(www), str(HTTP_PORT)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.procs.append(server)
        return hashlib.sha256(blob.read_bytes()).hexdigest()

    def up_proxy(self):  # type: ignore[no-untyped-def]
        log = self.dir / "proxy.log"
        with open(log, "w") as f:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.a, *self.as_nobody, sys.executable, "-m",
                 "wireguard", "proxy", str(self.config_a()), "--socks5", str(SOCKS),
                 "--http", str(HTTP), "-L", f"{LOCAL}:{INNER[1]}:{HTTP_PORT}",
                 "--status", "0"],
                stdout=subprocess.DEVNULL, stderr=f, text=True, cwd="/",
            )  # fmt: skip
        self.procs.append(proc)
        deadline = time.monotonic() + 30
        while "proxy: ready" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the proxy did not start: {log.read_text()}")
            time.sleep(0.05)
        return proc.pid, lambda: self.stop(proc)

    def curl(self, pid: int, sha: str, *args: str) -> dict[str, float]:
        """Download *args*' last item (a URL), the rest curl's proxy options."""
        *options, url = args
        base = ["ip", "netns", "exec", self.a, "curl", "-sS", "--fail", "--noproxy", "",
                "--max-time", "600", "-o", str(self.dir / "got"), "-w",
                "%{speed_download} %{size_download}", *options]  # fmt: skip
        run(*base, url.replace("/blob", "/"), check=False)  # warm-up: handshake, names
        before = cpu_seconds(pid)
        out = run(*base, url, timeout=700).stdout.split()
        cpu = cpu_seconds(pid) - before
        got = hashlib.sha256((self.dir / "got").read_bytes()).hexdigest()
        if got != sha:
            raise RuntimeError(f"curl {' '.join(args)}: the download's sha256 differs")
        speed, size = float(out[0]), float(out[1])
        return {"mb_s": speed / 1e6, "cpu_s_per_gb": cpu / (size / 1e9)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mb", type=int, default=200, help="size of the file downloaded")
    parser.add_argument("--no-tun", action="store_true", help="leave out the TUN path")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_proxy: needs root (network namespaces)", file=sys.stderr)
        return 1
    for tool in ("ip", "wg", "wireguard-go", "curl"):
        if shutil.which(tool) is None:
            print(f"bench_proxy: `{tool}` is not installed", file=sys.stderr)
            return 1
    ways = [w for w in WAYS if not (args.no_tun and w == "tun")]
    results: dict[str, list[dict[str, float]]] = {w: [] for w in ways}
    url = f"http://{INNER[1]}:{HTTP_PORT}/blob"
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        os.chmod(tmp, 0o755)
        bench = ProxyBench(1.0, Path(tmp))
        who = "nobody" if bench.as_nobody else "root (nobody cannot run this interpreter)"
        print(f"bench_proxy: the proxy runs as {who}", file=sys.stderr)
        try:
            bench.create()
            sha = bench.serve_file(args.mb)
            for r in range(args.rounds):
                sides = ["proxy", "tun"] if "tun" in ways else ["proxy"]
                for side in sides[r % len(sides) :] + sides[: r % len(sides)]:
                    if side == "tun":
                        try:
                            pid, _target, down = bench.up_tun()
                        except RuntimeError as exc:
                            print(f"bench_proxy: TUN path left out: {exc}", file=sys.stderr)
                            ways.remove("tun")
                            del results["tun"]
                            continue
                        try:
                            figures = {"tun": bench.curl(pid, sha, url)}
                        finally:
                            down()
                    else:
                        pid, down = bench.up_proxy()
                        order = ["socks5", "http", "forward"]
                        order = order[r % 3 :] + order[: r % 3]
                        how = {
                            "socks5": ["--socks5-hostname", f"127.0.0.1:{SOCKS}", url],
                            "http": ["--proxy", f"http://127.0.0.1:{HTTP}", url],
                            "forward": [f"http://127.0.0.1:{LOCAL}/blob"],
                        }
                        try:
                            figures = {w: bench.curl(pid, sha, *how[w]) for w in order}
                        finally:
                            down()
                    for way, f in figures.items():
                        results[way].append(f)
                        print(f"round {r + 1} {way:>8}: {f['mb_s']:.1f} MB/s, "
                              f"{f['cpu_s_per_gb']:.1f} CPU s/GB", file=sys.stderr)  # fmt: skip
        finally:
            bench.destroy()
    med = {w: {k: statistics.median(x[k] for x in results[w]) for k in ("mb_s", "cpu_s_per_gb")}
           for w in ways}  # fmt: skip
    print(f"\n{args.rounds} rounds, {args.mb} MB downloads with curl, medians; "
          "B = wireguard-go + kernel TCP + python -m http.server")  # fmt: skip
    print("| way | MB/s | A-side CPU s/GB | MB/s / forward -L |")
    print("|---|---|---|---|")
    names = {"socks5": "SOCKS5 (curl --socks5-hostname)", "http": "HTTP proxy (curl --proxy)",
             "forward": "forward -L", "tun": "TUN (`up`), curl direct"}  # fmt: skip
    for w in ways:
        ratio = med[w]["mb_s"] / med["forward"]["mb_s"]
        print(f"| {names[w]} | {med[w]['mb_s']:.1f} | {med[w]['cpu_s_per_gb']:.1f} | "
              f"{ratio:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
