"""Gemma tool calls end to end through the HTTP API, with the fake engine (no
model): the fake engine replies one character per token, so streaming splits
the reply at every character."""

from __future__ import annotations

import json

import pytest
from litestar.testing import TestClient

from mlxhost.app import create_app
from mlxhost.plugins import make_plugin_manager
from mlxhost.settings import Settings
from mlxhost.testing.fake_engine import FakeEnginePlugin

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
DRIFT = 'get_weather(city="Paris")'
TAGGED = 'Checking.\n\n```tool_code\nget_weather("Paris")\n```\n'


@pytest.fixture
def make_client(tmp_path):
    folder = tmp_path / "tiny-gemma"
    folder.mkdir()
    config = {"model_type": "gemma3", "max_position_embeddings": 32768}
    (folder / "config.json").write_text(json.dumps(config))

    def make(reply: str) -> TestClient:
        pm = make_plugin_manager(extra=[FakeEnginePlugin(reply=reply)])
        return TestClient(create_app(Settings(extra_models=[str(folder)]), pm))

    return make


def body(**extra):
    return {
        "model": "tiny-gemma",
        "messages": [{"role": "user", "content": "What's the weather in Paris right now?"}],
        "tools": TOOLS,
        **extra,
    }


def model_id(client):
    """The local folder's model (its id is its path)."""
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    return next(i for i in ids if i.endswith("tiny-gemma"))


@pytest.mark.parametrize(("reply", "content"), [(DRIFT, None), (TAGGED, "Checking.")])
def test_non_streaming_tool_call(make_client, reply, content):
    with make_client(reply) as client:
        response = client.post("/v1/chat/completions", json=body(model=model_id(client)))
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == content
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert call["id"].startswith("call_")


def test_streaming_tool_call(make_client):
    with make_client(TAGGED) as client:
        response = client.post(
            "/v1/chat/completions", json=body(model=model_id(client), stream=True)
        )
    chunks = [
        json.loads(line[6:])
        for line in response.text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    content = "".join(d.get("content") or "" for d in deltas)
    assert content == "Checking."
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert calls[0]["function"]["name"] == "get_weather"
    arguments = "".join(tc["function"]["arguments"] for tc in calls)
    assert json.loads(arguments) == {"city": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all("```" not in (d.get("content") or "") for d in deltas)


def test_tool_choice_none_leaves_the_text_alone(make_client):
    with make_client(DRIFT) as client:
        response = client.post(
            "/v1/chat/completions", json=body(model=model_id(client), tool_choice="none")
        )
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == DRIFT
