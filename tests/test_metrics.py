"""Prometheus exposition: parsed back by prometheus_client's own text parser
(an independent reader of the format), a Device's peers under the names of
prometheus_wireguard_exporter, and the health predicate."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tests.sim import Network
from wireguard import metrics as m
from wireguard.errors import LocalProtocolError
from wireguard.keys import PrivateKey


def _parse(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _network():
    net = Network(seed=3)
    a, b = net.add("a", 1, wall_clock_offset=1_700_000_000.0), net.add("b", 2)
    net.connect(a, b)
    b.device.add_peer(PrivateKey.generate().public_key)  # a peer that never answers
    return net, a, b


def test_device_metrics_parse_with_the_exporters_names_and_labels():
    net, a, b = _network()
    for i in range(5):
        net.send(a, b, i, size=200)
    net.run_for(1)
    text = m.render(m.device_metrics(a.device, "wg0", remote=True))
    families = _parse(text)
    # prometheus_client names a counter family without its _total suffix
    assert set(families) == {
        "wireguard_sent_bytes", "wireguard_received_bytes", "wireguard_latest_handshake_seconds",
        "wireguard_peers_total", "wireguard_dropped",
    }  # fmt: skip
    peer = a.device.peers[b.device.public_key]
    (sent,) = families["wireguard_sent_bytes"].samples
    assert sent.name == "wireguard_sent_bytes_total" and sent.value == peer.tx_bytes > 0
    assert list(sent.labels.items()) == [
        ("interface", "wg0"),
        ("public_key", b.device.public_key.to_base64()),
        ("allowed_ips", "10.0.0.2/32"),
        ("remote_ip", "192.0.2.2"),
        ("remote_port", "51820"),
    ]
    (received,) = families["wireguard_received_bytes"].samples
    assert received.value == peer.rx_bytes > 0
    (latest,) = families["wireguard_latest_handshake_seconds"].samples
    assert latest.value == int(peer.last_handshake + 1_700_000_000.0)
    assert families["wireguard_sent_bytes"].type == "counter"
    assert families["wireguard_latest_handshake_seconds"].type == "gauge"
    # the side with a silent peer: its handshake is 0, its prefixes "(none)"
    families = _parse(m.render(m.device_metrics(b.device, "wg1")))
    values = {
        s.labels["allowed_ips"]: s.value
        for s in families["wireguard_latest_handshake_seconds"].samples
    }
    assert values["(none)"] == 0 and values["10.0.0.1/32"] > 0
    assert families["wireguard_peers_total"].samples[0].value == 2


def test_drops_are_exposed():
    net, a, _ = _network()
    a.device.receive_datagram(b"\x09junk", ("192.0.2.9", 1), net.now)
    families = _parse(m.render(m.device_metrics(a.device)))
    (sample,) = families["wireguard_dropped"].samples
    assert sample.labels["reason"] == "malformed" and sample.value == 1


printable = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@given(printable, printable)
def test_label_values_and_help_survive_escaping(value, help_text):
    metric = m.Metric("x_total", "counter", help_text)
    metric.add(3, {"v": value, "w": '\\"\n'})
    family = _parse(m.render([metric]))["x"]
    assert family.documentation == help_text.strip()
    assert family.samples[0].labels == {"v": value, "w": '\\"\n'}


def test_special_values_and_untyped():
    metric = m.Metric("g", "gauge", "values")
    for i, value in enumerate([math.inf, -math.inf, 1.5, 2**60, 0.0, True]):
        metric.add(value, {"i": str(i)})
    metric.add(math.nan, {"i": "nan"})
    text = m.render([metric, m.Metric("u", "untyped", "no samples")])
    assert text.endswith("\n")
    samples = _parse(text)["g"].samples
    assert [s.value for s in samples[:6]] == [math.inf, -math.inf, 1.5, 2**60, 0, 1]
    assert math.isnan(samples[6].value)


@pytest.mark.parametrize(
    "metric",
    [
        m.Metric("1bad", "gauge", ""),
        m.Metric("ok", "histogram", ""),
        m.Metric("ok", "gauge", "", [((("__reserved", "x"),), 1)]),
        m.Metric("ok", "gauge", "", [((("a-b", "x"),), 1)]),
        m.Metric("ok", "gauge", "", [((("a", "x"), ("a", "y")), 1)]),
    ],
)
def test_bad_metrics_are_refused(metric):
    with pytest.raises(LocalProtocolError):
        m.render([metric])
    with pytest.raises(LocalProtocolError):
        m.render([m.Metric("same", "gauge", ""), m.Metric("same", "gauge", "")])


def test_health_follows_the_latest_handshake():
    net, a, b = _network()
    assert not m.healthy(a.device, net.now, 180)
    net.send(a, b, 1)
    net.run_for(1)
    key = b.device.public_key
    assert m.healthy(a.device, net.now, 180)
    assert m.healthy(a.device, net.now, 180, key)
    assert not m.healthy(a.device, net.now, 180, PrivateKey.generate().public_key)
    silent = next(k for k in b.device.peers if k != a.device.public_key)
    assert m.healthy(b.device, net.now, 180) and not m.healthy(b.device, net.now, 180, silent)
    age = net.now - a.device.peers[key].last_handshake
    assert not m.healthy(a.device, net.now + 181 - age, 180)  # too old
    a.device.remove_peer(key)  # the peer went away
    assert not m.healthy(a.device, net.now, 180)


@pytest.mark.parametrize(
    "metric",
    [
        m.Metric("x\n", "gauge", "", [((), 1)]),
        m.Metric("x", "gauge", "", [((("a\n", "v"),), 1)]),
    ],
    ids=["metric-name", "label-name"],
)
def test_a_name_ending_in_a_line_feed_is_refused(metric):
    """The exposition format's name rules ([a-zA-Z_:][a-zA-Z0-9_:]* for a
    metric, [a-zA-Z_][a-zA-Z0-9_]* for a label) have no line feed; one
    would end the line and break every line after it."""
    with pytest.raises(LocalProtocolError):
        m.render([metric])
