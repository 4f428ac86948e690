"""What every long-lived object of the I/O layer shares: ``start()``,
``close()`` and ``async with`` around them; and how its servers end a
client's connection (:func:`hang_up`)."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from types import TracebackType
from typing import Self


class Lifecycle(ABC):
    """Something with a lifetime: ``async with Thing(...) as thing:`` starts
    it and closes it on the way out, whatever happened inside."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def hang_up(
    writer: asyncio.StreamWriter, closing: Callable[[], bool], timeout: float | None = None
) -> None:
    """End a served client's connection: once what was written is out (for
    *timeout* seconds at most, then it is aborted), or at once when the
    server is *closing*. A client that reads nothing would otherwise keep its
    unsent answer, and the server's close() (a daemon's exit), waiting for
    ever. A close() that comes while waiting aborts it too; any other
    cancellation goes on."""
    if closing():
        writer.transport.abort()
    else:
        writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), timeout)
    except TimeoutError:
        writer.transport.abort()
    except asyncio.CancelledError:
        writer.transport.abort()
        if not closing():
            raise
    except Exception:
        pass
