"""Shared machinery for turning generated text into OpenAI tool calls.

Family plugins describe their own format (markers, how a block body becomes
calls, which "drift" forms a whole reply may take); this module holds what they
share:

- :class:`ToolCallStreamParser`, a pure state machine fed token text in
  arbitrary pieces. Content streams out as soon as it cannot be part of a call
  marker; a marker (or a prefix of one) holds text back until the block closes
  or is proven not to be a call. Optionally the whole reply is held while it
  could still be a bare call (a drift form decided only at ``finish()``).
- :func:`schema_errors` / :func:`fits_schema`: a small JSON-schema check (types,
  required, additionalProperties, enum/const, items, anyOf/oneOf/allOf), used to
  decide whether a drift-form reply really is a call.
- :func:`offered_functions`, :func:`new_call_id`, :func:`make_tool_call` and
  event helpers.

Nothing here imports a model or a tokenizer; the same code serves streaming and
non-streaming responses.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from mlxhost.core.domain import FunctionTool, NamedToolChoice, ToolChoice
from mlxhost.core.types import ContentDelta, ParserEvent, ToolCall, ToolCallEvent

log = logging.getLogger(__name__)

__all__ = [
    "ContentOnlyParser",
    "InvalidToolCall",
    "ToolCallStreamParser",
    "WholeReplyMatcher",
    "call_arguments",
    "content_events",
    "fits_schema",
    "make_tool_call",
    "merge_events",
    "new_call_id",
    "offered_functions",
    "schema_errors",
    "strict_parameters",
    "tool_choice_instruction",
]


class InvalidToolCall(ValueError):
    """Text in a tool-call position that is not a valid call of an offered function.

    The parser returns such text to the client as content (and logs a warning)
    rather than inventing or dropping a call.
    """


# --- calls and events -------------------------------------------------------


def new_call_id() -> str:
    """A fresh OpenAI-style call id: ``call_`` and 24 random hex digits."""
    return f"call_{secrets.token_hex(12)}"


def make_tool_call(name: str, arguments: Mapping[str, Any]) -> ToolCall:
    """A call with ``arguments`` as JSON text (as OpenAI sends it) and a fresh id."""
    return ToolCall(
        name=name, arguments=json.dumps(dict(arguments), ensure_ascii=False), id=new_call_id()
    )


def content_events(text: str) -> list[ParserEvent]:
    return [ContentDelta(text)] if text else []


def merge_events(events: Iterable[ParserEvent]) -> list[ParserEvent]:
    """Join neighbouring content deltas (how a non-streaming response sees them)."""
    out: list[ParserEvent] = []
    for event in events:
        if isinstance(event, ContentDelta) and out and isinstance(out[-1], ContentDelta):
            out[-1] = ContentDelta(out[-1].text + event.text)
        elif not (isinstance(event, ContentDelta) and not event.text):
            out.append(event)
    return out


def offered_functions(tools: Iterable[FunctionTool] | None) -> dict[str, dict[str, Any]]:
    """The offered functions, name -> JSON schema of their parameters (``{}``: none given)."""
    return {
        tool.name: dict(tool.parameters) if isinstance(tool.parameters, Mapping) else {}
        for tool in tools or ()
    }


def strict_parameters(parameters: Any) -> dict[str, Any]:
    """A tool's parameter schema as a forced call is constrained by it: an object
    schema that says nothing about ``additionalProperties`` allows only its declared
    properties (none for ``{"type": "object", "properties": {}}`` or no schema), as
    OpenAI's strict mode does. A schema that allows more keeps allowing it."""
    if not isinstance(parameters, Mapping):
        return {"type": "object", "properties": {}, "additionalProperties": False}
    return _closed(parameters)


