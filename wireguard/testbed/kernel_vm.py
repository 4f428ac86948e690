"""A Linux kernel WireGuard peer, for a host whose own kernel has none.

Debian's ``linux-image-amd64`` ships ``wireguard.ko``. :class:`KernelVM` boots
that kernel in qemu with a small initramfs built here (static busybox, the
stock ``wg`` and the libraries it links, the modules wireguard and virtio-net
need), inside a network namespace of its own:

    namespace (lo only)                          qemu guest
    127.0.0.1:host_port  --hostfwd-->            10.0.2.15:51820  (wg0's socket)
    127.0.0.1:ANY        <--  slirp  --          10.0.2.2:ANY     (the namespace)
                                                 wg0 = 10.99.0.2/24

qemu's user-mode network (slirp) needs no TAP device and reaches only the
namespace's loopback, so nothing leaves the namespace. Software emulation
(TCG), not KVM: on nested hosts Debian's kernel faults under KVM, and TCG boots
in about 7 s.

Commands reach the guest on its second serial port (ttyS1), a Unix socket on
the host. The guest's init reads ``ID BASE64(script)`` lines there, runs each
script with a time limit, prints the script and its output on the guest
console (ttyS0, the log in :attr:`KernelVM.console`) and answers on ttyS1 with
``BEGIN ID`` / base64 output / ``END ID STATUS``. Output on the channel is
base64 so kernel messages and binary output cannot break the framing.

Used by this project's interop tests and by its pytest plugin
(:mod:`wireguard.pytest_plugin`); nothing here imports pytest.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import io
import lzma
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .netns import kill_namespace_processes

GUEST_WG_PORT = 51820
GUEST_TUN = "10.99.0.2"
HOST_TUN = "10.99.0.1"
GUEST_TUN6 = "fd99::2"
HOST_TUN6 = "fd99::1"
SLIRP_HOST = "10.0.2.2"  # the namespace's 127.0.0.1 as the guest sees it
GUEST_ETH = "10.0.2.15"

# Modules loaded in the guest, each after what modules.dep says it needs.
GUEST_MODULES = ("virtio_pci", "virtio_net", "wireguard")

DEBIAN_PACKAGES = ("qemu-system-x86", "busybox-static", "linux-image-amd64", "wireguard-tools")


class _NoAnswer(Exception):
    """No answer to one command within its time."""


class GuestError(RuntimeError):
    """The guest did not boot, or a command on it did not answer."""


@dataclass(frozen=True)
class Kernel:
    vmlinuz: Path
    release: str

    @property
    def modules(self) -> Path:
        return Path("/usr/lib/modules") / self.release


def _module_file(directory: Path, name: str) -> str | None:
    """The modules.dep path of module *name* (compressed or not)."""
    pattern = re.compile(rf"(^|/){re.escape(name)}\.ko(\.xz|\.zst|\.gz)?$")
    dep = directory / "modules.dep"
    if not dep.exists():
        return None
    for line in dep.read_text().splitlines():
        path = line.split(":", 1)[0]
        if pattern.search(path.replace("-", "_")):
            return path
    return None


def find_kernel() -> Kernel | None:
    """The newest /boot/vmlinuz-* whose modules include wireguard.ko."""
    found = []
    for vmlinuz in Path("/boot").glob("vmlinuz-*"):
        release = vmlinuz.name.removeprefix("vmlinuz-")
        kernel = Kernel(vmlinuz, release)
        if _module_file(kernel.modules, "wireguard") and os.access(vmlinuz, os.R_OK):
            found.append(kernel)
    found.sort(key=lambda k: [int(x) if x.isdigit() else 0 for x in re.split(r"[.-]", k.release)])
    return found[-1] if found else None


def _is_static(path: str) -> bool:
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=False)
    return out.returncode != 0 or "not a dynamic executable" in out.stdout + out.stderr


def missing() -> str | None:
    """Why a kernel VM cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "the kernel VM needs root (network namespaces)"
    for tool in ("qemu-system-x86_64", "ip", "wg", "ldd"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install {' '.join(DEBIAN_PACKAGES)})"
    if not Path("/bin/busybox").exists() or not _is_static("/bin/busybox"):
        return "a static /bin/busybox is missing (apt-get install busybox-static)"
    if find_kernel() is None:
        return "no kernel with wireguard.ko under /boot (apt-get install linux-image-amd64)"
    return None


