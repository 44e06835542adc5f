"""The OpenAI Responses API: ``POST /v1/responses``, ``GET``/``DELETE /v1/responses/{id}``.

One conversion wire -> :class:`ChatRequest` (:func:`to_domain`), one from the
generation's events to response output items. ``previous_response_id`` reads a
bounded in-memory LRU store (``STORE_SIZE`` responses per app), kept on the
app's ``state``. Errors use OpenAI's default ``{"error": {...}}`` shape.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import OrderedDict
from typing import Any

import attrs
from litestar import Controller, Request, delete, get
from litestar.datastructures import State
from litestar.params import FromPath

from mlxhost.api import exchange
from mlxhost.api.body import read_json
from mlxhost.api.exchange import BlockFrames
from mlxhost.api.schemas import TEMPERATURE, TOP_P, TTL, checked_object, ttl_seconds
from mlxhost.api.thinking import EFFORT_SCHEMA, responses_control
from mlxhost.api.wire_schema import nullable, operation, tagged
from mlxhost.core import domain
from mlxhost.core.errors import InvalidRequest, MlxhostError
from mlxhost.core.types import (
    ContentDelta,
    ReasoningDelta,
    ToolCall,
    ToolCallEvent,
)
from mlxhost.service.chat import Generation

log = logging.getLogger(__name__)

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
_FUNCTION_TOOL = {"properties": {
    "name": {"type": "string"}, "description": {"type": ["string", "null"]},
    "parameters": {"type": ["object", "null"]}, "strict": {"type": ["boolean", "null"]}},
    "required": ["name"]}
# Tools OpenAI's servers run (or that answer with item types other than function
# calls): this server cannot, so they are left out of the prompt with a warning,
# and a tool_choice forcing one is a 400.
HOSTED_TOOLS = (
    "web_search", "web_search_preview", "web_search_preview_2025_03_11", "web_search_2025_08_26",
    "file_search", "code_interpreter", "computer_use", "computer_use_preview",
    "image_generation", "mcp", "local_shell",
)
# Codex's name for a function inside a namespace (its MCP tools: mcp__server__tool).
NAMESPACE_SEPARATOR = "__"
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
    "tools": {"type": ["array", "null"], "items": tagged("type", {
        "function": _FUNCTION_TOOL,
        "namespace": {"properties": {"name": {"type": "string", "minLength": 1},
                                     "tools": {"type": "array", "items": tagged(
                                         "type", {"function": _FUNCTION_TOOL})}},
                      "required": ["name", "tools"]},
        **{kind: {} for kind in HOSTED_TOOLS},
    }, description="function tools, and namespaces of them; hosted tools are left out "
                   "(docs/api-responses.md)")},
    "tool_choice": {"anyOf": [
        {"enum": ["auto", "none", "required"]},
        {"type": "object", "properties": {"type": {"const": "function"}, "name": {"type": "string"}},
         "required": ["type", "name"]},
        {"type": "object", "properties": {"type": {"enum": list(HOSTED_TOOLS)}},
         "required": ["type"], "description": "400: this server cannot run hosted tools"},
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
            name = _text(item.get("name"), f"{at}.name")
            namespace = item.get("namespace")
            if isinstance(namespace, str) and namespace:
                name = flat_name(namespace, name)
            call = ToolCall(
                name=name,
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


def flat_name(namespace: str, name: str) -> str:
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}"


@attrs.frozen
class Tools:
    """The request's tools as the prompt shows them: functions, with each
    namespace's functions under flat names; and where a flat name came from."""

    functions: tuple[domain.FunctionTool, ...] = ()
    # flat name -> (namespace, the function's own name), to answer as sent.
    namespaced: dict[str, tuple[str, str]] = attrs.field(factory=dict)

    def wire_call(self, name: str) -> dict[str, str]:
        """A call's ``name`` (and ``namespace``) the way the client named the tool."""
        if name in self.namespaced:
            namespace, own = self.namespaced[name]
            return {"name": own, "namespace": namespace}
        return {"name": name}


# Hosted tool types already warned about (one warning per type, not per request).
_warned: set[str] = set()


def _function(tool: dict[str, Any], at: str, name: str | None = None) -> domain.FunctionTool:
    params = tool.get("parameters")
    if params is not None:
        _type_check(params, (dict,), "a JSON schema object", f"{at}.parameters")
    description = tool.get("description")
    if description is not None:
        _text(description, f"{at}.description")
    strict = tool.get("strict")
    if strict is not None:
        _type_check(strict, (bool,), "a boolean", f"{at}.strict")
    return domain.FunctionTool(
        name=name or _text(tool.get("name"), f"{at}.name"),
        description=description,
        parameters=params,
        # The Responses API's function tools are strict unless told otherwise.
        strict=True if strict is None else strict,
    )


