"""Where does mlxhost's batched decode lose to raw ``BatchGenerator``? The
batch layer (``TextBatch``) driven directly in this process, beside raw
``BatchGenerator``, with no HTTP, scheduler or prefix cache in between.

Per round and N, interleaved: ``raw`` (every prompt inserted at once, as
``batch_gpu.raw_rate``), ``layer`` (``TextBatch``: N joins, then steps),
``layer-staggered`` (one join, two steps alone, then the other N-1 join: how
requests reach a server), ``layer-staggered-pb8`` (as staggered, with
``prefill_batch_size`` 8), ``layer-staggered-nosolo`` (as staggered, but the
first sequence goes straight into ``BatchGenerator`` instead of the
single-sequence loop), ``layer-waves4`` (N/4 join, one step, the next N/4...)
and ``layer-waves4-keep`` (the same with ``mx.clear_cache`` a no-op). For each: generated tokens ÷ wall
time, seconds until every sequence has its first token, and the median
decode step (all sequences past their first token).

    python3 bench/gpu/layer_probe.py --models qwen3-4b --streams 8,16 --rounds 3
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.gpu.batch_gpu import build, prompt  # noqa: E402
from bench.gpu.cli import probe_parser  # noqa: E402
from bench.gpu.side_by_side import set_flat  # noqa: E402
from bench.log import say  # noqa: E402


def prompts(tokenizer: Any, n: int, offset: int) -> list[list[int]]:
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": prompt(offset + k)}], add_generation_prompt=True)
        for k in range(n)
    ]


def raw(model: Any, tokenizer: Any, n: int, tokens: int, offset: int) -> dict[str, float]:
    import mlx.core as mx
    from mlx_lm.generate import BatchGenerator

    batch = prompts(tokenizer, n, offset)
    generator = BatchGenerator(model, stop_tokens=[], completion_batch_size=max(n, 8), prefill_batch_size=max(n, 8))
    started = time.perf_counter()
    generator.insert(batch, max_tokens=[tokens] * n)
    produced = finished = 0
    seen: set[int] = set()
    all_in = None
    steps: list[float] = []
    while finished < n:
        tic = time.perf_counter()
        responses = generator.next_generated()
        if all_in is not None:
            steps.append(time.perf_counter() - tic)
        for response in responses:
            produced += 1
            seen.add(response.uid)
            finished += response.finish_reason is not None
        if all_in is None and len(seen) == n:
            all_in = time.perf_counter() - started
    wall = time.perf_counter() - started
    generator.close()
    mx.clear_cache()
    return {"rate": produced / wall, "first_all_s": all_in or wall, "step_ms": 1000 * statistics.median(steps)}


def layer(model: Any, tokenizer: Any, n: int, tokens: int, offset: int, *, stagger: bool,
          prefill_batch: int | None = None, solo: bool = True, waves: int = 0,
          keep_cache: bool = False) -> dict[str, Any]:
    import mlx.core as mx

    if not keep_cache:
        return _layer(model, tokenizer, n, tokens, offset, stagger=stagger, prefill_batch=prefill_batch,
                      solo=solo, waves=waves)
    # BatchGenerator's prefill calls mx.clear_cache() after every chunk: on
    # CUDA the buffers then go back to the driver and the next steps allocate
    # them again. Skipped here to see what that costs.
    clear = mx.clear_cache
    mx.clear_cache = lambda: None
    try:
        return _layer(model, tokenizer, n, tokens, offset, stagger=stagger, prefill_batch=prefill_batch,
                      solo=solo, waves=waves)
    finally:
        mx.clear_cache = clear
        mx.clear_cache()


def _layer(model: Any, tokenizer: Any, n: int, tokens: int, offset: int, *, stagger: bool,
           prefill_batch: int | None, solo: bool, waves: int) -> dict[str, Any]:
    import mlx.core as mx

    from mlxhost.core.types import SamplingParams
    from mlxhost.engine.batch import TextBatch
    from mlxhost.engine.sampling import make_sampler

    batch = TextBatch(
        model, eos=set(), max_batch=n, prefill_step=2048,
        detokenizer=lambda: tokenizer.detokenizer,
        fetch_prefix=lambda tokens: (None, 0), store_prefix=lambda fed, cache: None,
        token_logprob=lambda *a: None,  # type: ignore[arg-type,return-value]
    )
    if prefill_batch is not None:
        batch._generator.prefill_batch_size = prefill_batch
    if not solo:  # the first sequence goes straight into BatchGenerator
        batch._start_solo = lambda sequence: None  # type: ignore[method-assign]
    params = SamplingParams(temperature=0.0, max_tokens=tokens)
    counts: dict[int, int] = {}
    done: set[int] = set()

    def emitter(uid: list[int]) -> Any:
        def emit(step: Any, error: BaseException | None) -> None:
            assert error is None, error
            counts[uid[0]] = counts.get(uid[0], 0) + 1
            if step.finish is not None:
                done.add(uid[0])
        return emit

    def join(text: list[int]) -> None:
        box: list[int] = [0]
        box[0] = batch.join(tuple(text), params, make_sampler(params), [], emitter(box))

    batch_prompts = prompts(tokenizer, n, offset)
    early: list[float] = []  # every step until all have a first token
    started = time.perf_counter()
    if waves:
        # as requests reach a server: a few at a time, a step apart
        size = max(1, n // waves)
        for start in range(0, n, size):
            for text in batch_prompts[start : start + size]:
                join(text)
            tic = time.perf_counter()
            batch.step()
            early.append(time.perf_counter() - tic)
    elif stagger:
        join(batch_prompts[0])
        batch.step()
        batch.step()
        for text in batch_prompts[1:]:
            join(text)
    else:
        for text in batch_prompts:
            join(text)
    all_in = None
    steps: list[float] = []
    while len(done) < n:
        tic = time.perf_counter()
        batch.step()
        if all_in is not None:
            steps.append(time.perf_counter() - tic)
        else:
            early.append(time.perf_counter() - tic)
        if all_in is None and len(counts) == n:
            all_in = time.perf_counter() - started
    wall = time.perf_counter() - started
    produced = sum(counts.values())
    batch._generator.close()
    mx.clear_cache()
    return {"rate": produced / wall, "first_all_s": all_in or wall, "step_ms": 1000 * statistics.median(steps),
            "early_steps_ms": [round(1000 * t, 1) for t in early]}


TRACED: dict[str, list[float]] = {}


def trace_batch_generator() -> None:
    """Wrap BatchGenerator's parts to time each (mx.synchronize before and after,
    so a part's time is its own GPU work, not its predecessors')."""
    import importlib

    import mlx.core as mx

    g = importlib.import_module("mlx_lm.generate")  # the module (mlx_lm.generate is also a function)

    targets = [(g.PromptProcessingBatch, name) for name in ("prompt", "generate", "split", "extend", "filter")]
    targets += [(g.GenerationBatch, name) for name in ("next", "extend", "filter")]
    targets += [(g.BatchGenerator, "_make_batch")]
    for cls, name in targets:
        original = getattr(cls, name)

        def wrapped(*a: Any, __original: Any = original, __key: str = f"{cls.__name__}.{name}", **k: Any) -> Any:
            mx.synchronize()
            tic = time.perf_counter()
            try:
                return __original(*a, **k)
            finally:
                mx.synchronize()
                TRACED.setdefault(__key, []).append(time.perf_counter() - tic)

        setattr(cls, name, wrapped)


def main(argv: list[str] | None = None) -> int:
    p = probe_parser(__doc__)
    p.add_argument("--streams", default="8,16")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=540.0)
    p.add_argument("--variants", default="", help="comma-separated subset (default: all)")
    p.add_argument("--trace", action="store_true",
                   help="time BatchGenerator's parts (synchronizing around each) and report totals per variant")
    p.add_argument("--same-prompts", action="store_true",
                   help="every round on the compile pass's prompts (shapes seen before: no kernel compilation)")
    args = p.parse_args(argv)
    began = time.monotonic()
    out = args.out or args.work
    out.mkdir(parents=True, exist_ok=True)

    import mlx.core as mx
    from mlx_lm import load

    streams = [int(n) for n in args.streams.split(",")]
    if args.trace:
        trace_batch_generator()
    results: dict[str, Any] = {"tokens": args.tokens, "mlx": mx.__version__,
                               "device": mx.device_info().get("device_name", ""), "models": {}}
    for kind in args.models.split(","):
        path = build(args, kind)
        model, tokenizer = load(str(path))
        set_flat(model, True)
        variants = {
            "raw": functools.partial(raw, model, tokenizer, tokens=args.tokens),
            "layer": functools.partial(layer, model, tokenizer, tokens=args.tokens, stagger=False),
            "layer-staggered": functools.partial(layer, model, tokenizer, tokens=args.tokens, stagger=True),
            "layer-staggered-pb8": functools.partial(layer, model, tokenizer, tokens=args.tokens, stagger=True,
                                                     prefill_batch=8),
            "layer-staggered-nosolo": functools.partial(layer, model, tokenizer, tokens=args.tokens, stagger=True,
                                                        solo=False),
            "layer-waves4": functools.partial(layer, model, tokenizer, tokens=args.tokens, stagger=False, waves=4),
            "layer-waves4-keep": functools.partial(layer, model, tokenizer, tokens=args.tokens, stagger=False,
                                                   waves=4, keep_cache=True),
        }
        if args.variants:
            variants = {name: variants[name] for name in args.variants.split(",")}
        say(f"{kind}: compiling")
        for n in streams:
            for run in variants.values():
                run(n=n, offset=7 * n)
        table: dict[str, Any] = {name: {} for name in variants}
        for r in range(args.rounds):
            if time.monotonic() - began > args.budget_s:
                say(f"stopping after {r} rounds: over --budget-s")
                break
            names = list(variants) if r % 2 == 0 else list(reversed(variants))
            for n in streams:
                for name in names:
                    offset = 7 * n if args.same_prompts else 1000 * (r + 1) + 100 * n
                    TRACED.clear()
                    got = variants[name](n=n, offset=offset)
                    if args.trace:
                        got["trace_ms"] = {key: [round(1000 * t, 1) for t in times][:12] + [round(1000 * sum(times), 1)]
                                           for key, times in TRACED.items()}
                        say(f"trace {name}: {json.dumps(got['trace_ms'])}")
                    table[name].setdefault(str(n), []).append(got)
                    say(f"{kind} round {r} n={n} {name}: {got['rate']:.1f} tok/s, all first tokens "
                        f"{got['first_all_s']:.3f}s, decode step {got['step_ms']:.2f} ms, "
                        f"steps until then {got.get('early_steps_ms')}")
        table["median"] = {
            name: {n: {key: statistics.median(s[key] for s in samples) for key in ("rate", "first_all_s", "step_ms")}
                   for n, samples in table[name].items()}
            for name in variants
        }
        results["models"][kind] = table
        (out / "gpu_layer_probe.json").write_text(json.dumps(results, indent=2))
        say(f"{kind}: medians {json.dumps(table['median'], indent=1)}")
        del model
        mx.clear_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
