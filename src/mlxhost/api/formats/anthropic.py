"""The Anthropic Messages API (``POST /v1/messages``, ``/v1/messages/count_tokens``):
wire → :class:`ChatRequest` once, the service's events → Anthropic's shapes once."""

from __future__ import annotations

import json
import uuid
from typing import Any

from litestar import Controller, Request, post
from litestar.datastructures import State

from mlxhost.api import exchange
from mlxhost.api.body import read_json
from mlxhost.api.errors import ApiError, PrefixShape, domain_error
from mlxhost.api.exchange import BlockFrames
from mlxhost.api.schemas import checked_object
from mlxhost.api.thinking import anthropic_control, signature
from mlxhost.api.wire_schema import ANTHROPIC_ERROR, operation, tagged
from mlxhost.core import domain
from mlxhost.core.errors import ContextLengthExceeded, InvalidRequest, MlxhostError
from mlxhost.core.types import (
    ContentDelta,
    ReasoningDelta,
    ToolCall,
    ToolCallEvent,
)
from mlxhost.service.chat import Generation

PREFIX = "/v1/messages"

STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use", "stop": "end_turn"}


# -- errors -------------------------------------------------------------------
def error_type_for(status: int) -> str:
    if status == 400:
        return "invalid_request_error"
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 413:
        return "request_too_large"
    if status in (429, 503):
        return "overloaded_error" if status == 503 else "rate_limit_error"
    if status >= 500:
        return "api_error"
    return "invalid_request_error"


def anthropic_error_body(error: ApiError) -> dict[str, Any]:
    message = error.message
    if error.overflow is not None:
        message = overflow_message(error.overflow)
    return {"type": "error", "error": {"type": error_type_for(error.status), "message": message}}


def overflow_message(overflow: ContextLengthExceeded) -> str:
    """Anthropic's two wordings; Claude Code parses the second and retries at once
    with a ``max_tokens`` that fits, and compacts the conversation on the first."""
    prompt, window = overflow.prompt_tokens, overflow.limit
    if overflow.prompt_alone:
        return f"prompt is too long: {prompt} tokens > {window} maximum"
    return (
        f"input length and `max_tokens` exceed context limit: {prompt} + "
        f"{overflow.max_tokens} > {window}, decrease input length or `max_tokens` and try again"
    )


def exc_body(exc: MlxhostError) -> dict[str, Any]:
    return anthropic_error_body(domain_error(exc))


# Errors under /v1/messages leave in Anthropic's shape (the app lists it).
ERROR_SHAPE: PrefixShape = (PREFIX, anthropic_error_body)


# -- request schema (published in OpenAPI and checked before parsing) ---------
_TEXT = {"properties": {"text": {"type": "string"}}, "required": ["text"]}
_SOURCE = tagged("type", {
    "base64": {"properties": {"media_type": {"type": "string"}, "data": {"type": "string"}},
               "required": ["media_type", "data"]},
    "url": {"properties": {"url": {"type": "string"}}, "required": ["url"]},
})
_IMAGE = {"properties": {"source": _SOURCE}, "required": ["source"]}
_TOOL_USE = {"properties": {"id": {"type": "string"}, "name": {"type": "string"},
                            "input": {"type": "object"}}, "required": ["id", "name"]}
# A tool-search answer: the named deferred tool becomes available (Claude Code's ToolSearch).
_TOOL_REFERENCE = {"properties": {"tool_name": {"type": "string"}}, "required": ["tool_name"]}
_TOOL_RESULT = {"properties": {
    "tool_use_id": {"type": "string"},
    "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": tagged(
        "type", {"text": _TEXT, "image": _IMAGE, "tool_reference": _TOOL_REFERENCE})}]},
    "is_error": {"type": "boolean"}}, "required": ["tool_use_id"]}
_SYSTEM_TEXT = {"anyOf": [{"type": "string"}, {"type": "array", "items": tagged("type", {"text": _TEXT})}]}


def _blocks(variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"properties": {"content": {"anyOf": [
        {"type": "string"}, {"type": "array", "items": tagged("type", variants)}]}},
        "required": ["content"]}


