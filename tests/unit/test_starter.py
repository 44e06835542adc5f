"""``mlxhost.starter``: what ``serve --model auto`` picks, without downloading anything."""

from __future__ import annotations

import json
from pathlib import Path

import mlxhost.starter as starter
from mlxhost.starter import builder


def test_old_module_re_exports_the_builder():
    from mlxhost.testing import models as old

    assert old.ensure_test_model is builder.ensure_test_model is builder.ensure_model
    assert old.TEST_MODELS is builder.TEST_MODELS
    assert old.TestModelSpec is builder.StarterModelSpec
    assert old.install_into_hf_cache is builder.install_into_hf_cache
    assert old.main is builder.main


def test_chat_template_ships_with_the_starter_package():
    template = builder.TEST_MODELS["gemma"].chat_template
    assert template.is_file()
    assert template.parent == Path(starter.__file__).parent / "data"


def test_help_builds_nothing(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MLXHOST_TEST_MODELS", str(tmp_path / "cache"))
    assert builder.main(["--help"]) == 0
    assert "qwen" in capsys.readouterr().out
    assert not (tmp_path / "cache").exists()
    assert builder.main(["nope"]) == 2


def test_seed_model_when_the_hub_is_reachable(monkeypatch):
    monkeypatch.setattr("mlxhost.runtime.locate.cached_config_path", lambda repo: None)
    monkeypatch.setattr(starter, "hub_reachable", lambda: True)
    monkeypatch.setattr(builder, "ensure_model", _must_not_build)
    assert starter.choose_startup_model() == starter.SEED_ALIAS


def test_offline_builds_and_installs_the_starter_model(monkeypatch, tmp_path):
    from huggingface_hub import constants

    folder = tmp_path / "built"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    built = []

    def ensure_model(name, log=print):
        built.append(name)
        return folder

    hub = tmp_path / "hub"
    monkeypatch.setattr("mlxhost.runtime.locate.cached_config_path", lambda repo: None)
    monkeypatch.setattr(starter, "hub_reachable", lambda: False)
    monkeypatch.setattr(builder, "ensure_model", ensure_model)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))

    repo_id = starter.choose_startup_model()

    assert repo_id == builder.TEST_MODELS["qwen"].repo_id
    assert built == ["qwen"]
    assert (hub / ("models--" + repo_id.replace("/", "--")) / "refs" / "main").is_file()


def test_hub_offline_means_unreachable(monkeypatch):
    monkeypatch.setattr("mlxhost.runtime.locate.hub_offline", lambda: True)
    assert starter.hub_reachable() is False


def _must_not_build(*args, **kwargs):
    raise AssertionError("built a model although the seed model is available")
