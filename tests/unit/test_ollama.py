"""The Ollama API subset against the fake engine."""

from __future__ import annotations

import json

import pytest


def model_id(client) -> str:
    return next(m["id"] for m in client.get("/v1/models").json()["data"] if m["id"].endswith("fake-a"))


def test_tags_version_show_ps(client):
    name = model_id(client)
    tags = client.get("/api/tags").json()["models"]
    entry = next(m for m in tags if m["name"] == name)
    assert entry["details"]["format"] == "mlx"
    assert entry["size"] > 0
    assert client.get("/api/version").json()["version"].count(".") == 2
    shown = client.post("/api/show", json={"model": name + ":latest"}).json()
    assert "completion" in shown["capabilities"]
    assert any(k.endswith("context_length") for k in shown["model_info"])
    assert client.get("/api/ps").json() == {"models": []}
    client.post("/api/chat", json={"model": name, "stream": False,
                                   "messages": [{"role": "user", "content": "hi"}]})
    assert client.get("/api/ps").json()["models"][0]["name"] == name


def test_chat_not_streamed(client, fake_plugin):
    fake_plugin.reply = "hey"
    body = client.post("/api/chat", json={
        "model": model_id(client), "stream": False, "keep_alive": "5m", "think": False,
        "options": {"temperature": 0, "num_predict": 2, "seed": 1},
        "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}],
    }).json()
    assert body["done"] is True
    assert body["message"] == {"role": "assistant", "content": "he"}
    assert body["done_reason"] == "length"
    assert body["eval_count"] == 2
    assert "user: hi" in fake_plugin.prompts[-1].text


def test_chat_streams_ndjson(client, fake_plugin):
    fake_plugin.reply = "abc"
    with client.stream("POST", "/api/chat", json={
        "model": model_id(client), "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert "".join(x["message"]["content"] for x in lines) == "abc"
    assert lines[-1]["done"] is True and lines[-1]["prompt_eval_count"] > 0
    assert all(not x["done"] for x in lines[:-1])


def test_generate_template_raw_and_system(client, fake_plugin):
    fake_plugin.reply = "ok"
    name = model_id(client)
    body = client.post("/api/generate", json={"model": name, "prompt": "P", "system": "S",
                                              "stream": False}).json()
    assert body["response"] == "ok" and body["done"]
    assert fake_plugin.prompts[-1].text == "system: S\nuser: P\nassistant: "
    client.post("/api/generate", json={"model": name, "prompt": "RAW", "raw": True, "stream": False})
    assert fake_plugin.prompts[-1].text == "RAW"


def test_tool_calls_in_history_are_accepted(client, fake_plugin):
    response = client.post("/api/chat", json={
        "model": model_id(client), "stream": False,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
            {"role": "tool", "content": "42", "tool_name": "f"},
        ]})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("path", "body", "status", "word"),
    [
        ("/api/chat", {"messages": []}, 400, "model"),
        ("/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "nope"),
        ("/api/chat", {"messages": "x"}, 400, "messages"),
        ("/api/chat", {"format": "xml", "messages": [{"role": "user", "content": "x"}]}, 400, "format"),
        ("/api/chat", {"format": 3, "messages": [{"role": "user", "content": "x"}]}, 400, "format"),
        ("/api/chat", {"options": {"top_k": -1}, "messages": [{"role": "user", "content": "x"}]}, 400, "options.top_k"),
        ("/api/chat", {"options": {"min_p": 2}, "messages": [{"role": "user", "content": "x"}]}, 400, "options.min_p"),
        ("/api/chat", {"options": {"repeat_penalty": 0}, "messages": [{"role": "user", "content": "x"}]}, 400,
         "options.repeat_penalty"),
        ("/api/chat", {"options": {"mirostat": 1}, "messages": [{"role": "user", "content": "x"}]}, 400, "mirostat"),
        ("/api/chat", {"options": {"num_ctx": 10**7}, "messages": [{"role": "user", "content": "x"}]}, 400, "num_ctx"),
        ("/api/chat", {"messages": [{"role": "user", "content": 5}]}, 400, "content"),
        ("/api/generate", {"prompt": 3}, 400, "prompt"),
        ("/api/generate", {"prompt": "a", "suffix": "b", "stream": False}, 400, "suffix"),
        ("/api/generate", {"prompt": "x" * 1000, "stream": False}, 400, "context"),
        ("/api/show", {"model": "nope"}, 404, "nope"),
    ],
)
def test_errors_in_ollama_shape(client, path, body, status, word):
    if "model" not in body and not (path == "/api/chat" and body.get("messages") == []):
        body = {"model": model_id(client), **body}
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert list(error) == ["error"] and isinstance(error["error"], str)
    assert word in error["error"]


def test_unknown_api_path_is_ollama_shaped(client):
    response = client.get("/api/nothing")
    assert response.status_code == 404
    assert isinstance(response.json()["error"], str)


def test_raw_prompt_rejects_images_and_system(client):
    response = client.post("/api/generate", json={"model": model_id(client), "prompt": "x", "raw": True,
                                                   "images": ["aGk="], "stream": False})
    assert response.status_code == 400
    assert "images" in response.json()["error"]


def test_tool_call_leaves_in_ollama_shape():
    from mlxhost.api.formats.ollama import _call_json
    from mlxhost.core.types import ToolCall

    call = ToolCall(name="f", arguments='{"a": 1}', id="c1")
    assert _call_json(call) == {"function": {"name": "f", "arguments": {"a": 1}}}


def test_options_speculative_reaches_the_engine(client, fake_plugin):
    for options in ({"speculative": False}, {}):
        body = {"model": model_id(client), "stream": False, "options": options,
                "messages": [{"role": "user", "content": "hi"}]}
        assert client.post("/api/chat", json=body).status_code == 200
    assert [p.speculative for p in fake_plugin.params[-2:]] == [False, True]
