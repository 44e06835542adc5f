"""What a model's own files say about chatting with it, read once per model version.

The chat template (``tokenizer_config.json``'s ``chat_template``, a string or a
named list such as ``default`` + ``tool_use``; ``chat_template.json``;
``chat_template.jinja``), its added tokens, and what follows from them: the
tool-call format (``mlxhost.families.tool_formats``) and the path tools take, the
fill-in-the-middle tokens, and the capabilities reported in ``/v1/models``.
The registry reads these files when it resolves a model version
(:class:`~mlxhost.core.types.ModelInfo` ``.chat``); the generic family and the
engine read the facts from there and never look at the files again. Reasoning
markers belong here too, beside the tool format.

No heavy imports: this runs for every model ``mlxhost ls`` lists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlxhost.core.types import (
    TOOL_PATH_DEFAULT,
    TOOL_PATH_TEMPLATE,
    TOOL_PATH_UNPARSED,
    ChatFacts,
)

# Fill-in-the-middle tokens (prefix, suffix, middle), by vocabulary.
FIM_TOKEN_SETS = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder, Qwen3-Coder
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder2, SmolLM, Granite code
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder
)

# A template that mentions the ``tools`` variable renders the tool list itself.
_USES_TOOLS = re.compile(r"\btools\b")
# Markers of templates that split out a reasoning part (the reasoning family fills it in).
_REASONING_HINTS = ("<think>", "reasoning_content", "enable_thinking", "<|channel|>")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def _templates(folder: Path) -> tuple[dict[str, str], str | None]:
    """Named templates, in transformers' order of precedence (a later source wins)."""
    templates: dict[str, str] = {}
    source = None
    config = _read_json(folder / "tokenizer_config.json")
    value = config.get("chat_template")
    if isinstance(value, str):
        templates["default"], source = value, "tokenizer_config.json"
    elif isinstance(value, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        for item in value:
            if isinstance(item, Mapping) and isinstance(item.get("template"), str):
                templates[str(item.get("name", "default"))] = item["template"]
        source = "tokenizer_config.json"
    processor = _read_json(folder / "chat_template.json").get("chat_template")
    if isinstance(processor, str):
        templates["default"], source = processor, "chat_template.json"
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        templates["default"], source = jinja.read_text(encoding="utf-8"), "chat_template.jinja"
    extra = folder / "additional_chat_templates"
    if extra.is_dir():
        for path in sorted(extra.glob("*.jinja")):
            templates[path.stem] = path.read_text(encoding="utf-8")
    return templates, source


def _added_tokens(folder: Path) -> frozenset[str]:
    """Added tokens from tokenizer_config.json, else the head of tokenizer.json
    (its ``added_tokens`` list comes first; the vocabulary after it can be tens of MB)."""
    config = _read_json(folder / "tokenizer_config.json")
    decoder = config.get("added_tokens_decoder")
    tokens: set[str] = set()
    if isinstance(decoder, Mapping):
        tokens.update(str(t.get("content")) for t in decoder.values() if isinstance(t, Mapping))
    for key in ("additional_special_tokens", "extra_special_tokens"):
        value = config.get(key)
        if isinstance(value, list):
            tokens.update(str(t.get("content") if isinstance(t, Mapping) else t) for t in value)
    path = folder / "tokenizer.json"
    if not tokens and path.is_file():
        with path.open("r", encoding="utf-8") as handle:
            head = handle.read(4 * 1024 * 1024)
        start = head.find('"added_tokens"')
        if start >= 0:
            try:
                items, _ = json.JSONDecoder().raw_decode(head, head.index("[", start))
            except ValueError:
                items = []
            tokens.update(str(t.get("content")) for t in items if isinstance(t, Mapping))
    return frozenset(tokens)


def read_chat_facts(folder: Path | None, config: Mapping[str, Any]) -> ChatFacts:
    """The chat facts of the model in ``folder`` (None: not downloaded yet)."""
    from mlxhost.core.architectures import is_vision
    from mlxhost.families.tool_formats import FORMATS, detect_tool_format

    vision = is_vision(config)
    if folder is None:
        return ChatFacts(vision=vision)
    try:
        templates, source = _templates(folder)
        tokens = _added_tokens(folder)
    except (OSError, ValueError) as exc:
        return ChatFacts(vision=vision, error=f"reading the chat template failed: {exc}")
    template = templates.get("default")
    every = "\n".join(templates.values())
    fim = next((s for s in FIM_TOKEN_SETS if all(t in tokens for t in s)), None)
    if template is None:
        return ChatFacts(special_tokens=tokens, fim_tokens=fim, vision=vision)
    declared = _read_json(folder / "tokenizer_config.json").get("tool_parser_type")
    fmt: str | None
    if isinstance(declared, str) and declared in FORMATS:
        # The checkpoint names its format (mlx-lm reads the same key): no inference.
        fmt, path = declared, TOOL_PATH_TEMPLATE
    elif _USES_TOOLS.search(every):
        fmt = detect_tool_format(every, tokens)
        path = TOOL_PATH_TEMPLATE if fmt else TOOL_PATH_UNPARSED
    else:
        fmt, path = "default", TOOL_PATH_DEFAULT
    return ChatFacts(
        templates=templates,
        template_file=source,
        special_tokens=tokens,
        tool_format=fmt,
        tool_path=path,
        fim_tokens=fim,
        vision=vision,
        reasoning=any(hint in every for hint in _REASONING_HINTS),
    )
