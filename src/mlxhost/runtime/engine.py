"""The engine interface: what the runtime needs from a model backend.

Only :class:`mlxhost.runtime.runtime.Runtime` calls an engine, and every call
runs on the MLX worker thread (see ``runtime.worker``): MLX models are not safe
for concurrent use, so one thread owns all of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from mlxhost.core.types import ModelInfo, RenderedPrompt, SamplingParams, TokenStep

if TYPE_CHECKING:
    from mlxhost.runtime.memory import DeviceMemory


@attrs.frozen
class PreparedPrompt:
    """A prompt ready for generation: token ids plus backend inputs (pixel values...)."""

    tokens: tuple[int, ...]
    extras: Any = None
    # The images' digests (``ImageInput.digest``), in prompt order: prefix-cache keys.
    image_digests: tuple[str, ...] = ()

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)


@attrs.frozen
class EngineMemory:
    """What an engine holds, in bytes (None: this engine cannot say)."""

    weights: int = 0  # the loaded model's arrays (0: none loaded)
    prefix_cache: int = 0  # the KV arrays the prefix cache holds
    active: int | None = None  # MLX's allocator: arrays alive now
    cache: int | None = None  # freed buffers MLX keeps for reuse
    peak: int | None = None  # the most active memory since start
    limit: int | None = None  # the limit MLX was given (mx.set_memory_limit)


class Engine(Protocol):
    name: str

    def load(self, info: ModelInfo, on_warm_up: Callable[[], None] | None = None) -> Any:
        """Load the model from ``info.path`` (on disk already), replacing any
        loaded one (which is unloaded first, once), and warm it up; return its HF
        tokenizer. ``on_warm_up()`` is called (on this thread) when the weights
        are in and the warm-up begins (``/health`` says ``warming`` from then on);
        an engine without a warm-up need not call it."""
        ...

    def unload(self) -> None:
        """Drop the loaded model and return its memory."""
        ...

    def close(self) -> None:
        """At shutdown, after the last ``unload``: finish background work (the
        prefix cache's disk writes)."""
        ...

    def prepare(self, prompt: RenderedPrompt) -> PreparedPrompt:
        """Tokenize a rendered prompt (expanding image tokens, if any)."""
        ...

    def generate(
        self,
        prompt: PreparedPrompt,
        params: SamplingParams,
        should_stop: Callable[[], bool],
    ) -> Iterator[TokenStep]:
        """Generate tokens; the last step carries ``finish``. Stops early, between
        tokens, once ``should_stop()`` is true."""
        ...

    # Batching (``runtime.batch``): sequences that decode together, one step per
    # worker turn. An engine that never batches answers False to ``batchable``.
    def batchable(self, prompt: PreparedPrompt) -> bool:
        """Whether this prompt can join the running batch (else ``generate`` runs it alone)."""
        ...

    def join(
        self,
        prompt: PreparedPrompt,
        params: SamplingParams,
        emit: Callable[[TokenStep | None, BaseException | None], None],
    ) -> int:
        """Add a sequence to the batch; ``emit`` gets each of its steps (the last
        carries ``finish``) or the error that ended it. Returns its id."""
        ...

    def leave(self, uid: int) -> None:
        """Remove a sequence whose consumer went away."""
        ...

    def step(self) -> bool:
        """Advance the batch one token; True while sequences remain."""
        ...

    def batch_limit(self) -> int | None:
        """The most sequences the loaded model should batch, when the engine chose
        it at load (``--max-batch auto``); None: the configured limit stands."""
        ...

    # Memory (``runtime.memory``): the runtime budgets, the engine measures and obeys.
    def device_memory(self) -> DeviceMemory | None:
        """The memory the device offers (Metal's recommended working set, CUDA's
        memory, else RAM); None when unknown (then only a --max-memory in bytes
        sets a budget)."""
        ...

    def set_memory_limit(self, budget: int) -> None:
        """Hand the budget to the backend (MLX: memory, wired and cache limits)."""
        ...

    def memory(self) -> EngineMemory:
        """Current figures; safe to call from any thread (it reads counters only)."""
        ...

    def shrink_prefix_cache(self, max_bytes: int) -> int:
        """Drop least recently used prefix-cache entries until it holds at most
        ``max_bytes``; returns the bytes it holds now."""
        ...

    def stats(self) -> dict[str, Any]:
        """Engine figures for ``/health`` (e.g. ``{"prefix_cache": {...}}``); safe to
        call from any thread."""
        ...
