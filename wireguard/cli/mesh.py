"""``python -m wireguard mesh``: a mesh of kernel, userspace and rootless
nodes, described once in an inventory, rendered per node.

The logic is :mod:`wireguard.mesh` (sans-I/O); this module reads and writes
the files: the inventory (``mesh.toml`` by default), the key directory beside
it (``mesh.keys/``: ``NODE.key`` and ``A+B.psk``, mode 0600, in a 0700
directory) and the rendered output (``mesh.out/NODE/``).

Every command checks the whole inventory and the key files it relies on
before it writes anything: a problem is one line naming the file, the node
and the field, and nothing changes.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import secrets
import stat
import sys
import warnings
from dataclasses import replace
from typing import Any

from .. import mesh
from ..config import AccessWarning, ConfigError, read_key_file
from ..keys import PresharedKey, PrivateKey
from ..mesh import Inventory, InventoryError, Node
from . import CommandError

__all__ = ["add_parser", "run"]

DEFAULT_INVENTORY = "mesh.toml"
_SECRET_MODE = 0o600
_PRIVATE_DIR = 0o700


def _note(text: str) -> None:
    print(f"mesh: {text}", file=sys.stderr)


# ------------------------------------------------------------------ the files


def key_dir(inventory_path: str) -> str:
    """``mesh.toml`` -> ``mesh.keys``, beside it."""
    return os.path.splitext(inventory_path)[0] + ".keys"


def out_dir(inventory_path: str) -> str:
    return os.path.splitext(inventory_path)[0] + ".out"


class _Files:
    """The inventory, its text and its key directory."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.keys = key_dir(path)
        try:
            with open(path, encoding="utf-8") as f:
                self.text = f.read()
        except FileNotFoundError:
            raise CommandError(
                f"{path}: No such file (make one with `python -m wireguard mesh init`)"
            ) from None
        except UnicodeDecodeError:
            raise CommandError(f"{path}: is not UTF-8 text") from None
        except OSError as exc:
            raise CommandError(f"{path}: {exc.strerror or exc}") from None
        self.inventory = mesh.parse_inventory(self.text, path)

    def error(self, message: str, node: str, field: str) -> InventoryError:
        lineno = mesh.locate(self.text, self.inventory, node, None)
        return InventoryError(message, filename=self.path, lineno=lineno, node=node, field=field)

    def key_path(self, file_name: str) -> str:
        return os.path.join(self.keys, file_name)

    def read_keys(
        self, inventory: Inventory | None = None, skip: frozenset[str] = frozenset()
    ) -> tuple[dict[str, PrivateKey], dict[tuple[str, str], PresharedKey]]:
        """Every node's private key and every pair's preshared key, checked:
        present, a regular file, no access for group or others, a key, and
        the private key the inventory's public_key. Nodes in *skip* (being
        rekeyed or removed) are not read, nor their pairs."""
        inventory = inventory or self.inventory
        private: dict[str, PrivateKey] = {}
        shared: dict[tuple[str, str], PresharedKey] = {}
        for node in inventory.nodes:
            if node.name in skip:
                continue
            path = self.key_path(mesh.private_key_file(node.name))
            key = self._read(path, PrivateKey, node.name, "private key")
            if key.public_key != node.public_key:
                raise self.error(
                    f"{path} does not belong to public_key (was `mesh rekey {node.name}`"
                    " interrupted? run it again)",
                    node.name,
                    "private key",
                )
            private[node.name] = key
        for a, b in mesh.pairs(inventory):
            if a in skip or b in skip:
                continue
            path = self.key_path(mesh.preshared_key_file(a, b))
            shared[(a, b)] = self._read(path, PresharedKey, a, f"preshared key with '{b}'")
        return private, shared

    def _read(self, path: str, kind: Any, node: str, field: str) -> Any:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise self.error(
                f"{path}: No such file (`python -m wireguard mesh rekey {node}` makes new keys)",
                node,
                field,
            ) from None
        except OSError as exc:
            raise self.error(f"{path}: {exc.strerror or exc}", node, field) from None
        if not stat.S_ISREG(st.st_mode):
            raise self.error(f"{path} is not a regular file", node, field)
        if st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            raise self.error(
                f"{path} has mode {mode:04o}: others can read it (expected 0600: chmod 600 {path})",
                node,
                field,
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AccessWarning)  # checked above
                return read_key_file(path, kind)
        except ConfigError as exc:
            raise self.error(f"{path} {exc.message}", node, field) from None
        except OSError as exc:
            raise self.error(f"{path}: {exc.strerror or exc}", node, field) from None

    def write_keys(self, keys: dict[str, PrivateKey | PresharedKey]) -> None:
        """Write key files (name -> key) atomically, mode 0600."""
        _private_dir(self.keys)
        for name, key in keys.items():
            _write_atomic(self.key_path(name), key.to_base64() + "\n", _SECRET_MODE)

    def write_inventory(self, new: Inventory, edited: str | None) -> None:
        """Write *new*: the edited text when it parses back to exactly *new*
        (the user's comments and layout kept), else a full rewrite."""
        text = edited
        if text is not None:
            try:
                if mesh.parse_inventory(text, self.path) != new:
                    text = None
            except InventoryError:
                text = None
        if text is None:
            text = mesh.dump_inventory(new)
            if _has_own_comments(self.text):
                _note(f"{self.path}: rewritten in full; the comments in it were not kept")
        mode = stat.S_IMODE(os.stat(self.path).st_mode)
        _write_atomic(self.path, text, mode)
        self.text, self.inventory = text, new


