"""Idle unload and /metrics against a real `mlxhost serve --keep-alive 2s` (Gemma
270M fp32): the model unloads when idle, memory goes back to the baseline, the
next request loads it again, and the Prometheus counters follow the requests."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlxhost.models.starter.builder import TEST_MODELS
from mlxhost.testing.live import wait_until

GEMMA = TEST_MODELS["gemma"].repo_id
MiB = 1 << 20
# Generous bounds for a loaded CI machine; the keep-alive itself is 2 s.
UNLOAD_DEADLINE = 180


@pytest.fixture(scope="module")
def server(start_server):
    # No --model: the first request loads it, so the memory before any load is seen.
    with start_server("--keep-alive", "2s", wait_for_model=False) as server:
        yield server


def health(server) -> dict:
    return httpx.get(f"{server.url}/health", timeout=30).json()


def chat(server, **extra) -> dict:
    body = {"model": GEMMA, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3,
            "temperature": 0, **extra}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=600)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_unloads(server, count: int) -> dict:
    wait_until(lambda: health(server)["keep_alive"]["idle_unloads"] >= count,
               timeout=UNLOAD_DEADLINE, what=f"idle unload #{count}")
    return health(server)


def scrape(server) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, by (name, sorted labels); the text must parse."""
    response = httpx.get(f"{server.url}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_idle_model_unloads_memory_returns_and_the_next_request_reloads(server):
    before = health(server)
    assert before["model"] is None and before["memory"]["mlx"]["active"] == 0

    chat(server, ttl=6)  # LM Studio's ttl: a few seconds to read the loaded figures
    loaded = health(server)
    assert loaded["model"] == GEMMA and loaded["loads"] == 1
    weights = loaded["memory"]["weights"]
    assert weights > 500 * MiB and loaded["memory"]["mlx"]["active"] >= weights
    assert loaded["keep_alive"]["seconds"] == 6

    first = wait_for_unloads(server, 1)["memory"]
    assert health(server)["model"] is None
    # MLX holds (almost) nothing; the process gave the weights back to the OS.
    assert first["mlx"]["active"] < MiB and first["weights"] == 0
    assert first["process"]["rss"] < loaded["memory"]["process"]["rss"] - 0.8 * weights

    chat(server)  # loads it again, with the server's keep-alive (2 s)
    assert health(server)["loads"] == 2
    second = wait_for_unloads(server, 2)["memory"]
    # The baseline after an unload (libraries imported, tokenizer kept) does not creep.
    assert second["mlx"]["active"] < MiB
    assert abs(second["process"]["rss"] - first["process"]["rss"]) < 0.05 * first["process"]["rss"]


def test_ollama_keep_alive_forever_then_unload_now(server):
    unloads = health(server)["keep_alive"]["idle_unloads"]
    body = {"model": GEMMA, "prompt": "Hello", "stream": False, "keep_alive": -1,
            "options": {"num_predict": 2, "temperature": 0}}
    response = httpx.post(f"{server.url}/api/generate", json=body, timeout=600)
    assert response.status_code == 200 and response.json()["done"]
    keep = health(server)["keep_alive"]
    assert keep["duration"] == "never" and keep["unloads_at"] is None
    assert httpx.get(f"{server.url}/api/ps").json()["models"][0]["expires_at"].startswith("9999")
    # Ollama's unload form: no prompt, keep_alive 0.
    response = httpx.post(f"{server.url}/api/generate",
                          json={"model": GEMMA, "keep_alive": 0}, timeout=60)
    assert response.json()["done_reason"] == "unload"
    wait_for_unloads(server, unloads + 1)
    assert httpx.get(f"{server.url}/api/ps").json()["models"] == []


def test_metrics_parse_and_follow_the_requests(server):
    before = scrape(server)
    endpoint = ("endpoint", "/v1/chat/completions")
    ok = tuple(sorted([endpoint, ("model", GEMMA), ("status", "200")]))
    tokens = tuple(sorted([("model", GEMMA)]))
    # The first keeps the model for the second whatever the machine's load.
    replies = [chat(server, ttl=600), chat(server, stream=False)]
    bad = httpx.post(f"{server.url}/v1/chat/completions",
                     json={"model": GEMMA, "messages": []}, timeout=30)
    assert bad.status_code == 400
    after = scrape(server)

    def moved(name: str, labels: tuple = ()) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    assert moved("mlxhost_requests_total", ok) == 2
    assert moved("mlxhost_requests_total",
                 tuple(sorted([endpoint, ("model", ""), ("status", "400")]))) == 1
    completion = sum(r["usage"]["completion_tokens"] for r in replies)
    prompt = sum(r["usage"]["prompt_tokens"] for r in replies)
    assert moved("mlxhost_completion_tokens_total", tokens) == completion
    assert moved("mlxhost_prompt_tokens_total", tokens) == prompt
    assert moved("mlxhost_time_to_first_token_seconds_count", tokens) == 2
    assert moved("mlxhost_time_per_output_token_seconds_count", tokens) == completion - 2
    assert after[("mlxhost_model_loaded", tokens)] == 1  # the first chat loaded it again
    assert moved("mlxhost_model_loads_total") == 1
    assert moved("mlxhost_model_load_seconds_count", tokens) == 1
    assert after[("mlxhost_memory_weights_bytes", ())] > 500 * MiB
    assert after[("mlxhost_memory_active_bytes", ())] >= after[("mlxhost_memory_weights_bytes", ())]
    assert after[("mlxhost_memory_budget_bytes", ())] > after[("mlxhost_memory_active_bytes", ())]
    assert after[("mlxhost_process_resident_bytes", ())] > 0
    assert after[("mlxhost_queue_depth", ())] == 0
