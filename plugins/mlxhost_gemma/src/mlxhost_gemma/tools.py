"""Gemma tool calls: Python-style calls in a ```` ```tool_code ```` block.

Gemma 3's chat template has no tool section, so the prompt describes the
functions as Python stubs and asks for calls like ``get_weather(city="Paris")``
in a ```` ```tool_code ```` block; results go back in ```` ```tool_output ````
blocks (see :mod:`mlxhost_gemma.template`).

Accepted output:

- ```` ```tool_code ```` (or ```` ```tool_call ````) blocks holding one or more
  calls, one per line (a list of calls, or ``print(call)``, is accepted too).
  Calls are parsed with :mod:`ast`, never evaluated: keyword and positional
  arguments (positional ones take parameter names in the schema's order),
  strings, numbers, booleans (``True``/``true``), ``None``/``null``, lists,
  tuples and dicts, nested. Every called function must have been offered.
- Drift form: a WHOLE reply that is bare calls of offered functions (no fence),
  with arguments that fit their schemas.

Anything else is content; a malformed block is returned as content, markers included.
"""

from __future__ import annotations

import ast
import io
import itertools
import json
import keyword
import re
import textwrap
import tokenize
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from mlxhost.core.domain import FunctionTool, ToolChoice
from mlxhost.core.types import StreamParser, ToolCall
from mlxhost.families.toolcalls import (
    ContentOnlyParser,
    InvalidToolCall,
    ToolCallStreamParser,
    check_finite,
    make_tool_call,
    offered_functions,
    schema_errors,
    tool_choice_instruction,
)

TOOL_CODE = "```tool_code"
TOOL_OUTPUT = "```tool_output"
FENCE = "```"
# ```tool_call is a drift seen with prompts that name both; it is read the same way.
MARKERS = [(TOOL_CODE, FENCE), ("```tool_call", FENCE)]

TOOLS_INTRO = f"""\
You have access to the Python functions defined below. To call functions, reply \
with a single {TOOL_CODE} block holding one call per line, written in Python with \
keyword arguments, like this:
{TOOL_CODE}
function_name(argument="value", other_argument=42)
{FENCE}
Only call the functions defined below. Each result comes back to you in a \
{TOOL_OUTPUT} block; use the results to answer the user. When no function is \
needed, answer directly."""


# --- the prompt -------------------------------------------------------------

_PY_TYPES = {
    "string": "str",
    "integer": "int",
    "number": "float",
    "boolean": "bool",
    "object": "dict",
    "null": "None",
}


def _annotation(schema: Any) -> str | None:
    """A Python type for a JSON schema (None when there is no simple one)."""
    if not isinstance(schema, Mapping):
        return None
    kind = schema.get("type")
    if isinstance(kind, list):
        names = [_annotation({**schema, "type": k}) for k in kind]
        return " | ".join(dict.fromkeys(n for n in names if n)) or None
    if kind == "array":
        item = _annotation(schema.get("items"))
        return f"list[{item}]" if item else "list"
    if isinstance(kind, str):
        return _PY_TYPES.get(kind)
    options = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(options, list):
        names = [_annotation(option) for option in options]
        if all(names):
            return " | ".join(dict.fromkeys(n for n in names if n))
    return None


def python_literal(value: Any) -> str:
    """A JSON value as Python source (strings double-quoted, as the model writes them)."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float, str)):
        # JSON string escapes (\\n, \\", \\uXXXX) are valid Python escapes.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(python_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = (f"{python_literal(str(k))}: {python_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"not a JSON value: {value!r}")


def format_call(name: str, arguments: Mapping[str, Any]) -> str:
    """``get_weather(city="Paris")``: a call as the model is asked to write it."""
    return f"{name}(" + ", ".join(f"{k}={python_literal(v)}" for k, v in arguments.items()) + ")"


def _docstring(function: Mapping[str, Any], properties: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    description = str(function.get("description") or "").strip()
    if description:
        lines.extend(description.splitlines())
    args = []
    for name, schema in properties.items():
        schema = schema if isinstance(schema, Mapping) else {}
        text = str(schema.get("description") or "").strip()
        if isinstance(schema.get("enum"), list):
            choices = ", ".join(python_literal(v) for v in schema["enum"])
            text = f"{text} One of: {choices}." if text else f"One of: {choices}."
        if text:
            args.append((name, text))
    if args:
        if lines:
            lines.append("")
        lines.append("Args:")
        for name, text in args:
            first, *rest = text.splitlines()
            lines.append(f"    {name}: {first}")
            lines.extend(f"        {line}" if line.strip() else "" for line in rest)
    return [line.replace('"""', '\\"\\"\\"') for line in lines]


