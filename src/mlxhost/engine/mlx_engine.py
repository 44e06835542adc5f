"""The MLX engine: mlx-vlm for vision checkpoints, mlx-lm for text-only ones.

Text-only checkpoints (``gemma3_text``, ``qwen2``...) load with mlx-lm: mlx-vlm
accepts them too, but it prepends a second BOS to text-only Gemma prompts, which
changes the output. Both paths take token ids we tokenized ourselves, so the
prompt the model sees is exactly the rendered template.

Every request goes through the prefix cache (``runtime.prefix_cache``): the
nearest cached prefix of the prompt is copied out and only the rest is
prefilled. Two caches are stored per request: a snapshot at the end of the
prompt (all but its last token, taken before generation) and the cache after
the reply (prompt + generated tokens, which the next turn repeats). The
snapshot matters for caches that cannot be cut back (sliding-window layers
past their window): when the next prompt does not repeat the reply token for
token, the snapshot is still an exact prefix of it.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import attrs

from mlxhost.core import model_config as facts
from mlxhost.core.types import ModelInfo, RenderedPrompt, SamplingParams, TokenLogprob, TokenStep
from mlxhost.engine.prefix.cache import (
    DEFAULT_PREFIX_CACHE_BYTES,
    MLXCacheAdapter,
    PrefixCache,
    has_window,
    key_with_images,
)
from mlxhost.runtime.engine import EngineMemory, PreparedPrompt
from mlxhost.runtime.memory import DeviceMemory, ram_bytes

log = logging.getLogger(__name__)

# Tokenizers of recently used text models kept across swaps.
TOKENIZERS_KEPT = 4

# Tokens per prefill forward pass, as mlx-lm's generate_step: bounds peak memory.
PREFILL_STEP = 2048
# Prompt lengths the GPU warm-up runs alone (each extends the one before).
GPU_WARMUP_LENGTHS = (8, 64, 512)
# The disk tier's budget when --prefix-cache-dir is given without --prefix-cache-disk-mib.
DEFAULT_DISK_BYTES = 8 << 30
# The warm-up's own prefix cache (GPU): a few short prompts' KV.
WARMUP_CACHE_BYTES = 256 * 1024 * 1024


def eos_token_ids(path: Path, config: Mapping[str, Any], tokenizer: Any) -> set[int]:
    """Every id that ends a turn: config, generation_config and the tokenizer's own."""
    sources: list[Mapping[str, Any]] = [config]
    gen_config = path / "generation_config.json"
    if gen_config.is_file():
        sources.append(json.loads(gen_config.read_text()))
    ids = facts.eos_ids(*sources)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def release_free_heap() -> None:
    """Return freed heap memory to the OS (glibc keeps it otherwise).

    After a few frees of large buffers glibc raises its mmap threshold, so a
    model's weight buffers land on the heap, and freeing them leaves RSS high
    until ``malloc_trim``. No-op where glibc is absent.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


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
        model together (``runtime.batch``), prefilling at most ``prefill_chunk``
        tokens a step, and about ``prefill_step_ms`` of work (``runtime.prefill_pace``;
        0: always ``prefill_chunk``).
        ``kv_bits``/``kv_group_size``: the KV cache's quantization (``runtime.kv_quant``;
        a model's config-file values win).
        ``weights``, ``flat_qmm`` and ``cpu_split`` are the load-time policies of
        ``runtime.kernels``.
        ``max_batch`` 0 is auto: ``runtime.batch.AUTO_BATCH`` on CPU, measured per
        model at load on a GPU (``batch_limit``), once: the measurement is kept in
        ``batch_probe_dir`` (default ``~/.cache/mlxhost/batch-probe``,
        ``runtime.batch_probe``)."""
        from mlxhost.engine.batch import AUTO_BATCH
        from mlxhost.engine.batch_probe import BatchProbeCache

        self.configured_batch = max_batch
        self.max_batch = max_batch or AUTO_BATCH  # the loaded model's limit
        self._batch_choice = f"--max-batch {max_batch}" if max_batch else "auto"
        self._batch_probes = BatchProbeCache(batch_probe_dir)
        self.weights = weights
        self.flat_qmm = flat_qmm
        self.cpu_split = cpu_split
        self._sharder = sharder
        self._mlx_thread: int | None = None  # set by load()
        self.sharded: str | None = None  # how the loaded model was split (distributed)
        self._kernels: Any = None  # runtime.kernels.KernelChoice of the loaded model
        self.prefill_chunk = prefill_chunk
        self.prefill_step_ms = prefill_step_ms
        self.kv_bits, self.kv_group_size = kv_bits, kv_group_size
        self.speculative = speculative  # prompt lookup for the lone batch sequence
        self._kv: Any = None  # runtime.kv_quant.KVQuant of the loaded model (None: full precision)
        self._kv_stats: dict[str, Any] = {}
        self._batch: Any = None  # runtime.batch.TextBatch of the loaded model, made on first use
        self._peak = 0  # the batch peak of models unloaded since start
        # Sequences of unloaded models that started alone / moved into a batch.
        self._batch_counts = {"alone": 0, "moved": 0, "groups": 0, "drafted": 0, "accepted": 0}
        self._weights = 0  # bytes of the loaded model's arrays
        self._memory_limit: int | None = None
        if prefix_cache_bytes is None:
            prefix_cache_bytes = DEFAULT_PREFIX_CACHE_BYTES
        # None when disabled. Only touched on the worker thread (its stats are
        # safe to read from anywhere); tests and benchmarks may swap it.
        self.prefix_cache: PrefixCache | None = (
            PrefixCache(MLXCacheAdapter(), max_bytes=prefix_cache_bytes, spill=self._spill)
            if prefix_cache_bytes > 0
            else None
        )
        # The disk tier (``runtime.prefix_disk``): entries the RAM tier lets go of.
        self._disk: Any = None
        if prefix_cache_dir and self.prefix_cache is not None:
            from mlxhost.engine.prefix.disk import DiskTier, MLXCodec

            self._disk = DiskTier(
                prefix_cache_dir,
                DEFAULT_DISK_BYTES if prefix_cache_disk_bytes is None else prefix_cache_disk_bytes,
                MLXCodec(),
                self.prefix_cache.adapter,
            )
        self.warmup = warmup
        self._tokenizers: OrderedDict[tuple[str, float], Any] = OrderedDict()
        self._model_id: str | None = None
        self._model: Any = None
        self._processor: Any = None  # mlx-vlm processor (vision checkpoints only)
        self._tokenizer: Any = None  # Hugging Face tokenizer
        self._detokenizer_source: Any = None  # mlx-lm TokenizerWrapper
        self._eos: set[int] = set()
        self._is_vlm = False
        self._warmed_cpu = False
        self._vocab_size = 0
        from mlxhost.engine.constrain import GuidanceTokenizers

        self._guidance = GuidanceTokenizers()

    def stats(self) -> dict[str, Any]:
        batch = {"max": self.max_batch, "chosen": self._batch_choice, "peak": self._peak, **self._batch_counts}
        if self._batch is not None:
            batch["peak"] = max(self._peak, self._batch.peak)
            for key in self._batch_counts:
                batch[key] += getattr(self._batch, key)
            batch["prefill"] = self._batch.pacer.stats()
        stats: dict[str, Any] = {"batch": batch}
        if self._kv_stats:
            stats["kv_cache"] = self._kv_stats
        if self._kernels is not None:
            stats["kernels"] = self._kernels.as_dict()
        if self.prefix_cache is not None:
            stats["prefix_cache"] = attrs.asdict(self.prefix_cache.stats())
            if self._disk is not None:
                stats["prefix_cache"]["disk"] = attrs.asdict(self._disk.stats())
        return stats

    def close(self) -> None:
        """Finish the disk tier's writes (after ``unload`` spilled the last entries)."""
        if self._disk is not None:
            self._disk.close()

    def _spill(self, model_id: str, extra_key: bytes | None, tokens: tuple[int, ...], cache: Any) -> None:
        if self._disk is not None:
            self._disk.spill(model_id, tokens, extra_key, cache)

    def _identity(self, info: ModelInfo) -> dict[str, str]:
        """What binds a disk entry to this model (``prefix_disk.model_identity``)."""
        import importlib.metadata

        from mlx.utils import tree_flatten

        from mlxhost.engine.prefix.disk import model_identity

        assert info.path is not None
        flat: list[tuple[str, Any]] = tree_flatten(self._model.parameters())  # type: ignore[assignment]
        dtype = str(flat[0][1].dtype) if flat else "none"
        extra = {}
        group = getattr(self._sharder, "group", None)
        if group is not None:  # a slice of the KV: valid only for this rank of this split
            extra["shard"] = f"{self.sharded}; rank {group.rank()} of {group.size()}"
        return model_identity(
            info.id, info.path, mlx=importlib.metadata.version("mlx"), dtype=dtype,
            weights=str(self._kernels.weights), loader="mlx-vlm" if self._is_vlm else "mlx-lm",
            kv=self._kv.describe() if self._kv is not None else "full precision",
            **extra,
        )

    # -- memory ---------------------------------------------------------------
    def device_memory(self) -> DeviceMemory | None:
        import mlx.core as mx

        if mx.metal.is_available():
            info = _device_info(mx)
            total = info.get("max_recommended_working_set_size")
            if isinstance(total, int) and total > 0:
                return DeviceMemory(total, "metal", "max_recommended_working_set_size")
        cuda = getattr(mx, "cuda", None)
        if cuda is not None and cuda.is_available():
            info = mx.device_info()
            for key in ("memory_size", "total_memory"):
                total = info.get(key)
                if isinstance(total, int) and total > 0:
                    return DeviceMemory(total, "cuda", f"device_info {key}")
        ram = ram_bytes()
        return DeviceMemory(ram, "cpu", "RAM") if ram else None

    def set_memory_limit(self, budget: int) -> None:
        """MLX's own limits: the memory limit (MLX waits for pending work and frees
        its buffer cache before going past it), the wired limit on Metal (keeps the
        weights resident), and a buffer-cache limit (freed buffers kept for reuse:
        MLX's default is the whole memory limit, which RSS would show)."""
        import mlx.core as mx

        mx.set_memory_limit(budget)
        mx.set_cache_limit(max(budget // 8, 256 << 20))
        if mx.metal.is_available():
            recommended = _device_info(mx).get("max_recommended_working_set_size")
            wired = min(budget, recommended) if isinstance(recommended, int) else budget
            try:
                mx.set_wired_limit(wired)
            except (RuntimeError, ValueError) as exc:  # an older macOS without wiring
                log.warning("Could not set MLX's wired limit: %s", exc)
        self._memory_limit = budget

    def memory(self) -> EngineMemory:
        import sys

        mx = sys.modules.get("mlx.core")  # counters only; never the first MLX import here
        pc = self.prefix_cache
        return EngineMemory(
            weights=self._weights,
            prefix_cache=pc.nbytes if pc is not None else 0,
            active=int(mx.get_active_memory()) if mx else None,
            cache=int(mx.get_cache_memory()) if mx else None,
            peak=int(mx.get_peak_memory()) if mx else None,
            limit=self._memory_limit,
        )

    def shrink_prefix_cache(self, max_bytes: int) -> int:
        pc = self.prefix_cache
        return pc.shrink_to(max_bytes) if pc is not None else 0

    # -- loading --------------------------------------------------------------
    def load(self, info: ModelInfo, on_warm_up: Callable[[], None] | None = None) -> Any:
        from mlx_lm.tokenizer_utils import TokenizerWrapper

        if info.path is None:
            raise ValueError(f"{info.id} is not on disk")
        model_id, path, config = info.id, info.path, info.config
        from mlxhost.core.architectures import loader_for
        from mlxhost.core.errors import UnsupportedArchitecture

        if loader_for(config) is None:  # before unloading: the loaded model stays
            raise UnsupportedArchitecture(model_id, config.get("model_type"))
        self.unload()
        self._mlx_thread = threading.get_ident()  # the worker thread: it owns MLX
        started = time.perf_counter()
        self._is_vlm = "vision_config" in config
        if self._is_vlm:
            import mlx_vlm

            model, processor = mlx_vlm.load(str(path), lazy=self._sharder is not None)
            tokenizer = getattr(processor, "tokenizer", processor)
            self._processor = processor
            wrapper = TokenizerWrapper(tokenizer)
        else:
            from mlx_lm.utils import load_model

            model, model_config = load_model(path, lazy=self._sharder is not None)
            # The cached wrapper: wrapping again rebuilds its detokenizer tables
            # (measured ~0.5 s for Gemma's 262k vocabulary on every swap).
            wrapper = self._text_tokenizer(path, model_config)
            tokenizer = wrapper._tokenizer
        if self._sharder is not None:
            import mlx.core as mx

            self.sharded = self._sharder(model, config)
            mx.eval(model.parameters())  # each rank reads only its shard
        from mlxhost.engine import kernels

        # The config file's per-model weights policy, else --weights; a shard keeps
        # its weights as loaded (mlx-lm's sharded layers are not dequantized).
        from mlxhost.engine.batch import AUTO_BATCH_CAP

        self._kernels = kernels.apply(
            model,
            weights="as-is" if self._sharder is not None else (info.defaults.weights or self.weights),
            flat_qmm=self.flat_qmm,
            max_batch=self.configured_batch or AUTO_BATCH_CAP,
            # Ranks must compute alike, and vision models never batch.
            cpu_split="off" if self._sharder is not None or self._is_vlm else self.cpu_split,
        )
        self._model = model
        self._model_id = model_id
        self._weights = _array_bytes(model)
        self._tokenizer = tokenizer
        self._detokenizer_source = wrapper
        self._eos = eos_token_ids(path, config, tokenizer)
        self._vocab_size = facts.vocab_size(config) or len(tokenizer)  # type: ignore[arg-type]
        self._kv, kv_line = self._choose_kv(info)
        loaded_in = time.perf_counter() - started
        if self._disk is not None:
            self._disk.activate(model_id, self._identity(info))
        if on_warm_up is not None:
            on_warm_up()
        # A size measured on an earlier start is known before the warm-up, which
        # then warms the batch path at that size.
        remembered = None if self.configured_batch else self._remembered_batch_size(info)
        if remembered is not None:
            self.max_batch, self._batch_choice = remembered
        warmup = self._warm_up() if self.warmup else 0.0
        if not self.configured_batch and remembered is None:
            self.max_batch, self._batch_choice = self._choose_batch_size(info)
        log.info(
            "Loaded %s with %s in %.1fs (+%.2fs warm-up); weights %s, 2-D qmm input %s (%s); "
            "max batch %d (%s); KV cache %s",
            model_id,
            "mlx-vlm" if self._is_vlm else "mlx-lm",
            loaded_in,
            warmup,
            self._kernels.weights,
            "on" if self._kernels.flat_qmm else "off",
            self._kernels.reason,
            self.max_batch,
            self._batch_choice,
            kv_line,
        )
        return tokenizer

    def _batch_probe_key(self, info: ModelInfo) -> dict[str, str] | None:
        """What the ``--max-batch auto`` measurement depends on: the model's files,
        the weights policy in force, the device, the MLX stack and the rule; None
        where nothing is measured (CPU, vision models, a distributed group)."""
        import importlib.metadata

        import mlx.core as mx

        from mlxhost.engine import batch, kernels
        from mlxhost.engine.prefix.disk import model_identity

        backend = kernels.backend()
        if self._is_vlm or self._sharder is not None or backend == "cpu" or info.path is None:
            return None
        device = mx.device_info()
        return model_identity(
            info.id, info.path,
            weights_policy=str(self._kernels.weights),
            flat_qmm=str(self._kernels.flat_qmm),
            pad_rows=str(self._kernels.pad_rows),
            device=f"{backend}: {device.get('device_name', '?')}, {device.get('architecture', '?')}",
            mlx=importlib.metadata.version("mlx"),
            mlx_lm=importlib.metadata.version("mlx-lm"),
            rule=f"cap {batch.AUTO_BATCH_CAP}, gain {batch.AUTO_BATCH_GAIN}",
        )

    def _remembered_batch_size(self, info: ModelInfo) -> tuple[int, str] | None:
        key = self._batch_probe_key(info)
        found = self._batch_probes.get(key) if key is not None else None
        if found is None:
            return None
        return found.size, f"auto, measured {found.measured_at}: {found.rates} tok/s"

    def _choose_kv(self, info: ModelInfo) -> tuple[Any, str]:
        """The loaded model's KV format and a line for the load log: bits, the
        layers left full precision, bytes per token (``runtime.kv_quant``)."""
        from mlxhost.runtime import kv_quant
        from mlxhost.runtime.memory import KVLayout

        quant = kv_quant.for_model(info.defaults, self.kv_bits, self.kv_group_size)
        layout = KVLayout.from_config(info.config)
        if quant is not None and self._is_vlm:
            log.warning("--kv-bits: %s is a vision model (mlx-vlm caches): its KV stays full precision",
                        info.id)
            quant = None
        if quant is not None and layout is not None and layout.head_dim % quant.group_size:
            log.warning("--kv-group-size %d does not divide %s's head size %d: KV stays full precision",
                        quant.group_size, info.id, layout.head_dim)
            quant = None
        full_layers = kv_quant.kept_full(self._new_cache(quant)) if quant is not None else {}
        per_token = layout.quantized(quant.bits, quant.group_size).bytes_per_token if layout and quant \
            else (layout.bytes_per_token if layout else None)
        full = layout.bytes_per_token if layout else None
        self._kv_stats = kv_quant.stats(quant, per_token, full, full_layers)
        if quant is None:
            return None, f"full precision, {per_token} bytes per token"
        kept = ", ".join(f"{n} {name}" for name, n in full_layers.items())
        return quant, (
            f"{quant.describe()}, {per_token} bytes per token (full precision {full})"
            + (f"; left full precision: {kept} layers" if kept else "")
        )

    def _choose_batch_size(self, info: ModelInfo) -> tuple[int, str]:
        """``--max-batch auto`` for the model just loaded: measured on a GPU (a few
        decode steps per size, after the warm-up compiled the batch kernels), then
        kept on disk for the next start (``runtime.batch_probe``)."""
        from mlxhost.engine import batch, kernels

        if self._is_vlm:
            return batch.AUTO_BATCH, "auto: vision models run alone"
        if self._sharder is not None:  # a measurement on rank 0 alone would desync the ranks
            return batch.AUTO_BATCH, f"auto: {batch.AUTO_BATCH} in a distributed group"
        if kernels.backend() == "cpu":
            return batch.AUTO_BATCH, f"auto: {batch.AUTO_BATCH} on CPU"
        started = time.perf_counter()
        self._batch = None  # the warm-up's batch was made before the size was known
        try:
            size, rates = batch.choose_batch_size(
                lambda n: batch.decode_step_seconds(self._model, n), cap=batch.AUTO_BATCH_CAP
            )
        except Exception:  # a failed measurement must not fail the load
            log.exception("Measuring batch sizes failed")
            return batch.AUTO_BATCH, f"auto: {batch.AUTO_BATCH} (the measurement failed)"
        seconds = time.perf_counter() - started
        key = self._batch_probe_key(info)
        kept = self._batch_probes.put(key, size, rates) if key is not None else None
        if kept is not None:
            log.info("Batch size %d measured in %.1fs, kept in %s for later starts", size, seconds, kept)
        return size, f"auto, measured in {seconds:.1f}s: {rates} tok/s"

    def batch_limit(self) -> int | None:
        return None if self.configured_batch else self.max_batch

    def _text_tokenizer(self, path: Path, model_config: dict[str, Any]) -> Any:
        """The mlx-lm tokenizer wrapper of a text model, kept across swaps.

        The last few models' tokenizers stay loaded (tens of MB each): reloading
        one on every swap costs about a second and fragments the heap, so RSS
        crept ~5 MiB per swap; the model weights themselves are always freed.
        """
        from mlx_lm.tokenizer_utils import load as load_tokenizer

        source = path / "tokenizer.json"
        key = (str(path.resolve()), source.stat().st_mtime if source.exists() else 0.0)
        wrapper = self._tokenizers.pop(key, None)
        if wrapper is None:
            wrapper = load_tokenizer(path, eos_token_ids=model_config.get("eos_token_id"))
        self._tokenizers[key] = wrapper
        while len(self._tokenizers) > TOKENIZERS_KEPT:
            self._tokenizers.popitem(last=False)
        return wrapper

    def _warm_up(self) -> float:
        """Run a few short prompts through the model so the first request does not
        pay one-time costs: on CUDA, MLX compiles kernels per shape on first use
        (measured on an H100: 44-72 s for the first request after a load without
        this, 0.07-0.11 s with 8- and 64-token prompts first). On CPU the one-time
        cost is per process, not per model (raw mlx-lm: Qwen 0.5B's first request
        3.6 s vs 1.6 s later after start-up, but no extra on the first request
        after a swap, `python -m bench`), so 8 tokens once, at the first load.
        On GPU, with batching on, the batch path is warmed too (``_warm_batches``)."""
        import mlx.core as mx

        from mlxhost.engine import kernels

        on_gpu = kernels.backend() != "cpu"
        if not on_gpu and self._warmed_cpu:
            return 0.0
        self._warmed_cpu = not on_gpu
        started = time.perf_counter()
        lengths = GPU_WARMUP_LENGTHS if on_gpu else (8,)
        # Real token ids, as a request would send (not mx.arange: other dtypes,
        # other kernels).
        text = "The quick brown fox jumps over the lazy dog. " * 64
        ids = self._tokenizer.encode(text, add_special_tokens=False) or [0]
        # Keep the warm-up out of the real prefix cache; on GPU give it one of
        # its own, so prompts that extend an earlier one compile the cache-hit
        # path too (a first hit cost 42 s of kernel compilation on an H100).
        warm_cache = None
        if on_gpu and self.prefix_cache is not None:
            warm_cache = PrefixCache(MLXCacheAdapter(), max_bytes=WARMUP_CACHE_BYTES)
        cache, self.prefix_cache = self.prefix_cache, warm_cache
        disk, self._disk = self._disk, None
        try:
            for length in lengths:
                tokens = (ids * (length // len(ids) + 1))[:length]
                prompt = PreparedPrompt(tokens=tuple(tokens))
                params = SamplingParams(max_tokens=2, temperature=0.0)
                for _ in self.generate(prompt, params, lambda: False):
                    pass
            if on_gpu and self.max_batch > 1 and not self._is_vlm:
                self._warm_batches(ids)
        except Exception:  # a warm-up failure must not fail the load; requests will tell
            log.exception("Warm-up failed")
        finally:
            self.prefix_cache, self._disk = cache, disk
            mx.clear_cache()
        return time.perf_counter() - started

    def _warm_batches(self, ids: list[int]) -> None:
        """The batch path has kernels of its own (batched attention masks, B-row
        matmuls): run a batch of one and a batch of up to 8 through it, or the
        first requests pay the compilation (H200, Qwen3-4B shape: 5.9 tok/s on
        the first single request without this, against 160 later)."""
        params = SamplingParams(max_tokens=2, temperature=0.0)
        errors: list[BaseException] = []

        def emit(step: Any, error: BaseException | None) -> None:
            if error is not None:
                errors.append(error)

        for size in sorted({1, min(self.max_batch, 8)}):
            # Turn 1, then turn 2 extending each prompt: with the warm-up's own
            # prefix cache, turn 2 joins with cached prefixes of unequal lengths.
            for extra in (0, 8):
                for k in range(size):
                    tokens = (ids[k:] + ids)[: 16 + 8 * k + extra]
                    self.join(PreparedPrompt(tokens=tuple(tokens)), params, emit)
                while self.step():
                    pass
        if errors:
            raise errors[0]

    def unload(self) -> None:
        # Cached KV is only valid for the model that computed it.
        if self.prefix_cache is not None and self._model_id is not None:
            self.prefix_cache.clear_model(self._model_id)  # to the disk tier, if on
        if self._disk is not None:
            self._disk.deactivate()
        self._model_id = None
        self.sharded = None
        if self._kernels is not None:
            self._kernels.alone(True)  # the stock layers, OpenBLAS's threads back
        self._kernels = None
        self._weights = 0
        if self._batch is not None:
            self._batch.fail(RuntimeError("the model was unloaded"))
            self._peak = max(self._peak, self._batch.peak)
            for key in self._batch_counts:
                self._batch_counts[key] += getattr(self._batch, key)
            self._batch = None
        if self._model is None:
            return
        import mlx.core as mx

        self._model = self._processor = self._tokenizer = self._detokenizer_source = None
        gc.collect()
        # Without this the freed buffers stay in MLX's cache and RSS never drops.
        mx.clear_cache()
        release_free_heap()

    # -- prompts --------------------------------------------------------------
    def prepare(self, prompt: RenderedPrompt) -> PreparedPrompt:
        if prompt.images:
            if self._processor is None:
                raise ValueError("this model has no image processor")
            from mlxhost.engine.vision_inputs import prepare_vision_inputs

            tokens, inputs = prepare_vision_inputs(
                self._processor, self._model, prompt.text, [i.image for i in prompt.images]
            )
            return PreparedPrompt(
                tokens=tuple(tokens),
                extras=inputs,
                image_digests=tuple(i.digest for i in prompt.images),
            )
        # The template already wrote BOS and every special token it wants.
        tokens = self._tokenizer.encode(prompt.text, add_special_tokens=False)
        return PreparedPrompt(tokens=tuple(tokens))

    # -- batched generation -------------------------------------------------------
    def batchable(self, prompt: PreparedPrompt) -> bool:
        """Text prompts of a text (mlx-lm) model batch; image prompts and
        mlx-vlm models run alone (their generate loop is mlx-vlm's own)."""
        return self.max_batch > 1 and self._model is not None and not self._is_vlm and not prompt.extras

    def join(self, prompt: PreparedPrompt, params: SamplingParams, emit: Any) -> int:
        from mlxhost.engine.sampling import make_sampler

        if self._batch is None:
            from mlxhost.engine.batch import TextBatch
            from mlxhost.engine.prefill_pace import PrefillPacer

            self._batch = TextBatch(
                self._model,
                eos=self._eos,
                max_batch=self.max_batch,
                prefill_step=self.prefill_chunk,
                detokenizer=lambda: self._detokenizer_source.detokenizer,
                fetch_prefix=self._batch_prefix,
                store_prefix=self._store_batch_prefix,
                token_logprob=self._token_logprob,
                kernels=self._kernels.for_step,
                pacer=PrefillPacer(self.prefill_step_ms / 1000, self.prefill_chunk),
                kv=self._kv,
                speculative=self.speculative,
            )
        return int(
            self._batch.join(
                prompt.tokens, params, make_sampler(params), self._processors(params), emit
            )
        )

    def leave(self, uid: int) -> None:
        if self._batch is not None:
            self._batch.leave(uid)

    def step(self) -> bool:
        return self._batch is not None and bool(self._batch.step())

    def _processors(self, params: SamplingParams) -> list[Any]:
        from mlxhost.engine.sampling import make_logits_processors

        processors = make_logits_processors(params)
        grammar = params.grammar

        def answer() -> list[Any]:
            if grammar is None:
                return []
            from mlxhost.engine.constrain import grammar_processor

            ll_tokenizer = self._guidance.of(self._tokenizer, self._vocab_size, self._eos)
            return [grammar_processor(ll_tokenizer, grammar)]

        if params.thinking is not None:
            # The budget closes the thought; the grammar starts with the answer.
            from mlxhost.engine.reasoning_processor import thinking_processor

            processors.append(thinking_processor(params.thinking, answer))
        else:
            processors.extend(answer())
        return processors

    def _batch_prefix(self, tokens: tuple[int, ...]) -> tuple[list[Any] | None, int]:
        cache, reused, _ = self._cached_prefix(tokens, tokens, None)
        return cache, reused

    def _store_batch_prefix(self, fed: tuple[int, ...], cache: list[Any]) -> None:
        pc = self.prefix_cache
        if pc is None or self._model_id is None:
            return
        held = pc.adapter.length(cache)
        if 0 < held <= len(fed):
            import mlx.core as mx

            from mlxhost.runtime.kv_quant import quantized

            # A batch hands out lazy slices of its padded arrays: evaluated, the
            # entry holds only its own bytes (what the prefix cache counts), not
            # the whole batch's arrays. Entries are in the engine's KV format.
            cache = quantized(cache, self._kv)
            mx.eval([c.state for c in cache])
            pc.insert(self._model_id, fed[:held], cache)

    # -- generation -----------------------------------------------------------
    def generate(
        self,
        prompt: PreparedPrompt,
        params: SamplingParams,
        should_stop: Callable[[], bool],
    ) -> Iterator[TokenStep]:
        from mlxhost.engine.sampling import make_sampler

        if self._kernels is not None:  # one sequence: the stock quantized classes
            self._kernels.alone(True)
        sampler = make_sampler(params)
        processors = self._processors(params)
        key, extra_key = self._cache_key(prompt)
        vision = prompt.extras  # pixel values etc. of an image prompt
        vlm_kwargs: dict[str, Any]
        pixel_values = None
        if vision:
            # The cached prefix may cover images (their KV, keyed by their digests);
            # only the images in the uncached suffix go through the vision tower.
            cache, reused, vlm_kwargs, pixel_values = self._cached_vision_prefix(
                prompt, key, extra_key
            )
        else:
            cache, reused, vlm_kwargs = self._cached_prefix(prompt.tokens, key, extra_key)
        snapshots: list[tuple[int, Any]] = []  # (prompt tokens it holds, cache copy)
        generated: list[int] = []
        failed = False
        steps = None
        try:
            if self._is_vlm:
                steps = self._vlm_steps(
                    prompt.tokens, reused, cache, params, sampler, snapshots, vlm_kwargs,
                    processors or None, pixel_values=pixel_values,
                )
            else:
                steps = self._lm_steps(
                    prompt.tokens, reused, cache, params, sampler, snapshots, processors or None
                )
            detokenizer = self._detokenizer_source.detokenizer
            detokenizer.reset()
            for count, (token, logprobs) in enumerate(steps, start=1):
                token = int(token)
                generated.append(token)
                cached = reused if count == 1 else None
                scored = (
                    self._token_logprob(token, logprobs, params.logprobs)
                    if params.logprobs is not None
                    else None
                )
                if token in self._eos:
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
            if threading.get_ident() == self._mlx_thread:
                self._store_prefix(key, extra_key, cache, generated, snapshots, failed)

    def _token_logprob(self, token: int, logprobs: Any, top: int) -> TokenLogprob:
        """The sampled token's log probability and the ``top`` most likely tokens
        (from the step's normalized log probabilities)."""
        import mlx.core as mx

        values = logprobs.reshape(-1)
        alternatives: tuple[tuple[str, float], ...] = ()
        if top > 0:
            ids = mx.argpartition(-values, kth=top - 1)[:top]
            chosen = values[ids]
            mx.eval(ids, chosen)
            pairs: list[tuple[int, float]] = list(zip(ids.tolist(), chosen.tolist()))  # type: ignore[arg-type]
            ranked = sorted(pairs, key=lambda item: -item[1])
            alternatives = tuple((self._token_text(i), float(v)) for i, v in ranked)
        return TokenLogprob(self._token_text(token), float(values[token].item()), alternatives)

    def _token_text(self, token: int) -> str:
        return str(self._tokenizer.decode([token]))

    # -- prefix cache -----------------------------------------------------------
    def _cache_key(self, prompt: PreparedPrompt) -> tuple[tuple[int, ...], bytes | None]:
        """The prefix-cache key of a prompt: one int per prompt token, plus an extra key.

        Text prompts use their token ids. Image prompts (the vision pipeline)
        must give the image placeholder runs ids derived from the image digests,
        ``prefix_cache.key_with_images(tokens, placeholder_id, digests)``, so the
        same text with another image never reuses this one's KV; or, where that
        does not fit, return ``extra_key`` (e.g. a hash of every image) to keep
        such prompts apart. The key must be exactly as long as the prompt.
        """
        if not prompt.image_digests:
            return prompt.tokens, None
        placeholder = self._image_token_id()
        if placeholder is not None:
            try:
                return key_with_images(prompt.tokens, placeholder, prompt.image_digests), None
            except ValueError:  # runs that do not map one to one onto images
                pass
        # Keep such prompts apart from every other: only the same images match.
        joined = "\0".join(prompt.image_digests).encode()
        return prompt.tokens, hashlib.blake2b(joined, digest_size=16).digest()

    def _image_token_id(self) -> int | None:
        config = getattr(self._model, "config", None)
        value = getattr(config, "image_token_index", None)
        if value is None:
            value = getattr(config, "image_token_id", None)
        return int(value) if isinstance(value, int) else None

    def _cached_vision_prefix(
        self, prompt: PreparedPrompt, key: tuple[int, ...], extra_key: bytes | None
    ) -> tuple[list[Any], int, dict[str, Any], Any]:
        """``_cached_prefix`` for an image prompt: (cache, reused, generate kwargs,
        pixel values of the images still to encode, or None).

        A hit never ends inside an image's placeholder run (it is cut back to the
        run's start, or dropped where the cache cannot be cut back); the images the
        hit covers are not encoded again. Qwen-VL positions are derived from the
        whole prompt and every image's grid before the suffix is fed.
        """
        from mlxhost.engine.prefix import vision as vision_prefix

        vision = prompt.extras
        tokens = prompt.tokens
        cache, reused = self._fetch_prefix(tokens, key, extra_key)
        placeholder = self._image_token_id()
        runs = vision_prefix.image_runs(tokens, placeholder) if placeholder is not None else []
        inputs: dict[str, Any] | None = None
        if cache is not None and len(runs) == len(prompt.image_digests):
            cache, reused = self._cut_back(cache, reused, vision_prefix.reuse_point(reused, runs))
            if cache is not None:
                first = vision_prefix.first_uncached_image(reused, runs)
                inputs = vision_prefix.suffix_vision_inputs(vision, first, len(runs))
                if inputs is None and runs:  # unknown pixel layout: reuse the text before
                    cache, reused = self._cut_back(cache, reused, runs[0][0])
                    inputs = vision_prefix.suffix_vision_inputs(vision, 0, len(runs))
        if inputs is None:
            cache, reused = None, 0
        vlm_kwargs: dict[str, Any] = {}
        if cache is not None and inputs is not None:
            # Positions of the whole prompt, with every image's grid (Qwen-VL's mRoPE).
            full_kwargs = dict(vision.get("kwargs") or {})
            if not _prime_vlm_positions(self._model, tokens, vlm_kwargs, full_kwargs):
                cache, reused, inputs, vlm_kwargs = None, 0, None, {}
        if cache is None or inputs is None:
            cache, reused = self._new_cache(), 0
            inputs = {"pixel_values": vision.get("pixel_values"), "kwargs": dict(vision.get("kwargs") or {})}
        mask = vision.get("mask")
        if mask is not None:
            vlm_kwargs["mask"] = mask[:, reused:]
        vlm_kwargs.update({k: v for k, v in inputs["kwargs"].items() if k not in vlm_kwargs})
        self._log_reuse(reused, len(tokens), images=len(runs) - vision_prefix.first_uncached_image(reused, runs))
        return cache, reused, vlm_kwargs, inputs["pixel_values"]

    def _cached_prefix(
        self, tokens: tuple[int, ...], key: tuple[int, ...], extra_key: bytes | None
    ) -> tuple[list[Any], int, dict[str, Any]]:
        """(cache to extend, prompt tokens it already holds, extra generate_step kwargs)."""
        vlm_kwargs: dict[str, Any] = {}
        cache, reused = self._fetch_prefix(tokens, key, extra_key)
        if (
            cache is not None
            and self._is_vlm
            and not _prime_vlm_positions(self._model, tokens, vlm_kwargs)
        ):
            cache, reused = None, 0
        if cache is None:
            cache = self._new_cache()
        self._log_reuse(reused, len(tokens))
        return cache, reused, vlm_kwargs

    def _cut_back(self, cache: Any, reused: int, point: int) -> tuple[Any, int]:
        """``cache`` cut back from ``reused`` to ``point`` tokens: (None, 0) where it
        cannot be (a sliding window past its size) or nothing would be left."""
        if cache is None or point >= reused:
            return cache, reused
        if point < 1 or self.prefix_cache is None or not self.prefix_cache.adapter.can_trim(cache):
            return None, 0
        self.prefix_cache.adapter.trim(cache, reused - point)
        return cache, point

    def _fetch_prefix(
        self, tokens: tuple[int, ...], key: tuple[int, ...], extra_key: bytes | None
    ) -> tuple[list[Any] | None, int]:
        """The nearest cached prefix (a private copy) and the prompt tokens it holds."""
        if self.prefix_cache is None or self._model_id is None:
            return None, 0
        if len(key) != len(tokens):
            raise ValueError("the prefix-cache key must have one id per prompt token")
        fetched = self.prefix_cache.fetch_nearest(self._model_id, key, extra_key=extra_key)
        cache, reused = fetched.cache, fetched.reused
        if self._disk is not None:
            found = self._disk.nearest(self._model_id, key, extra_key, better_than=reused)
            if found is not None:
                loaded = self._disk.load(*found)
                if loaded is not None:
                    cache, reused = loaded, found[1]
        return self._agree_on_prefix(cache, reused)

    def _agree_on_prefix(self, cache: list[Any] | None, reused: int) -> tuple[list[Any] | None, int]:
        """In a distributed group, the prefix every rank has: all ranks must prefill
        the same tokens, but each rank's caches are its own (a disk entry one rank
        never wrote, RAM tiers whose slices differ in size under an uneven split).
        Two rounds of ``all_min``, so every rank runs the same collectives: cut to
        the shortest hit, then drop it everywhere if a rank could not cut."""
        group = getattr(self._sharder, "group", None)
        if group is None:
            return cache, reused
        import mlx.core as mx
        from mlx_lm.generate import generation_stream

        for _ in range(2):
            agreed = cast(int, mx.distributed.all_min(  # on the commands' stream (runtime.distributed)
                mx.array(reused, dtype=mx.int32), group=group, stream=generation_stream
            ).item())
            if agreed < reused:
                log.info(
                    "Prefix cache: %d tokens reused on rank %d, %d on every rank",
                    reused, group.rank(), agreed,
                )
                cache, reused = self._cut_back(cache, reused, agreed)
        return cache, reused

    def _log_reuse(self, reused: int, total: int, images: int | None = None) -> None:
        if self.prefix_cache is None:
            return
        encoded = f", {images} image(s) to encode" if images is not None else ""
        log.info(
            "Prefix cache: %d of %d prompt tokens reused, %d to prefill%s",
            reused, total, total - reused, encoded,
        )

    def _new_cache(self, quant: Any = None) -> list[Any]:
        if self._is_vlm:
            from mlx_vlm.models.cache import make_prompt_cache

            return make_prompt_cache(self._model.language_model)
        from mlx_lm.models.cache import make_prompt_cache

        from mlxhost.runtime.kv_quant import quantized

        return quantized(make_prompt_cache(self._model), quant or self._kv)

    def _snapshot(self, cache: list[Any]) -> list[Any] | None:
        """A copy of the cache at the end of the prompt, only where it can matter:
        a cache without sliding-window layers stays trimmable, so the cache after
        the reply covers this prefix and the copy would only cost prefill time."""
        if self.prefix_cache is None or not has_window(cache):
            return None
        return self.prefix_cache.adapter.copy(cache)

    def _store_prefix(
        self,
        key: tuple[int, ...],
        extra_key: bytes | None,
        cache: list[Any],
        generated: list[int],
        snapshots: list[tuple[int, Any]],
        failed: bool,
    ) -> None:
        pc = self.prefix_cache
        if pc is None or self._model_id is None:
            return
        try:
            import mlx.core as mx

            adapter = pc.adapter
            after: tuple[tuple[int, ...], list[Any]] | None = None
            if not failed:
                mx.eval([c.state for c in cache])
                fed = (*key, *generated)
                held = adapter.length(cache)
                # The cache holds the prompt and every token generate_step yielded
                # (each is fed before it is yielded); check rather than assume.
                if 0 < held <= len(fed):
                    after = (fed[:held], cache)
                else:
                    log.warning("Prefix cache: cache holds %d tokens, %d were fed", held, len(fed))
            # A trimmable after-reply cache covers the snapshot; otherwise keep both.
            if after is None or not adapter.can_trim(cache):
                for length, snapshot in snapshots:
                    pc.insert(self._model_id, key[:length], snapshot, extra_key=extra_key)
            if after is not None:
                pc.insert(self._model_id, after[0], after[1], extra_key=extra_key)
        except Exception:  # never fail a request over caching
            log.exception("Prefix cache: storing failed")

    # -- backends ---------------------------------------------------------------
    def _lm_steps(
        self,
        tokens: tuple[int, ...],
        reused: int,
        cache: list[Any],
        params: SamplingParams,
        sampler: Any,
        snapshots: list[tuple[int, Any]],
        processors: Any = None,
    ) -> Any:
        import mlx.core as mx
        from mlx_lm.generate import generate_step, generation_stream

        todo = tokens[reused:]
        if len(todo) > 1:
            # Prefill all but the last token here (generate_step would do the
            # same) so the cache can be copied at the end of the prompt.
            with mx.stream(generation_stream):
                for start in range(0, len(todo) - 1, PREFILL_STEP):
                    chunk = mx.array(todo[start : min(start + PREFILL_STEP, len(todo) - 1)])
                    self._model(chunk[None], cache=cache)
                    mx.eval([c.state for c in cache])
                    mx.clear_cache()
            snapshot = self._snapshot(cache)
            if snapshot is not None:
                snapshots.append((len(tokens) - 1, snapshot))
        return generate_step(
            mx.array(todo[-1:]),
            self._model,
            max_tokens=params.max_tokens,
            sampler=sampler,
            logits_processors=processors,
            prompt_cache=cache,
        )

    def _vlm_steps(
        self,
        tokens: tuple[int, ...],
        reused: int,
        cache: list[Any],
        params: SamplingParams,
        sampler: Any,
        snapshots: list[tuple[int, Any]],
        extra: dict[str, Any],
        processors: Any = None,
        *,
        pixel_values: Any = None,
    ) -> Any:
        import mlx.core as mx
        from mlx_vlm.generate.ar import generate_step as vlm_generate_step

        extra = dict(extra)
        mask = extra.pop("mask", None)
        todo = tokens[reused:]
        checkpoint_len = len(todo) - 1

        def checkpoint(processed: int, prompt_cache: list[Any]) -> None:
            # mlx-vlm calls this during its chunked prefill; not every model chunks,
            # and then there is no snapshot (only the after-reply cache).
            if processed == checkpoint_len:
                snapshot = self._snapshot(prompt_cache)
                if snapshot is not None:
                    snapshots.append((reused + processed, snapshot))

        # Images after a cached prefix: one unchunked prefill and no snapshot. A
        # chunk of the suffix gets Qwen-VL's visual-position mask (suffix-relative)
        # aligned by the cache's absolute offset in mlx-vlm, which misplaces the
        # image features (measured: greedy output changed on the tiny Qwen3-VL).
        images_after_prefix = pixel_values is not None and reused > 0
        if images_after_prefix:
            extra["prefill_step_size"] = None
        wants_snapshot = (
            self.prefix_cache is not None and checkpoint_len > 0 and not images_after_prefix
        )
        return vlm_generate_step(
            mx.array(todo)[None],
            self._model,
            pixel_values,
            mask,
            max_tokens=params.max_tokens,
            sampler=sampler,
            logits_processors=processors,
            prompt_cache=cache,
            prompt_cache_checkpoint=checkpoint if wants_snapshot else None,
            prompt_cache_checkpoint_len=checkpoint_len if wants_snapshot else None,
            **extra,
        )


def _prime_vlm_positions(
    model: Any,
    tokens: tuple[int, ...],
    kwargs: dict[str, Any],
    vision_kwargs: Mapping[str, Any] | None = None,
) -> bool:
    """Let a Qwen-VL style model (mRoPE) continue from a cached prefix; False: cannot.

    Its language model derives positions from the whole prompt, which the
    uncached suffix alone does not give: mlx-vlm's own prompt-cache reuse
    computes them from the full prompt first, and so do we. An image prompt's
    ``vision_kwargs`` carry every image's grid (``image_grid_thw``): an image
    spans fewer positions than tokens, so the text after it continues from
    there (the rope delta), whether the image is cached or not.
    """
    language_model = getattr(model, "language_model", None)
    if not callable(getattr(language_model, "get_rope_index", None)):
        return True  # plain RoPE: positions come from the cache offset
    try:
        import mlx.core as mx
        from mlx_vlm.generate.dispatch import _prime_cached_prefix_rope_state
    except ImportError:
        return False
    primed = dict(vision_kwargs or {})
    if not _prime_cached_prefix_rope_state(model, mx.array(tokens)[None], None, primed):
        return False
    for name in ("position_ids", "rope_deltas"):
        if primed.get(name) is not None:
            kwargs[name] = primed[name]
    return True


def _device_info(mx: Any) -> dict[str, Any]:
    """mx.device_info() (MLX >= 0.29), else the older mx.metal.device_info()."""
    reader = getattr(mx, "device_info", None) or mx.metal.device_info
    return dict(reader())


def _array_bytes(model: Any) -> int:
    """Bytes of a model's arrays (parameters, quantization scales included)."""
    from mlx.utils import tree_flatten

    flat: list[tuple[str, Any]] = tree_flatten(model.parameters())  # type: ignore[assignment]
    return sum(int(getattr(v, "nbytes", 0)) for _, v in flat)
