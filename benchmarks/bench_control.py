"""What a control-socket client can make the server hold, and how long it can
keep the event loop from running anything else.

Run with ``python benchmarks/bench_control.py [SCENARIO ...]``. Each scenario
starts the :class:`~wireguard.io.control.ControlServer` in a fresh process
(so that its peak RSS, ``VmHWM``, is its own), with a ticker task in the same
event loop that wakes every 10 ms and records the longest gap between two of
its wake-ups: a stall of the loop, which a datagram would have waited out
too. Then a client, in this process, sends:

- ``fwmark``: one ``set=1`` of ``--fwmark-mib`` MiB of ``fwmark=1`` lines;
- ``get``: ``--gets`` pipelined ``get=1`` requests to a device with
  ``--get-peers`` peers, reading the answers as fast as it can;
- ``peers``: one ``set=1`` that creates ``--peers`` peers, each with an
  endpoint and an allowed IP.

The server prints the peak RSS and the longest gap, in wall-clock time and
in the CPU time its thread used during a gap (on a shared machine the first
also counts time the OS gave to other processes); the client the time and the
size of the answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def peer_key(n: int) -> str:
    return n.to_bytes(32, "big").hex()


def peer_lines(count: int) -> list[str]:
    lines = []
    for n in range(1, count + 1):
        lines += [
            f"public_key={peer_key(n)}",
            f"endpoint=192.0.2.{n % 250 + 1}:{1024 + n % 60000}",
            f"allowed_ip=10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}/32",
        ]
    return lines


def vm_hwm_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


async def serve(path: str, peers: int) -> None:
    sys.path.insert(0, ROOT)
    from wireguard.device import Device
    from wireguard.io.control import ControlServer
    from wireguard.keys import PrivateKey, PublicKey
    from wireguard.uapi import UAPI

    device = Device(PrivateKey(bytes([7]) * 32).clamped(), listen_port=51820)
    for n in range(1, peers + 1):
        device.add_peer(
            PublicKey(bytes.fromhex(peer_key(n))),
            allowed_ips=[f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}/32"],
            endpoint=("192.0.2.1", 1024 + n),
        )
    loop = asyncio.get_running_loop()
    uapi = UAPI(device, now=loop.time)
    longest = longest_cpu = 0.0

    async def tick() -> None:
        # The wall-clock gap includes time the OS gave to other processes;
        # the CPU time the loop's thread used in a gap is what it kept from
        # other tasks.
        nonlocal longest, longest_cpu
        last, last_cpu = time.perf_counter(), time.thread_time()
        while True:
            await asyncio.sleep(0.01)
            now, now_cpu = time.perf_counter(), time.thread_time()
            longest = max(longest, now - last - 0.01)
            longest_cpu = max(longest_cpu, now_cpu - last_cpu)
            last, last_cpu = now, now_cpu

    ticker = asyncio.create_task(tick())
    done = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), done.set)
    async with ControlServer(uapi, path):
        print("ready", flush=True)
        await done.wait()
    ticker.cancel()
    report = {"vm_hwm_mib": vm_hwm_kib() / 1024, "longest_stall_s": longest,
              "longest_stall_cpu_s": longest_cpu, "peers": len(device.peers)}  # fmt: skip
    print(json.dumps(report), flush=True)


def start_server(path: str, peers: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", path, "--server-peers", str(peers)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def stop_server(proc: subprocess.Popen[str]) -> dict[str, float]:
    out, _ = proc.communicate("stop\n", timeout=600)
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def exchange(path: str, chunks: list[bytes], answers: int) -> tuple[float, int]:
    """Send *chunks*, read until *answers* answers (blank-line ends) came or
    the server hangs up; returns (seconds, answer bytes)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.setblocking(False)
    start = time.perf_counter()
    received = 0
    seen = 0
    tail = b""
    pending = b"".join(chunks)
    view = memoryview(pending)
    sent = 0
    while seen < answers:
        want_write = [sock] if sent < len(pending) else []
        readable, writable, _ = select.select([sock], want_write, [], 120)
        if not readable and not writable:
            raise TimeoutError("the server stopped answering")
        if writable:
            try:
                sent += sock.send(view[sent : sent + (1 << 20)])
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                sent = len(pending)
        if readable:
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += len(chunk)
            text = tail + chunk
            seen += text.count(b"\n\n")
            tail = text[-1:]
    elapsed = time.perf_counter() - start
    sock.close()
    return elapsed, received


def run(name: str, args: argparse.Namespace) -> dict[str, object]:
    directory = tempfile.mkdtemp(prefix="bench-control-")
    path = os.path.join(directory, "b.sock")
    if name == "fwmark":
        peers, count = 0, args.fwmark_mib * (1 << 20) // len(b"fwmark=1\n")
        chunks, answers = [b"set=1\n", b"fwmark=1\n" * count, b"\n"], 1
        what = f"{args.fwmark_mib} MiB of fwmark=1 lines in one set"
    elif name == "get":
        peers, answers = args.get_peers, args.gets
        chunks = [b"get=1\n\n" * args.gets]
        what = f"{args.gets} pipelined get=1, {peers} peers"
    else:
        peers, answers = 0, 1
        chunks = [("set=1\n" + "".join(f"{ln}\n" for ln in peer_lines(args.peers)) + "\n").encode()]
        what = f"one set of {args.peers} peers"
    server = start_server(path, peers)
    try:
        seconds, received = exchange(path, chunks, answers)
    finally:
        report = stop_server(server)
    os.rmdir(directory)
    return {"scenario": what, "client_seconds": round(seconds, 2),
            "answer_mib": round(received / (1 << 20), 1),
            **{k: round(v, 3) for k, v in report.items()}}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", default=["fwmark", "get", "peers"])
    parser.add_argument("--fwmark-mib", type=int, default=90)
    parser.add_argument("--gets", type=int, default=9362)
    parser.add_argument("--get-peers", type=int, default=300)
    parser.add_argument("--peers", type=int, default=20_000)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--server-peers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.server_peers))
        return 0
    for name in args.scenarios:
        print(json.dumps(run(name, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
