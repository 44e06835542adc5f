"""Memory budget, idle unload and metrics through the HTTP API (fake engine; the
real-model proofs are in tests/integration/test_memory.py and test_keep_alive.py)."""

from __future__ import annotations

import concurrent.futures
import math

import httpx
import pytest
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from mlxhost.api.app import create_app
from mlxhost.families.plugins import make_plugin_manager
from mlxhost.settings.table import Settings
from mlxhost.testing.fake_engine import FakeEnginePlugin, make_fake_model
from mlxhost.testing.http import live
from mlxhost.testing.live import wait_until

KiB, MiB = 1 << 10, 1 << 20
WEIGHTS = MiB
# The fake KV model costs 1 KiB per token in 256-token steps: with this budget
# one request of up to 256 tokens fits (and the weights), nothing longer.
BUDGET = WEIGHTS + 256 * KiB


@pytest.fixture
def kv_model(tmp_path):
    return str(make_fake_model(tmp_path / "fake-kv", context_window=4096, kv=True))


@pytest.fixture
def plugin():
    plugin = FakeEnginePlugin(reply="Hello from the fake engine.")
    plugin.weights_bytes = WEIGHTS
    return plugin


def app_client(plugin, models, **settings) -> TestClient:
    settings.setdefault("max_memory", BUDGET)
    app = create_app(Settings(extra_models=list(models), **settings),
                     make_plugin_manager(extra=[plugin]))
    return TestClient(app)


