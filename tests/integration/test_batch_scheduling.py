"""Batch scheduling against a real `mlxhost serve` (real SmolLM2 135M and Gemma 270M):
a long prompt joining mid-batch is prefilled chunk by chunk between the running
streams' tokens, and a request for another model swaps only after the batch drains."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from mlxhost.models.starter.builder import TEST_MODELS
from mlxhost.testing.live import wait_until
from mlxhost.testing.smollm2 import NEVER_STOP

SMOL = TEST_MODELS["smollm2"].repo_id
GEMMA = TEST_MODELS["gemma"].repo_id
CHUNK = 16  # --prefill-chunk: small, so a ~300-token prompt takes many steps


@pytest.fixture(scope="module")
def server(start_server):
    with start_server("--model", SMOL, "--max-batch", "4", "--prefill-chunk", str(CHUNK)) as server:
        yield server


def content_deltas(response: httpx.Response):
    """Yield each non-empty content delta of an OpenAI chat SSE stream."""
    for line in response.iter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        choices = json.loads(line[6:]).get("choices") or [{}]
        text = choices[0].get("delta", {}).get("content")
        if text:
            yield text


def body(model: str, content: str, max_tokens: int, **extra) -> dict:
    return {"model": model, "stream": True, "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": content}], **extra}


def test_a_long_prompt_mid_batch_is_prefilled_between_the_running_tokens(server):
    long_text = " ".join(f"Box {k} holds {k * 13 % 89} marbles." for k in range(30))
    running_tokens: list[str] = []
    started = threading.Event()
    seen: dict = {}  # running_tokens' length at the long prompt's first token; its usage

    def runner() -> None:
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=300,
                          json=body(SMOL, "Count from 1 to 300, separated by commas.", 48,
                                    logit_bias=NEVER_STOP)) as r:
            for text in content_deltas(r):
                running_tokens.append(text)
                started.set()

    def long_one() -> None:
        request = {**body(SMOL, long_text + "\nWhich box holds the most?", 4),
                   "stream_options": {"include_usage": True}}
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=300, json=request) as r:
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    seen["usage"] = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    if choice["delta"].get("content") and "first" not in seen:
                        seen["first"] = len(running_tokens)

    with ThreadPoolExecutor(2) as pool:
        run = pool.submit(runner)
        assert started.wait(120)
        before = len(running_tokens)
        pool.submit(long_one).result()
        run.result()
    usage = seen["usage"]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    chunks = (usage["prompt_tokens"] - cached) // CHUNK
    assert chunks >= 8, usage
    # Every step prefills one chunk and decodes one token of the running stream:
    # it got about one token per chunk while the long prompt was read (a prefill
    # that froze it would leave it near `before`).
    assert seen["first"] - before >= chunks // 2, (before, seen, chunks)
    assert server.health()["batch"]["peak"] >= 2


def test_a_request_for_another_model_swaps_only_after_the_batch_drains(server):
    assert server.health()["model"] == SMOL
    swaps = server.health()["swaps"]
    events: list[str] = []
    lock = threading.Lock()

    def record(what: str) -> None:
        with lock:
            events.append(what)

    def smol_stream() -> tuple[int, str | None]:
        count, finish = 0, None
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=300,
                          json=body(SMOL, "Count from 1 to 100, separated by commas.", 40,
                                    logit_bias=NEVER_STOP)) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    choice = json.loads(line[6:])["choices"][0]
                    count += bool(choice["delta"].get("content"))
                    finish = choice.get("finish_reason") or finish
        record("smol done")
        return count, finish

    def gemma_request() -> str:
        reply = httpx.post(f"{server.url}/v1/chat/completions", timeout=300, json={
            "model": GEMMA, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": "Hello"}],
        })
        reply.raise_for_status()
        record("gemma done")
        return reply.json()["model"]

    with ThreadPoolExecutor(2) as pool:
        smol = pool.submit(smol_stream)
        wait_until(lambda: server.health()["running"] == 1, timeout=120, what="the SmolLM2 stream runs")
        gemma = pool.submit(gemma_request)
        wait_until(lambda: server.health()["waiting"] == 1, timeout=120, what="the Gemma request waits")
        assert server.health()["model"] == SMOL  # no swap while the batch runs
        count, finish = smol.result()
        assert gemma.result() == GEMMA
    assert finish == "length" and count >= 10  # the SmolLM2 stream ran to its max_tokens
    assert events == ["smol done", "gemma done"]
    health = server.health()
    assert health["model"] == GEMMA and health["swaps"] == swaps + 1
