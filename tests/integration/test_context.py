"""Context window management with the real SmolLM2 135M model and a 512-token window."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from mlxhost.models.starter.builder import TEST_MODELS

SMOL = TEST_MODELS["smollm2"].repo_id

WINDOW = 512
FACTS = [
    "My sister lives in Lisbon.", "I have two cats.", "My favourite colour is green.",
    "I work as a carpenter.", "I was born in 1980.", "I play the violin.",
    "My car is a blue Volvo.", "I drink tea, not coffee.", "I grow tomatoes.",
]


def twenty_turns() -> list[dict]:
    messages = [{"role": "system", "content": "You are a helpful assistant. Answer briefly."}]
    for i in range(19):
        if i % 2 == 0:
            fact = FACTS[(i // 2) % len(FACTS)]
            messages.append({"role": "user", "content": (
                f"Note {i}: {fact} Please remember this detail carefully, because I will "
                "ask you about it later in our conversation, maybe tomorrow or next week."
            )})
        else:
            messages.append({"role": "assistant", "content": f"Noted detail {i}. I will remember it for you."})
    messages.append({"role": "user", "content": "What is the capital of France? Answer in one word."})
    return messages


@pytest.fixture(scope="module")
def small_window_server(start_server):
    with start_server("--model", SMOL, "--context-window", str(WINDOW)) as server:
        yield server


@pytest.fixture
def small_client(small_window_server):
    return openai.OpenAI(base_url=f"{small_window_server.url}/v1", api_key="x", max_retries=0, timeout=600)


def test_models_reports_configured_window(small_client):
    models = {m.id: m for m in small_client.models.list().data}
    assert models[SMOL].model_extra["context_window"] == WINDOW


def test_twenty_turns_are_summarized_and_answered(small_client, small_window_server, capsys):
    messages = twenty_turns()
    started = time.perf_counter()
    raw = small_client.chat.completions.with_raw_response.create(
        model=SMOL, messages=messages, max_tokens=8, temperature=0
    )
    elapsed = time.perf_counter() - started
    assert raw.headers["x-mlxhost-context"] == "summarized"
    response = raw.parse()
    assert "paris" in response.choices[0].message.content.lower()
    assert response.usage.prompt_tokens + 8 <= WINDOW
    # Same last question without the history, to report what summarization added.
    started = time.perf_counter()
    short = small_client.chat.completions.create(
        model=SMOL, messages=[messages[0], messages[-1]], max_tokens=8, temperature=0
    )
    baseline = time.perf_counter() - started
    assert "paris" in short.choices[0].message.content.lower()
    with capsys.disabled():
        print(f"\n[context] 20-turn request with summarization: {elapsed:.1f}s; "
              f"same question without history: {baseline:.1f}s")


@pytest.mark.parametrize("stream", [False, True])
def test_single_message_larger_than_window_is_rejected(small_window_server, stream):
    body = {
        "model": SMOL,
        "messages": [{"role": "user", "content": "word " * 800}],
        "max_tokens": 8,
        "stream": stream,
    }
    response = httpx.post(f"{small_window_server.url}/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 400
    assert not response.text.startswith("data:")
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["type"] == "invalid_request_error" and error["param"] == "messages"
    assert error["message"].startswith(f"This model's maximum context length is {WINDOW} tokens. However, your messages resulted in ")
    assert error["message"].endswith(" tokens. Please reduce the length of the messages.")


def test_truncation_disabled_rejects_instead_of_summarizing(small_client):
    with pytest.raises(openai.BadRequestError) as caught:
        small_client.chat.completions.create(
            model=SMOL, messages=twenty_turns(), max_tokens=8, extra_body={"truncation": "disabled"}
        )
    assert caught.value.body["code"] == "context_length_exceeded"
