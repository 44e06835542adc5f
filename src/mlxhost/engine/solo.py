"""One sequence alone (an image prompt, a vision model, or batching off): the
prefix-cache fetch, the text or vision step loop, and the tokens as ``TokenStep``s."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from mlxhost.core.types import SamplingParams, TokenStep
from mlxhost.engine.loading import LoadedModel
from mlxhost.engine.prefix.session import PrefixCaching
from mlxhost.engine.sampling import make_sampler, token_logprob
from mlxhost.engine.text_steps import text_steps
from mlxhost.engine.vision_steps import vision_steps
from mlxhost.runtime.engine import PreparedPrompt


def generate(
    model: LoadedModel,
    prefix: PrefixCaching,
    prompt: PreparedPrompt,
    params: SamplingParams,
    should_stop: Callable[[], bool],
    processors: Callable[[SamplingParams], list[Any]],
) -> Iterator[TokenStep]:
    model.kernels.alone(True)  # one sequence: the stock quantized classes
    sampler = make_sampler(params)
    chosen = processors(params) or None
    turn = prefix.start(model, prompt)
    generated: list[int] = []
    failed = False
    steps = None
    try:
        if model.is_vlm:
            steps = vision_steps(
                model.model, prompt.tokens, turn.reused, turn.cache, params.max_tokens, sampler,
                turn.vlm_kwargs, chosen, pixel_values=turn.pixel_values, snapshot=turn.snapshot,
            )
        else:
            steps = text_steps(
                model.model, prompt.tokens, turn.reused, turn.cache, params.max_tokens, sampler,
                chosen, snapshot=turn.snapshot,
            )
        detokenizer = model.detokenizer_source.detokenizer
        detokenizer.reset()
        for count, (token, logprobs) in enumerate(steps, start=1):
            token = int(token)
            generated.append(token)
            cached = turn.reused if count == 1 else None
            scored = (
                token_logprob(model.tokenizer, token, logprobs, params.logprobs)
                if params.logprobs is not None
                else None
            )
            if token in model.eos:
                detokenizer.finalize()
                yield TokenStep(token, detokenizer.last_segment, "stop", cached, scored)
                return
            detokenizer.add_token(token)
            if count >= params.max_tokens:
                detokenizer.finalize()
                yield TokenStep(token, detokenizer.last_segment, "length", cached, scored)
                return
            yield TokenStep(token, detokenizer.last_segment, None, cached, scored)
            if should_stop():
                return
    except Exception:
        failed = True  # the cache may hold half a step: keep only the snapshots
        raise
    finally:
        if steps is not None:
            steps.close()
        # Also on GeneratorExit (the client left): what was fed is still valid.
        # Not from another thread: a generator abandoned when the worker
        # stopped (a lost distributed group) is finalized wherever the
        # garbage collector runs, and MLX belongs to the worker thread.
        if threading.get_ident() == model.thread:
            turn.store(generated, failed)
