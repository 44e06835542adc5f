"""The prefix cache's disk tier: KV entries kept as safetensors files across swaps
and restarts (``--prefix-cache-dir``, ``--prefix-cache-disk-mib``).

Entries reach the disk when the RAM tier (``runtime.prefix_cache``) lets go of
them: evicted for its budget or for memory, and every entry of a model when it
is unloaded (a swap, idle unload, shutdown). A lookup the RAM tier cannot serve
as well as the disk can loads the file back (``DiskTier.nearest`` + ``load``).

One file per entry, ``DIR/<model>/<key>.safetensors``: the cache's arrays as
tensors, and in the safetensors metadata (strings) the entry's token key, its
layout (cache class and scalars per layer) and the **identity** of the model
that computed it (path, weight files' sizes and mtimes, dtype, MLX version,
tokenizer and template hashes; ``model_identity``). Files are only ever read
through checks: the header must parse and fit the file, the data must match
its checksum (blake2b, written with it), and the identity must equal the
loaded model's. A file that fails is deleted with a log line and never loaded:
another model version, a truncated write, a flipped bit.

Threads: MLX is not thread-safe, so the worker thread turns a cache into plain
bytes (``Codec.encode``: numpy copies) and a writer thread of this module writes
them (temp file + fsync-free rename, so a crash leaves either the old file or
none; stray temp files are removed at start). Reading back (``Codec.decode``)
runs on the worker. The budget is one LRU over every model's files (last use =
file mtime, so it survives restarts).

Nothing here imports MLX: the engine passes the MLX codec (``MLXCodec``, which
imports it lazily), tests pass fakes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs

log = logging.getLogger(__name__)

FORMAT = "mlxhost-prefix-v1"
SUFFIX = ".safetensors"
MAX_HEADER = 64 << 20  # a header larger than this is corrupt (token keys are ~10 bytes/token)
DTYPE_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2,
               "I8": 1, "U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1}


class CorruptEntry(ValueError):
    """A file that is not a whole, well-formed entry."""


@attrs.frozen
class RawTensor:
    """One tensor as plain bytes (C order)."""

    dtype: str  # safetensors dtype name: F32, BF16, ...
    shape: tuple[int, ...]
    data: bytes | memoryview


@attrs.frozen
class Encoded:
    """A cache as bytes: made on the worker thread, written by the writer thread."""

    tensors: dict[str, RawTensor]
    layout: Any  # JSON-able description the codec needs to rebuild the cache


class Codec(Protocol):
    def encode(self, cache: Any) -> Encoded:
        """The cache's arrays as bytes (runs on the MLX thread)."""

    def decode(self, path: Path, layout: Any) -> Any:
        """A cache from a checked file (runs on the MLX thread)."""


class Adapter(Protocol):
    """The part of ``prefix_cache.CacheAdapter`` this module uses."""

    def length(self, cache: Any) -> int: ...
    def can_trim(self, cache: Any) -> bool: ...
    def trim(self, cache: Any, num_tokens: int) -> None: ...


# -- safetensors, by hand (the writer thread must not touch MLX) --------------------


