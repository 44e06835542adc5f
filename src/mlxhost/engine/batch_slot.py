"""The loaded model's running batch (``engine.batch.TextBatch``): made on the
first join, ended at unload; the counts of batches gone before, for stats."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlxhost.core.types import SamplingParams
from mlxhost.engine.batch import TextBatch
from mlxhost.engine.loading import LoadedModel
from mlxhost.engine.prefill_pace import PrefillPacer
from mlxhost.engine.prefix.session import PrefixCaching
from mlxhost.engine.sampling import make_sampler, token_logprob
from mlxhost.runtime.engine import PreparedPrompt


class BatchSlot:
    def __init__(self, prefill_chunk: int, prefill_step_ms: int, speculative: bool) -> None:
        """``prefill_chunk``: at most this many prompt tokens a step, and about
        ``prefill_step_ms`` of work (``engine.prefill_pace``; 0: always
        ``prefill_chunk``). ``speculative``: prompt lookup for the lone sequence."""
        self.prefill_chunk = prefill_chunk
        self.prefill_step_ms = prefill_step_ms
        self.speculative = speculative
        self.batch: TextBatch | None = None
        self._peak = 0  # the batch peak of models unloaded since start
        # Sequences of unloaded models that started alone / moved into a batch.
        self._counts = {"alone": 0, "moved": 0, "groups": 0, "drafted": 0, "accepted": 0}

    def join(
        self,
        model: LoadedModel,
        prefix: PrefixCaching,
        max_batch: int,
        prompt: PreparedPrompt,
        params: SamplingParams,
        processors: Callable[[SamplingParams], list[Any]],
        emit: Any,
    ) -> int:
        if self.batch is None:
            self.batch = TextBatch(
                model.model,
                eos=model.eos,
                max_batch=max_batch,
                prefill_step=self.prefill_chunk,
                detokenizer=lambda: model.detokenizer_source.detokenizer,
                fetch_prefix=lambda tokens: prefix.fetch_for_batch(model, tokens),
                store_prefix=lambda fed, cache: prefix.store_from_batch(model, fed, cache),
                token_logprob=lambda token, logprobs, top: token_logprob(model.tokenizer, token, logprobs, top),
                kernels=model.kernels.for_step,
                pacer=PrefillPacer(self.prefill_step_ms / 1000, self.prefill_chunk),
                kv=model.kv.quant,
                speculative=self.speculative,
            )
        return int(self.batch.join(prompt.tokens, params, make_sampler(params), processors(params), emit))

    def leave(self, uid: int) -> None:
        if self.batch is not None:
            self.batch.leave(uid)

    def step(self) -> bool:
        return self.batch is not None and bool(self.batch.step())

    def drop(self) -> None:
        """Forget the batch (the next join makes one): made before its size was known."""
        self.batch = None

    def end(self) -> None:
        """At unload: its sequences fail, its counts join the totals."""
        if self.batch is None:
            return
        self.batch.fail(RuntimeError("the model was unloaded"))
        self._peak = max(self._peak, self.batch.peak)
        for key in self._counts:
            self._counts[key] += getattr(self.batch, key)
        self.batch = None

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {"peak": self._peak, **self._counts}
        if self.batch is not None:
            stats["peak"] = max(self._peak, self.batch.peak)
            for key in self._counts:
                stats[key] += getattr(self.batch, key)
            stats["prefill"] = self.batch.pacer.stats()
        return stats
