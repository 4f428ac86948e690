"""A small asyncio SOCKS5 server around :class:`wireguard.socks5.Socks5Server`
for tests (kernel sockets, the host's resolver): what a binding does with
the core, in as few lines as it takes."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from wireguard.socks5 import (
    Command,
    Data,
    Reply,
    Request,
    Socks5Error,
    Socks5Server,
    UdpAssociation,
)


class _Relay(asyncio.DatagramProtocol):
    def __init__(self, on_datagram) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr) -> None:
        self.on_datagram(data, (addr[0], addr[1]))


class Harness:
    def __init__(self, credentials: dict[str, str] | None = None) -> None:
        self.credentials = credentials
        self.requests: list[Request] = []
        self.errors: list[Socks5Error] = []
        self.associations: list[UdpAssociation] = []
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> Harness:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        core = Socks5Server(self.credentials)
        peer = writer.get_extra_info("peername")
        early: list[bytes] = []
        try:
            while not core.closing:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                try:
                    events = core.receive_data(chunk)
                except Socks5Error as exc:
                    self.errors.append(exc)
                    writer.write(core.data_to_send())
                    return
                writer.write(core.data_to_send())
                for event in events:
                    if isinstance(event, Data):
                        early.append(event.data)
                    elif isinstance(event, Request):
                        self.requests.append(event)
                        if event.command == Command.CONNECT:
                            await self._connect(core, event, reader, writer, early)
                        else:
                            await self._associate(core, event, peer, reader, writer)
                        return
        finally:
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()

    async def _connect(self, core, request, reader, writer, early) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(request.host, request.port), 10
            )
        except (OSError, TimeoutError) as exc:
            core.failed(Reply.for_error(exc))
            writer.write(core.data_to_send())
            return
        core.connected(up_writer.get_extra_info("sockname")[:2])
        writer.write(core.data_to_send())
        for data in early:
            up_writer.write(data)

        async def pump(src, dst, feed):
            try:
                while chunk := await src.read(65536):
                    dst.write(feed(chunk))
                    await dst.drain()
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    dst.write_eof()

        def from_client(chunk):
            return b"".join(e.data for e in core.receive_data(chunk))

        await asyncio.gather(pump(reader, up_writer, from_client), pump(up_reader, writer, bytes))
        up_writer.close()

    async def _associate(self, core, request, peer, reader, writer) -> None:
        loop = asyncio.get_running_loop()
        association = UdpAssociation(peer[0], request)
        self.associations.append(association)
        outbound = None

        def from_target(data, origin):
            if association.client is not None:
                relay.sendto(association.to_client(data, origin), association.client)

        def from_client(data, source):
            datagram = association.from_client(data, source)
            if datagram is not None:
                outbound.sendto(datagram.data, (datagram.host, datagram.port))

        relay, _ = await loop.create_datagram_endpoint(
            lambda: _Relay(from_client), local_addr=("127.0.0.1", 0), family=socket.AF_INET
        )
        outbound, _ = await loop.create_datagram_endpoint(
            lambda: _Relay(from_target), local_addr=("127.0.0.1", 0), family=socket.AF_INET
        )
        core.connected(relay.get_extra_info("sockname")[:2])
        writer.write(core.data_to_send())
        try:
            while chunk := await reader.read(65536):  # the association lives as long as this
                core.receive_data(chunk)
        finally:
            relay.close()
            outbound.close()
