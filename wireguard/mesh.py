"""A WireGuard mesh described once, in an inventory, and rendered per node.

The inventory is a TOML file a person can read and edit: the network (its
IPv4 and IPv6 prefixes, default port, keepalive, interface name) and one
``[[node]]`` table per node, of one of three kinds:

- ``kernel``: a TUN node brought up with plain ``wg-quick up`` (the kernel's
  WireGuard);
- ``userspace``: a TUN node brought up with
  ``WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-sansio wg-quick up``;
- ``rootless``: a node that runs ``python -m wireguard proxy`` (or
  ``forward``) as an unprivileged user, no TUN.

The inventory holds only public material. Private keys and the preshared key
of every pair of nodes live in files beside it (see :func:`private_key_file`
and :func:`preshared_key_file`), which the command line reads and writes; this
module does no I/O at all: it parses and checks the inventory
(:func:`parse_inventory`), writes it back (:func:`dump_inventory`, and the
comment-keeping edits :func:`edit_add`, :func:`edit_remove`,
:func:`edit_public_key`), allocates addresses (:func:`allocate`), works out the
topology (:func:`peers_of`) and renders each node's files (:func:`render`).

Topology: every pair of nodes is connected directly when at least one of the
two has an endpoint (the one without initiates, with PersistentKeepalive). Two
nodes that are both behind NAT reach each other through the first ``hub`` of
the inventory, a node with an endpoint whose wg-quick file enables forwarding.

Everything rendered is a function of the inventory and the keys alone, so a
re-render after ``add``/``remove``/``rekey`` changes a file only where the
change must show (a new ``[Peer]`` block, a new key), and
``wg syncconf IF <(wg-quick strip FILE)`` applies it to a running node without
touching its other sessions.

Every problem is an :class:`InventoryError` naming the file, line, node and
field: ``mesh.toml:12: node 'db': ipv4: 10.9.0.3 is outside the network
10.77.0.0/24``.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Final

from .config import (
    Config,
    ConfigError,
    Endpoint,
    InterfaceConfig,
    PeerConfig,
    dump_wg_quick,
)
from .errors import KeyFormatError, LocalProtocolError
from .keys import PresharedKey, PrivateKey, PublicKey

__all__ = [
    "DEFAULT_HTTP",
    "DEFAULT_INTERFACE",
    "DEFAULT_KEEPALIVE",
    "DEFAULT_PORT",
    "DEFAULT_SOCKS5",
    "KINDS",
    "Inventory",
    "InventoryError",
    "Network",
    "Node",
    "Peer",
    "RenderedFile",
    "RenderedNode",
    "allocate",
    "dump_inventory",
    "edit_add",
    "edit_public_key",
    "edit_remove",
    "endpoint_with_port",
    "hub_for",
    "locate",
    "network_value",
    "node_value",
    "pairs",
    "parse_inventory",
    "peers_of",
    "preshared_key_file",
    "private_key_file",
    "proxy_command",
    "render",
    "topology_notes",
    "validate",
    "with_node",
    "without_node",
]

KINDS = ("kernel", "userspace", "rootless")
DEFAULT_PORT = 51820
DEFAULT_KEEPALIVE = 25
DEFAULT_INTERFACE = "wg-mesh"
# What a rootless node runs when it is added without options: both proxies,
# on loopback (the pod's or the host's own).
DEFAULT_SOCKS5 = "127.0.0.1:1080"
DEFAULT_HTTP = "127.0.0.1:8080"
# The interpreter in a rendered shell command (the user's PATH) and in a
# systemd unit (which needs a path; give the venv's with `render --python`).
DEFAULT_PYTHON = "python"
DEFAULT_UNIT_PYTHON = "/usr/bin/python3"

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# Node names become file names, systemd unit names and TOML values: keep
# them to what is safe everywhere (a DNS label, lower case).
_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")
# wg-quick's own rule for an interface name (the config file's stem).
_INTERFACE_RE = re.compile(r"[a-zA-Z0-9_=+.-]{1,15}")
# A -L / -R argument goes into a shell script and a unit unquoted: only the
# characters the forward syntax uses ([udp:][BIND:]PORT:HOST:PORT, brackets, '*').
_FORWARD_RE = re.compile(r"[A-Za-z0-9._:*\[\]-]{1,300}")


# --------------------------------------------------------------------------- errors


class InventoryError(LocalProtocolError, ValueError):
    """The inventory, or what was asked of it, is not valid.

    ``filename``, ``lineno``, ``node`` and ``field`` say where:
    ``mesh.toml:12: node 'db': ipv4: ...``, or ``mesh.toml:3: [network] ipv4:
    ...`` for the network; ``message`` is the bare problem.
    """

    def __init__(
        self,
        message: str,
        *,
        filename: str | None = None,
        lineno: int | None = None,
        node: str | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.filename = filename
        self.lineno = lineno
        self.node = node
        self.field = field
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.filename is not None:
            where = self.filename + (f":{self.lineno}" if self.lineno is not None else "")
        parts = [where] if where else []
        if self.node is not None:
            parts.append(f"node '{self.node}'")
        elif self.field is not None:
            parts.append("[network]")
        if self.field is not None:
            parts[-1] += f" {self.field}" if self.node is None else f": {self.field}"
        return ": ".join([*parts, self.message])


class _Problem(Exception):
    """A value is wrong; the caller knows the node and the field."""


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Network:
    """The ``[network]`` table: what every node shares."""

    ipv4: IPv4Network | None = None
    ipv6: IPv6Network | None = None
    port: int = DEFAULT_PORT
    keepalive: int = DEFAULT_KEEPALIVE
    interface: str = DEFAULT_INTERFACE
    mtu: int | None = None

    @property
    def prefixes(self) -> tuple[IPNetwork, ...]:
        return tuple(p for p in (self.ipv4, self.ipv6) if p is not None)


@dataclass(frozen=True)
class Node:
    """One ``[[node]]`` table. ``endpoint`` is kept as written (``host`` or
    ``host:port``); ``port`` is the ListenPort when set; ``mtu``, when set,
    is this node's instead of the network's."""

    name: str
    kind: str
    public_key: PublicKey
    ipv4: IPv4Address | None = None
    ipv6: IPv6Address | None = None
    endpoint: str | None = None
    port: int | None = None
    hub: bool = False
    routes: tuple[IPNetwork, ...] = ()
    dns: tuple[str, ...] = ()
    mtu: int | None = None
    socks5: str | None = None
    http: str | None = None
    metrics: str | None = None
    local_forward: tuple[str, ...] = ()
    remote_forward: tuple[str, ...] = ()

    def listen_port(self, network: Network) -> int | None:
        """The node's ListenPort: its own ``port``, else the network's when
        others must reach it (it has an endpoint), else none (random)."""
        if self.port is not None:
            return self.port
        return network.port if self.endpoint is not None else None

    def wg_endpoint(self, network: Network) -> Endpoint | None:
        """The endpoint peers send to (the listen port when none is written)."""
        if self.endpoint is None:
            return None
        host, port = _split_endpoint(self.endpoint)
        if port is None:
            port = self.listen_port(network) or network.port
        return Endpoint(host, port)

    @property
    def addresses(self) -> tuple[IPAddress, ...]:
        return tuple(a for a in (self.ipv4, self.ipv6) if a is not None)

    @property
    def runs(self) -> str | None:
        """The command a rootless node runs: ``proxy`` when it serves a proxy
        or metrics, ``forward`` when it only forwards ports, ``None`` for a
        TUN node."""
        if self.kind != "rootless":
            return None
        return "proxy" if (self.socks5 or self.http or self.metrics) else "forward"


@dataclass(frozen=True)
class Inventory:
    network: Network = field(default_factory=Network)
    nodes: tuple[Node, ...] = ()

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise InventoryError(f"no node '{name}' in the inventory")

    def __contains__(self, name: object) -> bool:
        return any(node.name == name for node in self.nodes)


# ------------------------------------------------------------------- key files


def private_key_file(name: str) -> str:
    """The private key's file name in the key directory: ``NAME.key``."""
    return f"{name}.key"


