"""The slot scheduler: FIFO, grouping at swaps, bounded queue, timeouts."""

from __future__ import annotations

import asyncio

import pytest

from mlxhost.errors import Busy
from mlxhost.runtime.scheduler import SlotScheduler


class Slot:
    """Plays the model slot: records service order and swaps."""

    def __init__(self, **kwargs):
        self.loaded = None
        self.order = []
        self.swaps = 0
        self.scheduler = SlotScheduler(lambda: self.loaded, **kwargs)

    async def request(self, name, model, hold=0.01):
        await self.scheduler.acquire(model)
        try:
            if self.loaded not in (None, model):
                self.swaps += 1
            self.loaded = model
            self.order.append(name)
            await asyncio.sleep(hold)
        finally:
            self.scheduler.release()


async def start_in_order(slot, requests):
    tasks = []
    for name, model in requests:
        tasks.append(asyncio.create_task(slot.request(name, model)))
        await asyncio.sleep(0)  # arrival order = creation order
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
    holder = asyncio.create_task(slot.request("hold", "A", hold=0.2))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(slot.request(f"w{i}", "A")) for i in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(Busy) as caught:
        await slot.request("extra", "A")
    assert caught.value.status_code == 503 and int(caught.value.headers["Retry-After"]) >= 1
    await asyncio.gather(holder, *waiting)
    assert slot.order == ["hold", "w0", "w1"]


async def test_wait_timeout_and_cancelled_waiters_leave_the_queue():
    slot = Slot(wait_timeout=0.05)
    holder = asyncio.create_task(slot.request("hold", "A", hold=0.2))
    await asyncio.sleep(0)
    with pytest.raises(Busy, match="Timed out"):
        await slot.request("late", "A")
    cancelled = asyncio.create_task(slot.request("gone", "B"))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    await holder
    assert slot.scheduler.waiting == 0 and not slot.scheduler.busy
    await slot.request("next", "A")
    assert slot.order == ["hold", "next"]