def _has_own_comments(text: str) -> bool:
    """Whether *text* has comments beyond the header the writer puts there
    (the values the writer accepts never hold a '#')."""
    header = set(mesh.dump_inventory(Inventory()).split("\n"))
    return any("#" in line for line in text.split("\n") if line not in header)


def _private_dir(path: str) -> None:
    if os.path.isdir(path):
        return
    if os.path.lexists(path):
        raise CommandError(f"{path}: exists and is not a directory")
    os.makedirs(path, mode=_PRIVATE_DIR)
    os.chmod(path, _PRIVATE_DIR)


def _write_atomic(path: str, text: str, mode: int) -> None:
    """Write *path* by a rename, so a reader sees the old file or the new,
    created with *mode* from the start (a key is never readable by others,
    even for a moment)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode & 0o700)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _unchanged(path: str, text: str, mode: int) -> bool:
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as f:
            return f.read() == text and stat.S_IMODE(st.st_mode) == mode
    except (OSError, UnicodeDecodeError):
        return False


def _node_psks(name: str, shared: dict[tuple[str, str], PresharedKey]) -> dict[str, PresharedKey]:
    out = {}
    for (a, b), key in shared.items():
        if name == a:
            out[b] = key
        elif name == b:
            out[a] = key
    return out


def _apply_hint(inventory: Inventory) -> None:
    iface = inventory.network.interface
    _note(
        "now `python -m wireguard mesh render`, copy each node's files and, on the running"
        f" nodes: wg syncconf {iface} <(wg-quick strip {iface})"
    )


# --------------------------------------------------------------------- actions


def _option_value(table: str, key: str, raw: object, option: str) -> Any:
    check = mesh.network_value if table == "network" else mesh.node_value
    try:
        return check(key, raw)
    except InventoryError as exc:
        raise CommandError(f"{option}: {exc.message}") from None


def cmd_init(args: argparse.Namespace) -> int:
    path = args.inventory
    if os.path.lexists(path):
        raise CommandError(f"{path} exists: `init` makes a new inventory (edit this one instead)")
    ipv4, ipv6 = args.ipv4, args.ipv6
    v4_none = ipv4 is not None and ipv4.lower() == "none"
    v6_none = ipv6 is not None and ipv6.lower() == "none"
    # Neither family given: both defaults. One family given as `none`: the
    # other's default. One given as a prefix: that family alone.
    if ipv4 is None and (ipv6 is None or v6_none):
        ipv4 = "10.77.0.0/24"
    if ipv6 is None and (args.ipv4 is None or v4_none):
        # RFC 4193: a ULA /48 from a random 40-bit global ID, its first /64.
        global_id = secrets.randbits(40)
        ipv6 = str(ipaddress.IPv6Network(((0xFD << 120) | (global_id << 80), 64)))
    values: dict[str, Any] = {}
    for key, raw in (("ipv4", ipv4), ("ipv6", ipv6)):
        if raw is not None and raw.lower() != "none":
            values[key] = _option_value("network", key, raw, f"--{key}")
    if not values:
        raise CommandError("a mesh needs an IPv4 or an IPv6 prefix (--ipv4, --ipv6)")
    for key in ("port", "keepalive", "interface", "mtu"):
        raw = getattr(args, key)
        if raw is not None:
            values[key] = _option_value("network", key, raw, f"--{key}")
    network = mesh.Network(**values)
    for prefix, most in ((network.ipv4, 30), (network.ipv6, 126)):
        if prefix is not None and prefix.prefixlen > most:
            raise CommandError(f"--ipv{prefix.version}: {prefix} is too small (at most /{most})")
    inventory = Inventory(network)
    try:
        mesh.validate(inventory, path)
    except InventoryError as exc:
        raise CommandError(f"--{exc.field}: {exc.message}" if exc.field else exc.message) from None
    text = mesh.dump_inventory(inventory)
    assert mesh.parse_inventory(text, path) == inventory
    _write_atomic(path, text, 0o644)
    prefixes = ", ".join(str(p) for p in network.prefixes)
    print(f"{path}: a new mesh {network.interface} on {prefixes}, port {network.port}")
    print(f"keys will be kept in {key_dir(path)}/; add nodes with `mesh add NAME --kind KIND`")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    files = _Files(args.inventory)
    inventory = files.inventory
    name = _option_value("node", "name", args.name, "NAME")
    if name in inventory:
        raise CommandError(f"{files.path}: node '{name}' exists (remove it first, or edit it)")
    values: dict[str, Any] = {"name": name, "kind": args.kind}
    options = (
        ("port", args.port, "--port"),
        ("endpoint", args.endpoint, "--endpoint"),
        ("ipv4", args.ipv4, "--ipv4"),
        ("ipv6", args.ipv6, "--ipv6"),
        ("routes", args.route or None, "--route"),
        ("dns", args.dns or None, "--dns"),
        ("mtu", args.mtu, "--mtu"),
        ("socks5", args.socks5, "--socks5"),
        ("http", args.http, "--http"),
        ("metrics", args.metrics, "--metrics"),
        ("local_forward", args.local_forward or None, "-L"),
        ("remote_forward", args.remote_forward or None, "-R"),
    )
    for key, raw, option in options:
        if raw is not None:
            values[key] = _option_value("node", key, raw, option)
    if args.hub:
        values["hub"] = True
    network = inventory.network
    if "endpoint" in values:
        values["endpoint"] = mesh.endpoint_with_port(
            values["endpoint"], values.get("port") or network.port
        )
    serves = ("socks5", "http", "local_forward", "remote_forward")
    if args.kind == "rootless" and not any(k in values for k in serves):
        values["socks5"], values["http"] = mesh.DEFAULT_SOCKS5, mesh.DEFAULT_HTTP
    v4, v6 = mesh.allocate(inventory)
    for key, default in (("ipv4", v4), ("ipv6", v6)):
        if key not in values and default is not None:
            values[key] = default
    private_key = PrivateKey.generate()
    node = Node(public_key=private_key.public_key, **values)
    new = mesh.with_node(inventory, node)
    mesh.validate(new, files.path)
    files.read_keys()  # the others' keys are all there before anything is written
    keys: dict[str, PrivateKey | PresharedKey] = {mesh.private_key_file(name): private_key}
    for other in inventory.nodes:
        keys[mesh.preshared_key_file(name, other.name)] = PresharedKey.generate()
    files.write_keys(keys)
    files.write_inventory(new, mesh.edit_add(files.text, node))
    addresses = ", ".join(str(a) for a in node.addresses)
    print(f"{files.path}: added {name} ({node.kind}) at {addresses}")
    _apply_hint(new)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    files = _Files(args.inventory)
    name = args.name
    if name not in files.inventory:
        raise CommandError(f"{files.path}: no node '{name}'")
    new = mesh.without_node(files.inventory, name)
    mesh.validate(new, files.path)
    files.read_keys(skip=frozenset({name}))
    files.write_inventory(new, mesh.edit_remove(files.text, name))
    stale = [mesh.private_key_file(name)]
    stale += [mesh.preshared_key_file(name, n.name) for n in new.nodes]
    for file_name in stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(files.key_path(file_name))
    print(f"{files.path}: removed {name} and its keys")
    _apply_hint(new)
    return 0


def cmd_rekey(args: argparse.Namespace) -> int:
    files = _Files(args.inventory)
    name = args.name
    if name not in files.inventory:
        raise CommandError(f"{files.path}: no node '{name}'")
    files.read_keys(skip=frozenset({name}))
    old = files.inventory.node(name)
    private_key = PrivateKey.generate()
    node = replace(old, public_key=private_key.public_key)
    new = mesh.with_node(files.inventory, node)
    keys: dict[str, PrivateKey | PresharedKey] = {mesh.private_key_file(name): private_key}
    for other in new.nodes:
        if other.name != name:
            keys[mesh.preshared_key_file(name, other.name)] = PresharedKey.generate()
    files.write_keys(keys)
    files.write_inventory(new, mesh.edit_public_key(files.text, name, node.public_key))
    print(f"{files.path}: {name} has a new key pair and new preshared keys with every node")
    print(f"public key {node.public_key.to_base64()}")
    _apply_hint(new)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    files = _Files(args.inventory)
    inventory = files.inventory
    network = inventory.network
    prefixes = ", ".join(str(p) for p in network.prefixes)
    print(
        f"mesh {network.interface}: {prefixes}, port {network.port}, keepalive {network.keepalive}"
    )
    rows = [("NODE", "KIND", "ADDRESSES", "ENDPOINT", "ROUTES", "PUBLIC KEY")]
    for node in inventory.nodes:
        kind = node.kind + (" hub" if node.hub else "")
        rows.append(
            (
                node.name,
                kind,
                ",".join(str(a) for a in node.addresses),
                node.endpoint or "(behind NAT)",
                ",".join(str(r) for r in node.routes) or "-",
                node.public_key.to_base64(),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        )
    for note in mesh.topology_notes(inventory):
        print(f"note: {note}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    files = _Files(args.inventory)
    inventory = files.inventory
    names = args.nodes or [n.name for n in inventory.nodes]
    for name in names:
        if name not in inventory:
            raise CommandError(f"{files.path}: no node '{name}'")
    private, shared = files.read_keys()
    out = args.out or out_dir(files.path)
    source = os.path.basename(files.path)
    rendered = [
        mesh.render(
            inventory,
            name,
            private[name],
            _node_psks(name, shared),
            source=source,
            systemd=args.systemd,
            python=args.python,
        )
        for name in names
    ]
    # Everything is rendered (and so checked) before the first file is written.
    for path in [out] + [os.path.join(out, r.node.name) for r in rendered]:
        if os.path.lexists(path) and not os.path.isdir(path):
            raise CommandError(f"{path}: exists and is not a directory")
    _private_dir(out)
    for result in rendered:
        directory = os.path.join(out, result.node.name)
        _private_dir(directory)
        status = []
        for f in result.files:
            path = os.path.join(directory, f.name)
            if _unchanged(path, f.text, f.mode):
                status.append(f"{f.name} unchanged")
            else:
                _write_atomic(path, f.text, f.mode)
                status.append(f"{f.name} written")
        print(f"{result.node.name} ({result.node.kind}) in {directory}: {', '.join(status)}")
        for what, command in result.commands:
            print(f"  {what + ':':9}{command}")
    if not args.nodes and os.path.isdir(out):
        for entry in sorted(os.listdir(out)):
            if entry not in inventory and os.path.isdir(os.path.join(out, entry)):
                _note(f"{os.path.join(out, entry)}: not a node of the inventory (left alone)")
    for note in mesh.topology_notes(inventory):
        _note(note)
    return 0


# ---------------------------------------------------------------------- parser

_DESCRIPTION = """\
Describe a WireGuard mesh once, in a TOML inventory (public material only),
and render each node's files: a wg-quick file for kernel and userspace nodes,
a wg-quick file and the `proxy`/`forward` command line for rootless ones.
Private keys and a preshared key per pair are kept beside the inventory
(mode 0600). Full mesh by default; nodes behind NAT (no endpoint) initiate,
with PersistentKeepalive, and reach each other through a hub."""

_EPILOG = """\
examples:
  mesh init --ipv4 10.77.0.0/24 --ipv6 fd77:77::/64
  mesh add db --kind kernel --endpoint db.example.net --route 192.168.10.0/24
  mesh add gw --kind userspace --endpoint 198.51.100.7 --hub
  mesh add web --kind rootless --dns 10.77.0.1
  mesh render --systemd && mesh list
