"""Who holds the model next: FIFO, with requests for one model grouped at swaps.

The rule (no request waits forever):

1. Up to ``capacity`` requests for the loaded model hold it at once (they decode
   together in one batch); a request for another model waits until every
   holder has finished (the batch drains), then the swap happens.
2. Once anyone waits, newcomers queue behind them in arrival order, even for
   the loaded model: a pending swap is never starved by a stream of joiners.
3. When the oldest waiting request needs a different model than the loaded
   one, the swap serves, right after it, every request for that model that
   was already waiting at that moment (a *group*). Requests that arrive later
   wait for their turn in arrival order again.

So alternating A-B-A-B traffic from N clients swaps about once per N/2
requests rather than on every request, and a request waits at most for the
requests older than it plus one group per model ahead of it. ``capacity=1``
is the one-request-at-a-time server.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import attrs

from mlxhost.core.errors import Busy


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
        capacity: int = 1,
    ) -> None:
        self._loaded_model = loaded_model
        self.max_waiting = max_waiting
        self.wait_timeout = wait_timeout
        self.capacity = max(1, capacity)
        self._holders = 0
        self._holder_model: str | None = None
        self._waiters: list[_Waiter] = []
        self._group: list[_Waiter] = []
        self._seq = itertools.count()
        self.served = 0

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def busy(self) -> bool:
        return self._holders > 0

    @property
    def running(self) -> int:
        """Requests holding the model now."""
        return self._holders

    async def acquire(self, model_id: str) -> None:
        if not self._waiters and self._can_join(model_id):
            self._grant(model_id)
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
        """A holder is done: hand the model to the waiters that may have it now."""
        self._holders -= 1
        if self._holders == 0:
            self._holder_model = None
        while True:
            self._group = [w for w in self._group if w in self._waiters]
            waiter = self._group[0] if self._group else (self._waiters[0] if self._waiters else None)
            if waiter is None or not self._can_join(waiter.model_id):
                return
            swap = self._holders == 0 and waiter.model_id != self._loaded_model()
            self._forget(waiter)
            if waiter.future.done():  # gave up meanwhile
                continue
            self._grant(waiter.model_id)
            waiter.future.set_result(None)
            if swap:
                # The requests already waiting for that model go with it.
                self._group = [w for w in self._waiters if w.model_id == waiter.model_id]

    def _can_join(self, model_id: str) -> bool:
        if self._holders == 0:
            return True
        return model_id == self._holder_model and self._holders < self.capacity

    def _grant(self, model_id: str) -> None:
        self._holders += 1
        self._holder_model = model_id
        self.served += 1

    def _forget(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if waiter in self._group:
            self._group.remove(waiter)

    def _retry_after(self) -> int:
        return max(1, min(60, len(self._waiters)))
