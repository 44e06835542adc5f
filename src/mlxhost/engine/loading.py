"""Loading a model: mlx-vlm for vision checkpoints, mlx-lm for text-only ones.

Text-only checkpoints (``gemma3_text``, ``qwen2``...) load with mlx-lm: mlx-vlm
accepts them too, but it prepends a second BOS to text-only Gemma prompts, which
changes the output. Both paths take token ids we tokenized ourselves, so the
prompt the model sees is exactly the rendered template.

A load gives one :class:`LoadedModel`, built whole: the engine holds it until
``unload`` drops it and :func:`free_memory` hands the memory back.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from mlxhost.core import model_config as facts
from mlxhost.core.architectures import loader_for
from mlxhost.core.errors import UnsupportedArchitecture
from mlxhost.core.types import ModelInfo
from mlxhost.engine import kernels
from mlxhost.runtime import kv_quant
from mlxhost.runtime.memory import KVLayout

log = logging.getLogger(__name__)

# Tokenizers of recently used text models kept across swaps.
TOKENIZERS_KEPT = 4


@attrs.frozen
class LoadPolicy:
    """The load-time choices the settings make (``engine.kernels``, ``runtime.kv_quant``);
    a model's config-file values win where it has them."""

    weights: str = "auto"
    flat_qmm: str = "auto"
    cpu_split: str = "auto"
    kv_bits: int | None = None
    kv_group_size: int | None = None


@attrs.frozen
class KVFormat:
    """The loaded model's KV cache format."""

    quant: Any  # runtime.kv_quant.KVQuant; None: full precision
    stats: dict[str, Any]  # for the engine's stats
    line: str  # for the load log: bits, layers left full precision, bytes per token


@attrs.frozen(eq=False)
class LoadedModel:
    """One loaded model and the facts read from it once, at load."""

    id: str
    model: Any
    is_vlm: bool  # loaded with mlx-vlm (a vision checkpoint)
    processor: Any  # mlx-vlm processor; None for text-only checkpoints
    tokenizer: Any  # Hugging Face tokenizer
    detokenizer_source: Any  # mlx-lm TokenizerWrapper
    eos: set[int]
    vocab_size: int
    kernels: Any  # engine.kernels.KernelChoice
    kv: KVFormat
    sharded: str | None  # how a distributed group split it
    weight_bytes: int
    thread: int  # the thread that loaded it: it owns MLX

    def new_cache(self) -> list[Any]:
        return make_cache(self.model, self.is_vlm, self.kv.quant)

    @property
    def image_token_id(self) -> int | None:
        """The id of a vision model's image placeholder token."""
        config = getattr(self.model, "config", None)
        value = getattr(config, "image_token_index", None)
        if value is None:
            value = getattr(config, "image_token_id", None)
        return int(value) if isinstance(value, int) else None

    def describe(self) -> dict[str, str]:
        """What its KV depends on beside the files: for the disk tier's identity."""
        import importlib.metadata

        from mlx.utils import tree_flatten

        flat: list[tuple[str, Any]] = tree_flatten(self.model.parameters())  # type: ignore[assignment]
        return {
            "mlx": importlib.metadata.version("mlx"),
            "dtype": str(flat[0][1].dtype) if flat else "none",
            "weights": str(self.kernels.weights),
            "loader": "mlx-vlm" if self.is_vlm else "mlx-lm",
            "kv": self.kv.quant.describe() if self.kv.quant is not None else "full precision",
        }


def check_loadable(info: ModelInfo) -> None:
    """Fail before unloading anything: the loaded model stays."""
    if info.path is None:
        raise ValueError(f"{info.id} is not on disk")
    if loader_for(info.config) is None:
        raise UnsupportedArchitecture(info.id, info.config.get("model_type"))


def load_model(
    info: ModelInfo,
    policy: LoadPolicy,
    tokenizers: TokenizerCache,
    *,
    max_batch: int,
    sharder: Callable[[Any, Mapping[str, Any]], str] | None = None,
) -> LoadedModel:
    """Load ``info`` (checked by :func:`check_loadable`); ``max_batch``: the batch the
    kernels are chosen for; ``sharder``: this rank's split of a distributed group."""
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    assert info.path is not None
    path, config = info.path, info.config
    thread = threading.get_ident()
    is_vlm = "vision_config" in config
    processor = None
    if is_vlm:
        import mlx_vlm

        model, processor = mlx_vlm.load(str(path), lazy=sharder is not None)
        tokenizer = getattr(processor, "tokenizer", processor)
        wrapper = TokenizerWrapper(tokenizer)
    else:
        from mlx_lm.utils import load_model as load_text_model

        model, model_config = load_text_model(path, lazy=sharder is not None)
        wrapper = tokenizers.get(path, model_config)
        tokenizer = wrapper._tokenizer
    sharded = None
    if sharder is not None:
        import mlx.core as mx

        sharded = sharder(model, config)
        mx.eval(model.parameters())  # each rank reads only its shard
    choice = kernels.apply(
        model,
        # The config file's per-model weights policy, else --weights; a shard keeps
        # its weights as loaded (mlx-lm's sharded layers are not dequantized).
        weights="as-is" if sharder is not None else (info.defaults.weights or policy.weights),
        flat_qmm=policy.flat_qmm,
        max_batch=max_batch,
        # Ranks must compute alike, and vision models never batch.
        cpu_split="off" if sharder is not None or is_vlm else policy.cpu_split,
    )
    try:
        return LoadedModel(
            id=info.id, model=model, is_vlm=is_vlm, processor=processor, tokenizer=tokenizer,
            detokenizer_source=wrapper, eos=eos_token_ids(path, config, tokenizer),
            vocab_size=facts.vocab_size(config) or len(tokenizer),  # type: ignore[arg-type]
            kernels=choice, kv=choose_kv(info, model, is_vlm, policy), sharded=sharded,
            weight_bytes=array_bytes(model), thread=thread,
        )
    except BaseException:
        choice.alone(True)  # the stock layers back: no engine holds this model
        raise


