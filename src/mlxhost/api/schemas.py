"""OpenAI chat wire models, parsed with one strict cattrs converter, and their
one conversion into the domain request (:func:`to_domain`)."""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar, Literal, TypeVar

import attrs
import cattrs

from mlxhost.api.thinking import EFFORT_SCHEMA, chat_control
from mlxhost.api.wire_schema import check_body, constrained, schema_of
from mlxhost.core import domain
from mlxhost.core.errors import InvalidRequest

# The sampling bounds (JSON-schema keywords), shared by the APIs that take these knobs.
from mlxhost.core.limits import MIN_P, PENALTY, REPETITION_PENALTY, TEMPERATURE, TOP_K, TOP_P
from mlxhost.core.types import ToolCall

MAX_JSON_DEPTH = 64
# Choices per chat request (each is a generation of its own, run one after another).
MAX_CHOICES = 8
MAX_ARRAY_ITEMS = 10_000
W = TypeVar("W")  # an attrs wire class

Role = Literal["system", "developer", "user", "assistant", "tool"]


@attrs.define
class ImageURL:
    url: str
    detail: str | None = None


@attrs.define
class TextPart:
    text: str
    type: Literal["text"] = "text"


@attrs.define
class ImagePart:
    image_url: ImageURL
    type: Literal["image_url"] = "image_url"


ContentPart = TextPart | ImagePart


@attrs.define
class FunctionCall:
    name: str
    arguments: str = "{}"


@attrs.define
class ToolCallIn:
    function: FunctionCall
    id: str = ""
    type: Literal["function"] = "function"


@attrs.define
class Message:
    JSON_SCHEMA: ClassVar[dict[str, Any]] = {
        "if": {"properties": {"role": {"const": "tool"}}},
        "then": {"properties": {"tool_call_id": {"type": "string", "minLength": 1}},
                 "required": ["tool_call_id"]},
    }

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    # An earlier reply's thinking sent back (vLLM's and newer clients' names).
    reasoning_content: str | None = None
    reasoning: str | None = None


@attrs.define
class FunctionDef:
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


@attrs.define
class Tool:
    function: FunctionDef
    type: Literal["function"] = "function"


@attrs.define
class StreamOptions:
    include_usage: bool = False


STOP = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4},
                  {"type": "null"}]}
LOGIT_BIAS = {
    "type": ["object", "null"],
    "propertyNames": {"pattern": "^[0-9]{1,9}$"},
    "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
    "maxProperties": 1024,
}
# LM Studio's per-request idle time-to-live, accepted by the OpenAI-style endpoints.
TTL = {"minimum": -1, "description": "seconds the model stays loaded once idle after this "
       "request (LM Studio's ttl; -1: forever, 0: unload at once)"}


def ttl_seconds(ttl: int | None) -> float | None:
    """A request's ``ttl`` as the domain's keep-alive (None: the server's default)."""
    if ttl is None:
        return None
    return math.inf if ttl < 0 or ttl >= 10**9 else float(ttl)  # ~31 years: forever


TOOL_CHOICE = {"anyOf": [
    {"enum": ["auto", "none", "required"]},
    {"type": "object", "properties": {
        "type": {"enum": ["function"]},
        "function": {"type": "object", "properties": {"name": {"type": "string", "minLength": 1}},
                     "required": ["name"]}},
     "required": ["type", "function"]},
    {"type": "null"},
]}
RESPONSE_FORMAT = {"anyOf": [
    {"type": "object", "properties": {"type": {"enum": ["text", "json_object"]}}, "required": ["type"]},
    {"type": "object", "properties": {
        "type": {"enum": ["json_schema"]},
        "json_schema": {"type": "object", "properties": {"schema": {"type": "object"}},
                        "required": ["schema"]}},
     "required": ["type", "json_schema"]},
    {"type": "null"},
]}