def metric(text: str, name: str, **labels: str) -> float:
    """A sample's value from an exposition text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


# -- the budget --------------------------------------------------------------------
def test_never_fits_is_a_400_in_each_apis_own_error_shape(plugin, kv_model):
    too_many = 1000  # + the prompt: far over the 256 tokens that fit
    with app_client(plugin, [kv_model]) as client:
        chat = client.post("/v1/chat/completions", json={
            "model": kv_model, "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": too_many})
        assert chat.status_code == 400
        error = chat.json()["error"]
        assert error["code"] == "memory_exceeded" and error["param"] == "max_tokens"
        assert "does not fit in memory" in error["message"]
        assert "at most 256 tokens" in error["message"]

        stream = client.post("/v1/chat/completions", json={
            "model": kv_model, "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": too_many, "stream": True})
        assert stream.status_code == 400  # before the first SSE byte
        assert stream.json()["error"]["code"] == "memory_exceeded"

        legacy = client.post("/v1/completions", json={
            "model": kv_model, "prompt": "Hi", "max_tokens": too_many})
        assert legacy.status_code == 400 and legacy.json()["error"]["code"] == "memory_exceeded"

        responses = client.post("/v1/responses", json={
            "model": kv_model, "input": "Hi", "max_output_tokens": too_many})
        assert responses.status_code == 400
        assert "does not fit in memory" in responses.json()["error"]["message"]

        anthropic = client.post("/v1/messages", json={
            "model": kv_model, "max_tokens": too_many,
            "messages": [{"role": "user", "content": "Hi"}]})
        assert anthropic.status_code == 400
        body = anthropic.json()
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert "does not fit in memory" in body["error"]["message"]

        ollama = client.post("/api/chat", json={
            "model": kv_model, "messages": [{"role": "user", "content": "Hi"}],
            "options": {"num_predict": too_many}, "stream": False})
        assert ollama.status_code == 400
        assert set(ollama.json()) == {"error"}
        assert "does not fit in memory" in ollama.json()["error"]

        # The server stays up and serves what fits.
        ok = client.post("/v1/chat/completions", json={
            "model": kv_model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 20})
        assert ok.status_code == 200
        memory = client.get("/health").json()["memory"]
        assert memory["refused"] == 6 and memory["budget"] == BUDGET
        assert memory["weights"] == WEIGHTS and memory["max_tokens_alone"] == 256


def test_without_max_tokens_the_reply_is_capped_at_the_effective_window(plugin, kv_model):
    with app_client(plugin, [kv_model]) as client:
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        # Not loaded: its weights on disk (none here) leave 1,280 tokens of 4,096.
        assert models[kv_model]["context_window"] == 4096
        assert models[kv_model]["effective_context_window"] == 1280
        plugin.reply = "x" * 400  # longer than what fits
        ok = client.post("/v1/chat/completions", json={
            "model": kv_model, "messages": [{"role": "user", "content": "Hi"}]})
        assert ok.status_code == 200
        usage = ok.json()["usage"]
        assert ok.json()["choices"][0]["finish_reason"] == "length"
        assert usage["prompt_tokens"] + usage["completion_tokens"] == 256
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert models[kv_model]["loaded"] and models[kv_model]["effective_context_window"] == 256


def test_a_request_that_fits_later_waits_then_gets_503_with_retry_after(plugin, kv_model):
    plugin.batch = True
    plugin.gate.clear()  # the first request holds its memory until the gate opens
    with live(plugin, [kv_model], max_memory=BUDGET, memory_wait=0.5) as url:
        body = {"model": kv_model, "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 50}
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, f"{url}/v1/chat/completions", json=body, timeout=30)
            assert plugin.started.wait(30)
            second = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
            assert second.status_code == 503
            assert second.json()["error"]["code"] == "server_busy"
            assert "waiting for memory" in second.json()["error"]["message"]
            assert int(second.headers["retry-after"]) >= 1
            plugin.gate.set()
            assert first.result(30).status_code == 200
        memory = httpx.get(f"{url}/health").json()["memory"]
        assert memory["timed_out"] == 1 and memory["requests_holding"] == 0


def test_requests_that_fit_one_at_a_time_all_complete(plugin, kv_model):
    plugin.batch = True
    plugin.gate.clear()
    with live(plugin, [kv_model], max_memory=BUDGET) as url:
        body = {"model": kv_model, "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 50}
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            asks = [pool.submit(httpx.post, f"{url}/v1/chat/completions", json=body, timeout=60)
                    for _ in range(4)]
            wait_until(lambda: httpx.get(f"{url}/health").json()["memory"]["waited"] == 3,
                       what="three requests waiting for memory")
            plugin.gate.set()
            statuses = [f.result(60).status_code for f in asks]
        assert statuses == [200] * 4
        memory = httpx.get(f"{url}/health").json()["memory"]
        assert memory["admitted_peak"] == 1 and plugin.max_active == 1


# -- idle unload ------------------------------------------------------------------------
def test_keep_alive_unloads_an_idle_model_and_the_next_request_reloads_it(plugin, fake_models):
    model = fake_models[0]
    with app_client(plugin, [model], keep_alive=0.05) as client:
        assert client.post("/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "Hi"}]}).status_code == 200
        wait_until(lambda: ("unload", model) in plugin.events, what="idle unload")
        health = client.get("/health").json()
        assert health["model"] is None
        assert health["keep_alive"]["idle_unloads"] == 1
        assert health["keep_alive"]["last_unloaded"] == model
        assert client.post("/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "Hi"}]}).status_code == 200
        assert [e for e in plugin.events if e[0] == "load"] == [("load", model)] * 2


def test_health_and_ps_say_when_the_model_unloads(plugin, fake_models):
    model = fake_models[0]
    with app_client(plugin, [model], keep_alive=3600.0) as client:
        client.post("/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "Hi"}]})
        keep = client.get("/health").json()["keep_alive"]
        assert keep["seconds"] == 3600 and keep["duration"] == "1h"
        assert 3500 < keep["unloads_in"] <= 3600 and keep["unloads_at"].endswith("Z")
        ps = client.get("/api/ps").json()["models"][0]
        assert ps["expires_at"][:16] == keep["unloads_at"][:16]
        # A request's keep_alive -1 keeps it forever.
        client.post("/api/chat", json={"model": model, "keep_alive": -1, "stream": False,
                                       "messages": [{"role": "user", "content": "Hi"}]})
        keep = client.get("/health").json()["keep_alive"]
        assert keep["seconds"] is None and keep["duration"] == "never"
        assert keep["unloads_at"] is None
        assert client.get("/api/ps").json()["models"][0]["expires_at"].startswith("9999")


@pytest.mark.parametrize(("path", "body"), [
    ("/api/chat", {"keep_alive": 0, "stream": False,
                   "messages": [{"role": "user", "content": "Hi"}]}),
    ("/api/generate", {"keep_alive": "0s", "stream": False, "prompt": "Hi"}),
    ("/v1/chat/completions", {"ttl": 0, "messages": [{"role": "user", "content": "Hi"}]}),
    ("/v1/completions", {"ttl": 0, "prompt": "Hi", "max_tokens": 3}),
    ("/v1/responses", {"ttl": 0, "input": "Hi"}),
])
def test_a_requests_keep_alive_zero_unloads_after_it(plugin, fake_models, path, body):
    model = fake_models[0]
    with app_client(plugin, [model]) as client:  # the server's default: 30 minutes
        response = client.post(path, json={"model": model, **body})
        assert response.status_code == 200, response.text
        wait_until(lambda: ("unload", model) in plugin.events, what="unload after the request")
        assert client.get("/health").json()["model"] is None


def test_ollama_load_and_unload_without_a_prompt(plugin, fake_models):
    model = fake_models[0]
    with app_client(plugin, [model]) as client:
        loaded = client.post("/api/generate", json={"model": model})
        assert loaded.status_code == 200
        assert loaded.json()["done"] and loaded.json()["done_reason"] == "load"
        assert client.get("/health").json()["model"] == model
        assert plugin.prompts == []  # nothing generated
        unloaded = client.post("/api/chat", json={"model": model, "messages": [], "keep_alive": 0})
        assert unloaded.json()["done_reason"] == "unload"
        assert unloaded.json()["message"] == {"role": "assistant", "content": ""}
        wait_until(lambda: ("unload", model) in plugin.events, what="unload")


@pytest.mark.parametrize("value", ["soon", True, [1]])
def test_a_bad_keep_alive_is_a_400_naming_it(plugin, fake_models, value):
    with app_client(plugin, fake_models) as client:
        response = client.post("/api/chat", json={
            "model": fake_models[0], "keep_alive": value,
            "messages": [{"role": "user", "content": "Hi"}]})
        assert response.status_code == 400
        assert "keep_alive" in response.json()["error"]


def test_huge_keep_alives_mean_forever(plugin, fake_models):
    model = fake_models[0]
    with app_client(plugin, [model]) as client:
        for body in ({"ttl": 10**400}, {"ttl": 10**12}):
            response = client.post("/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": "Hi"}], **body})
            assert response.status_code == 200
            assert client.get("/health").json()["keep_alive"]["duration"] == "never"
        response = client.post("/api/chat", json={
            "model": model, "keep_alive": 10**400, "stream": False,
            "messages": [{"role": "user", "content": "Hi"}]})
        assert response.status_code == 200
        assert client.get("/health").json()["keep_alive"]["unloads_at"] is None


def test_keep_alive_setting_accepts_durations():
    assert Settings.from_env({"MLXHOST_KEEP_ALIVE": "4s"}).keep_alive == 4.0
    assert Settings.from_env({"MLXHOST_KEEP_ALIVE": "-1"}).keep_alive == math.inf
    assert Settings.from_env({"MLXHOST_MAX_MEMORY": "75%"}).max_memory == 0.75


# -- metrics ------------------------------------------------------------------------------
def test_metrics_count_requests_tokens_and_latency(plugin, fake_models):
    model = fake_models[0]
    reply = len("Hello from the fake engine.")
    with app_client(plugin, [model]) as client:
        before = client.get("/metrics").text
        assert metric(before, "mlxhost_requests_total", endpoint="/v1/chat/completions") == 0
        for _ in range(2):
            assert client.post("/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": "Hi"}]}).status_code == 200
        bad = client.post("/v1/chat/completions", json={"model": model, "messages": []})
        assert bad.status_code == 400
        response = client.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
    labels = {"endpoint": "/v1/chat/completions", "model": model}
    assert metric(text, "mlxhost_requests_total", status="200", **labels) == 2
    assert metric(text, "mlxhost_requests_total", endpoint="/v1/chat/completions", status="400") == 1
    assert metric(text, "mlxhost_completion_tokens_total", model=model) == 2 * reply
    assert metric(text, "mlxhost_prompt_tokens_total", model=model) > 0
    assert metric(text, "mlxhost_time_to_first_token_seconds_count", model=model) == 2
    assert metric(text, "mlxhost_time_per_output_token_seconds_count", model=model) == 2 * (reply - 1)
    assert metric(text, "mlxhost_model_load_seconds_count", model=model) == 1
    assert metric(text, "mlxhost_model_loaded", model=model) == 1
    assert metric(text, "mlxhost_model_loads_total") == 1
    assert metric(text, "mlxhost_memory_budget_bytes") == BUDGET
    assert metric(text, "mlxhost_queue_depth") == 0


def test_metrics_need_the_api_key_unless_public(plugin, fake_models):
    with app_client(plugin, fake_models, api_key="k") as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer k"}).status_code == 200
    with app_client(plugin, fake_models, api_key="k", metrics_public=True) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/v1/models").status_code == 401  # only /metrics (and /health)
