"""The family tool-call grammars (tool_choice required / named) compile, and the
core asks for one only when a call is forced."""

from __future__ import annotations

import pytest

from mlxhost.domain import FunctionTool, NamedToolChoice
from mlxhost.runtime.constrain import lark_grammar
from mlxhost.toolcalls import forced_tools

TOOLS = (
    FunctionTool(name="get_weather", parameters={
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                         "units": {"enum": ["c", "f"]}},
        "required": ["city"]}),
    FunctionTool(name="now", parameters=None),
    FunctionTool(name="flags", parameters={"type": "object", "properties": {"on": {"type": "boolean"}}}),
)


def test_forced_tools():
    assert forced_tools(TOOLS, "auto") == ()
    assert forced_tools(TOOLS, "none") == ()
    assert forced_tools(TOOLS, "required") == TOOLS
    assert forced_tools(TOOLS, NamedToolChoice("now")) == (TOOLS[1],)


@pytest.mark.parametrize("family", ["qwen", "gemma"])
def test_family_grammars_compile(family):
    if family == "qwen":
        from mlxhost_qwen.tools import call_grammar
    else:
        from mlxhost_gemma.tools import call_grammar
    for tools in (TOOLS, TOOLS[:1], TOOLS[1:2]):
        text = call_grammar(tools, "required")
        assert lark_grammar(text)
        for tool in tools:
            assert tool.name in text


def test_gemma_grammar_puts_required_arguments_first():
    from mlxhost_gemma.tools import call_grammar

    text = call_grammar(TOOLS[:1], "required")
    assert 'call0: "get_weather(" "city=" STRING' in text
    assert '"days=" INTEGER' in text
