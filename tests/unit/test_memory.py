"""The memory model without MLX: sizes, durations, the KV estimate against the
reference models' real configs, and the governor's admission rules."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlxhost.core.errors import Busy, MemoryExceeded
from mlxhost.core.units import parse_duration, parse_size
from mlxhost.runtime.memory import (
    DeviceMemory,
    KVLayout,
    MemoryGovernor,
    resolve_budget,
)
from mlxhost.testing.live import async_wait_until

# The seed models' configs (copied from the project's shared/reference data).
REFERENCE = Path(__file__).parent / "data"

MiB, GiB = 1 << 20, 1 << 30


def reference_config(name: str) -> dict:
    return json.loads((REFERENCE / f"{name}.config.json").read_text())


# -- sizes and durations ---------------------------------------------------------
@pytest.mark.parametrize(("text", "value"), [
    ("2900MiB", 2900 * MiB), ("3GB", 3_000_000_000), ("3G", 3 * GiB), ("3gib", 3 * GiB),
    ("1234", 1234), ("512 MiB", 512 * MiB), ("1.5GiB", int(1.5 * GiB)),
    ("0.75", 0.75), ("75%", 0.75), ("1.0", 1.0),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "lots", "0", "-3GB", "1.5", "0.0", "3XB", "150%"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(("text", "seconds"), [
    ("4s", 4.0), ("30m", 1800.0), ("1h", 3600.0), ("1h30m", 5400.0), ("500ms", 0.5),
    ("90", 90.0), ("0", 0.0), ("-1", math.inf), ("-5m", math.inf), ("2.5", 2.5),
    ("9" * 400, math.inf), ("100000000000h", math.inf),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5 minutes", "1h-", "m5", "nan"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_budget_resolution():
    device = DeviceMemory(16 * GiB, "metal", "max_recommended_working_set_size")
    assert resolve_budget(None, device) == 16 * GiB  # Metal: the whole recommended set
    assert resolve_budget(0.5, device) == 8 * GiB
    assert resolve_budget(3 * GiB, device) == 3 * GiB
    assert resolve_budget(None, DeviceMemory(32 * GiB, "cpu", "RAM")) == 24 * GiB
    assert resolve_budget(None, None) is None
    assert resolve_budget(3 * GiB, None) == 3 * GiB


# -- the KV estimate against the reference configs ----------------------------------
def test_qwen3_vl_4b_kv_estimate():
    layout = KVLayout.from_config(reference_config("qwen3-vl-4b-instruct"))
    assert layout is not None
    # 36 layers x 8 KV heads x 128 head dim x (K and V) x 2 bytes (bf16), no windows.
    assert (layout.num_layers, layout.kv_heads, layout.head_dim, layout.dtype) == (
        36, 8, 128, "bfloat16")
    assert layout.windows == (None,) * 36
    assert layout.bytes_per_token == 36 * 8 * 128 * 2 * 2 == 147_456
    # The figure: a full 262,144-token window needs 36 GiB.
    assert layout.bytes_for(262_144) == 36 * GiB


def test_gemma3_4b_kv_estimate_with_sliding_layers():
    layout = KVLayout.from_config(reference_config("gemma-3-4b-it"))
    assert layout is not None
    assert (layout.num_layers, layout.kv_heads, layout.head_dim) == (34, 4, 256)
    # sliding_window_pattern 6: layers 5, 11, 17, 23, 29 are global, 29 are windowed.
    globals_ = [i for i, w in enumerate(layout.windows) if w is None]
    assert globals_ == [5, 11, 17, 23, 29]
    assert all(w == 1024 for w in layout.windows if w is not None)
    per_layer = 4 * 256 * 2 * 2  # 4,096 bytes per token per layer
    # Below the window every layer grows; past it only the 5 global ones do.
    assert layout.bytes_for(1000) == 34 * per_layer * 1024  # 256-token steps: 1024 held
    full = 5 * per_layer * 131_072 + 29 * per_layer * 1024
    assert layout.bytes_for(131_072) == full == 2_805_989_376
    # So its full window costs ~6.5x less than the same shape without windows.
    assert layout.bytes_for(131_072) < 34 * per_layer * 131_072 / 6


def test_test_model_configs():
    """The small test models' own configs (Gemma declares its windows as layer_types)."""
    from mlxhost.models.starter.builder import TEST_MODELS, models_cache_dir

    for name, expected in (("qwen", (24, 2, 64, "float32", 0)), ("gemma", (18, 1, 256, "float32", 15))):
        folder = models_cache_dir() / TEST_MODELS[name].folder_name
        if not (folder / "config.json").is_file():
            pytest.skip("test models not built")
        layout = KVLayout.from_config(json.loads((folder / "config.json").read_text()))
        assert layout is not None
        windowed = sum(w is not None for w in layout.windows)
        assert (layout.num_layers, layout.kv_heads, layout.head_dim, layout.dtype, windowed) == expected


