"""Continuous batching of text prompts: mlx-lm's ``BatchGenerator``, per sequence.

Sequences join between two steps (their cached prefix fetched from the prefix
cache), each with its own sampler (and seed), logits processors (grammar,
penalties, logit_bias), ``max_tokens`` and detokenizer; a step decodes one
token for every running sequence and prefills at most one chunk of the
joining prompts, so a long new prompt delays the running streams by one chunk
only. The chunk is sized by time (``runtime.prefill_pace``: about
``--prefill-step-ms`` of prefill work per step, from the measured prefill
rate), so the running streams keep decoding on a slow CPU as on a GPU.
A sequence that finishes or leaves stores its KV in the prefix cache.

``BatchGenerator`` prefills the prompts it holds together, right-padding each
step's pieces to the longest: a short prompt prefilled beside a long one costs
a whole chunk (on CPU, 7 short prompts sent with a 1,000-token one waited 52 s
for their first token instead of 2.7 s: ``bench/mixed_arrivals.py``). So
prompts wait here until :func:`admit` lets them in: short prompts join a
running long prefill only when padding them costs less than waiting for it,
and a long prompt never pads the short ones in flight.

Runs only on the MLX worker thread (a worker *ticker* calls :meth:`step`).
``BatchGenerator`` is used as is: mlx-lm 0.32 gives it per-sequence samplers,
processors and prompt caches, which is everything a request needs here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import attrs

from mlxhost.core.types import SamplingParams, TokenLogprob, TokenStep
from mlxhost.engine.prefill_pace import PrefillPacer

log = logging.getLogger(__name__)

# What a sequence's consumer is handed: a step, or the error that ended it.
Emit = Callable[[TokenStep | None, BaseException | None], None]


# Steps a prompt may be held back before it goes in whatever its padding costs
# (still within PREFILL_BUDGET_CHUNKS, oldest first: it waits for room, not for
# the short/long rule).
PATIENCE_STEPS = 4

# Prompts prefilling together: at most this many chunks of padded tokens per
# step (BatchGenerator pads every piece to the longest). Long prompts go in 8
# at a time (mlx-lm's default prefill batch), short ones all together: 16
# requests arriving over a few steps then prefill in one or two groups, not
# in groups of 8 (H100, Qwen3-4B shape 4-bit, 16 staggered arrivals: 724 vs
# 650 tok/s, bench/gpu/layer_probe.py).
PREFILL_BUDGET_CHUNKS = 8

# --max-batch auto: 8 on CPU (Qwen 0.5B fp32 on 2 cores: 8 streams 4.4x the
# aggregate of sequential requests, docs/benchmarks.md); on a GPU the largest
# power of two up to AUTO_BATCH_CAP that still adds AUTO_BATCH_GAIN
# aggregate decode speed over the best smaller one, measured at load (choose_batch_size).
AUTO_BATCH = 8
AUTO_BATCH_CAP = 32
AUTO_BATCH_GAIN = 1.15


def choose_batch_size(
    step_seconds: Callable[[int], float], cap: int = AUTO_BATCH_CAP, gain: float = AUTO_BATCH_GAIN
) -> tuple[int, str]:
    """The largest batch (1, 2, 4, ... up to ``cap``) whose aggregate decode rate
    is at least ``gain`` times the best smaller batch's; ``step_seconds(b)`` times
    one decode step of ``b`` sequences. Every size is measured: the rate need not
    rise steadily (on an H100, 4-bit Qwen3-4B shape: 1: 165 tok/s, 2: 131, 4: 231,
    8: 614, 16: 1193, where stopping at the first size that did not pay chose 1).
    Returns the size and the rates seen."""
    best, best_rate = 1, 1 / step_seconds(1)
    seen = [f"1: {best_rate:.0f} tok/s"]
    size = 2
    while size <= cap:
        rate = size / step_seconds(size)
        seen.append(f"{size}: {rate:.0f}")
        if rate >= best_rate * gain:
            best, best_rate = size, rate
        size *= 2
    return best, ", ".join(seen)


def decode_step_seconds(model: Any, size: int, steps: int = 4) -> float:
    """Seconds of one decode step of ``size`` sequences in ``BatchGenerator``
    (prompts of unequal lengths, as real traffic pads them), after a warm step."""
    import time

    from mlx_lm.generate import BatchGenerator

    generator = BatchGenerator(model, stop_tokens=[], completion_batch_size=size, prefill_batch_size=size)
    try:
        prompts = [[(7 * k + 3 * i) % 1000 + 1 for k in range(16 + i % 8)] for i in range(size)]
        generator.insert(prompts, max_tokens=[steps + 4] * size)
        started: set[int] = set()
        while len(started) < size:  # prefill, and each sequence's first token
            started.update(response.uid for response in generator.next_generated())
        generator.next_generated()  # one more: its kernels are compiled now
        began = time.perf_counter()
        for _ in range(steps):
            generator.next_generated()
        return (time.perf_counter() - began) / steps
    finally:
        generator.close()


def admit(
    pending: list[int], prefilling: list[int], chunk: int, waited: list[int] | None = None
) -> list[int]:
    """Which waiting prompts to hand ``BatchGenerator`` now (indices into ``pending``).

    ``pending``: the uncached tokens of each waiting prompt, oldest first;
    ``prefilling``: the tokens still to prefill of each prompt handed over
    earlier; ``chunk``: prefill tokens per step. A *short* prompt (< ``chunk``)
    prefills in one step; padded beside a long one it costs a whole chunk. Short
    prompts go in when nothing long is prefilling, or when padding all of them
    (one chunk each) costs less than the steps the long prefill has left; long
    prompts go in when no short prompt is in flight or going in (their full
    chunks pad nothing). Every prompt goes in within the running prefill's
    steps, so none waits forever.
    """
    shorts = [i for i, n in enumerate(pending) if n < chunk]
    longs = [i for i, n in enumerate(pending) if n >= chunk]
    longest = max(prefilling, default=0)
    chosen: list[int] = []
    if shorts and (longest < chunk or len(shorts) * chunk <= longest):
        chosen = shorts
    short_in_flight = any(0 < n < chunk for n in prefilling) or bool(chosen)
    if longs and not short_in_flight:
        chosen = longs
    overdue = [i for i, steps in enumerate(waited or []) if steps >= PATIENCE_STEPS]
    return _within_budget(sorted(set(chosen) | set(overdue)), pending, prefilling, chunk)


def _within_budget(chosen: list[int], pending: list[int], prefilling: list[int], chunk: int) -> list[int]:
    """The oldest of ``chosen`` whose step pieces, padded to the longest beside
    what is prefilling already, stay within ``PREFILL_BUDGET_CHUNKS`` chunks
    (at least one when nothing prefills, so every prompt gets in)."""
    budget = PREFILL_BUDGET_CHUNKS * chunk
    group = [min(n, chunk) for n in prefilling if n > 0]
    kept: list[int] = []
    for index in chosen:
        trial = [*group, min(pending[index], chunk)]
        if len(trial) * max(trial) > budget and group:
            continue
        group = trial
        kept.append(index)
    return kept


@attrs.define(eq=False)
class _Waiting:
    """What ``BatchGenerator.insert`` needs, kept until :func:`admit` lets it in."""

    tokens: tuple[int, ...]
    cache: list[Any] | None
    sampler: Any
    processors: list[Any]
    fed: int  # tokens[:fed] are in ``cache`` already
    max_tokens: int  # tokens still to generate


@attrs.define(eq=False)
class _Solo:
    """The one sequence decoding outside ``BatchGenerator``, in mlx-lm's
    ``generate_step`` loop: a plain KV cache and integer positions, no padding
    bookkeeping (H100, Qwen3-4B shape 4-bit: 204 tok/s for one request through
    ``stream_generate`` against 121 through ``BatchGenerator``,
    ``bench/gpu/batch_gpu.py``)."""

    sequence: _Sequence
    cache: list[Any]
    fed: list[int]  # every token in ``cache``: prompt, then generated
    todo: list[int]  # prompt tokens still to feed
    sampler: Any
    processors: list[Any]
    context: Any = None  # the tokens the logits processors see (mlx-lm TokenBuffer)
    pending: tuple[Any, Any] | None = None  # (token, logprobs) sampled, not yet emitted nor fed
    # Prompt lookup (runtime.speculative): the prompt and every emitted token,
    # and when to draft; None: this sequence decodes plainly.
    lookup: Any = None
    policy: Any = None


@attrs.define
class _SoloResponse:
    """The fields of a ``BatchGenerator`` response that :meth:`TextBatch._token_step` reads."""

    token: int
    logprobs: Any
    finish_reason: str | None


@attrs.define(eq=False)
class _Sequence:
    emit: Emit
    params: SamplingParams
    reused: int
    detokenizer: Any
    count: int = 0
    uid: int = 0
    waiting: _Waiting | None = None  # not handed to BatchGenerator yet
    waited: int = 0  # steps held back so far
    uncached: int = 0  # prompt tokens left to prefill (until the first token)
    generator_uid: int | None = None


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
        kernels: Callable[..., None] | None = None,
        pacer: PrefillPacer | None = None,
        kv: Any = None,
        speculative: bool = False,
    ) -> None:
        """``kernels(alone=..., rows=..., prefilling=...)`` is told before each
        step whether one sequence decodes alone (mlx-lm's single-sequence loop)
        or a batch of ``rows`` does, and whether the batch prefills a prompt in
        it, to pick the kernels for it (runtime.kernels.KernelChoice.for_step).
        ``pacer`` sizes each step's prefill chunk by time (runtime.prefill_pace);
        without one every chunk is ``prefill_step`` tokens. ``kv`` (a
        ``runtime.kv_quant.KVQuant``): the lone sequence's KV is quantized; the
        batch's stays full precision (mlx-lm 0.32 has no quantized batch cache).
        ``speculative``: the lone sequence drafts tokens by prompt lookup
        (``engine.speculative``) when its request has no logits processors and
        did not opt out (greedy: verified by argmax; sampled: by rejection
        sampling); batched sequences decode plainly."""
        from mlx_lm.generate import BatchGenerator

        from mlxhost.engine.kernels import skip_unpadded_decode_masks

        skip_unpadded_decode_masks()
        self._generator = BatchGenerator(
            model,
            stop_tokens=[[token] for token in sorted(eos)],
            completion_batch_size=max_batch,
            prefill_batch_size=max_batch,  # admit() keeps the padded tokens in budget
            prefill_step_size=prefill_step,
        )
        self._eos = eos
        self._detokenizer = detokenizer
        self._fetch_prefix = fetch_prefix
        self._store_prefix = store_prefix
        self._token_logprob = token_logprob
        self._pacer = pacer or PrefillPacer(0.0, prefill_step)
        self._kv = kv
        self._speculative = speculative
        self.drafted = 0  # prompt-lookup tokens proposed / accepted (for /health)
        self.accepted = 0
        self._decode_seconds: float | None = None  # a decode-only step's wall time, averaged
        self._model = model
        self._kernels = kernels or (lambda **step: None)
        self._solo: _Solo | None = None
        self._sequences: dict[int, _Sequence] = {}  # our ids (stable from join on)
        self._by_generator: dict[int, int] = {}  # BatchGenerator uid -> our id
        self._ids = 0
        self.peak = 0  # the most sequences decoding together so far (for /health)
        self.alone = 0  # sequences that started alone (mlx-lm's single-sequence loop)
        self.moved = 0  # of those, moved into the batch when another joined
        # Prompt groups handed to BatchGenerator (each is one prefill and one
        # first-token step of its own: arrivals a step apart cost one each).
        self.groups = 0

    def __len__(self) -> int:
        return len(self._sequences)

    @property
    def pacer(self) -> PrefillPacer:
        return self._pacer

    def join(
        self,
        tokens: tuple[int, ...],
        params: SamplingParams,
        sampler: Any,
        processors: list[Any],
        emit: Emit,
    ) -> int:
        """Add a sequence; it starts prefilling at a coming step. Returns its id."""
        cache, reused = self._fetch_prefix(tokens)
        reused = min(reused, len(tokens) - 1)  # the last prompt token is always fed
        detokenizer = self._detokenizer()
        detokenizer.reset()
        self._ids += 1
        self._sequences[self._ids] = _Sequence(
            emit,
            params,
            reused,
            detokenizer,
            waiting=_Waiting(tokens, cache, sampler, processors, fed=reused, max_tokens=params.max_tokens),
            uncached=len(tokens) - reused,
            uid=self._ids,
        )
        self.peak = max(self.peak, len(self._sequences))
        return self._ids

    def leave(self, uid: int) -> None:
        """Drop a sequence whose consumer went away (its KV goes to the prefix cache)."""
        sequence = self._sequences.pop(uid, None)
        if sequence is None:
            return
        solo = self._solo
        if solo is not None and solo.sequence is sequence:
            self._solo = None
            if solo.pending is not None:  # its prompt is all in the cache
                self._store(solo.fed, solo.cache)
            return
        if sequence.generator_uid is None:  # never handed over (its cache is a copy)
            return
        self._by_generator.pop(sequence.generator_uid, None)
        caches = self._generator.remove([sequence.generator_uid], return_prompt_caches=True)
        if sequence.generator_uid in caches:
            cache, fed = caches[sequence.generator_uid]
            self._store(fed, cache)

    def _hand_over(self, chunk: int) -> None:
        """Insert the waiting prompts :func:`admit` lets in now (``chunk``: this
        step's prefill tokens per prompt)."""
        waiting = [s for s in self._sequences.values() if s.waiting is not None]
        if not waiting:
            return
        prefilling = [
            s.uncached for s in self._sequences.values() if s.generator_uid is not None and s.count == 0
        ]
        chosen = admit(
            [s.uncached for s in waiting], prefilling, chunk, [s.waited for s in waiting]
        )
        for sequence in waiting:
            sequence.waited += 1
        if chosen:
            self.groups += 1
            log.debug(
                "Batch: %d of %d waiting prompts join (%d tokens to prefill); %d in the batch",
                len(chosen), len(waiting), sum(waiting[i].uncached for i in chosen), len(self._by_generator),
            )
        for index in chosen:
            sequence = waiting[index]
            args, sequence.waiting = sequence.waiting, None
            assert args is not None
            cache = args.cache
            if cache is not None and self._kv is not None:
                from mlxhost.runtime.kv_quant import full_precision

                cache = full_precision(cache)
            (generator_uid,) = self._generator.insert(
                [list(args.tokens[args.fed :])],
                max_tokens=[args.max_tokens],
                caches=[cache] if cache is not None else None,
                all_tokens=[list(args.tokens[: args.fed])],
                samplers=[args.sampler],
                logits_processors=[args.processors],
            )
            sequence.generator_uid = generator_uid
            self._by_generator[generator_uid] = sequence.uid

    def step(self) -> bool:
        """One decode step for every sequence (plus one prefill chunk); True while any run."""
        if not self._sequences:
            return False
        try:
            if self._solo is not None and len(self._sequences) > 1:
                self._end_solo()
            elif self._solo is None and len(self._sequences) == 1 and not self._by_generator:
                (only,) = self._sequences.values()
                if only.waiting is not None:
                    self._start_solo(only)
            if self._solo is not None:
                self._kernels(alone=True)
                self._solo_step()
                return bool(self._sequences)
            chunk = self._pacer.chunk(rows=max(1, len(self._prefilling())))
            self._hand_over(chunk)
            prefilling = self._prefilling()
            if prefilling:  # the chunk for the rows actually prefilling now
                # Pacing serves the streams that decode or wait; with none, the
                # prompts go in the largest chunks.
                others = len(self._sequences) > len(prefilling)
                chunk = self._pacer.chunk(rows=len(prefilling)) if others else self._pacer.max_chunk
            self._generator.prefill_step_size = chunk
            self._kernels(alone=False, rows=len(self._by_generator), prefilling=bool(prefilling))
            decoding = len(self._by_generator) - len(prefilling)
            began = self._pacer.clock()
            with self._generator.stats() as counted:
                _, responses = self._generator.next()
            self._time_step(self._pacer.clock() - began, counted.prompt_tokens, chunk, decoding)
        except Exception as exc:
            self.fail(exc)
            raise
        for sequence in prefilling:
            sequence.uncached = max(1, sequence.uncached - chunk)
        for response in responses:
            found = self._sequences.get(self._by_generator.get(response.uid, -1))
            if found is None:
                continue
            step = self._token_step(found, response)
            if step.finish is not None:
                del self._sequences[found.uid]
                del self._by_generator[response.uid]
                if response.prompt_cache is not None and response.all_tokens is not None:
                    self._store(response.all_tokens, response.prompt_cache)
            found.emit(step, None)
        return bool(self._sequences)

    def _prefilling(self) -> list[_Sequence]:
        """Sequences in ``BatchGenerator`` that have not produced their first token."""
        return [s for s in self._sequences.values() if s.generator_uid is not None and s.count == 0]

    def _time_step(self, seconds: float, prompt_tokens: int, chunk: int, decoding: int) -> None:
        """Tell the pacer what a step's prefill cost: the step's wall time less
        what a decode-only step takes (``BatchGenerator`` overlaps the two, so
        its own prompt_time holds part of the decode), measured on steps that
        prefilled nothing."""
        if prompt_tokens <= 0:
            if decoding:
                last = self._decode_seconds
                self._decode_seconds = seconds if last is None else 0.7 * last + 0.3 * seconds
            return
        decode = self._decode_seconds if decoding and self._decode_seconds is not None else 0.0
        self._pacer.record(prompt_tokens, max(seconds - decode, seconds * 0.1), chunk)

    # -- one sequence alone ----------------------------------------------------
    def _start_solo(self, sequence: _Sequence) -> None:
        """Decode the only sequence in mlx-lm's single-sequence loop."""
        from mlx_lm.models.cache import make_prompt_cache

        from mlxhost.runtime.kv_quant import quantized

        args, sequence.waiting = sequence.waiting, None
        assert args is not None
        cache = quantized(args.cache if args.cache is not None else make_prompt_cache(self._model), self._kv)
        self.alone += 1
        self._solo = _Solo(
            sequence, cache, list(args.tokens[: args.fed]), list(args.tokens[args.fed :]),
            args.sampler, args.processors,
        )
        params = sequence.params
        from mlxhost.engine.sampling import Sampler

        # Greedy, or sampled by a Sampler (rejection sampling reads its target
        # distribution); logits processors change it per position: plain decoding.
        drafts = params.temperature == 0 or isinstance(args.sampler, Sampler)
        if self._speculative and params.speculative and drafts and not args.processors:
            from mlxhost.engine.speculative import Policy, PromptLookup

            self._solo.lookup = PromptLookup(args.tokens)
            self._solo.policy = Policy()

    def _solo_step(self) -> None:
        """One prefill chunk, or one token: ``generate_step``'s loop, a step per tick
        (the next token is computed while this one is read)."""
        import mlx.core as mx
        from mlx_lm.generate import generation_stream

        solo = self._solo
        assert solo is not None
        sequence = solo.sequence
        if solo.pending is None and len(solo.todo) > 1:
            # Prefill all but the last prompt token, a chunk per tick. Alone, no
            # stream waits on this one, so the chunk is the largest (pacing it
            # made a lone 21k-token prompt crawl in 16-token chunks); a request
            # that arrives meanwhile waits one chunk, then the batch paces both.
            size = self._pacer.max_chunk
            chunk = solo.todo[: min(size, len(solo.todo) - 1)]
            began = self._pacer.clock()
            with mx.stream(generation_stream):
                self._model(mx.array(chunk)[None], cache=solo.cache)
                mx.eval([c.state for c in solo.cache])
            self._pacer.record(len(chunk), self._pacer.clock() - began, size)
            solo.fed += chunk
            solo.todo = solo.todo[len(chunk) :]
            sequence.uncached = len(solo.todo)
            return
        if solo.pending is None:
            if solo.processors:
                from mlx_lm.models.cache import TokenBuffer

                solo.context = TokenBuffer(solo.fed)
            solo.pending = self._solo_forward(solo, mx.array(solo.todo))
            solo.fed += solo.todo
            solo.todo = []
        if solo.lookup is not None and self._speculate(solo):
            return
        y, logprobs = solo.pending
        last = sequence.count + 1 >= sequence.params.max_tokens
        solo.pending = None if last else self._solo_forward(solo, y)
        token = int(y.item())
        if not last:
            solo.fed.append(token)  # fed by the forward pass just started
        if solo.lookup is not None:
            solo.lookup.extend([token])
        step = self._token_step(sequence, _SoloResponse(token, logprobs, "length" if last else None))
        if step.finish is not None:
            self._finish_solo(solo)
        elif sequence.count % 256 == 0:
            mx.clear_cache()  # as generate_step does
        sequence.emit(step, None)

    def _speculate(self, solo: _Solo) -> bool:
        """A prompt-lookup step: the pending token and a drafted run in one forward
        pass, emitting the pending token and every accepted draft token (greedy:
        exactly what plain decoding emits; sampled: rejection sampling, the same
        distribution). False: no draft this step (decode plainly)."""
        import mlx.core as mx

        from mlxhost.engine import speculative

        sequence, policy, lookup = solo.sequence, solo.policy, solo.lookup
        assert solo.pending is not None and policy is not None and lookup is not None
        room = sequence.params.max_tokens - sequence.count - 1  # tokens after the pending one
        if room < 1 or not policy.should_draft() or not speculative.can_rewind(solo.cache):
            return False
        y, logprobs = solo.pending
        token = int(y.item())
        draft = lookup.propose_after(token, min(speculative.DRAFT_TOKENS, room))
        if not draft:
            return False
        choices, rows = speculative.verify(self._model, solo.cache, token, draft)
        if sequence.params.temperature == 0:
            kept = speculative.accepted_prefix(draft, choices)
            following = mx.array([choices[kept]])
        else:
            kept, following = speculative.accept_sampled(rows, draft, solo.sampler)
        speculative.rewind(solo.cache, len(draft) - kept)
        policy.record(len(draft), kept)
        self.drafted += len(draft)
        self.accepted += kept
        emitted = [(token, logprobs), *((draft[i], rows[i]) for i in range(kept))]
        solo.fed += [t for t, _ in emitted]
        lookup.extend([t for t, _ in emitted])
        solo.pending = (following, rows[kept])
        for index, (out, scores) in enumerate(emitted):
            last = sequence.count + 1 >= sequence.params.max_tokens
            step = self._token_step(sequence, _SoloResponse(out, scores, "length" if last else None))
            # The pass's first token carries the draft's size; the others were drafted.
            step = attrs.evolve(step, drafted=len(draft)) if index == 0 else attrs.evolve(step, speculated=True)
            if step.finish is not None:
                # The cache holds the run up to here only (what the prefix cache stores).
                speculative.rewind(solo.cache, len(emitted) - index - 1)
                del solo.fed[len(solo.fed) - (len(emitted) - index - 1) :]
                self._finish_solo(solo)
                sequence.emit(step, None)
                return True
            sequence.emit(step, None)
        if sequence.count % 256 < len(emitted):
            mx.clear_cache()
        return True

    def _finish_solo(self, solo: _Solo) -> None:
        sequence = solo.sequence
        self._solo = None
        del self._sequences[sequence.uid]
        self._store(solo.fed, solo.cache)
        if solo.policy is not None and solo.policy.drafts:
            log.info(
                "Prompt lookup: %d of %d drafted tokens accepted (%.0f%%) in %d drafts",
                solo.policy.accepted, solo.policy.drafted, 100 * (solo.policy.rate or 0), solo.policy.drafts,
            )

    def _solo_forward(self, solo: _Solo, inputs: Any) -> tuple[Any, Any]:
        """Feed ``inputs`` and sample the next token (lazily; evaluation starts now)."""
        import mlx.core as mx
        from mlx_lm.generate import generation_stream

        with mx.stream(generation_stream):
            logits = self._model(inputs[None], cache=solo.cache)[:, -1, :]
            if solo.processors:
                # The whole sequence so far, as BatchGenerator hands its processors.
                context = solo.context.update_and_fetch(inputs)
                for processor in solo.processors:
                    logits = processor(context, logits)
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            token = solo.sampler(logprobs)
        mx.async_eval(token, logprobs)
        return token, logprobs[0]

    def _end_solo(self) -> None:
        """Another sequence joined: the solo one goes to ``BatchGenerator`` like a
        prefix-cache hit (its cache holds what it has fed, its prompt is the rest)."""
        solo, self._solo = self._solo, None
        assert solo is not None
        self.moved += 1
        if solo.lookup is not None:
            log.info("Prompt lookup: off for a sequence that moved into the batch (batched "
                     "sequences decode plainly)")
        sequence = solo.sequence
        rest: list[int] = solo.todo
        if solo.pending is not None:
            # A sampled token not yet emitted nor fed: emit it, then it is the prompt.
            y, logprobs = solo.pending
            token = int(y.item())
            last = sequence.count + 1 >= sequence.params.max_tokens
            step = self._token_step(sequence, _SoloResponse(token, logprobs, "length" if last else None))
            if step.finish is not None:
                del self._sequences[sequence.uid]
                self._store(solo.fed, solo.cache)
                sequence.emit(step, None)
                return
            sequence.emit(step, None)
            rest = [token]
        sequence.waiting = _Waiting(
            tuple(solo.fed + rest), solo.cache, solo.sampler, solo.processors,
            fed=len(solo.fed), max_tokens=sequence.params.max_tokens - sequence.count,
        )
        sequence.uncached = len(rest)

    def fail(self, exc: BaseException) -> None:
        """End every sequence with ``exc`` (the batch state can no longer be trusted)."""
        self._solo = None
        sequences, self._sequences = self._sequences, {}
        self._by_generator.clear()
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
