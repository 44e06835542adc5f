"""How many prompt tokens a step may prefill: sized by time, measured online.

A batch step decodes one token for every running sequence, then prefills one
chunk of the prompts that are joining. A fixed chunk in tokens is fair on one
machine and not on another: on a 2-core CPU, Qwen 0.5B fp32 prefilled a
512-token chunk in 4.6 s at the start of a prompt and 33 s at 2,000 tokens of
context (attention grows with it), so every running stream got ~0.1 tok/s while
a long prompt went in. The pacer sizes each chunk so a step does about
``budget`` seconds of prefill work:

1. Every prefill chunk is timed; the rate is the tokens per second of the last
   few chunks (it falls as the context grows, and so does the chunk).
2. The next chunk is ``rate × budget`` tokens per prompt row (rows prefill
   side by side), within ``[MIN_CHUNK, max_chunk]`` and at most ``GROWTH``
   times the last one (one noisy fast reading must not buy a 30 s step).
3. Until a chunk has been timed, chunks start at ``FIRST_CHUNK``.

Small chunks cost more per token (a forward pass has a fixed cost), so the
rate measured at a small chunk is lower and the next chunk smaller: the
sizes settle where a step's prefill takes ``budget`` (n = budget × n / (a + b·n)
has its fixed point at a + b·n = budget), or at ``MIN_CHUNK`` when even that
takes longer. ``budget`` 0 turns pacing off: every chunk is ``max_chunk``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

# Fewer tokens than this per step make the long prompt crawl (the fixed cost of
# a forward pass dominates) for little gain to the running streams.
MIN_CHUNK = 16
FIRST_CHUNK = 32
GROWTH = 4
# Chunks whose rate is averaged.
WINDOW = 4


class PrefillPacer:
    """Chunk sizes for one loaded model's prefills (worker thread only)."""

    def __init__(
        self, budget: float, max_chunk: int, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.budget = max(0.0, budget)
        self.max_chunk = max(1, max_chunk)
        self.clock = clock
        self._recent: deque[tuple[int, float]] = deque(maxlen=WINDOW)
        self._last = min(FIRST_CHUNK, self.max_chunk)

    @property
    def paced(self) -> bool:
        return self.budget > 0

    def rate(self) -> float | None:
        """Prefill tokens per second over the last few chunks (None: none timed yet)."""
        tokens = sum(n for n, _ in self._recent)
        seconds = sum(s for _, s in self._recent)
        return tokens / seconds if tokens and seconds > 0 else None

    def chunk(self, rows: int = 1) -> int:
        """Tokens per prompt row for the next step's prefill."""
        if not self.paced:
            return self.max_chunk
        rate = self.rate()
        if rate is None:
            size = self._last
        else:
            size = int(rate * self.budget / max(1, rows))
            size = min(size, self._last * GROWTH)
        size = max(min(MIN_CHUNK, self.max_chunk), min(size, self.max_chunk))
        return size

    def record(self, tokens: int, seconds: float, chunk: int) -> None:
        """A step prefilled ``tokens`` (all rows, padding included) in ``seconds``
        with ``chunk`` tokens per row."""
        if tokens <= 0:
            return
        self._recent.append((tokens, max(seconds, 1e-6)))
        self._last = max(1, chunk)

    def stats(self) -> dict[str, float | int | None]:
        rate = self.rate()
        return {
            "budget_ms": round(self.budget * 1000),
            "max_chunk": self.max_chunk,
            "rate_tok_s": round(rate, 1) if rate is not None else None,
            "next_chunk": self.chunk(),
        }
