"""Chat facts read from a model's files (templates, tool path, capabilities), the
architectures mlx-lm / mlx-vlm load, and a family that overrides only its quirks."""

from __future__ import annotations

import json

import pytest

from mlxhost.core.architectures import loader_for
from mlxhost.core.domain import FunctionTool
from mlxhost.core.types import (
    FIM,
    TOOL_PATH_DEFAULT,
    TOOL_PATH_TEMPLATE,
    TOOL_PATH_UNPARSED,
    TOOLS,
    LoadedModel,
)
from mlxhost.families.builtin.generic_family import render
from mlxhost.families.chat_facts import read_chat_facts
from mlxhost.families.family import Family, FamilyPlugin
from mlxhost.families.plugins import make_plugin_manager
from mlxhost.families.toolcalls import ContentOnlyParser
from mlxhost.models.registry import ModelRegistry
from mlxhost.testing.plugin_kit import messages_from_openai

JSON_TOOLS = '{% for t in tools %}<tool_call>{{ tool_call.name }}{% endfor %}{{ messages[-1].content }}'


def folder_with(tmp_path, config=None, **files):
    folder = tmp_path / "m"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or {"model_type": "llama"}))
    for name, value in files.items():
        text = value if isinstance(value, str) else json.dumps(value)
        (folder / name.replace("__", ".")).write_text(text)
    return folder


def test_named_templates_and_tool_use_as_transformers_picks_them(tmp_path):
    folder = folder_with(tmp_path, tokenizer_config__json={"chat_template": [
        {"name": "default", "template": "{{ messages[0].content }}"},
        {"name": "tool_use", "template": JSON_TOOLS}]})
    facts = read_chat_facts(folder, {"model_type": "llama"})
    assert facts.template_for(False) == "{{ messages[0].content }}"
    assert facts.template_for(True) == JSON_TOOLS
    assert (facts.tool_format, facts.tool_path) == ("json_tools", TOOL_PATH_TEMPLATE)


def test_template_files_in_transformers_order(tmp_path):
    folder = folder_with(tmp_path, tokenizer_config__json={"chat_template": "config"},
                         chat_template__json={"chat_template": "processor"})
    assert read_chat_facts(folder, {}).templates["default"] == "processor"
    (folder / "chat_template.jinja").write_text("jinja")
    facts = read_chat_facts(folder, {})
    assert (facts.template, facts.template_file) == ("jinja", "chat_template.jinja")


def test_tool_paths_and_capabilities(tmp_path):
    no_tools = read_chat_facts(folder_with(tmp_path, chat_template__jinja="{{ messages }}"), {})
    assert (no_tools.tool_format, no_tools.tool_path) == ("default", TOOL_PATH_DEFAULT)
    assert TOOLS in no_tools.capabilities
    harmony = read_chat_facts(folder_with(tmp_path, chat_template__jinja="{{ tools }}<|channel|>"), {})
    assert (harmony.tool_format, harmony.tool_path) == (None, TOOL_PATH_UNPARSED)
    assert TOOLS not in harmony.capabilities and "reasoning" in harmony.capabilities
    (tmp_path / "m" / "chat_template.jinja").unlink()
    fim = read_chat_facts(folder_with(tmp_path, tokenizer_config__json={"added_tokens_decoder": {
        str(i): {"content": t} for i, t in enumerate(["<fim_prefix>", "<fim_suffix>", "<fim_middle>"])}}), {})
    assert fim.template is None and fim.capabilities == frozenset({FIM})
    assert read_chat_facts(None, {"model_type": "qwen3_vl", "vision_config": {}}).vision


def test_architectures_from_the_installed_libraries():
    assert loader_for({"model_type": "mistral"}) == "mlx-lm"  # remapped to llama
    assert loader_for({"model_type": "qwen3_vl", "vision_config": {}}) == "mlx-vlm"
    assert loader_for({"model_type": "no_such_arch"}) is None
    assert loader_for({}) is None


class Tokenizer:
    def apply_chat_template(self, messages, tools=None, chat_template=None, **_):
        from mlxhost.families.templating import render_chat_template

        return render_chat_template(chat_template, messages, tools=tools)


def test_a_family_that_declares_only_its_quirks_gets_the_rest_from_the_generic_family(tmp_path):
    """A family plugin is an override: this one only adds a FIM format."""
    mine = Family(name="mine", model_types=frozenset({"llama"}),
                  fim=lambda model, prefix, suffix: f"<pre>{prefix}<suf>{suffix}<mid>")
    pm = make_plugin_manager(extra=[FamilyPlugin(mine)])
    folder = folder_with(tmp_path, chat_template__jinja="{% for m in messages %}[{{ m.role }}]"
                         "{{ m.content }}{% endfor %}")
    registry = ModelRegistry(pm, extra_models=[str(folder)])
    info = registry.resolve(str(folder))
    assert info.family == "mine" and info.chat.tool_path == TOOL_PATH_DEFAULT
    model = LoadedModel(info=info, tokenizer=Tokenizer(), tool_parser=lambda t: ContentOnlyParser(),
                        loaded_at=0)
    tool = FunctionTool(name="f", parameters={"type": "object", "properties": {}})
    rendered = pm.hook.mlxhost_render_prompt(
        model=model, messages=messages_from_openai([{"role": "user", "content": "hi"}]),
        tools=(tool,), tool_choice="required", template_variables={})
    # The generic family rendered it: the default tool format and the forced-call line.
    assert rendered.text.startswith("[system]# Tools") and "[user]hi" in rendered.text
    assert "You must call at least one" in rendered.text
    assert pm.hook.mlxhost_tool_call_grammar(model=info, tools=(tool,), tool_choice="required")
    parser = pm.hook.mlxhost_tool_call_parser(model=info)((tool,))
    events = parser.feed('<tool_call>{"name": "f", "arguments": {}}</tool_call>') + parser.finish()
    assert [e.call.name for e in events if hasattr(e, "call")] == ["f"]
    assert pm.hook.mlxhost_fim_prompt(model=model, prefix="a", suffix="b") == "<pre>a<suf>b<mid>"


def test_render_without_a_template_is_a_clear_400(tmp_path):
    from mlxhost.core.errors import InvalidRequest

    folder = folder_with(tmp_path)
    info = ModelRegistry(make_plugin_manager(), extra_models=[str(folder)]).resolve(str(folder))
    model = LoadedModel(info=info, tokenizer=None, tool_parser=lambda t: ContentOnlyParser(), loaded_at=0)
    with pytest.raises(InvalidRequest, match="has no chat template"):
        render(model, messages_from_openai([{"role": "user", "content": "hi"}]), (), "auto")


def test_a_checkpoint_that_names_its_tool_parser_is_believed(tmp_path):
    folder = folder_with(tmp_path, chat_template__jinja="{{ tools }}",
                         tokenizer_config__json={"tool_parser_type": "pythonic"})
    facts = read_chat_facts(folder, {})
    assert (facts.tool_format, facts.tool_path) == ("pythonic", TOOL_PATH_TEMPLATE)
