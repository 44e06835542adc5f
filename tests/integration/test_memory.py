"""The memory budget against a real `mlxhost serve` (SmolLM2 135M fp32): --max-memory
just above the weights leaves room for one short request's KV cache at a time."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import openai
import pytest

from mlxhost.models.starter.builder import TEST_MODELS, ensure_test_model
from mlxhost.runtime.memory import KVLayout, weights_on_disk, workspace_bytes

SMOL = TEST_MODELS["smollm2"].repo_id
MiB = 1 << 20


def room_for_one() -> tuple[int, int]:
    """(budget, KV bytes of one short sequence): the weights and the workspace, plus
    1.5 sequences of up to 256 tokens (one fits, two do not)."""
    folder = ensure_test_model("smollm2")
    config = json.loads((folder / "config.json").read_text())
    layout = KVLayout.from_config(config)
    assert layout is not None
    one = layout.bytes_for(1)  # 256 tokens held: 11.25 MiB for this model
    fixed = weights_on_disk(folder) + workspace_bytes(config, prefill_chunk=512, max_batch=8)
    return fixed + one + one // 2, one


@pytest.fixture(scope="module")
def server(start_server):
    budget, _ = room_for_one()
    with start_server("--model", SMOL, "--max-memory", str(budget)) as server:
        yield server


@pytest.fixture
def api(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)


def ask(api: openai.OpenAI, text: str, max_tokens: int = 4) -> str:
    reply = api.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": text}], max_tokens=max_tokens,
        temperature=0,
    )
    return reply.choices[0].message.content or ""


def test_a_request_that_cannot_fit_is_a_clear_400_and_the_server_keeps_serving(api, server):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(api, "Write a long story.", max_tokens=2000)
    error = caught.value.body
    assert error["code"] == "memory_exceeded" and error["param"] == "max_tokens"
    assert "does not fit in memory" in error["message"]
    assert "at most 256 tokens" in error["message"]
    assert ask(api, "What is 2+2? Answer with a number.") != ""
    health = server.health()
    assert health["status"] == "ok" and health["memory"]["refused"] == 1
    # /v1/models: the model's window, and what of it fits in memory.
    models = {m["id"]: m for m in api.models.list().model_dump()["data"]}
    assert models[SMOL]["context_window"] == 8192  # SmolLM2 config
    assert models[SMOL]["effective_context_window"] == 256


def test_a_burst_that_fits_one_at_a_time_all_completes(api, server):
    questions = [f"What is {n}+{n}? Answer with a number." for n in range(2, 5)]
    with concurrent.futures.ThreadPoolExecutor(len(questions)) as pool:
        replies = list(pool.map(lambda q: ask(api, q, max_tokens=8), questions))
    assert all(reply for reply in replies)  # none lost, none failed
    memory = server.health()["memory"]
    # --max-batch is 8, but the budget let one sequence run at a time: the others waited.
    assert memory["admitted_peak"] == 1 and memory["waited"] >= 1
    assert memory["requests_holding"] == 0 and memory["requests_waiting"] == 0


def test_the_prefix_cache_shrinks_to_make_room(api, server):
    """Finished requests leave their KV in the prefix cache; once it would not leave
    room for the next request, its oldest entries go (no request waits for it)."""
    budget, _ = room_for_one()
    for n in range(5, 8):
        assert ask(api, f"Name the number {n}.")
    memory = server.health()["memory"]
    assert memory["prefix_shrinks"] >= 1
    assert memory["free"] >= 0  # weights + workspace + KV + prefix cache within the budget
    # The ledger beside MLX's own figures: the weights are most of what MLX holds.
    mlx = memory["mlx"]
    assert mlx["limit"] == budget
    assert memory["weights"] <= mlx["active"] <= budget
    assert memory["process"]["rss"] >= memory["weights"]


def test_health_reports_the_budget(server):
    budget, _ = room_for_one()
    memory = httpx.get(f"{server.url}/health", timeout=10).json()["memory"]
    assert memory["budget"] == budget
    assert memory["kv_bytes_per_token"] == 30 * 3 * 64 * 2 * 4  # 30 layers, 3 KV heads, fp32
