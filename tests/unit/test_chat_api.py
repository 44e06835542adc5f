"""Server logic over HTTP with the fake engine (no MLX)."""

from __future__ import annotations

import attrs
import pytest

from mlxhost.testing.http import chat, sse_events


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
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 9}, "n"),
    ],
)
def test_invalid_body_names_the_field(client, body, param):
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


@pytest.mark.parametrize(
    ("path", "error_of"),
    [
        ("/v1/chat/completions", lambda body: body["error"]["message"]),
        ("/v1/completions", lambda body: body["error"]["message"]),
        ("/v1/responses", lambda body: body["error"]["message"]),
        ("/v1/messages", lambda body: body["type"] == "error" and body["error"]["message"]),
        ("/v1/messages/count_tokens", lambda body: body["type"] == "error" and body["error"]["message"]),
        ("/api/chat", lambda body: body["error"]),
        ("/api/generate", lambda body: body["error"]),
    ],
)
def test_malformed_json_is_a_400_in_each_apis_shape(client, path, error_of):
    response = client.post(path, content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert error_of(response.json()) == "The request body is not valid JSON."


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
    # Chat models only: an embedding or rerank model's window is its encoder's
    # tokens per input (the integration modules may have put one in the cache).
    chat_models = [m for m in data if not {"embedding", "rerank"} & set(m.get("capabilities", []))]
    assert chat_models and {m["context_window"] for m in chat_models} == {64}


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
    from mlxhost.core.types import ContentDelta
    from mlxhost.families.hookspecs import hookimpl

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

    from mlxhost.api.app import create_app
    from mlxhost.families.plugins import make_plugin_manager
    from mlxhost.settings.table import Settings

    app = create_app(Settings(extra_models=fake_models), make_plugin_manager(extra=[fake_plugin, Plugin()]))
    with TestClient(app) as client:
        body = chat(client, fake_models[0]).json()
    assert body["choices"][0]["message"]["content"] == "Stop here!"
    assert body["usage"]["completion_tokens"] == len("Stop here!")


@pytest.mark.parametrize(("parallel", "calls"), [(None, 3), (True, 3), (False, 1)])
def test_parallel_tool_calls_false_ends_the_reply_after_one_call(fake_models, fake_plugin, parallel, calls):
    from litestar.testing import TestClient

    from mlxhost.api.app import create_app
    from mlxhost.core.types import ToolCall, ToolCallEvent
    from mlxhost.families.hookspecs import hookimpl
    from mlxhost.families.plugins import make_plugin_manager
    from mlxhost.settings.table import Settings

    class CallPerC:
        stop_requested = False

        def __init__(self):
            self.count = 0

        def feed(self, text):
            if text != "C":
                return []
            self.count += 1
            return [ToolCallEvent(ToolCall("f", "{}", f"call_{self.count}"))]

        def finish(self):
            return []

    class Plugin:
        @hookimpl
        def mlxhost_tool_call_parser(self, model):
            return lambda tools: CallPerC()

    fake_plugin.reply = "CCC"
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    extra = {} if parallel is None else {"parallel_tool_calls": parallel}
    app = create_app(Settings(extra_models=fake_models), make_plugin_manager(extra=[fake_plugin, Plugin()]))
    with TestClient(app) as client:
        body = chat(client, fake_models[0], tools=tools, **extra).json()
    choice = body["choices"][0]
    assert len(choice["message"]["tool_calls"]) == calls
    assert choice["finish_reason"] == "tool_calls"
    assert body["usage"]["completion_tokens"] == calls


def test_normalize_request_hook_sees_and_changes_every_request(fake_plugin, fake_models):
    from litestar.testing import TestClient

    from mlxhost.api.app import create_app
    from mlxhost.core.domain import TextPart
    from mlxhost.families.hookspecs import hookimpl
    from mlxhost.families.plugins import make_plugin_manager
    from mlxhost.settings.table import Settings

    seen = []

    class Rewrite:
        @hookimpl
        def mlxhost_normalize_request(self, request):
            seen.append(request.messages[-1].text)
            message = attrs.evolve(request.messages[-1], content=(TextPart("rewritten"),))
            return attrs.evolve(request, messages=(*request.messages[:-1], message))

    pm = make_plugin_manager(extra=[fake_plugin, Rewrite()])
    with TestClient(create_app(Settings(extra_models=fake_models), pm)) as client:
        response = chat(client, fake_models[0], content="original")
    assert response.status_code == 200
    assert seen == ["original"]
    assert "user: rewritten" in fake_plugin.prompts[-1].text


def test_fim_prompt_hook_or_a_400_naming_suffix():
    from mlxhost.core.domain import ChatRequest
    from mlxhost.core.errors import InvalidRequest
    from mlxhost.core.types import LoadedModel, ModelInfo, ModelSpec
    from mlxhost.families.hookspecs import hookimpl
    from mlxhost.families.plugins import make_plugin_manager
    from mlxhost.service.chat import ChatService
    from mlxhost.settings.table import Settings

    class Fim:
        @hookimpl
        def mlxhost_fim_prompt(self, model, prefix, suffix):
            return f"<pre>{prefix}<suf>{suffix}<mid>" if model.family == "fim" else None

    pm = make_plugin_manager(load_entrypoints=False, extra=[Fim()])
    service = ChatService(registry=None, runtime=None, pm=pm, settings=Settings())  # type: ignore[arg-type]

    def model(family):
        info = ModelInfo(spec=ModelSpec(id="m", family=family), config={}, path=None, context_window=64)
        return LoadedModel(info=info, tokenizer=None, tool_parser=lambda tools: None, loaded_at=0)

    request = ChatRequest(model="m", messages=(), raw_prompt="def f(", suffix="):")
    assert service._render(model("fim"), request, ()).text == "<pre>def f(<suf>):<mid>"
    plain = ChatRequest(model="m", messages=(), raw_prompt="hello")
    assert service._render(model("other"), plain, ()).text == "hello"
    with pytest.raises(InvalidRequest) as caught:
        service._render(model("other"), request, ())
    assert caught.value.param == "suffix"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_k", -1),
        ("min_p", 1.5),
        ("presence_penalty", 3),
        ("frequency_penalty", -2.5),
        ("repetition_penalty", 0),
        ("logit_bias", {"abc": 1}),
        ("logit_bias", {"5": 101}),
    ],
)
def test_sampling_knobs_out_of_range_are_400_naming_the_field(client, fake_models, field, value):
    response = chat(client, fake_models[0], **{field: value})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith(field)


