"""The OpenAI Responses API: ``POST /v1/responses``, ``GET``/``DELETE /v1/responses/{id}``.

One conversion wire -> :class:`ChatRequest` (:func:`to_domain`), one from the
generation's events to response output items. ``previous_response_id`` reads a
bounded in-memory LRU store (``STORE_SIZE`` responses per app), kept on the
app's ``state``. Errors use OpenAI's default ``{"error": {...}}`` shape.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import attrs
from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath
from litestar.response import Stream

from mlxhost import domain
from mlxhost.api.body import read_json
from mlxhost.api.controllers import until_disconnect
from mlxhost.api.schemas import TEMPERATURE, TOP_P, TTL, check_shape, ttl_seconds
from mlxhost.api.thinking import EFFORT_SCHEMA, responses_control
from mlxhost.api.wire_schema import check_body, nullable, operation, tagged
from mlxhost.errors import InvalidRequest, MlxhostError
from mlxhost.service import ChatService, Generation
from mlxhost.types import ContentDelta, ReasoningDelta, ToolCall, ToolCallEvent

STORE_SIZE = 256

_ROLES = ("user", "assistant", "system", "developer")


# -- request schema (published in OpenAPI and checked before parsing) ---------
_TEXT_PART = {"properties": {"text": {"type": "string"}}, "required": ["text"]}
_PART = tagged("type", {
    "input_text": _TEXT_PART, "output_text": _TEXT_PART, "text": _TEXT_PART,
    "summary_text": _TEXT_PART,
    "refusal": {"properties": {"refusal": {"type": "string"}}, "required": ["refusal"]},
    "input_image": {"properties": {"image_url": {
        "anyOf": [{"type": "string", "minLength": 1},
                  {"type": "object", "properties": {"url": {"type": "string", "minLength": 1}},
                   "required": ["url"]}],
        "description": "a data URI or an http(s) URL ('file_id' images are not supported)"}},
        "required": ["image_url"]},
})
_CONTENT = {"anyOf": [{"type": "string"}, {"type": "array", "items": _PART}]}
_MESSAGE_ITEM = {"properties": {"role": {"enum": list(_ROLES)}, "content": _CONTENT}, "required": ["role"]}
_ITEM = {
    "type": "object",
    # An item without "type" is a message (the SDKs' "easy input message").
    "if": {"required": ["type"]},
    "then": tagged("type", {
        "message": _MESSAGE_ITEM,
        "function_call": {"properties": {"name": {"type": "string"}, "arguments": {"type": "string"},
                                         "call_id": {"type": "string"}}, "required": ["name", "call_id"]},
        "function_call_output": {"properties": {
            "call_id": {"type": "string"},
            "output": {"anyOf": [{"type": "string"}, {"type": "array", "items": _PART}]}},
            "required": ["call_id"]},
        "reasoning": {},
    }),
    "else": _MESSAGE_ITEM,
}
_UNSUPPORTED = "not supported yet: leave it out"
REQUEST_SCHEMA: dict[str, Any] = {"type": "object", "properties": {
    "model": {"type": "string", "description": "Model id or alias (GET /v1/models)."},
    "input": {"anyOf": [{"type": "string"}, {"type": "array", "items": _ITEM}]},
    "instructions": {"type": ["string", "null"]},
    "previous_response_id": {"type": ["string", "null"]},
    "max_output_tokens": {"type": ["integer", "null"], "minimum": 1},
    "temperature": {"type": ["number", "null"], **TEMPERATURE},
    "top_p": {"type": ["number", "null"], **TOP_P},
    "text": {"type": ["object", "null"], "properties": {"format": nullable(
        tagged("type", {"text": {}, "json_object": {},
                        "json_schema": {"properties": {"schema": {"type": "object"}},
                                        "required": ["schema"]}}))}},
    "tools": {"type": ["array", "null"], "items": tagged("type", {"function": {"properties": {
        "name": {"type": "string"}, "description": {"type": ["string", "null"]},
        "parameters": {"type": ["object", "null"]}, "strict": {"type": ["boolean", "null"]}},
        "required": ["name"]}}, description="only function tools are supported")},
    "tool_choice": {"anyOf": [
        {"enum": ["auto", "none", "required"]},
        {"type": "object", "properties": {"type": {"const": "function"}, "name": {"type": "string"}},
         "required": ["type", "name"]},
        {"type": "null"}]},
    "truncation": {"enum": ["auto", "disabled", None]},
    "stream": {"type": ["boolean", "null"]},
    "store": {"type": ["boolean", "null"]},
    "parallel_tool_calls": {"type": ["boolean", "null"]},
    "background": {"enum": [False, None], "description": "background responses are not supported"},
    "top_logprobs": {"enum": [0, None], "description": _UNSUPPORTED},
    "include": {"type": ["array", "null"], "items": {
        "type": "string", "not": {"const": "message.output_text.logprobs"}}},
    "max_tool_calls": {"type": "null", "description": _UNSUPPORTED},
    "conversation": {"type": "null", "description": "use 'previous_response_id'"},
    "prompt": {"type": "null", "description": "prompt templates are not supported"},
    "ttl": {"type": ["integer", "null"], **TTL},
    "reasoning": {"type": ["object", "null"], "properties": {
        "effort": EFFORT_SCHEMA,
        "summary": {"enum": ["auto", "concise", "detailed", None],
                    "description": "accepted; the thinking itself is returned as reasoning_text"}}},
    "chat_template_kwargs": {"type": ["object", "null"]},
}, "required": ["model", "input"]}


class ResponseNotFound(MlxhostError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


def _not_found(response_id: str, param: str | None) -> MlxhostError:
    return ResponseNotFound(f"Response with id '{response_id}' not found.", param=param)


@attrs.define
class Stored:
    response: dict[str, Any]
    # The conversation as Responses input items: the request's input (after the
    # previous conversation) followed by this response's output.
    items: list[dict[str, Any]]


class ResponseStore:
    """The most recent ``size`` stored responses, least recently used evicted first."""

    def __init__(self, size: int = STORE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[str, Stored] = OrderedDict()

    def put(self, stored: Stored) -> None:
        key = stored.response["id"]
        self._items[key] = stored
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def get(self, key: str) -> Stored | None:
        stored = self._items.get(key)
        if stored is not None:
            self._items.move_to_end(key)
        return stored

    def delete(self, key: str) -> bool:
        return self._items.pop(key, None) is not None

    def __len__(self) -> int:
        return len(self._items)


def store_of(state: State) -> ResponseStore:
    store = getattr(state, "responses_store", None)
    if store is None:
        store = ResponseStore()
        state.responses_store = store
    return store


# ---------------------------------------------------------------- parsing


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _type_check(value: Any, kinds: tuple[type, ...], what: str, param: str) -> None:
    if isinstance(value, bool) and bool not in kinds:
        raise _bad(f"'{param}': expected {what}, got a boolean.", param)
    if not isinstance(value, kinds):
        raise _bad(f"'{param}': expected {what}, got {type(value).__name__}.", param)


def _opt(body: dict[str, Any], key: str, kinds: tuple[type, ...], what: str) -> Any:
    value = body.get(key)
    if value is not None:
        _type_check(value, kinds, what, key)
    return value


def _text(value: Any, param: str) -> str:
    _type_check(value, (str,), "a string", param)
    return str(value)


def _content(content: Any, role: str, where: str) -> tuple[domain.ContentPart, ...]:
    if isinstance(content, str):
        return (domain.TextPart(content),) if content else ()
    _type_check(content, (list,), "a string or a list of content parts", where)
    parts: list[domain.ContentPart] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        _type_check(part, (dict,), "a content part object", at)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text", "summary_text", "refusal"):
            field = "refusal" if kind == "refusal" else "text"
            parts.append(domain.TextPart(_text(part.get(field), f"{at}.{field}")))
        elif kind == "input_image":
            url = part.get("image_url")
            if isinstance(url, dict):
                url = url.get("url")
            if not isinstance(url, str) or not url:
                raise _bad(
                    f"'{at}.image_url' must be a data URI or an http(s) URL"
                    " ('file_id' images are not supported).",
                    f"{at}.image_url",
                )
            parts.append(domain.ImagePart(url=url, where=at))
        else:
            raise _bad(
                f"'{at}.type': unsupported content part type {kind!r} "
                "(supported: input_text, input_image, output_text).",
                f"{at}.type",
            )
    return tuple(parts)


def items_to_messages(items: list[Any], param: str = "input") -> list[domain.Message]:
    """Responses input items as domain messages (consecutive calls join one turn)."""
    messages: list[domain.Message] = []
    # A reasoning item's text, for the assistant turn that follows it.
    thought: str | None = None
    for index, item in enumerate(items):
        at = f"{param}[{index}]"
        _type_check(item, (dict,), "an input item object", at)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise _bad(
                    f"'{at}.role' must be one of {', '.join(_ROLES)}; got {role!r}.", f"{at}.role"
                )
            messages.append(
                domain.Message(role=role, content=_content(item.get("content", ""), role, f"{at}.content"),
                               reasoning=thought if role == "assistant" else None)
            )
            thought = None
        elif kind == "function_call":
            call = ToolCall(
                name=_text(item.get("name"), f"{at}.name"),
                arguments=_text(item.get("arguments", "{}"), f"{at}.arguments"),
                id=_text(item.get("call_id"), f"{at}.call_id"),
            )
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant" and last.tool_calls:
                messages[-1] = attrs.evolve(last, tool_calls=(*last.tool_calls, call))
            elif last is not None and last.role == "assistant" and not last.tool_calls:
                # The text the model said before calling: one assistant turn.
                messages[-1] = attrs.evolve(last, tool_calls=(call,))
            else:
                messages.append(domain.Message(role="assistant", tool_calls=(call,), reasoning=thought))
            thought = None
        elif kind == "function_call_output":
            call_id = _text(item.get("call_id"), f"{at}.call_id")
            output = item.get("output", "")
            if isinstance(output, list):
                content = _content(output, "tool", f"{at}.output")
            else:
                content = (domain.TextPart(_text(output, f"{at}.output")),)
            messages.append(domain.Message(role="tool", content=content, tool_call_id=call_id))
        elif kind == "reasoning":
            # Its text (or summary), replayed where the model's template asks for it.
            parts = [*(item.get("content") or []), *(item.get("summary") or [])]
            text = "".join(p.get("text", "") for p in parts if isinstance(p, dict)
                           and isinstance(p.get("text"), str))
            thought = text or None
        else:
            raise _bad(
                f"'{at}.type': unsupported input item type {kind!r} "
                "(supported: message, function_call, function_call_output).",
                f"{at}.type",
            )
    return messages


def _tools(value: Any) -> tuple[domain.FunctionTool, ...]:
    if value is None:
        return ()
    _type_check(value, (list,), "a list of tools", "tools")
    tools = []
    for i, tool in enumerate(value):
        _type_check(tool, (dict,), "a tool object", f"tools[{i}]")
        if tool.get("type") != "function":
            raise _bad(
                f"'tools[{i}].type': tool type {tool.get('type')!r} is not supported "
                "(only 'function').",
                f"tools[{i}].type",
            )
        params = tool.get("parameters")
        if params is not None:
            _type_check(params, (dict,), "a JSON schema object", f"tools[{i}].parameters")
        description = tool.get("description")
        if description is not None:
            _text(description, f"tools[{i}].description")
        strict = tool.get("strict")
        if strict is not None:
            _type_check(strict, (bool,), "a boolean", f"tools[{i}].strict")
        tools.append(
            domain.FunctionTool(
                name=_text(tool.get("name"), f"tools[{i}].name"),
                description=description,
                parameters=params,
                # The Responses API's function tools are strict unless told otherwise.
                strict=True if strict is None else strict,
            )
        )
    return tuple(tools)


def _tool_choice(value: Any) -> domain.ToolChoice:
    if value is None:
        return "auto"
    if value in ("auto", "none", "required"):
        return value
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("name"), str):
        return domain.NamedToolChoice(value["name"])
    raise _bad(
        "'tool_choice' must be 'auto', 'none', 'required' or {\"type\": \"function\", \"name\": ...}.",
        "tool_choice",
    )


def _json_format(fmt: Any) -> domain.JsonFormat | None:
    """``text.format`` as the domain's structured-output request (grammar-constrained)."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else fmt
    if kind == "text":
        return None
    if kind == "json_object":
        return domain.JsonFormat(schema={"type": "object"}, where="text.format")
    if kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise _bad("'text.format.schema' must be a JSON schema object.", "text.format.schema")
        return domain.JsonFormat(schema=schema, where="text.format.schema")
    raise _bad(
        f"'text.format' type {kind!r} is not one of 'text', 'json_object', 'json_schema'.",
        "text.format",
    )