def python_signature(function: Mapping[str, Any]) -> str:
    """A Python stub for one OpenAI function definition: signature and docstring.

    Parameters keep the schema's order (positional calls map to it); optional
    ones default to their schema default or ``None``. If an optional parameter
    comes before a required one, the parameters are made keyword-only so the
    stub stays valid Python.
    """
    parameters = function.get("parameters")
    parameters = parameters if isinstance(parameters, Mapping) else {}
    properties = parameters.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    required = set(parameters.get("required") or ())
    params, seen_optional, keyword_only = [], False, False
    for name, schema in properties.items():
        annotation = _annotation(schema)
        text = f"{name}: {annotation}" if annotation else name
        if name in required:
            keyword_only |= seen_optional
        else:
            seen_optional = True
            default = schema.get("default") if isinstance(schema, Mapping) else None
            text += f" = {python_literal(default)}" if annotation else f"={python_literal(default)}"
        params.append(text)
    if keyword_only:
        params.insert(0, "*")
    lines = [f"def {function['name']}({', '.join(params)}):"]
    doc = _docstring(function, properties)
    if doc:
        doc[0] = '"""' + doc[0]
        lines.extend(f"    {line}" if line else "" for line in doc)
        lines.append('    """')
    else:
        lines.append("    ...")
    return "\n".join(lines)


def tool_prompt(tools: Sequence[FunctionTool], tool_choice: ToolChoice) -> str:
    """The tool section written into the system prefix of the first user turn."""
    stubs = "\n\n".join(python_signature(tool.as_openai()["function"]) for tool in tools)
    text = f"{TOOLS_INTRO}\n\n```python\n{stubs}\n```"
    line = tool_choice_instruction(tool_choice)
    return f"{text}\n\n{line}" if line else text


def tool_code_block(tool_calls: Sequence[ToolCall]) -> str:
    """Earlier assistant calls rendered back as the model wrote them."""
    from mlxhost.families.templating import TemplateError

    lines = []
    for call in tool_calls:
        try:
            parsed = json.loads(call.arguments or "{}")
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, Mapping):
            raise TemplateError(f"tool call {call.name!r}: arguments must be a JSON object")
        lines.append(format_call(call.name, parsed))
    return f"{TOOL_CODE}\n" + "\n".join(lines) + f"\n{FENCE}"


def tool_output_block(text: str) -> str:
    return f"{TOOL_OUTPUT}\n{text}\n{FENCE}"


# --- parsing calls ----------------------------------------------------------

# Parameters whose names are Python keywords (``from``, ``class``) cannot be
# written as keyword arguments; they are renamed for parsing and named back after.
_ESCAPE = "_mlxhost_kw"
_CONSTANTS = {
    "True": True,
    "False": False,
    "None": None,
    "true": True,
    "false": False,
    "null": None,
}