_MESSAGE = tagged("role", {
    "user": _blocks({"text": _TEXT, "image": _IMAGE, "tool_result": _TOOL_RESULT}),
    "assistant": _blocks({"text": _TEXT, "image": _IMAGE, "tool_use": _TOOL_USE,
                          "thinking": {}, "redacted_thinking": {}}),
    # Claude Code sends system turns inside messages.
    "system": {"properties": {"content": _SYSTEM_TEXT}, "required": ["content"]},
})
_TOOL = {"type": "object", "properties": {
    "name": {"type": "string"}, "description": {"type": "string"}, "input_schema": {"type": "object"},
    "type": {"enum": ["custom", None], "description": "server tools are not supported"},
    "strict": {"type": "boolean", "description": "tool_use input constrained to input_schema"},
    "defer_loading": {"type": "boolean",
                      "description": "left out of the prompt until a tool_reference names it"}},
    "required": ["name"]}
_TOOL_CHOICE = {"type": "object", "properties": {
    "type": {"enum": ["auto", "any", "none", "tool"]}, "name": {"type": "string"},
    "disable_parallel_tool_use": {"type": "boolean"}}, "required": ["type"]}


def _request_schema(count_only: bool) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": {
        "model": {"type": "string", "minLength": 1, "description": "Model id or alias (GET /v1/models)."},
        "messages": {"type": "array", "items": _MESSAGE, "minItems": 1},
        "system": _SYSTEM_TEXT,
        "tools": {"type": "array", "items": _TOOL},
        "tool_choice": _TOOL_CHOICE,
        "thinking": tagged("type", {
            "enabled": {"properties": {"budget_tokens": {"type": "integer", "minimum": 1}},
                        "required": ["budget_tokens"]},
            "disabled": {}, "adaptive": {}},
            description="closes the model's thought after budget_tokens (a model that does "
            "not think ignores it)"),
        "output_config": {"type": "object", "properties": {
            "format": {"anyOf": [{"type": "null"}, tagged("type", {"json_schema": {
                "properties": {"schema": {"type": "object"}}, "required": ["schema"]}})],
                "description": "json_schema: the reply is constrained to the schema"},
            "effort": {"description": "ignored: the served models have no effort setting"}}},
    }, "required": ["model", "messages"]}
    if not count_only:
        schema["properties"].update({
            "max_tokens": {"type": "integer", "minimum": 1},
            "stream": {"type": "boolean"},
            "temperature": {"type": "number", "minimum": 0, "maximum": 1},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            "top_k": {"type": "integer", "minimum": 0},
            "stop_sequences": {"type": "array", "items": {"type": "string"}},
            "metadata": {"type": "object"},
        })
        schema["required"].append("max_tokens")
    return schema


MESSAGES_SCHEMA = _request_schema(count_only=False)
COUNT_TOKENS_SCHEMA = _request_schema(count_only=True)


# -- request ------------------------------------------------------------------
def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: {message}", param=param)


