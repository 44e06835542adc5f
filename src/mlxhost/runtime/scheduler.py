"""Who gets the model slot next: FIFO, with requests for one model grouped at swaps.

The rule (no request waits forever):

1. Requests are served in arrival order, one at a time.
2. When the oldest waiting request needs a different model than the loaded one,
   the swap serves, right after it, every request for that model that was
   already waiting at that moment (a *group*), in arrival order. Requests that
   arrive later wait for their turn in arrival order again.

So alternating A-B-A-B traffic from N clients swaps about once per N/2
requests rather than on every request, and a request waits at most for the
requests older than it plus one group per model ahead of it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import attrs

from mlxhost.errors import Busy


@attrs.define(eq=False)
class _Waiter:
    model_id: str
    seq: int
    future: asyncio.Future


class SlotScheduler:
    def __init__(
        self,
        loaded_model: Callable[[], str | None],
        *,
        max_waiting: int = 64,
        wait_timeout: float | None = None,
    ) -> None:
        self._loaded_model = loaded_model
        self.max_waiting = max_waiting
        self.wait_timeout = wait_timeout
        self._busy = False
        self._waiters: list[_Waiter] = []
        self._group: list[_Waiter] = []
        self._seq = itertools.count()
        self.served = 0

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def busy(self) -> bool:
        return self._busy

    async def acquire(self, model_id: str) -> None:
        if not self._busy and not self._waiters:
            self._busy = True
            self.served += 1
            return
        if len(self._waiters) >= self.max_waiting:
            raise Busy(
                f"The server is busy: {len(self._waiters)} requests are already waiting. "
                "Retry shortly.",
                retry_after=self._retry_after(),
            )
        waiter = _Waiter(model_id, next(self._seq), asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), self.wait_timeout)
        except BaseException as exc:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release()  # granted just as we gave up: pass it on
            else:
                waiter.future.cancel()
                self._forget(waiter)
            if isinstance(exc, asyncio.TimeoutError):
                raise Busy(
                    f"Timed out after {self.wait_timeout:.0f}s waiting for the model.",
                    retry_after=self._retry_after(),
                ) from None
            raise

    def release(self) -> None:
        """Hand the slot to the next waiter (or mark it free)."""
        while True:
            waiter = self._pick()
            if waiter is None:
                self._busy = False
                return
            self._forget(waiter)
            if not waiter.future.done():
                self.served += 1
                waiter.future.set_result(None)
                return

    def _pick(self) -> _Waiter | None:
        while self._group:
            waiter = self._group.pop(0)
            if waiter in self._waiters:
                return waiter
        if not self._waiters:
            return None
        head = self._waiters[0]
        if head.model_id != self._loaded_model():
            # A swap is coming: the requests already waiting for that model go with it.
            self._group = [w for w in self._waiters[1:] if w.model_id == head.model_id]
        return head

    def _forget(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def _retry_after(self) -> int:
        return max(1, min(60, len(self._waiters)))