def choose_kv(info: ModelInfo, model: Any, is_vlm: bool, policy: LoadPolicy) -> KVFormat:
    """The model's KV format (``runtime.kv_quant``): quantized as asked where it can be."""
    quant = kv_quant.for_model(info.defaults, policy.kv_bits, policy.kv_group_size)
    layout = KVLayout.from_config(info.config)
    if quant is not None and is_vlm:
        log.warning("--kv-bits: %s is a vision model (mlx-vlm caches): its KV stays full precision",
                    info.id)
        quant = None
    if quant is not None and layout is not None and layout.head_dim % quant.group_size:
        log.warning("--kv-group-size %d does not divide %s's head size %d: KV stays full precision",
                    quant.group_size, info.id, layout.head_dim)
        quant = None
    full_layers = kv_quant.kept_full(make_cache(model, is_vlm, quant)) if quant is not None else {}
    per_token = layout.quantized(quant.bits, quant.group_size).bytes_per_token if layout and quant \
        else (layout.bytes_per_token if layout else None)
    full = layout.bytes_per_token if layout else None
    stats = kv_quant.stats(quant, per_token, full, full_layers)
    if quant is None:
        return KVFormat(None, stats, f"full precision, {per_token} bytes per token")
    kept = ", ".join(f"{n} {name}" for name, n in full_layers.items())
    return KVFormat(quant, stats, (
        f"{quant.describe()}, {per_token} bytes per token (full precision {full})"
        + (f"; left full precision: {kept} layers" if kept else "")
    ))


def make_cache(model: Any, is_vlm: bool, quant: Any) -> list[Any]:
    """An empty KV cache for ``model``, in the ``quant`` format (text models only)."""
    if is_vlm:
        from mlx_vlm.models.cache import make_prompt_cache

        return make_prompt_cache(model.language_model)
    from mlx_lm.models.cache import make_prompt_cache

    return kv_quant.quantized(make_prompt_cache(model), quant)


class TokenizerCache:
    """The mlx-lm tokenizer wrappers of the last few text models, kept across swaps.

    Reloading one on every swap costs about a second and fragments the heap, so
    RSS crept ~5 MiB per swap (tens of MB each are kept; the model weights
    themselves are always freed). Wrapping again would rebuild its detokenizer
    tables too (measured ~0.5 s for Gemma's 262k vocabulary on every swap).
    """

    def __init__(self, kept: int = TOKENIZERS_KEPT) -> None:
        self._kept = kept
        self._wrappers: OrderedDict[tuple[str, float], Any] = OrderedDict()

    def get(self, path: Path, model_config: dict[str, Any]) -> Any:
        from mlx_lm.tokenizer_utils import load as load_tokenizer

        source = path / "tokenizer.json"
        key = (str(path.resolve()), source.stat().st_mtime if source.exists() else 0.0)
        wrapper = self._wrappers.pop(key, None)
        if wrapper is None:
            wrapper = load_tokenizer(path, eos_token_ids=model_config.get("eos_token_id"))
        self._wrappers[key] = wrapper
        while len(self._wrappers) > self._kept:
            self._wrappers.popitem(last=False)
        return wrapper


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


def array_bytes(model: Any) -> int:
    """Bytes of a model's arrays (parameters, quantization scales included)."""
    from mlx.utils import tree_flatten

    flat: list[tuple[str, Any]] = tree_flatten(model.parameters())  # type: ignore[assignment]
    return sum(int(getattr(v, "nbytes", 0)) for _, v in flat)


def free_memory() -> None:
    """After the last reference to a model is dropped: without ``clear_cache`` the
    freed buffers stay in MLX's cache and RSS never drops."""
    import mlx.core as mx

    gc.collect()
    mx.clear_cache()
    release_free_heap()


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

