"""Request-body JSON schemas: one per endpoint, published and enforced.

Each endpoint's body schema is written once: generated from its attrs wire
class (chat, completions; constraints in each field's ``metadata``, see
:func:`constrained`) or declared as a JSON-schema dict beside an adapter that
parses bodies by hand (Anthropic, Responses, Ollama). The same schema is
attached to the endpoint's OpenAPI operation (:func:`operation_with_body`) and
checked against every body before the adapter parses it (:func:`check_body`),
so what the server publishes and what it accepts cannot drift apart.
"""

from __future__ import annotations

import functools
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

import attrs

from mlxhost.core.errors import InvalidRequest

# The metadata key under which a field carries its JSON-schema constraints.
SCHEMA_KEY = "json_schema"


def constrained(default: Any = None, **schema: Any) -> Any:
    """An attrs field whose JSON schema adds ``schema`` (``minimum=1`` ...).

    Keys are JSON-schema keywords in their JSON spelling; ``anyOf`` or ``enum``
    replaces the schema the field's type would give."""
    return attrs.field(default=default, metadata={SCHEMA_KEY: schema})


def schema_of(kind: Any) -> dict[str, Any]:
    """The JSON schema of a type: attrs classes, Literal, unions, lists, dicts, scalars."""
    if attrs.has(kind):
        return _object_schema(kind)
    origin = typing.get_origin(kind)
    if kind is Any:
        return {}
    if kind is type(None):
        return {"type": "null"}
    if kind in _SCALARS:
        return {"type": _SCALARS[kind]}
    if origin is Literal:
        return {"enum": list(typing.get_args(kind))}
    if origin in (Union, types.UnionType):
        return {"anyOf": [schema_of(arg) for arg in typing.get_args(kind)]}
    if origin is list:
        (item,) = typing.get_args(kind) or (Any,)
        return {"type": "array", "items": schema_of(item)}
    if origin is dict:
        _, value = typing.get_args(kind) or (str, Any)
        return {"type": "object"} if value is Any else {
            "type": "object", "additionalProperties": schema_of(value)}
    raise TypeError(f"no JSON schema for {kind!r}")


_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}


@functools.cache
def _object_schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        extra = dict(field.metadata.get(SCHEMA_KEY, {}))
        generated = schema_of(hints[field.name])
        if "anyOf" in extra or "enum" in extra:
            generated = {}
        properties[field.name] = {**generated, **extra}
        if field.default is attrs.NOTHING:
            required.append(field.name)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    # Rules across fields (``if``/``then`` ...), from the class's ``JSON_SCHEMA``.
    schema.update(getattr(cls, "JSON_SCHEMA", {}))
    return schema


