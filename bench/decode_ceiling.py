"""How fast the CPU test model can decode at all, and why
(``python -m bench.decode_ceiling``; run it with OpenBLAS preloaded, as the server runs).

One decode step reads every weight once, so a single stream is bound by memory
bandwidth: this prints Qwen2.5-Coder 0.5B fp32's ``stream_generate`` decode
rate, then one LM-head row (its tied 151,936 x 896 embedding, the largest
weight) in fp32, fp16 and bf16 as time and GB/s. ``--threads`` runs the fp32
head again with that many OpenBLAS threads (``OPENBLAS_NUM_THREADS`` is read
at start-up, so each count runs in a process of its own).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

PROMPT = "Write a long story about the sea."


def decode_rate(tokens: int) -> float:
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_sampler

    from mlxhost.models.starter.builder import ensure_test_model

    model, tokenizer = load(str(ensure_test_model("qwen")))
    responses = list(stream_generate(model, tokenizer, PROMPT, max_tokens=tokens,
                                     sampler=make_sampler(temp=0.0)))
    return responses[-1].generation_tps


def head_row(dtype_name: str, repeats: int = 10) -> tuple[float, float]:
    """(ms, GB/s) of one row times the LM head in ``dtype_name``."""
    import mlx.core as mx

    dtype = getattr(mx, dtype_name)
    weight = mx.random.normal((151936, 896)).astype(dtype)
    row = mx.random.normal((1, 896)).astype(dtype)
    mx.eval(weight, row)
    for _ in range(2):
        mx.eval(row @ weight.T)
    started = time.perf_counter()
    for _ in range(repeats):
        mx.eval(row @ weight.T)
    seconds = (time.perf_counter() - started) / repeats
    return seconds * 1e3, weight.nbytes / seconds / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--threads", default="1", help="OpenBLAS thread counts to rerun the fp32 head with")
    parser.add_argument("--head-only", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.head_only:
        ms, rate = head_row(args.head_only)
        print(f"{ms:.1f} {rate:.2f}")
        return 0
    print(f"Qwen2.5-Coder 0.5B fp32 stream_generate: {decode_rate(args.tokens):.2f} tok/s decode")
    for name in ("float32", "float16", "bfloat16"):
        ms, rate = head_row(name)
        print(f"LM head row, {name}: {ms:.1f} ms ({rate:.2f} GB/s)")
    for count in filter(None, args.threads.split(",")):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": count}
        out = subprocess.run([sys.executable, "-m", "bench.decode_ceiling", "--head-only", "float32"],
                             env=env, capture_output=True, text=True, check=True).stdout.split()
        print(f"LM head row, float32, {count} OpenBLAS thread(s): {out[0]} ms ({out[1]} GB/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
