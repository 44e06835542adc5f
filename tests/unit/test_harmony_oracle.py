"""mlxhost's harmony splitter against openai-harmony's own parser.

gpt-oss replies are rendered by the model's chat template and split by
``HarmonySplitter`` as the tokens stream; openai-harmony (OpenAI's reference
implementation of the format) is the oracle: the same replies, as token ids of
its gpt-oss encoding, go through its ``StreamableParser``, and the thinking,
the answer and the tool calls must agree with what the splitter made of the
same tokens decoded one at a time (as the engine delivers them: the final
``<|call|>`` / ``<|return|>`` is the end-of-sequence token, whose text never
arrives).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlxhost.core.types import ContentDelta, ReasoningDelta, ToolCallEvent
from mlxhost.families.reasoning.split import HarmonySplitter, merge

REPLIES = [
    # Thought, then the answer.
    "<|channel|>analysis<|message|>User asks 2+2. Answer 4.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>2 + 2 = 4.<|return|>",
    # Thought, then a tool call on the commentary channel.
    "<|channel|>analysis<|message|>Need weather, call tool.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
    '<|message|>{"location":"Tokyo","unit":"c"}<|call|>',
    # A preamble to the user, then a call whose recipient comes before the channel.
    "<|channel|>analysis<|message|>Look it up first.<|end|>"
    "<|start|>assistant<|channel|>commentary<|message|>Checking the catalogue.<|end|>"
    "<|start|>assistant to=functions.lookup<|channel|>commentary json<|message|>"
    '{"sku": "A-1", "fields": ["price", "stock"]}<|call|>',
    # Unicode and markup in both channels.
    "<|channel|>analysis<|message|>Der Nutzer schreibt Deutsch — antworte kurz. <b>ok</b><|end|>"
    "<|start|>assistant<|channel|>final<|message|>Grüße! 👋 `code` & <tags><|return|>",
    # Only a final answer.
    "<|channel|>final<|message|>Just the answer.<|return|>",
]


def oracle(encoding, tokens: list[int]) -> dict:
    import openai_harmony as harmony

    parser = harmony.StreamableParser(encoding, role=harmony.Role.ASSISTANT)
    for token in tokens:
        parser.process(token)
    thinking, answer, calls = "", "", []
    for message in parser.messages:
        text = "".join(part.text for part in message.content)
        recipient = message.recipient or ""
        if recipient.startswith("functions."):
            calls.append((recipient.removeprefix("functions."), json.loads(text)))
        elif message.channel == "analysis":
            thinking += text
        else:  # final, or a commentary preamble meant for the user
            answer += text
    return {"thinking": thinking, "answer": answer, "calls": calls}


def streamed_text(encoding, tokens: list[int]) -> list[str]:
    """Each token's new text, held back while it ends in half a UTF-8 character
    (as the engine's detokenizer does: an emoji spans several tokens)."""
    pieces, held, sent = [], [], ""
    for token in tokens:
        held.append(token)
        text = encoding.decode(held)
        if text.endswith("\ufffd"):
            continue
        pieces.append(text[len(sent):])
        sent = text
    return pieces


def ours(encoding, tokens: list[int], cuts: list[int] | None = None) -> dict:
    """The splitter fed the reply as the engine streams it: text a token (or a few) at a time."""
    last = encoding.decode([tokens[-1]])
    if last in ("<|call|>", "<|return|>"):
        tokens = tokens[:-1]  # the end-of-sequence token: its text never arrives
    pieces = streamed_text(encoding, tokens)
    if cuts:  # several tokens' text arriving together
        joined, start = [], 0
        for cut in sorted(set(c % len(pieces) for c in cuts)) + [len(pieces)]:
            if cut > start:
                joined.append("".join(pieces[start:cut]))
                start = cut
        pieces = joined
    splitter = HarmonySplitter()
    events = []
    for piece in pieces:
        events.extend(splitter.feed(piece))
    events.extend(splitter.finish())
    thinking, answer, calls = "", "", []
    for event in merge(events):
        if isinstance(event, ReasoningDelta):
            thinking += event.text
        elif isinstance(event, ContentDelta):
            answer += event.text
        elif isinstance(event, ToolCallEvent):
            calls.append((event.call.name, json.loads(event.call.arguments)))
    return {"thinking": thinking.strip(), "answer": answer.strip(), "calls": calls}


def normalised(result: dict) -> dict:
    return {**result, "thinking": result["thinking"].strip(), "answer": result["answer"].strip()}


@pytest.mark.parametrize("reply", REPLIES)
def test_the_splitter_agrees_with_openai_harmony(harmony_encoding, reply):
    tokens = harmony_encoding.encode(reply, allowed_special="all")
    expected = normalised(oracle(harmony_encoding, tokens))
    assert expected["thinking"] or expected["answer"] or expected["calls"]  # the oracle read it
    assert ours(harmony_encoding, tokens) == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reply=st.sampled_from(REPLIES), cuts=st.lists(st.integers(0, 200), max_size=12))
def test_the_splitter_agrees_however_the_text_arrives(harmony_encoding, reply, cuts):
    tokens = harmony_encoding.encode(reply, allowed_special="all")
    assert ours(harmony_encoding, tokens, cuts) == normalised(oracle(harmony_encoding, tokens))