def _tools(value: Any) -> Tools:
    if value is None:
        return Tools()
    _type_check(value, (list,), "a list of tools", "tools")
    functions: list[domain.FunctionTool] = []
    namespaced: dict[str, tuple[str, str]] = {}
    left_out: list[str] = []
    for i, tool in enumerate(value):
        at = f"tools[{i}]"
        _type_check(tool, (dict,), "a tool object", at)
        kind = tool.get("type")
        if kind == "function":
            functions.append(_function(tool, at))
        elif kind == "namespace":
            namespace = _text(tool.get("name"), f"{at}.name")
            for j, inner in enumerate(tool.get("tools") or ()):
                own = _text(inner.get("name"), f"{at}.tools[{j}].name")
                flat = flat_name(namespace, own)
                functions.append(_function(inner, f"{at}.tools[{j}]", flat))
                namespaced[flat] = (namespace, own)
        elif kind in HOSTED_TOOLS:
            left_out.append(kind)
        else:
            raise _bad(
                f"'{at}.type': tool type {kind!r} is not supported (supported: 'function', "
                f"'namespace'; hosted tools are left out: {', '.join(HOSTED_TOOLS)}).",
                f"{at}.type",
            )
    new = sorted(set(left_out) - _warned)
    if new:
        _warned.update(new)
        log.warning(
            "Responses: leaving hosted tool(s) %s out of the prompt: this server cannot run "
            "them (logged once per type; docs/api-responses.md)", ", ".join(new),
        )
    return Tools(tuple(functions), namespaced)


def _tool_choice(value: Any, tools: Tools) -> domain.ToolChoice:
    if value is None:
        return "auto"
    if value in ("auto", "none", "required"):
        return value
    if isinstance(value, dict) and value.get("type") in HOSTED_TOOLS:
        raise _bad(
            f"'tool_choice' forces the hosted tool {value['type']!r}, which this server "
            "cannot run.", "tool_choice.type",
        )
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("name"), str):
        name = value["name"]
        # A function of a namespace may be named by its own name alone.
        by_own = [flat for flat, (_, own) in tools.namespaced.items() if own == name]
        if not any(t.name == name for t in tools.functions) and len(by_own) == 1:
            name = by_own[0]
        return domain.NamedToolChoice(name)
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
    tools: Tools
    body: dict[str, Any]
    # The new input as items (a string input becomes one user message item).
    input_items: list[dict[str, Any]]
    # Conversation items before this request (from previous_response_id).
    history: list[dict[str, Any]]
    stream: bool
    store: bool


