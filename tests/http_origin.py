"""An origin server for the proxy tests, built on h11 (an HTTP/1.1
implementation independent of ours): /file (Content-Length), /chunked,
/close (close-delimited), /empty (204), /cached (304), /echo (the sha256 of
the request body, however it was framed)."""

from __future__ import annotations

import asyncio
import hashlib

import h11

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class Origin:
    def __init__(self) -> None:
        self.requests: list[h11.Request] = []
        self.connections = 0

    async def __aenter__(self) -> Origin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader, writer) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    if not data and conn.their_state is not h11.DONE:
                        return
                    continue
                if isinstance(event, h11.ConnectionClosed):
                    return
                assert isinstance(event, h11.Request), event
                self.requests.append(event)
                body = hashlib.sha256()
                while True:
                    part = conn.next_event()
                    if part is h11.NEED_DATA:
                        conn.receive_data(await reader.read(65536))
                    elif isinstance(part, h11.Data):
                        body.update(part.data)
                    else:
                        break
                path = event.target.decode()
                if path == "/close":
                    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + PAYLOAD)
                    await writer.drain()
                    return
                status, headers, content = 200, [], PAYLOAD
                if path == "/chunked":
                    headers = [("Transfer-Encoding", "chunked")]
                elif path == "/empty":
                    status, content = 204, b""
                elif path == "/cached":
                    status, content = 304, b""
                    headers = [("Content-Length", str(len(PAYLOAD)))]
                elif path == "/echo":
                    content = body.hexdigest().encode()
                if not headers and status == 200:
                    headers = [("Content-Length", str(len(content)))]
                out = conn.send(h11.Response(status_code=status, headers=headers))
                if event.method != b"HEAD" and status == 200:
                    for i in range(0, len(content), 100_000):
                        out += conn.send(h11.Data(data=content[i : i + 100_000]))
                out += conn.send(h11.EndOfMessage())
                writer.write(out)
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, ConnectionError):
            return
        finally:
            writer.close()
