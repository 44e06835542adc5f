"""Decode speed with a JSON-schema constraint vs unconstrained, same model, same
prompt, interleaved in one process (``python -m bench.constrained``).

The engine is driven directly (``MLXEngine.generate``), so the figure is the
grammar mask's cost per token and nothing else. Both runs generate a fixed
number of tokens: the constrained one is given a schema whose strings let the
model go on, so neither stops early. Writes the ``constrained`` section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bench import docs
from bench.report import md_table

SCHEMA = {
    "type": "object",
    "properties": {"story": {"type": "string"}, "rating": {"type": "integer"}},
    "required": ["story", "rating"],
    "additionalProperties": False,
}
PROMPT = "<|im_start|>user\nTell me a long story about a lighthouse keeper, as JSON.<|im_end|>\n<|im_start|>assistant\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--doc", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    from mlxhost.registry import folder_info
    from mlxhost.runtime.constrain import json_grammar
    from mlxhost.runtime.mlx_engine import MLXEngine
    from mlxhost.starter.builder import ensure_test_model
    from mlxhost.types import RenderedPrompt, SamplingParams

    engine = MLXEngine(warmup=True, prefix_cache_bytes=0)
    engine.load(folder_info(ensure_test_model("qwen")))
    prompt = engine.prepare(RenderedPrompt(PROMPT))
    grammar = json_grammar(SCHEMA, "schema")
    rates: dict[str, list[float]] = {"unconstrained": [], "json_schema": []}
    for _ in range(args.runs):
        for name, rule in (("unconstrained", None), ("json_schema", grammar)):
            params = SamplingParams(max_tokens=args.tokens, temperature=0.0, grammar=rule)
            times = []
            for _step in engine.generate(prompt, params, lambda: False):
                times.append(time.perf_counter())
            # Decode rate after the first token (prefill excluded).
            rates[name].append((len(times) - 1) / (times[-1] - times[0]))
            print(f"{name}: {rates[name][-1]:.2f} tok/s ({len(times)} tokens)", flush=True)
    median = {name: statistics.median(values) for name, values in rates.items()}
    ratio = median["json_schema"] / median["unconstrained"]
    body = "\n".join([
        "## Constrained decoding",
        "",
        f"`python -m bench.constrained --runs {args.runs} --tokens {args.tokens}`: Qwen2.5-Coder 0.5B "
        "fp32 on 2 CPU cores (OpenBLAS), greedy, the same prompt, the two runs interleaved in one "
        "process; decode rate after the first token, median of the runs. The mask is computed by "
        "llguidance on the CPU and applied with `mx.where`.",
        "",
        md_table(
            ["run", "decode tok/s (median)", "runs"],
            [[name, f"{median[name]:.2f}", ", ".join(f"{v:.2f}" for v in rates[name])] for name in rates],
        ),
        "",
        f"Constrained ÷ unconstrained: **{ratio:.2f}** (target ≥ 0.9).",
    ])
    print(body)
    if not args.no_write:
        docs.write_section(args.doc, "constrained", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
