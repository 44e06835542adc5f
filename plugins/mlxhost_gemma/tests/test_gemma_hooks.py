"""Each hook of the Gemma plugin answers for Gemma models and returns None for others."""

from __future__ import annotations

from mlxhost.plugins import make_plugin_manager
from mlxhost.types import ModelInfo, ModelSpec, RenderedPrompt
from mlxhost_gemma import plugin
from mlxhost_gemma.tools import make_parser

GEMMA = ModelInfo(spec=ModelSpec(id="g", family="gemma"), config={"model_type": "gemma3"})
QWEN = ModelInfo(spec=ModelSpec(id="q", family="qwen"), config={"model_type": "qwen3_vl"})
MESSAGES = [{"role": "user", "content": "hi"}]


def test_register_models_registers_only_gemma_models():
    calls = []
    plugin.mlxhost_register_models(lambda model_id, **kw: calls.append((model_id, kw)))
    assert calls and all(kw["family"] == "gemma" for _, kw in calls)


def test_model_family():
    assert plugin.mlxhost_model_family({"model_type": "gemma3_text"}) == "gemma"
    assert plugin.mlxhost_model_family({"model_type": "qwen2"}) is None


def test_render_prompt():
    rendered = plugin.mlxhost_render_prompt(GEMMA, MESSAGES, None, None)
    assert isinstance(rendered, RenderedPrompt)
    assert rendered.text == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    assert plugin.mlxhost_render_prompt(QWEN, MESSAGES, None, None) is None


def test_tool_call_parser():
    assert plugin.mlxhost_tool_call_parser(GEMMA) is make_parser
    assert plugin.mlxhost_tool_call_parser(QWEN) is None


def test_hooks_through_the_plugin_manager():
    pm = make_plugin_manager()
    assert pm.hook.mlxhost_tool_call_parser(model=GEMMA) is make_parser
    tools = [{"type": "function", "function": {"name": "ping"}}]
    rendered = pm.hook.mlxhost_render_prompt(
        model=GEMMA, messages=MESSAGES, tools=tools, tool_choice="required"
    )
    assert "def ping():" in rendered.text and "You must call at least one" in rendered.text
