"""Constrained decoding on the GPU: decode tok/s with a JSON-schema grammar vs
unconstrained, on the 4B-shaped random-weight 4-bit models (``bench/shaped_models.py``).

Runs ``bench.constrained.measure`` (the engine driven directly, the variants
of ``bench.constrained.VARIANTS`` interleaved) once per ``--weights`` policy. Random
weights would close a JSON string at random, so the schema's string has a
``minLength`` no run reaches: every run generates ``--tokens`` tokens.

    SCRIPT=bench/gpu/constrained_gpu.py bash bench/gpu/install_and_run.sh --models qwen3-4b
    python3 bench/gpu/constrained_gpu.py --tiny --tokens 8 --runs 1      # CPU dry run

Writes OUT/gpu_constrained.{md,json}.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.constrained import PROMPT, measure, table  # noqa: E402
from bench.gpu.cli import probe_parser  # noqa: E402
from bench.log import say  # noqa: E402
from bench.shaped_models import TOKENIZER_FROM, build_shaped_model, folder_name  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {"story": {"type": "string", "minLength": 100000}, "rating": {"type": "integer"}},
    "required": ["story", "rating"],
    "additionalProperties": False,
}


def main(argv: list[str] | None = None) -> int:
    p = probe_parser(__doc__)
    p.add_argument("--weights", default="as-is,bf16")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--budget-s", type=float, default=540.0)
    args = p.parse_args(argv)

    import mlx.core as mx

    from mlxhost.engine.mlx_engine import MLXEngine
    from mlxhost.models.registry import folder_info

    began = time.monotonic()
    out = args.out or args.work
    out.mkdir(parents=True, exist_ok=True)
    info = mx.device_info()
    state: dict = {"device": info.get("device_name", str(mx.default_device())), "mlx": mx.__version__,
                   "tokens": args.tokens, "runs": args.runs, "results": {}}
    lines: list[str] = []
    for kind in args.models.split(","):
        path = args.work / "models" / folder_name(kind, args.tiny)
        if not (path / "config.json").is_file():
            if args.tokenizers:
                tokenizers = args.tokenizers / TOKENIZER_FROM[kind]
            else:
                from mlxhost.testing.models import ensure_test_model

                tokenizers = ensure_test_model(TOKENIZER_FROM[kind], log=say)
            build_shaped_model(kind, path, tokenizers, tiny=args.tiny, log=say)
        for weights in args.weights.split(","):
            if time.monotonic() - began > args.budget_s:
                say(f"skipping {kind} {weights}: over --budget-s")
                continue
            engine = MLXEngine(warmup=True, prefix_cache_bytes=0, weights=weights, max_batch=8)
            engine.load(folder_info(path))
            rates = measure(engine, PROMPT, SCHEMA, runs=1, tokens=16, log=say)  # compile first
            rates = measure(engine, PROMPT, SCHEMA, runs=args.runs, tokens=args.tokens, log=say)
            rows, ratios = table(rates)
            state["results"][f"{kind} {weights}"] = {"rates": rates, "ratios": ratios}
            lines += [f"**{kind}, --weights {weights}**", "", rows, "",
                      f"Constrained ÷ unconstrained: **{ratios['json_schema']:.2f}** as served.", ""]
            engine.unload()
            (out / "gpu_constrained.json").write_text(json.dumps(state, indent=2))
            (out / "gpu_constrained.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
