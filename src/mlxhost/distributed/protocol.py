"""The command protocol of a distributed group: rank 0 tells the followers what to run.

Every rank holds a shard of the same model, and every forward pass runs
collectives (tensor parallel: an ``all_sum`` after each sharded projection;
pipeline: send/recv between stages), so all ranks must run the same engine
calls in the same order. Rank 0 owns HTTP, the scheduler and the tokenizer; it
sends each engine call that touches the model as a :class:`Command` before it
runs the call itself, and each follower runs the same call on its own engine
(``runtime.follower``). The engine is deterministic given the same calls
(prefix-cache hits, batch ids, seeded and unseeded sampling: the global seed is
shared at start-up), so the followers need the calls, not the sampled tokens.

A command travels as two ``all_sum`` collectives: a fixed-size int32 header
(magic, op, payload length, sequence number), then, when the payload is not
empty, the payload bytes as uint8. Rank 0 contributes the data, every other
rank zeros, so the sum is rank 0's data on every rank. The payload is a pickle
of the call's arguments: ranks are processes of the same program on trusted
hosts (MLX's own ring and JACCL backends carry arrays between them unauthenticated).

Everything here talks to a :class:`Group`, so the protocol is tested with a
fake group of threads (``tests/unit/test_distributed.py``); :class:`MLXGroup`
is the real one.
"""

from __future__ import annotations

import enum
import pickle
import threading
from typing import Any, Protocol

import attrs
import numpy as np

MAGIC = 0x6D6C7868  # "mlxh"
HEADER = 4  # int32s: magic, op, payload bytes, sequence number


class Op(enum.IntEnum):
    """What a follower runs; the arguments are the engine call's."""

    LOAD = 1  # (ModelInfo,)
    UNLOAD = 2  # ()
    JOIN = 3  # (tokens, SamplingParams): engine.join, steps discarded
    LEAVE = 4  # (uid,)
    STEP = 5  # (): engine.step
    GENERATE = 6  # (PreparedPrompt, SamplingParams): engine.generate, started
    NEXT = 7  # (): the next item of the running generate
    CLOSE = 8  # (): close the running generate
    SHRINK = 9  # (max_bytes,): engine.shrink_prefix_cache
    MEMORY_LIMIT = 10  # (bytes,): engine.set_memory_limit
    PARK = 11  # (): nothing to do; wait for a wake-up outside the collectives
    SHUTDOWN = 12  # (): leave


@attrs.frozen
class Command:
    op: Op
    args: tuple[Any, ...] = ()
    seq: int = 0


class ProtocolError(RuntimeError):
    """A header that is not ours: the ranks are out of step."""


class Group(Protocol):
    """The collectives the protocol needs (``MLXGroup``, or a fake in tests)."""

    @property
    def rank(self) -> int: ...

    @property
    def size(self) -> int: ...

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum over the ranks (int32 or uint8), the same on every rank."""
        ...


def encode(command: Command) -> tuple[np.ndarray, np.ndarray]:
    """The header and the payload bytes rank 0 contributes."""
    payload = pickle.dumps(command.args, protocol=pickle.HIGHEST_PROTOCOL) if command.args else b""
    header = np.array([MAGIC, int(command.op), len(payload), command.seq], dtype=np.int32)
    return header, np.frombuffer(payload, dtype=np.uint8)


def decode(header: np.ndarray, payload: np.ndarray | None) -> Command:
    magic, op, size, seq = (int(v) for v in header[:HEADER])
    if magic != MAGIC:
        raise ProtocolError(f"not a command header: {header.tolist()}")
    try:
        kind = Op(op)
    except ValueError:
        raise ProtocolError(f"unknown op {op}") from None
    args = pickle.loads(payload.tobytes()) if size and payload is not None else ()
    return Command(kind, tuple(args), seq)


def send(group: Group, command: Command) -> None:
    """Rank 0: hand ``command`` to every follower (returns once they all have it)."""
    header, payload = encode(command)
    group.all_sum(header)
    if payload.size:
        group.all_sum(payload)


def receive(group: Group) -> Command:
    """A follower: the next command from rank 0 (blocks until rank 0 sends)."""
    header = group.all_sum(np.zeros(HEADER, dtype=np.int32))
    size = int(header[2])
    payload = group.all_sum(np.zeros(size, dtype=np.uint8)) if size > 0 else None
    return decode(header, payload)


class Sender:
    """Rank 0's side: numbered commands, so a follower can tell if one went missing."""

    def __init__(self, group: Group) -> None:
        self.group = group
        self._seq = 0

    def send(self, op: Op, *args: Any) -> None:
        self._seq += 1
        send(self.group, Command(op, args, self._seq))