def tagged(key: str, variants: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """An object told apart by ``key`` (``"type"``, ``"role"``): each value's own schema.

    Written as if/then rather than anyOf so that an error names the field at
    fault (``messages.0.content.2.text``) instead of "not valid under any"."""
    return {
        "type": "object",
        "properties": {key: {"enum": list(variants)}},
        "required": [key],
        "allOf": [{"if": {"properties": {key: {"const": value}}}, "then": schema}
                  for value, schema in variants.items()],
        **extra,
    }


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or null, keeping ``schema``'s own errors (no anyOf)."""
    return {"if": {"type": "null"}, "else": schema}


# -- enforcing ----------------------------------------------------------------
_MESSAGE_LIMIT = 300


# Schema object id -> (the schema, kept alive so its id stays its own, the validator).
_VALIDATORS: dict[int, tuple[dict[str, Any], Any]] = {}


def validator_for(schema: dict[str, Any]) -> Any:
    """The jsonschema validator of a schema object, built once per object (the
    schemas are module constants, so this is once per endpoint, not per request)."""
    cached = _VALIDATORS.get(id(schema))
    if cached is None or cached[0] is not schema:
        import jsonschema

        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cached = _VALIDATORS[id(schema)] = (schema, cls(schema))
    return cached[1]


def field_path(parts: Any, dotted: bool = False) -> str:
    """``messages[0].role`` (OpenAI's spelling) or ``messages.0.role`` (Anthropic's)."""
    path = ""
    for part in parts:
        if isinstance(part, int) and not dotted:
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def check_body(body: Any, schema: dict[str, Any], *, dotted: bool = False) -> None:
    """Raise InvalidRequest (naming the field as ``param``) unless ``body`` matches ``schema``."""
    import jsonschema

    error = jsonschema.exceptions.best_match(validator_for(schema).iter_errors(body))
    if error is None:
        return
    path = field_path(error.absolute_path, dotted)
    if error.validator == "required":
        missing = _quoted(error.message)
        param = f"{path}.{missing}" if path else missing
        raise InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
    message = error.message
    if len(message) > _MESSAGE_LIMIT:
        message = message[:_MESSAGE_LIMIT] + "…"
    hint = _description(error)
    if hint:
        message = f"{message} ({hint})"
    if path:
        raise InvalidRequest(f"'{path}': {message}", param=path)
    raise InvalidRequest(f"Invalid request: {message}")


def _description(error: Any) -> str | None:
    """The failing field's own description (e.g. why a value is not accepted)."""
    while error is not None:
        if isinstance(error.schema, dict) and error.schema.get("description"):
            return str(error.schema["description"])
        error = error.parent
    return None


def _quoted(message: str) -> str:
    found = re.match(r"'([^']*)'", message)
    return found.group(1) if found else message


# -- publishing -----------------------------------------------------------------
_RENAMED = {"not": "schema_not", "if": "schema_if", "else": "schema_else"}


def to_openapi(data: Any) -> Any:
    """A Litestar ``Schema`` from a JSON-schema dict (keywords to snake_case)."""
    from litestar.openapi.spec import Schema

    if isinstance(data, bool):
        return data
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = _RENAMED.get(key) or re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()
        if key == "properties":
            value = {k: to_openapi(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "propertyNames", "not", "if", "then", "else"):
            value = to_openapi(value)
        elif key in ("anyOf", "oneOf", "allOf"):
            value = [to_openapi(v) for v in value]
        kwargs[name] = value
    return Schema(**kwargs)


# The error bodies each API answers with (documented for every operation).
OPENAI_ERROR: dict[str, Any] = {"type": "object", "properties": {"error": {
    "type": "object",
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}},
    "required": ["message", "type", "param", "code"]}}, "required": ["error"]}
ANTHROPIC_ERROR: dict[str, Any] = {"type": "object", "properties": {
    "type": {"const": "error"},
    "error": {"type": "object", "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
              "required": ["type", "message"]}}, "required": ["type", "error"]}
OLLAMA_ERROR: dict[str, Any] = {"type": "object", "properties": {"error": {"type": "string"}},
                                "required": ["error"]}

# The error statuses any operation may answer (500 only on a bug: not documented).
ERROR_STATUSES = {
    "400": "Invalid request (the message names the field)",
    "401": "Missing or wrong API key (when the server has one)",
    "404": "Unknown model or object",
    "413": "Request body over the size cap",
    "503": "Overloaded: the queue is full, or the model is loading",
}


def operation(body: dict[str, Any] | None = None, errors: dict[str, Any] = OPENAI_ERROR) -> type:
    """A Litestar ``Operation`` class documenting ``body`` (a JSON schema) as
    the request body and the API's error shape for every error status."""
    from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Operation, RequestBody

    error_content = {"application/json": OpenAPIMediaType(schema=to_openapi(errors))}

    @dataclass
    class Documented(Operation):
        def __post_init__(self) -> None:
            if body is not None:
                self.request_body = RequestBody(
                    required=True,
                    content={"application/json": OpenAPIMediaType(schema=to_openapi(body))},
                )
            self.responses = {
                **(self.responses or {}),
                **{status: OpenAPIResponse(description=text, content=error_content)
                   for status, text in ERROR_STATUSES.items()},
            }

    return Documented