def preshared_key_file(a: str, b: str) -> str:
    """The pair's preshared key file: ``A+B.psk``, the names in sorted order
    (``+`` is never in a name, so the split is unambiguous)."""
    first, second = sorted((a, b))
    return f"{first}+{second}.psk"


def pairs(inventory: Inventory) -> list[tuple[str, str]]:
    """Every pair of nodes, in inventory order: each has a preshared key
    (whether or not the topology connects them today, so an edit to an
    endpoint never needs a new key)."""
    names = [node.name for node in inventory.nodes]
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]


# --------------------------------------------------------------------------- values


def _check_name(value: object) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise _Problem(
            f"{_shown(value)} is not a node name (lower-case letters, digits and '-',"
            " at most 32, not starting or ending with '-')"
        )
    return value


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _Problem(f"{_shown(value)} is not {what}")
    return value


def _int(value: object, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _Problem(f"{_shown(value)} is not {what}")
    return value


def _str_list(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Problem(f"{_shown(value)} is not a list of {what}")
    return list(value)


def _prefix(text: object, version: int) -> IPNetwork:
    what = f"an IPv{version} prefix (address/length)"
    text = _str(text, what)
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _Problem(f"{_shown(text)} is not {what}") from None
    if net.version != version or "/" not in text:
        raise _Problem(f"{_shown(text)} is not {what}")
    if ipaddress.ip_address(text.split("/")[0]) != net.network_address:
        raise _Problem(f"{_shown(text)} has host bits set (the prefix is {net})")
    return net


def _address(text: object, version: int) -> IPAddress:
    what = f"an IPv{version} address"
    text = _str(text, what)
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise _Problem(f"{_shown(text)} is not {what}") from None
    if addr.version != version:
        raise _Problem(f"{_shown(text)} is not {what}")
    return addr


def _route(text: str) -> IPNetwork:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _Problem(f"{_shown(text)} is not an IP prefix (address/length)") from None
    if ipaddress.ip_address(text.split("/")[0]) != net.network_address:
        raise _Problem(f"{_shown(text)} has host bits set (the prefix is {net})")
    if net.prefixlen == 0:
        raise _Problem(f"{net}: a default route is not a subnet a mesh node routes")
    return net


def _split_endpoint(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise _Problem(f"{_shown(text)} has no closing ']'")
        host, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise _Problem(f"{_shown(text)}: ':port' expected after ']'")
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        raise _Problem(f"{_shown(text)}: an IPv6 endpoint needs brackets, as in [{text}]:51820")
    else:
        host, colon, port_text_ = text.partition(":")
        port_text = port_text_ if colon else None
    port = None
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
            raise _Problem(f"{_shown(text)} has a port that is not 1..65535")
        port = int(port_text)
    return host, port


def endpoint_with_port(endpoint: str, port: int) -> str:
    """A checked endpoint with its port written out (*port* when it has
    none): ``db.example.net`` -> ``db.example.net:51820``."""
    host, given = _split_endpoint(endpoint)
    if given is not None:
        return endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_endpoint(text: object) -> str:
    text = _str(text, "an endpoint (host or host:port)")
    host, port = _split_endpoint(text)
    try:
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
    except ValueError:
        mapped = None
    if mapped is not None:
        # The kernel's and wireguard-go's IPv6 sockets are IPv6-only: such an
        # endpoint is sent to over IPv6 and never reaches the IPv4 host.
        raise _Problem(
            f"{_shown(text)} is an IPv4-mapped address; write {mapped}"
            " (WireGuard's IPv6 socket does not reach IPv4)"
        )
    try:
        Endpoint(host, port or 1)
    except ConfigError as exc:
        raise _Problem(f"{_shown(text)}: {exc.message}") from None
    return text


def _check_listen(value: object) -> str:
    """``[HOST:]PORT`` for --socks5 / --http / --metrics: HOST an IP literal
    (IPv6 in brackets), ``localhost`` or ``*``; loopback when left out."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    what = "[HOST:]PORT (HOST an IP address, [IPv6], localhost or *)"
    text = _str(value, what)
    if text.startswith("["):
        host, _, port_text = text[1:].partition("]:")
        try:
            ok = ipaddress.ip_address(host).version == 6
        except ValueError:
            ok = False
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        if host in ("localhost", "*"):
            ok = True
        else:
            try:
                ok = ipaddress.ip_address(host).version == 4
            except ValueError:
                ok = False
    else:
        port_text, ok = text, True
    if not ok or not (port_text.isascii() and port_text.isdigit()):
        raise _Problem(f"{_shown(text)} is not {what}")
    if not 1 <= int(port_text) <= 65535:
        raise _Problem(f"{_shown(text)} has a port that is not 1..65535")
    return text


def _check_forward(value: str) -> str:
    if not _FORWARD_RE.fullmatch(value) or value.count(":") < 2:
        raise _Problem(
            f"{_shown(value)} is not a forward ([udp:][BIND:]PORT:HOST:HOSTPORT, as for -L/-R)"
        )
    return value


def _check_dns(value: str) -> str:
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    try:
        InterfaceConfig(dns_search=(value,))
    except ConfigError:
        why = f"{_shown(value)} is neither a DNS server address nor a search domain"
        raise _Problem(why) from None
    return value


def _check_mtu(value: object) -> int:
    mtu = _int(value, 68, 65535, "an MTU (68..65535)")
    return mtu


def _public_key(value: object) -> PublicKey:
    text = _str(value, "a public key (44 characters of base64)")
    try:
        return PublicKey.from_base64(text)
    except KeyFormatError:
        raise _Problem(f"{_shown(text)} is not a public key (44 characters of base64)") from None


# ------------------------------------------------------------------ the parser

_NETWORK_FIELDS = ("ipv4", "ipv6", "port", "keepalive", "interface", "mtu")
_NODE_FIELDS = (
    "name",
    "kind",
    "hub",
    "endpoint",
    "port",
    "ipv4",
    "ipv6",
    "routes",
    "dns",
    "mtu",
    "socks5",
    "http",
    "metrics",
    "local_forward",
    "remote_forward",
    "public_key",
)
_TOML_POSITION = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$")


class _Locator:
    """Line numbers of tables and fields in the text, for messages. Only the
    plain layout (``[network]``, ``[[node]]`` headers, ``key = value`` lines)
    is found; anything else gets the file name alone."""

    _HEADER = re.compile(r"^\s*\[")
    _NETWORK = re.compile(r"^\s*\[\s*network\s*\]\s*(#.*)?$")
    _NODE = re.compile(r"^\s*\[\[\s*node\s*\]\]\s*(#.*)?$")

    def __init__(self, text: str, node_count: int) -> None:
        self.lines = text.split("\n")
        self.headers = [i for i, line in enumerate(self.lines) if self._HEADER.match(line)]
        self.network = next((i for i in self.headers if self._NETWORK.match(self.lines[i])), None)
        nodes = [i for i in self.headers if self._NODE.match(self.lines[i])]
        self.nodes = nodes if len(nodes) == node_count else None

    def _in_table(self, start: int | None, key: str | None) -> int | None:
        if start is None:
            return None
        if key is not None:
            pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
            end = next((h for h in self.headers if h > start), len(self.lines))
            for i in range(start + 1, end):
                if pattern.match(self.lines[i]):
                    return i + 1
        return start + 1

    def line(self, index: int | None, key: str | None) -> int | None:
        """The line of *key* in node *index* (or in [network] if None)."""
        if index is None:
            return self._in_table(self.network, key)
        if self.nodes is None:
            return None
        return self._in_table(self.nodes[index], key)


class _Checker:
    def __init__(self, text: str, filename: str) -> None:
        self.text = text
        self.filename = filename
        self.locator: _Locator | None = None
        self.names: list[str | None] = []

    def error(self, message: str, index: int | None, key: str | None) -> InventoryError:
        lineno = self.locator.line(index, key) if self.locator else None
        node = None
        if index is not None:
            node = self.names[index] if index < len(self.names) else None
            node = node if node is not None else f"#{index + 1}"
        return InventoryError(message, filename=self.filename, lineno=lineno, node=node, field=key)

    def parse(self) -> Inventory:
        try:
            data = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            message = str(exc)
            m = _TOML_POSITION.match(message)
            if m:
                raise InventoryError(
                    f"not valid TOML: {m.group(1)} (column {m.group(3)})",
                    filename=self.filename,
                    lineno=int(m.group(2)),
                ) from None
            raise InventoryError(f"not valid TOML: {message}", filename=self.filename) from None
        raw_nodes = data.get("node", [])
        if not isinstance(raw_nodes, list):
            raise InventoryError(
                "'node' must be an array of tables ([[node]])", filename=self.filename
            )
        self.locator = _Locator(self.text, len(raw_nodes))
        for key in data:
            if key not in ("network", "node"):
                raise InventoryError(
                    f"unknown table or key {key!r} (expected [network] and [[node]])",
                    filename=self.filename,
                )
        if "network" not in data:
            raise InventoryError(
                "no [network] table (start with `python -m wireguard mesh init`)",
                filename=self.filename,
            )
        network = self.network(data["network"])
        self.names = [
            (t.get("name") if isinstance(t.get("name"), str) else None)
            if isinstance(t, dict)
            else None
            for t in raw_nodes
        ]
        nodes = tuple(self.node(i, t, network) for i, t in enumerate(raw_nodes))
        inventory = Inventory(network, nodes)
        for problem, index, field_name in _cross_check(inventory):
            raise self.error(problem, index, field_name)
        return inventory

    def network(self, table: object) -> Network:
        if not isinstance(table, dict):
            raise InventoryError("[network] must be a table", filename=self.filename)
        for key in table:
            if key not in _NETWORK_FIELDS:
                raise self.error(
                    f"unknown field (expected one of {', '.join(_NETWORK_FIELDS)})", None, key
                )
        values: dict[str, Any] = {}
        for key, raw in table.items():
            try:
                values[key] = _network_value(key, raw)
            except _Problem as exc:
                raise self.error(str(exc), None, key) from None
        network = Network(**values)
        if not network.prefixes:
            raise self.error("the network needs an ipv4 or an ipv6 prefix, or both", None, None)
        for prefix, most in ((network.ipv4, 30), (network.ipv6, 126)):
            if prefix is not None and prefix.prefixlen > most:
                key = f"ipv{prefix.version}"
                raise self.error(f"{prefix} is too small for a mesh (at most /{most})", None, key)
        return network

    def node(self, index: int, table: object, network: Network) -> Node:
        if not isinstance(table, dict):
            raise self.error("a node must be a table ([[node]])", index, None)
        for key in table:
            if key not in _NODE_FIELDS:
                raise self.error(
                    f"unknown field (expected one of {', '.join(_NODE_FIELDS)})", index, key
                )
        for key in ("name", "kind", "public_key"):
            if key not in table:
                hint = " (add nodes with `python -m wireguard mesh add`)" if key != "kind" else ""
                raise self.error(f"missing{hint}", index, key)
        values: dict[str, Any] = {}
        for key, raw in table.items():
            try:
                values[key] = _node_value(key, raw)
            except _Problem as exc:
                raise self.error(str(exc), index, key) from None
        for prefix, key in ((network.ipv4, "ipv4"), (network.ipv6, "ipv6")):
            if prefix is not None and key not in values:
                raise self.error(f"missing (the network has the prefix {prefix})", index, key)
            if prefix is None and key in values:
                raise self.error(f"the network has no {key} prefix", index, key)
        return Node(**values)


def _network_value(key: str, raw: object) -> Any:
    if key == "ipv4":
        return _prefix(raw, 4)
    if key == "ipv6":
        return _prefix(raw, 6)
    if key == "port":
        return _int(raw, 1, 65535, "a port (1..65535)")
    if key == "keepalive":
        return _int(raw, 0, 65535, "a keepalive (0..65535 seconds, 0: off)")
    if key == "interface":
        return _check_interface(raw)
    assert key == "mtu"
    return _check_mtu(raw)


def network_value(key: str, raw: object) -> Any:
    """One ``[network]`` field checked as the parser checks it (*raw* as
    TOML gives it); raises :class:`InventoryError` naming the field."""
    try:
        return _network_value(key, raw)
    except _Problem as exc:
        raise InventoryError(str(exc), field=key) from None


def node_value(key: str, raw: object) -> Any:
    """One ``[[node]]`` field checked as the parser checks it."""
    try:
        return _node_value(key, raw)
    except _Problem as exc:
        raise InventoryError(str(exc), field=key) from None


def locate(text: str, inventory: Inventory, name: str, key: str | None) -> int | None:
    """The line of node *name*'s field *key* (or of its table) in *text*,
    the inventory's source, when the layout is the plain one."""
    index = next((i for i, n in enumerate(inventory.nodes) if n.name == name), None)
    if index is None:
        return None
    return _Locator(text, len(inventory.nodes)).line(index, key)


def _check_interface(value: object) -> str:
    text = _str(value, "an interface name")
    if not _INTERFACE_RE.fullmatch(text):
        raise _Problem(
            f"{_shown(text)} is not an interface name"
            " (1..15 of letters, digits and _=+.-, as for wg-quick)"
        )
    if text in (".", ".."):
        # Linux's dev_valid_name (net/core/dev.c) refuses them.
        raise _Problem(f"{_shown(text)} is not an interface name (Linux refuses '.' and '..')")
    return text


def _node_value(key: str, raw: object) -> Any:
    if key == "name":
        return _check_name(raw)
    if key == "kind":
        if raw not in KINDS:
            raise _Problem(f"{_shown(raw)} is not a kind ({', '.join(KINDS)})")
        return raw
    if key == "public_key":
        return _public_key(raw)
    if key == "ipv4":
        return _address(raw, 4)
    if key == "ipv6":
        return _address(raw, 6)
    if key == "endpoint":
        return _check_endpoint(raw)
    if key == "port":
        return _int(raw, 1, 65535, "a port (1..65535)")
    if key == "hub":
        if not isinstance(raw, bool):
            raise _Problem(f"{_shown(raw)} is neither true nor false")
        return raw
    if key == "routes":
        return tuple(_route(r) for r in _str_list(raw, "prefixes"))
    if key == "dns":
        return tuple(_check_dns(d) for d in _str_list(raw, "DNS servers or search domains"))
    if key == "mtu":
        return _check_mtu(raw)
    if key in ("socks5", "http", "metrics"):
        return _check_listen(raw)
    assert key in ("local_forward", "remote_forward")
    return tuple(_check_forward(f) for f in _str_list(raw, "forwards"))


def _cross_check(inv: Inventory) -> Iterable[tuple[str, int | None, str | None]]:
    """What no single value shows: (problem, node index, field) in file order."""
    network = inv.network
    if network.ipv6 is not None and network.mtu is not None:
        problem = _ipv6_mtu_problem(network.mtu)
        if problem:
            yield problem, None, "mtu"
    seen: dict[str, int] = {}
    for i, node in enumerate(inv.nodes):
        if node.name in seen:
            yield f"defined twice (first as node #{seen[node.name] + 1})", i, "name"
        seen[node.name] = i
    key_owners: dict[PublicKey, str] = {}
    for i, node in enumerate(inv.nodes):
        # WireGuard knows a peer by its public key alone: two nodes, one peer.
        if node.public_key in key_owners:
            yield (
                f"{node.public_key.to_base64()} is also the public key of node"
                f" '{key_owners[node.public_key]}'",
                i,
                "public_key",
            )
        key_owners.setdefault(node.public_key, node.name)
    owners: dict[IPAddress, str] = {}
    for i, node in enumerate(inv.nodes):
        if network.ipv6 is not None and node.mtu is not None:
            problem = _ipv6_mtu_problem(node.mtu)
            if problem:
                yield problem, i, "mtu"
        for addr, prefix, key in (
            (node.ipv4, network.ipv4, "ipv4"),
            (node.ipv6, network.ipv6, "ipv6"),
        ):
            if addr is None:
                continue
            if prefix is None:
                # The parser says so first for a file; this is for `add`.
                yield f"the network has no {key} prefix", i, key
                continue
            if addr not in prefix:
                yield f"{addr} is outside the network {prefix}", i, key
            elif addr == prefix.network_address or (
                isinstance(prefix, IPv4Network) and addr == prefix.broadcast_address
            ):
                yield f"{addr} is the network's own {_reserved(addr, prefix)} address", i, key
            if addr in owners:
                yield f"{addr} is also the address of node '{owners[addr]}'", i, key
            owners[addr] = node.name
    for i, node in enumerate(inv.nodes):
        if node.kind == "rootless":
            if node.hub:
                yield "a rootless node cannot route between others (no TUN)", i, "hub"
            if node.routes:
                why = "a rootless node has no subnet to route (it owns only its address)"
                yield why, i, "routes"
            if not (node.socks5 or node.http or node.local_forward or node.remote_forward):
                yield (
                    "a rootless node needs socks5, http, local_forward or remote_forward"
                    " (what it runs)",
                    i,
                    "kind",
                )
        else:
            for key in ("socks5", "http", "metrics", "local_forward", "remote_forward"):
                if getattr(node, key):
                    why = f"only a rootless node runs a proxy or forwards (this is {node.kind})"
                    yield why, i, key
        if node.hub and node.endpoint is None:
            yield "a hub needs an endpoint (the others behind NAT reach it)", i, "hub"
    # Prefixes: each node's routes against the mesh and against each other.
    claimed: list[tuple[IPNetwork, str]] = [(p, "the network") for p in network.prefixes]
    for i, node in enumerate(inv.nodes):
        for route in node.routes:
            for other, whose in claimed:
                if route.version == other.version and route.overlaps(other):
                    yield f"{route} overlaps {other} of {whose}", i, "routes"
            claimed.append((route, f"node '{node.name}'"))
    for i, node in enumerate(inv.nodes):
        if node.endpoint is None:
            continue
        host, _ = _split_endpoint(node.endpoint)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        for prefix, whose in claimed:
            if ip in prefix:
                yield (
                    f"{ip} is inside {prefix} of {whose}, which is routed into the tunnel",
                    i,
                    "endpoint",
                )


def _ipv6_mtu_problem(mtu: int) -> str | None:
    """IPv6 needs a link MTU of at least 1280 (RFC 8200 section 5); Linux
    removes IPv6 from an interface with a smaller one."""
    if mtu >= 1280:
        return None
    return (
        f"{mtu} is below 1280, IPv6's minimum MTU (RFC 8200), and the network has IPv6"
        " (Linux drops IPv6 from the interface)"
    )


def _reserved(addr: IPAddress, prefix: IPNetwork) -> str:
    if isinstance(prefix, IPv4Network) and addr == prefix.broadcast_address:
        return "broadcast"
    return "network" if prefix.version == 4 else "subnet-router anycast"


def parse_inventory(text: str, filename: str = "<inventory>") -> Inventory:
    """Parse and check an inventory; raises :class:`InventoryError` naming
    *filename*, the line, the node and the field of the first problem."""
    return _Checker(text, filename).parse()


def validate(inventory: Inventory, filename: str = "<inventory>") -> None:
    """Check an :class:`Inventory` built in code (or changed by a command) as
    :func:`parse_inventory` checks a file; the error names no line."""
    for problem, index, key in _cross_check(inventory):
        node = inventory.nodes[index].name if index is not None else None
        raise InventoryError(problem, filename=filename, node=node, field=key)
    if not inventory.network.prefixes:
        raise InventoryError("the network needs an ipv4 or an ipv6 prefix", filename=filename)


# ------------------------------------------------------------------ the writer


def _toml_string(text: str) -> str:
    return _quoted(text, "\\u{:04x}")


def _quoted(text: str, control: str) -> str:
    """*text* in double quotes, '"' and '\\' escaped with a backslash and
    control characters as *control* formats their code (TOML's basic
    strings and systemd's command lines agree on the rest)."""
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(control.format(ord(ch)))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return _toml_string(str(value))


_HEADER_COMMENT = """\
# A WireGuard mesh: python -m wireguard mesh (schema: docs/hybrid-estate.md).
# Public material only: the private keys and the preshared key of every pair
# are in the .keys directory beside this file, mode 0600. Edit this file by
# hand or with `mesh add/remove/rekey`, then `mesh render`. Those commands keep
# your comments when they can; a full rewrite (said on stderr) does not.
"""


def _network_lines(network: Network) -> list[str]:
    lines = ["[network]"]
    if network.ipv4 is not None:
        lines.append(f"ipv4 = {_toml_string(str(network.ipv4))}")
    if network.ipv6 is not None:
        lines.append(f"ipv6 = {_toml_string(str(network.ipv6))}")
    lines.append(f"port = {network.port}")
    lines.append(f"keepalive = {network.keepalive}")
    lines.append(f"interface = {_toml_string(network.interface)}")
    if network.mtu is not None:
        lines.append(f"mtu = {network.mtu}")
    return lines


def _node_lines(node: Node) -> list[str]:
    lines = ["[[node]]"]
    for key in _NODE_FIELDS:
        value = getattr(node, key)
        if value is None or value == () or value is False:
            continue
        if key == "public_key":
            value = value.to_base64()
        elif key in ("ipv4", "ipv6"):
            value = str(value)
        elif key == "routes":
            value = [str(r) for r in value]
        lines.append(f"{key} = {_toml_value(value)}")
    return lines


def dump_inventory(inventory: Inventory) -> str:
    """The inventory as TOML, deterministically: a header comment, the
    network (its port, keepalive and interface always written), then the
    nodes in inventory order, one ``[[node]]`` table each, fields in a fixed
    order, a node's defaults left out.
    ``parse_inventory(dump_inventory(inv)) == inv``."""
    out = [_HEADER_COMMENT.rstrip("\n"), "", *_network_lines(inventory.network)]
    for node in inventory.nodes:
        out += ["", *_node_lines(node)]
    return "\n".join(out) + "\n"


# Edits that keep what the user wrote (comments, order, spacing): each returns
# the new text, or None when the text is not laid out so that the edit can be
# made safely; the caller then checks the result by parsing it and falls back
# to dump_inventory.


def edit_add(text: str, node: Node) -> str:
    """*text* with *node* appended as a ``[[node]]`` table."""
    body = text if text.endswith("\n") or not text else text + "\n"
    return body + "\n" + "\n".join(_node_lines(node)) + "\n"


def _node_spans(text: str) -> list[tuple[int, int, int]] | None:
    """For each ``[[node]]`` table: (first line of the comments just above
    it, header line, end line exclusive), as line indexes of text.split("\\n")."""
    lines = text.split("\n")
    headers = [i for i, line in enumerate(lines) if _Locator._HEADER.match(line)]
    spans = []
    for k, h in enumerate(headers):
        if not _Locator._NODE.match(lines[h]):
            continue
        start = h
        while start > 0 and lines[start - 1].lstrip().startswith("#"):
            start -= 1
        end = len(lines)
        if k + 1 < len(headers):
            end = headers[k + 1]
            while end - 1 > h and lines[end - 1].lstrip().startswith("#"):
                end -= 1
        spans.append((start, h, end))
    return spans


def _find_node(text: str, name: str) -> tuple[list[str], tuple[int, int, int]] | None:
    spans = _node_spans(text)
    if not spans:
        return None
    lines = text.split("\n")
    found = []
    for span in spans:
        _, h, end = span
        try:
            table = tomllib.loads("\n".join(lines[h:end]))
        except tomllib.TOMLDecodeError:
            return None
        nodes = table.get("node")
        if isinstance(nodes, list) and len(nodes) == 1 and nodes[0].get("name") == name:
            found.append(span)
    return (lines, found[0]) if len(found) == 1 else None


def edit_remove(text: str, name: str) -> str | None:
    """*text* without node *name*'s table and the comment lines just above it."""
    located = _find_node(text, name)
    if located is None:
        return None
    lines, (start, _, end) = located
    kept = lines[:start] + lines[end:]
    # Keep the blank line that separated the tables, not two.
    while start > 0 and start < len(kept) and kept[start - 1] == "" and kept[start] == "":
        del kept[start]
    return "\n".join(kept)


_PUBLIC_KEY_LINE = re.compile(r'^(\s*public_key\s*=\s*)"[A-Za-z0-9+/=]*"(.*)$')


def edit_public_key(text: str, name: str, key: PublicKey) -> str | None:
    """*text* with node *name*'s ``public_key`` line holding *key*."""
    located = _find_node(text, name)
    if located is None:
        return None
    lines, (_, h, end) = located
    matches = [i for i in range(h + 1, end) if _PUBLIC_KEY_LINE.match(lines[i])]
    if len(matches) != 1:
        return None
    i = matches[0]
    m = _PUBLIC_KEY_LINE.match(lines[i])
    assert m is not None
    lines[i] = f'{m.group(1)}"{key.to_base64()}"{m.group(2)}'
    return "\n".join(lines)


# ------------------------------------------------------------------ allocation


def allocate(inventory: Inventory) -> tuple[IPv4Address | None, IPv6Address | None]:
    """The addresses of the next node: in each family, the lowest host
    number not taken (1, 2, ...), so the result depends only on the
    inventory. A removed node's address is given to the next node added."""
    network = inventory.network
    result: list[IPAddress | None] = []
    for prefix, key in ((network.ipv4, "ipv4"), (network.ipv6, "ipv6")):
        if prefix is None:
            result.append(None)
            continue
        taken = {getattr(n, key) for n in inventory.nodes}
        last = prefix.num_addresses - (2 if prefix.version == 4 else 1)
        for n in range(1, last + 1):
            addr = prefix.network_address + n
            if addr not in taken:
                result.append(addr)
                break
        else:
            raise InventoryError(f"no free address left in {prefix}", field=key)
    v4, v6 = result
    assert v4 is None or isinstance(v4, IPv4Address)
    assert v6 is None or isinstance(v6, IPv6Address)
    return v4, v6


# -------------------------------------------------------------------- topology


@dataclass(frozen=True)
class Peer:
    """One node as another node's ``[Peer]``: who, what it carries, how."""

    node: Node
    allowed_ips: tuple[IPNetwork, ...]
    endpoint: Endpoint | None
    keepalive: int | None
    via_hub: bool = False  # this peer also carries the nodes reached through it


def _linked(a: Node, b: Node) -> bool:
    """Whether two nodes can reach each other directly: one has an endpoint."""
    return a.endpoint is not None or b.endpoint is not None


def _own_ips(node: Node) -> list[IPNetwork]:
    nets: list[IPNetwork] = [ipaddress.ip_network(a) for a in node.addresses]
    return nets + list(node.routes)


def hub_for(inventory: Inventory, node: Node) -> Node | None:
    """The hub through which *node* reaches the nodes it cannot reach
    directly: the first hub in the inventory, for a node behind NAT."""
    if node.endpoint is not None:
        return None
    return next((n for n in inventory.nodes if n.hub and n.name != node.name), None)


def peers_of(inventory: Inventory, name: str) -> list[Peer]:
    """Node *name*'s peers, in inventory order."""
    network = inventory.network
    me = inventory.node(name)
    hub = hub_for(inventory, me)
    peers = []
    for other in inventory.nodes:
        if other.name == name or not _linked(me, other):
            continue
        allowed = _own_ips(other)
        if hub is not None and other.name == hub.name:
            # The hub carries the whole mesh prefix (the direct peers' /32s
            # win by longest match), and the subnets of the unreachable nodes.
            allowed += list(network.prefixes)
            for far in inventory.nodes:
                if far.name not in (name, other.name) and not _linked(me, far):
                    allowed += list(far.routes)
        keepalive = None
        if me.endpoint is None and other.endpoint is not None and network.keepalive:
            keepalive = network.keepalive
        peers.append(
            Peer(
                other,
                tuple(allowed),
                other.wg_endpoint(network),
                keepalive,
                via_hub=hub is not None and other.name == hub.name,
            )
        )
    return peers


def topology_notes(inventory: Inventory) -> list[str]:
    """What the topology leaves out: pairs of nodes behind NAT with no hub
    between them, nodes with no peer at all."""
    notes = []
    hubs = [n for n in inventory.nodes if n.hub]
    behind = [n for n in inventory.nodes if n.endpoint is None]
    if not hubs:
        cut = [(a.name, b.name) for i, a in enumerate(behind) for b in behind[i + 1 :]]
        if cut:
            shown = ", ".join(f"{a}-{b}" for a, b in cut[:10]) + (" ..." if len(cut) > 10 else "")
            notes.append(
                f"no hub: these pairs are both behind NAT and not connected: {shown}"
                " (give a node with an endpoint hub = true)"
            )
    for node in inventory.nodes:
        if len(inventory.nodes) > 1 and not peers_of(inventory, node.name):
            notes.append(f"node '{node.name}' has no peer (no node it can reach has an endpoint)")
    return notes


# ------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class RenderedFile:
    """A file of a node's output directory: its name, text and mode."""

    name: str
    text: str
    mode: int


@dataclass(frozen=True)
class RenderedNode:
    """A node's files and the commands that use them (for the user)."""

    node: Node
    config: Config
    files: tuple[RenderedFile, ...]
    commands: tuple[tuple[str, str], ...]  # (what, shell command run in the node's directory)


def _forwarding_hooks(network: Network) -> tuple[list[str], list[str]]:
    """A hub's PostUp/PreDown. IPv4 forwarding is switched on for packets
    arriving on this interface only (the interface's own sysctl, gone with
    it). Linux has no per-interface switch for IPv6 forwarding: the global
    one is set, and its previous value put back at PreDown. The keys are
    written with '/' separators (sysctl(8) takes them), since an interface
    name may hold a '.', which the dotted form reads as a separator."""
    post_up: list[str] = []
    pre_down: list[str] = []
    if network.ipv4 is not None:
        post_up.append("sysctl -q -w net/ipv4/conf/%i/forwarding=1")
    if network.ipv6 is not None:
        saved = "/run/wireguard/%i.ipv6-forwarding"
        post_up.append(
            f"mkdir -p /run/wireguard && sysctl -n net/ipv6/conf/all/forwarding > {saved}"
            " && sysctl -q -w net/ipv6/conf/all/forwarding=1"
        )
        pre_down.append(
            f"[ ! -f {saved} ] || {{ sysctl -q -w net/ipv6/conf/all/forwarding=$(cat {saved})"
            f" && rm -f {saved}; }}"
        )
    return post_up, pre_down


_CONFIG_ARG: Final = 4  # where proxy_command's argv names the config file


def proxy_command(
    inventory: Inventory, name: str, config_path: str, python: str = DEFAULT_PYTHON
) -> list[str]:
    """The argv a rootless node runs: ``python -m wireguard proxy FILE
    --socks5 ... --http ... [--metrics ...] [-L ...] [-R ...]``, or
    ``python -m wireguard forward FILE -L ... -R ...`` when it serves no
    proxy."""
    node = inventory.node(name)
    if node.runs is None:
        raise InventoryError(f"node '{name}' is a {node.kind} node: it runs wg-quick")
    argv = [python, "-m", "wireguard", node.runs, config_path]  # FILE is _CONFIG_ARG
    for flag, value in (("--socks5", node.socks5), ("--http", node.http)):
        if value:
            argv += [flag, value]
    if node.metrics:
        argv += ["--metrics", node.metrics]
    for spec in node.local_forward:
        argv += ["-L", spec]
    for spec in node.remote_forward:
        argv += ["-R", spec]
    return argv


def _peer_comment(peer: Peer) -> str:
    node = peer.node
    what = [node.kind]
    if node.hub:
        what.append("hub")
    if node.endpoint is None:
        what.append("behind NAT")
    text = f"# {node.name} ({', '.join(what)})"
    if peer.via_hub:
        text += ": also the way to the nodes behind NAT"
    return text


def _unit(inventory: Inventory, node: Node, conf_name: str, unit_name: str, python: str) -> str:
    interface = inventory.network.interface
    argv = proxy_command(inventory, node.name, conf_name, python)
    words = [_systemd_word(arg) for arg in argv]
    # The config is read from the credentials directory: %d, a specifier.
    words[_CONFIG_ARG] = f"%d/{_systemd_word(conf_name)}"
    command = " ".join(words)
    if any("$" in arg for arg in argv):
        # systemd takes the executable's path as written but expands $VAR in
        # the arguments, argv[0] included; ':' turns that off (systemd.service(5)).
        command = ":" + command
    return f"""\
# Node {node.name} of the WireGuard mesh, rootless: `{node.runs}` as a dynamic
# unprivileged user with no capabilities, the config passed as a credential.
# Install (as root):
#   install -m 0600 {conf_name} /etc/wireguard/{conf_name}
#   install -m 0644 {unit_name} /etc/systemd/system/ && systemctl enable --now {unit_name}
[Unit]
Description=WireGuard mesh {interface}, node {node.name} (rootless {node.runs})
Wants=network-online.target
After=network-online.target

[Service]
Type=exec
ExecStart={command}
LoadCredential={conf_name}:/etc/wireguard/{conf_name}
DynamicUser=yes
CapabilityBoundingSet=
AmbientCapabilities=
NoNewPrivileges=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectSystem=strict
ProtectHome=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
"""


_SYSTEMD_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
# What systemd refuses in an executable's path (its string_is_safe: quotes,
# backslashes, control characters), however it is quoted.
_SYSTEMD_UNSAFE = re.compile(r"[\"'\\\x00-\x1f\x7f]")
# What systemd takes as a prefix of ExecStart's executable, not as its name.
_SYSTEMD_PREFIXES = frozenset("-@:+!")


def _systemd_word(text: str) -> str:
    """*text* as one word of a unit's command line, as systemd.service(5)
    "Command lines" reads it: '%' doubled (a specifier otherwise), and, when
    it holds anything but plain characters, in double quotes with C-style
    escapes. A '$' is left alone (see :func:`_unit`)."""
    text = text.replace("%", "%%")
    if _SYSTEMD_PLAIN.fullmatch(text):
        return text
    return _quoted(text, "\\x{:02x}")


def _dropin(inventory: Inventory, node: Node) -> str:
    interface = inventory.network.interface
    return f"""\
# Node {node.name} of the WireGuard mesh, userspace: wg-quick@{interface} runs
# wireguard-sansio in place of the kernel's WireGuard. wg-quick uses it only
# where `ip link add type wireguard` fails (no kernel module loaded).
# Install (as root):
#   install -m 0600 {interface}.conf /etc/wireguard/{interface}.conf
#   mkdir -p /etc/systemd/system/wg-quick@{interface}.service.d
#   install -m 0644 wireguard-sansio.conf /etc/systemd/system/wg-quick@{interface}.service.d/
#   systemctl daemon-reload && systemctl enable --now wg-quick@{interface}
[Service]
Environment=WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-sansio
"""


def render(
    inventory: Inventory,
    name: str,
    private_key: PrivateKey,
    preshared_keys: Mapping[str, PresharedKey],
    *,
    source: str = "the inventory",
    systemd: bool = False,
    python: str | None = None,
) -> RenderedNode:
    """Node *name*'s files: its wg-quick file (``INTERFACE.conf``, mode
    0600) and, for a rootless node, ``run.sh`` with the command line it
    runs; with *systemd*, a unit for a rootless node and a wg-quick@ drop-in
    for a userspace one. *preshared_keys* maps the other node's name to the
    pair's key; *source* names the inventory in the files' header comment.

    The result depends only on its arguments: re-rendering an unchanged
    inventory gives the same bytes.
    """
    network = inventory.network
    node = inventory.node(name)
    if private_key.public_key != node.public_key:
        raise InventoryError(
            "the private key does not match the inventory's public_key",
            node=name,
            field="public_key",
        )
    post_up, pre_down = _forwarding_hooks(network) if node.hub else ([], [])
    peers = peers_of(inventory, name)
    servers = tuple(ipaddress.ip_address(d) for d in node.dns if _is_ip(d))
    interface = InterfaceConfig(
        private_key=private_key,
        listen_port=node.listen_port(network),
        addresses=tuple(
            ipaddress.ip_interface(f"{addr}/{prefix.prefixlen}")
            for addr, prefix in ((node.ipv4, network.ipv4), (node.ipv6, network.ipv6))
            if addr is not None and prefix is not None
        ),
        dns=servers,
        dns_search=tuple(d for d in node.dns if not _is_ip(d)),
        mtu=node.mtu if node.mtu is not None else network.mtu,
        post_up=tuple(post_up),
        pre_down=tuple(pre_down),
    )
    peer_configs = []
    for peer in peers:
        psk = preshared_keys.get(peer.node.name)
        if psk is None:
            raise InventoryError(
                f"no preshared key with '{peer.node.name}'", node=name, field="preshared key"
            )
        peer_configs.append(
            PeerConfig(
                public_key=peer.node.public_key,
                preshared_key=psk,
                allowed_ips=peer.allowed_ips,
                endpoint=peer.endpoint,
                persistent_keepalive=peer.keepalive,
            )
        )
    config = Config(interface, tuple(peer_configs))
    conf_name = f"{network.interface}.conf"
    iface = network.interface
    head = [
        f"# Node {name} ({node.kind}{', hub' if node.hub else ''}) of the WireGuard mesh"
        f" in {source}.",
        "# Written by `python -m wireguard mesh render`: edit the inventory, not this file.",
    ]
    commands: list[tuple[str, str]] = []
    files = []
    if node.kind == "rootless":
        argv = proxy_command(inventory, name, conf_name, python or DEFAULT_PYTHON)
        line = shlex.join(argv)
        head.append(f"# Run as an unprivileged user, from this directory: {line}")
        commands.append(("run", line))
        files.append(
            RenderedFile(
                "run.sh",
                "#!/bin/sh\n"
                f"# Node {name} of the WireGuard mesh, rootless: no root, no TUN.\n"
                'cd "$(dirname "$0")" || exit 1\n'
                f"exec {line}\n",
                0o755,
            )
        )
        if systemd:
            unit_python = python or DEFAULT_UNIT_PYTHON
            if _SYSTEMD_UNSAFE.search(unit_python):
                raise InventoryError(
                    f"{_shown(unit_python)}: systemd refuses an executable path with a quote,"
                    " a backslash or a control character (the unit could not start)"
                )
            if unit_python[:1] in _SYSTEMD_PREFIXES:
                raise InventoryError(
                    f"{_shown(unit_python)}: systemd reads a leading '{unit_python[0]}' as an"
                    " ExecStart prefix (systemd.service(5)), quoted or not: give its absolute path"
                )
            unit_name = f"{iface}-{node.runs}.service"
            files.append(
                RenderedFile(
                    unit_name,
                    _unit(inventory, node, conf_name, unit_name, unit_python),
                    0o644,
                )
            )
    else:
        up = f"wg-quick up {iface}"
        if node.kind == "userspace":
            up = f"WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-sansio {up}"
        head.append(f"# Copy to /etc/wireguard/{conf_name}; up: {up}")
        head.append(f"# Apply a new render: wg syncconf {iface} <(wg-quick strip {iface})")
        commands += [
            ("install", f"install -m 0600 {conf_name} /etc/wireguard/{conf_name}"),
            ("up", up),
            ("apply", f"wg syncconf {iface} <(wg-quick strip {iface})"),
        ]
        if systemd and node.kind == "userspace":
            files.append(RenderedFile("wireguard-sansio.conf", _dropin(inventory, node), 0o644))
    text = "\n".join(head) + "\n" + _with_peer_comments(dump_wg_quick(config), peers)
    files.insert(0, RenderedFile(conf_name, text, 0o600))
    return RenderedNode(node, config, tuple(files), tuple(commands))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _with_peer_comments(text: str, peers: list[Peer]) -> str:
    """A comment naming each peer above its ``[Peer]`` line (dump_wg_quick
    writes the peers in order, each block starting with that line)."""
    blocks = text.split("\n[Peer]\n")
    assert len(blocks) == len(peers) + 1
    out = [blocks[0]]
    for peer, block in zip(peers, blocks[1:], strict=True):
        out.append(f"{_peer_comment(peer)}\n[Peer]\n{block}")
    return "\n".join(out)


def with_node(inventory: Inventory, node: Node) -> Inventory:
    """*inventory* with *node* appended (or put in place of the node of the
    same name, keeping its position)."""
    if node.name in inventory:
        nodes = tuple(node if n.name == node.name else n for n in inventory.nodes)
    else:
        nodes = (*inventory.nodes, node)
    return replace(inventory, nodes=nodes)


def without_node(inventory: Inventory, name: str) -> Inventory:
    inventory.node(name)
    return replace(inventory, nodes=tuple(n for n in inventory.nodes if n.name != name))
