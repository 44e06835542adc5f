"""The Ollama API subset (``/api/...``): tags, show, ps, version, chat, generate.

Errors leave in Ollama's shape, ``{"error": "message"}``. Chat and generate
stream NDJSON by default (``stream: false``: one object). ``keep_alive`` sets
how long the model stays loaded once idle after the request; a request with
no prompt (generate) or no messages (chat) only loads the model, or with
``keep_alive: 0`` unloads it, as Ollama does.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import State

from mlxhost.api import exchange
from mlxhost.api.body import keep_alive_seconds, read_json
from mlxhost.api.errors import ApiError, PrefixShape
from mlxhost.api.exchange import Frames
from mlxhost.api.schemas import (
    MIN_P,
    PENALTY,
    REPETITION_PENALTY,
    TEMPERATURE,
    TOP_K,
    TOP_P,
    checked_object,
)
from mlxhost.api.thinking import OLLAMA_LEVELS, ollama_control
from mlxhost.api.wire_schema import OLLAMA_ERROR, operation
from mlxhost.core.domain import ChatRequest, FunctionTool, ImagePart, JsonFormat, Message, TextPart
from mlxhost.core.errors import InvalidRequest, MlxhostError
from mlxhost.core.types import (
    EMBEDDING,
    FIM,
    REASONING,
    RERANK,
    TOOLS,
    VISION,
    ContentDelta,
    GenerationEvent,
    ModelInfo,
    ReasoningDelta,
    ToolCall,
    ToolCallEvent,
)
from mlxhost.families.reasoning.formats import levels_of_kind, thinking_kind_on_disk
from mlxhost.service.chat import Generation

# Ollama clients parse the server version as semver; this is the Ollama API level
# mlxhost speaks (not mlxhost's own version).
OLLAMA_VERSION = "0.6.0"


def ollama_error_body(error: ApiError) -> dict[str, Any]:
    return {"error": error.message}


# Errors under /api leave in Ollama's shape (the app lists it).
ERROR_SHAPE: PrefixShape = ("/api", ollama_error_body)


# -- request schemas (published in OpenAPI and checked before parsing) --------
_OPTIONS_SCHEMA = {"type": ["object", "null"], "properties": {
    "temperature": {"type": "number", **TEMPERATURE},
    "top_p": {"type": "number", **TOP_P},
    "top_k": {"type": "integer", **TOP_K},
    "min_p": {"type": "number", **MIN_P},
    "seed": {"type": "integer"},
    "repeat_penalty": {"type": "number", **REPETITION_PENALTY},
    "presence_penalty": {"type": "number", **PENALTY},
    "frequency_penalty": {"type": "number", **PENALTY},
    "num_predict": {"type": "integer", "description": "≤ 0: no limit"},
    "num_ctx": {"type": "integer", "minimum": 1, "description": "at most the model's context window"},
    "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    "speculative": {"type": "boolean", "description": "false: no prompt-lookup speculative decoding"},
}, "additionalProperties": {"not": {}, "description": "this option is not supported yet"}}
_COMMON = {
    "model": {"type": "string", "minLength": 1, "description": "Model id or alias (GET /api/tags)."},
    "stream": {"type": "boolean"},
    "format": {"anyOf": [{"enum": ["json", ""]}, {"type": "object"}, {"type": "null"}],
               "description": '"json" or a JSON schema'},
    "options": _OPTIONS_SCHEMA,
    "keep_alive": {"type": ["string", "number", "null"],
                   "description": 'how long the model stays loaded once idle: "5m", "1h", '
                   "seconds; negative: forever; 0: unload after this request"},
    "think": {"anyOf": [{"type": "boolean"}, {"enum": list(OLLAMA_LEVELS)}, {"type": "null"}],
              "description": "think before answering (true/false or a level); the thinking "
              "comes back apart from the answer"},
}
_IMAGES = {"type": ["array", "null"], "items": {"type": "string"}, "description": "base64 images"}
_FUNCTION = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
CHAT_SCHEMA: dict[str, Any] = {"type": "object", "properties": {
    **_COMMON,
    "messages": {"type": "array", "items": {"type": "object", "properties": {
        "role": {"enum": ["system", "user", "assistant", "tool"]},
        "content": {"type": ["string", "null"]},
        "images": _IMAGES,
        "tool_calls": {"type": ["array", "null"], "items": {
            "type": "object", "properties": {"function": _FUNCTION}, "required": ["function"]}},
        "tool_name": {"type": "string"},
        "tool_call_id": {"type": "string"},
        "thinking": {"type": ["string", "null"]},
    }, "required": ["role"]}},
    "tools": {"type": ["array", "null"], "items": {
        "type": "object", "properties": {"function": _FUNCTION}, "required": ["function"]}},
}, "required": ["model"]}
GENERATE_SCHEMA: dict[str, Any] = {"type": "object", "properties": {
    **_COMMON,
    "prompt": {"type": "string"},
    "suffix": {"type": ["string", "null"]},
    "system": {"type": ["string", "null"]},
    "raw": {"type": ["boolean", "null"]},
    "images": _IMAGES,
}, "required": ["model"]}
SHOW_SCHEMA: dict[str, Any] = {"type": "object", "properties": {
    "model": {"type": "string", "minLength": 1}, "name": {"type": "string", "minLength": 1}},
    "anyOf": [{"required": ["model"]}, {"required": ["name"]}]}

NDJSON = "application/x-ndjson"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _name(value: Any, field: str = "model") -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{field}' is required and must be a string.", param=field)
    return value[: -len(":latest")] if value.endswith(":latest") else value


def _size(info: ModelInfo) -> int:
    if info.path is None or not info.path.exists():
        return 0
    return sum(f.stat().st_size for f in info.path.rglob("*") if f.is_file())


def _details(info: ModelInfo) -> dict[str, Any]:
    family = info.family or ""
    return {"parent_model": "", "format": "mlx", "family": family,
            "families": [family] if family else None,
            "parameter_size": "", "quantization_level": ""}


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _entry(info: ModelInfo, name: str) -> dict[str, Any]:
    modified = info.path.stat().st_mtime if info.path is not None and info.path.exists() else 0
    return {
        "name": name,
        "model": name,
        "modified_at": datetime.fromtimestamp(modified, timezone.utc).isoformat(),
        "size": _size(info),
        "digest": _digest(info.id),
        "details": _details(info),
    }


def _capabilities(info: ModelInfo) -> list[str]:
    if EMBEDDING in info.capabilities or RERANK in info.capabilities:
        return sorted(info.capabilities & {EMBEDDING, RERANK})
    caps = ["completion"]
    if TOOLS in info.capabilities:
        caps.append("tools")
    if VISION in info.capabilities:
        caps.append("vision")
    # Ollama's names: "thinking" for reasoning output, "insert" for fill-in-the-middle.
    if REASONING in info.capabilities:
        caps.append("thinking")
    if FIM in info.capabilities:
        caps.append("insert")
    return caps


@get("/api/tags", operation_class=operation(errors=OLLAMA_ERROR))
async def tags(state: State) -> dict[str, Any]:
    models = []
    for info in state.registry.all_models():
        if not info.downloaded:
            continue
        models.append(_entry(info, info.id))
        models.extend(_entry(info, alias) for alias in info.spec.aliases)
    return {"models": models}


@post("/api/show", status_code=200, operation_class=operation(SHOW_SCHEMA, OLLAMA_ERROR))
async def show(request: Request, state: State) -> dict[str, Any]:
    body = checked_object(await read_json(request), SHOW_SCHEMA)
    name = _name(body.get("model", body.get("name")))
    info = state.registry.resolve(name)
    arch = info.model_type or info.family or "unknown"
    return {
        "modelfile": "",
        "parameters": "",
        "template": "",
        "license": "",
        "details": _details(info),
        "model_info": {"general.architecture": arch, f"{arch}.context_length": info.context_window},
        "capabilities": _capabilities(info),
        "modified_at": _entry(info, name)["modified_at"],
        **({"think_levels": list(levels_of_kind(thinking_kind_on_disk(info.path) or "think"))}
           if REASONING in info.capabilities else {}),
    }


@get("/api/ps", operation_class=operation(errors=OLLAMA_ERROR))
async def ps(state: State) -> dict[str, Any]:
    runtime = state.runtime
    loaded = runtime.current
    side = _side_entries(state)
    if loaded is None:
        return {"models": side}
    entry = _entry(loaded.info, loaded.id)
    # When it unloads: the idle timer's deadline, or (requests running) the
    # keep-alive counted from now; far in the future when it never unloads.
    unloads_at = runtime.unloads_at
    keep_alive = runtime.keep_alive_status()["seconds"]
    if unloads_at is None and keep_alive is not None:
        unloads_at = time.time() + keep_alive
    expires = (datetime.fromtimestamp(unloads_at, timezone.utc).isoformat().replace("+00:00", "Z")
               if unloads_at is not None else "9999-12-31T23:59:59Z")
    weights = runtime.memory.weights if runtime.memory.model == loaded.id else 0
    entry.update({"expires_at": expires, "size_vram": weights or entry["size"],
                  "context_length": loaded.context_window})
    return {"models": [entry, *side]}


def _side_entries(state: State) -> list[dict[str, Any]]:
    """Embedding and rerank models loaded beside the chat model (their own keep-alive)."""
    entries = []
    now = time.time()
    for side in state.runtime.side.loaded.values():
        entry = _entry(side.info, side.info.id)
        unloads_at = side.unloads_at
        if unloads_at is None and side.keep_alive != float("inf"):
            unloads_at = now + side.keep_alive
        expires = (datetime.fromtimestamp(unloads_at, timezone.utc).isoformat().replace("+00:00", "Z")
                   if unloads_at is not None else "9999-12-31T23:59:59Z")
        entry.update({"expires_at": expires, "size_vram": side.nbytes,
                      "context_length": side.facts.max_tokens})
        entries.append(entry)
    return entries


@get("/api/version", operation_class=operation(errors=OLLAMA_ERROR))
async def version() -> dict[str, str]:
    return {"version": OLLAMA_VERSION}


def _typed(value: Any, kinds: tuple[type, ...], field: str, what: str) -> Any:
    if value is None:
        return None
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise InvalidRequest(f"'{field}' must be {what}.", param=field)
    return value


def _format(value: Any) -> JsonFormat | None:
    """Ollama's ``format``: "json" (any JSON object) or a JSON schema."""
    if value in (None, ""):
        return None
    if value == "json":
        return JsonFormat({"type": "object"}, "format")
    if isinstance(value, dict):
        return JsonFormat(value, "format")
    raise InvalidRequest("'format' must be \"json\" or a JSON schema object.", param="format")


