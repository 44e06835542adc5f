"""Thinking through every API, streamed and not, with a scripted thinking model
(the fake engine), read by the official SDKs where there is one."""

from __future__ import annotations

import json

import pytest
from litestar.testing import TestClient

from mlxhost.api.app import create_app
from mlxhost.families.hookspecs import hookimpl
from mlxhost.families.plugins import make_plugin_manager
from mlxhost.settings.table import Settings
from mlxhost.testing.fake_engine import FAKE_HARMONY, FAKE_THINK, FakeEnginePlugin, make_fake_model
from mlxhost.testing.live import live_server

THINK = "<think>\nThe user says hi.\n</think>\n\nHello there."
THOUGHT, ANSWER = "The user says hi.", "Hello there."
HARMONY_CALL = (
    "<|channel|>analysis<|message|>Need weather.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
    '<|message|>{"city":"Paris"}<|call|>'
)
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def model(tmp_path):
    return str(make_fake_model(tmp_path / "thinker", context_window=4096))


def app(plugin, model):
    return create_app(Settings(extra_models=[model]), make_plugin_manager(extra=[plugin]))


@pytest.fixture
def plugin():
    return FakeEnginePlugin(reply=THINK, reasoning=FAKE_THINK)


@pytest.fixture
def client(plugin, model):
    with TestClient(app(plugin, model)) as test_client:
        yield test_client


