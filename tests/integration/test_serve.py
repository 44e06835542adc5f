"""`mlxhost serve` over HTTP with the real SmolLM2 135M model (the fast default),
Qwen 0.5B where the listing of families is checked, and Gemma 270M for swaps."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import openai
import pytest

from mlxhost.models.starter.builder import TEST_MODELS

GEMMA = TEST_MODELS["gemma"].repo_id
QWEN = TEST_MODELS["qwen"].repo_id
SMOL = TEST_MODELS["smollm2"].repo_id

ASK = [{"role": "user", "content": "What is 2+2? Answer with a number."}]


def test_non_streaming_answer_is_coherent(smol_client):
    response = smol_client.chat.completions.create(model=SMOL, messages=ASK, max_tokens=10, temperature=0)
    choice = response.choices[0]
    assert "4" in choice.message.content
    assert choice.finish_reason == "stop"
    assert response.model == SMOL
    assert response.usage.prompt_tokens > 10
    assert 0 < response.usage.completion_tokens <= 10


def test_streaming_yields_deltas_finish_and_done(smol_server):
    body = {
        "model": SMOL,
        "messages": [{"role": "user", "content": "Name three colors, comma separated."}],
        "max_tokens": 12,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    lines = []
    with httpx.stream("POST", f"{smol_server.url}/v1/chat/completions", json=body, timeout=300) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"


def test_streaming_with_openai_client(smol_client):
    stream = smol_client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Count from 1 to 5."}],
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    deltas, finishes, usage = [], [], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                deltas.append(choice.delta.content)
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert len(deltas) >= 3
    assert finishes == ["length"] or finishes == ["stop"]
    assert usage is not None and usage.completion_tokens >= len(deltas)
    assert "1" in "".join(deltas)


def test_max_tokens_finish_length(smol_client):
    response = smol_client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_completion_tokens=3,
        temperature=0,
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 3


def test_seed_makes_sampling_repeatable(smol_client):
    def sample():
        return smol_client.chat.completions.create(
            model=SMOL,
            messages=[{"role": "user", "content": "Say a random word."}],
            max_tokens=5,
            temperature=1.0,
            seed=1234,
        ).choices[0].message.content

    assert sample() == sample()


def test_models_lists_both_families_with_context_window(client):
    models = {m.id: m for m in client.models.list().data}
    for name in ("gemma", "qwen", "mlx-community/gemma-3-4b-it-4bit",
                 "mlx-community/Qwen3-VL-4B-Instruct-4bit", QWEN, GEMMA):
        assert name in models, name
    extra = models[QWEN].model_extra
    assert extra["context_window"] == 32768  # Qwen2.5-Coder config
    assert extra["loaded"] is True
    assert models[GEMMA].model_extra["context_window"] == 32768  # Gemma 3 270M config
    assert models["gemma"].model_extra["context_window"] == 131072


def test_unknown_model_gets_404_body(smol_client):
    with pytest.raises(openai.NotFoundError) as caught:
        smol_client.chat.completions.create(model="nobody/nothing", messages=ASK, max_tokens=2)
    error = caught.value.body
    assert caught.value.status_code == 404
    assert error["code"] == "model_not_found" and error["param"] == "model"


def test_swap_to_gemma_and_back(smol_client, smol_server):
    response = smol_client.chat.completions.create(model=GEMMA, messages=ASK, max_tokens=4, temperature=0)
    assert response.model == GEMMA and response.choices[0].message.content is not None
    health = smol_server.health()
    assert health["model"] == GEMMA and health["status"] == "ok"
    response = smol_client.chat.completions.create(model=SMOL, messages=ASK, max_tokens=10, temperature=0)
    assert "4" in response.choices[0].message.content  # SmolLM2: "2 + 2 = 4", 8 tokens
    assert smol_server.health()["model"] == SMOL


def test_concurrent_requests_for_different_models_both_complete(smol_client, smol_server):
    swaps_before = smol_server.health()["swaps"]

    def ask(model):
        return smol_client.chat.completions.create(model=model, messages=ASK, max_tokens=4, temperature=0)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(ask, [GEMMA, SMOL]))
    assert [r.model for r in results] == [GEMMA, SMOL]
    assert all(r.choices[0].finish_reason in ("stop", "length") for r in results)
    assert smol_server.health()["swaps"] >= swaps_before + 1


def test_server_preloads_openblas_by_itself(start_server):
    """Started without LD_PRELOAD, `mlxhost serve` re-executes itself with OpenBLAS."""
    from mlxhost.cli.blas import find_openblas

    if find_openblas() is None:
        pytest.fail("libopenblas0-pthread is not installed (scripts/setup.sh installs it)")
    with start_server(env={"LD_PRELOAD": ""}, wait_for_model=False) as server:
        maps = open(f"/proc/{server.process.pid}/maps").read()
    assert "openblas" in maps


def test_serving_keeps_torch_out_even_where_it_is_installed(smol_client, smol_server):
    """The gguf extra installs torch; a server with a model loaded (transformers,
    mlx-vlm and the tokenizer imported) and a request answered never loads it."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed here (scripts/setup.sh installs the gguf extra)")
    reply = smol_client.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0
    )
    assert reply.choices[0].message.content
    maps = open(f"/proc/{smol_server.process.pid}/maps").read()
    assert "libtorch" not in maps and "libmlx" in maps