def test_no_layout_without_sizes():
    assert KVLayout.from_config({"model_type": "fake"}) is None


@given(st.integers(min_value=0, max_value=64 * GiB))
def test_tokens_within_is_the_inverse_of_bytes_for(budget):
    layout = KVLayout(kv_heads=2, head_dim=64, dtype="float32", windows=(None, 512, None))
    tokens = layout.tokens_within(budget)
    assert layout.bytes_for(tokens) <= budget
    assert layout.bytes_for(tokens + 1) > budget


def test_tokens_within_when_every_layer_is_windowed():
    layout = KVLayout(kv_heads=1, head_dim=8, dtype="float16", windows=(256, 256))
    assert layout.tokens_within(10 * MiB, limit=1 << 20) == 1 << 20  # any length fits


# -- the governor ------------------------------------------------------------------------
def governor(budget: int, *, weights: int = 0, prefix: list[int] | None = None,
             wait: float | None = 30.0) -> MemoryGovernor:
    """1 KiB per token, 256-token steps: a sequence of <= 256 tokens costs 256 KiB."""
    cache = prefix if prefix is not None else [0]

    async def shrink(max_bytes: int) -> None:
        cache[0] = min(cache[0], max_bytes)

    g = MemoryGovernor(wait_timeout=wait, prefix_bytes=lambda: cache[0], shrink_prefix=shrink)
    g.budget = budget
    g.set_model("m", KVLayout(kv_heads=2, head_dim=16, dtype="float32", windows=(None,) * 4),
                weights, 0)
    return g


KV256 = 256 * 1024  # one <= 256-token sequence


def test_a_request_that_never_fits_is_refused_with_the_tokens_that_would():
    g = governor(10 * MiB + 2 * KV256, weights=10 * MiB)
    assert g.tokens_fitting() == 512
    g.check(100, 400, explicit=True)  # 500 tokens: fits
    with pytest.raises(MemoryExceeded) as caught:
        g.check(100, 1000, explicit=True)
    error = caught.value
    assert error.status_code == 400 and error.code == "memory_exceeded"
    assert error.fitting == 512 and error.tokens == 1100 and error.param == "max_tokens"
    assert "does not fit in memory" in error.message and "512 tokens" in error.message
    assert "context window" in error.message  # says it is not the context window
    assert g.refused == 1


async def test_requests_that_fit_one_at_a_time_wait_in_order():
    g = governor(KV256 + KV256 // 2)  # one sequence of <= 256 tokens at a time
    first = await g.reserve(100, batched=True)
    order: list[int] = []

    async def later(n: int) -> None:
        r = await g.reserve(100, batched=True)
        order.append(n)
        await asyncio.sleep(0)
        g.release(r)

    tasks = [asyncio.create_task(later(n)) for n in range(3)]
    await async_wait_until(lambda: g.waited == 3, timeout=5, what="three waiters")
    assert order == [] and g.waiting == 3
    g.release(first)
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == [0, 1, 2]
    assert g.admitted_peak == 1 and g.waited == 3


async def test_a_batch_costs_its_longest_sequence_times_its_size():
    g = governor(4 * KV256)
    await g.reserve(900, batched=True)  # 1024 tokens held: 4 x 256 KiB
    assert g.kv_in_use() == 4 * KV256
    # Two batched sequences pad to the longer one: 2 x 1 MiB > the budget, so it waits.
    waiting = asyncio.create_task(g.reserve(10, batched=True))
    await async_wait_until(lambda: g.waited == 1, timeout=5, what="a waiter")
    assert not waiting.done()
    waiting.cancel()


async def test_waiting_too_long_is_busy_with_retry_after():
    g = governor(KV256, wait=0.05)
    held = await g.reserve(10, batched=False)
    with pytest.raises(Busy) as caught:
        await g.reserve(10, batched=False)
    assert caught.value.status_code == 503
    assert int(caught.value.headers["Retry-After"]) >= 1
    assert g.timed_out == 1 and g.waiting == 0
    g.release(held)
    assert (await g.reserve(10, batched=False)) is not None  # the slot passed on


async def test_the_prefix_cache_shrinks_before_a_request_waits():
    prefix = [3 * KV256]
    g = governor(4 * KV256, prefix=prefix)
    await g.reserve(10, batched=False)  # fits with the cache cut to 3 x 256 KiB
    assert prefix[0] == 3 * KV256 and g.prefix_shrinks == 0
    await g.reserve(10, batched=False)  # needs the cache down to 2 x 256 KiB
    assert prefix[0] == 2 * KV256 and g.prefix_shrinks == 1
    assert g.waiting == 0


async def test_without_a_budget_everything_is_admitted():
    g = MemoryGovernor()
    reservations = [await g.reserve(10**9, batched=True) for _ in range(3)]
    assert g.tokens_fitting() is None and len(reservations) == 3
    g.check(10**9, 10**9, explicit=True)  # no budget: never refused