class MLXGroup:
    """``mx.distributed`` collectives on the worker thread's generation stream.

    The model's own collectives run on mlx-lm's ``generation_stream`` (its
    forward passes are evaluated there, some asynchronously); a command's
    collectives go on the same stream, so they are ordered after the model's
    on every rank instead of racing them on another stream.

    mlx-vlm runs its models on a stream of its own (``mlx_vlm.generate``'s
    ``generation_stream``, another worker thread on the CPU): a vision model's
    all-reduces there raced the next command's on mlx-lm's stream and garbled
    it (seen: a follower read command -1097881146 after 75 and left). So a
    group makes mlx-vlm's generation loop use mlx-lm's stream too.
    """

    def __init__(self, group: Any) -> None:
        self._group = group
        one_generation_stream()

    @classmethod
    def init(cls, backend: str) -> MLXGroup:
        import mlx.core as mx

        return cls(mx.distributed.init(strict=True, backend=backend))

    @property
    def mx_group(self) -> Any:
        return self._group

    @property
    def rank(self) -> int:
        return int(self._group.rank())

    @property
    def size(self) -> int:
        return int(self._group.size())

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        import mlx.core as mx
        from mlx_lm.generate import generation_stream

        summed = mx.distributed.all_sum(mx.array(values), group=self._group, stream=generation_stream)
        mx.eval(summed)
        return np.array(summed, dtype=values.dtype)


def one_generation_stream() -> None:
    """Point mlx-vlm's generation loop at mlx-lm's ``generation_stream`` (both are
    ``mx.new_thread_local_stream(default_device)``; one is enough), so every
    collective of this process runs on one stream, in program order."""
    import importlib

    from mlx_lm.generate import generation_stream

    # importlib: mlx_vlm.generate's __init__ shadows ``ar`` for ``import a.b.ar as x``.
    vlm_ar = importlib.import_module("mlx_vlm.generate.ar")
    setattr(vlm_ar, "generation_stream", generation_stream)  # noqa: B010 (typed modules lack it)


class FakeGroup:
    """``size`` ranks in one process, one thread each (tests): ``FakeGroup.make(n)``."""

    def __init__(self, rank: int, shared: _FakeCollective) -> None:
        self._rank = rank
        self._shared = shared

    @classmethod
    def make(cls, size: int) -> list[FakeGroup]:
        shared = _FakeCollective(size)
        return [cls(rank, shared) for rank in range(size)]

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._shared.size

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        return self._shared.all_sum(self._rank, values)


class _FakeCollective:
    def __init__(self, size: int) -> None:
        self.size = size
        self._barrier = threading.Barrier(size)
        self._parts: list[np.ndarray | None] = [None] * size
        self._result: np.ndarray | None = None

    def all_sum(self, rank: int, values: np.ndarray) -> np.ndarray:
        self._parts[rank] = values
        if self._barrier.wait() == 0:
            parts = [p for p in self._parts if p is not None]
            if len({p.shape for p in parts}) != 1:
                self._barrier.abort()  # every rank's call fails (BrokenBarrierError)
                raise ProtocolError(f"ranks sent shapes {[p.shape for p in parts]}")
            self._result = np.sum(parts, axis=0).astype(values.dtype)
        self._barrier.wait()
        result = self._result
        assert result is not None
        self._barrier.wait()  # everyone has read it before the next call overwrites it
        return result.copy()