def _text_of(value: Any, where: str) -> str:
    """A string, or a list of text blocks joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        out = []
        for i, block in enumerate(value):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise _bad("expected a text block {\"type\": \"text\", \"text\": ...}", f"{where}.{i}")
            out.append(block["text"])
        return "\n".join(out)
    raise _bad("expected a string or a list of text blocks", where)


def _image(block: dict[str, Any], where: str) -> domain.ImagePart:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _bad("image blocks need a 'source' object", f"{where}.source")
    kind = source.get("type")
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise _bad("base64 sources need 'media_type' and 'data' strings", f"{where}.source")
        return domain.ImagePart(url=f"data:{media};base64,{data}", where=where)
    if kind == "url":
        url = source.get("url")
        if not isinstance(url, str):
            raise _bad("url sources need a 'url' string", f"{where}.source.url")
        return domain.ImagePart(url=url, where=where)
    raise _bad(f"unsupported image source type {kind!r} (supported: base64, url)", f"{where}.source.type")


def _tool_result_parts(block: dict[str, Any], where: str) -> tuple[domain.ContentPart, ...]:
    content = block.get("content", "")
    parts: list[domain.ContentPart] = []
    if isinstance(content, str):
        parts.append(domain.TextPart(content))
    elif isinstance(content, list):
        for i, item in enumerate(content):
            at = f"{where}.content.{i}"
            if not isinstance(item, dict):
                raise _bad("expected a content block object", at)
            if item.get("type") == "text" and isinstance(item.get("text"), str):
                parts.append(domain.TextPart(item["text"]))
            elif item.get("type") == "image":
                parts.append(_image(item, at))
            elif item.get("type") == "tool_reference" and isinstance(item.get("tool_name"), str):
                # The tool itself joins the prompt's tools (_tools); the model reads this line.
                parts.append(domain.TextPart(f"Tool {item['tool_name']} is now available."))
            else:
                raise _bad("tool_result content blocks must be text, image or tool_reference", at)
    else:
        raise _bad("expected a string or a list of blocks", f"{where}.content")
    if block.get("is_error"):
        parts.insert(0, domain.TextPart("Error: "))
    return tuple(parts)


def _messages(body: dict[str, Any]) -> list[domain.Message]:
    out: list[domain.Message] = []
    system = body.get("system")
    if system is not None:
        text = _text_of(system, "system")
        if text:
            out.append(domain.text_message("system", text))
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _bad("expected a non-empty list of messages", "messages")
    for index, message in enumerate(raw):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise _bad("expected a message object", where)
        role = message.get("role")
        if role not in ("user", "assistant", "system"):
            raise _bad(f"role {role!r} is not one of 'user', 'assistant'", f"{where}.role")
        content = message.get("content")
        if role == "system":  # Claude Code sends these; treat like the top-level system
            out.append(domain.text_message("system", _text_of(content, f"{where}.content")))
            continue
        if isinstance(content, str):
            out.append(domain.text_message(role, content))
            continue
        if not isinstance(content, list):
            raise _bad("expected a string or a list of content blocks", f"{where}.content")
        parts: list[domain.ContentPart] = []
        calls: list[ToolCall] = []
        results: list[domain.Message] = []
        thoughts: list[str] = []
        for j, block in enumerate(content):
            at = f"{where}.content.{j}"
            if not isinstance(block, dict):
                raise _bad("expected a content block object", at)
            kind = block.get("type")
            if kind == "text":
                if not isinstance(block.get("text"), str):
                    raise _bad("expected a string", f"{at}.text")
                parts.append(domain.TextPart(block["text"]))
            elif kind == "image":
                parts.append(_image(block, at))
            elif kind == "tool_use" and role == "assistant":
                name, call_id, args = block.get("name"), block.get("id"), block.get("input", {})
                if not isinstance(name, str) or not isinstance(call_id, str) or not isinstance(args, dict):
                    raise _bad("tool_use blocks need 'id', 'name' strings and an 'input' object", at)
                calls.append(ToolCall(name=name, arguments=json.dumps(args, ensure_ascii=False), id=call_id))
            elif kind == "tool_result" and role == "user":
                call_id = block.get("tool_use_id")
                if not isinstance(call_id, str):
                    raise _bad("tool_result blocks need a 'tool_use_id' string", f"{at}.tool_use_id")
                results.append(
                    domain.Message(role="tool", content=_tool_result_parts(block, at), tool_call_id=call_id)
                )
            elif kind == "thinking" and role == "assistant":
                if isinstance(block.get("thinking"), str):
                    thoughts.append(block["thinking"])  # the template decides whether to replay it
            elif kind == "redacted_thinking" and role == "assistant":
                continue  # opaque: nothing to replay
            else:
                raise _bad(f"unsupported content block type {kind!r} in a {role} message", f"{at}.type")
        out.extend(results)  # tool results answer the previous assistant turn first
        if parts or calls or not results:
            out.append(domain.Message(role=role, content=tuple(parts), tool_calls=tuple(calls),
                                      reasoning="".join(thoughts) or None))
    return out


def referenced_tools(body: dict[str, Any]) -> set[str]:
    """The tools named by ``tool_reference`` blocks in the conversation's tool results."""
    names: set[str] = set()
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else ():
            inner = block.get("content") if isinstance(block, dict) else None
            if block.get("type") != "tool_result" or not isinstance(inner, list):
                continue
            names.update(
                item["tool_name"] for item in inner
                if isinstance(item, dict) and item.get("type") == "tool_reference"
                and isinstance(item.get("tool_name"), str)
            )
    return names


def _tools(body: dict[str, Any]) -> tuple[domain.FunctionTool, ...]:
    """The tools the prompt shows: a ``defer_loading`` tool only once a
    ``tool_reference`` has named it (Anthropic's tool search)."""
    raw = body.get("tools")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _bad("expected a list of tools", "tools")
    tools = []
    loaded = referenced_tools(body)
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise _bad("a tool needs a 'name' string", f"tools.{i}")
        if tool.get("defer_loading") and tool["name"] not in loaded:
            continue
        if tool.get("type") not in (None, "custom"):
            raise _bad(f"server tool type {tool.get('type')!r} is not supported", f"tools.{i}.type")
        schema = tool.get("input_schema")
        if schema is not None and not isinstance(schema, dict):
            raise _bad("expected an object", f"tools.{i}.input_schema")
        description = tool.get("description")
        tools.append(domain.FunctionTool(
            name=tool["name"], description=description, parameters=schema, strict=tool.get("strict")
        ))
    return tuple(tools)