def _closed(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions", "patternProperties") and isinstance(value, Mapping):
            out[key] = {name: _closed(sub) for name, sub in value.items()}
        elif key in ("items", "anyOf", "oneOf", "allOf", "additionalProperties", "prefixItems"):
            out[key] = _closed(value)
        else:
            out[key] = value
    kind = out.get("type")
    is_object = kind == "object" or (isinstance(kind, list) and "object" in kind) or "properties" in out
    if is_object and "additionalProperties" not in out and "patternProperties" not in out:
        out.setdefault("properties", {})
        out["additionalProperties"] = False
    return out


def call_arguments(value: Any) -> dict[str, Any]:
    """Arguments as a model wrote them: an object, or a JSON string holding one
    (small models copy OpenAI's wire format). Missing arguments are ``{}``."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise InvalidToolCall(f"arguments are not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidToolCall(f"arguments must be an object, not {type(value).__name__}")
    return value


def tool_choice_instruction(tool_choice: ToolChoice) -> str | None:
    """The one instruction line a prompt gets for ``tool_choice`` (None for auto/none).

    Where the family has a tool-call grammar (``mlxhost_tool_call_grammar``) the
    reply is also forced to be a call.
    """
    if tool_choice == "required":
        return "You must call at least one of the provided functions in your reply."
    if isinstance(tool_choice, NamedToolChoice):
        return f"You must call the function `{tool_choice.name}` in your reply."
    return None


def forced_tools(tools: Sequence[FunctionTool], tool_choice: ToolChoice) -> tuple[FunctionTool, ...]:
    """The tools a reply must call one of: all for "required", the named one, or none."""
    if tool_choice == "required":
        return tuple(tools)
    if isinstance(tool_choice, NamedToolChoice):
        return tuple(tool for tool in tools if tool.name == tool_choice.name)
    return ()


def call_object_schema(tools: Sequence[FunctionTool], *, strict_only: bool = False) -> dict[str, Any]:
    """JSON schema of ``{"name": ..., "arguments": {...}}`` calling one of ``tools``,
    arguments matching each tool's parameters (with ``strict_only``, only a strict
    tool's; any object for the others)."""
    def arguments(tool: FunctionTool) -> dict[str, Any]:
        if strict_only and not tool.strict:
            return {"type": "object"}
        return strict_parameters(tool.parameters)

    return {"anyOf": [
        {"type": "object",
         "properties": {"name": {"const": tool.name}, "arguments": arguments(tool)},
         "required": ["name", "arguments"], "additionalProperties": False}
        for tool in tools
    ]}


def enforced_call_tools(tools: Sequence[FunctionTool], tool_choice: ToolChoice) -> tuple[FunctionTool, ...]:
    """The tools whose calls a grammar constrains under ``tool_choice``: the forced
    ones (:func:`forced_tools`), or under "auto" every offered tool once one of them
    is strict (its calls, wherever they start, match the grammar; text stays free)."""
    forced = forced_tools(tools, tool_choice)
    if forced:
        return forced
    if tool_choice == "auto" and any(tool.strict for tool in tools):
        return tuple(tools)
    return ()


def calls_in_free_text(
    trigger: str, body: str, rules: str, *, special_token: bool, whole_reply: str | None = None
) -> str:
    """A Lark grammar of free text in which every tool call, from ``trigger`` on,
    must match ``body`` (a Lark expression over ``rules``): what tool_choice "auto"
    with strict tools constrains (llguidance's structural-tag pattern).

    A trigger that is a special token (Qwen's ``<tool_call>``) can never occur
    inside the free text, whose regex matches text bytes only; a text trigger
    (Gemma's ```` ```tool_code ````) ends a lazy lexeme, so the grammar switches to
    the call at its first occurrence. ``whole_reply`` is a Lark expression for a
    reply that is itself a call without the markers, starting with ``{`` (the
    drift form small Qwen models write, which the family's parser reads as a
    call); free text then never starts with ``{``, so such a reply is constrained
    from its first byte.
    """
    text = r"([^{](.|\n)*)?" if whole_reply else r"(.|\n)*"
    lines = [
        "%llguidance {}",
        "start: call_block* FREE_TEXT" + (f" | {whole_reply}" if whole_reply else ""),
        f"FREE_TEXT: /{text}/",
    ]
    if special_token:
        lines.append(f"call_block: FREE_TEXT {trigger} {body}")
    else:
        lines += [f"call_trigger[lazy]: FREE_TEXT {json.dumps(trigger)}", f"call_block: call_trigger {body}"]
    return "\n".join([*lines, rules])


# --- a small JSON-schema check ----------------------------------------------


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": _is_integer,
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def schema_errors(value: Any, schema: Any, path: str = "arguments") -> list[str]:
    """Why ``value`` does not fit ``schema`` (empty: it fits).

    Basic JSON types and the structural keywords tool schemas use; unknown
    keywords (formats, lengths, patterns) are not checked.
    """
    if schema is False:
        return [f"{path}: not allowed"]
    if not isinstance(schema, Mapping):
        return []
    kind = schema.get("type")
    if kind is not None:
        kinds = [kind] if isinstance(kind, str) else list(kind)
        known = [k for k in kinds if k in _JSON_TYPES]
        if known and not any(_JSON_TYPES[k](value) for k in known):
            return [f"{path}: expected {' or '.join(known)}, got {_json_type(value)}"]
    errors: list[str] = []
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"] or ()):
        errors.append(f"{path}: {value!r} is not one of {schema['enum']!r}")
    if "const" in schema and not _same(value, schema["const"]):
        errors.append(f"{path}: must be {schema['const']!r}")
    for keyword in ("anyOf", "oneOf"):
        options = schema.get(keyword)
        fits_one = isinstance(options, list) and any(
            not schema_errors(value, option, path) for option in options
        )
        if isinstance(options, list) and options and not fits_one:
            errors.append(f"{path}: matches none of {keyword}")
    for option in schema.get("allOf") or ():
        errors.extend(schema_errors(value, option, path))
    if isinstance(value, dict):
        properties = schema.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        for name in schema.get("required") or ():
            if name not in value:
                errors.append(f"{path}: missing required property {name!r}")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                errors.extend(schema_errors(item, properties[name], f"{path}.{name}"))
            elif extra is False:
                errors.append(f"{path}: unknown property {name!r}")
            elif isinstance(extra, Mapping):
                errors.extend(schema_errors(item, extra, f"{path}.{name}"))
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            errors.extend(schema_errors(item, schema["items"], f"{path}[{index}]"))
    return errors


def fits_schema(value: Any, schema: Any) -> bool:
    return not schema_errors(value, schema)


def _json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _JSON_TYPES[name](value):
            return name
    return type(value).__name__


def check_finite(value: Any) -> Any:
    """Reject NaN/Infinity, which JSON cannot carry."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidToolCall("non-finite number in arguments")
    return value


# --- the streaming state machine --------------------------------------------


class WholeReplyMatcher(Protocol):
    """A family's drift form: a reply that, as a whole, is one or more bare calls.

    ``feed`` sees the reply piece by piece and returns False as soon as the
    reply can no longer be such a form (it must never reject a reply that
    :meth:`parse` would accept: that keeps the parser's output independent of
    how the text was split). ``parse`` decides at the end: the calls, None when
    the text is not call-shaped, or :class:`InvalidToolCall` when it is
    call-shaped but invalid (e.g. names a function that was not offered).
    """

    def feed(self, text: str) -> bool: ...

    def parse(self, text: str) -> list[ToolCall] | None: ...


# Parses the text between a block's markers (``closed`` is False for a block
# still open at the end of the reply); raises InvalidToolCall when it is not a call.
BlockParser = Callable[[str, bool], list[ToolCall]]


def _no_calls() -> list[ToolCall]:
    raise InvalidToolCall("the block holds no call")


class _Mode(enum.Enum):
    WHOLE = "whole"  # holding the reply: it may be a bare call (decided at finish)
    TEXT = "text"  # streaming content, watching for an opening marker
    BLOCK = "block"  # inside a call block, waiting for its closing marker


def find_close_outside_json_strings(body: str, close: str) -> int:
    """Where a JSON-bodied block ends: the first ``close`` outside a JSON string.

    A call's string argument may itself hold the closing marker (code that
    writes ``</tool_call>``); ``str.find`` would cut the block there. Quotes
    and backslash escapes are tracked only after the first ``{`` or ``[``, so
    prose before the JSON cannot open a string. -1 while the block is open.
    """
    in_string = escaped = False
    started = False
    for index, char in enumerate(body):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if body.startswith(close, index):
            return index
        if char in "{[":
            started = True
        elif char == '"' and started:
            in_string = True
    return -1


def _split_trailing_space(text: str) -> tuple[str, str]:
    stripped = text.rstrip()
    return stripped, text[len(stripped) :]


class ToolCallStreamParser:
    """Content and tool calls from text fed in arbitrary pieces.

    ``markers`` are ``(open, close)`` pairs (``("<tool_call>", "</tool_call>")``).
    Between them, ``parse_block`` turns the body into calls. ``find_close(body,
    close)`` finds where a block ends (default ``str.find``; a family whose close
    marker may appear inside a string argument passes a string-aware search).

    Whitespace that only separates a call block from the text before it (or
    ends the reply after a call) is layout, not content; all other text is
    content, emitted as soon as it cannot be the start of a marker. A block that
    is not a valid call goes out as content, markers included, and a warning is
    logged. At ``finish()`` an unclosed block that nevertheless holds a complete
    valid call is a call (the reply was cut at max_tokens); otherwise it is content.

    The events (with neighbouring content joined) and the concatenated content
    do not depend on where the text was split.
    """

    def __init__(
        self,
        markers: Sequence[tuple[str, str]],
        parse_block: BlockParser,
        *,
        whole: WholeReplyMatcher | None = None,
        find_close: Callable[[str, str], int] | None = None,
        name: str = "tool calls",
        stop_after_call: bool = False,
    ) -> None:
        """``stop_after_call``: ask the server to stop generating once a block
        with valid calls has closed (for formats where the model would go on to
        invent the tool's output itself)."""
        if not markers or any(not open_ or not close for open_, close in markers):
            raise ValueError("markers must be non-empty (open, close) pairs")
        self._markers = list(markers)
        self._longest = max(len(open_) for open_, _ in markers)
        self._parse_block = parse_block
        self._find_close = find_close or str.find
        self._whole = whole
        self._name = name
        self._mode = _Mode.WHOLE if whole is not None else _Mode.TEXT
        self._pending = ""  # text not yet emitted (in BLOCK mode: the block body so far)
        self._opening = ""  # BLOCK mode: the whitespace before the marker, and the marker
        self._close = ""  # BLOCK mode: the closing marker awaited
        self._after_call = False  # nothing but whitespace emitted since the last call
        self._finished = False
        self._stop_after_call = stop_after_call
        # Read by the server after each feed(): generation should end here.
        self.stop_requested = False

    def feed(self, text: str) -> list[ParserEvent]:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if not text:
            return []
        self._pending += text
        if self._mode is _Mode.WHOLE:
            assert self._whole is not None
            if self._whole.feed(text):
                return []
            self._mode = _Mode.TEXT
        return self._advance()

    def finish(self) -> list[ParserEvent]:
        if self._finished:
            return []
        self._finished = True
        events: list[ParserEvent] = []
        if self._mode is _Mode.WHOLE:
            whole = self._whole
            assert whole is not None
            calls = self._try(lambda: whole.parse(self._pending), self._pending)
            if calls:
                self._pending = ""
                return [ToolCallEvent(call) for call in calls]
            self._mode = _Mode.TEXT
            events.extend(self._advance())
        if self._mode is _Mode.BLOCK:
            body, self._pending = self._pending, ""
            self._mode = _Mode.TEXT
            self._end_block(events, body, closed=False)
        rest, self._pending = self._pending, ""
        if rest and not (self._after_call and rest.isspace()):
            self._content(events, rest)
        return events

    # -- internals --

    def _advance(self) -> list[ParserEvent]:
        events: list[ParserEvent] = []
        while True:
            if self._mode is _Mode.BLOCK:
                end = self._find_close(self._pending, self._close)
                if end < 0:
                    return events
                body = self._pending[:end]
                self._pending = self._pending[end + len(self._close) :]
                self._mode = _Mode.TEXT
                self._end_block(events, body, closed=True)
                continue
            found = self._find_opening(self._pending)
            if found is None:
                keep = self._partial_marker(self._pending)
                head, tail = (
                    self._pending[: len(self._pending) - keep],
                    self._pending[len(self._pending) - keep :],
                )
                text, space = _split_trailing_space(head)
                self._content(events, text)
                self._pending = space + tail
                return events
            index, opening, close = found
            text, space = _split_trailing_space(self._pending[:index])
            self._content(events, text)
            self._opening = space + opening
            self._close = close
            self._pending = self._pending[index + len(opening) :]
            self._mode = _Mode.BLOCK

    def _find_opening(self, text: str) -> tuple[int, str, str] | None:
        best: tuple[int, str, str] | None = None
        for opening, close in self._markers:
            index = text.find(opening)
            if index >= 0 and (
                best is None
                or index < best[0]
                or (index == best[0] and len(opening) > len(best[1]))
            ):
                best = (index, opening, close)
        return best

    def _partial_marker(self, text: str) -> int:
        """Length of the longest end of ``text`` that could begin an opening marker."""
        for length in range(min(len(text), self._longest - 1), 0, -1):
            suffix = text[-length:]
            if any(opening.startswith(suffix) for opening, _ in self._markers):
                return length
        return 0

    def _content(self, events: list[ParserEvent], text: str) -> None:
        if text:
            events.append(ContentDelta(text))
            if not text.isspace():
                self._after_call = False

    def _end_block(self, events: list[ParserEvent], body: str, *, closed: bool) -> None:
        raw = self._opening + body + (self._close if closed else "")
        if not closed:  # cut at max_tokens, perhaps in the middle of the closing marker
            for length in range(min(len(body), len(self._close) - 1), 0, -1):
                if self._close.startswith(body[-length:]):
                    body = body[:-length]
                    break
        calls = self._try(lambda: self._parse_block(body, closed) or _no_calls(), raw)
        if calls:
            events.extend(ToolCallEvent(call) for call in calls)
            self._after_call = True
            self.stop_requested = self._stop_after_call and closed
        else:
            self._content(events, raw)

    def _try(self, parse: Callable[[], list[ToolCall] | None], raw: str) -> list[ToolCall] | None:
        try:
            return parse()
        except InvalidToolCall as exc:
            log.warning(
                "%s: returning text as content, not a valid call (%s): %.200r", self._name, exc, raw
            )
            return None


class ContentOnlyParser:
    """Every character is content (no tools offered)."""

    stop_requested = False

    def feed(self, text: str) -> list[ParserEvent]:
        return content_events(text)

    def finish(self) -> list[ParserEvent]:
        return []
