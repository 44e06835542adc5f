"""Work slices sized by time, from a rate measured online (worker thread only).

Two kinds of work share the MLX thread with running chats in slices: a long
prompt's prefill (``engine.prefill_pace``) and embedding passes
(``runtime.embedding.batcher``). A fixed slice in tokens is fair on one machine
and not on another, so each slice is sized to take about ``budget`` seconds:

1. Every slice is timed; the rate is the tokens per second of the last
   ``WINDOW`` slices (it falls as a prompt's context grows, and so does the slice).
2. The next slice is ``rate × budget`` tokens per row (rows run side by side),
   within ``[min_chunk, max_chunk]`` and at most ``GROWTH`` times the last one
   (one noisy fast reading must not buy a 30 s step).
3. Until a slice has been timed, slices are ``first_chunk``.

Small slices cost more per token (a forward pass has a fixed cost), so the rate
measured at a small slice is lower and the next slice smaller: the sizes settle
where a slice takes ``budget`` (n = budget × n / (a + b·n) has its fixed point
at a + b·n = budget), or at ``min_chunk`` when even that takes longer.
``budget`` 0 turns pacing off: every slice is ``max_chunk``. The budget may
change between slices (the embedding batcher sets it from the decode step).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

GROWTH = 4
# Slices whose rate is averaged.
WINDOW = 4


class TimePacer:
    """Slice sizes for one kind of work on one loaded model."""

    def __init__(
        self,
        budget: float,
        max_chunk: int,
        *,
        min_chunk: int = 1,
        first_chunk: int = 1,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.budget = max(0.0, budget)
        self.max_chunk = max(1, max_chunk)
        self.min_chunk = max(1, min(min_chunk, self.max_chunk))
        self.clock = clock
        self._first = max(1, min(first_chunk, self.max_chunk))
        self._recent: deque[tuple[int, float]] = deque(maxlen=WINDOW)
        self._last = self._first

    @property
    def paced(self) -> bool:
        return self.budget > 0

    def rate(self) -> float | None:
        """Tokens per second over the last few slices (None: none timed yet)."""
        tokens = sum(n for n, _ in self._recent)
        seconds = sum(s for _, s in self._recent)
        return tokens / seconds if tokens and seconds > 0 else None

    def chunk(self, rows: int = 1) -> int:
        """Tokens per row for the next slice."""
        if not self.paced:
            return self.max_chunk
        rate = self.rate()
        if rate is None:
            size = self._last
        else:
            size = int(rate * self.budget / max(1, rows))
            size = min(size, self._last * GROWTH)
        return max(self.min_chunk, min(size, self.max_chunk))

    def record(self, tokens: int, seconds: float, chunk: int) -> None:
        """A slice ran ``tokens`` (all rows, padding included) in ``seconds``
        with ``chunk`` tokens per row."""
        if tokens <= 0:
            return
        self._recent.append((tokens, max(seconds, 1e-6)))
        self._last = max(1, chunk)

    def restart(self) -> None:
        """Forget the measured rate (slices start at ``first_chunk`` again)."""
        self._recent.clear()
        self._last = self._first

    def stats(self) -> dict[str, float | int | None]:
        rate = self.rate()
        return {
            "budget_ms": round(self.budget * 1000),
            "max_chunk": self.max_chunk,
            "rate_tok_s": round(rate, 1) if rate is not None else None,
            "next_chunk": self.chunk(),
        }
