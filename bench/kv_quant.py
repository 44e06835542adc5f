"""KV-cache quantization: memory per token, context in a fixed budget, greedy
agreement and decode speed at long context, full precision vs 8-bit vs 4-bit.

``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 python -m bench.kv_quant``
loads Qwen2.5-Coder 0.5B fp32 once (mlx-lm) and, in one run, for each format:
measures the bytes per token of a real cache after a prefill (``nbytes`` of the
arrays up to the offset), the context that fits a 2 GiB KV budget (the
governor's arithmetic, ``KVLayout``, with the Qwen config and with a bf16 copy
of it), greedy agreement of the first 32 tokens with full precision on 5
prompts, and decode tok/s after a ``--context``-token prompt. Writes the "KV
cache quantization" section of docs/benchmarks.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

PROMPTS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain the difference between a process and a thread in two sentences.",
    "List three uses of a hash map.",
    "Translate to French: The weather is nice today and we are going to the park.",
    "What does the HTTP status code 404 mean?",
]


def greedy(model: Any, prompt: list[int], cache: list[Any], tokens: int) -> tuple[list[int], float]:
    """The first ``tokens`` greedy tokens, and the decode rate after the first."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    out: list[int] = []
    began = 0.0
    for token, _ in generate_step(mx.array(prompt), model, max_tokens=tokens, prompt_cache=cache,
                                  sampler=lambda x: mx.argmax(x, axis=-1)):
        out.append(int(token))
        if len(out) == 1:
            began = time.perf_counter()
    rate = (len(out) - 1) / (time.perf_counter() - began) if len(out) > 1 else 0.0
    return out, rate


def cache_bytes(cache: list[Any]) -> int:
    total = 0
    for layer in cache:
        n = layer.offset
        parts = layer.keys if isinstance(layer.keys, tuple) else (layer.keys,)
        values = layer.values if isinstance(layer.values, tuple) else (layer.values,)
        total += sum(p[..., :n, :].nbytes for p in (*parts, *values))
    return total


def measure_model(name: str, context: int, decode_tokens: int) -> dict[str, dict[str, Any]]:
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.models.cache import make_prompt_cache

    from mlxhost.models.registry import folder_info
    from mlxhost.models.starter.builder import ensure_test_model
    from mlxhost.runtime import kv_quant
    from mlxhost.runtime.memory import KVLayout

    model_name = name
    path = ensure_test_model(name)
    model, tokenizer = load(str(path))
    config = folder_info(path).config
    layout = KVLayout.from_config(config)
    assert layout is not None
    formats: list[tuple[str, kv_quant.KVQuant | None]] = [
        ("full precision", None), ("8-bit", kv_quant.KVQuant(8)), ("4-bit", kv_quant.KVQuant(4)),
    ]
    chat = [
        tokenizer.encode(
            tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                          tokenize=False),
            add_special_tokens=False,
        )
        for p in PROMPTS
    ]
    filler = tokenizer.encode("def f(x):\n    return x * 2 + 1\n\n" * (context // 12 + 2))
    long_prompt = filler[: context]
    budget = 2 << 30
    results: dict[str, dict[str, Any]] = {}
    reference: list[list[int]] = []
    for fmt, quant in formats:
        outputs = []
        for prompt in chat:
            cache = kv_quant.quantized(make_prompt_cache(model), quant)
            out, _ = greedy(model, prompt, cache, 32)
            outputs.append(out)
        if quant is None:
            reference = outputs
        cache = kv_quant.quantized(make_prompt_cache(model), quant)
        _, rate = greedy(model, long_prompt, cache, decode_tokens)
        mx.eval([c.state for c in cache])
        per_token = cache_bytes(cache) / cache[0].offset
        sized = layout.quantized(quant.bits, quant.group_size) if quant else layout
        bf16 = KVLayout(kv_heads=layout.kv_heads, head_dim=layout.head_dim, dtype="bfloat16",
                        windows=layout.windows)
        bf16 = bf16.quantized(quant.bits, quant.group_size) if quant else bf16
        results[fmt] = {
            "bytes_per_token_measured": round(per_token),
            "bytes_per_token_estimated": sized.bytes_per_token,
            "tokens_in_2GiB_fp32_model": sized.tokens_within(budget),
            "tokens_in_2GiB_bf16_model": bf16.tokens_within(budget),
            "identical_of_5": sum(a == b for a, b in zip(outputs, reference)),
            "first_difference": [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
                                 for a, b in zip(outputs, reference)],
            "decode_tok_s": round(rate, 2),
        }
        print(model_name, fmt, json.dumps(results[fmt]), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--decode-tokens", type=int, default=4)
    parser.add_argument("--models", nargs="+", default=["qwen", "smollm2"])
    parser.add_argument("--doc", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)


    from bench import docs

    results_by_model = {name: measure_model(name, args.context, args.decode_tokens) for name in args.models}
    rows = [
        f"| model | format | bytes/token (measured) | tokens in 2 GiB of KV (as loaded / bf16 activations) "
        f"| ratio (bf16) | greedy: first 32 tokens identical on 5 prompts | decode tok/s at {args.context:,} "
        "tokens of context | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model_name, results in results_by_model.items():
        full = results["full precision"]
        for name, r in results.items():
            rows.append(
                f"| {model_name} | {name} | {r['bytes_per_token_measured']:,} | {r['tokens_in_2GiB_fp32_model']:,} / "
                f"{r['tokens_in_2GiB_bf16_model']:,} | {r['tokens_in_2GiB_bf16_model'] / full['tokens_in_2GiB_bf16_model']:.2f}× "
                f"| {r['identical_of_5']}/5 (first difference at {r['first_difference']}) "
                f"| {r['decode_tok_s']:.2f} | {r['decode_tok_s'] / max(full['decode_tok_s'], 1e-9):.2f}× |"
            )
    body = "\n".join([
        "## KV cache quantization",
        "",
        f"`python -m bench.kv_quant --context {args.context}`: Qwen2.5-Coder 0.5B and SmolLM2-135M fp32 on 2 shared CPU "
        "cores (OpenBLAS), mlx-lm's `QuantizedKVCache` (group 64) made by `runtime.kv_quant`, one "
        "process, the formats one after another. Bytes per token are the arrays after a prefill; "
        "the 2 GiB columns are the memory governor's arithmetic (`KVLayout`) for this model "
        "and for the same shapes with bf16 activations (the usual case: the scales and biases "
        "are in the activations' dtype, so fp32 gains more). Not run on a GPU.",
        "",
        *rows,
    ])
    print(body)
    if not args.no_write:
        docs.write_section(args.doc, "kv_quant", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