def test_sampling_knobs_reach_the_engine(fake_plugin, fake_models):
    from mlxhost.api.schemas import parse_chat_request

    request = parse_chat_request({
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "top_k": 3, "min_p": 0.1,
        "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.2,
        "logit_bias": {"42": -100},
    })
    assert (request.top_k, request.min_p, request.repetition_penalty) == (3, 0.1, 1.2)
    assert (request.presence_penalty, request.frequency_penalty) == (0.5, -0.5)
    assert request.logit_bias == {42: -100.0}


def test_n_choices_have_their_own_indices(client, fake_models, fake_plugin):
    response = chat(client, fake_models[0], n=3, seed=7)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == fake_plugin.reply for c in body["choices"])
    assert body["usage"]["completion_tokens"] == 3 * len(fake_plugin.reply)
    generations = [e for e in fake_plugin.events if e[0] == "generate"]
    assert len(generations) == 3


def test_n_choices_stream_with_their_indices(client, fake_models, fake_plugin):
    response = chat(client, fake_models[0], n=2, stream=True, stream_options={"include_usage": True})
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    by_index: dict[int, str] = {}
    for chunk in chunks:
        choice = chunk["choices"][0]
        by_index[choice["index"]] = by_index.get(choice["index"], "") + (choice["delta"].get("content") or "")
    assert by_index == {0: fake_plugin.reply, 1: fake_plugin.reply}
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert finishes == ["stop", "stop"]
    assert events[-2]["usage"]["completion_tokens"] == 2 * len(fake_plugin.reply)


def test_logit_bias_beyond_the_vocabulary_is_400(make_client, tmp_path):
    import json

    folder = tmp_path / "fake-vocab"
    folder.mkdir()
    config = {"model_type": "fake", "max_position_embeddings": 256, "vocab_size": 100}
    (folder / "config.json").write_text(json.dumps(config))
    with make_client(extra_models=[str(folder)]) as client:
        ok = chat(client, str(folder), logit_bias={"99": 1})
        assert ok.status_code == 200, ok.text
        beyond = chat(client, str(folder), logit_bias={"100": 1})
        assert beyond.status_code == 400 and beyond.json()["error"]["param"] == "logit_bias"
        huge = chat(client, str(folder), logit_bias={"99999999999": 1})
        assert huge.status_code == 400


def test_speculative_false_reaches_the_engine(client, fake_models, fake_plugin):
    assert chat(client, fake_models[0], speculative=False).status_code == 200
    assert chat(client, fake_models[0]).status_code == 200
    assert [p.speculative for p in fake_plugin.params[-2:]] == [False, True]
    response = chat(client, fake_models[0], speculative="no")
    assert response.status_code == 400 and response.json()["error"]["param"].startswith("speculative")
