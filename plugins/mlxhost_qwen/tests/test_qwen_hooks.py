"""Each hook of the Qwen plugin answers for Qwen models and returns None for others."""

from __future__ import annotations

from mlxhost.plugins import make_plugin_manager
from mlxhost.types import ModelInfo, ModelSpec, RenderedPrompt
from mlxhost_qwen import plugin
from mlxhost_qwen.tools import make_parser

QWEN = ModelInfo(spec=ModelSpec(id="q", family="qwen"), config={"model_type": "qwen3_vl"})
GEMMA = ModelInfo(spec=ModelSpec(id="g", family="gemma"), config={"model_type": "gemma3"})
MESSAGES = [{"role": "user", "content": "hi"}]


def test_register_models_registers_only_qwen_models():
    calls = []
    plugin.mlxhost_register_models(lambda model_id, **kw: calls.append((model_id, kw)))
    assert calls and all(kw["family"] == "qwen" for _, kw in calls)


def test_model_family():
    assert plugin.mlxhost_model_family({"model_type": "qwen2"}) == "qwen"
    assert plugin.mlxhost_model_family({"model_type": "gemma3"}) is None


def test_render_prompt():
    rendered = plugin.mlxhost_render_prompt(QWEN, MESSAGES, None, None)
    assert isinstance(rendered, RenderedPrompt) and "<|im_start|>user\nhi" in rendered.text
    assert plugin.mlxhost_render_prompt(GEMMA, MESSAGES, None, None) is None


def test_tool_call_parser():
    assert plugin.mlxhost_tool_call_parser(QWEN) is make_parser
    assert plugin.mlxhost_tool_call_parser(GEMMA) is None


def test_hooks_through_the_plugin_manager():
    pm = make_plugin_manager()
    assert pm.hook.mlxhost_tool_call_parser(model=QWEN) is make_parser
    rendered = pm.hook.mlxhost_render_prompt(
        model=QWEN, messages=MESSAGES, tools=None, tool_choice=None
    )
    assert rendered.text.endswith("<|im_start|>assistant\n")