def test_second_turn_reuses_the_prefix_through_the_server(smol_client, smol_server):
    messages = [{"role": "user", "content": "Name a fruit that is yellow."}]
    first = smol_client.chat.completions.create(model=SMOL, messages=messages, max_tokens=8, temperature=0)
    before = smol_server.health()["prefix_cache"]["tokens_reused"]
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And one that is red?"},
    ]
    smol_client.chat.completions.create(model=SMOL, messages=messages, max_tokens=8, temperature=0)
    reused = smol_server.health()["prefix_cache"]["tokens_reused"] - before
    assert reused >= first.usage.prompt_tokens - 1


def test_sampling_knobs_on_the_real_model(smol_client):
    ask = [{"role": "user", "content": "Name a colour."}]

    def reply(**extra):
        response = smol_client.chat.completions.create(model=SMOL, messages=ask, max_tokens=6, **extra)
        return response.choices[0].message.content

    greedy = reply(temperature=0)
    # top_k=1 leaves one candidate: sampling at temperature 1 is greedy.
    assert reply(temperature=1.0, extra_body={"top_k": 1}) == greedy
    # A -100 bias on every token of the greedy reply's first word changes the reply.
    from transformers import AutoTokenizer

    from mlxhost.models.starter.builder import ensure_test_model

    tokenizer = AutoTokenizer.from_pretrained(ensure_test_model("smollm2"))
    first = tokenizer.encode(greedy, add_special_tokens=False)[0]
    assert reply(temperature=0, logit_bias={str(first): -100}) != greedy
    penalized = reply(temperature=0, frequency_penalty=2.0, presence_penalty=2.0)
    assert isinstance(penalized, str) and penalized


def test_logprobs_one_per_completion_token(smol_client):
    response = smol_client.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=6,
        temperature=0, logprobs=True, top_logprobs=2,
    )
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 2
        # Greedy: the chosen token is the most likely one.
        assert item.top_logprobs[0].logprob == pytest.approx(item.logprob, abs=1e-4)
        assert item.bytes == list(item.token.encode())
    stream = smol_client.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=6,
        temperature=0, logprobs=True, stream=True, stream_options={"include_usage": True},
    )
    streamed, usage = [], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.logprobs and choice.logprobs.content:
                streamed.extend(choice.logprobs.content)
    assert len(streamed) == usage.completion_tokens
    assert [i.token for i in streamed] == [i.token for i in content]


def test_n_choices_on_the_real_model(smol_client):
    response = smol_client.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "Say a random word."}], max_tokens=4,
        temperature=1.0, seed=5, n=2,
    )
    assert [c.index for c in response.choices] == [0, 1]
    assert all(c.message.content for c in response.choices)


SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "integer"},
        "unit": {"enum": ["apples", "pears"]},
        "sure": {"type": "boolean"},
    },
    "required": ["answer", "unit", "sure"],
    "additionalProperties": False,
}


# A prompt that asks for no JSON stays on Qwen: the grammar allows any run of
# whitespace between JSON tokens, and SmolLM2 fills the 60 tokens with newlines there.
@pytest.mark.parametrize(
    ("model", "prompt"),
    [(SMOL, "How many apples are 2 apples plus 2 apples?"), (QWEN, "Tell me a joke.")],
)
def test_json_schema_replies_are_exactly_valid_json(request, model, prompt):
    from mlxhost.families.toolcalls import schema_errors

    api = request.getfixturevalue("smol_client" if model == SMOL else "client")
    response = api.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=60, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "strict": True}},
    )
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    value = json.loads(choice.message.content)
    assert schema_errors(value, SCHEMA) == []


def test_json_object_and_a_bad_schema(smol_client):
    import openai

    response = smol_client.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "Give a JSON object with one key."}],
        max_tokens=30, temperature=0, response_format={"type": "json_object"},
    )
    content = response.choices[0].message.content
    if response.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    else:  # cut at max_tokens: still a JSON object's beginning
        assert content.lstrip().startswith("{")
    with pytest.raises(openai.BadRequestError) as caught:
        smol_client.chat.completions.create(
            model=SMOL, messages=[{"role": "user", "content": "x"}], max_tokens=4,
            response_format={"type": "json_schema", "json_schema": {"name": "b", "schema": {"type": "nope"}}},
        )
    assert caught.value.body["param"] == "response_format.json_schema.schema"
