"""The generic family: any model mlx-lm or mlx-vlm can load, served from its own files.

A built-in plugin marked ``trylast`` on the same hooks the family plugins
implement, so an installed family (Gemma 3, Qwen) answers first for its own
models and this one answers for everything else:

- ``mlxhost_model_family``: ``"generic"`` for every ``model_type`` mlx-lm or
  mlx-vlm has code for (``mlxhost.core.architectures``): such repos in the Hugging
  Face cache or a ``--models-dir`` are listed and served by name.
- ``mlxhost_render_prompt``: the model's own chat template (``ModelInfo.chat``,
  read once per model version), rendered by its tokenizer as transformers'
  ``apply_chat_template`` does; images as ``{"type": "image"}`` parts, which
  mlx-vlm's processor expands. A template without tool syntax gets the tool
  list in the system turn (mlxhost's default format, docs/plugins.md).
- ``mlxhost_tool_call_parser`` / ``mlxhost_tool_call_grammar``: the model's
  own call format (``mlxhost.families.tool_formats``), read with mlx-lm's parsers and
  forced with an llguidance grammar.
- ``mlxhost_fim_prompt``: the vocabulary's fill-in-the-middle tokens.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from mlxhost.core.architectures import loader_for
from mlxhost.core.domain import FunctionTool, Message, ToolChoice
from mlxhost.core.errors import InvalidRequest
from mlxhost.core.types import (
    GENERIC_FAMILY,
    TOOL_PATH_DEFAULT,
    LoadedModel,
    ModelInfo,
    RenderedPrompt,
    StreamParser,
    ToolParserFactory,
)
from mlxhost.families.hookspecs import hookimpl
from mlxhost.families.templating import (
    render_chat_template,
    special_tokens,
    template_messages,
    template_tools,
)
from mlxhost.families.tool_formats import (
    FORMATS,
    forced_call_grammar,
    make_format_parser,
    strict_calls_grammar,
)
from mlxhost.families.toolcalls import ContentOnlyParser, tool_choice_instruction

# mlxhost's default tool format, for templates without tool syntax: the
# Hermes / Qwen2.5 wording, which many fine-tunes were trained on.
DEFAULT_TOOLS_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    "{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


@hookimpl(trylast=True)
def mlxhost_model_family(config: dict[str, Any]) -> str | None:
    return GENERIC_FAMILY if loader_for(config) else None


# -- prompts ----------------------------------------------------------------------


def _with_system_text(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """``text`` after the system message's own (a system message is made if there is none)."""
    if messages and messages[0]["role"] in ("system", "developer"):
        first = dict(messages[0])
        content = first["content"]
        if isinstance(content, str):
            first["content"] = f"{content}\n\n{text}" if content else text
        else:
            first["content"] = [*content, {"type": "text", "text": f"\n\n{text}"}]
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def default_format_messages(
    messages: list[dict[str, Any]], tools: Sequence[FunctionTool]
) -> list[dict[str, Any]]:
    """The conversation for a template without tool syntax: the tool list in the
    system turn, earlier calls as ``<tool_call>`` text in the assistant turn, tool
    results as ``<tool_response>`` user turns (such templates know only the usual roles)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        message = dict(message)
        calls = message.pop("tool_calls", None)
        if calls:
            text = "\n".join(
                "<tool_call>\n" + json.dumps(
                    {"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
                    ensure_ascii=False,
                ) + "\n</tool_call>"
                for c in calls
            )
            content = message.get("content") or ""
            message["content"] = f"{content}\n{text}" if isinstance(content, str) and content else text
        if message["role"] == "tool":
            content = message.get("content")
            body = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
            message = {"role": "user", "content": f"<tool_response>\n{body}\n</tool_response>"}
        message.pop("tool_call_id", None)
        if message.get("content") is None:
            message["content"] = ""
        out.append(message)
    if tools:
        listing = "\n".join(json.dumps(t.as_openai(), ensure_ascii=False) for t in tools)
        out = _with_system_text(out, DEFAULT_TOOLS_PROMPT.format(tools=listing))
    return out


def render(
    model: LoadedModel,
    messages: Sequence[Message],
    tools: Sequence[FunctionTool],
    tool_choice: ToolChoice,
    variables: Mapping[str, Any] | None = None,
) -> RenderedPrompt:
    """``variables``: the request's chat-template variables (``enable_thinking``,
    ``reasoning_effort``, ``chat_template_kwargs``; docs/reasoning.md)."""
    facts = model.info.chat
    variables = dict(variables or {})
    template = facts.template_for(bool(tools))
    tokenizer = model.tokenizer
    if template is None:
        own = getattr(tokenizer, "chat_template", None)
        template = own if isinstance(own, str) else None
    if template is None:
        raise InvalidRequest(
            f"Model '{model.id}' has no chat template (none in tokenizer_config.json, "
            "chat_template.jinja or chat_template.json); send a raw prompt to /v1/completions "
            "or add a template to the model folder.",
            param="messages",
        )
    plain, images = template_messages(messages)
    offered: list[dict[str, Any]] | None = template_tools(tools)
    if facts.tool_path == TOOL_PATH_DEFAULT:
        plain = default_format_messages(plain, tools)
        offered = None
    line = tool_choice_instruction(tool_choice) if tools else None
    if line:
        plain = _with_system_text(plain, line)
    try:
        if hasattr(tokenizer, "apply_chat_template"):
            text = tokenizer.apply_chat_template(
                plain, tools=offered, chat_template=template,
                add_generation_prompt=True, tokenize=False, **variables,
            )
        else:  # engines without a Hugging Face tokenizer (tests)
            text = render_chat_template(
                template, plain, tools=offered, **{**special_tokens(tokenizer), **variables}
            )
    except Exception as exc:  # jinja's raise_exception(), a template error, a bad variable
        raise InvalidRequest(
            f"Model '{model.id}': its chat template rejected the messages: {exc}", param="messages"
        ) from exc
    return RenderedPrompt(text=text, images=images)


@hookimpl(trylast=True)
def mlxhost_render_prompt(
    model: LoadedModel,
    messages: Sequence[Message],
    tools: Sequence[FunctionTool],
    tool_choice: ToolChoice,
    template_variables: Mapping[str, Any],
) -> RenderedPrompt | None:
    return render(model, messages, tools, tool_choice, template_variables)


# -- tool calls ---------------------------------------------------------------------


def _content_only(tools: Sequence[FunctionTool]) -> StreamParser:
    return ContentOnlyParser()


@hookimpl(trylast=True)
def mlxhost_tool_call_parser(model: ModelInfo) -> ToolParserFactory | None:
    fmt = FORMATS.get(model.chat.tool_format or "")
    if fmt is None:
        return _content_only

    def factory(tools: Sequence[FunctionTool]) -> StreamParser:
        return make_format_parser(fmt, tools)

    return factory


@hookimpl(trylast=True)
def mlxhost_tool_call_grammar(
    model: ModelInfo, tools: Sequence[FunctionTool], tool_choice: ToolChoice
) -> str | None:
    fmt = FORMATS.get(model.chat.tool_format or "")
    if fmt is None:
        return None
    template = "\n".join(model.chat.templates.values())
    if tool_choice == "auto":  # some tool is strict
        return strict_calls_grammar(fmt, tools, model.chat.special_tokens, template=template)
    return forced_call_grammar(fmt, tools, model.chat.special_tokens, template=template)


@hookimpl(trylast=True)
def mlxhost_fim_prompt(model: LoadedModel, prefix: str, suffix: str) -> str | None:
    tokens = model.info.chat.fim_tokens
    if tokens is None:
        return None
    begin, hole, end = tokens
    return f"{begin}{prefix}{hole}{suffix}{end}"
