"""Embeddings: texts/s against sentence-transformers, and chat decode under embedding load.

Run: python -m bench.embeddings [--sentences 1000] [--batches 1,32,128] [--chat-tokens 40]
Writes the "Embeddings" section of docs/benchmarks.md.

1. Throughput: the same sentences (varied, 8-40 words) embedded with
   all-MiniLM-L6-v2 by mlxhost and by sentence-transformers (torch, CPU), at each
   batch size, alternating so both see the same machine. mlxhost is measured
   twice: its engine path in-process (tokenizer + the batcher's passes on an MLX
   worker thread) and over HTTP (a real ``mlxhost serve``, one client sending
   requests of ``batch`` inputs back to back).
2. Chat decode under load: the same server streams a chat alone, then while
   another client sends embedding requests back to back; decode tok/s is counted
   from the first to the last streamed token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.docs import DOC, write_section
from mlxhost.models.starter.builder import TEST_MODELS, ensure_test_model, install_into_hf_cache
from mlxhost.testing.embed_models import MINILM_REPO, ensure_minilm
from mlxhost.testing.server import ServerProcess

WORDS = ["the", "a", "river", "mountain", "city", "model", "server", "memory", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "market", "price", "rises", "falls", "under", "new", "old", "green", "system", "network", "language", "learning", "data", "vector", "search", "engine", "query", "answer", "cat", "house", "window", "light", "night", "morning", "rain", "sun", "travel", "train", "station", "music", "song", "garden", "tree", "flower", "computer", "program", "test"]


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))).capitalize() + "."
            for _ in range(n)]


def engine_rate(folder: Path, texts: list[str], batch: int) -> float:
    """Texts/s through mlxhost's engine path in this process (tokenize + passes on a worker)."""
    from mlxhost.core.encoder_facts import encoder_facts
    from mlxhost.models.registry import read_json
    from mlxhost.runtime.embedding.batcher import EncodeBatcher
    from mlxhost.runtime.embedding.mlx_model import EncoderModel
    from mlxhost.runtime.embedding.slots import load_tokenizer
    from mlxhost.runtime.worker import MLXWorker

    config = read_json(folder / "config.json")
    worker = MLXWorker()
    worker.start()

    async def run() -> float:
        model = await worker.run(EncoderModel, folder, config, encoder_facts(folder, config))
        tokenizer = load_tokenizer(folder)
        batcher = EncodeBatcher(worker)
        await batcher.run(model, [e.ids for e in tokenizer.encode_batch(texts[:8])])  # warm
        started = time.perf_counter()
        for i in range(0, len(texts), batch):
            ids = [e.ids for e in tokenizer.encode_batch(texts[i:i + batch])]
            await batcher.run(model, ids)
        return len(texts) / (time.perf_counter() - started)

    try:
        return asyncio.run(run())
    finally:
        worker.stop()


_ST_CHILD = """
import json, sys, time
import torch
from sentence_transformers import SentenceTransformer
folder, texts_file, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
texts = json.load(open(texts_file))
model = SentenceTransformer(folder, device="cpu")
model.encode(texts[:8], batch_size=8)
started = time.perf_counter()
model.encode(texts, batch_size=batch)
print(json.dumps({"rate": len(texts) / (time.perf_counter() - started),
                  "torch": torch.__version__, "threads": torch.get_num_threads()}))
"""


