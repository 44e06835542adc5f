"""How many prompt tokens a step may prefill: sized by time, measured online.

A batch step decodes one token for every running sequence, then prefills one
chunk of the prompts that are joining. A fixed chunk in tokens is fair on one
machine and not on another: on a 2-core CPU, Qwen 0.5B fp32 prefilled a
512-token chunk in 4.6 s at the start of a prompt and 33 s at 2,000 tokens of
context (attention grows with it), so every running stream got ~0.1 tok/s while
a long prompt went in. The pacer sizes each chunk so a step does about
``budget`` seconds of prefill work: ``runtime.pacing.TimePacer`` (the rule is
written there; the embedding batcher paces its passes with it too), with the
chunk never below ``MIN_CHUNK`` and starting at ``FIRST_CHUNK``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mlxhost.runtime.pacing import GROWTH, WINDOW, TimePacer

__all__ = ["FIRST_CHUNK", "GROWTH", "MIN_CHUNK", "WINDOW", "PrefillPacer"]

# Fewer tokens than this per step make the long prompt crawl (the fixed cost of
# a forward pass dominates) for little gain to the running streams.
MIN_CHUNK = 16
FIRST_CHUNK = 32


class PrefillPacer(TimePacer):
    """Chunk sizes for one loaded model's prefills (worker thread only)."""

    def __init__(
        self, budget: float, max_chunk: int, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        super().__init__(budget, max_chunk, min_chunk=MIN_CHUNK, first_chunk=FIRST_CHUNK,
                         clock=clock)
