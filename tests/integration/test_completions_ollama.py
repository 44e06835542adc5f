"""Legacy completions and the Ollama API against a real server: SmolLM2 135M (the
fast default), Qwen2.5-Coder 0.5B for fill-in-the-middle."""

from __future__ import annotations

import httpx
import ollama
import openai
import pytest

from mlxhost.models.starter.builder import TEST_MODELS

QWEN = TEST_MODELS["qwen"].repo_id
SMOL = TEST_MODELS["smollm2"].repo_id


@pytest.fixture
def olla(smol_server):
    return ollama.Client(host=smol_server.url, timeout=300)


def test_completions_plain_stream_and_echo(smol_client):
    plain = smol_client.completions.create(model=SMOL, prompt="def add(a, b):", max_tokens=8, temperature=0)
    assert plain.object == "text_completion" and plain.choices[0].text
    echoed = smol_client.completions.create(model=SMOL, prompt="x = ", max_tokens=4, temperature=0, echo=True)
    assert echoed.choices[0].text.startswith("x = ")
    chunks = list(smol_client.completions.create(model=SMOL, prompt="def add(a, b):", max_tokens=8,
                                                 temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text


def test_completions_fim_on_qwen(client):
    fim = client.completions.create(model=QWEN, prompt="def add(a, b):\n    return ",
                                    suffix="\n\nprint(add(1, 2))\n", max_tokens=8, temperature=0)
    assert fim.choices[0].text.strip()


def test_completions_bad_inputs_in_openai_shape(smol_client):
    with pytest.raises(openai.NotFoundError):
        smol_client.completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError) as info:
        smol_client.completions.create(model=SMOL, prompt="x", max_tokens=2, logprobs=2)
    assert info.value.body["param"] == "logprobs"
    with pytest.raises(openai.BadRequestError) as info:
        smol_client.completions.create(model=SMOL, prompt="word " * 40000, max_tokens=2)
    assert info.value.body["code"] == "context_length_exceeded"
    # An empty prompt has no token to continue from (found by the fuzz run: it was a 500).
    with pytest.raises(openai.BadRequestError) as info:
        smol_client.completions.create(model=SMOL, prompt="", max_tokens=2)
    assert info.value.body["param"] == "prompt"
    assert smol_client.completions.create(model=SMOL, prompt="x", max_tokens=1).choices


def test_ollama_client(olla):
    names = [m.model for m in olla.list().models]
    assert SMOL in names
    shown = olla.show(SMOL + ":latest")
    assert "completion" in shown.capabilities
    messages = [{"role": "user", "content": "Say hi"}]
    options = {"temperature": 0, "num_predict": 8}
    whole = olla.chat(model=SMOL, messages=messages, options=options)
    assert whole.done and whole.message.content and whole.eval_count
    parts = list(olla.chat(model=SMOL, messages=messages, options=options, stream=True))
    assert parts[-1].done
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    generated = olla.generate(model=SMOL, prompt="Say hi", options=options)
    assert generated.response and generated.done


def test_ollama_bad_inputs_in_ollama_shape(olla, smol_server):
    with pytest.raises(ollama.ResponseError) as info:
        olla.chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404
    for body in ({"messages": []}, {"model": SMOL, "messages": "x"},
                 {"model": SMOL, "messages": [{"role": "user", "content": "word " * 40000}], "stream": False}):
        response = httpx.post(f"{smol_server.url}/api/chat", json=body, timeout=300)
        assert response.status_code == 400
        assert isinstance(response.json()["error"], str)
    assert httpx.get(f"{smol_server.url}/api/version").status_code == 200


CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}


def test_ollama_format_schema_and_json_and_sampling_options(olla):
    import json

    from mlxhost.families.toolcalls import schema_errors

    messages = [{"role": "user", "content": "Tell me about Paris."}]
    options = {"temperature": 0, "num_predict": 60, "top_k": 20, "min_p": 0.05, "repeat_penalty": 1.1}
    reply = olla.chat(model=SMOL, messages=messages, format=CITY, options=options)
    assert schema_errors(json.loads(reply.message.content), CITY) == []
    generated = olla.generate(model=SMOL, prompt="Give a JSON object with the keys name and color for a cat.", format="json",
                              options={"temperature": 0, "num_predict": 200})
    assert isinstance(json.loads(generated.response), dict)
    with pytest.raises(ollama.ResponseError) as info:
        olla.chat(model=SMOL, messages=messages, options={"top_k": -1})
    assert info.value.status_code == 400 and "top_k" in info.value.error
