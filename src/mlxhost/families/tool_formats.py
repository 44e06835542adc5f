"""Tool-call formats of the models mlx-lm and mlx-vlm run, in mlxhost's streaming contract.

Each :class:`ToolFormat` names the markers around a call, the mlx-lm parser
(``mlx_lm.tool_parsers.<module>.parse_tool_call``) that reads what is between
them, and how a forced call is written as an llguidance Lark grammar. The
parsers are mlx-lm's, wrapped: :func:`make_format_parser` feeds them one block
at a time through :class:`~mlxhost.families.toolcalls.ToolCallStreamParser`, which holds
back half markers while streaming, and turns a call of a tool that was not
offered (or a block mlx-lm cannot read) into content.

Three formats have no parser in mlx-lm and are handled here (two of them
reuse mlx-lm's ``json_tools`` for the block body):

- ``llama3_json``: Llama 3.x answers with ``<|python_tag|>{...}`` or a bare
  ``{"name": ..., "parameters": {...}}`` reply (mlx-lm's server reads neither).
- ``phi4_mini``: Phi-4-mini writes ``<|tool_call|>{...}<|/tool_call|>``.
- ``default``: for templates without tool syntax (SmolLM2, many fine-tunes) the
  tool list goes in the system turn and calls come back as
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Hermes' shape,
  read by mlx-lm's ``json_tools``), or as a bare call object: small models drop
  the tags.

Which format a model uses is decided once per model version from its chat
template and special tokens (:func:`detect_tool_format`, the same rules, in
the same order, as mlx-lm's ``_infer_tool_parser``: a unit test checks they
agree), never per request.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import attrs

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
    strict_parameters,
)

# A block that runs to the end of the reply (Mistral has no closing marker):
# a closing marker that generated text never holds.
_TO_THE_END = "\x00end-of-reply\x00"


@attrs.frozen
class ToolFormat:
    name: str
    open: str
    close: str
    # mlx_lm.tool_parsers module that reads a block body (None: written here).
    module: str | None
    # A whole reply that is a bare call object is a call too (its arguments key).
    bare_key: str | None = None
    # How templates and docs describe it.
    example: str = ""


FORMATS: dict[str, ToolFormat] = {f.name: f for f in (
    ToolFormat("json_tools", "<tool_call>", "</tool_call>", "json_tools", bare_key="arguments",
               example='<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'),
    ToolFormat("qwen3_coder", "<tool_call>", "</tool_call>", "qwen3_coder",
               example="<tool_call>\n<function=f>\n<parameter=x>\n1\n</parameter>\n</function>\n</tool_call>"),
    ToolFormat("glm47", "<tool_call>", "</tool_call>", "glm47",
               example="<tool_call>f\n<arg_key>x</arg_key>\n<arg_value>1</arg_value>\n</tool_call>"),
    ToolFormat("mistral", "[TOOL_CALLS]", _TO_THE_END, "mistral",
               example='[TOOL_CALLS]f[ARGS]{"x": 1}'),
    ToolFormat("pythonic", "<|tool_call_start|>", "<|tool_call_end|>", "pythonic",
               example="<|tool_call_start|>[f(x=1)]<|tool_call_end|>"),
    ToolFormat("gemma4", "<|tool_call>", "<tool_call|>", "gemma4",
               example='<|tool_call>call:f{x:1,s:<|"|>text<|"|>}<tool_call|>'),
    ToolFormat("function_gemma", "<start_function_call>", "<end_function_call>", "function_gemma",
               example="<start_function_call>call:f{x:1,s:<escape>text<escape>}<end_function_call>"),
    ToolFormat("kimi_k2", "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>", "kimi_k2",
               example='<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0'
                       '<|tool_call_argument_begin|>{"x": 1}<|tool_call_end|><|tool_calls_section_end|>'),
    ToolFormat("minimax_m2", "<minimax:tool_call>", "</minimax:tool_call>", "minimax_m2",
               example='<minimax:tool_call>\n<invoke name="f">\n<parameter name="x">1</parameter>\n'
                       "</invoke>\n</minimax:tool_call>"),
    ToolFormat("llama3_json", "<|python_tag|>", _TO_THE_END, None, bare_key="parameters",
               example='{"name": "f", "parameters": {"x": 1}}'),
    ToolFormat("phi4_mini", "<|tool_call|>", "<|/tool_call|>", "json_tools",
               example='<|tool_call|>{"name": "f", "arguments": {"x": 1}}<|/tool_call|>'),
    ToolFormat("default", "<tool_call>", "</tool_call>", "json_tools", bare_key="arguments",
               example='<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'),
)}


def detect_tool_format(template: str | None, special_tokens: Collection[str]) -> str | None:
    """The tool format a chat template (and vocabulary) writes, or None when the
    template has tool syntax this module does not know.

    The checks and their order are mlx-lm's ``_infer_tool_parser`` (0.32), plus
    Llama 3.x's ``<|python_tag|>``; formats mlx-lm knows but mlxhost does not
    list here (longcat, minicpm5, muse_spark, kimi_k3) come back as None."""
    t = template or ""
    if "<minimax:tool_call>" in t:
        return "minimax_m2"
    if "<|tool_call>" in t and "<tool_call|>" in t:
        return "gemma4"
    if "<start_function_call>" in t:
        return "function_gemma"
    if "<longcat_tool_call>" in t:
        return None
    if "<arg_key>" in t:
        return "glm47"
    if "<|tool_list_start|>" in t or "<|tool_call_start|>" in t:
        return "pythonic"
    if "<tool_call>\\n<function=" in t or "<tool_call>\n<function=" in t:
        return "qwen3_coder"
    if "<|tool_calls_section_begin|>" in t:
        return "kimi_k2"
    if '<function name="' in t and '<param name="' in t:
        return None
    if "[TOOL_CALLS]" in t:
        return "mistral"
    if "<atem:function_calls>" in t:
        return None
    if "<tool_call>" in t and "tool_call.name" in t:
        return "json_tools"
    if "<|tool_call|>" in t:  # Phi-4-mini: JSON between <|tool_call|> and <|/tool_call|>
        return "phi4_mini"
    if "<|python_tag|>" in t or ('"parameters": ' in t and "function name" in t):
        return "llama3_json"
    if "<|tool_call_start|>" in special_tokens and "<|tool_call_end|>" in special_tokens:
        return "pythonic"
    return None


# -- parsing ----------------------------------------------------------------------


def _mlx_lm_parser(module: str) -> Callable[[str, Any], Any]:
    parse: Callable[[str, Any], Any] = importlib.import_module(
        f"mlx_lm.tool_parsers.{module}"
    ).parse_tool_call
    return parse


def _as_calls(
    parsed: Any, functions: Mapping[str, Any], key: str = "arguments", strict: Mapping[str, Any] = {}
) -> list[ToolCall]:
    """Calls of offered functions (a strict one's arguments fitting its schema), else InvalidToolCall."""
    items = parsed if isinstance(parsed, list) else [parsed]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidToolCall('expected an object with a "name"')
        name = item["name"]
        if name not in functions:
            raise InvalidToolCall(f"function {name!r} was not offered")
        arguments = call_arguments(item.get(key, item.get("arguments")))
        problems = schema_errors(arguments, strict[name]) if name in strict else []
        if problems:
            raise InvalidToolCall("; ".join(problems[:3]))
        calls.append(make_tool_call(name, arguments))
    if not calls:
        raise InvalidToolCall("no call")
    return calls


def _json_calls(text: str, key: str) -> Any:
    """One or more call objects: a list, or objects separated by whitespace or ``;``."""
    decoder = json.JSONDecoder()
    values, index, text = [], 0, text.strip()
    while index < len(text):
        value, index = decoder.raw_decode(text, index)
        values.extend(value if isinstance(value, list) else [value])
        while index < len(text) and (text[index].isspace() or text[index] == ";"):
            index += 1
    return [v for v in values if not (isinstance(v, dict) and set(v) - {"name", key, "type"})]


class _BareCallMatcher:
    """A whole reply that is a bare call object (``{"name": ..., "<key>": {...}}``):
    held while it can still be one (it starts with ``{``), decided at the end."""

    def __init__(self, functions: Mapping[str, Any], key: str, strict: Mapping[str, Any]) -> None:
        self._functions = functions
        self._key = key
        self._strict = strict
        self._seen = ""

    def feed(self, text: str) -> bool:
        self._seen += text
        head = self._seen.lstrip()
        return not head or head.startswith("{")

    def parse(self, text: str) -> list[ToolCall] | None:
        try:
            values = _json_calls(text, self._key)
        except ValueError:
            return None
        if not values or not all(isinstance(v, dict) and isinstance(v.get("name"), str) for v in values):
            return None
        return _as_calls(values, self._functions, self._key, self._strict)


def make_format_parser(fmt: ToolFormat, tools: Sequence[FunctionTool]) -> StreamParser:
    """A fresh streaming parser of ``fmt`` for one reply offered ``tools``."""
    functions = offered_functions(tools)
    if not functions:
        return ContentOnlyParser()
    strict = {tool.name: strict_parameters(tool.parameters) for tool in tools if tool.strict}
    openai_tools = [tool.as_openai() for tool in tools]
    key = fmt.bare_key or "arguments"

    if fmt.module is None:  # llama3_json: the body is JSON call objects
        def parse_block(body: str, closed: bool) -> list[ToolCall]:
            try:
                return _as_calls(_json_calls(body, key), functions, key, strict)
            except ValueError as exc:
                raise InvalidToolCall(str(exc)) from None
    else:
        parse = _mlx_lm_parser(fmt.module)

        def parse_block(body: str, closed: bool) -> list[ToolCall]:
            try:
                parsed = parse(body.strip(), openai_tools)
            except InvalidToolCall:
                raise
            except Exception as exc:  # mlx-lm's parsers raise ValueError, KeyError, ...
                raise InvalidToolCall(f"{fmt.name}: {type(exc).__name__}: {exc}") from None
            return _as_calls(parsed, functions, strict=strict)

    never = fmt.close == _TO_THE_END
    return ToolCallStreamParser(
        [(fmt.open, fmt.close)],
        parse_block,
        whole=_BareCallMatcher(functions, key, strict) if fmt.bare_key else None,
        find_close=(
            (lambda body, close: -1)
            if never
            # A JSON body: a string argument may hold the closing marker.
            else find_close_outside_json_strings if fmt.module == "json_tools" else None
        ),
        name=f"{fmt.name} tool calls",
    )


# -- forced calls as grammars -------------------------------------------------------


def _lit(marker: str, special: Collection[str]) -> str:
    """A marker in Lark: a special token by name (its text is not what the
    tokenizer emits for it), else a quoted string."""
    return marker if marker in special else json.dumps(marker)


# JSON as json.dumps writes it: a model that may put any whitespace between
# tokens can pad a forced call with newlines until max_tokens (random weights did).
_COMPACT_JSON = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _schema_rule(rules: list[str], name: str, schema: Any) -> str:
    schema = {**schema, "x-guidance": _COMPACT_JSON} if isinstance(schema, Mapping) else schema
    rules.append(f"{name}: %json {json.dumps(schema, ensure_ascii=False)}")
    return name


def _is_plain_string(schema: Any) -> bool:
    return isinstance(schema, Mapping) and schema.get("type") == "string" and "enum" not in schema


def _kv_sequence(properties: Sequence[tuple[str, bool, str]], separator: str) -> str:
    """A Lark expression of the ``(name, required, item expression)`` items in
    order, each optional one may be left out, ``separator`` (Lark, or empty)
    between neighbours; empty text when there are no items."""

    def seq(*parts: str) -> str:
        return " ".join(p for p in parts if p)

    first = rest = ""  # the items from here on: the first one written / after one
    for _name, required, item in reversed(properties):
        sep_item = seq(separator, item)
        new_rest = seq(sep_item, rest) if required else seq(f"({sep_item})?", rest)
        if required:
            new_first = seq(item, rest)
        else:
            new_first = f"({seq(item, rest)} | {first})" if first else f"({seq(item, rest)})?"
        first, rest = new_first, new_rest
    return first


# Builds the Lark rules of one forced call of ``tool`` (index i), returning its expression.
_CallBuilder = Callable[[FunctionTool, int, list[str], Collection[str]], "str | None"]


def _params(tool: FunctionTool) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    schema = strict_parameters(tool.parameters)
    properties = schema.get("properties") or {}
    required = [n for n in schema.get("required") or () if n in properties]
    return schema, properties, required


def _keyed_args(
    tool: FunctionTool, i: int, rules: list[str], item: Callable[[str, str, Any, int], str | None],
    separator: str,
) -> str | None:
    """The declared properties as key/value items (formats that spell out each argument)."""
    schema, properties, required = _params(tool)
    if schema.get("additionalProperties", False) is not False:
        return None  # undeclared keys cannot be spelled out
    items = []
    for j, (name, prop) in enumerate(properties.items()):
        expr = item(name, f"v{i}_{j}", prop, j)
        if expr is None:
            return None
        items.append((name, name in required, expr))
    return _kv_sequence(items, separator)


def _value(rules: list[str], rule: str, prop: Any, text_rule: str) -> str:
    if _is_plain_string(prop):
        return text_rule
    return _schema_rule(rules, rule, prop)


def _json_call(key: str) -> _CallBuilder:
    def build(tool: FunctionTool, i: int, rules: list[str], special: Collection[str]) -> str:
        schema = {"type": "object", "properties": {"name": {"const": tool.name},
                                                  key: strict_parameters(tool.parameters)},
                  "required": ["name", key], "additionalProperties": False}
        return _schema_rule(rules, f"call{i}", schema)
    return build


def _mistral_call(header: bool) -> _CallBuilder:
    def build(tool: FunctionTool, i: int, rules: list[str], special: Collection[str]) -> str:
        args = strict_parameters(tool.parameters)
        if header:
            return f"{json.dumps(tool.name + '[ARGS]')} {_schema_rule(rules, f'args{i}', args)}"
        schema = {"type": "array", "minItems": 1, "maxItems": 1, "items": {
            "type": "object", "properties": {"name": {"const": tool.name}, "arguments": args},
            "required": ["name", "arguments"], "additionalProperties": False}}
        return _schema_rule(rules, f"call{i}", schema)
    return build


def _kimi_call(tool: FunctionTool, i: int, rules: list[str], special: Collection[str]) -> str:
    args = _schema_rule(rules, f"args{i}", strict_parameters(tool.parameters))
    return (f"{_lit('<|tool_call_begin|>', special)} {json.dumps(f'functions.{tool.name}:0')} "
            f"{_lit('<|tool_call_argument_begin|>', special)} {args} {_lit('<|tool_call_end|>', special)}")


_TEXT = "TEXT: /[^<]*/"  # a string argument written raw (XML-like formats): no '<' in it


def _xml_call(kind: str) -> _CallBuilder:
    def build(tool: FunctionTool, i: int, rules: list[str], special: Collection[str]) -> str | None:
        def item(name: str, rule: str, prop: Any, j: int) -> str:
            # Qwen3-Coder puts the value on its own lines: a raw string there is one line.
            value = _value(rules, rule, prop, "LINE" if kind == "qwen3_coder" else "TEXT")
            if kind == "qwen3_coder":
                return f'{json.dumps(f"<parameter={name}>" + chr(10))} {value} "\\n</parameter>\\n"'
            if kind == "glm47":
                return (f'{json.dumps(f"<arg_key>{name}</arg_key>" + chr(10) + "<arg_value>")} '
                        f'{value} "</arg_value>\\n"')
            return f'{json.dumps(f"<parameter name={json.dumps(name)}>")} {value} "</parameter>\\n"'

        body = _keyed_args(tool, i, rules, item, "")
        if body is None:
            return None
        if kind == "qwen3_coder":
            return f'{json.dumps(f"{chr(10)}<function={tool.name}>{chr(10)}")} {body} "</function>\\n"'
        if kind == "glm47":
            return f"{json.dumps(tool.name + chr(10))} {body}"
        return f'{json.dumps(f"{chr(10)}<invoke name={json.dumps(tool.name)}>{chr(10)}")} {body} "</invoke>\\n"'
    return build


def _pythonic_call(tool: FunctionTool, i: int, rules: list[str], special: Collection[str]) -> str | None:
    def item(name: str, rule: str, prop: Any, j: int) -> str:
        return f"{json.dumps(name + '=')} {_schema_rule(rules, rule, prop)}"

    body = _keyed_args(tool, i, rules, item, '", "')
    return None if body is None else f'"[" {json.dumps(tool.name + "(")} {body} ")]"'


def _gemma_call(quote: str, nested: bool) -> _CallBuilder:
    def build(tool: FunctionTool, i: int, rules: list[str], special: Collection[str]) -> str | None:
        def item(name: str, rule: str, prop: Any, j: int) -> str | None:
            if _is_plain_string(prop):
                value = f"{_lit(quote, special)} QTEXT {_lit(quote, special)}"
            elif not nested and isinstance(prop, Mapping) and prop.get("type") in ("object", "array"):
                return None  # function_gemma splits values at the first comma
            else:
                value = _schema_rule(rules, rule, prop)
            return f"{json.dumps(name + ':')} {value}"

        body = _keyed_args(tool, i, rules, item, '","')
        return None if body is None else f'{json.dumps(f"call:{tool.name}" + "{")} {body} "}}"'
    return build


# format name -> how one call of a tool is written (the markers around it: forced_call_grammar)
_GRAMMARS: dict[str, _CallBuilder] = {
    "json_tools": _json_call("arguments"),
    "default": _json_call("arguments"),
    "llama3_json": _json_call("parameters"),
    "kimi_k2": _kimi_call,
    "qwen3_coder": _xml_call("qwen3_coder"),
    "glm47": _xml_call("glm47"),
    "minimax_m2": _xml_call("minimax_m2"),
    "pythonic": _pythonic_call,
    "phi4_mini": _json_call("arguments"),
    "gemma4": _gemma_call('<|"|>', nested=True),
    "function_gemma": _gemma_call("<escape>", nested=False),
}


def _calls(
    fmt: ToolFormat, tools: Sequence[FunctionTool], special: Collection[str], template: str
) -> tuple[str, list[str]] | None:
    """One call of one of ``tools`` in ``fmt`` as a Lark expression (without the
    opening marker) and the rules it uses; None when the format cannot spell them."""
    build = _GRAMMARS.get(fmt.name)
    if fmt.name == "mistral":
        build = _mistral_call(header="[ARGS]" in template)
    if build is None or not tools:
        return None
    rules: list[str] = []
    alternatives = []
    for i, tool in enumerate(tools):
        expr = build(tool, i, rules, special)
        if expr is None:
            return None
        alternatives.append(expr)
    calls = " | ".join(f"({a})" for a in alternatives)
    if fmt.name in ("llama3_json", "mistral"):  # no closing marker
        body = f"({calls})"
    elif fmt.name in ("json_tools", "default"):  # the layout Hermes/Qwen templates show
        body = f'"\\n" ({calls}) "\\n" {_lit(fmt.close, special)}'
    else:
        body = f"({calls}) {_lit(fmt.close, special)}"
    return body, [*rules, _TEXT, "LINE: /[^<\\n]*/", 'QTEXT: /[^<"]*/']


def forced_call_grammar(
    fmt: ToolFormat, tools: Sequence[FunctionTool], special: Collection[str], *, template: str = ""
) -> str | None:
    """The Lark grammar of a reply that is one call of one of ``tools`` in
    ``fmt`` (arguments limited to the declared properties unless the schema
    allows more), or None when the format cannot spell out these tools'
    arguments (e.g. function_gemma with an object argument)."""
    found = _calls(fmt, tools, special, template)
    if found is None:
        return None
    body, rules = found
    # Llama 3's call is the bare JSON object (its <|python_tag|> form is optional).
    opening = "" if fmt.name == "llama3_json" else _lit(fmt.open, special)
    return "\n".join(["%llguidance {}", f"start: {opening} {body}", *rules])


def strict_calls_grammar(
    fmt: ToolFormat, tools: Sequence[FunctionTool], special: Collection[str], *, template: str = ""
) -> str | None:
    """tool_choice "auto" with a strict tool: free text, in which every call (from
    its opening marker on) names an offered tool and a strict tool's arguments
    match its schema (the others' are any object). None for formats that spell
    out each argument (a non-strict tool's undeclared arguments cannot be
    written there) and for Llama 3's bare-JSON calls."""
    from mlxhost.families.toolcalls import calls_in_free_text

    if fmt.name not in ("json_tools", "default", "phi4_mini", "kimi_k2", "mistral"):
        return None
    loose = [
        tool if tool.strict else attrs.evolve(tool, parameters={"type": "object", "additionalProperties": True})
        for tool in tools
    ]
    found = _calls(fmt, loose, special, template)
    if found is None:
        return None
    body, rules = found
    return calls_in_free_text(
        fmt.open, body, "\n".join(rules), special_token=fmt.open in special
    )