Apply a re-render to a running node: wg syncconf wg-mesh <(wg-quick strip wg-mesh).
The schema and a worked example: docs/hybrid-estate.md."""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``mesh`` on the ``python -m wireguard`` sub-commands."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "mesh",
        help="describe a mesh of kernel, userspace and rootless nodes; render their configs",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inventory_help = f"the inventory (default {DEFAULT_INVENTORY}; keys in NAME.keys/ beside it)"
    parser.add_argument(
        "-f", "--inventory", default=DEFAULT_INVENTORY, metavar="FILE", help=inventory_help
    )
    # The same option after the action (`mesh add -f x.toml ...`), not
    # overriding the one before it when left out.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-f", "--inventory", default=argparse.SUPPRESS, metavar="FILE", help=inventory_help
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    init = actions.add_parser("init", parents=[common], help="make a new inventory")
    init.add_argument(
        "--ipv4",
        metavar="PREFIX|none",
        help="the mesh's IPv4 prefix (default 10.77.0.0/24 when neither family is given)",
    )
    init.add_argument(
        "--ipv6",
        metavar="PREFIX|none",
        help="the mesh's IPv6 prefix (default a random RFC 4193 /64 when neither is given)",
    )
    init.add_argument(
        "--port",
        type=int,
        help=f"default ListenPort of nodes with an endpoint ({mesh.DEFAULT_PORT})",
    )
    init.add_argument(
        "--keepalive",
        type=int,
        metavar="SECONDS",
        help=f"PersistentKeepalive of nodes behind NAT (default {mesh.DEFAULT_KEEPALIVE}; 0: off)",
    )
    init.add_argument(
        "--interface", help=f"interface name, the wg-quick file's stem ({mesh.DEFAULT_INTERFACE})"
    )
    init.add_argument("--mtu", type=int, help="MTU of every node (default: wg-quick's choice)")
    init.set_defaults(mesh_func=cmd_init)

    add = actions.add_parser("add", parents=[common], help="add a node, with new keys")
    add.add_argument("name", metavar="NODE")
    add.add_argument("--kind", required=True, choices=mesh.KINDS, help="how the node runs")
    add.add_argument(
        "--endpoint",
        metavar="HOST[:PORT]",
        help="where the others reach it (left out: behind NAT, it initiates)",
    )
    add.add_argument("--port", type=int, help="its ListenPort (default the network's)")
    add.add_argument(
        "--route",
        action="append",
        metavar="PREFIX",
        help="a subnet it routes: added to its AllowedIPs on the others (repeatable)",
    )
    add.add_argument(
        "--hub", action="store_true", help="route between the nodes behind NAT (needs --endpoint)"
    )
    add.add_argument(
        "--dns",
        action="append",
        metavar="SERVER|DOMAIN",
        help="its DNS = line (a rootless proxy resolves names through the tunnel with it)",
    )
    add.add_argument("--mtu", type=int, help="its MTU, in place of the network's")
    add.add_argument("--ipv4", metavar="ADDRESS", help="its address (default the lowest free)")
    add.add_argument("--ipv6", metavar="ADDRESS", help="its address (default the lowest free)")
    add.add_argument(
        "--socks5",
        metavar="[HOST:]PORT",
        help=f"rootless: the SOCKS5 proxy (default {mesh.DEFAULT_SOCKS5}, with --http)",
    )
    add.add_argument(
        "--http",
        metavar="[HOST:]PORT",
        help=f"rootless: the HTTP proxy (default {mesh.DEFAULT_HTTP}, with --socks5)",
    )
    add.add_argument("--metrics", metavar="[HOST:]PORT", help="rootless: /metrics and /healthz")
    add.add_argument(
        "-L",
        dest="local_forward",
        action="append",
        metavar="SPEC",
        help="rootless: a local forward, as `forward -L` (repeatable)",
    )
    add.add_argument(
        "-R",
        dest="remote_forward",
        action="append",
        metavar="SPEC",
        help="rootless: a remote forward, as `forward -R` (repeatable)",
    )
    add.set_defaults(mesh_func=cmd_add)

    remove = actions.add_parser("remove", parents=[common], help="remove a node and its keys")
    remove.add_argument("name", metavar="NODE")
    remove.set_defaults(mesh_func=cmd_remove)

    rekey = actions.add_parser(
        "rekey", parents=[common], help="new key pair for a node, new preshared keys for its pairs"
    )
    rekey.add_argument("name", metavar="NODE")
    rekey.set_defaults(mesh_func=cmd_rekey)

    listing = actions.add_parser("list", parents=[common], help="the nodes and the topology")
    listing.set_defaults(mesh_func=cmd_list)

    render = actions.add_parser("render", parents=[common], help="write each node's files")
    render.add_argument("nodes", nargs="*", metavar="NODE", help="only these (default all)")
    render.add_argument("-o", "--out", metavar="DIR", help="output directory (default NAME.out)")
    render.add_argument(
        "--systemd",
        action="store_true",
        help="also a unit for rootless nodes, a wg-quick@ drop-in for userspace ones",
    )
    render.add_argument(
        "--python",
        metavar="EXE",
        help=f"the interpreter in the commands (default {mesh.DEFAULT_PYTHON}; in a unit"
        f" {mesh.DEFAULT_UNIT_PYTHON})",
    )
    render.set_defaults(mesh_func=cmd_render)

    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        return int(args.mesh_func(args))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise CommandError(f"{where}{exc.strerror or exc}") from None
