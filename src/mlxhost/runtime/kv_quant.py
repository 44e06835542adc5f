"""KV-cache quantization (``--kv-bits 4|8``): which layers, and converting caches.

mlx-lm's ``QuantizedKVCache`` stores keys and values as ``mx.quantize`` groups
(packed integers plus a scale and a bias per ``group_size`` values) and its
attention reads them with quantized matmuls. Only plain ``KVCache`` layers are
quantized: sliding-window (rotating) layers and SSM/array states stay full
precision (mlx-lm cannot quantize a rotating cache in place, and their size is
bounded by the window anyway). Caches are converted where they are made: the
engine's new caches and the lone-sequence loop get quantized layers; the
prefix cache (RAM and disk) holds entries in that format.

mlx-lm 0.32's ``BatchGenerator`` has no quantized batch cache (its caches merge
through ``BatchKVCache``; ``QuantizedKVCache`` has no ``merge``), so a sequence
handed to the batch is dequantized first (:func:`full_precision`) and decodes in
full precision there; its KV is quantized again when it is stored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import attrs

log = logging.getLogger(__name__)

BITS = (4, 8)
DEFAULT_GROUP_SIZE = 64


@attrs.frozen
class KVQuant:
    bits: int
    group_size: int = DEFAULT_GROUP_SIZE

    def describe(self) -> str:
        return f"{self.bits}-bit (group {self.group_size})"


def choose(bits: int | None, group_size: int | None) -> KVQuant | None:
    """The KV format from settings (a [models.X] value already folded in): None
    is full precision. ValueError for bits other than 4 or 8."""
    if not bits:
        return None
    if bits not in BITS:
        raise ValueError(f"--kv-bits must be 4 or 8 (or 0: off), got {bits}")
    return KVQuant(bits, group_size or DEFAULT_GROUP_SIZE)


def for_model(defaults: Any, bits: int | None, group_size: int | None) -> KVQuant | None:
    """The per-model value (``ModelDefaults.kv_bits``/``kv_group_size``) over the server's."""
    model_bits = getattr(defaults, "kv_bits", None)
    model_group = getattr(defaults, "kv_group_size", None)
    return choose(
        bits if model_bits is None else model_bits,
        group_size if model_group is None else model_group,
    )


def _plain(layer: Any) -> bool:
    from mlx_lm.models.cache import KVCache

    return type(layer) is KVCache


def quantized(cache: list[Any], quant: KVQuant | None) -> list[Any]:
    """``cache`` with every plain ``KVCache`` layer as a ``QuantizedKVCache``
    (others as they are); the same list when ``quant`` is None."""
    if quant is None:
        return cache
    from mlx_lm.models.cache import QuantizedKVCache

    out = []
    for layer in cache:
        if _plain(layer):
            if layer.keys is None:
                layer = QuantizedKVCache(group_size=quant.group_size, bits=quant.bits)
            else:
                layer = layer.to_quantized(group_size=quant.group_size, bits=quant.bits)
        out.append(layer)
    return out


def full_precision(cache: list[Any]) -> list[Any]:
    """``cache`` with every ``QuantizedKVCache`` layer dequantized to a ``KVCache``
    (for ``BatchGenerator``, which cannot merge quantized layers)."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache, QuantizedKVCache

    if not any(isinstance(layer, QuantizedKVCache) for layer in cache):
        return cache
    out = []
    for layer in cache:
        if isinstance(layer, QuantizedKVCache):
            plain = KVCache()
            if layer.keys is not None and layer.offset > 0:
                n = layer.offset

                def restore(parts: Any, n: int = n, layer: Any = layer) -> Any:
                    w, scales, biases = (p[..., :n, :] for p in parts)
                    return mx.dequantize(w, scales, biases, group_size=layer.group_size, bits=layer.bits)

                plain.update_and_fetch(restore(layer.keys), restore(layer.values))
            layer = plain
        out.append(layer)
    return out


def kept_full(cache: list[Any]) -> dict[str, int]:
    """Layer classes left in full precision, with their counts (for the load log)."""
    counts: dict[str, int] = {}
    for layer in cache:
        if not _plain(layer) and type(layer).__name__ != "QuantizedKVCache":
            name = type(layer).__name__
            counts[name] = counts.get(name, 0) + 1
    return counts


def quantized_bytes_per_value(quant: KVQuant, dtype_bytes: int) -> float:
    """Bytes one K or V element takes quantized: its bits plus a scale and a bias
    (in the keys' dtype) per group."""
    return quant.bits / 8 + 2 * dtype_bytes / quant.group_size


def stats(quant: KVQuant | None, per_token: int | None, full_per_token: int | None,
          full_layers: Mapping[str, int]) -> dict[str, Any]:
    return {
        "bits": quant.bits if quant else None,
        "group_size": quant.group_size if quant else None,
        "bytes_per_token": per_token,
        "full_precision_bytes_per_token": full_per_token,
        "full_precision_layers": dict(full_layers),
    }
