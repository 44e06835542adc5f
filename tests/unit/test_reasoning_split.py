"""Thinking apart from the answer, without a model: the splitters (every split
point), the token-level tracker and budget, and the controls' mapping."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxhost.api.thinking import anthropic_control, chat_control, ollama_control, responses_control
from mlxhost.core.domain import ReasoningControl
from mlxhost.core.errors import InvalidRequest
from mlxhost.core.types import ContentDelta, ReasoningDelta, SamplingParams, ToolCallEvent
from mlxhost.engine.reasoning_budget import ThoughtTracker
from mlxhost.families.reasoning.split import HarmonySplitter, TagSplitter, merge
from mlxhost.service.reasoning_controls import (
    prompt_opens_thought,
    template_variables,
    thinking_budget,
    thinking_plan,
)
from mlxhost.testing.fake_engine import FAKE_HARMONY, FAKE_THINK, follow_script

# -- a corpus of replies in the formats real models write ---------------------
QWEN3_THINK_THEN_ANSWER = "<think>\nThe user greets me.\nI greet back.\n</think>\n\nHello! How can I help?"
QWEN3_THINK_THEN_CALL = (
    "<think>\nI need the weather.\n</think>\n\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
)
# A Qwen3 thinking template opened the block in the prompt: the reply starts inside it.
OPENED_IN_PROMPT = "Let me think about 2+2.\n</think>\n\n4"
UNTERMINATED = "<think>\nStep one. Step two. Step thr"
GEMMA4 = "<|channel>thought\nPlanning the reply.<channel|>Hi there."
HARMONY_ANALYSIS_CALL = (
    "<|channel|>analysis<|message|>Need weather, call tool.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
    '<|message|>{"location":"Tokyo"}<|call|>'
)
HARMONY_ANALYSIS_FINAL = (
    "<|channel|>analysis<|message|>User asks 2+2. Answer 4.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>2 + 2 = 4.<|return|>"
)


def run(splitter, pieces):
    events = []
    for piece in pieces:
        events.extend(splitter.feed(piece))
    events.extend(splitter.finish())
    return merge(events)


def whole(make, text):
    return run(make(), [text])


def kinds(events):
    return [(type(e).__name__, getattr(e, "text", None)) for e in events]


def test_think_then_answer():
    events = whole(lambda: TagSplitter("<think>", "</think>"), QWEN3_THINK_THEN_ANSWER)
    assert events == [ReasoningDelta("The user greets me.\nI greet back."),
                      ContentDelta("Hello! How can I help?")]


def test_think_then_tool_call_leaves_the_call_to_the_answer():
    events = whole(lambda: TagSplitter("<think>", "</think>"), QWEN3_THINK_THEN_CALL)
    assert events[0] == ReasoningDelta("I need the weather.")
    assert isinstance(events[1], ContentDelta) and events[1].text.startswith("<tool_call>")


def test_a_thought_opened_by_the_prompt():
    events = whole(lambda: TagSplitter("<think>", "</think>", inside=True), OPENED_IN_PROMPT)
    assert events == [ReasoningDelta("Let me think about 2+2."), ContentDelta("4")]


def test_unterminated_thinking_stays_thinking():
    events = whole(lambda: TagSplitter("<think>", "</think>"), UNTERMINATED)
    assert events == [ReasoningDelta("Step one. Step two. Step thr")]


def test_a_reply_without_a_thought_is_all_answer_whitespace_kept():
    events = whole(lambda: TagSplitter("<think>", "</think>"), "  indented code")
    assert events == [ContentDelta("  indented code")]


def test_gemma4_thought_channel():
    events = whole(lambda: TagSplitter("<|channel>thought", "<channel|>"), GEMMA4)
    assert events == [ReasoningDelta("Planning the reply."), ContentDelta("Hi there.")]


def test_a_partial_marker_at_the_end_is_content():
    assert whole(lambda: TagSplitter("<think>", "</think>"), "a <thi") == [ContentDelta("a <thi")]


def test_harmony_analysis_then_final():
    events = whole(HarmonySplitter, HARMONY_ANALYSIS_FINAL)
    assert events == [ReasoningDelta("User asks 2+2. Answer 4."), ContentDelta("2 + 2 = 4.")]


def test_harmony_analysis_then_commentary_tool_call():
    events = whole(HarmonySplitter, HARMONY_ANALYSIS_CALL)
    assert events[0] == ReasoningDelta("Need weather, call tool.")
    assert isinstance(events[1], ToolCallEvent) and len(events) == 2
    call = events[1].call
    assert call.name == "get_weather" and json.loads(call.arguments) == {"location": "Tokyo"}


def test_harmony_recipient_before_the_channel_and_a_preamble():
    text = ("<|channel|>commentary<|message|>Checking.<|end|>"
            "<|start|>assistant to=functions.lookup<|channel|>commentary json<|message|>{}<|call|>")
    events = whole(HarmonySplitter, text)
    assert events[0] == ContentDelta("Checking.")
    assert isinstance(events[1], ToolCallEvent) and events[1].call.name == "lookup"


def test_harmony_cut_off_in_analysis():
    events = whole(HarmonySplitter, "<|channel|>analysis<|message|>Thinking a lo")
    assert events == [ReasoningDelta("Thinking a lo")]


def test_text_that_is_not_harmony_is_content():
    assert whole(HarmonySplitter, "plain words") == [ContentDelta("plain words")]


# As the engine delivers them: <|call|> and <|return|> end the sequence (EOS) and
# their text never arrives.
HARMONY_CALL_AT_EOS = HARMONY_ANALYSIS_CALL.removesuffix("<|call|>")
HARMONY_FINAL_AT_EOS = HARMONY_ANALYSIS_FINAL.removesuffix("<|return|>")


def test_harmony_as_the_engine_delivers_it():
    events = whole(HarmonySplitter, HARMONY_CALL_AT_EOS)
    assert isinstance(events[-1], ToolCallEvent) and events[-1].call.name == "get_weather"
    assert whole(HarmonySplitter, HARMONY_FINAL_AT_EOS)[-1] == ContentDelta("2 + 2 = 4.")
    cut = whole(HarmonySplitter, HARMONY_CALL_AT_EOS[:-3])  # max_tokens inside the arguments
    assert cut[-1] == ContentDelta('{"location":"Toky')


CORPUS = [
    (lambda: TagSplitter("<think>", "</think>"), QWEN3_THINK_THEN_ANSWER),
    (lambda: TagSplitter("<think>", "</think>"), QWEN3_THINK_THEN_CALL),
    (lambda: TagSplitter("<think>", "</think>", inside=True), OPENED_IN_PROMPT),
    (lambda: TagSplitter("<think>", "</think>"), UNTERMINATED),
    (lambda: TagSplitter("<|channel>thought", "<channel|>"), GEMMA4),
    (HarmonySplitter, HARMONY_ANALYSIS_FINAL),
    (HarmonySplitter, HARMONY_ANALYSIS_CALL),
    (HarmonySplitter, HARMONY_CALL_AT_EOS),
    (HarmonySplitter, HARMONY_FINAL_AT_EOS),
]


def _without_ids(events):
    return [(type(e).__name__, e.call.name, e.call.arguments) if isinstance(e, ToolCallEvent)
            else (type(e).__name__, e.text) for e in events]


@pytest.mark.parametrize("case", range(len(CORPUS)))
def test_every_single_split_point_gives_the_same_events(case):
    make, text = CORPUS[case]
    expected = _without_ids(whole(make, text))
    for cut in range(len(text) + 1):
        assert _without_ids(run(make(), [text[:cut], text[cut:]])) == expected, cut


@settings(max_examples=150, deadline=None)
@given(case=st.integers(0, len(CORPUS) - 1), data=st.data())
def test_any_pieces_give_the_same_events(case, data):
    make, text = CORPUS[case]
    cuts = sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=12)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    assert _without_ids(run(make(), pieces)) == _without_ids(whole(make, text))


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="ab<>/thinkT \n", max_size=40), st.lists(st.integers(0, 40), max_size=6))
def test_no_text_is_lost_or_invented(text, cuts):
    """Whatever the model writes, reasoning + answer + markers + trimmed whitespace is the input."""
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)])]
    events = run(TagSplitter("<think>", "</think>"), pieces)
    joined = "".join(e.text for e in events)
    assert joined.replace(" ", "").replace("\n", "") == (
        text.replace("<think>", "").replace("</think>", "").replace(" ", "").replace("\n", ""))


# -- the tracker and the budget -----------------------------------------------
def ids(text):
    return tuple(ord(c) for c in text)


def test_the_budget_closes_the_thought_and_the_answer_follows():
    plan = thinking_plan(FAKE_THINK, inside=False, budget=12)
    script = "<think>" + "x" * 100 + "</think>\n\nThe answer."
    reply = follow_script(script, SamplingParams(max_tokens=500, thinking=plan))
    # 12 thinking tokens (from the open marker's last token: a real model's
    # <think> is one token), then the closing marker, then the script's answer.
    assert reply == "<think>" + "x" * 11 + "</think>" + "\n\nThe answer."
    events = whole(lambda: TagSplitter("<think>", "</think>"), reply)
    assert events == [ReasoningDelta("x" * 11), ContentDelta("The answer.")]


def test_the_tracker_follows_thought_and_answer():
    plan = thinking_plan(FAKE_THINK, inside=False, budget=None)
    tracker = ThoughtTracker(plan)
    assert tracker.may_open()
    for token in ids("<think>hm</think>"):
        tracker.advance(token)
    assert not tracker.thinking and tracker.answering
    tracker = ThoughtTracker(plan)
    tracker.advance(ord("A"))  # a reply that does not open a thought: all answer
    assert tracker.answering and not tracker.thinking


def test_harmony_budget_inserts_the_final_header():
    plan = thinking_plan(FAKE_HARMONY, inside=False, budget=40)
    script = "<|channel|>analysis<|message|>" + "y" * 80 + "<|end|><|start|>assistant<|channel|>final<|message|>Done.<|return|>"
    reply = follow_script(script, SamplingParams(max_tokens=500, thinking=plan))
    events = whole(HarmonySplitter, reply)
    assert events == [ReasoningDelta("y" * 39), ContentDelta("Done.")]


def test_the_prompt_opens_a_thought():
    assert prompt_opens_thought(FAKE_THINK, ids("assistant: <think>\n"))
    assert not prompt_opens_thought(FAKE_THINK, ids("assistant: <think>\n\n</think>\n\n"))
    assert not prompt_opens_thought(FAKE_THINK, ids("assistant: "))


# -- controls -----------------------------------------------------------------
def test_controls_map_onto_template_variables():
    assert template_variables(ReasoningControl()) == {}
    assert template_variables(chat_control("none", None)) == {
        "enable_thinking": False, "reasoning_effort": "low"}
    assert template_variables(chat_control("high", {"enable_thinking": True, "x": 1})) == {
        "enable_thinking": True, "reasoning_effort": "high", "x": 1}
    assert template_variables(ollama_control(False)) == {"enable_thinking": False}
    assert template_variables(ollama_control("medium")) == {
        "enable_thinking": True, "reasoning_effort": "medium"}
    assert template_variables(anthropic_control({"type": "disabled"})) == {"enable_thinking": False}
    assert responses_control({"effort": "minimal"}).effort == "minimal"


def test_budgets():
    enabled = anthropic_control({"type": "enabled", "budget_tokens": 2048})
    assert thinking_budget(enabled, 4096, answer_needs_room=False) == 2048
    assert thinking_budget(enabled, 1000, answer_needs_room=True) == 500  # a forced answer keeps room
    assert thinking_budget(ReasoningControl(), 64, answer_needs_room=True) == 32
    assert thinking_budget(ReasoningControl(), None, answer_needs_room=False) is None
    assert thinking_budget(ollama_control(False), None, answer_needs_room=False) == 0


@pytest.mark.parametrize(("parse", "value", "param"), [
    (lambda v: chat_control(v, None), "extreme", "reasoning_effort"),
    (lambda v: chat_control(None, v), ["x"], "chat_template_kwargs"),
    (responses_control, {"effort": 3}, "reasoning.effort"),
    (anthropic_control, {"type": "enabled"}, "thinking.budget_tokens"),
    (anthropic_control, {"type": "sometimes"}, "thinking.type"),
    (ollama_control, "loud", "think"),
])
def test_malformed_controls_name_their_field(parse, value, param):
    with pytest.raises(InvalidRequest) as caught:
        parse(value)
    assert caught.value.param == param


def test_a_harmony_call_to_a_function_not_offered_is_content():
    events = whole(lambda: HarmonySplitter(frozenset({"other"})), HARMONY_ANALYSIS_CALL)
    assert events == [ReasoningDelta("Need weather, call tool."), ContentDelta('{"location":"Tokyo"}')]


def test_the_logits_processor_forces_the_close_and_starts_the_grammar_after_it():
    """The MLX side: a budget of 2 forces </think> (id 6) as the only choice; the
    answer's processors are made and applied only once the thought has closed,
    and at the first step they let the open marker (id 5) through."""
    import mlx.core as mx

    from mlxhost.core.types import ThinkTags
    from mlxhost.engine.reasoning_processor import thinking_processor

    fmt = ThinkTags("<think>", "</think>", (5,), (6,))
    made: list[int] = []

    def answer():
        made.append(len(made))

        def only_token_9(tokens, logits):
            return mx.where(mx.arange(logits.shape[-1]) == 9, logits, -mx.inf)

        return [only_token_9]

    process = thinking_processor(thinking_plan(fmt, inside=False, budget=2), answer)
    logits = mx.zeros((1, 10))
    prompt = [1, 2, 3]

    def allowed(generated):
        out = process(mx.array([prompt + generated]), logits)
        return [i for i in range(10) if out[0, i].item() > -float("inf")]

    assert allowed([]) == [5, 9]  # the grammar's token, or open a thought
    assert allowed([5]) == list(range(10))  # thinking: free
    assert allowed([5, 7]) == [6]  # 2 thinking tokens spent: </think> only
    assert allowed([5, 7, 6]) == [9]  # the answer: the grammar, made afresh
    assert len(made) == 2  # one probe at the first step, one for the answer


@settings(max_examples=60, deadline=None)
@given(budget=st.integers(1, 80), thought=st.integers(0, 60), inside=st.booleans())
def test_any_budget_cuts_the_thought_at_it_and_keeps_the_answer(budget, thought, inside):
    plan = thinking_plan(FAKE_THINK, inside=inside, budget=budget)
    opening = "" if inside else "<think>"
    script = opening + "t" * thought + "</think>Answer."
    reply = follow_script(script, SamplingParams(max_tokens=500, thinking=plan))
    events = whole(lambda: TagSplitter("<think>", "</think>", inside=inside), reply)
    # Thinking tokens counted from the open marker's last token (none when the prompt opened it).
    kept = min(thought, budget - (0 if inside else 1))
    assert events == ([ReasoningDelta("t" * kept)] if kept else []) + [ContentDelta("Answer.")]


def test_a_stray_end_marker_in_the_answer_is_dropped_not_content():
    # Found by hypothesis: "</think>" with no thought open leaked into content.
    for pieces in (["</think>"], ["</thi", "nk>"], ["Hi </think>there"]):
        events = run(TagSplitter("<think>", "</think>"), pieces)
        assert "</think>" not in "".join(e.text for e in events)
        assert all(isinstance(e, ContentDelta) for e in events)