def sse(response):
    return [json.loads(line[6:]) for line in response.text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


# -- Chat Completions ---------------------------------------------------------
def test_chat_completion_keeps_thinking_apart(client, model):
    body = client.post("/v1/chat/completions", json={"model": model, "messages": MSG}).json()
    message = body["choices"][0]["message"]
    assert message["content"] == ANSWER
    assert message["reasoning_content"] == message["reasoning"] == THOUGHT
    reasoning_tokens = body["usage"]["completion_tokens_details"]["reasoning_tokens"]
    # Thinking runs from the open marker's last token (a real <think> is one
    # token; the fake's is seven) through </think>.
    assert reasoning_tokens == len(THINK) - len("\n\n" + ANSWER) - len("<think")


def test_chat_completion_stream(client, model):
    response = client.post("/v1/chat/completions", json={
        "model": model, "messages": MSG, "stream": True, "stream_options": {"include_usage": True}})
    chunks = sse(response)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == THOUGHT
    assert "".join(d.get("content", "") for d in deltas) == ANSWER
    assert chunks[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


def test_stop_strings_do_not_fire_inside_thinking(client, model):
    body = client.post("/v1/chat/completions", json={
        "model": model, "messages": MSG, "stop": ["says"]}).json()
    message = body["choices"][0]["message"]
    assert message["reasoning_content"] == THOUGHT and message["content"] == ANSWER


def test_controls_reach_the_template(client, model, plugin):
    client.post("/v1/chat/completions", json={
        "model": model, "messages": MSG, "reasoning_effort": "high",
        "chat_template_kwargs": {"enable_thinking": True, "custom": 1}})
    assert plugin.template_variables[-1] == {
        "enable_thinking": True, "reasoning_effort": "high", "custom": 1}


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions", {"reasoning_effort": "extreme"}, "reasoning_effort"),
    ("/v1/responses", {"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ("/v1/messages", {"thinking": {"type": "enabled"}, "max_tokens": 9}, "thinking"),
    ("/api/chat", {"think": "loud"}, "think"),
])
def test_malformed_controls_are_400s_naming_the_field(client, model, path, body, param):
    payload = {"model": model, **body}
    payload["input" if path == "/v1/responses" else "messages"] = MSG
    response = client.post(path, json=payload)
    assert response.status_code == 400
    assert param in response.text


# -- Anthropic ----------------------------------------------------------------
def test_anthropic_thinking_blocks(client, model):
    body = client.post("/v1/messages", json={
        "model": model, "max_tokens": 256, "messages": MSG,
        "thinking": {"type": "enabled", "budget_tokens": 1024}}).json()
    thinking, text = body["content"]
    assert thinking["type"] == "thinking" and thinking["thinking"] == THOUGHT
    assert thinking["signature"]
    assert text == {"type": "text", "text": ANSWER}
    assert body["usage"]["output_tokens"] == len(THINK)


# -- Responses ----------------------------------------------------------------
def test_responses_reasoning_item(client, model):
    body = client.post("/v1/responses", json={"model": model, "input": "hi",
                                              "reasoning": {"effort": "low"}}).json()
    reasoning, message = body["output"]
    assert reasoning["type"] == "reasoning"
    assert reasoning["content"] == [{"type": "reasoning_text", "text": THOUGHT}]
    assert message["content"][0]["text"] == ANSWER
    assert body["usage"]["output_tokens_details"]["reasoning_tokens"] > 0


def test_responses_stream_events(client, model):
    response = client.post("/v1/responses", json={"model": model, "input": "hi", "stream": True})
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert "response.reasoning_text.delta" in kinds and "response.reasoning_text.done" in kinds
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    assert deltas == THOUGHT
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]


# -- Ollama -------------------------------------------------------------------
def test_ollama_chat_and_generate(client, model):
    body = client.post("/api/chat", json={"model": model, "messages": MSG, "stream": False,
                                          "think": True}).json()
    assert body["message"]["thinking"] == THOUGHT and body["message"]["content"] == ANSWER
    assert body["eval_count"] == len(THINK)
    lines = [json.loads(x) for x in client.post(
        "/api/generate", json={"model": model, "prompt": "hi"}).text.splitlines()]
    assert "".join(x.get("thinking", "") for x in lines) == THOUGHT
    assert "".join(x["response"] for x in lines) == ANSWER


def test_legacy_completions_are_raw_text(client, model):
    body = client.post("/v1/completions", json={"model": model, "prompt": "hi",
                                              "max_tokens": 100}).json()
    assert body["choices"][0]["text"] == THINK


# -- the budget and unterminated thoughts -------------------------------------
def test_a_budget_closes_a_long_thought_and_the_answer_follows(model):
    plugin = FakeEnginePlugin(reply="<think>" + "x" * 200 + "</think>The end.", reasoning=FAKE_THINK)
    with TestClient(app(plugin, model)) as client:
        body = client.post("/v1/messages", json={
            "model": model, "max_tokens": 400, "messages": MSG,
            "thinking": {"type": "enabled", "budget_tokens": 20}}).json()
    assert body["content"][0]["thinking"] == "x" * 19
    assert body["content"][1]["text"] == "The end."
    assert plugin.params[-1].thinking.budget == 20


def test_thinking_cut_at_max_tokens(model):
    plugin = FakeEnginePlugin(reply="<think>" + "x" * 200 + "</think>Late.", reasoning=FAKE_THINK)
    with TestClient(app(plugin, model)) as client:
        body = client.post("/v1/chat/completions", json={
            "model": model, "messages": MSG, "max_tokens": 30}).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["reasoning_content"] == "x" * 23 and choice["message"]["content"] == ""


def test_a_json_answer_gets_room_a_thought_is_closed_at_half_max_tokens(model):
    plugin = FakeEnginePlugin(reply="<think>" + "x" * 200 + '</think>{"a": 1}', reasoning=FAKE_THINK)
    with TestClient(app(plugin, model)) as client:
        body = client.post("/v1/chat/completions", json={
            "model": model, "messages": MSG, "max_tokens": 60,
            "response_format": {"type": "json_object"}}).json()
    message = body["choices"][0]["message"]
    assert json.loads(message["content"]) == {"a": 1}
    assert body["choices"][0]["finish_reason"] == "stop"


def test_the_prompt_opened_thought(model):
    plugin = FakeEnginePlugin(reply="Pondering.</think>Yes.", reasoning=FAKE_THINK, opens_thought=True)
    with TestClient(app(plugin, model)) as client:
        message = client.post("/v1/chat/completions", json={
            "model": model, "messages": MSG}).json()["choices"][0]["message"]
    assert message["reasoning_content"] == "Pondering." and message["content"] == "Yes."


def test_a_model_that_does_not_think_accepts_every_control(model):
    plugin = FakeEnginePlugin(reply="<think>kept</think>")
    with TestClient(app(plugin, model)) as client:
        message = client.post("/v1/chat/completions", json={
            "model": model, "messages": MSG, "reasoning_effort": "none"}).json()["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "<think>kept</think>"}


def test_harmony_tool_call_in_every_api(model):
    plugin = FakeEnginePlugin(reply=HARMONY_CALL, reasoning=FAKE_HARMONY)
    with TestClient(app(plugin, model)) as client:
        chat = client.post("/v1/chat/completions", json={
            "model": model, "messages": MSG, "tools": TOOLS}).json()["choices"][0]
        assert chat["finish_reason"] == "tool_calls"
        assert chat["message"]["reasoning_content"] == "Need weather."
        call = chat["message"]["tool_calls"][0]["function"]
        assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
        anthropic = client.post("/v1/messages", json={"model": model, "max_tokens": 300, "messages": MSG,
                                                      "tools": [{"name": "get_weather"}]}).json()
        assert [b["type"] for b in anthropic["content"]] == ["thinking", "tool_use"]
        assert anthropic["stop_reason"] == "tool_use"
        ollama = client.post("/api/chat", json={"model": model, "messages": MSG, "stream": False,
                                                "tools": TOOLS}).json()
        assert ollama["message"]["thinking"] == "Need weather."
        assert ollama["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
        responses = client.post("/v1/responses", json={"model": model, "input": "hi",
                                                       "tools": [{"type": "function", "name": "get_weather"}]}).json()
        assert [i["type"] for i in responses["output"]] == ["reasoning", "function_call"]


# -- the official SDKs read it ------------------------------------------------
def test_the_sdks_read_thinking(plugin, model):
    import anthropic
    import ollama
    import openai

    with live_server(app(plugin, model)) as base:
        oa = openai.OpenAI(base_url=f"{base}/v1", api_key="x")
        completion = oa.chat.completions.create(model=model, messages=MSG, reasoning_effort="low")
        assert completion.choices[0].message.content == ANSWER
        assert completion.choices[0].message.model_extra["reasoning_content"] == THOUGHT
        assert completion.usage.completion_tokens_details.reasoning_tokens > 0
        streamed = oa.chat.completions.create(model=model, messages=MSG, stream=True)
        thought = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content", "")
                          for c in streamed if c.choices)
        assert thought == THOUGHT
        response = oa.responses.create(model=model, input="hi", reasoning={"effort": "medium"})
        assert response.output[0].type == "reasoning" and response.output[0].content[0].text == THOUGHT
        assert response.output_text == ANSWER
        with oa.responses.stream(model=model, input="hi") as stream:
            kinds = {event.type for event in stream}
        assert "response.reasoning_text.delta" in kinds

        an = anthropic.Anthropic(base_url=base, api_key="x")
        message = an.messages.create(model=model, max_tokens=256, messages=MSG,
                                     thinking={"type": "enabled", "budget_tokens": 1024})
        assert message.content[0].type == "thinking" and message.content[0].thinking == THOUGHT
        with an.messages.stream(model=model, max_tokens=256, messages=MSG,
                                thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
            final = stream.get_final_message()
        assert final.content[0].thinking == THOUGHT and final.content[0].signature
        assert final.content[1].text == ANSWER

        ol = ollama.Client(host=base)
        reply = ol.chat(model=model, messages=MSG, think=True)
        assert reply.message.thinking == THOUGHT and reply.message.content == ANSWER
        pieces = list(ol.chat(model=model, messages=MSG, think="high", stream=True))
        assert "".join(p.message.thinking or "" for p in pieces) == THOUGHT
        generated = ol.generate(model=model, prompt="hi", think=True)
        assert generated.thinking == THOUGHT and generated.response == ANSWER


def test_models_list_reasoning_and_its_levels(tmp_path, plugin):
    folder = make_fake_model(tmp_path / "qwen3ish")
    (folder / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {
        "151667": {"content": "<think>"}, "151668": {"content": "</think>"}}}))
    plain = str(make_fake_model(tmp_path / "plain"))
    with TestClient(create_app(Settings(extra_models=[str(folder), plain]),
                               make_plugin_manager(extra=[plugin]))) as client:
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert "reasoning" in models[str(folder)]["capabilities"]
        assert models[str(folder)]["reasoning"] == {"levels": ["none", "low", "medium", "high"]}
        assert "reasoning" not in models[plain]["capabilities"] and "reasoning" not in models[plain]
        show = client.post("/api/show", json={"model": str(folder)}).json()
        assert "thinking" in show["capabilities"] and show["think_levels"][0] == "none"
        assert "thinking" not in client.post("/api/show", json={"model": plain}).json()["capabilities"]


def test_a_summary_by_a_thinking_model_leaves_its_thought_out(tmp_path):
    plugin = FakeEnginePlugin(reply="<think>secret musing</think>Summary text.", reasoning=FAKE_THINK)
    model = str(make_fake_model(tmp_path / "wide-thinker", context_window=1024))
    messages = [{"role": "system", "content": "sys"}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"{i:02d}" + "w" * 60}
        for i in range(40)]
    with TestClient(app(plugin, model)) as client:
        response = client.post("/v1/chat/completions", json={
            "model": model, "messages": messages, "max_tokens": 5})
    assert response.headers["x-mlxhost-context"] == "summarized"
    final_prompt = plugin.prompts[-1].text
    assert "Summary text." in final_prompt and "secret musing" not in final_prompt