def module_order(kernel: Kernel, names: tuple[str, ...] = GUEST_MODULES) -> list[str]:
    """modules.dep paths of *names* and their dependencies, dependencies first."""
    deps: dict[str, list[str]] = {}
    for line in (kernel.modules / "modules.dep").read_text().splitlines():
        module, _, needs = line.partition(":")
        deps[module] = needs.split()
    order: list[str] = []

    def add(module: str) -> None:
        # modules.dep lists a module's dependencies, deepest last.
        for dep in reversed(deps.get(module, [])):
            add(dep)
        if module not in order:
            order.append(module)

    for name in names:
        path = _module_file(kernel.modules, name)
        if path is None:
            raise GuestError(f"module {name} is not in {kernel.modules}")
        add(path)
    return order


def _decompressed(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    return data


# --- the initramfs, written as a newc cpio archive -------------------------------


class Cpio:
    """A newc ("070701") cpio archive in memory, as the kernel unpacks an
    initramfs; written here so the harness needs no cpio tool."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = 1
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        fields = [self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        body = header + name.encode() + b"\0"
        self._out.write(body + b"\0" * (-len(body) % 4))
        self._out.write(data + b"\0" * (-len(data) % 4))

    def directory(self, name: str) -> None:
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            path = "/".join(parts[:i])
            if path not in self._dirs:
                self._dirs.add(path)
                self._entry(path, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        if "/" in name:
            self.directory(name.rsplit("/", 1)[0])
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        name = name.strip("/")
        if "/" in name:
            self.directory(name.rsplit("/", 1)[0])
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self._out.getvalue()


INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /tmp /www /run
for m in $(cat /etc/modules.order); do
  insmod "/lib/modules/$m" || echo "INSMOD-FAILED $m"
done
ip link set lo up
ip link set eth0 up && ip addr add __GUEST_ETH__/24 dev eth0
if ip link add wg0 type wireguard; then ip link del wg0; else echo "NO-WIREGUARD"; fi
stty -F /dev/ttyS1 raw -echo
exec 3<>/dev/ttyS1
echo "READY $(uname -r)"
while read -r id limit script <&3; do
  echo "$script" | base64 -d > /tmp/cmd
  echo "guest# $(tr '\n' ';' < /tmp/cmd | head -c 300)"
  timeout -s KILL "$limit" sh /tmp/cmd < /dev/null > /tmp/out 2>&1 3>&-
  rc=$?
  cat /tmp/out
  echo "guest# (exit $rc)"
  { echo "BEGIN $id"; base64 < /tmp/out; echo "END $id $rc"; } >&3
done
echo "COMMAND-CHANNEL-CLOSED"
"""


def build_initramfs(kernel: Kernel, busybox: str = "/bin/busybox", wg: str | None = None) -> bytes:
    """A gzip'd initramfs: busybox, wg and its shared libraries, the modules."""
    wg = wg or shutil.which("wg") or "/usr/bin/wg"
    archive = Cpio()
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "www", "run", "lib/modules"):
        archive.directory(d)
    archive.file("bin/busybox", Path(busybox).read_bytes(), 0o755)
    archive.file("bin/wg", Path(wg).read_bytes(), 0o755)
    # wg is dynamically linked on Debian: its loader and libraries go in at
    # the paths ldd names (symbolic links resolved).
    ldd = subprocess.run(["ldd", wg], capture_output=True, text=True, check=False).stdout
    for lib in sorted(set(re.findall(r"(/\S+)", ldd))):
        if Path(lib).exists():
            archive.file(lib, Path(lib).resolve().read_bytes(), 0o755)
    order = module_order(kernel)
    names = []
    for path in order:
        name = Path(path).name
        for suffix in (".xz", ".zst", ".gz"):
            name = name.removesuffix(suffix)
        archive.file(f"lib/modules/{name}", _decompressed(kernel.modules / path))
        names.append(name)
    archive.file("etc/modules.order", ("\n".join(names) + "\n").encode())
    archive.file("init", INIT.replace("__GUEST_ETH__", GUEST_ETH).encode(), 0o755)
    return gzip.compress(archive.finish(), compresslevel=1)


