"""``--max-batch auto`` is measured once per (model, weights policy, device, MLX
stack) and read back on later starts (issue 37: the measurement was 47 s of a
189 s cold start on an H100). No GPU here: the engine is told it runs on CUDA and
the measurement is a stand-in that counts its calls."""

from __future__ import annotations

import json
import os

import pytest

from mlxhost.engine import batch, kernels
from mlxhost.engine.batch_probe import BatchProbeCache
from mlxhost.engine.kernels import KernelChoice
from mlxhost.engine.loading import KVFormat, LoadedModel
from mlxhost.engine.mlx_engine import MLXEngine
from mlxhost.models.registry import folder_info

KEY = {"model": "m", "weights_policy": "as-is", "device": "cuda: H100", "mlx": "0.32.4"}


def test_a_measurement_is_read_back_for_the_same_key_only(tmp_path):
    cache = BatchProbeCache(tmp_path / "probe")
    assert cache.get(KEY) is None
    assert not (tmp_path / "probe").exists()  # a look-up writes nothing
    kept = cache.put(KEY, 16, "1: 100 tok/s, 16: 900")
    assert kept is not None and kept.parent == tmp_path / "probe"
    found = BatchProbeCache(tmp_path / "probe").get(dict(reversed(list(KEY.items()))))  # order is no part of it
    assert found is not None and (found.size, found.rates) == (16, "1: 100 tok/s, 16: 900")
    for field, other in (("weights_policy", "bf16"), ("device", "cuda: H200"), ("mlx", "0.33.0")):
        assert cache.get({**KEY, field: other}) is None


def test_an_unreadable_record_is_measured_again(tmp_path):
    cache = BatchProbeCache(tmp_path)
    path = cache.put(KEY, 8, "r")
    assert path is not None
    path.write_text("{not json")
    assert cache.get(KEY) is None
    path.write_text(json.dumps({"key": {**KEY, "mlx": "other"}, "size": 8, "rates": "r", "measured_at": "t"}))
    assert cache.get(KEY) is None  # a record of another key under this name
    path.write_text(json.dumps({"key": KEY, "size": 0, "rates": "r", "measured_at": "t"}))
    assert cache.get(KEY) is None
    assert cache.put(KEY, 4, "r2") == path and cache.get(KEY).size == 4  # type: ignore[union-attr]


def test_an_unwritable_folder_is_not_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert BatchProbeCache(blocker / "probe").put(KEY, 8, "r") is None


@pytest.fixture
def on_cuda(monkeypatch):
    """The engine believes it runs on CUDA; each measurement is counted."""
    measured: list[int] = []

    def choose(step_seconds, cap=batch.AUTO_BATCH_CAP, gain=batch.AUTO_BATCH_GAIN):
        measured.append(cap)
        return 16, "1: 100 tok/s, 2: 150, 4: 300, 8: 600, 16: 900, 32: 950"

    monkeypatch.setattr(kernels, "backend", lambda: "cuda")
    monkeypatch.setattr(batch, "choose_batch_size", choose)
    return measured


def model_folder(path):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    (path / "model.safetensors").write_bytes(b"\0" * 64)
    return folder_info(path)


def engine_with(probe_dir, weights="as-is") -> MLXEngine:
    """An engine as ``load`` leaves it just before the batch size is chosen."""
    engine = MLXEngine(max_batch=0, batch_probe_dir=probe_dir, prefix_cache_bytes=0)
    engine.loaded = LoadedModel(
        id="m", model=object(), is_vlm=False, processor=None, tokenizer=None, detokenizer_source=None,
        eos=set(), vocab_size=0, kernels=KernelChoice(weights=weights, flat_qmm=True, reason="test"),
        kv=KVFormat(None, {}, "full precision"), sharded=None, weight_bytes=0, thread=0,
    )
    return engine


def test_the_engine_measures_on_the_first_start_and_remembers(tmp_path, on_cuda):
    info = model_folder(tmp_path / "model")
    probe_dir = tmp_path / "probe"

    first = engine_with(probe_dir)
    assert first._remembered_batch_size(info) is None
    size, choice = first._choose_batch_size(info)
    assert (size, on_cuda) == (16, [batch.AUTO_BATCH_CAP])
    assert choice.startswith("auto, measured in")

    second = engine_with(probe_dir)  # the next start
    size, choice = second._remembered_batch_size(info)  # type: ignore[misc]
    assert size == 16 and choice.startswith("auto, measured 20") and "16: 900" in choice
    assert len(on_cuda) == 1  # not measured again

    assert engine_with(probe_dir, weights="bf16")._remembered_batch_size(info) is None
    weights = info.path / "model.safetensors"  # type: ignore[operator]
    weights.write_bytes(b"\0" * 128)  # the model changed on disk
    os.utime(weights, ns=(1, 1))
    assert engine_with(probe_dir)._remembered_batch_size(info) is None


def test_nothing_is_kept_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels, "backend", lambda: "cpu")
    info = model_folder(tmp_path / "model")
    engine = engine_with(tmp_path / "probe")
    assert engine._remembered_batch_size(info) is None
    assert engine._choose_batch_size(info) == (batch.AUTO_BATCH, f"auto: {batch.AUTO_BATCH} on CPU")
    assert not (tmp_path / "probe").exists()