@attrs.define
class ChatCompletionRequest:
    JSON_SCHEMA: ClassVar[dict[str, Any]] = {
        # top_logprobs only with logprobs: true (else 400 "Missing required parameter: 'logprobs'").
        "if": {"properties": {"top_logprobs": {"type": "integer"}}, "required": ["top_logprobs"]},
        "then": {"properties": {"logprobs": {"const": True}}, "required": ["logprobs"]},
    }

    model: str = constrained(attrs.NOTHING, description="Model id or alias (GET /v1/models).")
    messages: list[Message] = constrained(attrs.NOTHING, minItems=1, maxItems=MAX_ARRAY_ITEMS)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = constrained(minimum=1)
    max_completion_tokens: int | None = constrained(minimum=1)
    temperature: float | None = constrained(**TEMPERATURE)
    top_p: float | None = constrained(**TOP_P)
    stop: str | list[str] | None = constrained(**STOP)
    seed: int | None = None
    n: int | None = constrained(minimum=1, maximum=MAX_CHOICES)
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = constrained(**TOOL_CHOICE)
    parallel_tool_calls: bool | None = None
    user: str | None = None
    # "disabled": fail with context_length_exceeded instead of summarizing older turns.
    truncation: Literal["auto", "disabled"] | None = None
    frequency_penalty: float | None = constrained(**PENALTY)
    presence_penalty: float | None = constrained(**PENALTY)
    # token id (as a string, OpenAI's wire form) -> bias in -100..100
    logit_bias: dict[str, Any] | None = constrained(**LOGIT_BIAS)
    # Not OpenAI's, but sent by many clients (vLLM, llama.cpp, LM Studio accept them).
    top_k: int | None = constrained(**TOP_K)
    min_p: float | None = constrained(**MIN_P)
    repetition_penalty: float | None = constrained(**REPETITION_PENALTY)
    # mlxhost's own (extra_body): false turns prompt-lookup speculative decoding off.
    speculative: bool | None = None
    response_format: dict[str, Any] | None = constrained(**RESPONSE_FORMAT)
    logprobs: bool | None = None
    top_logprobs: int | None = constrained(minimum=0, maximum=20)
    ttl: int | None = constrained(**TTL)
    # Thinking: OpenAI's effort (none..high; LM Studio's xhigh) and the template's own switches.
    reasoning_effort: str | None = constrained(**EFFORT_SCHEMA)
    chat_template_kwargs: dict[str, Any] | None = None

    @property
    def completion_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    """OpenAI's ``stop`` (a string or a list of them; chat and completions) as the domain's."""
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def _strict(kind: type, accepted: tuple[type, ...], name: str):
    def structure(value: Any, _type: Any) -> Any:
        # bool is an int in Python; JSON true is never a number here.
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {name}, got a boolean")
        if not isinstance(value, accepted):
            raise TypeError(f"expected {name}, got {type(value).__name__}")
        return kind(value)

    return structure


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=False)
    converter.register_structure_hook(str, _strict(str, (str,), "a string"))
    converter.register_structure_hook(int, _strict(int, (int,), "an integer"))
    converter.register_structure_hook(float, _strict(float, (int, float), "a number"))
    converter.register_structure_hook(bool, _strict(bool, (bool,), "a boolean"))
    part_types = {"text": TextPart, "image_url": ImagePart}

    def part(value: Any, _type: Any) -> Any:
        if not isinstance(value, dict):
            raise TypeError("expected a content part object")
        kind = part_types.get(str(value.get("type")))
        if kind is None:
            raise ValueError(
                f"unsupported content part type {value.get('type')!r} "
                f"(supported: {', '.join(part_types)})"
            )
        return converter.structure(value, kind)

    converter.register_structure_hook(ContentPart, part)

    def content(value: Any, _type: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list):
            return [part(item, ContentPart) for item in value]
        raise TypeError("expected a string or a list of content parts")

    converter.register_structure_hook(str | list[ContentPart] | None, content)

    def stop(value: Any, _type: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise TypeError("expected a string or a list of strings")

    converter.register_structure_hook(str | list[str] | None, stop)

    def tool_choice(value: Any, _type: Any) -> Any:
        if value is None or isinstance(value, (str, dict)):
            return value
        raise TypeError("expected a string or an object")

    converter.register_structure_hook(str | dict[str, Any] | None, tool_choice)
    return converter


converter = _make_converter()


def _describe(exc: Exception) -> tuple[str, str | None]:
    """A readable message and the first offending field (as an OpenAI `param`)."""
    lines = cattrs.transform_error(exc, path="", format_exception=_format_exception)
    readable, params = [], []
    for line in lines[:5]:
        problem, _, where = line.rpartition(" @ ")
        where = where.lstrip(".")
        params.append(where or None)
        literal = _LITERAL_ERROR.search(problem)
        if literal:
            problem = f"{literal.group(1)!r} is not one of {literal.group(2)}"
        readable.append(f"'{where}': {problem}" if where else line)
    return "; ".join(readable), params[0] if params else None


_LITERAL_ERROR = re.compile(r"\(?(\S+) not in literal typing\.Literal\[(.+)\]\)?")


def _format_exception(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, (TypeError, ValueError)) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)




