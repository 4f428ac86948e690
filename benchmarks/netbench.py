"""What the end-to-end benchmarks share: two network namespaces joined by a
veth pair, wireguard-go with an iperf3 server in B, process CPU accounting.

Used by ``bench_tunnel.py`` and ``bench_rootless.py`` (run as scripts from
the repository root, so this module is importable beside them).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

WG_GO_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
PORT = 51820
MTU = 1420
CLK_TCK = os.sysconf("SC_CLK_TCK")


def run(
    *args: str, check: bool = True, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def iperf3(*args: str, timeout: float, attempts: int = 3) -> dict:  # type: ignore[type-arg]
    """Run an iperf3 client command (*args*, with ``-J``) until it succeeds,
    up to *attempts* times; its JSON's ``end`` section. A try fails if
    iperf3 exits non-zero, prints no JSON, or its JSON carries an
    ``error``: with ``-J``, iperf3 3.12 exits 0 when it cannot even connect,
    its ``end`` empty. The last failure is raised with iperf3's own words."""
    why = "not run"
    for attempt in range(attempts):
        if attempt:
            time.sleep(1)  # the first try may carry the handshake, or the server is busy
        result = run(*args, check=False, timeout=timeout)
        try:
            report = json.loads(result.stdout)
        except ValueError:
            why = (result.stderr.strip() or result.stdout.strip())[-300:] or "no output"
            continue
        if result.returncode == 0 and "error" not in report and report.get("end"):
            return report["end"]  # type: ignore[no-any-return]
        why = report.get("error") or f"exit status {result.returncode}"
    raise RuntimeError(f"iperf3 failed {attempts} times, last: {why}")


def tree_env(tree: str | None) -> dict[str, str] | None:
    """The environment for a command that imports the ``wireguard`` package of
    *tree* (a checkout, for a before/after in one run); None (inherit) for
    this tree's."""
    if tree is None:
        return None
    return dict(os.environ, PYTHONPATH=tree)


def genkey() -> tuple[str, str]:
    private = run("wg", "genkey").stdout.strip()
    public = subprocess.run(
        ["wg", "pubkey"], input=private, capture_output=True, text=True, check=True
    ).stdout.strip()
    return private, public


def cpu_seconds(pid: int, *, system: bool = False) -> float:
    """utime + stime of a process and its threads (only stime: *system*)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    if system:
        return int(fields[12]) / CLK_TCK
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_jiffies() -> tuple[int, int]:
    """(busy, idle) jiffies of the whole machine so far (``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, idle


class NamespacePair:
    """Namespaces A and B, veth between them (*under* addresses), and in B
    wireguard-go (tunnel address *inner*[1]) with an iperf3 server. The A
    side is the subclass's: each benchmark brings up its own contenders."""

    def __init__(
        self,
        seconds: float,
        workdir: Path,
        *,
        letter: str,
        under: tuple[str, str],
        inner: tuple[str, str],
    ) -> None:
        self.seconds = seconds
        self.dir = workdir
        self.under, self.inner = under, inner
        tag = self.tag = secrets.token_hex(3)
        self.letter = letter
        self.a, self.b = f"b{letter}-{tag}-a", f"b{letter}-{tag}-b"
        self.name_a, self.name_b = f"py{letter}{tag}", f"wg{letter}{tag}"
        self.procs: list[subprocess.Popen[str]] = []
        self.key_a, self.pub_a = genkey()
        self.key_b, self.pub_b = genkey()
        #: The wireguard-go binary for B (and for any A side that runs it).
        self.wireguard_go = "wireguard-go"

    def create(self) -> None:
        run("ip", "netns", "add", self.a)
        run("ip", "netns", "add", self.b)
        va, vb = f"v{self.letter}{self.tag}a", f"v{self.letter}{self.tag}b"
        run("ip", "link", "add", va, "netns", self.a, "type", "veth", "peer", "name", vb,
            "netns", self.b)  # fmt: skip
        for ns, dev, addr in ((self.a, va, self.under[0]), (self.b, vb, self.under[1])):
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
        self.start_wireguard_go(self.b, self.name_b, self.key_b, self.pub_a, self.inner[0],
                                self.under[0], self.inner[1])  # fmt: skip
        self.spawn("ip", "netns", "exec", self.b, "iperf3", "-s", "-B", self.inner[1])
        time.sleep(0.3)

    def spawn(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, env=env)  # fmt: skip
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.remove(proc)

    def start_wireguard_go(self, ns, name, key, peer, peer_ip, peer_host, address):  # type: ignore[no-untyped-def]
        proc = self.spawn("ip", "netns", "exec", ns, self.wireguard_go, "-f", name,
                          env=dict(os.environ, **WG_GO_ENV))  # fmt: skip
        sock = Path(f"/var/run/wireguard/{name}.sock")
        deadline = time.monotonic() + 10
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"wireguard-go {name} did not start")
            time.sleep(0.02)
        conf = self.dir / f"{name}.setconf"
        conf.write_text(
            f"[Interface]\nPrivateKey = {key}\nListenPort = {PORT}\n"
            f"[Peer]\nPublicKey = {peer}\nAllowedIPs = {peer_ip}/32\n"
            f"Endpoint = {peer_host}:{PORT}\n"
        )
        run("ip", "netns", "exec", ns, "wg", "setconf", name, str(conf))
        run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", name)
        run("ip", "-n", ns, "link", "set", name, "mtu", str(MTU), "up")
        return proc

    def snmp(self, ns: str) -> dict[str, int]:
        """The namespace's UDP and TCP counters (``/proc/net/snmp``), as
        ``Udp.RcvbufErrors`` and so on."""
        lines = run("ip", "netns", "exec", ns, "cat", "/proc/net/snmp").stdout.splitlines()
        found: dict[str, int] = {}
        for head, values in zip(lines[::2], lines[1::2], strict=False):
            kind, names = head.split(":", 1)
            for key, value in zip(names.split(), values.split(":", 1)[1].split(), strict=False):
                found[f"{kind}.{key}"] = int(value)
        return found

    def link_stats(self, ns: str, name: str) -> dict[str, int]:
        """An interface's packet counters (``ip -s link``), {} if it is gone."""
        got = run("ip", "-n", ns, "-s", "-j", "link", "show", "dev", name, check=False)
        if got.returncode != 0:
            return {}
        stats = json.loads(got.stdout)[0].get("stats64", {})
        return {f"{way}_{k}": v for way in ("rx", "tx") for k, v in stats.get(way, {}).items()}

    def destroy(self) -> None:
        for proc in list(reversed(self.procs)):
            self.stop(proc)
        for ns in (self.a, self.b):
            for pid in run("ip", "netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)  # only what this run started lives there
            run("ip", "netns", "del", ns, check=False)
        for name in (self.name_a, self.name_b):
            for suffix in (".sock", ".pid"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"/var/run/wireguard/{name}{suffix}").unlink()
