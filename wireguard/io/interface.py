"""A named userspace WireGuard interface: a Device, its UDP socket (Tunnel)
and the ``wg`` control socket at ``/var/run/wireguard/NAME.sock``, so the stock
``wg show NAME`` / ``wg set NAME ...`` work on it. No TUN: packets go in and
out through :class:`~wireguard.io.tunnel.Tunnel` (the TUN binding and the
userspace network stack build on this).

:class:`TunInterface` is that with a TUN interface: the one engine behind both
``wireguard-sansio`` (the drop-in for wireguard-go, :mod:`wireguard.cli.daemon`)
and ``python -m wireguard up`` (:mod:`wireguard.io.up`, which adds addresses,
routes and hooks around it). It behaves as wireguard-go and the kernel module
do towards whatever configures the interface from outside:

- the UDP socket is open while the interface is up: ``ip link set NAME down``
  closes it and forgets every session (:meth:`Device.clear_sessions`, the
  kernel's ``wg_stop``); ``up`` opens it again on the configured port and
  sends a keepalive to each peer with a persistent keepalive (so the
  handshake starts at once); ``wg set NAME listen-port`` while down only
  records the port;
- ``ip link set NAME mtu N`` sets the device's MTU (its padding); packets up
  to the TUN's 64 KiB are read and written whatever the MTU;
- replies leave from the local address the peer last reached (sticky
  sources, see :mod:`wireguard.io.tunnel`);
- the interface may be moved to another network namespace and is followed
  there (:class:`~wireguard.io.tun.LinkMonitor`), while the process, its UDP
  socket and the control socket stay where they were started;
- it ends (:meth:`wait` returns why) when the interface is deleted, when its
  control socket file is removed, or when :meth:`stop` is called (a signal).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from ..config import Config
from ..device import Device
from ..uapi import UAPI
from .control import ControlServer, socket_path
from .lifecycle import Lifecycle
from .tun import LinkMonitor, LinkState, Tun, TunPump
from .tunnel import Tunnel, device_from_config

log = logging.getLogger(__name__)

__all__ = ["Interface", "TunInterface"]


class Interface(Lifecycle):
    def __init__(
        self,
        name: str,
        device: Device,
        *,
        listen_port: int | None = None,
        host: str | None = None,
        sock: socket.socket | None = None,
        control: bool = True,
        control_path: str | os.PathLike[str] | None = None,
        sticky: bool = False,
    ) -> None:
        self.name = name
        self.device = device
        self.tunnel = Tunnel(device, listen_port=listen_port, host=host, sock=sock, sticky=sticky)
        self.control: ControlServer | None = None
        self._want_control = control
        self._control_path = control_path or socket_path(name)

    @classmethod
    async def from_config(cls, name: str, config: Config, **options) -> Interface:  # type: ignore[no-untyped-def]
        device = await device_from_config(config)
        return cls(name, device, listen_port=config.interface.listen_port or 0, **options)

    def _control_server(self, **options) -> ControlServer:  # type: ignore[no-untyped-def]
        uapi = UAPI(
            self.device,
            now=lambda: self.tunnel.now,
            on_listen_port=self.tunnel.rebind,
            on_fwmark=self.tunnel.set_fwmark,
            on_effects=self.tunnel.apply,
        )
        return ControlServer(uapi, self._control_path, **options)

    async def start(self) -> None:
        await self.tunnel.start()
        self._apply_fwmark()
        if self._want_control:
            self.control = self._control_server()
            try:
                await self.control.start()
            except BaseException:
                await self.tunnel.close()
                raise

    def _apply_fwmark(self) -> None:
        """The device's mark (``FwMark =``) on the UDP socket, as the kernel
        and wireguard-go mark theirs. Where the kernel refuses it (SO_MARK
        needs CAP_NET_ADMIN), the interface runs unmarked, says so once and
        does not report the mark (``wg show``)."""
        mark = self.device.fwmark
        if not mark:
            return
        try:
            self.tunnel.set_fwmark(mark)
        except OSError as exc:
            log.warning(
                "%s: fwmark %#x not set on the UDP socket (%s): it runs unmarked",
                self.name, mark, exc.strerror or exc,
            )  # fmt: skip
            self.device.fwmark = 0

    async def close(self) -> None:
        if self.control is not None:
            await self.control.close()
        await self.tunnel.close()


class TunInterface(Interface):
    """The engine of a TUN interface (see the module). *tun* is owned from now
    on (closed by :meth:`close`, which removes the interface). *control_sock*
    is a socket already listening at the control path, if the caller bound
    it. The UDP socket opens when the interface is (or comes) up;
    :meth:`bring_up` opens it at once and raises if the port is taken."""

    def __init__(
        self,
        name: str,
        device: Device,
        tun: Tun,
        *,
        listen_port: int | None = None,
        control_sock: socket.socket | None = None,
        control_path: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(
            name, device, listen_port=listen_port, control_path=control_path, sticky=True
        )
        self.tun = tun
        self.pump = TunPump(tun, self.tunnel)
        self.monitor = LinkMonitor(tun, self._link_changed, lambda: self.stop("interface deleted"))
        self.link: LinkState | None = None
        self._control_sock = control_sock
        self._stopped: asyncio.Event | None = None
        self.stop_reason: str | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        await self.tunnel.start(listen=False)
        self.control = self._control_server(
            sock=self._control_sock, on_removed=lambda: self.stop("control socket removed")
        )
        self._control_sock = None
        try:
            await self.control.start()
        except BaseException:
            await self.tunnel.close()
            raise
        self.pump.on_error = lambda exc: self.stop("TUN failed")
        self.pump.start(loop)
        if self.monitor.start(loop) is None:
            # Its state cannot be read (old kernel, or already moved where it
            # cannot be followed): serve as if it were up.
            log.info("Link state unknown; listening regardless")
            self.bring_up(quiet=True)

    def stop(self, reason: str = "stopped") -> None:
        """End :meth:`wait` (from a signal handler, say)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self._stopped is not None:
            self._stopped.set()

    async def wait(self) -> str:
        """Until the interface is deleted, its control socket removed or
        :meth:`stop` called; returns why."""
        assert self._stopped is not None, "the interface is not started"
        await self._stopped.wait()
        return self.stop_reason or "stopped"

    def bring_up(self, *, quiet: bool = False) -> int:
        """Open the UDP socket, as the interface coming up does; returns the
        port. Raises OSError if it cannot be bound (unless *quiet*: then it is
        logged, as wireguard-go logs "Unable to update bind")."""
        tunnel = self.tunnel
        if tunnel.listening:
            return tunnel.listen_port
        try:
            port = tunnel.open_socket()
        except OSError as exc:
            if not quiet:
                raise
            log.error("Unable to update bind: %s", exc.strerror or exc)
            return 0
        # The kernel's wg_open: what waits goes out, and every peer with a
        # persistent keepalive gets one now (which starts a handshake).
        now = tunnel.now
        device = self.device
        for key, peer in list(device.peers.items()):
            if peer.persistent_keepalive:
                tunnel.apply(device.send_keepalive(key, now))
        log.debug("Interface up, UDP port %d", port)
        return port

    def bring_down(self) -> None:
        """Close the UDP socket and forget every session, as the interface
        going down does."""
        if self.tunnel.listening:
            self.tunnel.close_socket()
            log.debug("Interface down: UDP socket closed, sessions forgotten")
        self.device.clear_sessions()

    def _link_changed(self, state: LinkState) -> None:
        old, self.link = self.link, state
        if state.mtu and (old is None or state.mtu != old.mtu):
            self.device.mtu = state.mtu
            log.debug("MTU %d", state.mtu)
        if old is not None and old.nsid != state.nsid:
            log.info("Interface now in network namespace id %s", state.nsid)
        if state.up:
            self.bring_up(quiet=True)
        elif self.tunnel.listening or old is None or old.up:
            self.bring_down()

    def counters(self) -> dict[str, int]:
        """Where packets were lost, by stage, from the TUN to the UDP socket
        and back (all since the interface started): the kernel's drops at the
        TUN (``tun_read_queue_full``: packets for the tunnel that did not fit
        in the TUN's queue while we were busy; ``tun_write_dropped``), ours at
        the TUN (``tun_`` + :attr:`Tun.drops`), the UDP socket's
        (:meth:`Tunnel.counters`) and the device's (``device_`` +
        :attr:`Device.drops`: no route, no session, replays, forgeries...).
        Logged when the interface closes."""
        found = {f"tun_{k}": v for k, v in self.tun.kernel_drops().items()}
        found.update((f"tun_{k}", v) for k, v in self.tun.drops.items())
        found.update(self.tunnel.counters())
        found.update((f"device_{k}", v) for k, v in self.device.drops.items())
        return found

    def _log_counters(self) -> None:
        pump, tunnel = self.pump, self.tunnel
        log.info(
            "batches: TUN %d packets in %d wake-ups, UDP %d datagrams in %d wake-ups",
            pump.packets_read, pump.wakeups, tunnel.datagrams_read, tunnel.wakeups,
        )  # fmt: skip
        lost = {k: v for k, v in self.counters().items() if v}
        log.info(
            "packets lost, by stage: %s",
            ", ".join(f"{k} {v}" for k, v in sorted(lost.items())) or "none",
        )

    async def close(self) -> None:
        self.monitor.stop()
        self.pump.stop()
        try:
            if not self.tun.closed:
                self._log_counters()
            await super().close()
        finally:
            self.tun.close()
