"""What the serving layer costs one stream per token, where the model is cheap
(``python -m bench.solo_overhead``; OpenBLAS preloaded, as the server runs).

On a GPU one 4B stream is bound by the CPU launching each step (py-spy on an
H100: 67% of the MLX thread in ``mx.async_eval``), so every microsecond the
server adds per token shows. On a CPU with a real model the matmuls hide it.
This builds a tiny fp32 Qwen3 (random weights, the Qwen test model's tokenizer,
2 layers of width 64: a few ms a token on CPU; ``--shape gemma3``: Gemma 3's
text model, one sliding-window and one global layer, Gemma's tokenizer;
``--shape smollm2``: the real SmolLM2-135M test model through the generic
family) and
measures one greedy stream side by side, round by round: mlx-lm's ``stream_generate`` in this process
(its own generation tok/s) and ``mlxhost serve`` over HTTP, streamed (decode
tok/s after the first token). With ``--profile`` (py-spy on PATH) the server is
recorded during the last round. ``--streams N`` (N > 1) measures N concurrent
non-streaming requests against mlx-lm's ``BatchGenerator`` with N sequences in
this process instead (``bench/gpu/batch_gpu.py``'s ``raw_rate`` and
``concurrent_rate``: aggregate tok/s, prefill included).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.http import streamed

PROMPT = "Write a long story about a lighthouse keeper and the sea."


def build(out: Path, shape: str = "qwen3") -> Path:
    """The tiny fp32 model folder of ``shape`` (made once): Qwen3, or Gemma 3's
    text model (sliding-window layers, the 262k vocabulary, Gemma's tokenizer);
    ``smollm2``: the real SmolLM2-135M test model, served by the generic family
    (llama architecture, no family plugin)."""
    if shape == "smollm2":
        from mlxhost.models.starter.builder import ensure_test_model

        return ensure_test_model("smollm2")
    if (out / "config.json").is_file():
        return out
    import mlx.core as mx
    from mlx_lm.models import gemma3_text, qwen3
    from mlx_lm.utils import save_config, save_model

    from bench.shaped_models import _copy_tokenizer, shape_config
    from mlxhost.models.starter.builder import ensure_test_model

    module, family = (gemma3_text, "gemma") if shape == "gemma3" else (qwen3, "qwen")
    config = shape_config(f"{shape}-4b", tiny=True)
    config.update(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1,
                  head_dim=32)
    if shape == "gemma3":
        # Two layers: one sliding-window (rotating cache), one global.
        config.update(num_hidden_layers=2, sliding_window_pattern=2, query_pre_attn_scalar=32)
    mx.random.seed(0)
    model = module.Model(module.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    out.mkdir(parents=True, exist_ok=True)
    save_model(out, model, donate_model=True)
    save_config(config, out / "config.json")
    _copy_tokenizer(ensure_test_model(family), out, vocab_size=config["vocab_size"])
    return out


def raw_rate(model: Any, tokenizer: Any, tokens: int) -> tuple[float, int]:
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    final = None
    for response in stream_generate(model, tokenizer, ids, max_tokens=tokens, sampler=make_sampler(temp=0.0)):
        final = response
    assert final is not None
    return final.generation_tps, final.generation_tokens


def served_rate(url: str, model: str, tokens: int) -> tuple[float, int]:
    body = {"model": model, "temperature": 0, "max_tokens": tokens, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": PROMPT}]}
    _, rate, produced = streamed(url, body)
    return rate, produced


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mlxhost-solo-overhead"))
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--serve-args", default="")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--shape", choices=("qwen3", "gemma3", "smollm2"), default="qwen3")
    args = parser.parse_args(argv)
    from mlx_lm import load

    from bench.systems import base_env
    from mlxhost.testing.server import ServerProcess

    args.work.mkdir(parents=True, exist_ok=True)
    path = build(args.work / f"tiny-{args.shape}-fp32", args.shape)
    model, tokenizer = load(str(path))
    raw_rate(model, tokenizer, 16)  # warm
    rates: dict[str, list[float]] = {"raw": [], "mlxhost": []}
    command = ["--model", str(path), "--allow-model-paths", "--max-batch", str(max(8, args.streams)),
               *args.serve_args.split()]
    with ServerProcess(command, env=base_env(), log_path=args.work / "serve.log") as server:
        served_rate(server.url, str(path), 16)  # warm
        for r in range(args.rounds):
            spy = None
            pyspy = shutil.which("py-spy")
            if args.profile and pyspy and r == args.rounds - 1:
                assert server.process is not None
                spy = subprocess.Popen(
                    [pyspy, "record", "--pid", str(server.process.pid), "--rate", "500", "--threads",
                     "--idle", "--format", "raw", "--nonblocking", "--output", str(args.work / "pyspy.txt")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            order = ("raw", "mlxhost") if r % 2 == 0 else ("mlxhost", "raw")
            for name in order:
                if args.streams > 1:
                    from bench.gpu.batch_gpu import concurrent_rate
                    from bench.gpu.batch_gpu import raw_rate as batch_rate

                    offset = 100 * r + (0 if name == "raw" else 50)
                    rate = (batch_rate(model, tokenizer, args.streams, args.tokens, offset) if name == "raw"
                            else concurrent_rate(server.url, str(path), args.streams, args.tokens, offset))
                    produced = args.streams * args.tokens
                else:
                    rate, produced = (raw_rate(model, tokenizer, args.tokens) if name == "raw"
                                      else served_rate(server.url, str(path), args.tokens))
                rates[name].append(rate)
                print(f"round {r} {name}: {rate:.0f} tok/s ({produced} tokens)", flush=True)
            if spy is not None:
                spy.send_signal(2)
                spy.wait(30)
    raw, served = statistics.median(rates["raw"]), statistics.median(rates["mlxhost"])
    print(f"median: raw stream_generate {raw:.0f} tok/s, mlxhost {served:.0f} tok/s, "
          f"mlxhost ÷ raw {served / raw:.2f}; per token {1e3 / served - 1e3 / raw:+.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
