"""The operations options of the commands (wireguard/cli/ops.py): bad values
refused with one line before anything starts, and the collectors of a real
rootless tunnel (on loopback, no peer needed) served and parsed back by
prometheus_client."""

from __future__ import annotations

import argparse
import asyncio
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_proxy import dnsmasq  # noqa: F401 - the fixture
from wireguard.cli import main
from wireguard.cli.ops import Ops
from wireguard.io.forward import ForwardOptions, make_forward, parse_forward
from wireguard.io.rootless import RootlessTunnel
from wireguard.keys import PrivateKey


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "wgt.conf"
    path.write_text(
        f"[Interface]\nPrivateKey = {PrivateKey.generate()}\nAddress = 10.5.0.1/24\n"
        f"[Peer]\nPublicKey = {PrivateKey.generate().public_key}\nAllowedIPs = 10.5.0.2/32\n"
        "Endpoint = localhost:51999\n"
    )
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--metrics", "nonsense"], "--metrics: 'nonsense': the port must be a number"),
        (["--metrics", "::1:80"], "an IPv6 address goes in brackets"),
        (["--reresolve-after", "-1"], "--reresolve-after must not be negative"),
        (["--reresolve-interval", "-5"], "--reresolve-interval must not be negative"),
        (["--healthz-max-age", "0"], "--healthz-max-age must be positive"),
        (["--healthz-peer", "abc"], "--healthz-peer: not a public key"),
    ],
)
def test_bad_values_are_one_line(config, capsys, extra, message):
    assert main(["forward", str(config), "-L", "8080:10.5.0.2:80", *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_up_refuses_a_negative_interval(config, capsys):
    assert main(["up", str(config), "--reresolve-interval", "-1"]) == 1
    assert "--reresolve-interval must not be negative" in capsys.readouterr().err


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read().decode()


def test_a_rootless_tunnels_metrics_parse(config):
    async def main_() -> None:
        tunnel = await RootlessTunnel.from_config(config, listen_port=0, host="127.0.0.1")
        async with tunnel:
            forward = make_forward(
                parse_forward("0:10.5.0.2:80", "L"), tunnel, ForwardOptions(5, 5, 4, 4)
            )
            await forward.start()
            args = argparse.Namespace(
                config=str(config), metrics="127.0.0.1:0", healthz_max_age=180.0,
                healthz_peer=None, reresolve_after=135.0, reresolve_interval=0.0,
            )  # fmt: skip
            said: list[str] = []
            ops = await Ops.start(args, tunnel, lambda: [forward], say=said.append)
            try:
                assert ops.reresolver is not None and ops.reresolver.active
                assert any("endpoint names re-resolved" in s for s in said), said
                assert ops.server is not None
                port = ops.server.addresses[0][1]
                text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
            finally:
                await ops.close()
                await forward.close()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["wireguard_peers_total"].samples[0].value == 1
        assert families["wireguard_peers_total"].samples[0].labels == {"interface": "wgt"}
        for name in ("wireguard_stack_packets_received", "wireguard_stack_tcp_retransmits",
                     "wireguard_stack_tcp_connections", "wireguard_forward_total",
                     "wireguard_forward_active", "wireguard_forward_to_tunnel",
                     "wireguard_endpoint_resolution_failures", "wireguard_tunnel_not_passed_on",
                     "wireguard_metrics_http_requests"):  # fmt: skip
            assert name in families, name
        (sample,) = families["wireguard_forward_active"].samples
        assert sample.labels["forward"].startswith("-L tcp 127.0.0.1:")
        assert families["wireguard_forward_active"].type == "gauge"

    asyncio.run(main_())


def test_proxy_takes_the_options_and_its_counters_are_served(config):
    from wireguard.io.proxy import start_socks5

    assert main(["proxy", str(config), "--socks5", "0", "--metrics", "bad"]) == 1

    async def main_() -> None:
        tunnel = await RootlessTunnel.from_config(config, listen_port=0, host="127.0.0.1")
        async with tunnel:
            socks = await start_socks5(tunnel, "127.0.0.1", 0)
            args = argparse.Namespace(
                config=str(config), metrics="127.0.0.1:0", healthz_max_age=180.0,
                healthz_peer=None, reresolve_after=0.0, reresolve_interval=0.0,
            )  # fmt: skip
            ops = await Ops.start(args, tunnel, lambda: [socks], say=lambda _: None)
            try:
                assert ops.server is not None
                port = ops.server.addresses[0][1]
                text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
            finally:
                await ops.close()
                await socks.close()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        (sample,) = families["wireguard_proxy_active"].samples
        assert sample.labels["kind"] == "socks5" and sample.labels["proxy"].startswith("--socks5")
        assert "wireguard_proxy_total" in families and "wireguard_forward_total" not in families
        # the tunnel's resolver: no DNS = line, so no lookups yet, and no families
        assert not [name for name in families if name.startswith("wireguard_dns_")]

    asyncio.run(main_())


def test_the_tunnels_dns_counters_are_metrics(dnsmasq):  # noqa: F811 - the fixture
    """Names resolved through the tunnel by dnsmasq (tests/test_proxy.py's
    world): the resolver's own counters come out as wireguard_dns_*."""
    from tests.test_proxy import run as run_world
    from tests.test_proxy import world
    from wireguard.io.metricsserver import rootless_collectors
    from wireguard.metrics import render

    async def body() -> None:
        async with world(dnsmasq) as w:
            await w.a.resolve("b.test")
            text = render([m for c in rootless_collectors(w.a, "wgt") for m in c()])
            families = {f.name: f for f in text_string_to_metric_families(text)}
            assert w.resolver is not None
            queries = w.resolver.stats["queries"]
            assert queries >= 2
            assert families["wireguard_dns_queries"].samples[0].value == queries

    run_world(body)
