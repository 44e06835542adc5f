"""What a decode step's matmuls cost by batch rows on this CPU
(``python -m bench.blas_rows``; run it with OpenBLAS preloaded, as the server runs).

A batched decode step multiplies B rows (one per sequence) by every weight
matrix. Reading the weights once per step is the whole point of batching, so
ideally B rows cost what one row costs; the ratio printed here (time at B rows
÷ time at 1 row) is the ceiling that sets on a batch's aggregate speed-up.
Shapes are Qwen2.5-Coder 0.5B's (the CPU test model): its MLP projections and
its LM head, fp32.
"""

from __future__ import annotations

import argparse
import time

SHAPES = {"mlp up (4864x896)": (4864, 896), "mlp down (896x4864)": (896, 4864),
          "lm head (151936x896)": (151936, 896)}


def timed(fn, repeats: int) -> float:
    import mlx.core as mx

    mx.eval(fn())
    started = time.perf_counter()
    for _ in range(repeats):
        mx.eval(fn())
    return (time.perf_counter() - started) / repeats


def main(argv: list[str] | None = None) -> int:
    import mlx.core as mx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,2,4,8,16")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    rows = [int(r) for r in args.rows.split(",")]
    print(f"| matrix | {' | '.join(f'{r} rows (ms)' for r in rows)} | {rows[-1]} rows ÷ 1 |")
    print(f"|---|{'---|' * (len(rows) + 1)}")
    for name, (n, k) in SHAPES.items():
        weight = mx.random.normal((n, k))
        mx.eval(weight)
        times = []
        for r in rows:
            x = mx.random.normal((r, k))
            mx.eval(x)
            times.append(timed(lambda x=x, w=weight: x @ w.T, args.repeats))
        cells = " | ".join(f"{t * 1e3:.2f}" for t in times)
        print(f"| {name} | {cells} | {times[-1] / times[0]:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
