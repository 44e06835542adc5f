"""The slot scheduler: FIFO, grouping at swaps, bounded queue, timeouts."""

from __future__ import annotations

import asyncio

import pytest

from mlxhost.core.errors import Busy
from mlxhost.runtime.scheduler import SlotScheduler


class Slot:
    """Plays the model slot: records service order and swaps."""

    def __init__(self, **kwargs):
        self.loaded = None
        self.order = []
        self.swaps = 0
        self.scheduler = SlotScheduler(lambda: self.loaded, **kwargs)

    async def request(self, name, model, hold: asyncio.Event | None = None):
        """Take the slot, and keep it until ``hold`` is set (if given)."""
        await self.scheduler.acquire(model)
        try:
            if self.loaded not in (None, model):
                self.swaps += 1
            self.loaded = model
            self.order.append(name)
            if hold is not None:
                await hold.wait()
            await asyncio.sleep(0)  # others run while this one holds the slot
        finally:
            self.scheduler.release()


async def until(condition, turns=1000):
    """Let the other tasks run until ``condition()`` holds (bounded by loop turns, not time)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def start_in_order(slot, requests):
    """All requests arrive (in order) while the first one holds the slot, then it lets go."""
    gate = asyncio.Event()
    tasks = []
    for index, (name, model) in enumerate(requests):
        hold = gate if index == 0 else None
        tasks.append(asyncio.create_task(slot.request(name, model, hold=hold)))
        await asyncio.sleep(0)  # arrival order = creation order: each task runs to its wait
    await until(lambda: slot.scheduler.waiting == len(requests) - 1)
    gate.set()
    await asyncio.gather(*tasks)


async def test_fifo_for_one_model():
    slot = Slot()
    await start_in_order(slot, [(f"r{i}", "A") for i in range(5)])
    assert slot.order == [f"r{i}" for i in range(5)]


async def test_alternating_traffic_is_grouped_at_swaps():
    slot = Slot()
    requests = [(f"{m}{i}", m) for i in range(4) for m in "AB"]  # A0 B0 A1 B1 ...
    await start_in_order(slot, requests)
    assert slot.order == ["A0", "B0", "B1", "B2", "B3", "A1", "A2", "A3"]
    assert slot.swaps == 2  # instead of 7


async def test_older_requests_for_the_loaded_model_go_before_a_swap():
    slot = Slot()
    await start_in_order(slot, [("A0", "A"), ("A1", "A"), ("B0", "B"), ("A2", "A")])
    assert slot.order == ["A0", "A1", "B0", "A2"]


async def test_queue_bound_gives_busy_with_retry_after():
    slot = Slot(max_waiting=2)
    gate = asyncio.Event()
    holder = asyncio.create_task(slot.request("hold", "A", hold=gate))
    await until(lambda: slot.scheduler.busy)
    waiting = [asyncio.create_task(slot.request(f"w{i}", "A")) for i in range(2)]
    await until(lambda: slot.scheduler.waiting == 2)
    with pytest.raises(Busy) as caught:
        await slot.request("extra", "A")
    assert caught.value.status_code == 503 and int(caught.value.headers["Retry-After"]) >= 1
    gate.set()
    await asyncio.gather(holder, *waiting)
    assert slot.order == ["hold", "w0", "w1"]


async def test_wait_timeout_and_cancelled_waiters_leave_the_queue():
    # The timeout is the scheduler's own setting under test; nothing here waits on
    # time except that waiter, and the holder keeps the slot until the gate opens.
    slot = Slot(wait_timeout=0.05)
    gate = asyncio.Event()
    holder = asyncio.create_task(slot.request("hold", "A", hold=gate))
    await until(lambda: slot.scheduler.busy)
    with pytest.raises(Busy, match="Timed out"):
        await slot.request("late", "A")
    assert slot.scheduler.waiting == 0  # the timed-out waiter left the queue
    cancelled = asyncio.create_task(slot.request("gone", "B"))
    await until(lambda: slot.scheduler.waiting == 1)
    cancelled.cancel()
    await until(lambda: cancelled.done())
    assert slot.scheduler.waiting == 0
    gate.set()
    await holder
    assert slot.scheduler.waiting == 0 and not slot.scheduler.busy
    await slot.request("next", "A")
    assert slot.order == ["hold", "next"]