def parse_request(body: Any, store: ResponseStore) -> Parsed:
    body = checked_object(body, REQUEST_SCHEMA)
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
    tools = _tools(body.get("tools"))
    chat = domain.ChatRequest(
        model=model,
        messages=tuple(messages),
        tools=tools.functions,
        tool_choice=_tool_choice(body.get("tool_choice"), tools),
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
        tools=tools,
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


def call_item(
    call: ToolCall, item_id: str, tools: Tools, arguments: str | None = None
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.id,
        **tools.wire_call(call.name),
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


def fold_response(parsed: Parsed) -> Any:
    """Fold a generation's events into the whole response object."""

    async def fold(generation: Generation, index: int) -> dict[str, Any]:
        builder = Builder(parsed, generation.model_id)
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
                output.append(call_item(event.call, _id("fc"), parsed.tools))
        if "".join(text) or not any(item["type"] != "reasoning" for item in output):
            output.append(message_item("".join(text), _id("msg")))
        return builder.finish(generation)

    return fold


def _sse(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


class ResponseFrames(BlockFrames):
    """The Responses stream: ``response.created`` and ``response.in_progress``, the
    output items' events, then ``response.completed`` (or ``.incomplete``); an
    error after the headers is ``error`` then ``response.failed``. The keep-alive
    is ``response.in_progress`` again: Codex's idle timeout counts only events,
    not SSE comments."""

    def __init__(self, parsed: Parsed, store: ResponseStore) -> None:
        self._parsed = parsed
        self._store = store
        self._builder = Builder(parsed, parsed.chat.model)
        self._seq = 0
        self._open_text: list[str] | None = None
        self._msg_id = ""
        self._open_thought: list[str] | None = None
        self._rs_id = ""

    def _event(self, kind: str, **fields: Any) -> bytes:
        body = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return _sse(body)

    @property
    def _output(self) -> list[dict[str, Any]]:
        return self._builder.response["output"]

    def opening(self, first: Generation | None) -> list[bytes]:
        if first is not None:
            self._builder.response["model"] = first.model_id
        snapshot = self._builder.snapshot()
        return [self._event("response.created", response=snapshot),
                self._event("response.in_progress", response=snapshot)]

    def started(self, generation: Generation, index: int) -> list[bytes]:
        self._builder.response["model"] = generation.model_id
        return []

    def _open_message(self) -> list[bytes]:
        self._open_text = []
        self._msg_id = _id("msg")
        index = len(self._output)
        return [
            self._event("response.output_item.added", output_index=index,
                        item=message_item("", self._msg_id, "in_progress")),
            self._event("response.content_part.added", item_id=self._msg_id, output_index=index,
                        content_index=0, part={"type": "output_text", "text": "", "annotations": []}),
        ]

    def _close_text(self) -> list[bytes]:
        if self._open_text is None:
            return []
        text = "".join(self._open_text)
        index = len(self._output)
        part = {"type": "output_text", "text": text, "annotations": []}
        item = message_item(text, self._msg_id)
        self._output.append(item)
        self._open_text = None
        return [
            self._event("response.output_text.done", item_id=self._msg_id, output_index=index,
                        content_index=0, text=text, logprobs=[]),
            self._event("response.content_part.done", item_id=self._msg_id, output_index=index,
                        content_index=0, part=part),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def _close_thought(self) -> list[bytes]:
        if self._open_thought is None:
            return []
        text = "".join(self._open_thought)
        index = len(self._output)
        item = reasoning_item(text, self._rs_id)
        self._output.append(item)
        self._open_thought = None
        return [
            self._event("response.reasoning_text.done", item_id=self._rs_id, output_index=index,
                        content_index=0, text=text),
            self._event("response.content_part.done", item_id=self._rs_id, output_index=index,
                        content_index=0, part={"type": "reasoning_text", "text": text}),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def _thinking(self, text: str) -> list[bytes]:
        frames = self._close_text()
        index = len(self._output)
        if self._open_thought is None:
            self._open_thought = []
            self._rs_id = _id("rs")
            frames += [
                self._event("response.output_item.added", output_index=index,
                            item=reasoning_item("", self._rs_id, "in_progress")),
                self._event("response.content_part.added", item_id=self._rs_id,
                            output_index=index, content_index=0,
                            part={"type": "reasoning_text", "text": ""}),
            ]
        self._open_thought.append(text)
        frames.append(self._event("response.reasoning_text.delta", item_id=self._rs_id,
                                  output_index=index, content_index=0, delta=text))
        return frames

    def _text(self, text: str) -> list[bytes]:
        frames = self._open_message() if self._open_text is None else []
        assert self._open_text is not None
        self._open_text.append(text)
        frames.append(self._event("response.output_text.delta", item_id=self._msg_id,
                                  output_index=len(self._output), content_index=0,
                                  delta=text, logprobs=[]))
        return frames

    def _tool_call(self, event: ToolCallEvent) -> list[bytes]:
        call, tools = event.call, self._parsed.tools
        fc_id = _id("fc")
        index = len(self._output)
        added = call_item(call, fc_id, tools, arguments="")
        added["status"] = "in_progress"
        item = call_item(call, fc_id, tools)
        self._output.append(item)
        return [
            self._event("response.output_item.added", output_index=index, item=added),
            self._event("response.function_call_arguments.delta", item_id=fc_id,
                        output_index=index, delta=call.arguments),
            self._event("response.function_call_arguments.done", item_id=fc_id,
                        output_index=index, name=item["name"], arguments=call.arguments),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def ended(self, generation: Generation, index: int) -> list[bytes]:
        frames = self._close_thought()
        if self._open_text is None and not any(
            item["type"] != "reasoning" for item in self._output
        ):
            frames.extend(self._open_message())
        frames.extend(self._close_text())
        response = self._builder.finish(generation)
        remember(self._store, self._parsed, response)
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        return [*frames, self._event(kind, response=self._builder.snapshot())]

    def failed(self, error: MlxhostError) -> list[bytes]:
        response = self._builder.response
        response["status"] = "failed"
        response["error"] = {"code": error.code or error.error_type, "message": error.message}
        return [self._event("error", code=error.code, message=error.message, param=error.param),
                self._event("response.failed", response=self._builder.snapshot())]

    def keepalive(self) -> bytes:
        return self._event("response.in_progress", response=self._builder.snapshot())


# ---------------------------------------------------------------- routes


class ResponsesController(Controller):
    path = "/v1/responses"

    @exchange.route(REQUEST_SCHEMA)
    async def create(self, request: Request, state: State) -> Any:
        body = await read_json(request)
        store = store_of(state)
        parsed = parse_request(body, store)
        if parsed.stream:
            return await exchange.stream(state.service, [parsed.chat], ResponseFrames(parsed, store))
        folded = await exchange.fold(request, state.service, [parsed.chat], fold_response(parsed))
        response = folded.results[0]
        remember(store, parsed, response)
        return folded.response(response)

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