@attrs.frozen
class Parsed:
    chat: domain.ChatRequest
    body: dict[str, Any]
    # The new input as items (a string input becomes one user message item).
    input_items: list[dict[str, Any]]
    # Conversation items before this request (from previous_response_id).
    history: list[dict[str, Any]]
    stream: bool
    store: bool


def parse_request(body: Any, store: ResponseStore) -> Parsed:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    check_shape(body)
    check_body(body, REQUEST_SCHEMA)
    model = _text(body["model"], "model")
    raw_input = body["input"]
    if isinstance(raw_input, str):
        input_items: list[dict[str, Any]] = [{"type": "message", "role": "user", "content": raw_input}]
    else:
        _type_check(raw_input, (list,), "a string or a list of input items", "input")
        input_items = list(raw_input)
    history: list[dict[str, Any]] = []
    previous = _opt(body, "previous_response_id", (str,), "a string")
    if previous:
        stored = store.get(previous)
        if stored is None:
            raise _not_found(previous, "previous_response_id")
        history = list(stored.items)
    messages = items_to_messages(history, "previous_response_id") if history else []
    messages += items_to_messages(input_items)
    instructions = _opt(body, "instructions", (str,), "a string")
    if instructions:
        messages.insert(0, domain.text_message("system", instructions))
    if not messages:
        raise _bad("'input' must contain at least one item.", "input")
    max_tokens = _opt(body, "max_output_tokens", (int,), "an integer")
    if max_tokens is not None and max_tokens < 1:
        raise _bad("'max_output_tokens' must be at least 1.", "max_output_tokens")
    temperature = _opt(body, "temperature", (int, float), "a number")
    if temperature is not None and not 0 <= temperature <= 2:
        raise _bad("'temperature' must be between 0 and 2.", "temperature")
    top_p = _opt(body, "top_p", (int, float), "a number")
    if top_p is not None and not 0 < top_p <= 1:
        raise _bad("'top_p' must be greater than 0 and at most 1.", "top_p")
    text = _opt(body, "text", (dict,), "an object")
    json_format = _json_format((text or {}).get("format"))
    truncation = body.get("truncation")
    if truncation not in (None, "auto", "disabled"):
        raise _bad("'truncation' must be 'auto' or 'disabled'.", "truncation")
    for key in ("stream", "store", "parallel_tool_calls", "background"):
        _opt(body, key, (bool,), "a boolean")
    if body.get("background"):
        raise _bad("'background' responses are not supported.", "background")
    if body.get("top_logprobs"):
        raise _bad("'top_logprobs' is not supported yet.", "top_logprobs")
    include = _opt(body, "include", (list,), "a list of strings") or []
    if "message.output_text.logprobs" in include:
        raise _bad("'include': message.output_text.logprobs is not supported yet.", "include")
    if body.get("max_tool_calls") is not None:
        raise _bad("'max_tool_calls' is not supported yet.", "max_tool_calls")
    if body.get("conversation") is not None:
        raise _bad("'conversation' is not supported; use 'previous_response_id'.", "conversation")
    if body.get("prompt") is not None:
        raise _bad("Prompt templates ('prompt') are not supported.", "prompt")
    chat = domain.ChatRequest(
        model=model,
        messages=tuple(messages),
        tools=_tools(body.get("tools")),
        tool_choice=_tool_choice(body.get("tool_choice")),
        parallel_tool_calls=body.get("parallel_tool_calls") is not False,
        max_tokens=max_tokens,
        temperature=float(temperature) if temperature is not None else None,
        top_p=float(top_p) if top_p is not None else None,
        summarize=truncation != "disabled",
        json_format=json_format,
        keep_alive=ttl_seconds(_opt(body, "ttl", (int,), "an integer")),
        reasoning=responses_control(body.get("reasoning"), body.get("chat_template_kwargs")),
    )
    return Parsed(
        chat=chat,
        body=body,
        input_items=input_items,
        history=history,
        stream=bool(body.get("stream")),
        store=body.get("store") is not False,
    )