# Ollama option -> ChatRequest field (types and ranges: _OPTIONS_SCHEMA).
_OPTIONS = {
    "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
    "seed": "seed", "repeat_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
}


def _sampling(body: dict[str, Any], state: State, model: str) -> dict[str, Any]:
    options = body.get("options") or {}
    num_ctx = options.get("num_ctx")
    if num_ctx is not None:
        window = state.registry.resolve(model).context_window
        if num_ctx > window:
            raise InvalidRequest(
                f"options.num_ctx {num_ctx} is above the model's context window of {window}.",
                param="options.num_ctx",
            )
    num_predict = options.get("num_predict")
    stop = options.get("stop")
    knobs: dict[str, Any] = {field: options.get(option) for option, field in _OPTIONS.items()}
    for field in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                  "frequency_penalty"):
        value = knobs[field]
        knobs[field] = None if value is None else float(value)
    return {
        **knobs,
        "max_tokens": num_predict if num_predict is not None and num_predict > 0 else None,
        "stop": (stop,) if isinstance(stop, str) else tuple(stop or ()),
        "speculative": options.get("speculative") is not False,
        "json_format": _format(body.get("format")),
        "keep_alive": keep_alive_seconds(body),
        "reasoning": ollama_control(body.get("think")),
        # Ollama caps generation at the room the prompt leaves, never a 400.
        "clamp_max_tokens": True,
    }



