"""Where single-stream and batched decode time goes, raw (no server), on the
4B-shaped random-weight models: ``generate_step`` against ``BatchGenerator``
with one sequence, and ``BatchGenerator`` at 8/16 sequences with the choices
the engine makes (one shared sampler object or one per sequence, 2-D quantized
matmul input, the attention mask at decode). Decode tok/s after the first
token, warm (every variant runs once first), ``--tokens`` a sequence.

"mask off" drops ``BatchKVCache.make_mask`` at one-token steps: exact only when
no sequence is left-padded, so its figure is the ceiling of skipping the mask.

    python3 bench/gpu/step_probe.py --models qwen3-4b            # on the GPU machine
    python3 bench/gpu/step_probe.py --tiny --tokens 8            # CPU dry run

Writes OUT/gpu_step_probe.{md,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.gpu.batch_gpu import build, prompt  # noqa: E402
from bench.gpu.cli import probe_parser  # noqa: E402
from bench.log import say  # noqa: E402
from bench.report import md_table  # noqa: E402


def prompts(tokenizer: Any, n: int, offset: int) -> list[list[int]]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": prompt(offset + k)}],
                                          add_generation_prompt=True) for k in range(n)]


def solo_rate(model: Any, tokenizer: Any, tokens: int, offset: int) -> float:
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    stamps = []
    ids = mx.array(prompts(tokenizer, 1, offset)[0])
    for _, _ in zip(range(tokens), generate_step(ids, model, max_tokens=tokens), strict=False):
        stamps.append(time.perf_counter())
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def batch_rate(model: Any, tokenizer: Any, n: int, tokens: int, offset: int, shared: bool) -> float:
    """Decode tok/s once every sequence has its first token."""
    import mlx.core as mx
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.sample_utils import make_sampler

    generator = BatchGenerator(model, stop_tokens=[], completion_batch_size=max(n, 8),
                               prefill_batch_size=max(n, 8))
    samplers = None if shared else [make_sampler(temp=0.0) for _ in range(n)]
    generator.insert(prompts(tokenizer, n, offset), max_tokens=[tokens] * n, samplers=samplers)
    seen: set[int] = set()
    produced, started, finished = 0, None, 0
    while finished < n:
        for response in generator.next_generated():
            if started is None and len(seen) == n:
                started = time.perf_counter()
            if started is not None:
                produced += 1
            seen.add(response.uid)
            finished += response.finish_reason is not None
    rate = produced / (time.perf_counter() - started) if started else 0.0
    generator.close()
    mx.clear_cache()
    return rate


@contextlib.contextmanager
def mask_off():
    from mlx_lm.models import cache

    real = cache.BatchKVCache.make_mask

    def make_mask(self: Any, N: int, return_array: bool = False, **kwargs: Any) -> Any:
        return None if N == 1 else real(self, N, return_array=return_array, **kwargs)

    cache.BatchKVCache.make_mask = make_mask
    try:
        yield
    finally:
        cache.BatchKVCache.make_mask = real


def probe(args: argparse.Namespace, kind: str, streams: list[int]) -> dict[str, float]:
    """Every variant on one model, in one process."""
    import mlx.core as mx
    from mlx_lm import load

    from mlxhost.engine import kernels

    model, tokenizer = load(str(build(args, kind)))
    rows: dict[str, float] = {}

    def run(name: str, n: int, offset: int, *, shared: bool = True) -> None:
        def rate(k: int) -> float:
            if n == 0:
                return solo_rate(model, tokenizer, args.tokens, offset + k)
            return batch_rate(model, tokenizer, n, args.tokens, offset + k, shared)

        rate(0)  # compile / warm
        rows[name] = rate(1)
        say(f"{kind} {name}: {rows[name]:.1f} tok/s")

    run("generate_step, 1 stream", 0, 10)
    run("BatchGenerator, 1 seq", 1, 20)
    with mask_off():
        run("BatchGenerator, 1 seq, mask off", 1, 30)
    for n in streams:
        run(f"BatchGenerator, {n} seqs, shared sampler", n, 100 * n)
        run(f"BatchGenerator, {n} seqs, a sampler each", n, 100 * n + 50, shared=False)
    kernels.flatten_quantized_inputs(model)
    for n in streams:
        run(f"BatchGenerator, {n} seqs, 2-D qmm", n, 200 * n)
        with mask_off():
            run(f"BatchGenerator, {n} seqs, 2-D qmm, mask off (ceiling)", n, 200 * n + 50)
    mx.clear_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = probe_parser(__doc__)
    p.add_argument("--streams", default="8,16")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--budget-s", type=float, default=540.0)
    args = p.parse_args(argv)
    import mlx.core as mx

    out = args.out or args.work
    out.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"device": mx.device_info().get("device_name", str(mx.default_device())),
                             "mlx": mx.__version__, "tokens": args.tokens, "results": {}}
    streams = [int(n) for n in args.streams.split(",")]
    for kind in args.models.split(","):
        state["results"][kind] = probe(args, kind, streams)
        table = "\n\n".join(
            f"**{name}** ({state['device']}, MLX {state['mlx']}, {args.tokens} tokens a sequence, "
            "decode tok/s after every sequence's first token)\n\n"
            + md_table(["variant", "tok/s"], [[k, f"{v:.1f}"] for k, v in res.items()])
            for name, res in state["results"].items())
        (out / "gpu_step_probe.json").write_text(json.dumps(state, indent=2))
        (out / "gpu_step_probe.md").write_text(table)
    print((out / "gpu_step_probe.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
