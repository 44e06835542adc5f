"""The tokens a logits processor has not seen yet."""

from __future__ import annotations

from typing import Any


class NewTokens:
    """mlx-lm calls a logits processor with the whole sequence so far (the
    prompt too, or nothing on a batch's first step); the first call's length
    marks where generation starts, and each call after it may bring several
    tokens (a speculative step accepts more than one)."""

    def __init__(self) -> None:
        self._start: int | None = None
        self._seen = 0

    def take(self, tokens: Any) -> list[int]:
        """The tokens generated since the last call (none on the first)."""
        import numpy as np

        length = 0 if tokens is None else int(tokens.shape[-1])
        if self._start is None:
            self._start = length
        generated = length - self._start
        if generated <= self._seen:
            return []
        # numpy reads the evaluated buffer: no MLX op queued behind the pass.
        new = np.asarray(tokens).reshape(-1)[length - (generated - self._seen) :].tolist()
        self._seen = generated
        return [int(token) for token in new]
