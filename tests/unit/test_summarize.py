"""Context budget and summarization policy (no model)."""

from __future__ import annotations

import pytest

from mlxhost.api.schemas import parse_chat_request
from mlxhost.core.domain import text_message
from mlxhost.core.errors import ContextLengthExceeded
from mlxhost.service.summarize import (
    SUMMARY_HEADER,
    Summarizer,
    message_as_text,
    split_conversation,
    with_summary,
)
from mlxhost.testing.http import chat


def domain(messages):
    """OpenAI-shaped messages as the domain messages the service passes on."""
    return parse_chat_request({"model": "m", "messages": messages}).messages


def turns(n):
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(n)]


def test_split_keeps_all_system_messages_and_the_last_six():
    messages = [
        {"role": "system", "content": "s1"},
        {"role": "developer", "content": "s2"},
        *turns(10),
    ]
    split = split_conversation(domain(messages))
    assert [m.text for m in split.system] == ["s1", "s2"]
    assert [m.text for m in split.kept] == [f"turn {i}" for i in range(4, 10)]
    assert [m.text for m in split.older] == [f"turn {i}" for i in range(4)]


def test_split_counts_tool_messages_among_the_last_six():
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        *turns(4),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "tool", "tool_call_id": "c2", "content": "43"},
        *turns(3),
    ]
    split = split_conversation(domain(messages))
    assert [m.role for m in split.kept] == ["assistant", "tool", "tool", "user", "assistant", "user"]
    assert len(split.older) == 4


def test_short_conversation_has_nothing_to_summarize():
    split = split_conversation(domain([{"role": "system", "content": "s"}, *turns(6)]))
    assert split.older == () and len(split.kept) == 6


def test_summary_goes_right_after_the_system_messages():
    kept = domain(turns(2))
    out = with_summary(domain([{"role": "system", "content": "Be brief."}]), "They said hi.", kept)
    assert out[0] == text_message("system", f"Be brief.\n\n{SUMMARY_HEADER}\nThey said hi.")
    assert out[1:] == kept
    assert with_summary((), "S", kept)[0] == text_message("system", f"{SUMMARY_HEADER}\nS")


def test_transcript_lines_include_tool_calls_results_and_images():
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    called, result, looked = domain([
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "user", "content": [
            {"type": "text", "text": "Look"}, {"type": "image_url", "image_url": {"url": "data:..."}},
        ]},
    ])
    assert message_as_text(called) == 'Assistant called get_weather({"city": "Paris"})'
    assert message_as_text(result) == "Tool result (c1): sunny"
    assert message_as_text(looked) == "User: Look [image]"


async def test_chunked_summarization_when_material_exceeds_the_window():
    prompts = []

    async def count(messages):  # one token per character
        return sum(len(m.text) for m in messages)

    async def generate(messages, max_tokens):
        prompts.append(messages[-1].text)
        return f"S{len(prompts)}"

    async def truncate(text, max_tokens):
        return text[:max_tokens]

    summarizer = Summarizer(
        count_tokens=count, generate=generate, truncate=truncate, context_window=600, summary_tokens=100
    )
    older = domain([{"role": "user", "content": "x" * 150} for _ in range(8)] + [
        {"role": "assistant", "content": "y" * 5000}  # bigger than the window alone
    ])
    summary = await summarizer.summarize(older)
    # Several chunk summaries, then one summary of the summaries.
    assert len(prompts) >= 4
    assert all(len(p) + len(summarizer._prompt("")[0].text) <= 600 for p in prompts)
    assert summary == f"S{len(prompts)}"
    assert "S1" in prompts[-1] and "S2" in prompts[-1]


def test_context_length_error_body_is_exact():
    body = ContextLengthExceeded(512, 900).to_body()
    assert body == {
        "error": {
            "message": "This model's maximum context length is 512 tokens. However, your messages "
            "resulted in 900 tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }


# Through the server, with the fake engine (1 token per byte; fake-b has a 128-token window).

def long_conversation(n=20, size=60):
    return [{"role": "system", "content": "sys"}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"{i:02d}" + "w" * size}
        for i in range(n)
    ]


@pytest.fixture
def wide_model(tmp_path):
    from mlxhost.testing.fake_engine import make_fake_model

    return str(make_fake_model(tmp_path / "fake-wide", context_window=1024))


@pytest.fixture
def wide_client(make_client, fake_models, wide_model):
    with make_client(extra_models=[*fake_models, wide_model]) as client:
        yield client


def test_overflowing_conversation_is_summarized(wide_client, wide_model, fake_plugin):
    messages = long_conversation()
    body = {"model": wide_model, "messages": messages, "max_tokens": 5}
    response = wide_client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-mlxhost-context"] == "summarized"
    assert response.json()["usage"]["prompt_tokens"] <= 1024 - 5
    # Chunked: several summarization generations, then the answer.
    generations = [e for e in fake_plugin.events if e[0] == "generate"]
    assert len(generations) >= 3


def test_budget_counts_max_tokens(client, fake_models):
    messages = [{"role": "user", "content": "x" * 100}]
    ok = client.post("/v1/chat/completions", json={"model": fake_models[0], "messages": messages, "max_tokens": 10})
    assert ok.status_code == 200 and "x-mlxhost-context" not in ok.headers
    too_many = client.post(
        "/v1/chat/completions", json={"model": fake_models[0], "messages": messages, "max_tokens": 200}
    )
    assert too_many.status_code == 400
    assert too_many.json()["error"]["code"] == "context_length_exceeded"


def test_budget_without_max_tokens_reserves_a_quarter_window(client, fake_models):
    # 256-token window: the prompt may use at most 192 tokens without max_tokens.
    def prompt_of(n):
        return [{"role": "user", "content": "x" * n}]

    fits = client.post("/v1/chat/completions", json={"model": fake_models[0], "messages": prompt_of(150)})
    assert fits.status_code == 200
    over = client.post(
        "/v1/chat/completions",
        json={"model": fake_models[0], "messages": prompt_of(185), "truncation": "disabled"},
    )
    assert over.status_code == 400


@pytest.mark.parametrize("stream", [False, True])
def test_opt_out_and_unsummarizable_give_context_length_exceeded(client, fake_models, stream):
    base = {"model": fake_models[0], "max_tokens": 5, "stream": stream}
    disabled = client.post(
        "/v1/chat/completions",
        json={**base, "messages": long_conversation(size=10), "truncation": "disabled"},
    )
    assert disabled.status_code == 400
    assert disabled.json()["error"]["code"] == "context_length_exceeded"
    huge = chat(client, fake_models[0], content="z" * 1000, max_tokens=5, stream=stream)
    assert huge.status_code == 400
    assert not huge.text.startswith("data:")
    assert huge.json()["error"]["message"].startswith("This model's maximum context length is 256 tokens.")


def test_summarization_disabled_globally(make_client, fake_models):
    with make_client(summarize=False) as client:
        body = {"model": fake_models[0], "messages": long_conversation(size=10), "max_tokens": 5}
        assert client.post("/v1/chat/completions", json=body).status_code == 400