def _escape_keywords(source: str) -> str | None:
    """Source with ``from=`` (a keyword used as an argument name) renamed; None if
    there is nothing to rename or the source does not tokenize."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return None
    lines = io.StringIO(source).readlines()  # the rows tokenize counts
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    spots = []
    for token, following in itertools.pairwise(tokens):
        if (
            token.type == tokenize.NAME
            and keyword.iskeyword(token.string)
            and following.type == tokenize.OP
            and following.string == "="
        ):
            row, col = token.end
            spots.append(starts[row - 1] + col)
    if not spots:
        return None
    for offset in reversed(spots):
        source = source[:offset] + _ESCAPE + source[offset:]
    return source


def _parse(source: str) -> ast.Module:
    # A model's string literal with an unknown escape ("\`") makes the compiler
    # warn (DeprecationWarning, SyntaxWarning from 3.12) on the server's
    # stderr; Python keeps such a backslash, and so does the argument. (Filters
    # are process-wide: a parse racing another thread's could leave these two
    # categories ignored, which is harmless here.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)
        return ast.parse(source, mode="exec")


def _parse_module(source: str) -> ast.Module:
    try:
        return _parse(source)
    except SyntaxError as exc:
        escaped = _escape_keywords(source)
        if escaped is not None:
            try:
                return _parse(escaped)
            except SyntaxError:
                pass
        raise InvalidToolCall(f"not valid Python ({exc.msg})") from None


def python_value(node: ast.AST) -> Any:
    """A literal argument value as JSON data; anything else is rejected (no eval)."""
    if isinstance(node, ast.Constant):
        value = node.value
        if value is None or isinstance(value, (str, bool, int)):
            return value
        if isinstance(value, float):
            return check_finite(value)
    elif isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    elif (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, (ast.USub, ast.UAdd))
        and isinstance(node.operand, ast.Constant)
        and type(node.operand.value) in (int, float)
    ):
        number = node.operand.value
        assert isinstance(number, (int, float))
        return check_finite(-number if isinstance(node.op, ast.USub) else number)
    elif isinstance(node, (ast.List, ast.Tuple)):
        return [python_value(item) for item in node.elts]
    elif isinstance(node, ast.Dict):
        out = {}
        for key_node, value_node in zip(node.keys, node.values):
            key = python_value(key_node) if key_node is not None else None
            if not isinstance(key, str):
                raise InvalidToolCall("dict keys in arguments must be strings")
            out[key] = python_value(value_node)
        return out
    raise InvalidToolCall(f"unsupported argument value {ast.unparse(node)[:60]!r}")


def _call_nodes(node: ast.expr, functions: Mapping[str, Any]) -> list[ast.Call]:
    if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
        return [call for item in node.elts for call in _call_nodes(item, functions)]
    if not isinstance(node, ast.Call):
        raise InvalidToolCall("not a function call")
    wrapped = node.args[0] if len(node.args) == 1 else None
    if (
        isinstance(node.func, ast.Name)
        and node.func.id == "print"
        and "print" not in functions
        and not node.keywords
        and isinstance(wrapped, (ast.Call, ast.List, ast.Tuple))
    ):
        return _call_nodes(wrapped, functions)
    return [node]


def _tool_call(
    node: ast.Call, functions: Mapping[str, dict[str, Any]], *, strict: bool
) -> ToolCall:
    if not isinstance(node.func, ast.Name):
        raise InvalidToolCall(f"cannot call {ast.unparse(node.func)[:60]!r}")
    name = node.func.id
    if name not in functions:
        raise InvalidToolCall(f"function {name!r} was not offered")
    schema = functions[name]
    properties = schema.get("properties")
    names = list(properties) if isinstance(properties, Mapping) else []
    arguments: dict[str, Any] = {}
    for index, arg in enumerate(node.args):
        if isinstance(arg, ast.Starred):
            raise InvalidToolCall("*args in a call")
        if index >= len(names):
            raise InvalidToolCall(f"{name}: positional argument {index + 1} has no parameter name")
        arguments[names[index]] = python_value(arg)
    for kw in node.keywords:
        if kw.arg is None:
            raise InvalidToolCall("**kwargs in a call")
        arg_name = kw.arg
        if arg_name.endswith(_ESCAPE) and keyword.iskeyword(arg_name[: -len(_ESCAPE)]):
            arg_name = arg_name[: -len(_ESCAPE)]
        if arg_name in arguments:
            raise InvalidToolCall(f"{name}: argument {arg_name!r} given twice")
        arguments[arg_name] = python_value(kw.value)
    if strict:
        problems = schema_errors(arguments, schema)
        if problems:
            raise InvalidToolCall("; ".join(problems[:3]))
    return make_tool_call(name, arguments)


def parse_python_calls(
    source: str, functions: Mapping[str, dict[str, Any]], *, strict: bool = False
) -> list[ToolCall]:
    """Calls in Python source (a ```tool_code body): one per statement, or a list.

    ``strict`` also requires the arguments to fit the function's schema.
    Raises InvalidToolCall for anything that is not such calls.
    """
    source = textwrap.dedent(source).strip()
    if not source:
        raise InvalidToolCall("no call")
    module = _parse_module(source)
    calls = []
    for statement in module.body:
        if not isinstance(statement, ast.Expr):
            raise InvalidToolCall("not a function call")
        for node in _call_nodes(statement.value, functions):
            calls.append(_tool_call(node, functions, strict=strict))
    return calls


_BARE_START = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\(")


def parse_bare_reply(text: str, functions: Mapping[str, dict[str, Any]]) -> list[ToolCall] | None:
    """The drift form: the whole reply is calls of offered functions, no fence.

    None when it is not (plain content); InvalidToolCall when it is calls but
    their arguments do not fit the schemas.
    """
    start = _BARE_START.match(text)
    if start is None or start.group(1) not in functions:
        return None
    try:
        module = _parse_module(text.strip())
    except InvalidToolCall:
        return None
    nodes = [s.value for s in module.body if isinstance(s, ast.Expr)]
    if len(nodes) != len(module.body) or not all(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) for n in nodes
    ):
        return None
    return [_tool_call(node, functions, strict=True) for node in nodes]  # type: ignore[arg-type]


class BareCallMatcher:
    """Whether the reply so far could still be bare calls of offered functions.

    Character by character: an offered function's name, ``(``, arguments
    (brackets counted, Python strings skipped, triple-quoted ones included),
    ``)``, then only whitespace or another such call. The final word is
    :func:`parse_bare_reply`.
    """

    def __init__(self, functions: Mapping[str, dict[str, Any]]) -> None:
        self._functions = functions
        self._state = "lead"  # lead | name | args | dead
        self._name = ""
        self._depth = 0
        self._quote = ""  # delimiter of the string we are in: ', ", ''' or """
        self._opening = ""  # quote char(s) just seen outside a string
        self._escape = False
        self._run = 0  # closing quote chars seen in a row, in a triple-quoted string

    def feed(self, text: str) -> bool:
        for char in text:
            if self._state == "dead" or not self._step(char):
                self._state = "dead"
                return False
        return True

    def parse(self, text: str) -> list[ToolCall] | None:
        return parse_bare_reply(text, self._functions)

    def _step(self, char: str) -> bool:
        if self._state == "lead":
            if char.isspace():
                return True
            self._state, self._name = "name", ""
        if self._state == "name":
            if char == "(":
                self._state, self._depth = "args", 1
                return self._name in self._functions
            if char.isalnum() or char == "_":
                self._name += char
                return any(name.startswith(self._name) for name in self._functions)
            return False
        return self._in_args(char)

    def _in_args(self, char: str) -> bool:
        if self._opening:
            if char == self._opening[0] and len(self._opening) < 3:
                self._opening += char
                if len(self._opening) == 3:
                    self._quote, self._opening, self._run = self._opening, "", 0
                return True
            if len(self._opening) == 2:  # an empty string, closed: this char is code
                self._opening = ""
                return self._in_args(char)
            self._quote, self._opening = self._opening, ""  # a one-quote string began
        if self._quote:
            if self._escape:
                self._escape = False
            elif char == "\\":
                self._escape, self._run = True, 0
            elif len(self._quote) == 1:
                if char == self._quote:
                    self._quote = ""
            elif char == self._quote[0]:
                self._run += 1
                if self._run == 3:
                    self._quote, self._run = "", 0
            else:
                self._run = 0
            return True
        if char in "'\"":
            self._opening = char
        elif char in "([{":
            self._depth += 1
        elif char in ")]}":
            self._depth -= 1
            if self._depth == 0:
                self._state = "lead"
        return True


def find_closing_fence(body: str, fence: str = FENCE) -> int:
    """Where the ```tool_code block's closing fence starts, -1 if not yet.

    A fence inside a Python string (``write(text="```x```")``) or a comment does
    not close the block. A one-quote string also ends at a newline (it is a syntax
    error anyway), so a stray apostrophe cannot swallow the rest of the reply.
    """
    if fence not in body:
        return -1
    index, quote, size = 0, "", len(body)
    while index < size:
        char = body[index]
        if quote:
            if char == "\\":
                index += 2
            elif body.startswith(quote, index):
                index += len(quote)
                quote = ""
            else:
                if char == "\n" and len(quote) == 1:
                    quote = ""
                index += 1
        elif body.startswith(fence, index):
            return index
        elif char == "#":
            end = body.find("\n", index)
            index = size if end < 0 else end
        elif char in "'\"":
            quote = char * 3 if body.startswith(char * 3, index) else char
            index += len(quote)
        else:
            index += 1
    return -1


def make_parser(tools: Sequence[FunctionTool]) -> StreamParser:
    """The ToolParserFactory of the Gemma family: a fresh parser for one reply."""
    functions = offered_functions(tools)
    if not functions:
        return ContentOnlyParser()
    return ToolCallStreamParser(
        MARKERS,
        lambda body, closed: parse_python_calls(body, functions),
        whole=BareCallMatcher(functions),
        find_close=find_closing_fence,
        name="gemma tool calls",
        # Past the block, Gemma would write a made-up ```tool_output itself.
        stop_after_call=True,
    )


_VALUE_RULES = r"""
value: STRING | NUMBER | "True" | "False" | "None" | list | dict
list: "[" [value ("," " "? value)*] "]"
dict: "{" [pair ("," " "? pair)*] "}"
pair: STRING ":" " "? value
STRING: /"([^"\\\n]|\\.)*"/
NUMBER: /-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?/
INTEGER: /-?[0-9]+/
kwarg: IDENT "=" value
IDENT: /[A-Za-z_][A-Za-z0-9_]*/
"""


_TYPED = {"string": "STRING", "integer": "INTEGER", "number": "NUMBER",
          "boolean": '("True" | "False")'}


def _python_literal(value: Any) -> str:
    """``value`` as Python source (JSON's true/false/null are True/False/None)."""
    if isinstance(value, (bool, type(None))):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def _argument(name: str, schema: Any) -> str:
    """``name=VALUE``: an ``enum`` is its listed literals, a scalar ``type`` its
    terminal, anything else any Python literal (checked by the parser)."""
    head = json.dumps(name + "=")
    if not isinstance(schema, dict):
        return f"{head} value"
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        choices = " | ".join(json.dumps(_python_literal(v)) for v in enum)
        return f"{head} ({choices})"
    kind = schema.get("type")
    return f'{head} {_TYPED.get(kind, "value") if isinstance(kind, str) else "value"}'


def call_grammar(tools: Sequence[FunctionTool], tool_choice: ToolChoice) -> str:
    """The Lark grammar of a reply whose calls are constrained.

    Forced (``"required"`` or a named tool): one ```` ```tool_code ```` block
    holding ``name(keyword=value, ...)`` for one of ``tools``, its required
    parameters in schema order, then any optional ones; scalar values typed by
    the schema, others any Python literal (checked by the parser). ``"auto"``
    (some tool is strict): free text, and every ```` ```tool_code ```` block it
    opens calls an offered tool, a strict tool's arguments as above, any other
    tool's any keyword arguments."""
    from mlxhost.families.toolcalls import calls_in_free_text

    auto = tool_choice == "auto"
    calls, lines = [], []
    for index, tool in enumerate(tools):
        if auto and not tool.strict:
            lines.append(f'call{index}: {json.dumps(tool.name + "(")} [kwarg (", " kwarg)*] ")"')
        else:
            lines += _typed_call(index, tool)
        calls.append(f"call{index}")
    block = f'"\\n" ({" | ".join(calls)}) "\\n```"'
    rules = "\n".join([*lines, _VALUE_RULES])
    if auto:
        return calls_in_free_text(TOOL_CODE, block, rules, special_token=False)
    return f"start: {json.dumps(TOOL_CODE)} {block}\n{rules}"


def _typed_call(index: int, tool: FunctionTool) -> list[str]:
    """Lark rules of a call to ``tool`` whose keyword arguments follow its schema."""
    lines = []
    properties = (tool.parameters or {}).get("properties") or {}
    required = [n for n in (tool.parameters or {}).get("required") or [] if n in properties]
    optional = [n for n in properties if n not in required]
    pieces = [_argument(name, properties[name]) for name in required]
    body = ' ", " '.join(pieces)
    if optional:
        lines.append(f"opt{index}: " + " | ".join(_argument(n, properties[n]) for n in optional))
        rest = f'(", " opt{index})*' if required else f'[opt{index} (", " opt{index})*]'
        body = f"{body} {rest}".strip()
    lines.append(f'call{index}: {json.dumps(tool.name + "(")} {body} ")"'.replace("  ", " "))
    return lines