QWEN3_CALL = ('<think>\nNeed the weather.\n</think>\n\n<tool_call>\n'
              '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')


class QwenCalls:
    """Qwen's tool-call parser for the fake family (Qwen3 writes <tool_call> after its thought)."""

    @hookimpl
    def mlxhost_tool_call_parser(self, model):
        from mlxhost_qwen.tools import make_parser

        return make_parser


def test_think_then_tool_call_streamed_and_whole_in_every_api(model):
    plugin = FakeEnginePlugin(reply=QWEN3_CALL, reasoning=FAKE_THINK)
    pm = make_plugin_manager(extra=[plugin, QwenCalls()])
    with TestClient(create_app(Settings(extra_models=[model]), pm)) as client:
        for stream in (False, True):
            response = client.post("/v1/chat/completions", json={
                "model": model, "messages": MSG, "tools": TOOLS, "stream": stream})
            if stream:
                deltas = [c["choices"][0]["delta"] for c in sse(response) if c["choices"]]
                thought = "".join(d.get("reasoning_content", "") for d in deltas)
                calls = [c for d in deltas for c in d.get("tool_calls", [])]
                content = "".join(d.get("content") or "" for d in deltas)
                assert calls[0]["function"]["name"] == "get_weather" and content == ""
            else:
                message = response.json()["choices"][0]["message"]
                thought, calls = message["reasoning_content"], message["tool_calls"]
                assert message["content"] is None and calls[0]["function"]["name"] == "get_weather"
            assert thought == "Need the weather."
            anthropic = client.post("/v1/messages", json={
                "model": model, "max_tokens": 300, "messages": MSG, "stream": stream,
                "tools": [{"name": "get_weather"}]})
            if stream:
                frames = [json.loads(x[6:]) for x in anthropic.text.splitlines() if x.startswith("data: ")]
                starts = [f["content_block"]["type"] for f in frames if f["type"] == "content_block_start"]
                assert starts == ["thinking", "tool_use"]
                assert any(f.get("delta", {}).get("type") == "signature_delta" for f in frames)
            else:
                assert [b["type"] for b in anthropic.json()["content"]] == ["thinking", "tool_use"]
            responses = client.post("/v1/responses", json={
                "model": model, "input": "hi", "stream": stream,
                "tools": [{"type": "function", "name": "get_weather"}]})
            if stream:
                final = [json.loads(x[6:]) for x in responses.text.splitlines() if x.startswith("data: ")][-1]
                output = final["response"]["output"]
            else:
                output = responses.json()["output"]
            assert [i["type"] for i in output] == ["reasoning", "function_call"]
            ollama = client.post("/api/chat", json={"model": model, "messages": MSG, "stream": stream,
                                                    "tools": TOOLS})
            lines = [json.loads(x) for x in ollama.text.splitlines()]
            assert "".join(x["message"].get("thinking", "") for x in lines) == "Need the weather."
            calls = [c for x in lines for c in x["message"].get("tool_calls", [])]
            assert len(calls) == 1 and calls[0]["function"]["name"] == "get_weather"


