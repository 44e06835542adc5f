"""The plugin system: hooks, entry points, registry, listing."""

from __future__ import annotations

import ast
import inspect
import json
import re
from pathlib import Path

import pluggy
import pytest

from mlxhost.cli.main import main
from mlxhost.core.errors import ModelNotFound
from mlxhost.core.types import ModelInfo, ModelSpec
from mlxhost.families import hookspecs
from mlxhost.families.builtin.config_context import context_window_from_config
from mlxhost.families.hookspecs import hookimpl
from mlxhost.families.plugins import describe_plugins, make_plugin_manager
from mlxhost.models.registry import ModelRegistry, RegistrationError
from mlxhost.settings.table import Settings

ROOT = Path(__file__).parents[2]
DOCS = ROOT / "docs" / "plugins.md"
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
    params = ", ".join(f"{name}: {p.annotation}" for name, p in signature.parameters.items())
    expected = f"def {hook}({params}) -> {signature.return_annotation}"
    assert expected in DOCS.read_text(), expected


def _test_functions(source: str) -> list[str]:
    """The source of each test function (module level or in a Test class)."""
    tree = ast.parse(source)
    return [
        ast.get_source_segment(source, node) or ""
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name.startswith("test_")
    ]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_called_by_a_test(hook):
    files = [*ROOT.glob("tests/**/test_*.py"), *ROOT.glob("plugins/*/tests/test_*.py")]
    files.append(ROOT / "src" / "mlxhost" / "testing" / "plugin_kit.py")
    bodies = [body for path in files for body in _test_functions(path.read_text())]
    testers = [body for body in bodies if hook in body]
    assert testers, f"no test function mentions {hook}"


def test_registry_records_sources_and_aliases():
    registry = ModelRegistry(make_plugin_manager())
    gemma = registry.resolve_spec("gemma")
    assert gemma.id == "mlx-community/gemma-3-4b-it-4bit"
    assert gemma.source == "gemma" and gemma.family == "gemma"
    assert {"vision", "tools"} <= gemma.capabilities
    info = registry.resolve("gemma")
    assert isinstance(info, ModelInfo) and info.spec == gemma
    # Not downloaded: the window the plugin declared.
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
    # A folder named at start-up (--model PATH) resolves by the path given.
    info = ModelRegistry(make_plugin_manager(), extra_models=[str(tmp_path)]).resolve(str(tmp_path))
    assert info.family == "qwen" and info.spec.path == tmp_path.resolve()
    assert info.path == tmp_path.resolve() and info.model_type == "qwen2"


def test_a_request_cannot_name_a_folder_it_was_not_given(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(ModelNotFound):
        ModelRegistry(make_plugin_manager()).resolve(str(tmp_path))
    opened = ModelRegistry(make_plugin_manager(), Settings(allow_model_paths=True))
    assert opened.resolve(str(tmp_path)).family == "qwen"


def test_models_dir_serves_subfolders_by_name_and_never_follows_links_out(tmp_path):
    root, outside = tmp_path / "models", tmp_path / "outside"
    for folder in (root / "mine", outside):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (root / "link").symlink_to(outside)
    registry = ModelRegistry(make_plugin_manager(), Settings(models_dirs=[str(root)]))
    assert registry.resolve("mine").path == (root / "mine").resolve()
    for name in ("link", "../outside", str(root / "mine"), "~", "mine/../link"):
        with pytest.raises(ModelNotFound):
            registry.resolve(name)
    assert "mine" in {s.id for s in registry.all_specs()}
    assert "link" not in {s.id for s in registry.all_specs()}


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
    for family, config, window in (
        (
            "gemma",
            {"model_type": "gemma3", "text_config": {"max_position_embeddings": 131072}},
            131072,
        ),
        (
            "qwen",
            {"model_type": "qwen3_vl", "text_config": {"max_position_embeddings": 262144}},
            262144,
        ),
    ):
        spec = ModelSpec(id="x", family=family)
        assert pm.hook.mlxhost_context_limit(spec=spec, config=config) == window


def test_the_registry_resolves_the_context_window_once_from_the_config(tmp_path):
    config = {"model_type": "qwen3_vl", "text_config": {"max_position_embeddings": 262144}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    registry = ModelRegistry(make_plugin_manager(), extra_models=[str(tmp_path)])
    info = registry.resolve(str(tmp_path))
    assert info.context_window == 262144 and info.family == "qwen"
    assert registry.resolve(str(tmp_path)) is info
    overridden = ModelRegistry(
        make_plugin_manager(), Settings(context_window=8192), extra_models=[str(tmp_path)]
    )
    assert overridden.resolve(str(tmp_path)).context_window == 8192


def test_family_hook_per_model_type():
    pm = make_plugin_manager()
    assert pm.hook.mlxhost_model_family(config={"model_type": "gemma3_text"}) == "gemma"
    assert pm.hook.mlxhost_model_family(config={"model_type": "qwen3_vl"}) == "qwen"
    # Architectures no family plugin claims: the built-in generic family, when
    # mlx-lm or mlx-vlm can load them.
    assert pm.hook.mlxhost_model_family(config={"model_type": "llama"}) == "generic"
    assert pm.hook.mlxhost_model_family(config={"model_type": "no_such_arch"}) is None


def test_plugins_command_lists_versions_and_hooks(capsys):
    assert main(["plugins", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["mlxhost-qwen"]["version"] == "0.1.0"
    assert "mlxhost_register_models" in rows["mlxhost-qwen"]["hooks"]
    assert re.match(r"\d+\.\d+", rows["mlxhost.families.builtin.generic_family"]["version"])


def test_disabled_plugins_from_the_environment(monkeypatch, capsys):
    from mlxhost.api.app import create_app

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
    registry = ModelRegistry(make_plugin_manager(), Settings(allow_model_paths=True))
    calls = []
    original = json.loads
    monkeypatch.setattr(
        "mlxhost.models.registry.json.loads", lambda text: calls.append(1) or original(text)
    )
    first = registry.resolve(str(tmp_path))
    # Once for the spec (family) and the facts together; never again per request.
    assert len(calls) == 1
    for _ in range(3):
        assert registry.resolve(str(tmp_path)) is first
    assert len(calls) == 1


def test_make_engine_hook_picks_the_first_engine_and_falls_back_to_mlx():
    from mlxhost.engine.mlx_engine import MLXEngine
    from mlxhost.testing.fake_engine import FakeEngine, FakeEnginePlugin

    settings = Settings()
    fake = make_plugin_manager(load_entrypoints=False, extra=[FakeEnginePlugin()])
    assert isinstance(fake.hook.mlxhost_make_engine(settings=settings), FakeEngine)
    default = make_plugin_manager(load_entrypoints=False)
    assert isinstance(default.hook.mlxhost_make_engine(settings=settings), MLXEngine)
