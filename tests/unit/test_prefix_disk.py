"""The prefix cache's disk tier with fake caches (no MLX): files, header checks,
identity, budget, and spilling from the RAM tier."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import attrs
import pytest

from mlxhost.engine.prefix.cache import PrefixCache
from mlxhost.engine.prefix.disk import (
    CorruptEntry,
    DiskTier,
    Encoded,
    RawTensor,
    model_identity,
    read_header,
    usable_prefix,
    verify_checksum,
    write_safetensors,
)

IDENTITY = {"model": "m", "weights": "w1"}


@attrs.define
class FakeCache:
    """A cache of ``tokens`` (one byte each); trimmable unless ``rotated``."""

    tokens: list[int]
    rotated: bool = False


class FakeAdapter:
    def length(self, cache: FakeCache) -> int:
        return len(cache.tokens)

    def nbytes(self, cache: FakeCache) -> int:
        return 100 * len(cache.tokens)

    def can_trim(self, cache: FakeCache) -> bool:
        return not cache.rotated

    def trim(self, cache: FakeCache, n: int) -> None:
        del cache.tokens[len(cache.tokens) - n :]

    def copy(self, cache: FakeCache) -> FakeCache:
        return FakeCache(list(cache.tokens), cache.rotated)


class FakeCodec:
    def encode(self, cache: FakeCache) -> Encoded:
        data = bytes(t % 256 for t in cache.tokens)
        return Encoded({"t": RawTensor("U8", (len(data),), data)}, {"rotated": cache.rotated})

    def decode(self, path: Path, layout: dict) -> FakeCache:
        header = read_header(path)
        start, stop = header.tensors["t"]["data_offsets"]
        with open(path, "rb") as f:
            f.seek(header.data_start + start)
            data = f.read(stop - start)
        return FakeCache(list(data), layout["rotated"])


def tier(path: Path, max_bytes: int = 1 << 20) -> DiskTier:
    store = DiskTier(path, max_bytes, FakeCodec(), FakeAdapter())
    store.activate("m", IDENTITY)
    return store


def test_safetensors_round_trip_and_header_checks(tmp_path):
    path = tmp_path / "a.safetensors"
    size = write_safetensors(path, {"x": RawTensor("F32", (2,), b"\0" * 8)}, {"k": "v"})
    assert path.stat().st_size == size
    header = read_header(path)
    assert header.metadata["k"] == "v" and header.tensors["x"]["shape"] == [2]
    verify_checksum(path, header)
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError):  # shape and bytes disagree
        write_safetensors(path, {"x": RawTensor("F32", (3,), b"\0" * 8)}, {})

    data = path.read_bytes()
    path.write_bytes(data[:-3])
    with pytest.raises(CorruptEntry, match="truncated"):
        read_header(path)
    path.write_bytes(data[:-1] + b"\1")
    with pytest.raises(CorruptEntry, match="checksum"):
        verify_checksum(path, read_header(path))
    path.write_bytes(b"\xff" * 16)
    with pytest.raises(CorruptEntry):
        read_header(path)


def test_usable_prefix_matches_the_ram_rules():
    assert usable_prefix((1, 2, 3), False, (1, 2, 3, 4)) == 3
    assert usable_prefix((1, 2, 3), False, (1, 2, 3)) == 0  # one token must be left
    assert usable_prefix((1, 2, 3), True, (1, 2, 3)) == 2
    assert usable_prefix((1, 2, 9, 9), True, (1, 2, 3, 4)) == 2  # cut back to the common part
    assert usable_prefix((1, 2, 9, 9), False, (1, 2, 3, 4)) == 0
    assert usable_prefix((5,), True, (1, 2)) == 0


def test_spill_load_and_reload_after_a_restart(tmp_path):
    store = tier(tmp_path)
    assert store.spill("m", (1, 2, 3, 4), None, FakeCache([1, 2, 3, 4]))
    assert not store.spill("other", (1, 2), None, FakeCache([1, 2]))  # not the loaded model
    store.flush()
    entry, keep = store.nearest("m", (1, 2, 3, 7, 8), None)
    assert keep == 3
    assert store.load(entry, keep).tokens == [1, 2, 3]
    assert store.nearest("m", (1, 2, 3, 7), b"img") is None  # another extra key
    store.close()

    again = tier(tmp_path)  # a restart
    entry, keep = again.nearest("m", (1, 2, 3, 4, 5), None)
    assert keep == 4 and again.load(entry, keep).tokens == [1, 2, 3, 4]
    stats = again.stats()
    assert (stats.hits, stats.tokens_reused, stats.entries) == (1, 4, 1)
    again.close()


def test_a_longer_trimmable_entry_replaces_the_shorter(tmp_path):
    store = tier(tmp_path)
    store.spill("m", (1, 2), None, FakeCache([1, 2]))
    store.flush()
    store.spill("m", (1, 2, 3), None, FakeCache([1, 2, 3]))
    store.flush()
    assert not store.spill("m", (1, 2), None, FakeCache([1, 2]))  # covered
    assert store.stats().entries == 1
    rotated = FakeCache([1, 2, 3, 4], rotated=True)
    store.spill("m", (1, 2, 3, 4), None, rotated)
    store.flush()
    assert store.stats().entries == 2  # an untrimmable one covers nothing
    store.close()


def test_another_model_version_and_corrupt_files_are_rejected(tmp_path, caplog):
    store = tier(tmp_path)
    store.spill("m", (1, 2, 3), None, FakeCache([1, 2, 3]))
    store.spill("m", (4, 5, 6), None, FakeCache([4, 5, 6]))
    store.close()
    files = sorted(store.model_dir("m").glob("*.safetensors"))
    assert len(files) == 2

    caplog.set_level(logging.WARNING)
    newer = DiskTier(tmp_path, 1 << 20, FakeCodec(), FakeAdapter())
    newer.activate("m", {**IDENTITY, "weights": "w2"})
    assert newer.stats().entries == 0 and newer.stats().rejected == 2
    assert "another version of m (weights differ)" in caplog.text
    assert not any(f.exists() for f in files)
    newer.close()

    store = tier(tmp_path)
    store.spill("m", (1, 2, 3), None, FakeCache([1, 2, 3]))
    store.flush()
    (path,) = store.model_dir("m").glob("*.safetensors")
    entry, keep = store.nearest("m", (1, 2, 3, 4), None)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit: the header still parses
    path.write_bytes(bytes(data))
    assert store.load(entry, keep) is None
    assert "checksum" in caplog.text and not path.exists()
    assert store.nearest("m", (1, 2, 3, 4), None) is None
    store.close()


def test_the_budget_evicts_the_least_recently_used_file(tmp_path):
    probe = tier(tmp_path / "probe")
    probe.spill("m", (1,), None, FakeCache([1] * 10))
    probe.close()
    one = probe.stats().bytes
    store = tier(tmp_path / "lru", max_bytes=int(one * 2.5))
    for first in (1, 2, 3):
        store.spill("m", (first, *[0] * 9), None, FakeCache([first] + [0] * 9))
        store.flush()
    stats = store.stats()
    assert stats.evictions == 1 and stats.entries == 2 and stats.bytes <= store.max_bytes
    assert store.nearest("m", (1, *[0] * 9, 5), None) is None  # the oldest went
    assert not store.spill("m", tuple(range(10_000)), None, FakeCache(list(range(10_000))))
    assert store.stats().skipped == 1
    store.close()


def test_the_ram_tier_spills_evicted_and_unloaded_entries(tmp_path):
    store = tier(tmp_path)
    ram: PrefixCache = PrefixCache(
        FakeAdapter(), max_bytes=500, spill=lambda m, x, t, c: store.spill(m, t, x, c)
    )
    ram.insert("m", (1, 2, 3), FakeCache([1, 2, 3]))
    ram.insert("m", (7, 8, 9), FakeCache([7, 8, 9]))  # 600 bytes: (1, 2, 3) is evicted
    store.flush()
    assert store.nearest("m", (1, 2, 3, 4), None)[1] == 3
    ram.clear_model("m")
    store.flush()
    assert store.nearest("m", (7, 8, 9, 1), None)[1] == 3
    assert len(ram) == 0
    store.close()


def test_model_identity_changes_with_weights_and_tokenizer(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"1")
    (tmp_path / "tokenizer.json").write_text("{}")
    first = model_identity("m", tmp_path, mlx="0.1")
    assert first == model_identity("m", tmp_path, mlx="0.1")
    (tmp_path / "model.safetensors").write_bytes(b"22")
    second = model_identity("m", tmp_path, mlx="0.1")
    assert second["weights"] != first["weights"]
    (tmp_path / "tokenizer.json").write_text('{"a": 1}')
    assert model_identity("m", tmp_path, mlx="0.1")["tokenizer_template_config"] != second[
        "tokenizer_template_config"
    ]
    assert json.dumps(first)  # JSON-able: it goes into the file's metadata
