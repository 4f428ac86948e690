"""DeadlineTimer: one loop timer for a core's next deadline, re-armed only
when the deadline moves earlier (tested on a real asyncio loop)."""

from __future__ import annotations

import asyncio

from wireguard.io.deadline import DeadlineTimer


def test_a_later_deadline_keeps_the_armed_timer_and_an_earlier_one_rearms() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        timer = DeadlineTimer(loop, fired.append)
        start = loop.time()
        timer.set(start + 0.3)
        assert timer.at == start + 0.3
        timer.set(start + 0.5)  # later: the armed timer stays
        timer.set(None)  # no deadline: it stays too, and fires for nothing
        assert timer.at == start + 0.3
        timer.set(start + 0.05)  # earlier: re-armed
        assert timer.at == start + 0.05
        await asyncio.sleep(0.5)
        assert len(fired) == 1  # the one armed last, once
        assert fired[0] >= start + 0.05
        assert timer.at is None  # fired: nothing armed until set again
        timer.set(start + 0.6)
        assert timer.at == start + 0.6
        await asyncio.sleep(0.2)
        assert len(fired) == 2

    asyncio.run(body())


def test_cancel_disarms() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        timer = DeadlineTimer(loop, fired.append)
        timer.set(loop.time() + 0.02)
        timer.cancel()
        assert timer.at is None
        await asyncio.sleep(0.1)
        assert fired == []
        timer.cancel()  # twice is harmless

    asyncio.run(body())


def test_the_time_given_is_never_before_the_deadline() -> None:
    # asyncio may run a handle up to one clock resolution early; the core is
    # given the armed time then, or it would ask to be woken again at once.
    async def body() -> None:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        timer = DeadlineTimer(loop, fired.append)
        deadlines = [loop.time() + 0.001 * i for i in range(1, 30)]
        for deadline in deadlines:
            timer.set(deadline)
            await asyncio.sleep(0.004)
        assert len(fired) == len(deadlines)
        assert all(now >= deadline for now, deadline in zip(fired, deadlines, strict=True))

    asyncio.run(body())
