"""The end-to-end benchmarks' iperf3 runner, against a real iperf3 on
loopback: a failure iperf3 reports inside its JSON (with ``-J``, iperf3 3.12
exits 0 when it cannot connect) is retried and then raised in iperf3's own
words, not read as a result with no figures."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import need_tool

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import netbench


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_refused_connection_is_an_error_after_the_retries(monkeypatch) -> None:
    iperf3 = need_tool("iperf3")
    monkeypatch.setattr(netbench.time, "sleep", lambda _: None)
    tries = []
    run = netbench.run

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        tries.append(args)
        return run(*args, **kwargs)

    monkeypatch.setattr(netbench, "run", counted)
    port = str(_free_port())  # nothing listens there
    with pytest.raises(RuntimeError, match="iperf3 failed 2 times, last: unable to connect"):
        netbench.iperf3(iperf3, "-J", "-c", "127.0.0.1", "-p", port, "-t", "1",
                        timeout=30, attempts=2)  # fmt: skip
    assert len(tries) == 2


def _listening(port: int) -> bool:
    """Whether something listens on TCP 127.0.0.1:*port* (read from
    /proc/net/tcp: a probe connection would use up ``iperf3 -s -1``'s one
    test)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp", encoding="ascii") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return any(row[1] == wanted and row[3] == "0A" for row in rows)  # 0A: LISTEN


def _iperf3_server(iperf3: str) -> tuple[subprocess.Popen[bytes], str]:
    """``iperf3 -s -1`` on a free loopback port, once it listens; another
    port if the one chosen was taken in between."""
    for _ in range(5):
        port = _free_port()
        server = subprocess.Popen([iperf3, "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 10
        while server.poll() is None and not _listening(port) and time.monotonic() < deadline:
            time.sleep(0.02)
        if server.poll() is None and _listening(port):
            return server, str(port)
        server.kill()
        server.wait()
    raise AssertionError("iperf3 -s did not listen on any of 5 free ports")


def test_a_test_that_ran_gives_its_summary() -> None:
    iperf3 = need_tool("iperf3")
    server, port = _iperf3_server(iperf3)
    try:
        end = netbench.iperf3(iperf3, "-J", "-c", "127.0.0.1", "-p", port, "-t", "1",
                              "-b", "10M", timeout=30, attempts=1)  # fmt: skip
        assert end["sum_received"]["bytes"] > 0
    finally:
        server.kill()
        server.wait()