def _images(value: Any, where: str) -> tuple[ImagePart, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"'{where}' must be a list of base64 strings.", param=where)
    return tuple(
        ImagePart(url=v if v.startswith("data:") else f"data:image/png;base64,{v}", where=f"{where}[{i}]")
        for i, v in enumerate(value)
    )


def _tools(value: Any) -> tuple[FunctionTool, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidRequest("'tools' must be a list.", param="tools")
    out = []
    for i, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest(f"'tools[{i}].function.name' is required.", param=f"tools[{i}]")
        out.append(FunctionTool(name=function["name"], description=function.get("description"),
                                parameters=function.get("parameters")))
    return tuple(out)


def _messages(value: Any) -> tuple[Message, ...]:
    if not isinstance(value, list):
        raise InvalidRequest("'messages' is required and must be a list.", param="messages")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"'{where}' must be an object.", param=where)
        role = message.get("role")
        if role not in ("system", "user", "assistant", "tool"):
            raise InvalidRequest(f"'{where}.role' must be system, user, assistant or tool.",
                                 param=f"{where}.role")
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise InvalidRequest(f"'{where}.content' must be a string.", param=f"{where}.content")
        parts: list[Any] = list(_images(message.get("images"), f"{where}.images"))
        if content:
            parts.append(TextPart(content))
        calls = []
        for j, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise InvalidRequest(f"'{where}.tool_calls[{j}].function' is invalid.",
                                     param=f"{where}.tool_calls[{j}]")
            arguments = function.get("arguments") or {}
            calls.append(ToolCall(name=function["name"], id=f"call_{i}_{j}",
                                  arguments=arguments if isinstance(arguments, str) else json.dumps(arguments)))
        tool_call_id = None
        if role == "tool":
            tool_call_id = message.get("tool_call_id") or f"tool_{i}"
        thinking = message.get("thinking")
        out.append(Message(role=role, content=tuple(parts), tool_calls=tuple(calls),
                           reasoning=thinking if isinstance(thinking, str) and thinking else None,
                           tool_call_id=tool_call_id, name=message.get("tool_name") or message.get("name")))
    if not out:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages")
    return tuple(out)


