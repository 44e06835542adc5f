"""KV-cache quantization (SmolLM2-135M) and prompt-lookup speculative decoding
(Qwen2.5-Coder 0.5B), real fp32 models on CPU, in-process engine (a request
alone: the batch's lone-sequence loop, as served with the default --max-batch).

Qwen2.5's keys have a few channels hundreds of times larger than the rest, so
8-bit groups of 64 lose the small ones: its greedy output diverges after ~8
tokens on 4 of 5 prompts (docs/benchmarks.md), a property of the model; the
agreement check uses SmolLM2 (llama architecture)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("mlx.core")

PROMPTS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain the difference between a process and a thread in two sentences.",
    "List three uses of a hash map.",
    "Translate to French: The weather is nice today and we are going to the park.",
    "What does the HTTP status code 404 mean?",
]
SOURCE = "\n".join(
    line
    for k in range(4)
    for line in (
        f"def step_{k}(values, scale={k + 1}):",
        "    total = 0",
        "    for value in values:",
        "        total += value * scale",
        "    return total",
        "",
    )
)
EDIT = f"Rename the variable `total` to `acc` in this file and return the whole file.\n\n```python\n{SOURCE}\n```"


@pytest.fixture(scope="module")
def smollm2_info():
    from mlxhost.models.registry import folder_info
    from mlxhost.models.starter.builder import ensure_test_model

    return folder_info(ensure_test_model("smollm2"))


@pytest.fixture(scope="module")
def qwen_info():
    from mlxhost.models.registry import folder_info
    from mlxhost.models.starter.builder import ensure_test_model

    return folder_info(ensure_test_model("qwen"))


def run(engine: Any, text: str, max_tokens: int, *, speculative: bool = False) -> tuple[list[int], int | None]:
    """Greedy tokens, and the prompt tokens the prefix cache served."""
    from mlxhost.core.types import RenderedPrompt, SamplingParams
    from mlxhost.runtime.engine import PreparedPrompt

    rendered = engine.loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )
    tokens = engine.prepare(RenderedPrompt(text=rendered)).tokens
    steps: list[Any] = []
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, speculative=speculative)
    engine.join(PreparedPrompt(tokens=tuple(tokens)), params, lambda step, error: steps.append(step or error))
    while engine.step():
        pass
    assert all(not isinstance(s, BaseException) for s in steps)
    return [s.token for s in steps], steps[0].cached_tokens


def test_quantized_kv_agrees_with_full_precision_and_survives_a_swap(smollm2_info, tmp_path):
    from mlxhost.engine.mlx_engine import MLXEngine

    full = MLXEngine(warmup=False, max_batch=8, prefix_cache_bytes=0)
    full.load(smollm2_info)
    reference = [run(full, p, 32)[0] for p in PROMPTS]
    full.unload()

    engine = MLXEngine(warmup=False, max_batch=8, kv_bits=8, prefix_cache_dir=str(tmp_path))
    engine.load(smollm2_info)
    try:
        kv = engine.stats()["kv_cache"]
        assert kv["bits"] == 8 and kv["bytes_per_token"] < kv["full_precision_bytes_per_token"] / 1.8
        quantized = [run(engine, p, 32)[0] for p in PROMPTS]
        identical = sum(a == b for a, b in zip(quantized, reference))
        print(f"8-bit KV: first 32 greedy tokens identical on {identical}/5 prompts")
        assert identical >= 4
        # A swap: the RAM tier spills to disk on unload, the reload finds it there.
        engine.unload()
        engine.load(smollm2_info)
        again, cached = run(engine, PROMPTS[0], 32)
        assert cached is not None and cached > 0
        assert again == quantized[0]
    finally:
        engine.unload()
        engine.close()


def test_prompt_lookup_is_plain_greedy_decoding_with_fewer_passes(qwen_info):
    from mlxhost.engine.mlx_engine import MLXEngine

    engine = MLXEngine(warmup=False, max_batch=8, speculative=True)
    engine.load(qwen_info)
    try:
        plain, _ = run(engine, EDIT, 48)
        before = engine.stats()["batch"]
        fast, _ = run(engine, EDIT, 48, speculative=True)
        after = engine.stats()["batch"]
        assert fast == plain
        assert after["accepted"] - before["accepted"] > 0  # the edit repeats the file
    finally:
        engine.unload()


# -- over HTTP: the shared SmolLM2 server (speculative decoding on by default) --
def _edit(client, **kwargs):
    from mlxhost.models.starter.builder import TEST_MODELS

    return client.chat.completions.create(
        model=TEST_MODELS["smollm2"].repo_id, messages=[{"role": "user", "content": EDIT}],
        max_tokens=64, **kwargs,
    )


def test_seeded_sampling_with_prompt_lookup_is_reproducible_and_reports_acceptance(smol_client):
    once = _edit(smol_client, temperature=0.5, seed=7)
    again = _edit(smol_client, temperature=0.5, seed=7)
    assert once.choices[0].message.content == again.choices[0].message.content
    details = once.usage.completion_tokens_details
    print(f"sampled: {details.accepted_prediction_tokens} accepted, "
          f"{details.rejected_prediction_tokens} rejected")
    assert details.accepted_prediction_tokens > 0
    assert again.usage.completion_tokens_details.accepted_prediction_tokens == details.accepted_prediction_tokens


def test_greedy_over_http_is_the_same_with_and_without_prompt_lookup(smol_client):
    fast = _edit(smol_client, temperature=0)
    plain = _edit(smol_client, temperature=0, extra_body={"speculative": False})
    assert fast.choices[0].message.content == plain.choices[0].message.content
    assert fast.usage.completion_tokens_details.accepted_prediction_tokens > 0
    assert plain.usage.completion_tokens_details.accepted_prediction_tokens == 0
    assert plain.usage.completion_tokens_details.rejected_prediction_tokens == 0
