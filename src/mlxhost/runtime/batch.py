"""Continuous batching of text prompts: mlx-lm's ``BatchGenerator``, per sequence.

Sequences join between two steps (their cached prefix fetched from the prefix
cache), each with its own sampler (and seed), logits processors (grammar,
penalties, logit_bias), ``max_tokens`` and detokenizer; a step decodes one
token for every running sequence and prefills at most one chunk of the
joining prompts, so a long new prompt delays the running streams by one chunk
only. A sequence that finishes or leaves stores its KV in the prefix cache.

Runs only on the MLX worker thread (a worker *ticker* calls :meth:`step`).
``BatchGenerator`` is used as is: mlx-lm 0.32 gives it per-sequence samplers,
processors and prompt caches, which is everything a request needs here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import attrs

from mlxhost.types import SamplingParams, TokenLogprob, TokenStep

log = logging.getLogger(__name__)

# What a sequence's consumer is handed: a step, or the error that ended it.
Emit = Callable[[TokenStep | None, BaseException | None], None]


@attrs.define(eq=False)
class _Sequence:
    emit: Emit
    params: SamplingParams
    reused: int
    detokenizer: Any
    count: int = 0


class TextBatch:
    """The running batch of one loaded text model."""

    def __init__(
        self,
        model: Any,
        *,
        eos: set[int],
        max_batch: int,
        prefill_step: int,
        detokenizer: Callable[[], Any],
        fetch_prefix: Callable[[tuple[int, ...]], tuple[list[Any] | None, int]],
        store_prefix: Callable[[tuple[int, ...], list[Any]], None],
        token_logprob: Callable[[int, Any, int], TokenLogprob],
    ) -> None:
        from mlx_lm.generate import BatchGenerator

        self._generator = BatchGenerator(
            model,
            stop_tokens=[[token] for token in sorted(eos)],
            completion_batch_size=max_batch,
            prefill_batch_size=min(max_batch, 8),
            prefill_step_size=prefill_step,
        )
        self._eos = eos
        self._detokenizer = detokenizer
        self._fetch_prefix = fetch_prefix
        self._store_prefix = store_prefix
        self._token_logprob = token_logprob
        self._sequences: dict[int, _Sequence] = {}
        self.peak = 0  # the most sequences decoding together so far (for /health)

    def __len__(self) -> int:
        return len(self._sequences)

    def join(
        self,
        tokens: tuple[int, ...],
        params: SamplingParams,
        sampler: Any,
        processors: list[Any],
        emit: Emit,
    ) -> int:
        """Add a sequence; it starts prefilling at the next step. Returns its id."""
        cache, reused = self._fetch_prefix(tokens)
        reused = min(reused, len(tokens) - 1)  # the last prompt token is always fed
        (uid,) = self._generator.insert(
            [list(tokens[reused:])],
            max_tokens=[params.max_tokens],
            caches=[cache] if cache is not None else None,
            all_tokens=[list(tokens[:reused])],
            samplers=[sampler],
            logits_processors=[processors],
        )
        detokenizer = self._detokenizer()
        detokenizer.reset()
        self._sequences[uid] = _Sequence(emit, params, reused, detokenizer)
        self.peak = max(self.peak, len(self._sequences))
        return uid

    def leave(self, uid: int) -> None:
        """Drop a sequence whose consumer went away (its KV goes to the prefix cache)."""
        if self._sequences.pop(uid, None) is None:
            return
        caches = self._generator.remove([uid], return_prompt_caches=True)
        if uid in caches:
            cache, fed = caches[uid]
            self._store(fed, cache)

    def step(self) -> bool:
        """One decode step for every sequence (plus one prefill chunk); True while any run."""
        if not self._sequences:
            return False
        try:
            _, responses = self._generator.next()
        except Exception as exc:
            self.fail(exc)
            raise
        for response in responses:
            sequence = self._sequences.get(response.uid)
            if sequence is None:
                continue
            step = self._token_step(sequence, response)
            if step.finish is not None:
                del self._sequences[response.uid]
                if response.prompt_cache is not None and response.all_tokens is not None:
                    self._store(response.all_tokens, response.prompt_cache)
            sequence.emit(step, None)
        return bool(self._sequences)

    def fail(self, exc: BaseException) -> None:
        """End every sequence with ``exc`` (the batch state can no longer be trusted)."""
        sequences, self._sequences = self._sequences, {}
        for sequence in sequences.values():
            sequence.emit(None, exc)

    def _token_step(self, sequence: _Sequence, response: Any) -> TokenStep:
        token = int(response.token)
        sequence.count += 1
        cached = sequence.reused if sequence.count == 1 else None
        top = sequence.params.logprobs
        scored = self._token_logprob(token, response.logprobs, top) if top is not None else None
        detokenizer = sequence.detokenizer
        if token in self._eos:
            detokenizer.finalize()
            return TokenStep(token, detokenizer.last_segment, "stop", cached, scored)
        detokenizer.add_token(token)
        finish = response.finish_reason  # BatchGenerator counts max_tokens per sequence
        if finish is not None:
            detokenizer.finalize()
        return TokenStep(token, detokenizer.last_segment, finish, cached, scored)

    def _store(self, fed: list[int], cache: list[Any]) -> None:
        try:
            self._store_prefix(tuple(int(t) for t in fed), cache)
        except Exception:  # never fail a request over caching
            log.exception("Prefix cache: storing a batch sequence failed")