def check_shape(value: Any, depth: int = 0, path: str = "") -> None:
    """Bound nesting depth and array sizes before any deeper work on the body."""
    if depth > MAX_JSON_DEPTH:
        raise InvalidRequest(f"The request body is nested more than {MAX_JSON_DEPTH} levels deep.")
    if isinstance(value, dict):
        for key, item in value.items():
            check_shape(item, depth + 1, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        if len(value) > MAX_ARRAY_ITEMS:
            raise InvalidRequest(
                f"'{path}' has {len(value)} items; at most {MAX_ARRAY_ITEMS} are accepted.",
                param=path or None,
            )
        for index, item in enumerate(value):
            check_shape(item, depth + 1, f"{path}[{index}]")


def checked_object(body: Any, schema: dict[str, Any], *, dotted: bool = False) -> dict[str, Any]:
    """``body`` once it is a JSON object of bounded shape that matches ``schema``
    (InvalidRequest naming the field otherwise): every endpoint's first step."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    check_shape(body)
    check_body(body, schema, dotted=dotted)
    return body


def structure_request(body: Any, schema: dict[str, Any], wire_class: type[W]) -> W:
    """A checked body (:func:`checked_object`) as its attrs wire class."""
    checked_object(body, schema)
    try:
        return converter.structure(body, wire_class)
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as exc:
        message, param = _describe(exc)
        raise InvalidRequest(f"Invalid request: {message}", param=param) from None


def parse_wire_request(body: Any) -> ChatCompletionRequest:
    return structure_request(body, CHAT_REQUEST_SCHEMA, ChatCompletionRequest)


def json_format_of(fmt: dict[str, Any] | None) -> domain.JsonFormat | None:
    """OpenAI's ``response_format`` as the domain's structured-output request."""
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return domain.JsonFormat(schema={"type": "object"}, where="response_format")
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "'response_format.json_schema.schema' must be a JSON schema object.",
                param="response_format.json_schema.schema",
            )
        return domain.JsonFormat(schema=schema, where="response_format.json_schema.schema")
    raise InvalidRequest(
        f"response_format type {fmt.get('type')!r} is not one of 'text', 'json_object', "
        "'json_schema'.",
        param="response_format",
    )


def logit_bias_of(value: dict[str, Any] | None, param: str = "logit_bias") -> dict[int, float]:
    """OpenAI's ``logit_bias`` (token id strings -> -100..100) as ints -> floats."""
    out: dict[int, float] = {}
    for key, bias in (value or {}).items():
        if not str(key).isdigit() or int(key) >= 2**31:
            raise InvalidRequest(f"'{param}' keys must be token ids, got {key!r}.", param=param)
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise InvalidRequest(
                f"'{param}[{key}]' must be a number between -100 and 100.", param=f"{param}.{key}"
            )
        out[int(key)] = float(bias)
    if len(out) > 1024:
        raise InvalidRequest(f"'{param}' has more than 1024 entries.", param=param)
    return out


def _content(message: Message, index: int) -> tuple[domain.ContentPart, ...]:
    content = message.content
    if content is None:
        return ()
    if isinstance(content, str):
        return (domain.TextPart(content),) if content else ()
    parts: list[domain.ContentPart] = []
    for j, part in enumerate(content):
        if isinstance(part, TextPart):
            parts.append(domain.TextPart(part.text))
        else:
            parts.append(
                domain.ImagePart(url=part.image_url.url, where=f"messages[{index}].content[{j}]")
            )
    return tuple(parts)


def _tool_choice(choice: str | dict[str, Any] | None) -> domain.ToolChoice:
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        return choice  # type: ignore[return-value]  # checked by the schema
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if choice.get("type") != "function" or not isinstance(name, str) or not name:
        raise InvalidRequest(
            "'tool_choice' must be 'auto', 'none', 'required' or "
            '{"type": "function", "function": {"name": ...}}.',
            param="tool_choice",
        )
    return domain.NamedToolChoice(name)


def to_domain(request: ChatCompletionRequest) -> domain.ChatRequest:
    """The one conversion from OpenAI's chat wire shape to the domain request."""
    messages = tuple(
        domain.Message(
            role=message.role,
            content=_content(message, index),
            tool_calls=tuple(
                ToolCall(name=call.function.name, arguments=call.function.arguments, id=call.id)
                for call in message.tool_calls or ()
            ),
            tool_call_id=message.tool_call_id,
            name=message.name,
            reasoning=message.reasoning_content or message.reasoning or None,
        )
        for index, message in enumerate(request.messages)
    )
    tools = tuple(
        domain.FunctionTool(
            name=tool.function.name,
            description=tool.function.description,
            parameters=tool.function.parameters,
            strict=tool.function.strict,
        )
        for tool in request.tools or ()
    )
    return domain.ChatRequest(
        model=request.model,
        messages=messages,
        tools=tools,
        tool_choice=_tool_choice(request.tool_choice),
        parallel_tool_calls=request.parallel_tool_calls is not False,
        max_tokens=request.completion_limit,
        temperature=request.temperature,
        top_p=request.top_p,
        seed=request.seed,
        top_k=request.top_k,
        min_p=request.min_p,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        repetition_penalty=request.repetition_penalty,
        speculative=request.speculative is not False,
        logit_bias=logit_bias_of(request.logit_bias),
        logprobs=(request.top_logprobs or 0) if request.logprobs else None,
        json_format=json_format_of(request.response_format),
        stop=stop_strings(request.stop),
        summarize=request.truncation != "disabled",
        keep_alive=ttl_seconds(request.ttl),
        reasoning=chat_control(request.reasoning_effort, request.chat_template_kwargs),
    )


def parse_chat_request(body: Any) -> domain.ChatRequest:
    """A request body as the domain request (InvalidRequest naming the field otherwise)."""
    return to_domain(parse_wire_request(body))


# The published and enforced schema of a chat completions body.
CHAT_REQUEST_SCHEMA = schema_of(ChatCompletionRequest)
