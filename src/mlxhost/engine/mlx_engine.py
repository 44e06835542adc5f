"""The MLX engine: the runtime's ``Engine`` over mlx-lm (text) and mlx-vlm (vision).

A thin facade: each concern lives in its own module and this class wires them.

- ``engine.loading``: load a model (``LoadedModel``), its tokenizer, its KV format;
- ``engine.warmup``: the first prompts after a load;
- ``engine.batch_probe``: ``--max-batch auto``, measured once and remembered;
- ``engine.memory_limits``: MLX's memory limits and counters;
- ``engine.prefix.session``: the prefix cache, fetch → snapshot → store;
- ``engine.solo`` with ``engine.text_steps`` / ``engine.vision_steps``: one sequence alone;
- ``engine.batch_slot``: the running batch of text sequences (``engine.batch``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mlxhost.core.types import ModelInfo, RenderedPrompt, SamplingParams, TokenStep
from mlxhost.engine import batch, loading, solo
from mlxhost.engine.batch_probe import BatchSizer
from mlxhost.engine.batch_slot import BatchSlot
from mlxhost.engine.constrain import GuidanceTokenizers
from mlxhost.engine.loading import LoadedModel, LoadPolicy, TokenizerCache
from mlxhost.engine.memory_limits import MLXMemory
from mlxhost.engine.prefix.cache import DEFAULT_PREFIX_CACHE_BYTES, PrefixCache
from mlxhost.engine.prefix.session import PrefixCaching
from mlxhost.engine.sampling import request_processors
from mlxhost.engine.vision_inputs import prepare_vision_inputs
from mlxhost.engine.warmup import WarmUp
from mlxhost.runtime.engine import EngineMemory, PreparedPrompt
from mlxhost.runtime.memory import DeviceMemory

log = logging.getLogger(__name__)


class MLXEngine:
    name = "mlx"

    def __init__(
        self,
        prefix_cache_bytes: int | None = DEFAULT_PREFIX_CACHE_BYTES,
        *,
        warmup: bool = True,
        max_batch: int = 1,
        prefill_chunk: int = 512,
        prefill_step_ms: int = 0,
        kv_bits: int | None = None,
        kv_group_size: int | None = None,
        speculative: bool = False,
        weights: str = "auto",
        flat_qmm: str = "auto",
        cpu_split: str = "auto",
        prefix_cache_dir: str | None = None,
        prefix_cache_disk_bytes: int | None = None,
        sharder: Callable[[Any, Mapping[str, Any]], str] | None = None,
        batch_probe_dir: str | Path | None = None,
    ) -> None:
        """``prefix_cache_bytes``: the KV prefix cache's budget (None: the default
        2 GiB; 0 disables it). ``max_batch`` > 1 decodes text prompts of a text
        model together (``engine.batch``), prefilling at most ``prefill_chunk``
        tokens a step, and about ``prefill_step_ms`` of work (``engine.prefill_pace``;
        0: always ``prefill_chunk``).
        ``kv_bits``/``kv_group_size``: the KV cache's quantization (``runtime.kv_quant``;
        a model's config-file values win).
        ``weights``, ``flat_qmm`` and ``cpu_split`` are the load-time policies of
        ``engine.kernels``.
        ``max_batch`` 0 is auto: ``engine.batch.AUTO_BATCH`` on CPU, measured per
        model at load on a GPU (``batch_limit``), once: the measurement is kept in
        ``batch_probe_dir`` (default ``~/.cache/mlxhost/batch-probe``,
        ``engine.batch_probe``). ``sharder``: this rank's split of a distributed group."""
        self.configured_batch = max_batch
        self.max_batch = max_batch or batch.AUTO_BATCH  # the loaded model's limit
        self._batch_choice = f"--max-batch {max_batch}" if max_batch else "auto"
        self._sizer = BatchSizer(batch_probe_dir)
        self._policy = LoadPolicy(weights, flat_qmm, cpu_split, kv_bits, kv_group_size)
        self._sharder = sharder
        self.warmup = warmup
        self._warm_up = WarmUp()
        if prefix_cache_bytes is None:
            prefix_cache_bytes = DEFAULT_PREFIX_CACHE_BYTES
        self.prefix = PrefixCaching(prefix_cache_bytes, prefix_cache_dir, prefix_cache_disk_bytes, sharder)
        self.batches = BatchSlot(prefill_chunk, prefill_step_ms, speculative)
        self._tokenizers = TokenizerCache()
        self._guidance = GuidanceTokenizers()
        self._memory = MLXMemory()
        self.loaded: LoadedModel | None = None
        self._kv_stats: dict[str, Any] = {}  # the last loaded model's, kept after unload

    @property
    def prefix_cache(self) -> PrefixCache | None:
        """The RAM tier (None when disabled); tests and benchmarks may swap it."""
        return self.prefix.cache

    @prefix_cache.setter
    def prefix_cache(self, cache: PrefixCache | None) -> None:
        self.prefix.cache = cache

    @property
    def sharded(self) -> str | None:
        """How the loaded model was split (distributed)."""
        return self.loaded.sharded if self.loaded is not None else None

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "batch": {"max": self.max_batch, "chosen": self._batch_choice, **self.batches.stats()}
        }
        if self._kv_stats:
            stats["kv_cache"] = self._kv_stats
        if self.loaded is not None:
            stats["kernels"] = self.loaded.kernels.as_dict()
        prefix = self.prefix.stats()
        if prefix is not None:
            stats["prefix_cache"] = prefix
        return stats

    def close(self) -> None:
        self.prefix.close()

    # -- memory ---------------------------------------------------------------
    def device_memory(self) -> DeviceMemory | None:
        return self._memory.device()

    def set_memory_limit(self, budget: int) -> None:
        self._memory.set_limit(budget)

    def memory(self) -> EngineMemory:
        pc = self.prefix.cache
        weights = self.loaded.weight_bytes if self.loaded is not None else 0
        return self._memory.report(weights, pc.nbytes if pc is not None else 0)

    def shrink_prefix_cache(self, max_bytes: int) -> int:
        pc = self.prefix.cache
        return pc.shrink_to(max_bytes) if pc is not None else 0

    # -- loading --------------------------------------------------------------
    def load(self, info: ModelInfo, on_warm_up: Callable[[], None] | None = None) -> Any:
        loading.check_loadable(info)  # before unloading: the loaded model stays
        self.unload()
        started = time.perf_counter()
        loaded = self.loaded = loading.load_model(
            info, self._policy, self._tokenizers,
            max_batch=self.configured_batch or batch.AUTO_BATCH_CAP, sharder=self._sharder,
        )
        self._kv_stats = loaded.kv.stats
        loaded_in = time.perf_counter() - started
        self.prefix.activate(loaded, info)
        if on_warm_up is not None:
            on_warm_up()
        # A size measured on an earlier start is known before the warm-up, which
        # then warms the batch path at that size.
        remembered = None if self.configured_batch else self._remembered_batch_size(info)
        if remembered is not None:
            self.max_batch, self._batch_choice = remembered
        warmup = (
            self._warm_up.run(self, loaded.tokenizer, self.prefix, max_batch=self.max_batch, vision=loaded.is_vlm)
            if self.warmup else 0.0
        )
        if not self.configured_batch and remembered is None:
            self.max_batch, self._batch_choice = self._choose_batch_size(info)
        log.info(
            "Loaded %s with %s in %.1fs (+%.2fs warm-up); weights %s, 2-D qmm input %s (%s); "
            "max batch %d (%s); KV cache %s",
            info.id, "mlx-vlm" if loaded.is_vlm else "mlx-lm", loaded_in, warmup,
            loaded.kernels.weights, "on" if loaded.kernels.flat_qmm else "off", loaded.kernels.reason,
            self.max_batch, self._batch_choice, loaded.kv.line,
        )
        return loaded.tokenizer

    def _remembered_batch_size(self, info: ModelInfo) -> tuple[int, str] | None:
        return self._sizer.remembered(info, self._loaded(), grouped=self._sharder is not None)

    def _choose_batch_size(self, info: ModelInfo) -> tuple[int, str]:
        """``--max-batch auto`` for the model just loaded (``engine.batch_probe``)."""
        loaded, grouped = self._loaded(), self._sharder is not None
        fixed = self._sizer.unmeasured(loaded, grouped)
        if fixed is not None:
            return fixed
        self.batches.drop()  # the warm-up's batch was made before the size was known
        return self._sizer.measure(info, loaded, grouped)

    def batch_limit(self) -> int | None:
        return None if self.configured_batch else self.max_batch

    def unload(self) -> None:
        loaded, self.loaded = self.loaded, None
        self.prefix.deactivate(loaded.id if loaded is not None else None)
        if loaded is not None:
            loaded.kernels.alone(True)  # the stock layers, OpenBLAS's threads back
        self.batches.end()
        if loaded is None:
            return
        del loaded
        loading.free_memory()

    # -- prompts --------------------------------------------------------------
    def prepare(self, prompt: RenderedPrompt) -> PreparedPrompt:
        loaded = self._loaded()
        if prompt.images:
            if loaded.processor is None:
                raise ValueError("this model has no image processor")
            tokens, inputs = prepare_vision_inputs(
                loaded.processor, loaded.model, prompt.text, [i.image for i in prompt.images]
            )
            return PreparedPrompt(
                tokens=tuple(tokens),
                extras=inputs,
                image_digests=tuple(i.digest for i in prompt.images),
            )
        # The template already wrote BOS and every special token it wants.
        tokens = loaded.tokenizer.encode(prompt.text, add_special_tokens=False)
        return PreparedPrompt(tokens=tuple(tokens))

    # -- batched generation -------------------------------------------------------
    def batchable(self, prompt: PreparedPrompt) -> bool:
        """Text prompts of a text (mlx-lm) model batch; image prompts and
        mlx-vlm models run alone (their generate loop is mlx-vlm's own)."""
        loaded = self.loaded
        return self.max_batch > 1 and loaded is not None and not loaded.is_vlm and not prompt.extras

    def join(self, prompt: PreparedPrompt, params: SamplingParams, emit: Any) -> int:
        return self.batches.join(self._loaded(), self.prefix, self.max_batch, prompt, params, self._processors, emit)

    def leave(self, uid: int) -> None:
        self.batches.leave(uid)

    def step(self) -> bool:
        return self.batches.step()

    # -- generation -----------------------------------------------------------
    def generate(
        self,
        prompt: PreparedPrompt,
        params: SamplingParams,
        should_stop: Callable[[], bool],
    ) -> Iterator[TokenStep]:
        # A generator itself: nothing runs until the first step is asked for.
        yield from solo.generate(self._loaded(), self.prefix, prompt, params, should_stop, self._processors)

    def _processors(self, params: SamplingParams) -> list[Any]:
        loaded = self._loaded()
        return request_processors(
            params, lambda: self._guidance.of(loaded.tokenizer, loaded.vocab_size, loaded.eos)
        )

    def _loaded(self) -> LoadedModel:
        if self.loaded is None:
            raise RuntimeError("no model is loaded")
        return self.loaded
