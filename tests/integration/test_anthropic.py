"""The Anthropic Messages API against a real server, through the official client:
SmolLM2 135M (the fast default), Qwen 0.5B for tools, a tiny VLM for images."""

from __future__ import annotations

import anthropic
import pytest

from mlxhost.models.starter.builder import TEST_MODELS

QWEN = TEST_MODELS["qwen"].repo_id
SMOL = TEST_MODELS["smollm2"].repo_id


@pytest.fixture
def claude(smol_server):
    return anthropic.Anthropic(base_url=smol_server.url, api_key="unused", max_retries=0, timeout=300)


@pytest.fixture
def qwen_claude(qwen_server):
    return anthropic.Anthropic(base_url=qwen_server.url, api_key="unused", max_retries=0, timeout=300)


def test_create_count_and_stream(claude):
    messages = [{"role": "user", "content": "Say hello."}]
    message = claude.messages.create(model=SMOL, max_tokens=8, extra_body={"temperature": 0}, messages=messages)
    assert message.type == "message" and message.content[0].type == "text"
    assert message.stop_reason in ("end_turn", "max_tokens")
    count = claude.messages.count_tokens(model=SMOL, messages=messages)
    assert count.input_tokens == message.usage.input_tokens
    with claude.messages.stream(model=SMOL, max_tokens=8, extra_body={"temperature": 0}, messages=messages) as stream:
        kinds = [event.type for event in stream]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds and "message_delta" in kinds


def test_top_k_one_is_greedy(claude):
    messages = [{"role": "user", "content": "Write a short poem about rain."}]
    greedy = claude.messages.create(model=SMOL, max_tokens=12, extra_body={"temperature": 0}, messages=messages)
    top1 = claude.messages.create(model=SMOL, max_tokens=12, extra_body={"temperature": 1, "top_k": 1},
                                  messages=messages)
    assert top1.content[0].text == greedy.content[0].text


def test_tool_round_trip_history(qwen_claude):
    tools = [{"name": "get_weather", "description": "Weather for a city",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny, 21C"}]},
    ]
    message = qwen_claude.messages.create(model=QWEN, max_tokens=16, extra_body={"temperature": 0}, tools=tools, messages=messages)
    assert message.content and message.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_claude_code_nonce_keeps_the_prefix_cache(claude):
    base = "You are a coding assistant. " * 20
    usages = []
    for nonce in ("1a2b", "3c4d"):
        system = f"x-anthropic-billing-header: cc_version=2.0; cch={nonce};\n{base}"
        message = claude.messages.create(model=SMOL, max_tokens=4, extra_body={"temperature": 0}, system=system,
                                         messages=[{"role": "user", "content": "hi"}])
        usages.append(message.usage)
    second = usages[1]
    assert second.cache_read_input_tokens >= second.input_tokens // 2


def test_error_shape_and_server_stays_up(claude):
    with pytest.raises(anthropic.NotFoundError) as info:
        claude.messages.create(model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model=SMOL, max_tokens=4, messages=[{"role": "user", "content": "x"}],
                               extra_body={"top_k": -5})
    assert claude.messages.create(model=SMOL, max_tokens=2, messages=[{"role": "user", "content": "x"}]).content


def test_image_block_against_a_tiny_vlm(start_server):
    import base64
    import io

    from PIL import Image

    from mlxhost.testing.vlm_models import TINY_VLMS

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    model = TINY_VLMS["gemma3"]
    with start_server("--model", model) as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=300)
        message = client.messages.create(model=model, max_tokens=4, extra_body={"temperature": 0}, messages=[
            {"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
                {"type": "text", "text": "Color?"},
            ]},
        ])
    assert message.type == "message" and message.usage.input_tokens > 0
