"""mlxhost plugin for Gemma 3 models: one Family declaration."""

from __future__ import annotations

from mlxhost.core.types import TOOLS, VISION
from mlxhost.families.family import Family, FamilyPlugin, ModelRegistration
from mlxhost_gemma.shard import shard
from mlxhost_gemma.template import render
from mlxhost_gemma.tools import call_grammar, make_parser

GEMMA = Family(
    name="gemma",
    model_types=frozenset({"gemma3", "gemma3_text"}),
    # Family.render: (model, messages, tools, tool_choice), the tokenizer from the model.
    render=lambda model, messages, tools, choice: render(messages, model.tokenizer, tools, choice),
    tool_parser=make_parser,
    tool_grammar=call_grammar,
    shard=shard,  # tensor parallel over a distributed group (mlx-lm has no shard())
    models=(
        ModelRegistration(
            "mlx-community/gemma-3-4b-it-4bit",
            aliases=("gemma",),
            capabilities=frozenset({VISION, TOOLS}),
            context_window=131072,
        ),
    ),
)

plugin = FamilyPlugin(GEMMA)