def write_safetensors(path: Path, tensors: Mapping[str, RawTensor], metadata: Mapping[str, str]) -> int:
    """Write a safetensors file atomically (temp file, then rename); returns its size.

    ``metadata`` gets a ``checksum`` of the data section added.
    """
    header: dict[str, Any] = {}
    offset = 0
    checksum = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        tensor = tensors[name]
        size = len(memoryview(tensor.data).cast("B"))
        expected = DTYPE_SIZES[tensor.dtype]
        for dim in tensor.shape:
            expected *= dim
        if size != expected:
            raise ValueError(f"tensor {name}: {size} bytes for shape {tensor.shape} {tensor.dtype}")
        header[name] = {"dtype": tensor.dtype, "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        checksum.update(tensor.data)
        offset += size
    header["__metadata__"] = {**metadata, "checksum": checksum.hexdigest()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(struct.pack("<Q", len(raw)))
            out.write(raw)
            for name in sorted(tensors):
                out.write(tensors[name].data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return 8 + len(raw) + offset


@attrs.frozen
class Header:
    metadata: dict[str, str]
    tensors: dict[str, dict[str, Any]]
    data_start: int
    size: int  # the file's size


def read_header(path: Path) -> Header:
    """The parsed header, checked against the file's size; raises CorruptEntry."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) != 8:
                raise CorruptEntry("shorter than a safetensors header")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(MAX_HEADER, size - 8):
                raise CorruptEntry("header length runs past the file")
            header = json.loads(f.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptEntry(f"unreadable header: {error}") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        raise CorruptEntry("no metadata")
    metadata = header.pop("__metadata__")
    end = 0
    for name, spec in sorted(header.items(), key=lambda item: item[1].get("data_offsets", [0])[0]):
        start, stop = spec.get("data_offsets", (None, None))
        if start != end or not isinstance(stop, int) or stop < start:
            raise CorruptEntry(f"tensor {name} is not where the header says")
        end = stop
    if 8 + length + end != size:
        raise CorruptEntry(f"{size} bytes, the header describes {8 + length + end} (truncated?)")
    return Header(metadata, header, 8 + length, size)


def verify_checksum(path: Path, header: Header) -> None:
    checksum = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        f.seek(header.data_start)
        for name in sorted(header.tensors):
            start, stop = header.tensors[name]["data_offsets"]
            checksum.update(f.read(stop - start))
    if checksum.hexdigest() != header.metadata.get("checksum"):
        raise CorruptEntry("data does not match its checksum")


# -- model identity -------------------------------------------------------------------

IDENTITY_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                  "chat_template.json", "config.json", "generation_config.json")


def model_identity(model_id: str, path: Path, **extra: str) -> dict[str, str]:
    """What makes cached KV valid for a model: its name and folder, each weight file's
    size and mtime (hashing gigabytes at every load would cost seconds), hashes of
    the tokenizer, template and config files, plus ``extra`` (the engine adds the
    MLX version, the dtype and the weights policy)."""
    identity = {"model": model_id, "path": str(path.resolve())}
    weights = []
    for file in sorted(path.glob("*.safetensors")):
        stat = file.stat()
        weights.append(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}")
    identity["weights"] = hashlib.sha256("\n".join(weights).encode()).hexdigest()
    text = hashlib.sha256()
    for name in IDENTITY_FILES:
        file = path / name
        if file.is_file():
            text.update(name.encode() + b"\0" + hashlib.sha256(file.read_bytes()).digest())
    identity["tokenizer_template_config"] = text.hexdigest()
    identity.update(extra)
    return identity


def _difference(expected: Mapping[str, str], found: Mapping[str, str]) -> str:
    keys = sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))
    return ", ".join(keys) or "nothing"


# -- lookup -------------------------------------------------------------------------------


def usable_prefix(entry: Sequence[int], trimmable: bool, tokens: Sequence[int]) -> int:
    """Tokens of ``tokens`` an entry holding ``entry`` can serve (0: none), always
    leaving one to prefill; as ``PrefixCache`` decides for RAM entries."""
    limit = len(tokens) - 1
    n = min(len(entry), len(tokens))
    common = n if tuple(entry[:n]) == tuple(tokens[:n]) else _common(entry, tokens)
    if common == len(entry) and len(entry) <= limit:
        return len(entry)
    if trimmable:
        keep = min(common, limit)
        return keep if keep >= 1 else 0
    return 0


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    i = 0
    while i < len(a) and i < len(b) and a[i] == b[i]:
        i += 1
    return i


@attrs.define(eq=False)
class DiskEntry:
    path: Path
    tokens: tuple[int, ...]
    extra_key: bytes | None
    trimmable: bool
    size: int


@attrs.define
class DiskCounts:
    """What the disk tier has done since it started (changed under its lock)."""

    hits: int = 0  # lookups served from disk
    tokens_reused: int = 0  # prompt tokens served from disk
    writes: int = 0
    bytes_written: int = 0
    bytes_read: int = 0
    evictions: int = 0  # files deleted for the budget
    rejected: int = 0  # files refused: corrupt, another model version, unreadable
    skipped: int = 0  # entries not written (larger than the budget, or unsupported caches)


@attrs.frozen
class DiskStats:
    """The tier's state now: its counts (``DiskCounts``' fields) and what it holds."""

    dir: str
    hits: int
    tokens_reused: int
    entries: int  # files of the loaded model
    bytes: int  # every model's files
    max_bytes: int
    writes: int
    bytes_written: int
    bytes_read: int
    evictions: int
    rejected: int
    skipped: int
    pending: int  # writes queued


def _key_name(model_id: str, extra_key: bytes | None, tokens: Sequence[int]) -> str:
    h = hashlib.blake2b(digest_size=20)
    h.update(model_id.encode() + b"\0" + (extra_key or b"") + b"\0")
    h.update(json.dumps(list(tokens)).encode())
    return h.hexdigest() + SUFFIX


class DiskTier:
    """Prefix-cache entries on disk for the loaded model; LRU over every model's files."""

    def __init__(self, directory: str | Path, max_bytes: int, codec: Codec, adapter: Adapter):
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.codec = codec
        self.adapter = adapter
        self._lock = threading.Lock()
        self._files: dict[Path, tuple[int, float]] = {}  # every model's: size, last use
        self._entries: dict[Path, DiskEntry] = {}  # the active model's
        self._model_id: str | None = None
        self._identity: dict[str, str] | None = None
        self._counts = DiskCounts()
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="prefix-disk", daemon=True)
        self._writer.start()
        self._scan_sizes()

    # -- the model --------------------------------------------------------------------
    def model_dir(self, model_id: str) -> Path:
        return self.directory / hashlib.sha256(model_id.encode()).hexdigest()[:20]

    def activate(self, model_id: str, identity: Mapping[str, str]) -> None:
        """Index the files of ``model_id``, dropping those of another model version."""
        self.flush()  # writes for this model queued before a swap land first
        folder = self.model_dir(model_id)
        entries: dict[Path, DiskEntry] = {}
        identity = dict(identity)
        if folder.is_dir():
            for path in sorted(folder.glob("*" + SUFFIX)):
                try:
                    header = read_header(path)
                    meta = header.metadata
                    if meta.get("format") != FORMAT:
                        raise CorruptEntry(f"format {meta.get('format')!r}")
                    found = json.loads(meta["identity"])
                    if found != identity:
                        self._reject(path, f"written for another version of {model_id} "
                                     f"({_difference(identity, found)} differ)")
                        continue
                    extra = meta.get("extra_key") or ""
                    entries[path] = DiskEntry(
                        path, tuple(json.loads(meta["tokens"])),
                        bytes.fromhex(extra) if extra else None,
                        meta.get("trimmable") == "1", header.size,
                    )
                except (CorruptEntry, KeyError, ValueError, TypeError) as error:
                    self._reject(path, str(error))
        with self._lock:
            self._model_id, self._identity, self._entries = model_id, identity, entries
        log.info("Prefix cache on disk: %d entries for %s in %s", len(entries), model_id, folder)

    def deactivate(self) -> None:
        with self._lock:
            self._model_id, self._identity, self._entries = None, None, {}

    # -- lookup -----------------------------------------------------------------------
    def nearest(
        self, model_id: str, tokens: Sequence[int], extra_key: bytes | None, better_than: int = 0
    ) -> tuple[DiskEntry, int] | None:
        """The entry serving the most of ``tokens``, if more than ``better_than``."""
        tokens = tuple(tokens)
        best: tuple[DiskEntry, int] | None = None
        with self._lock:
            if model_id != self._model_id:
                return None
            for entry in self._entries.values():
                if entry.extra_key != extra_key:
                    continue
                keep = usable_prefix(entry.tokens, entry.trimmable, tokens)
                if keep > max(better_than, best[1] if best else 0):
                    best = (entry, keep)
        return best

    def load(self, entry: DiskEntry, keep: int) -> Any | None:
        """The entry's cache cut back to ``keep`` tokens, or None (the file is bad:
        deleted, with a log line). Runs on the MLX thread."""
        try:
            header = read_header(entry.path)
            verify_checksum(entry.path, header)
            meta = header.metadata
            found = json.loads(meta["identity"])
            if self._identity is None or found != self._identity:
                raise CorruptEntry(f"written for another model version "
                                   f"({_difference(self._identity or {}, found)} differ)")
            if tuple(json.loads(meta["tokens"])) != entry.tokens:
                raise CorruptEntry("its key changed since it was indexed")
            cache = self.codec.decode(entry.path, json.loads(meta["layout"]))
            held = self.adapter.length(cache)
            if held != len(entry.tokens):
                raise CorruptEntry(f"holds {held} tokens, its key has {len(entry.tokens)}")
            if keep < held:
                if not self.adapter.can_trim(cache):
                    raise CorruptEntry("cannot be cut back (it was stored as trimmable)")
                self.adapter.trim(cache, held - keep)
        except (CorruptEntry, OSError, KeyError, ValueError, TypeError, RuntimeError) as error:
            self._reject(entry.path, str(error))
            return None
        now = time.time()
        with contextlib.suppress(OSError):
            os.utime(entry.path, (now, now))
        with self._lock:
            self._counts.hits += 1
            self._counts.tokens_reused += keep
            self._counts.bytes_read += header.size
            if entry.path in self._files:
                self._files[entry.path] = (self._files[entry.path][0], now)
        log.info("Prefix cache: %d prompt tokens loaded from disk (%s)", keep, entry.path.name)
        return cache

    # -- storing ----------------------------------------------------------------------
    def spill(self, model_id: str, tokens: Sequence[int], extra_key: bytes | None, cache: Any) -> bool:
        """Queue ``cache`` (holding ``tokens``) for writing; returns whether it was queued.

        Runs on the MLX thread (the codec copies the arrays to bytes); the file is
        written by the writer thread."""
        tokens = tuple(tokens)
        with self._lock:
            if model_id != self._model_id or self._identity is None:
                return False
            identity = self._identity
            trimmable = self.adapter.can_trim(cache)
            for entry in self._entries.values():  # already covered by a longer trimmable one
                if (entry.extra_key == extra_key and entry.trimmable and len(entry.tokens) >= len(tokens)
                        and entry.tokens[: len(tokens)] == tokens):
                    return False
        try:
            encoded = self.codec.encode(cache)
        except Exception as error:  # a cache class the codec does not know
            with self._lock:
                self._counts.skipped += 1
            log.warning("Prefix cache: not written to disk: %s", error)
            return False
        size = sum(len(memoryview(t.data).cast("B")) for t in encoded.tensors.values())
        if size > self.max_bytes:
            with self._lock:
                self._counts.skipped += 1
            log.info("Prefix cache: an entry of %d bytes is larger than the disk budget; not written", size)
            return False
        folder = self.model_dir(model_id)
        path = folder / _key_name(model_id, extra_key, tokens)
        metadata = {
            "format": FORMAT,
            "identity": json.dumps(identity, sort_keys=True),
            "model_id": model_id,
            "tokens": json.dumps(list(tokens)),
            "extra_key": extra_key.hex() if extra_key else "",
            "trimmable": "1" if trimmable else "0",
            "layout": json.dumps(encoded.layout),
        }

        def write() -> None:
            folder.mkdir(parents=True, exist_ok=True)
            written = write_safetensors(path, encoded.tensors, metadata)
            now = time.time()
            with self._lock:
                self._counts.writes += 1
                self._counts.bytes_written += written
                self._files[path] = (written, now)
                if self._model_id == model_id:
                    self._entries[path] = DiskEntry(path, tokens, extra_key, trimmable, written)
                    if trimmable:  # the shorter entries it covers go
                        for other in [e for e in self._entries.values() if e.path != path
                                      and e.extra_key == extra_key
                                      and len(e.tokens) < len(tokens)
                                      and tokens[: len(e.tokens)] == e.tokens]:
                            self._delete(other.path)
                self._evict_locked(keep=path)

        self._queue.put(write)
        return True

    def flush(self) -> None:
        """Wait until every queued write is done."""
        self._queue.join()

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._writer.join(timeout=60)

    # -- internals --------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                job()
            except Exception:
                log.exception("Prefix cache: writing an entry to disk failed")
            finally:
                self._queue.task_done()

    def _scan_sizes(self) -> None:
        for folder in self.directory.iterdir():
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.name.endswith(".tmp"):  # a write cut off by a crash
                    path.unlink(missing_ok=True)
                elif path.name.endswith(SUFFIX):
                    stat = path.stat()
                    self._files[path] = (stat.st_size, stat.st_mtime)
        with self._lock:
            self._evict_locked()

    def _evict_locked(self, keep: Path | None = None) -> None:
        total = sum(size for size, _ in self._files.values())
        for path, (size, _) in sorted(self._files.items(), key=lambda item: item[1][1]):
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            self._delete(path)
            self._counts.evictions += 1
            total -= size

    def _delete(self, path: Path) -> None:
        self._files.pop(path, None)
        self._entries.pop(path, None)
        path.unlink(missing_ok=True)

    def _reject(self, path: Path, why: str) -> None:
        log.warning("Prefix cache on disk: rejected %s: %s (deleted)", path, why)
        with self._lock:
            self._counts.rejected += 1
            self._delete(path)

    def stats(self) -> DiskStats:
        with self._lock:
            return DiskStats(
                dir=str(self.directory),
                entries=len(self._entries),
                bytes=sum(size for size, _ in self._files.values()),
                max_bytes=self.max_bytes,
                pending=self._queue.unfinished_tasks,
                **attrs.asdict(self._counts),
            )


# -- MLX ------------------------------------------------------------------------------------

# Cache classes a file may name: a file never makes us import anything else.
CACHE_MODULES = ("mlx_lm.models.cache", "mlx_vlm.models.cache")
_MX_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "int32": "I32",
              "int64": "I64", "uint32": "U32", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


class MLXCodec:
    """mlx-lm / mlx-vlm caches (a list of layer caches) to tensors and back.

    Per layer: its class (from ``CACHE_MODULES`` only), its ``state`` arrays and
    non-array state (mlx-lm keeps offsets in ``state``) and mlx-vlm's
    ``meta_state``. A plain ``KVCache`` is saved up to its offset, not its
    preallocated buffer.
    """

    def encode(self, cache: list[Any]) -> Encoded:
        import mlx.core as mx
        import numpy as np

        tensors: dict[str, RawTensor] = {}
        layout = []
        for i, layer in enumerate(cache):
            cls = type(layer)
            if cls.__module__ not in CACHE_MODULES or getattr(layer, "caches", None) is not None:
                raise ValueError(f"cache class {cls.__module__}.{cls.__name__} is not supported")
            state = list(layer.state)
            if cls.__name__ in ("KVCache", "QuantizedKVCache") and state and state[0] is not None:
                # Up to the offset, not the preallocated buffer (a quantized
                # layer's keys and values are (packed, scales, biases) each).
                offset = int(layer.offset)
                for k in (0, 1):
                    part = state[k]
                    state[k] = (
                        tuple(a[..., :offset, :] for a in part) if isinstance(part, tuple)
                        else part[..., :offset, :]
                    )

            def put(name: str, value: Any) -> str:
                dtype = _MX_DTYPES[str(value.dtype).removeprefix("mlx.core.")]
                raw = value.view(mx.uint16) if dtype in ("BF16", "F16") else value
                data = np.ascontiguousarray(np.array(raw, copy=True)).tobytes()
                tensors[name] = RawTensor(dtype, tuple(int(d) for d in value.shape), data)
                return name

            items: list[Any] = []
            for j, value in enumerate(state):
                if isinstance(value, mx.array):
                    items.append({"array": put(f"{i}.{j}", value)})
                elif isinstance(value, tuple) and value and all(isinstance(v, mx.array) for v in value):
                    items.append({"arrays": [put(f"{i}.{j}.{k}", v) for k, v in enumerate(value)]})
                elif value is None or isinstance(value, (int, float, bool)):
                    items.append({"value": value})
                else:
                    raise ValueError(f"{cls.__name__} state holds a {type(value).__name__}")
            meta = layer.meta_state if cls.__module__ == "mlx_vlm.models.cache" else None
            layout.append({"module": cls.__module__, "class": cls.__name__, "state": items,
                           "meta": list(meta) if isinstance(meta, (tuple, list)) else meta})
        return Encoded(tensors, layout)

    def decode(self, path: Path, layout: Any) -> list[Any]:
        import importlib

        import mlx.core as mx

        loaded = mx.load(str(path))
        arrays: dict[str, Any] = loaded if isinstance(loaded, dict) else {}
        cache = []
        for spec in layout:
            module_name = spec["module"]
            if module_name not in CACHE_MODULES:
                raise ValueError(f"cache module {module_name!r} is not allowed")
            cls = getattr(importlib.import_module(module_name), spec["class"], None)
            if not isinstance(cls, type) or not hasattr(cls, "from_state"):
                raise ValueError(f"no cache class {spec['class']!r} in {module_name}")
            state = tuple(
                arrays[item["array"]] if "array" in item
                else tuple(arrays[name] for name in item["arrays"]) if "arrays" in item
                else item["value"]
                for item in spec["state"]
            )
            if module_name == "mlx_vlm.models.cache":
                meta = spec.get("meta")
                layer = cls.from_state(state, tuple(meta) if isinstance(meta, list) else meta)
            else:
                layer = cls.from_state(state)
            cache.append(layer)
        mx.eval([c.state for c in cache])
        return cache
