"""The end-to-end benchmarks' iperf3 runner, against a real iperf3 on
loopback: a failure iperf3 reports inside its JSON (with ``-J``, iperf3 3.12
exits 0 when it cannot connect) is retried and then raised in iperf3's own
words, not read as a result with no figures."""

from __future__ import annotations

import socket
import subprocess
import sys
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


def test_a_test_that_ran_gives_its_summary() -> None:
    iperf3 = need_tool("iperf3")
    port = str(_free_port())
    server = subprocess.Popen([iperf3, "-s", "-1", "-B", "127.0.0.1", "-p", port],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        end = netbench.iperf3(iperf3, "-J", "-c", "127.0.0.1", "-p", port, "-t", "1",
                              "-b", "10M", timeout=30)  # fmt: skip
        assert end["sum_received"]["bytes"] > 0
    finally:
        server.kill()
        server.wait()