def _tool_choice(body: dict[str, Any]) -> domain.ToolChoice:
    choice = body.get("tool_choice")
    if choice is None:
        return "auto"
    if not isinstance(choice, dict):
        raise _bad("expected an object with a 'type'", "tool_choice")
    kind = choice.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool" and isinstance(choice.get("name"), str):
        return domain.NamedToolChoice(choice["name"])
    raise _bad("type must be 'auto', 'any', 'none' or 'tool' (with a 'name')", "tool_choice")


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    return None if value is None else float(value)


def parse_messages_request(body: Any, *, count_only: bool = False) -> tuple[domain.ChatRequest, bool]:
    """The domain request and whether to stream."""
    body = checked_object(body, COUNT_TOKENS_SCHEMA if count_only else MESSAGES_SCHEMA, dotted=True)
    # Types, ranges and required fields: checked by the schema above.
    model = body["model"]
    max_tokens = body.get("max_tokens")
    stream = body.get("stream", False)
    stops = body.get("stop_sequences") or []
    choice = body.get("tool_choice") or {}
    request = domain.ChatRequest(
        model=model,
        messages=tuple(_messages(body)),
        tools=_tools(body),
        tool_choice=_tool_choice(body),
        parallel_tool_calls=not choice.get("disable_parallel_tool_use", False),
        max_tokens=max_tokens if not count_only else None,
        temperature=_number(body, "temperature"),
        top_p=_number(body, "top_p"),
        top_k=body.get("top_k"),
        stop=tuple(stops),
        json_format=_json_format(body),
        reasoning=anthropic_control(body.get("thinking")),
    )
    return request, stream


def _json_format(body: dict[str, Any]) -> domain.JsonFormat | None:
    """``output_config.format`` (structured outputs; Claude Code asks for its session
    titles this way): the reply is constrained to the schema."""
    fmt = (body.get("output_config") or {}).get("format")
    if not fmt:
        return None
    return domain.JsonFormat(schema=fmt["schema"], where="output_config.format.schema")


# -- response -----------------------------------------------------------------
def tool_use_id(call: ToolCall) -> str:
    return call.id if call.id.startswith("toolu_") else f"toolu_{call.id}"


