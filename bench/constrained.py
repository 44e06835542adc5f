"""Decode speed with a JSON-schema constraint vs unconstrained, same model, same
prompt, interleaved in one process (``python -m bench.constrained``).

The engine is driven directly (``MLXEngine.generate``), so the figure is the
grammar mask's cost per token and nothing else. The :data:`VARIANTS` take
turns: unconstrained, constrained as served (the mask is computed while the
step that produced the logits still runs, unpacked in numpy on the CPU and with mx on a GPU), with the mask
unpacked in numpy and by ``mx`` ops explicitly, and with the mask computed after the step
(``overlap=False``: what it costs on the critical path), and with the token
context scheduled behind the step (``context_first=False``: the mask then
waits for the step, as it did before the context was scheduled first). Every
run generates a fixed number of tokens: the schema's strings let the model go
on, so none stops early. Writes the ``constrained`` section of
docs/benchmarks.md. ``bench/gpu/constrained_gpu.py`` runs :func:`measure` on
the GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

from bench import docs
from bench.report import md_table

SCHEMA = {
    "type": "object",
    "properties": {"story": {"type": "string"}, "rating": {"type": "integer"}},
    "required": ["story", "rating"],
    "additionalProperties": False,
}
PROMPT = "<|im_start|>user\nTell me a long story about a lighthouse keeper, as JSON.<|im_end|>\n<|im_start|>assistant\n"
# Each variant: None (no grammar) or the grammar_processor options it runs with.
VARIANTS: dict[str, dict[str, Any] | None] = {
    "unconstrained": None,
    "json_schema": {},  # as served: mask overlapped with the step, unpacked as "auto" picks
    "json_schema, mask unpacked in numpy": {"unpack": "numpy"},
    "json_schema, mask unpacked with mx": {"unpack": "mx"},
    "json_schema, mask after the step": {"overlap": False},
    "json_schema, context read after the step": {"context_first": False},
}


def measure(
    engine: Any, prompt_text: str, schema: Mapping[str, Any], *, runs: int, tokens: int,
    log: Callable[[str], None] = print,
) -> dict[str, list[float]]:
    """Decode tok/s after the first token of each variant, ``runs`` times each, interleaved."""
    from mlxhost.core.types import RenderedPrompt, SamplingParams
    from mlxhost.engine import constrain

    prompt = engine.prepare(RenderedPrompt(prompt_text))
    grammar = constrain.json_grammar(schema, "schema")
    served = constrain.grammar_processor
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(runs):
        for name, options in VARIANTS.items():
            params = SamplingParams(
                max_tokens=tokens, temperature=0.0, grammar=None if options is None else grammar
            )
            patch = (mock.patch.object(constrain, "grammar_processor", functools.partial(served, **options))
                     if options else contextlib.nullcontext())
            times = []
            with patch:
                for _step in engine.generate(prompt, params, lambda: False):
                    times.append(time.perf_counter())
            rates[name].append((len(times) - 1) / (times[-1] - times[0]))
            log(f"{name}: {rates[name][-1]:.2f} tok/s ({len(times)} tokens)")
    return rates


def table(rates: dict[str, list[float]]) -> tuple[str, dict[str, float]]:
    """The markdown table, and each constrained variant's median ÷ the unconstrained one."""
    median = {name: statistics.median(values) for name, values in rates.items()}
    base = median["unconstrained"]
    ratios = {name: median[name] / base for name in rates if name != "unconstrained"}
    body = md_table(
        ["run", "decode tok/s (median)", "÷ unconstrained", "runs"],
        [[name, f"{median[name]:.2f}", f"{ratios.get(name, 1.0):.2f}",
          ", ".join(f"{v:.2f}" for v in rates[name])] for name in rates],
    )
    return body, ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--doc", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    from mlxhost.engine.mlx_engine import MLXEngine
    from mlxhost.models.registry import folder_info
    from mlxhost.models.starter.builder import ensure_test_model

    engine = MLXEngine(warmup=True, prefix_cache_bytes=0)
    engine.load(folder_info(ensure_test_model("qwen")))
    rates = measure(engine, PROMPT, SCHEMA, runs=args.runs, tokens=args.tokens)
    rows, ratios = table(rates)
    body = "\n".join([
        "## Constrained decoding",
        "",
        f"`python -m bench.constrained --runs {args.runs} --tokens {args.tokens}`: Qwen2.5-Coder 0.5B "
        "fp32 on 2 CPU cores (OpenBLAS), greedy, the same prompt, the runs interleaved in one "
        "process; decode rate after the first token, median of the runs. The mask is computed by "
        "llguidance on the CPU and applied with `mx.where`. As served (`json_schema`) it is "
        "computed while the step that produced the logits runs (`mx.async_eval` first) and "
        "unpacked from bits to flags in numpy; the other rows unpack it with `mx` ops on the "
        "model's device, or compute it after the step.",
        "",
        rows,
        "",
        f"Constrained ÷ unconstrained: **{ratios['json_schema']:.2f}** as served (target ≥ 0.9).",
    ])
    print(body)
    if not args.no_write:
        docs.write_section(args.doc, "constrained", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
