"""Qwen tool calls: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``.

Accepted output:

- ``<tool_call>`` blocks holding one JSON object ``{"name", "arguments"}`` (or a
  list of them); the body may be wrapped in a ```` ```json ```` fence;
  ``arguments`` may be an object or a JSON string holding one, ``parameters`` is
  read as a synonym. The function must have been offered.
- Drift form: when the WHOLE reply is such an object (or a list of them, or
  several in a row), bare or in a ```` ```json ```` / ```` ``` ```` fence, naming
  offered functions with arguments that fit their schemas, it is a call. Small
  Qwen models answer this way instead of using the tags.

Anything else is content; a malformed block is returned as content, markers included.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mlxhost.core.domain import FunctionTool
from mlxhost.core.types import StreamParser, ToolCall
from mlxhost.families.toolcalls import (
    ContentOnlyParser,
    InvalidToolCall,
    ToolCallStreamParser,
    call_arguments,
    find_close_outside_json_strings,
    make_tool_call,
    offered_functions,
    schema_errors,
)

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_CALL_KEYS = {"name", "arguments", "parameters"}


def _unfence(text: str) -> str | None:
    """The inside of a ```json (or bare ```) fence; the text itself when unfenced;
    None for a fence of another language."""
    text = text.strip()
    if not text.startswith("```"):
        return text
    newline = text.find("\n")
    if newline < 0:
        return None
    if text[3:newline].strip().lower() not in ("", "json"):
        return None
    body = text[newline + 1 :].rstrip()
    body = body.removesuffix("```")
    return body.strip()


def _json_values(text: str) -> list[Any]:
    """One or more JSON values, separated by whitespace; raises ValueError otherwise."""
    decoder = json.JSONDecoder()
    values, index = [], 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index == len(text):
            break
        value, index = decoder.raw_decode(text, index)
        values.append(value)
    if not values:
        raise ValueError("no JSON value")
    return values


def _call_objects(values: list[Any]) -> list[Any]:
    items: list[Any] = []
    for value in values:
        items.extend(value if isinstance(value, list) else [value])
    return items


def _call(item: Any, functions: dict[str, dict[str, Any]], *, strict: bool) -> ToolCall:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InvalidToolCall('expected an object with a "name"')
    name = item["name"]
    if name not in functions:
        raise InvalidToolCall(f"function {name!r} was not offered")
    arguments = call_arguments(item.get("arguments", item.get("parameters")))
    if strict:
        problems = schema_errors(arguments, functions[name])
        if problems:
            raise InvalidToolCall("; ".join(problems[:3]))
    return make_tool_call(name, arguments)


def parse_tool_call_block(body: str, functions: dict[str, dict[str, Any]]) -> list[ToolCall]:
    """The calls in one ``<tool_call>`` body; raises InvalidToolCall when it holds none."""
    text = _unfence(body)
    if text is None:
        raise InvalidToolCall("a fenced block that is not JSON")
    try:
        values = _json_values(text)
    except ValueError as exc:
        raise InvalidToolCall(f"invalid JSON ({exc})") from None
    items = _call_objects(values)
    if not items:
        raise InvalidToolCall("no call object")
    return [_call(item, functions, strict=False) for item in items]


def parse_json_reply(text: str, functions: dict[str, dict[str, Any]]) -> list[ToolCall] | None:
    """The drift form: the whole reply is call objects (bare or ```json fenced).

    None when the reply is not call-shaped (plain content); InvalidToolCall when
    it is call-shaped but names an unknown function or its arguments do not fit.
    """
    body = _unfence(text)
    if body is None:
        return None
    try:
        values = _json_values(body)
    except ValueError:
        return None
    items = _call_objects(values)
    shaped = all(
        isinstance(item, dict) and isinstance(item.get("name"), str) and set(item) <= _CALL_KEYS
        for item in items
    )
    if not items or not shaped:
        return None
    return [_call(item, functions, strict=True) for item in items]


class JsonReplyMatcher:
    """Whether the reply so far could still be a whole-reply JSON call.

    A character-level scanner: optional ```json fence, then JSON values (objects
    or lists) tracked by bracket depth and string state, then only whitespace
    (and the closing fence). It errs on the side of "could be": the final word
    is :func:`parse_json_reply`.
    """

    def __init__(self, functions: dict[str, dict[str, Any]]) -> None:
        self._functions = functions
        self._state = "lead"
        self._fenced = False
        self._info = ""  # the fence's info string so far
        self._ticks = 0
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._expect = ""  # characters the next non-space character must be one of

    def feed(self, text: str) -> bool:
        for char in text:
            if not self._step(char):
                self._state = "dead"
                return False
        return self._state != "dead"

    def parse(self, text: str) -> list[ToolCall] | None:
        return parse_json_reply(text, self._functions)

    def _step(self, char: str) -> bool:
        state = self._state
        if state == "dead":
            return False
        if state in ("lead", "value-lead"):
            if char.isspace():
                return True
            if char == "`" and state == "lead":
                self._state, self._ticks = "fence-open", 1
                return True
            return self._start_value(char)
        if state == "fence-open":
            if self._ticks < 3:
                self._ticks += 1
                return char == "`"
            if char == "\n":
                self._fenced = True
                self._state = "value-lead"
                return self._info.strip().lower() in ("", "json")
            self._info += char
            word = self._info.strip(" \t\r").lower()
            if self._info[-1] in " \t\r":  # only spaces may follow the language name
                return word in ("", "json")
            return "json".startswith(word)
        if state == "value":
            return self._in_value(char)
        if state == "after":
            if char.isspace():
                return True
            if char in "{[":
                return self._start_value(char)
            if char == "`" and self._fenced:
                self._state, self._ticks = "fence-close", 1
                return True
            return False
        if state == "fence-close":
            if self._ticks < 3:
                self._ticks += 1
                return char == "`"
            self._state = "tail"
            return char.isspace()
        if state == "tail":
            return char.isspace()
        return False

    def _start_value(self, char: str) -> bool:
        if char not in "{[":
            return False
        self._state = "value"
        self._depth = 1
        self._expect = '"}' if char == "{" else "{]"
        return True

    def _in_value(self, char: str) -> bool:
        if self._in_string:
            if self._escape:
                self._escape = False
            elif char == "\\":
                self._escape = True
            elif char == '"':
                self._in_string = False
            return True
        if char.isspace():
            return True
        if self._expect:
            if char not in self._expect:
                return False
            self._expect = ""
        if char == '"':
            self._in_string = True
        elif char == "{":
            self._depth += 1
            self._expect = '"}'
        elif char == "[":
            self._depth += 1
        elif char in "}]":
            self._depth -= 1
            if self._depth == 0:
                self._state = "after"
        return True


def make_parser(tools: Sequence[FunctionTool]) -> StreamParser:
    """The ToolParserFactory of the Qwen family: a fresh parser for one reply."""
    functions = offered_functions(tools)
    if not functions:
        return ContentOnlyParser()
    return ToolCallStreamParser(
        [(TOOL_CALL_OPEN, TOOL_CALL_CLOSE)],
        lambda body, closed: parse_tool_call_block(body, functions),
        whole=JsonReplyMatcher(functions),
        find_close=find_close_outside_json_strings,
        name="qwen tool calls",
    )


def call_grammar(tools: Sequence[FunctionTool], tool_choice: Any) -> str:
    """The llguidance Lark grammar of a reply whose calls are constrained.

    Forced (``"required"`` or a named tool): one ``<tool_call>`` block whose JSON
    names one of ``tools`` with arguments matching its parameters. ``"auto"``
    (some tool is strict): free text, and every ``<tool_call>`` block it opens,
    or a reply that is a bare call object, names an offered tool, a strict
    tool's arguments matching its schema."""
    from mlxhost.families.toolcalls import call_object_schema, calls_in_free_text

    auto = tool_choice == "auto"
    schema = json.dumps(call_object_schema(tools, strict_only=auto), ensure_ascii=False)
    # The markers are special tokens of Qwen2.5/Qwen3 tokenizers: named as tokens,
    # since their text is not what the tokenizer emits for them.
    block = f'"\\n" call "\\n" {TOOL_CALL_CLOSE}'
    rules = f"call: %json {schema}\n"
    if auto:
        # A reply that is a bare call object (the drift form above) is a call too.
        return calls_in_free_text(TOOL_CALL_OPEN, block, rules, special_token=True, whole_reply="call")
    return f"start: {TOOL_CALL_OPEN} {block}\n{rules}"