def st_rate(folder: Path, texts_file: Path, batch: int) -> dict[str, Any]:
    """sentence-transformers as its users run it: a process of its own, torch's
    default threads, no OpenBLAS preload (mlxhost's serving processes add it)."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-c", _ST_CHILD, str(folder), str(texts_file), str(batch)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def http_rate(url: str, texts: list[str], batch: int) -> float:
    with httpx.Client(timeout=600) as client:
        client.post(f"{url}/v1/embeddings", json={"model": MINILM_REPO, "input": texts[:8]})
        started = time.perf_counter()
        for i in range(0, len(texts), batch):
            reply = client.post(f"{url}/v1/embeddings",
                                json={"model": MINILM_REPO, "input": texts[i:i + batch]})
            reply.raise_for_status()
        return len(texts) / (time.perf_counter() - started)


def decode_rate(url: str, model: str, tokens: int) -> float:
    """Streamed decode tok/s of one chat, first to last token."""
    times = []
    body = {"model": model, "stream": True, "max_tokens": tokens, "temperature": 0,
            "messages": [{"role": "user", "content": "Count from 1 to 200, one number per line."}]}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as reply:
        for line in reply.iter_lines():
            if line.startswith("data: ") and '"content"' in line and line != "data: [DONE]":
                times.append(time.perf_counter())
    if len(times) < 2:
        raise RuntimeError("the chat streamed fewer than 2 tokens")
    return (len(times) - 1) / (times[-1] - times[0])


def with_load(url: str, texts: list[str], work: Any) -> tuple[Any, int]:
    """``work()`` while a client sends 64-sentence embedding requests back to back."""
    stop = threading.Event()
    sent = [0]

    def load() -> None:
        with httpx.Client(timeout=600) as client:
            i = 0
            while not stop.is_set():
                chunk = [texts[(i + k) % len(texts)] for k in range(64)]
                client.post(f"{url}/v1/embeddings", json={"model": MINILM_REPO, "input": chunk})
                sent[0] += len(chunk)
                i += 64

    thread = threading.Thread(target=load)
    thread.start()
    try:
        time.sleep(1.0)  # the load is running before the chat starts
        return work(), sent[0]
    finally:
        stop.set()
        thread.join(600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--batches", default="1,32,128")
    parser.add_argument("--chat-tokens", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    texts = sentences(args.sentences)
    folder = ensure_minilm()
    hub = Path(tempfile.mkdtemp(prefix="mlxhost-bench-hf-"))
    install_into_hf_cache(folder, MINILM_REPO, hub)
    chat = TEST_MODELS["qwen"].repo_id
    install_into_hf_cache(ensure_test_model("qwen"), chat, hub)

    texts_file = hub / "sentences.json"
    texts_file.write_text(json.dumps(texts))
    torch_info: dict[str, Any] = {}
    rates: dict[tuple[str, int], list[float]] = {}
    decode: dict[str, list[float]] = {"alone": [], "load": []}
    loaded_sent = []
    env = {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    with ServerProcess(["--model", chat], env=env, log_path=hub / "serve.log") as server:
        for round_ in range(args.rounds):
            for batch in batches:
                def st(b: int) -> float:
                    result = st_rate(folder, texts_file, b)
                    torch_info.update(result)
                    return float(result["rate"])

                for system, measure in (
                    ("sentence-transformers", st),
                    ("mlxhost engine", lambda b: engine_rate(folder, texts, b)),
                    ("mlxhost HTTP", lambda b: http_rate(server.url, texts, b)),
                ):
                    rate = measure(batch)
                    rates.setdefault((system, batch), []).append(rate)
                    print(f"round {round_ + 1} batch {batch:4d} {system:22s} {rate:8.1f} texts/s",
                          flush=True)
            alone = decode_rate(server.url, chat, args.chat_tokens)
            loaded, sent = with_load(server.url, texts,
                                     lambda: decode_rate(server.url, chat, args.chat_tokens))
            decode["alone"].append(alone)
            decode["load"].append(loaded)
            loaded_sent.append(sent)
            print(f"round {round_ + 1} decode alone {alone:.2f} tok/s, under embedding load "
                  f"{loaded:.2f} tok/s ({sent} sentences embedded meanwhile)", flush=True)
        side = server.health()["side_models"]["batch"]
    lines = [
        "## Embeddings",
        "",
        f"`python -m bench.embeddings --sentences {args.sentences} --batches {args.batches} "
        f"--chat-tokens {args.chat_tokens} --rounds {args.rounds}` on {os.cpu_count()} CPU cores "
        f"(Linux x86_64, no GPU; mlxhost with OpenBLAS preloaded as `mlxhost serve` runs; "
        f"sentence-transformers in its own process, torch {torch_info.get('torch')} with "
        f"{torch_info.get('threads')} threads, no preload). all-MiniLM-L6-v2 (fp32), {args.sentences} sentences "
        "of 8-40 words; medians of the rounds, every system measured in each round, one after "
        "the other.",
        "",
        "| batch | sentence-transformers (texts/s) | mlxhost engine (texts/s) | ratio | "
        "mlxhost over HTTP (texts/s) | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for batch in batches:
        st = statistics.median(rates[("sentence-transformers", batch)])
        engine = statistics.median(rates[("mlxhost engine", batch)])
        http = statistics.median(rates[("mlxhost HTTP", batch)])
        lines.append(f"| {batch} | {st:.1f} | {engine:.1f} | {engine / st:.2f}x | {http:.1f} | "
                     f"{http / st:.2f}x |")
    alone, loaded = statistics.median(decode["alone"]), statistics.median(decode["load"])
    lines += [
        "",
        f"Chat decode (Qwen2.5-Coder-0.5B fp32, {args.chat_tokens} tokens, streamed) in the same "
        f"server: alone {alone:.2f} tok/s, while another client sends 64-sentence embedding "
        f"requests back to back {loaded:.2f} tok/s: **{loaded / alone:.2f}x** (target 0.8x); "
        f"{statistics.median(loaded_sent):.0f} sentences were embedded during each loaded chat. "
        f"The server ran {side['passes']} encoder passes of at most {side['largest_pass']} inputs.",
        "",
        "The cores were shared with other work: load average "
        + " / ".join(f"{x:.1f}" for x in os.getloadavg()) + " (1 / 5 / 15 min) when the run ended.",
        "",
        "GPU: not run.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(DOC, "embeddings", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
