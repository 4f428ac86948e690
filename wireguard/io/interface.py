"""A named userspace WireGuard interface: a Device, its UDP socket (Tunnel)
and the ``wg`` control socket at ``/var/run/wireguard/NAME.sock``, so the stock
``wg show NAME`` / ``wg set NAME ...`` work on it. No TUN: packets go in and
out through :class:`~wireguard.io.tunnel.Tunnel` (the TUN binding and the
userspace network stack build on this).
"""

from __future__ import annotations

import os
import socket

from ..config import Config
from ..device import Device
from ..uapi import UAPI
from .control import ControlServer, socket_path
from .lifecycle import Lifecycle
from .tunnel import Tunnel, device_from_config


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
    ) -> None:
        self.name = name
        self.device = device
        self.tunnel = Tunnel(device, listen_port=listen_port, host=host, sock=sock)
        self.control: ControlServer | None = None
        self._want_control = control
        self._control_path = control_path or socket_path(name)

    @classmethod
    async def from_config(cls, name: str, config: Config, **options) -> Interface:  # type: ignore[no-untyped-def]
        device = await device_from_config(config)
        return cls(name, device, listen_port=config.interface.listen_port or 0, **options)


    async def start(self) -> None:
        await self.tunnel.start()
        if self._want_control:
            uapi = UAPI(
                self.device,
                now=lambda: self.tunnel.now,
                on_listen_port=self.tunnel.rebind,
                on_fwmark=self.tunnel.set_fwmark,
                on_effects=self.tunnel.apply,
            )
            self.control = ControlServer(uapi, self._control_path)
            try:
                await self.control.start()
            except BaseException:
                await self.tunnel.close()
                raise

    async def close(self) -> None:
        if self.control is not None:
            await self.control.close()
        await self.tunnel.close()