# ---------------------------------------------------------------- building


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def message_item(text: str, item_id: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else [],
    }


def reasoning_item(text: str, item_id: str, status: str = "completed") -> dict[str, Any]:
    """The model's thinking as a ``reasoning`` output item (its text as
    ``reasoning_text`` content; no summary is made)."""
    return {
        "type": "reasoning",
        "id": item_id,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}] if status == "completed" else [],
        "status": status,
    }


def call_item(call: ToolCall, item_id: str, arguments: str | None = None) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments if arguments is None else arguments,
        "status": "completed",
    }


class Builder:
    """The response object, as it grows."""

    def __init__(self, parsed: Parsed, model: str) -> None:
        body = parsed.body
        self.parsed = parsed
        text = body.get("text") or {}
        self.response: dict[str, Any] = {
            "id": _id("resp"),
            "object": "response",
            "created_at": int(time.time()),
            "status": "in_progress",
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "model": model,
            "output": [],
            "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": body.get("reasoning"),
            "store": parsed.store,
            "temperature": body.get("temperature"),
            "top_p": body.get("top_p"),
            "max_output_tokens": body.get("max_output_tokens"),
            "text": {"format": text.get("format") or {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": [
                {"type": "function", "name": t.name, "description": t.description,
                 "parameters": dict(t.parameters) if t.parameters is not None else None,
                 "strict": t.strict}
                for t in parsed.chat.tools
            ],
            "truncation": body.get("truncation", "disabled"),
            "usage": None,
            "metadata": body.get("metadata") or {},
            "user": body.get("user"),
        }

    def snapshot(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.response))

    def finish(self, generation: Generation) -> dict[str, Any]:
        response = self.response
        if generation.finish_reason == "length":
            response["status"] = "incomplete"
            response["incomplete_details"] = {"reason": "max_output_tokens"}
        else:
            response["status"] = "completed"
        response["usage"] = {
            "input_tokens": generation.prompt_tokens,
            "input_tokens_details": {"cached_tokens": generation.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": generation.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": generation.reasoning_tokens},
            "total_tokens": generation.prompt_tokens + generation.completion_tokens,
        }
        return response