# --- the running guest --------------------------------------------------------------


@dataclass
class GuestResult:
    status: int
    output: str

    def check(self) -> str:
        if self.status != 0:
            raise GuestError(f"guest command failed (exit {self.status}): {self.output}")
        return self.output


class KernelVM:
    """Debian's kernel in qemu in network namespace :attr:`ns`; see the module
    docstring. ``with KernelVM() as vm:`` boots (about 7 s) and powers off."""

    def __init__(
        self, *, host_port: int = 51820, memory_mb: int = 512, prefix: str = "pywg"
    ) -> None:
        self.tag = os.urandom(3).hex()
        self.ns = f"{prefix}-{self.tag}-vm"
        self.host_port = host_port
        self.memory_mb = memory_mb
        self.kernel: Kernel | None = None
        self.dir = Path(tempfile.mkdtemp(prefix=f"pywg-vm-{self.tag}-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.boot_seconds = 0.0
        self._chan: socket.socket | None = None
        self._buf = b""
        self._seq = 0
        self._lock = threading.Lock()

    # lifecycle

    @property
    def console_path(self) -> Path:
        return self.dir / "console.log"

    @property
    def console(self) -> str:
        """Everything the guest printed on its console so far."""
        try:
            return self.console_path.read_bytes().decode("utf-8", "replace").replace("\r", "")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 120.0) -> None:
        started = time.monotonic()
        reason = missing()
        if reason is not None:
            raise GuestError(reason)
        self.kernel = find_kernel()
        assert self.kernel is not None
        initrd = self.dir / "initramfs.gz"
        initrd.write_bytes(build_initramfs(self.kernel))
        subprocess.run(["ip", "netns", "add", self.ns], check=True, capture_output=True)
        subprocess.run(
            ["ip", "-n", self.ns, "link", "set", "lo", "up"], check=True, capture_output=True
        )
        chan_path = self.dir / "cmd.sock"
        args = [
            "ip", "netns", "exec", self.ns,
            "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-smp", "1",
            "-m", str(self.memory_mb), "-nodefaults", "-display", "none", "-no-reboot",
            "-kernel", str(self.kernel.vmlinuz), "-initrd", str(initrd),
            "-append", "console=ttyS0 quiet panic=-1",
            "-chardev", f"file,id=con,path={self.console_path}",
            "-serial", "chardev:con",
            "-chardev", f"socket,id=cmd,path={chan_path},server=on,wait=off",
            "-serial", "chardev:cmd",
            "-netdev", f"user,id=n0,hostfwd=udp:127.0.0.1:{self.host_port}-:{GUEST_WG_PORT}",
            "-device", "virtio-net-pci,netdev=n0",
        ]  # fmt: skip
        log = open(self.dir / "qemu.log", "wb")  # noqa: SIM115 - lives as long as qemu
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            text = self.console
            if "READY" in text:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                qemu = (self.dir / "qemu.log").read_text(errors="replace")
                raise GuestError(f"the guest did not boot: {qemu}\nconsole:\n{text[-3000:]}")
            time.sleep(0.1)
        for bad in ("NO-WIREGUARD", "INSMOD-FAILED"):
            if bad in self.console:
                raise GuestError(f"guest: {bad}\n{self.console[-3000:]}")
        chan = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        chan.connect(str(chan_path))
        self._chan = chan
        self.boot_seconds = time.monotonic() - started

    def stop(self) -> None:
        if self._chan is not None:
            self._chan.close()
            self._chan = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if Path(f"/var/run/netns/{self.ns}").exists():
            # What else a test started in the namespace (a client, a server).
            kill_namespace_processes(self.ns)
        subprocess.run(["ip", "netns", "del", self.ns], check=False, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> KernelVM:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # commands

    def run(self, script: str, timeout: float = 30.0) -> GuestResult:
        """Run a shell script on the guest; its exit status and output.

        If no answer comes, the command line is sent once more under a new id,
        after a bare newline that completes any line the guest's ``read`` may
        hold half of. Seen once in CI, cause not established: the guest went
        silent on one ``wg show`` and answered the commands after it."""
        with self._lock:
            try:
                return self._run_once(script, timeout)
            except _NoAnswer:
                chan = self._chan
                if chan is None:
                    raise GuestError("the guest is not running") from None
                chan.sendall(b"\n")
                try:
                    return self._run_once(script, timeout)
                except _NoAnswer:
                    raise GuestError(f"no answer from the guest to: {script}") from None

    def _run_once(self, script: str, timeout: float) -> GuestResult:
        chan = self._chan
        if chan is None:
            raise GuestError("the guest is not running")
        self._seq += 1
        ident = f"c{self._seq}"
        payload = base64.b64encode(script.encode()).decode()
        limit = max(1, int(timeout))
        chan.sendall(f"{ident} {limit} {payload}\n".encode())
        deadline = time.monotonic() + timeout + 10
        end = re.compile(rb"BEGIN " + ident.encode() + rb"\n(.*?)END " + ident.encode()
                         + rb" (\d+)\n", re.S)  # fmt: skip
        while True:
            match = end.search(self._buf)
            if match:
                self._buf = self._buf[match.end() :]
                output = base64.b64decode(b"".join(match.group(1).split()))
                return GuestResult(int(match.group(2)), output.decode("utf-8", "replace"))
            left = deadline - time.monotonic()
            if left <= 0:
                raise _NoAnswer
            chan.settimeout(left)
            try:
                data = chan.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise GuestError("the guest closed its command channel")
            self._buf += data

    async def arun(self, script: str, timeout: float = 30.0) -> GuestResult:
        """:meth:`run` from a thread, so an asyncio endpoint keeps running."""
        return await asyncio.to_thread(self.run, script, timeout)

    def sh(self, script: str, timeout: float = 30.0) -> str:
        """Run *script*; its output, raising GuestError on a non-zero status."""
        return self.run(script, timeout).check()

    # wg0

    def configure(
        self, wg_conf: str, *, addresses: tuple[str, ...] = (f"{GUEST_TUN}/24", f"{GUEST_TUN6}/64")
    ) -> None:
        """A fresh wg0 (so no state is left from an earlier test) set up
        from a ``wg setconf`` file, with an IPv4 and an IPv6 address."""
        self.sh(
            "ip link del wg0 2>/dev/null\n"
            "umask 077\n"
            f"cat > /tmp/wg0.conf <<'EOF'\n{wg_conf}EOF\n"
            "ip link add wg0 type wireguard\n"
            "wg setconf wg0 /tmp/wg0.conf\n"
            + "".join(f"ip addr add {address} dev wg0\n" for address in addresses)
            + "ip link set wg0 up\n"
        )

    def wg(self, *args: str) -> str:
        return self.sh(" ".join(["wg", *args]))

    def latest_handshake(self) -> int:
        """The kernel's latest handshake time with its (only) peer, Unix
        seconds; 0 for none."""
        fields = self.wg("show", "wg0", "latest-handshakes").split()
        return int(fields[1]) if len(fields) >= 2 else 0

    def transfer(self) -> tuple[int, int]:
        """(received, sent) bytes the kernel counts for its (only) peer."""
        fields = self.wg("show", "wg0", "transfer").split()
        return (int(fields[1]), int(fields[2])) if len(fields) >= 3 else (0, 0)


@contextlib.contextmanager
def kernel_vm(**options: Any) -> Iterator[KernelVM]:
    vm = KernelVM(**options)
    with vm:
        yield vm
