"""Wire models for requests, parsed with one strict cattrs converter."""

from __future__ import annotations

import re
from typing import Any, Literal

import attrs
import cattrs

from mlxhost.errors import InvalidRequest

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
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


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


@attrs.define
class ChatCompletionRequest:
    model: str
    messages: list[Message]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    user: str | None = None
    # "disabled": fail with context_length_exceeded instead of summarizing older turns.
    truncation: Literal["auto", "disabled"] | None = None

    @property
    def completion_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


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
        kind = part_types.get(value.get("type"))
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


MAX_JSON_DEPTH = 64
MAX_ARRAY_ITEMS = 10_000


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


def parse_chat_request(body: Any) -> ChatCompletionRequest:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    check_shape(body)
    for field in ("model", "messages"):
        if field not in body:
            raise InvalidRequest(f"Missing required parameter: '{field}'.", param=field)
    try:
        request = converter.structure(body, ChatCompletionRequest)
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as exc:
        message, param = _describe(exc)
        raise InvalidRequest(f"Invalid request: {message}", param=param) from None
    validate(request)
    return request


def validate(request: ChatCompletionRequest) -> None:
    """Range checks and options we do not support (rejected, never ignored)."""
    if not request.messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages")
    limit = request.completion_limit
    if limit is not None and limit < 1:
        raise InvalidRequest("'max_tokens' must be at least 1.", param="max_tokens")
    if request.temperature is not None and not 0 <= request.temperature <= 2:
        raise InvalidRequest("'temperature' must be between 0 and 2.", param="temperature")
    if request.top_p is not None and not 0 < request.top_p <= 1:
        raise InvalidRequest("'top_p' must be greater than 0 and at most 1.", param="top_p")
    if request.n not in (None, 1):
        raise InvalidRequest("Only n=1 is supported.", param="n")
    if len(request.stop_strings) > 4:
        raise InvalidRequest("At most 4 stop sequences are supported.", param="stop")
    choice = request.tool_choice
    if isinstance(choice, str) and choice not in ("auto", "none", "required"):
        raise InvalidRequest(
            "'tool_choice' must be 'auto', 'none', 'required' or a named function.",
            param="tool_choice",
        )
    for index, message in enumerate(request.messages):
        if message.role == "tool" and not message.tool_call_id:
            raise InvalidRequest(
                "Messages with role 'tool' must have a 'tool_call_id'.",
                param=f"messages[{index}].tool_call_id",
            )


def message_dicts(request: ChatCompletionRequest) -> list[dict[str, Any]]:
    """Messages as plain dicts for templates, with unset fields left out."""
    out = []
    for message in request.messages:
        data = converter.unstructure(message)
        out.append({k: v for k, v in data.items() if v is not None})
    return out


def tool_dicts(request: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    if not request.tools or request.tool_choice == "none":
        return None
    return [
        {"type": "function", "function": {k: v for k, v in converter.unstructure(t.function).items() if v is not None}}
        for t in request.tools
    ]