def remember(store: ResponseStore, parsed: Parsed, response: dict[str, Any]) -> None:
    if not parsed.store:
        return
    output = [
        {k: v for k, v in item.items() if k != "status" or item["type"] != "message"}
        for item in response["output"]
    ]
    store.put(Stored(response=response, items=[*parsed.history, *parsed.input_items, *output]))


async def response_body(generation: Generation, builder: Builder) -> dict[str, Any]:
    text: list[str] = []
    output = builder.response["output"]
    async for event in generation.events():
        if isinstance(event, ReasoningDelta):
            if "".join(text):
                output.append(message_item("".join(text), _id("msg")))
                text = []
            last = output[-1] if output else None
            if last is not None and last["type"] == "reasoning":
                last["content"][0]["text"] += event.text
            else:
                output.append(reasoning_item(event.text, _id("rs")))
        elif isinstance(event, ContentDelta):
            text.append(event.text)
        elif isinstance(event, ToolCallEvent):
            if "".join(text):
                output.append(message_item("".join(text), _id("msg")))
            text = []
            output.append(call_item(event.call, _id("fc")))
    if "".join(text) or not any(item["type"] != "reasoning" for item in output):
        output.append(message_item("".join(text), _id("msg")))
    return builder.finish(generation)


def _sse(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


async def open_stream(
    service: ChatService, parsed: Parsed, store: ResponseStore
) -> tuple[dict[str, str], AsyncIterator[bytes]]:
    """Admit the request (errors raise here, before any byte); headers and the stream."""
    stream = _stream(service, parsed, store)
    headers = await stream.__anext__()
    return headers, stream


async def _stream(service: ChatService, parsed: Parsed, store: ResponseStore) -> AsyncIterator[Any]:
    generation = await service.start(parsed.chat)
    try:
        yield generation.headers
        builder = Builder(parsed, generation.model_id)
        seq = 0

        def event(kind: str, **fields: Any) -> bytes:
            nonlocal seq
            body = {"type": kind, "sequence_number": seq, **fields}
            seq += 1
            return _sse(body)

        yield event("response.created", response=builder.snapshot())
        yield event("response.in_progress", response=builder.snapshot())
        output = builder.response["output"]
        open_text: list[str] | None = None
        msg_id = ""

        def close_message() -> list[bytes]:
            nonlocal open_text
            assert open_text is not None
            text = "".join(open_text)
            index = len(output)
            part = {"type": "output_text", "text": text, "annotations": []}
            item = message_item(text, msg_id)
            output.append(item)
            open_text = None
            return [
                event("response.output_text.done", item_id=msg_id, output_index=index,
                      content_index=0, text=text, logprobs=[]),
                event("response.content_part.done", item_id=msg_id, output_index=index,
                      content_index=0, part=part),
                event("response.output_item.done", output_index=index, item=item),
            ]

        def open_message() -> list[bytes]:
            nonlocal open_text, msg_id
            open_text = []
            msg_id = _id("msg")
            index = len(output)
            return [
                event("response.output_item.added", output_index=index,
                      item=message_item("", msg_id, "in_progress")),
                event("response.content_part.added", item_id=msg_id, output_index=index,
                      content_index=0, part={"type": "output_text", "text": "", "annotations": []}),
            ]

        open_thought: list[str] | None = None
        rs_id = ""

        def close_thought() -> list[bytes]:
            nonlocal open_thought
            if open_thought is None:
                return []
            text = "".join(open_thought)
            index = len(output)
            item = reasoning_item(text, rs_id)
            output.append(item)
            open_thought = None
            return [
                event("response.reasoning_text.done", item_id=rs_id, output_index=index,
                      content_index=0, text=text),
                event("response.content_part.done", item_id=rs_id, output_index=index,
                      content_index=0, part={"type": "reasoning_text", "text": text}),
                event("response.output_item.done", output_index=index, item=item),
            ]

        try:
            async for ev in generation.events():
                if isinstance(ev, ReasoningDelta):
                    if not ev.text:
                        continue
                    if open_text is not None:
                        for chunk in close_message():
                            yield chunk
                    if open_thought is None:
                        open_thought = []
                        rs_id = _id("rs")
                        yield event("response.output_item.added", output_index=len(output),
                                    item=reasoning_item("", rs_id, "in_progress"))
                        yield event("response.content_part.added", item_id=rs_id,
                                    output_index=len(output), content_index=0,
                                    part={"type": "reasoning_text", "text": ""})
                    open_thought.append(ev.text)
                    yield event("response.reasoning_text.delta", item_id=rs_id,
                                output_index=len(output), content_index=0, delta=ev.text)
                    continue
                for chunk in close_thought():
                    yield chunk
                if isinstance(ev, ContentDelta):
                    if not ev.text:
                        continue
                    if open_text is None:
                        for chunk in open_message():
                            yield chunk
                    assert open_text is not None
                    open_text.append(ev.text)
                    yield event("response.output_text.delta", item_id=msg_id,
                                output_index=len(output), content_index=0, delta=ev.text,
                                logprobs=[])
                elif isinstance(ev, ToolCallEvent):
                    if open_text is not None:
                        for chunk in close_message():
                            yield chunk
                    call = ev.call
                    fc_id = _id("fc")
                    index = len(output)
                    added = call_item(call, fc_id, arguments="")
                    added["status"] = "in_progress"
                    yield event("response.output_item.added", output_index=index, item=added)
                    yield event("response.function_call_arguments.delta", item_id=fc_id,
                                output_index=index, delta=call.arguments)
                    yield event("response.function_call_arguments.done", item_id=fc_id,
                                output_index=index, name=call.name, arguments=call.arguments)
                    item = call_item(call, fc_id)
                    output.append(item)
                    yield event("response.output_item.done", output_index=index, item=item)
            for chunk in close_thought():
                yield chunk
            if open_text is None and not any(item["type"] != "reasoning" for item in output):
                for chunk in open_message():
                    yield chunk
            if open_text is not None:
                for chunk in close_message():
                    yield chunk
        except MlxhostError as exc:
            # Headers are gone: the failure travels as events.
            builder.response["status"] = "failed"
            builder.response["error"] = {"code": exc.code or exc.error_type, "message": exc.message}
            yield event("error", code=exc.code, message=exc.message, param=exc.param)
            yield event("response.failed", response=builder.snapshot())
            return
        response = builder.finish(generation)
        remember(store, parsed, response)
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        yield event(kind, response=builder.snapshot())
    finally:
        await generation.close()


# ---------------------------------------------------------------- routes


class ResponsesController(Controller):
    path = "/v1/responses"

    @post(status_code=200, media_type="text/event-stream", operation_class=operation(REQUEST_SCHEMA))
    async def create(self, request: Request, state: State) -> Any:
        body = await read_json(request)
        store = store_of(state)
        parsed = parse_request(body, store)
        if parsed.stream:
            headers, events = await open_stream(state.service, parsed, store)
            return Stream(
                events,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
            )
        generation = await state.service.start(parsed.chat)
        try:
            builder = Builder(parsed, generation.model_id)
            response = await until_disconnect(request, response_body(generation, builder))
        finally:
            await generation.close()
        remember(store, parsed, response)
        return Response(content=response, headers=generation.headers, media_type="application/json")

    @get("/{response_id:str}", operation_class=operation())
    async def retrieve(self, state: State, response_id: FromPath[str]) -> dict[str, Any]:
        stored = store_of(state).get(response_id)
        if stored is None:
            raise _not_found(response_id, None)
        return stored.response

    @delete("/{response_id:str}", status_code=200, operation_class=operation())
    async def remove(self, state: State, response_id: FromPath[str]) -> dict[str, Any]:
        if not store_of(state).delete(response_id):
            raise _not_found(response_id, None)
        return {"id": response_id, "object": "response.deleted", "deleted": True}


def routes() -> list[Any]:
    """The route handlers (controllers) of this API."""
    return [ResponsesController]