def test_mlxhost_run_shows_thinking_apart_and_keeps_it_out_of_the_history(plugin, model, capsys):
    from mlxhost.cli.run import Chat, Thought, _one_answer

    with live_server(app(plugin, model)) as base:
        chat = Chat(base, model, {}, {})
        pieces = list(chat.ask("hi"))
        assert "".join(p for p in pieces if isinstance(p, Thought)) == THOUGHT
        assert "".join(p for p in pieces if not isinstance(p, Thought)) == ANSWER
        assert chat.messages[-1] == {"role": "assistant", "content": ANSWER}
        _one_answer(chat, "again", [], verbose=False)
    out = capsys.readouterr().out
    # Not a terminal: no dimming codes; the answer starts on its own line.
    assert out == f"{THOUGHT}\n{ANSWER}\n"


def test_effort_none_on_harmony_closes_the_analysis_at_once(model):
    """gpt-oss cannot be told not to think: effort none is "Reasoning: low" in the
    template and a budget of 0, so the analysis is closed as soon as it opens."""
    reply = ("<|channel|>analysis<|message|>" + "z" * 50 +
             "<|end|><|start|>assistant<|channel|>final<|message|>Done.")
    plugin = FakeEnginePlugin(reply=reply, reasoning=FAKE_HARMONY)
    with TestClient(app(plugin, model)) as client:
        body = client.post("/v1/responses", json={"model": model, "input": "hi",
                                                  "reasoning": {"effort": "none"}}).json()
        assert [item["type"] for item in body["output"]] == ["message"]
        assert body["output"][0]["content"][0]["text"] == "Done."
        assert plugin.template_variables[-1] == {"enable_thinking": False, "reasoning_effort": "low"}
        body = client.post("/v1/responses", json={"model": model, "input": "hi",
                                                  "reasoning": {"effort": "high"}}).json()
        assert body["output"][0]["content"][0]["text"] == "z" * 50
