"""The MLX engine: mlx-vlm for vision checkpoints, mlx-lm for text-only ones.

Text-only checkpoints (``gemma3_text``, ``qwen2``...) load with mlx-lm: mlx-vlm
accepts them too, but it prepends a second BOS to text-only Gemma prompts, which
changes the output. Both paths take token ids we tokenized ourselves, so the
prompt the model sees is exactly the rendered template.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mlxhost.runtime.engine import PreparedPrompt
from mlxhost.types import RenderedPrompt, SamplingParams, TokenStep

log = logging.getLogger(__name__)


def eos_token_ids(path: Path, config: dict[str, Any], tokenizer: Any) -> set[int]:
    """Every id that ends a turn: config, generation_config and the tokenizer's own."""
    ids: set[int] = set()
    sources = [config, config.get("text_config") or {}]
    gen_config = path / "generation_config.json"
    if gen_config.is_file():
        sources.append(json.loads(gen_config.read_text()))
    for source in sources:
        value = source.get("eos_token_id")
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def generation_defaults(path: Path) -> dict[str, float]:
    """Sampling defaults the checkpoint recommends (generation_config.json)."""
    gen_config = path / "generation_config.json"
    if not gen_config.is_file():
        return {}
    data = json.loads(gen_config.read_text())
    return {k: data[k] for k in ("temperature", "top_p") if isinstance(data.get(k), (int, float))}


class MLXEngine:
    name = "mlx"

    def __init__(self) -> None:
        self._model: Any = None
        self._processor: Any = None  # mlx-vlm processor (vision checkpoints only)
        self._tokenizer: Any = None  # Hugging Face tokenizer
        self._detokenizer_source: Any = None  # mlx-lm TokenizerWrapper
        self._eos: set[int] = set()
        self._is_vlm = False
        self.defaults: dict[str, float] = {}

    # -- loading --------------------------------------------------------------
    def load(self, model_id: str, path: Path, config: dict[str, Any]) -> Any:
        from mlx_lm.tokenizer_utils import TokenizerWrapper

        self.unload()
        started = time.perf_counter()
        self._is_vlm = "vision_config" in config
        if self._is_vlm:
            import mlx_vlm

            model, processor = mlx_vlm.load(str(path))
            tokenizer = getattr(processor, "tokenizer", processor)
            self._processor = processor
        else:
            import mlx_lm

            model, wrapper = mlx_lm.load(str(path))
            tokenizer = wrapper._tokenizer
        self._model = model
        self._tokenizer = tokenizer
        self._detokenizer_source = TokenizerWrapper(tokenizer)
        self._eos = eos_token_ids(path, config, tokenizer)
        self.defaults = generation_defaults(path)
        log.info(
            "Loaded %s with %s in %.1fs",
            model_id,
            "mlx-vlm" if self._is_vlm else "mlx-lm",
            time.perf_counter() - started,
        )
        return tokenizer

    def unload(self) -> None:
        if self._model is None:
            return
        import mlx.core as mx

        self._model = self._processor = self._tokenizer = self._detokenizer_source = None
        gc.collect()
        # Without this the freed buffers stay in MLX's cache and RSS never drops.
        mx.clear_cache()

    # -- prompts --------------------------------------------------------------
    def prepare(self, prompt: RenderedPrompt) -> PreparedPrompt:
        if prompt.images:
            raise NotImplementedError("image prompts are handled by the vision pipeline")
        # The template already wrote BOS and every special token it wants.
        tokens = self._tokenizer.encode(prompt.text, add_special_tokens=False)
        return PreparedPrompt(tokens=tuple(tokens))

    # -- generation -----------------------------------------------------------
    def generate(
        self,
        prompt: PreparedPrompt,
        params: SamplingParams,
        should_stop: Callable[[], bool],
    ) -> Iterator[TokenStep]:
        import mlx.core as mx
        from mlx_lm.sample_utils import make_sampler

        if params.seed is not None:
            mx.random.seed(params.seed)
        sampler = make_sampler(temp=params.temperature, top_p=params.top_p)
        input_ids = mx.array(prompt.tokens)
        if self._is_vlm:
            from mlx_vlm.generate.ar import generate_step as vlm_generate_step

            steps = vlm_generate_step(
                input_ids[None],
                self._model,
                None,
                None,
                max_tokens=params.max_tokens,
                sampler=sampler,
            )
        else:
            from mlx_lm.generate import generate_step

            steps = generate_step(
                input_ids, self._model, max_tokens=params.max_tokens, sampler=sampler
            )
        detokenizer = self._detokenizer_source.detokenizer
        detokenizer.reset()
        try:
            for count, (token, _logprobs) in enumerate(steps, start=1):
                token = int(token)
                if token in self._eos:
                    detokenizer.finalize()
                    yield TokenStep(token, detokenizer.last_segment, finish="stop")
                    return
                detokenizer.add_token(token)
                if count >= params.max_tokens:
                    detokenizer.finalize()
                    yield TokenStep(token, detokenizer.last_segment, finish="length")
                    return
                yield TokenStep(token, detokenizer.last_segment)
                if should_stop():
                    return
        finally:
            steps.close()
