"""POST /v1/completions (legacy) against the fake engine."""

from __future__ import annotations

import json

import pytest
from litestar.testing import TestClient

from mlxhost.api.app import create_app
from mlxhost.families.hookspecs import hookimpl
from mlxhost.families.plugins import make_plugin_manager
from mlxhost.settings.table import Settings
from mlxhost.testing.fake_engine import FAKE_FAMILY, FakeEnginePlugin

MODEL = "fake-a"


def model_id(client) -> str:
    return next(m["id"] for m in client.get("/v1/models").json()["data"] if m["id"].endswith(MODEL))


def post(client, **body):
    body.setdefault("model", model_id(client))
    return client.post("/v1/completions", json=body)


def test_plain_completion_uses_the_raw_prompt(client, fake_plugin):
    fake_plugin.reply = "abc"
    response = post(client, prompt="def f():")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert body["choices"] == [{"index": 0, "text": "abc", "finish_reason": "stop", "logprobs": None}]
    assert body["usage"]["prompt_tokens"] == len("def f():")
    assert body["usage"]["completion_tokens"] == 3
    assert fake_plugin.prompts[-1].text == "def f():"  # no chat template


def test_default_max_tokens_is_16(client, fake_plugin):
    fake_plugin.reply = "x" * 40
    body = post(client, prompt="p").json()
    assert body["choices"][0]["text"] == "x" * 16
    assert body["choices"][0]["finish_reason"] == "length"


def test_echo_stop_and_several_prompts(client, fake_plugin):
    fake_plugin.reply = "one;two"
    body = post(client, prompt=["A", "B"], stop=";", echo=True).json()
    assert [c["text"] for c in body["choices"]] == ["Aone", "Bone"]
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"]["prompt_tokens"] == 2


def test_stream_sends_text_completion_chunks(client, fake_plugin):
    fake_plugin.reply = "hi"
    with client.stream("POST", "/v1/completions",
                       json={"model": model_id(client), "prompt": "P", "stream": True, "echo": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Phi"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_suffix_without_fim_is_a_400_naming_suffix(client):
    response = post(client, prompt="a", suffix="b")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "suffix"


class FakeFim:
    @hookimpl
    def mlxhost_fim_prompt(self, model, prefix, suffix):
        return f"<PRE>{prefix}<SUF>{suffix}<MID>" if model.family == FAKE_FAMILY else None


def test_suffix_goes_through_the_family_fim(fake_models):
    plugin = FakeEnginePlugin(reply="mid")
    pm = make_plugin_manager(extra=[plugin, FakeFim()])
    with TestClient(create_app(Settings(extra_models=fake_models), pm)) as client:
        body = post(client, prompt="a", suffix="b").json()
    assert body["choices"][0]["text"] == "mid"
    assert plugin.prompts[-1].text == "<PRE>a<SUF>b<MID>"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": [[1, 2, 3]]}, "prompt"),
        ({"prompt": [1, 2]}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": "x", "logprobs": 2}, "logprobs"),
        ({"prompt": "x", "best_of": 2}, "best_of"),
        ({"prompt": "x", "n": 2}, "n"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": "many"}, "max_tokens"),
        ({"prompt": "x", "temperature": 3}, "temperature"),
        ({"prompt": "x", "presence_penalty": 1}, "presence_penalty"),
        ({}, "prompt"),
    ],
)
def test_bad_requests_name_the_field(client, body, param):
    response = post(client, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    # The schema check may name the offending item itself ("prompt[0]").
    assert error["param"] == param or error["param"].startswith(param + "[")
    assert error["type"] == "invalid_request_error"


def test_unknown_model_and_missing_model(client):
    response = client.post("/v1/completions", json={"model": "nope", "prompt": "x"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    response = client.post("/v1/completions", json={"prompt": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"


def test_over_long_prompt_is_context_length_exceeded(client):
    response = post(client, prompt="x" * 1000)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_empty_prompt_is_a_400_naming_prompt(client):
    response = post(client, prompt="")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "prompt"


def test_invalid_json(client):
    response = client.post("/v1/completions", content=b"{", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "error" in response.json()


class Vocab:
    def __init__(self, tokens):
        self.tokens = {token: i for i, token in enumerate(tokens)}

    def get_vocab(self):
        return self.tokens


def test_qwen_fim_only_with_the_fim_tokens():
    from types import SimpleNamespace

    from mlxhost_qwen.fim import FIM_TOKENS, fim

    coder = SimpleNamespace(tokenizer=Vocab(FIM_TOKENS))
    assert fim(coder, "a", "b") == "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>"
    assert fim(SimpleNamespace(tokenizer=Vocab(["x"])), "a", "b") is None
    assert fim(SimpleNamespace(tokenizer=None), "a", "b") is None
