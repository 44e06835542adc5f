"""``mlxhost.models.starter``: what ``serve --model auto`` picks, without downloading anything."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

import pytest

import mlxhost.models.starter as starter
from mlxhost.models.starter import builder, child


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
    monkeypatch.setattr("mlxhost.models.locate.cached_config_path", lambda repo: None)
    monkeypatch.setattr(starter, "hub_reachable", lambda: True)
    monkeypatch.setattr(builder, "ensure_model", _must_not_build)
    monkeypatch.setattr(child, "ensure_model_in_child", _must_not_build)
    assert starter.choose_startup_model() == starter.SEED_ALIAS


def test_offline_builds_and_installs_the_starter_model(monkeypatch, tmp_path):
    from huggingface_hub import constants

    folder = tmp_path / "built"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    built = []

    def ensure_model_in_child(name, log=print):
        built.append(name)
        return folder

    hub = tmp_path / "hub"
    monkeypatch.setattr("mlxhost.models.locate.cached_config_path", lambda repo: None)
    monkeypatch.setattr(starter, "hub_reachable", lambda: False)
    monkeypatch.setattr(child, "ensure_model_in_child", ensure_model_in_child)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))

    repo_id = starter.choose_startup_model()

    assert repo_id == builder.TEST_MODELS["qwen"].repo_id
    assert built == ["qwen"]
    assert (hub / ("models--" + repo_id.replace("/", "--")) / "refs" / "main").is_file()


def test_hub_offline_means_unreachable(monkeypatch):
    monkeypatch.setattr("mlxhost.models.locate.hub_offline", lambda: True)
    assert starter.hub_reachable() is False


def _must_not_build(*args, **kwargs):
    raise AssertionError("built a model although the seed model is available")


# The child's build, faked: what the real one needs (torch, for the GGUF conversion)
# and what it does (progress lines, a finished folder), in seconds instead of minutes.
FAKE_BUILD = """\
import importlib.util, json

def _build(spec, out, log):
    if importlib.util.find_spec("torch") is None:  # as transformers' GGUF loading needs it
        raise ModuleNotFoundError("import of torch halted; None in sys.modules")
    log(f"building model {spec.name!r} into {out}")
    log("[gguf-convert    0.0s] importing torch and transformers")
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
"""


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_auto_builds_the_starter_in_a_child_where_torch_is_allowed(monkeypatch, tmp_path, caplog):
    """Issue 37: ``serve`` hides torch, then ``--model auto`` built the starter model
    in-process and its GGUF conversion died importing torch. The build runs in a
    child process now, its lines in this process's log."""
    from huggingface_hub import constants

    from mlxhost.cli.lean_imports import hide_torch

    fake = tmp_path / "fake"
    fake.mkdir()
    # In the child: a sitecustomize puts the fake in place before the builder runs.
    (fake / "sitecustomize.py").write_text(
        FAKE_BUILD + "from mlxhost.models.starter import builder\nbuilder._build = _build\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MLXHOST_TEST_MODELS", str(tmp_path / "models"))
    namespace: dict = {}
    exec(FAKE_BUILD, namespace)
    monkeypatch.setattr(builder, "_build", namespace["_build"])  # and here, were it built here
    hub = tmp_path / "hub"
    monkeypatch.setattr("mlxhost.models.locate.cached_config_path", lambda repo: None)
    monkeypatch.setattr(starter, "hub_reachable", lambda: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert hide_torch()  # as `mlxhost serve` does before anything else

    with caplog.at_level(logging.INFO, logger="mlxhost.models.starter"):
        repo_id = starter.choose_startup_model()

    spec = builder.TEST_MODELS["qwen"]
    assert repo_id == spec.repo_id
    assert builder.is_finished(tmp_path / "models" / spec.folder_name)
    snapshot = hub / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    assert [p.name for p in next(snapshot.iterdir()).iterdir()] == ["config.json"]
    logged = [r.getMessage() for r in caplog.records if r.name == "mlxhost.models.starter"]
    assert "[gguf-convert    0.0s] importing torch and transformers" in logged
    assert any(line.startswith("model ready: ") for line in logged)
    assert sys.modules["torch"] is None  # still hidden here


def test_a_failed_child_build_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("MLXHOST_TEST_MODELS", str(tmp_path / "models"))
    monkeypatch.setattr(
        child, "builder_command",
        lambda name: [sys.executable, "-c", "print('pip download: no network'); raise SystemExit(3)"],
    )
    lines: list[str] = []
    with pytest.raises(child.StarterBuildFailed, match="exit status 3.*no network"):
        child.ensure_model_in_child("qwen", lines.append)
    assert lines == ["pip download: no network"]
