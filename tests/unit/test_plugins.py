"""The plugin system: hooks, entry points, registry, listing."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pluggy
import pytest

from mlxhost import hookspecs
from mlxhost.cli import main
from mlxhost.default_plugins.config_context import context_window_from_config
from mlxhost.hookspecs import hookimpl
from mlxhost.plugins import describe_plugins, make_plugin_manager
from mlxhost.registry import ModelRegistry, RegistrationError
from mlxhost.types import ModelInfo, ModelSpec

DOCS = Path(__file__).parents[2] / "docs" / "plugins.md"
HOOKS = [name for name in dir(hookspecs) if name.startswith("mlxhost_")]


def test_entry_point_plugins_are_loaded():
    names = {row["name"] for row in describe_plugins(make_plugin_manager())}
    assert {"mlxhost-gemma", "mlxhost-qwen"} <= names


def test_disabled_plugins_are_skipped():
    names = {row["name"] for row in describe_plugins(make_plugin_manager(disabled=["gemma"]))}
    assert "mlxhost-gemma" not in names and "mlxhost-qwen" in names


def test_misspelled_hook_fails_loudly():
    class Typo:
        @hookimpl
        def mlxhost_render_promt(self, model):
            return None

    with pytest.raises(pluggy.PluginValidationError):
        make_plugin_manager(load_entrypoints=False, extra=[Typo()])


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_signature(hook):
    signature = inspect.signature(getattr(hookspecs, hook))
    params = ", ".join(
        f"{name}: {p.annotation}" for name, p in signature.parameters.items()
    )
    expected = f"def {hook}({params}) -> {signature.return_annotation}"
    assert expected in DOCS.read_text(), expected


def test_registry_records_sources_and_aliases():
    registry = ModelRegistry(make_plugin_manager())
    gemma = registry.resolve("gemma")
    assert gemma.id == "mlx-community/gemma-3-4b-it-4bit"
    assert gemma.source == "gemma" and gemma.family == "gemma"
    assert {"vision", "tools"} <= gemma.capabilities
    assert registry.resolve("qwen").context_window == 262144


def test_duplicate_registration_is_rejected():
    class Duplicate:
        @hookimpl
        def mlxhost_register_models(self, register):
            register("mine/model", aliases=["gemma"])

    pm = make_plugin_manager(extra=[Duplicate()])
    with pytest.raises(RegistrationError, match="gemma"):
        ModelRegistry(pm)


def test_local_folder_resolves_with_family_from_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    spec = ModelRegistry(make_plugin_manager()).resolve(str(tmp_path))
    assert spec.family == "qwen" and spec.path == tmp_path.resolve()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"max_position_embeddings": 32768}, 32768),
        ({"text_config": {"max_position_embeddings": 131072}}, 131072),
        ({"max_position_embeddings": 2048, "text_config": {"max_position_embeddings": 8}}, 2048),
        ({}, None),
    ],
)
def test_context_window_from_config(config, expected):
    assert context_window_from_config(config) == expected


def test_context_limit_hook_uses_reference_configs():
    pm = make_plugin_manager()
    # The real layout of both seed models: the window sits inside text_config.
    for config, window in (
        ({"model_type": "gemma3", "text_config": {"max_position_embeddings": 131072}}, 131072),
        ({"model_type": "qwen3_vl", "text_config": {"max_position_embeddings": 262144}}, 262144),
    ):
        info = ModelInfo(spec=ModelSpec(id="x"), config=config)
        assert pm.hook.mlxhost_context_limit(model=info) == window


def test_family_hook_per_model_type():
    pm = make_plugin_manager()
    assert pm.hook.mlxhost_model_family(config={"model_type": "gemma3_text"}) == "gemma"
    assert pm.hook.mlxhost_model_family(config={"model_type": "qwen3_vl"}) == "qwen"
    assert pm.hook.mlxhost_model_family(config={"model_type": "llama"}) is None


def test_plugins_command_lists_versions_and_hooks(capsys):
    assert main(["plugins", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["mlxhost-qwen"]["version"] == "0.1.0"
    assert "mlxhost_register_models" in rows["mlxhost-qwen"]["hooks"]
    assert re.match(r"\d+\.\d+", rows["mlxhost.default_plugins.chat_template"]["version"])


def test_disabled_plugins_from_the_environment(monkeypatch, capsys):
    from mlxhost.app import create_app
    from mlxhost.settings import Settings

    settings = Settings.from_env({"MLXHOST_DISABLED_PLUGINS": "gemma, nothing"})
    assert settings.disabled_plugins == ["gemma", "nothing"]
    registry = create_app(settings).state.registry
    assert registry.resolve("qwen").family == "qwen"
    with pytest.raises(Exception, match="gemma"):
        registry.resolve("gemma")
    monkeypatch.setenv("MLXHOST_DISABLED_PLUGINS", "qwen")
    assert main(["plugins", "--json"]) == 0
    names = {row["name"] for row in json.loads(capsys.readouterr().out)}
    assert "mlxhost-qwen" not in names and "mlxhost-gemma" in names


def test_discovered_models_parse_their_config_once(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    registry = ModelRegistry(make_plugin_manager())
    calls = []
    original = json.loads
    monkeypatch.setattr("mlxhost.registry.json.loads", lambda text: calls.append(1) or original(text))
    first = registry.resolve(str(tmp_path))
    assert registry.resolve(str(tmp_path)) is first
    assert len(calls) == 1
