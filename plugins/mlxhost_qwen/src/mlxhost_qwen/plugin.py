"""mlxhost plugin for Qwen models (Qwen2/2.5, Qwen3, Qwen3-VL): one Family declaration."""

from __future__ import annotations

from mlxhost.core.types import TOOLS, VISION
from mlxhost.families.family import Family, FamilyPlugin, ModelRegistration
from mlxhost_qwen.fim import fim
from mlxhost_qwen.template import render
from mlxhost_qwen.tools import call_grammar, make_parser

QWEN = Family(
    name="qwen",
    model_types=frozenset(
        {"qwen2", "qwen2_vl", "qwen2_5_vl", "qwen3", "qwen3_moe", "qwen3_vl", "qwen3_vl_moe"}
    ),
    # Family.render: (model, messages, tools, tool_choice), the tokenizer from the
    # model; ``variables``: the request's template variables (enable_thinking, ...).
    render=lambda model, messages, tools, choice, variables=None: render(
        messages, tools, model.tokenizer, choice, variables
    ),
    tool_parser=make_parser,
    fim=fim,
    tool_grammar=call_grammar,
    models=(
        ModelRegistration(
            "mlx-community/Qwen3-VL-4B-Instruct-4bit",
            aliases=("qwen",),
            capabilities=frozenset({VISION, TOOLS}),
            context_window=262144,
        ),
    ),
)

plugin = FamilyPlugin(QWEN)
