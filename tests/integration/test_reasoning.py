"""Thinking apart from the answer on a real MLX model over HTTP: a tiny random
Qwen3 (mlx-lm's qwen3 code) with QwQ-32B's real template, which opens the think
block in the generation prompt, so every reply starts inside a thought
(src/mlxhost/testing/tiny_thinker.py). Random weights never close it: the
thinking budget does."""

from __future__ import annotations

from pathlib import Path

import anthropic
import httpx
import pytest

from mlxhost.models.starter.builder import ensure_test_model
from mlxhost.testing.server import ServerProcess
from mlxhost.testing.tiny_thinker import build_tiny_thinker

DATA = Path(__file__).parents[1] / "unit" / "data" / "reasoning"
TEMPLATE = DATA / "Qwen-QwQ-32B.jinja"
MSG = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = build_tiny_thinker(tmp_path_factory.mktemp("thinker") / "tiny-qwen3-thinker",
                                ensure_test_model("qwen"), TEMPLATE.read_text())
    log = tmp_path_factory.mktemp("server") / "serve.log"
    # The same weights with Qwen3's own (hybrid) template, served by its folder name.
    hybrid = build_tiny_thinker(folder.parent / "tiny-qwen3-hybrid", ensure_test_model("qwen"),
                                (DATA / "Qwen-Qwen3-0.6B.jinja").read_text())
    with ServerProcess(["--model", str(folder), "--models-dir", str(folder.parent)],
                       env={"HF_HUB_OFFLINE": "1"}, log_path=log) as running:
        running.model, running.hybrid = str(folder), hybrid.name
        yield running


def chat(server, **body):
    response = httpx.post(f"{server.url}/v1/chat/completions", timeout=300,
                          json={"model": server.model, "messages": MSG, "temperature": 0, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_a_thought_the_prompt_opened_is_reasoning_not_content(server):
    body = chat(server, max_tokens=12)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == "" and choice["message"]["reasoning_content"]
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 12


def test_the_budget_closes_the_thought_and_the_model_answers(server):
    whole = chat(server, max_tokens=12)["choices"][0]["message"]["reasoning_content"]
    claude = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=300)
    message = claude.messages.create(
        model=server.model, max_tokens=12, messages=MSG, extra_body={"temperature": 0},
        thinking={"type": "enabled", "budget_tokens": 5})
    thinking, text = message.content
    assert thinking.type == "thinking" and text.type == "text" and text.text
    # Greedy: the same first thinking tokens as the unbounded thought, cut at the budget.
    assert thinking.thinking and whole.startswith(thinking.thinking)
    assert len(thinking.thinking) < len(whole)
    with claude.messages.stream(model=server.model, max_tokens=12, messages=MSG,
                                extra_body={"temperature": 0},
                                thinking={"type": "enabled", "budget_tokens": 5}) as stream:
        final = stream.get_final_message()
    assert final.content[0].thinking == thinking.thinking and final.content[1].text == text.text


def test_think_false_closes_the_thought_at_once(server):
    """QwQ's template has no switch: thinking off is a budget of 0 (the end marker first)."""
    response = httpx.post(f"{server.url}/api/chat", timeout=300, json={
        "model": server.model, "messages": MSG, "stream": False, "think": False,
        "options": {"temperature": 0, "num_predict": 8}})
    message = response.json()["message"]
    assert not message.get("thinking") and message["content"]


def test_a_json_answer_is_constrained_after_the_thought(server):
    body = chat(server, max_tokens=24, response_format={"type": "json_object"})
    message = body["choices"][0]["message"]
    # The thought is free (random tokens); the grammar starts with the answer.
    assert message["reasoning_content"] and not message["reasoning_content"].startswith("{")
    assert message["content"].lstrip().startswith("{")
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] <= 13


def test_effort_none_reaches_qwen3s_own_template(server):
    """Qwen3's hybrid template: ``enable_thinking: false`` closes an empty thought in
    the prompt (``<think>\n\n</think>\n\n``: 4 more tokens); the reply is then answer."""
    def ask(**extra):
        return chat(server, model=server.hybrid, max_tokens=6, **extra)

    default, off = ask(), ask(reasoning_effort="none")
    assert off["usage"]["prompt_tokens"] - default["usage"]["prompt_tokens"] == 4
    assert "reasoning_content" not in off["choices"][0]["message"]
    assert off["choices"][0]["message"]["content"]
    kwargs = ask(chat_template_kwargs={"enable_thinking": False})
    assert kwargs["usage"]["prompt_tokens"] == off["usage"]["prompt_tokens"]
