"""Server logic over HTTP with the fake engine (no MLX)."""

from __future__ import annotations

import json

import pytest


def chat(client, model, content="Hi", **extra):
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return client.post("/v1/chat/completions", json=body)


def sse_events(response) -> list:
    events = []
    for line in response.text.splitlines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_non_streaming_completion(client, fake_models, fake_plugin):
    response = chat(client, fake_models[0])
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": fake_plugin.reply}
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["completion_tokens"] == len(fake_plugin.reply)
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_streaming_completion(client, fake_models, fake_plugin):
    response = chat(client, fake_models[0], stream=True, stream_options={"include_usage": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == fake_plugin.reply
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_max_tokens_gives_length(client, fake_models):
    body = chat(client, fake_models[0], max_tokens=5).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5
    assert len(body["choices"][0]["message"]["content"]) == 5


def test_stop_string_cuts_output(client, fake_models):
    body = chat(client, fake_models[0], stop=["fake"]).json()
    assert body["choices"][0]["message"]["content"] == "Hello from the "
    assert body["choices"][0]["finish_reason"] == "stop"


def test_unknown_model_is_404_in_openai_shape(client):
    response = chat(client, "no-such/model")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "model"
    assert "no-such/model" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}, "max_tokens"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 7}, "temperature"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ],
)
def test_invalid_body_names_the_field(client, body, param):
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def test_malformed_json(client):
    response = client.post(
        "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_path_is_openai_shaped(client):
    response = client.get("/v1/nothing")
    assert response.status_code == 404
    assert "error" in response.json()


def test_models_lists_families_aliases_and_context_windows(client, fake_models):
    data = client.get("/v1/models").json()["data"]
    by_id = {m["id"]: m for m in data}
    assert by_id["gemma"]["alias_for"] == "mlx-community/gemma-3-4b-it-4bit"
    assert by_id["qwen"]["alias_for"] == "mlx-community/Qwen3-VL-4B-Instruct-4bit"
    assert by_id["mlx-community/gemma-3-4b-it-4bit"]["context_window"] == 131072
    assert by_id["mlx-community/Qwen3-VL-4B-Instruct-4bit"]["context_window"] == 262144
    assert by_id[fake_models[1]]["context_window"] == 128
    assert all(m["object"] == "model" for m in data)


def test_context_window_override_is_reported(make_client):
    with make_client(context_window=64) as client:
        data = client.get("/v1/models").json()["data"]
    assert {m["context_window"] for m in data} == {64}


def test_swap_unloads_before_loading(client, fake_models, fake_plugin):
    a, b = fake_models
    assert chat(client, a).status_code == 200
    assert client.get("/health").json()["model"] == a
    assert chat(client, b).status_code == 200
    health = client.get("/health").json()
    assert health["model"] == b and health["swaps"] == 1
    loads = [e for e in fake_plugin.events if e[0] in ("load", "unload")]
    assert loads == [("load", a), ("unload", a), ("load", b)]


def test_context_length_exceeded(client, fake_models):
    # fake-b has a 128-token window; the fake tokenizer is one token per byte.
    response = chat(client, fake_models[1], content="x" * 500)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "messages"
    assert error["message"].startswith("This model's maximum context length is 128 tokens.")


def test_load_failure_is_reported_and_server_recovers(client, fake_models, fake_plugin):
    fake_plugin.fail_load = "weights are corrupt"
    response = chat(client, fake_models[0])
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "model_load_failed" and "corrupt" in error["message"]
    assert client.get("/health").json()["last_error"]
    fake_plugin.fail_load = None
    assert chat(client, fake_models[0]).status_code == 200


def test_health(client):
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["model"] is None and body["loading"] is None


@pytest.mark.parametrize("seed", [-916433, 0, 2**63 + 5])
def test_any_integer_seed_is_accepted(client, fake_models, seed):
    assert chat(client, fake_models[0], seed=seed).status_code == 200


def test_generation_stops_when_the_parser_asks(make_client, fake_models, fake_plugin):
    from mlxhost.hookspecs import hookimpl
    from mlxhost.types import ContentDelta

    class StopAtBang:
        def __init__(self):
            self.stop_requested = False

        def feed(self, text):
            self.stop_requested = "!" in text
            return [ContentDelta(text)]

        def finish(self):
            return []

    class Plugin:
        @hookimpl
        def mlxhost_tool_call_parser(self, model):
            return lambda tools: StopAtBang()

    fake_plugin.reply = "Stop here! not this"
    from litestar.testing import TestClient

    from mlxhost.app import create_app
    from mlxhost.plugins import make_plugin_manager
    from mlxhost.settings import Settings

    app = create_app(Settings(extra_models=fake_models), make_plugin_manager(extra=[fake_plugin, Plugin()]))
    with TestClient(app) as client:
        body = chat(client, fake_models[0]).json()
    assert body["choices"][0]["message"]["content"] == "Stop here!"
    assert body["usage"]["completion_tokens"] == len("Stop here!")