def chat_request(body: dict[str, Any], state: State) -> ChatRequest:
    model = _name(body.get("model"))
    return ChatRequest(model=model, messages=_messages(body.get("messages")),
                       tools=_tools(body.get("tools")), **_sampling(body, state, model))


def generate_request(body: dict[str, Any], state: State) -> ChatRequest:
    model = _name(body.get("model"))
    prompt = _typed(body.get("prompt"), (str,), "prompt", "a string")
    if prompt is None:
        raise InvalidRequest("'prompt' is required.", param="prompt")
    system = _typed(body.get("system"), (str,), "system", "a string")
    suffix = _typed(body.get("suffix"), (str,), "suffix", "a string")
    sampling = _sampling(body, state, model)
    if body.get("raw") or suffix is not None:
        for field in ("images", "system"):
            if body.get(field):
                raise InvalidRequest(
                    f"'{field}' cannot be combined with a raw prompt or 'suffix'.", param=field
                )
        return ChatRequest(model=model, messages=(), raw_prompt=prompt, suffix=suffix,
                           summarize=False, **sampling)
    messages = []
    if system:
        messages.append(Message(role="system", content=(TextPart(system),)))
    parts: list[Any] = list(_images(body.get("images"), "images"))
    parts.append(TextPart(prompt))
    messages.append(Message(role="user", content=tuple(parts)))
    return ChatRequest(model=model, messages=tuple(messages), **sampling)


def _call_json(call: ToolCall) -> dict[str, Any]:
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError:
        arguments = {}
    return {"function": {"name": call.name, "arguments": arguments}}


def _final(generation: Generation, name: str, started: float, kind: str) -> dict[str, Any]:
    final: dict[str, Any] = {
        "model": name, "created_at": _now(), "done": True,
        "done_reason": "length" if generation.finish_reason == "length" else "stop",
        "total_duration": int((time.perf_counter() - started) * 1e9),
        "load_duration": 0,
        "prompt_eval_count": generation.prompt_tokens, "prompt_eval_duration": 0,
        "eval_count": generation.completion_tokens, "eval_duration": 0,
    }
    if kind == "chat":
        final["message"] = {"role": "assistant", "content": ""}
    else:
        final["response"] = ""
    return final


