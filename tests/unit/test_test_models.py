"""The test-model cache plumbing, without downloading or converting anything."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from mlxhost.models.starter import builder as models
from mlxhost.models.starter.builder import (
    TEST_MODELS,
    ensure_built,
    install_into_hf_cache,
    is_finished,
    models_cache_dir,
)
from mlxhost.testing.live import wait_until


def make_fake_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    (folder / "tokenizer_config.json").write_text("{}")
    (folder / models.BUILD_MARKER).write_text("{}")
    return folder


def test_specs_name_their_repo_and_folder():
    assert TEST_MODELS["qwen"].repo_id == "mlxhost-test/Qwen2.5-Coder-0.5B-Instruct-fp32"
    assert TEST_MODELS["gemma"].repo_id == "mlxhost-test/gemma-3-270m-fp32"
    assert TEST_MODELS["gemma"].eos_token_ids == (1, 106)
    assert TEST_MODELS["gemma"].chat_template.is_file()
    assert TEST_MODELS["qwen"].chat_template is None  # keeps the GGUF's own


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MLXHOST_TEST_MODELS", str(tmp_path))
    assert models_cache_dir() == tmp_path
    monkeypatch.delenv("MLXHOST_TEST_MODELS")
    assert models_cache_dir() == Path.home() / ".cache" / "mlxhost" / "test-models"


# --- install_into_hf_cache ---------------------------------------------------


def test_hf_cache_layout_uses_links(tmp_path):
    model = make_fake_model(tmp_path / "model")
    hub = tmp_path / "hub"

    snapshot = install_into_hf_cache(model, "org/name", hub)

    repo = hub / "models--org--name"
    commit = (repo / "refs" / "main").read_text()
    assert snapshot == repo / "snapshots" / commit
    assert len(commit) == 40
    names = sorted(p.name for p in snapshot.iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer_config.json"]  # no marker
    weights = snapshot / "model.safetensors"
    assert weights.is_symlink() and weights.resolve() == (model / "model.safetensors").resolve()


def test_snapshot_download_finds_it_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    model = make_fake_model(tmp_path / "model")
    hub = tmp_path / "hub"
    snapshot = install_into_hf_cache(model, "org/name", hub)

    found = snapshot_download("org/name", cache_dir=hub, local_files_only=True)
    assert Path(found) == snapshot
    config = try_to_load_from_cache("org/name", "config.json", cache_dir=hub)
    assert Path(config) == snapshot / "config.json"


def test_reinstall_is_idempotent_and_tracks_changes(tmp_path):
    model = make_fake_model(tmp_path / "model")
    hub = tmp_path / "hub"
    first = install_into_hf_cache(model, "org/name", hub)
    assert install_into_hf_cache(model, "org/name", hub) == first

    (model / "model.safetensors").write_bytes(b"\0" * 128)  # a rebuilt model
    second = install_into_hf_cache(model, "org/name", hub)
    assert second != first
    assert (hub / "models--org--name" / "refs" / "main").read_text() == second.name


def test_empty_model_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        install_into_hf_cache(tmp_path / "empty", "org/name", tmp_path / "hub")


# --- ensure_built: atomic, locked builds ---------------------------------------


def write_files(out: Path) -> None:
    out.mkdir()
    (out / "config.json").write_text("{}")


def test_builds_once_then_reuses(tmp_path):
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        write_files(out)

    first = ensure_built(tmp_path, "m", build, log=lambda _: None)
    second = ensure_built(tmp_path, "m", build, log=lambda _: None)
    assert first == second == tmp_path / "m"
    assert len(calls) == 1
    assert calls[0] != first  # built elsewhere, then renamed into place
    assert is_finished(first)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.lock", "m"]  # no work dirs left


def test_failed_build_leaves_nothing_that_looks_finished(tmp_path):
    def broken(out: Path) -> None:
        write_files(out)
        raise KeyboardInterrupt  # like a Ctrl-C halfway

    with pytest.raises(KeyboardInterrupt):
        ensure_built(tmp_path, "m", broken, log=lambda _: None)
    assert not (tmp_path / "m").exists()
    assert not list(tmp_path.glob(".m.build-*"))

    ensure_built(tmp_path, "m", write_files, log=lambda _: None)
    assert is_finished(tmp_path / "m")


def test_unfinished_folder_and_stale_work_dirs_are_replaced(tmp_path):
    (tmp_path / "m").mkdir()  # e.g. copied by hand, no marker
    (tmp_path / ".m.build-killed").mkdir()  # a build killed with SIGKILL
    ensure_built(tmp_path, "m", write_files, log=lambda _: None)
    assert is_finished(tmp_path / "m")
    assert not (tmp_path / ".m.build-killed").exists()


def _build_in_child(cache: str, log_path: str, release_path: str) -> None:
    def build(out: Path) -> None:
        with open(log_path, "a") as log:
            log.write(f"start {os.getpid()}\n")
        # Hold the lock until the parent has seen the other process queue up behind it.
        wait_until(lambda: os.path.exists(release_path), what="the parent's go-ahead")
        write_files(out)
        with open(log_path, "a") as log:
            log.write(f"end {os.getpid()}\n")

    ensure_built(Path(cache), "m", build, log=lambda _: None)


def _flocks(lock: Path) -> tuple[int, int] | None:
    """(holders, blocked waiters) of ``flock`` on ``lock``, from Linux's ``/proc/locks``;
    None where that table is missing or does not show our lock."""
    try:
        table = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    inode = f":{lock.stat().st_ino} "
    ours = [line for line in table if inode in line]
    holders = sum(1 for line in ours if "->" not in line)
    return (holders, len(ours) - holders) if holders else None


def test_concurrent_processes_build_once(tmp_path):
    log_path = tmp_path / "builds.log"
    release = tmp_path / "release"
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_build_in_child, args=(str(cache), str(log_path), str(release)))
        for _ in range(2)
    ]
    procs[0].start()
    wait_until(lambda: log_path.exists() and "start" in log_path.read_text(), what="the first build")
    procs[1].start()
    lock = cache / ".m.lock"
    if _flocks(lock) is not None:  # Linux: see the second process blocked on the lock
        wait_until(lambda: _flocks(lock) == (1, 1), what="the second process waiting on the lock")
    release.touch()
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    lines = log_path.read_text().split()
    assert lines.count("start") == 1 and lines.count("end") == 1
    assert is_finished(cache / "m")


# --- gguf_convert's pure steps (no torch, no conversion) ----------------------


def test_convert_gguf_checks_paths_before_heavy_work(tmp_path):
    from mlxhost.models.gguf_convert import convert_gguf

    with pytest.raises(FileNotFoundError):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out", log=lambda _: None)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError):
        convert_gguf(gguf, tmp_path / "out", log=lambda _: None)


def test_chat_template_from_file_or_text(tmp_path):
    from mlxhost.models.gguf_convert import _read_template

    text = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    path = tmp_path / "t.jinja"
    path.write_text(text)
    assert _read_template(path) == text
    assert _read_template(str(path)) == text
    assert _read_template(text) == text
    with pytest.raises(FileNotFoundError):
        _read_template(str(tmp_path / "typo.jinja"))


def test_template_and_eos_written_into_model_folder(tmp_path):
    from mlxhost.models.gguf_convert import _set_eos_token_ids, _write_chat_template

    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 1, "model_type": "x"}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))

    _write_chat_template(tmp_path, "TEMPLATE {{ x }}")
    _set_eos_token_ids(tmp_path, (1, 106))

    assert (tmp_path / "chat_template.jinja").read_text() == "TEMPLATE {{ x }}"
    tok = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert tok == {"eos_token": "<eos>", "chat_template": "TEMPLATE {{ x }}"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config == {"eos_token_id": [1, 106], "model_type": "x"}
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation == {"eos_token_id": [1, 106]}