def _input(call: ToolCall) -> Any:
    try:
        value = json.loads(call.arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _usage(generation: Generation) -> dict[str, int]:
    return {
        "input_tokens": generation.prompt_tokens,
        "output_tokens": generation.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": generation.cached_tokens,
    }


def _stop_reason(generation: Generation) -> str:
    if generation.stop_sequence is not None:
        return "stop_sequence"
    return STOP_REASONS.get(generation.finish_reason or "stop", "end_turn")


def _message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


async def message_body(generation: Generation, index: int = 0) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    async for event in generation.events():
        if isinstance(event, ReasoningDelta):
            if content and content[-1]["type"] == "thinking":
                content[-1]["thinking"] += event.text
            else:
                content.append({"type": "thinking", "thinking": event.text, "signature": ""})
            continue
        if isinstance(event, ContentDelta):
            if not event.text:
                continue
            if content and content[-1]["type"] == "text":
                content[-1]["text"] += event.text
            else:
                content.append({"type": "text", "text": event.text})
        elif isinstance(event, ToolCallEvent):
            call = event.call
            content.append({"type": "tool_use", "id": tool_use_id(call), "name": call.name, "input": _input(call)})
    for block in content:
        if block["type"] == "thinking":
            block["signature"] = signature(block["thinking"])
    return {
        "id": _message_id(),
        "type": "message",
        "role": "assistant",
        "model": generation.model_id,
        "content": content,
        "stop_reason": _stop_reason(generation),
        "stop_sequence": generation.stop_sequence,
        "usage": _usage(generation),
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps({"type": name, **data}, ensure_ascii=False, separators=(",", ":"))
    return f"event: {name}\ndata: {payload}\n\n".encode()


# Anthropic's keep-alive before message_start: byte-level watchdogs and proxies see
# it, but Anthropic's SDKs drop pings before their callers see an event.
PING = _event("ping", {})


class MessageFrames(BlockFrames):
    """Anthropic's stream: ``message_start``, ``ping``, per content block
    ``content_block_start`` / ``content_block_delta`` / ``content_block_stop``,
    then ``message_delta`` and ``message_stop``; an error after the headers is an
    ``error`` event."""

    def __init__(self) -> None:
        self._index = 0
        self._text_open = False
        self._started = False
        # The thinking block being streamed (its text so far), if one is open.
        self._thought: list[str] | None = None

    def started(self, generation: Generation, index: int) -> list[bytes]:
        self._started = True
        return [_event("message_start", {"message": {
            "id": _message_id(), "type": "message", "role": "assistant", "model": generation.model_id,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": generation.prompt_tokens, "output_tokens": 0,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        }}), PING]

    def _close_thought(self) -> list[bytes]:
        if self._thought is None:
            return []
        index = self._index
        frames = [
            _event("content_block_delta", {"index": index, "delta": {
                "type": "signature_delta", "signature": signature("".join(self._thought))}}),
            _event("content_block_stop", {"index": index}),
        ]
        self._thought = None
        self._index += 1
        return frames

    def _thinking(self, text: str) -> list[bytes]:
        frames = self._close_text()
        if self._thought is None:
            self._thought = []
            frames.append(_event("content_block_start", {"index": self._index, "content_block": {
                "type": "thinking", "thinking": "", "signature": ""}}))
        self._thought.append(text)
        frames.append(_event("content_block_delta", {
            "index": self._index, "delta": {"type": "thinking_delta", "thinking": text}}))
        return frames

    def _text(self, text: str) -> list[bytes]:
        frames = []
        if not self._text_open:
            frames.append(_event("content_block_start", {
                "index": self._index, "content_block": {"type": "text", "text": ""}}))
            self._text_open = True
        frames.append(_event("content_block_delta", {
            "index": self._index, "delta": {"type": "text_delta", "text": text}}))
        return frames

    def _tool_call(self, event: ToolCallEvent) -> list[bytes]:
        call, index = event.call, self._index
        self._index += 1
        return [
            _event("content_block_start", {"index": index, "content_block": {
                "type": "tool_use", "id": tool_use_id(call), "name": call.name, "input": {}}}),
            _event("content_block_delta", {"index": index, "delta": {
                "type": "input_json_delta",
                "partial_json": json.dumps(_input(call), ensure_ascii=False)}}),
            _event("content_block_stop", {"index": index}),
        ]

    def _close_text(self) -> list[bytes]:
        if not self._text_open:
            return []
        self._text_open = False
        self._index += 1
        return [_event("content_block_stop", {"index": self._index - 1})]

    def ended(self, generation: Generation, index: int) -> list[bytes]:
        return [*self._close_thought(), *self._close_text(), _event("message_delta", {
            "delta": {"stop_reason": _stop_reason(generation), "stop_sequence": generation.stop_sequence},
            "usage": {"output_tokens": generation.completion_tokens,
                      "input_tokens": generation.prompt_tokens,
                      "cache_read_input_tokens": generation.cached_tokens},
        }), _event("message_stop", {})]

    def failed(self, error: MlxhostError) -> list[bytes]:
        return [_event("error", {"error": exc_body(error)["error"]})]

    def keepalive(self) -> bytes:
        """A ping until ``message_start``; then an empty ``text_delta`` (in a text
        block opened for it), an event the SDKs hand on: Claude Code's stream
        watchdog (5 minutes) counts SDK events, and pings never reach it."""
        if not self._started:
            return PING
        if self._thought is not None:  # inside a thought: an empty thinking delta
            return _event("content_block_delta", {
                "index": self._index, "delta": {"type": "thinking_delta", "thinking": ""}})
        return b"".join(self._text(""))


class MessagesController(Controller):
    path = PREFIX

    @exchange.route(MESSAGES_SCHEMA, ANTHROPIC_ERROR)
    async def create(self, request: Request, state: State) -> Any:
        chat, stream = parse_messages_request(await read_json(request))
        if stream:
            return await exchange.stream(state.service, [chat], MessageFrames())
        folded = await exchange.fold(request, state.service, [chat], message_body)
        return folded.response(folded.results[0])

    @post("/count_tokens", status_code=200,
          operation_class=operation(COUNT_TOKENS_SCHEMA, ANTHROPIC_ERROR))
    async def count_tokens(self, request: Request, state: State) -> dict[str, int]:
        chat, _ = parse_messages_request(await read_json(request), count_only=True)
        return {"input_tokens": await state.service.count_tokens(chat)}


def routes() -> list[Any]:
    """The route handlers (controllers) of this API."""
    return [MessagesController]