def _piece(
    name: str, kind: str, text: str, calls: list[ToolCall] | None = None, thinking: str = ""
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": name, "created_at": _now(), "done": False}
    if kind == "chat":
        body["message"] = {"role": "assistant", "content": text}
        if thinking:
            body["message"]["thinking"] = thinking
        if calls:
            body["message"]["tool_calls"] = [_call_json(c) for c in calls]
    else:
        body["response"] = text
        if thinking:
            body["thinking"] = thinking
    return body


def _line(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def fold_whole(name: str, kind: str, started: float) -> Any:
    """Fold a generation into Ollama's one ``done`` object (``stream: false``)."""

    async def fold(generation: Generation, index: int) -> dict[str, Any]:
        reply = await generation.reply()
        final = _final(generation, name, started, kind)
        piece = _piece(name, kind, reply.text, reply.calls, reply.thinking)
        for key in ("message", "response", "thinking"):
            if key in piece:
                final[key] = piece[key]
        return final

    return fold


class OllamaFrames(Frames):
    """NDJSON lines: a ``done: false`` piece per text delta or tool call, then the
    ``done`` object; an error after the headers is ``{"error": ...}``. The
    keep-alive is an empty piece (``"content": ""``): Ollama's clients parse every
    line as JSON (a blank line breaks ollama-python and Ollama's Go client) and
    add an empty piece's text as nothing."""

    media_type = NDJSON

    def __init__(self, name: str, kind: str) -> None:
        self._name, self._kind = name, kind
        self._started = time.perf_counter()

    def event(self, event: GenerationEvent) -> list[bytes]:
        if isinstance(event, ContentDelta) and event.text:
            return [_line(_piece(self._name, self._kind, event.text))]
        if isinstance(event, ReasoningDelta) and event.text:
            return [_line(_piece(self._name, self._kind, "", thinking=event.text))]
        if isinstance(event, ToolCallEvent):
            return [_line(_piece(self._name, self._kind, "", [event.call]))]
        return []

    def ended(self, generation: Generation, index: int) -> list[bytes]:
        return [_line(_final(generation, self._name, self._started, self._kind))]

    def failed(self, error: MlxhostError) -> list[bytes]:
        return [_line({"error": error.message})]

    def keepalive(self) -> bytes:
        return _line(_piece(self._name, self._kind, ""))


def _load_only(body: dict[str, Any], kind: str) -> bool:
    """Ollama's load/unload form: a chat without messages, a generate without prompt."""
    if kind == "chat":
        return body.get("messages") in (None, [])
    return not body.get("prompt") and not body.get("images") and not body.get("suffix")


async def _load_or_unload(body: dict[str, Any], state: State, kind: str) -> dict[str, Any]:
    """Load the model (and keep it for ``keep_alive``), or with ``keep_alive: 0``
    unload it once idle; answers Ollama's ``done`` object."""
    name = _name(body.get("model"))
    keep_alive = keep_alive_seconds(body)
    runtime = state.runtime
    info = state.registry.resolve(name)
    reason = "load"
    if keep_alive == 0:
        reason = "unload"
        loaded = runtime.current
        if loaded is not None and loaded.id == info.id:
            # Hold it for no time: it unloads as soon as no request runs.
            async with runtime.session(loaded.info, keep_alive=0):
                pass
    else:
        info = await state.registry.ensure_local(info)
        async with runtime.session(info, keep_alive=keep_alive):
            pass
    done: dict[str, Any] = {"model": body["model"], "created_at": _now(), "done": True,
                            "done_reason": reason}
    if kind == "chat":
        done["message"] = {"role": "assistant", "content": ""}
    else:
        done["response"] = ""
    return done


async def _answer(request: Request, state: State, kind: str) -> Any:
    body = checked_object(await read_json(request), CHAT_SCHEMA if kind == "chat" else GENERATE_SCHEMA)
    if _load_only(body, kind):
        return Response(content=await _load_or_unload(body, state, kind),
                        media_type="application/json")
    chat = chat_request(body, state) if kind == "chat" else generate_request(body, state)
    name = body["model"]
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    if stream:
        return await exchange.stream(state.service, [chat], OllamaFrames(name, kind))
    folded = await exchange.fold(request, state.service, [chat],
                                 fold_whole(name, kind, time.perf_counter()))
    return folded.response(folded.results[0])


@exchange.route(CHAT_SCHEMA, OLLAMA_ERROR, path="/api/chat", media_type=NDJSON)
async def chat(request: Request, state: State) -> Any:
    return await _answer(request, state, "chat")


@exchange.route(GENERATE_SCHEMA, OLLAMA_ERROR, path="/api/generate", media_type=NDJSON)
async def generate(request: Request, state: State) -> Any:
    return await _answer(request, state, "generate")


def routes() -> list[Any]:
    """The route handlers (controllers) of this API."""
    return [tags, show, ps, version, chat, generate]
