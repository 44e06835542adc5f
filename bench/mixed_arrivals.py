"""Short prompts arriving together with a long one: their time to first token.

``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 python -m bench.mixed_arrivals``
starts one ``mlxhost serve`` (Qwen2.5-Coder 0.5B fp32, ``--max-batch 8``) and, in
one run, sends 7 short streaming prompts alone, then 7 short prompts and one
~1,000-token prompt at the same moment, and prints each case's TTFTs (median
and max of the short ones, and the long one's). Padding a short prompt to the
long one's prefill chunk multiplies prefill work by the batch size on CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.batching import first_token_after, long_prompt, prompt


def _ttfts(url: str, model: str, contents: list[str]) -> list[float]:
    with ThreadPoolExecutor(len(contents)) as pool:
        return list(pool.map(lambda c: first_token_after(url, c, model), contents))


def measure(offset: int = 0) -> dict[str, Any]:
    from bench.systems import base_env
    from mlxhost.models.starter.builder import ensure_test_model
    from mlxhost.testing.server import ServerProcess

    model_dir = ensure_test_model("qwen")
    model = str(model_dir)
    server = ServerProcess(
        ["--model", model, "--allow-model-paths", "--max-batch", "8"], env=base_env()
    )
    with server:
        first_token_after(server.url, prompt(offset + 999), model)  # warm
        alone = _ttfts(server.url, model, [prompt(offset + k) for k in range(7)])
        mixed = _ttfts(
            server.url, model,
            [long_prompt(offset + 50)] + [prompt(offset + 100 + k) for k in range(7)],
        )
    shorts = sorted(mixed[1:])
    alone.sort()
    return {
        "short_alone_median_s": alone[3], "short_alone_max_s": alone[-1],
        "short_with_long_median_s": shorts[3], "short_with_long_max_s": shorts[-1],
        "long_with_shorts_s": mixed[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--offset", type=int, default=int(time.time()) % 1000 * 1000)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.offset), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
