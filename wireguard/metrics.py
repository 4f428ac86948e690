"""Prometheus text exposition (format version 0.0.4) of counters and gauges,
a Device's peers under the names ``prometheus_wireguard_exporter`` uses, and
a health predicate for an orchestrator's probe. No I/O and no dependency:
a binding serves :func:`render`'s text with :data:`CONTENT_TYPE`.

The format (prometheus.io, "Exposition formats", text format details): one
``# HELP name text`` (backslash and line feed escaped) and one ``# TYPE name
counter|gauge|untyped`` line per metric, before its samples; samples
``name{label="value",...} number``, label values with backslash, double
quote and line feed escaped; ``+Inf``, ``-Inf`` and ``NaN``; lines end with a
line feed, the last one too. Metric names match ``[a-zA-Z_:][a-zA-Z0-9_:]*``,
label names ``[a-zA-Z_][a-zA-Z0-9_]*`` and do not start with ``__``.

The per-peer metrics are those of MindFlavor's prometheus_wireguard_exporter
(so its dashboards work): ``wireguard_sent_bytes_total``,
``wireguard_received_bytes_total`` (counters) and
``wireguard_latest_handshake_seconds`` (a gauge holding the Unix time of the
latest handshake, 0 for never, as ``wg show dump`` prints it), each labelled
``interface``, ``public_key``, ``allowed_ips`` (the peer's prefixes joined by
commas, ``(none)`` when it has none) and, when asked, ``remote_ip`` and
``remote_port``; and ``wireguard_peers_total{interface}``. This module adds
``wireguard_dropped_total{interface,reason}`` from :attr:`Device.drops`.

:func:`counter_metrics` turns rows of dataclass counters (the netstack's
:class:`~wireguard.netstack.NetStackStats`, a forward's counters, the
endpoint re-resolver's) into one family per field, so a binding exposes new
counters without code here.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import LocalProtocolError

if TYPE_CHECKING:
    from .device import Device
    from .keys import PublicKey

__all__ = [
    "CONTENT_TYPE",
    "Metric",
    "counter_metrics",
    "device_metrics",
    "escape_label_value",
    "healthy",
    "render",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
KINDS = ("counter", "gauge", "untyped")

# fullmatch: "$" alone would let a name end in a line feed
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

Labels = tuple[tuple[str, str], ...]


@dataclass
class Metric:
    """One metric family: a name, a kind (counter, gauge, untyped), a help
    text, and samples (labels in order, value)."""

    name: str
    kind: str
    help: str
    samples: list[tuple[Labels, float]] = field(default_factory=list)

    def add(self, value: float, labels: Mapping[str, str] | Sequence[tuple[str, str]] = ()) -> None:
        pairs = tuple(labels.items()) if isinstance(labels, Mapping) else tuple(labels)
        self.samples.append((pairs, value))


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    # whitespace around the text separates tokens: the format cannot carry it
    return text.strip().replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def render(metrics: Iterable[Metric]) -> str:
    """The exposition text of ``metrics``. A bad metric or label name, an
    unknown kind, a name given twice, or a label given twice in one sample
    raises :class:`LocalProtocolError`."""
    lines: list[str] = []
    seen: set[str] = set()
    for metric in metrics:
        if not _METRIC_NAME.fullmatch(metric.name):
            raise LocalProtocolError(f"bad metric name {metric.name!r}")
        if metric.kind not in KINDS:
            raise LocalProtocolError(f"metric {metric.name}: kind {metric.kind!r} not in {KINDS}")
        if metric.name in seen:
            raise LocalProtocolError(f"metric {metric.name} given twice")
        seen.add(metric.name)
        lines.append(f"# HELP {metric.name} {_escape_help(metric.help)}")
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        for labels, value in metric.samples:
            names = [name for name, _ in labels]
            for name in names:
                if not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
                    raise LocalProtocolError(f"metric {metric.name}: bad label name {name!r}")
            if len(set(names)) != len(names):
                raise LocalProtocolError(f"metric {metric.name}: a label given twice")
            if labels:
                text = ",".join(f'{k}="{escape_label_value(str(v))}"' for k, v in labels)
                lines.append(f"{metric.name}{{{text}}} {_number(value)}")
            else:
                lines.append(f"{metric.name} {_number(value)}")
    return "\n".join(lines) + "\n" if lines else ""


def device_metrics(device: Device, interface: str = "wg0", *, remote: bool = False) -> list[Metric]:
    """A Device's peers as prometheus_wireguard_exporter shows them (peers in
    ``wg show`` order; ``remote`` adds ``remote_ip``/``remote_port`` as its
    ``-r`` option does), the number of peers, and the Device's drops by
    reason. The handshake time is ``last_handshake + wall_clock_offset``,
    the Unix time ``wg`` reports, in whole seconds."""
    sent = Metric("wireguard_sent_bytes_total", "counter", "Bytes sent to the peer (transfer tx)")
    received = Metric(
        "wireguard_received_bytes_total", "counter", "Bytes received from the peer (transfer rx)"
    )
    latest = Metric(
        "wireguard_latest_handshake_seconds",
        "gauge",
        "Unix time of the latest handshake with the peer, 0 if none",
    )
    for peer in device.peers.values():
        prefixes = [str(n) for n in device.allowed_ips.entries_for(peer)]
        labels = [
            ("interface", interface),
            ("public_key", peer.public_key.to_base64()),
            ("allowed_ips", ",".join(prefixes) or "(none)"),
        ]
        if remote and peer.endpoint is not None:
            host = peer.endpoint[0].split("%", 1)[0]
            labels += [("remote_ip", host), ("remote_port", str(peer.endpoint[1]))]
        sent.add(peer.tx_bytes, labels)
        received.add(peer.rx_bytes, labels)
        when = peer.last_handshake
        latest.add(0 if when is None else int(when + device.wall_clock_offset), labels)
    peers = Metric("wireguard_peers_total", "gauge", "Number of peers of the interface")
    peers.add(len(device.peers), [("interface", interface)])
    dropped = Metric(
        "wireguard_dropped_total", "counter", "Datagrams and packets the device dropped, by reason"
    )
    for reason, count in sorted(device.drops.items()):
        dropped.add(count, [("interface", interface), ("reason", str(reason))])
    return [sent, received, latest, peers, dropped]


def healthy(device: Device, now: float, max_age: float, peer: PublicKey | None = None) -> bool:
    """True while the latest handshake with any peer (or with ``peer``) is
    younger than ``max_age`` seconds; ``now`` is the Device's clock. A key
    that is not a peer is never healthy."""
    if peer is not None:
        candidate = device.peers.get(peer)
        candidates = [] if candidate is None else [candidate]
    else:
        candidates = list(device.peers.values())
    return any(
        p.last_handshake is not None and now - p.last_handshake < max_age for p in candidates
    )


def counter_metrics(
    prefix: str,
    rows: Iterable[tuple[Mapping[str, str] | Sequence[tuple[str, str]], Any]],
    *,
    gauges: Collection[str] = (),
    helps: Mapping[str, str] | None = None,
) -> list[Metric]:
    """One family per integer field of the dataclass instances in *rows*
    (labels, instance), in field order: ``PREFIX_FIELD_total`` counters, or
    ``PREFIX_FIELD`` gauges for the fields named in *gauges*. *helps* gives a
    field its help text (default: the field's name in words). Instances of
    different classes may share a prefix only if their field names differ."""
    families: dict[str, Metric] = {}
    for labels, counters in rows:
        for f in dataclasses.fields(counters):
            value = getattr(counters, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            gauge = f.name in gauges
            name = f"{prefix}_{f.name}" if gauge else f"{prefix}_{f.name}_total"
            metric = families.get(name)
            if metric is None:
                text = (helps or {}).get(f.name, f.name.replace("_", " "))
                metric = families[name] = Metric(name, "gauge" if gauge else "counter", text)
            metric.add(value, labels)
    return list(families.values())
