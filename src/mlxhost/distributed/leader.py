"""Rank 0's engine in a distributed group: every model call is sent to the followers first.

:class:`LeaderEngine` wraps the MLX engine of rank 0. A call that runs the model
(load, join, step, generate, leave, unload, prefix-cache shrinking) is sent to
the followers as a command (``runtime.distributed``) and then run here; the
followers run the same call on their shard in lockstep (``runtime.follower``).
Calls that only read or tokenize (prepare, batchable, memory, stats) stay on
rank 0. Everything runs on rank 0's MLX worker thread, as engine calls do.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import numpy as np

from mlxhost.core.errors import GroupLost
from mlxhost.core.types import ModelInfo, RenderedPrompt, SamplingParams, TokenStep
from mlxhost.distributed.group_link import LeaderLink
from mlxhost.distributed.protocol import MLXGroup, Op, Sender
from mlxhost.runtime.engine import EngineMemory, PreparedPrompt
from mlxhost.runtime.memory import DeviceMemory

log = logging.getLogger(__name__)

# Backends name themselves in their errors ("[ring] connection to a peer was lost").
_GROUP_ERRORS = ("[ring]", "[jaccl]", "[mpi]", "[nccl]")


@attrs.frozen
class GroupPlan:
    """How this process joins its group (from the launcher: ``mlxhost.distributed.launch``)."""

    backend: str
    leader_host: str  # where rank 0 listens for the followers' side channel
    pipeline: bool = False
    # Follower processes this rank launched itself (``--ranks``): (rank, Popen).
    children: tuple[tuple[int, Any], ...] = ()


def handshake(group: Any, port: int = 0) -> tuple[int, int]:
    """Rank 0 sends (side-channel port, random seed); every rank gets both and seeds
    MLX's global generator with the seed, so unseeded sampling draws alike."""
    import mlx.core as mx

    seed = random.randrange(1, 2**31 - 1) if group.rank == 0 else 0
    values = np.array([port, seed] if group.rank == 0 else [0, 0], dtype=np.int32)
    port, seed = (int(v) for v in group.all_sum(values))
    mx.random.seed(seed)
    return port, seed


class LeaderEngine:
    name = "mlx-distributed"

    def __init__(self, inner: Any, plan: GroupPlan, sharder: Any) -> None:
        """``inner``: rank 0's MLX engine, made with ``sharder`` (``runtime.sharding.Sharder``),
        whose group is set here once joined."""
        self._inner = inner
        self._plan = plan
        self._sharder = sharder
        self._sender: Sender | None = None
        self._link: LeaderLink | None = None
        self._group: MLXGroup | None = None
        self._listeners: list[Callable[[str], None]] = []
        self._parked = False
        self._generating = False

    # -- the group ----------------------------------------------------------------
    def on_lost(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(reason)`` (from the watchdog thread) when the group is lost."""
        self._listeners.append(listener)

    def start(self) -> None:
        """Worker thread, before anything else: join the group, meet the followers."""
        group = self._group = MLXGroup.init(self._plan.backend)
        if group.rank != 0:
            raise RuntimeError(f"the serving process must be rank 0, not {group.rank}")
        self._sharder.group = group.mx_group
        link = self._link = LeaderLink(self._plan.leader_host, group.size - 1)
        handshake(group, link.port)
        link.accept()
        link.watch(self._lost, self._plan.children)
        self._sender = Sender(group)
        log.info(
            "Distributed group of %d ranks (%s backend, %s); rank 0 serves HTTP",
            group.size, self._plan.backend, "pipeline" if self._plan.pipeline else "tensor parallel",
        )

    def _lost(self, reason: str) -> None:
        for listener in self._listeners:
            listener(reason)

    @property
    def lost(self) -> str | None:
        return self._link.lost if self._link is not None else None

    def _send(self, op: Op, *args: Any) -> None:
        if self._sender is None or self._link is None:
            raise RuntimeError("the distributed group is not started")
        if self._link.lost is not None:
            raise GroupLost(self._link.lost)
        try:
            if self._parked:
                self._link.wake()
                self._parked = False
            self._sender.send(op, *args)
        except Exception as exc:
            self._link.report(f"sending {op.name} failed: {exc}")
            raise GroupLost(self._link.lost or str(exc)) from exc

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """An inner call whose collectives a lost peer may break."""
        try:
            return fn(*args)
        except Exception as exc:
            if self._link is not None and str(exc).startswith(_GROUP_ERRORS):
                self._link.report(f"a collective failed: {exc}")
                raise GroupLost(self._link.lost or str(exc)) from exc
            raise

    def park(self) -> None:
        """Worker idle: let the followers wait off the collectives (they spin in one)."""
        if self._parked or self._sender is None or self._generating:
            return
        if self._link is not None and self._link.lost is None:
            self._send(Op.PARK)
            self._parked = True

    def shutdown(self) -> None:
        """Worker thread, at the end: the followers leave, then the side channel closes."""
        if self._sender is None or self._link is None or self._link.lost is not None:
            return
        try:
            self._send(Op.SHUTDOWN)
        except GroupLost:
            return
        self._link.close()

    # -- mirrored calls -------------------------------------------------------------
    def load(self, info: ModelInfo, on_warm_up: Callable[[], None] | None = None) -> Any:
        self._send(Op.LOAD, info)
        return self._run(self._inner.load, info, on_warm_up)

    def close(self) -> None:
        # Local: each follower closes its own engine when SHUTDOWN reaches it.
        self._inner.close()

    def unload(self) -> None:
        if self._sender is None:  # never started (start-up failed)
            return
        self._send(Op.UNLOAD)
        self._run(self._inner.unload)

    def generate(
        self, prompt: PreparedPrompt, params: SamplingParams, should_stop: Callable[[], bool]
    ) -> Iterator[TokenStep]:
        # The followers cannot see should_stop: rank 0 decides after each item and
        # sends CLOSE, so every rank ends the generator at the same item.
        self._send(Op.GENERATE, prompt, params)
        self._generating = True
        items = self._inner.generate(prompt, params, lambda: False)
        try:
            while True:
                self._send(Op.NEXT)
                try:
                    step = self._run(next, items)
                except StopIteration:
                    return
                yield step
                if step.finish is not None or should_stop():
                    return
        finally:
            self._generating = False
            if self.lost is None:
                self._send(Op.CLOSE)
                items.close()

    def join(self, prompt: PreparedPrompt, params: SamplingParams, emit: Any) -> int:
        self._send(Op.JOIN, prompt, params)
        return int(self._run(self._inner.join, prompt, params, emit))

    def leave(self, uid: int) -> None:
        self._send(Op.LEAVE, uid)
        self._run(self._inner.leave, uid)

    def step(self) -> bool:
        self._send(Op.STEP)
        return bool(self._run(self._inner.step))

    def shrink_prefix_cache(self, max_bytes: int) -> int:
        self._send(Op.SHRINK, max_bytes)
        return int(self._inner.shrink_prefix_cache(max_bytes))

    def set_memory_limit(self, budget: int) -> None:
        self._send(Op.MEMORY_LIMIT, budget)
        self._inner.set_memory_limit(budget)

    # -- rank 0 only ------------------------------------------------------------------
    def prepare(self, prompt: RenderedPrompt) -> PreparedPrompt:
        return self._inner.prepare(prompt)

    def batchable(self, prompt: PreparedPrompt) -> bool:
        return bool(self._inner.batchable(prompt))

    def batch_limit(self) -> int | None:
        return self._inner.batch_limit()

    def device_memory(self) -> DeviceMemory | None:
        return self._inner.device_memory()

    def memory(self) -> EngineMemory:
        return self._inner.memory()

    def stats(self) -> dict[str, Any]:
        stats = dict(self._inner.stats())
        group = self._group
        stats["distributed"] = {
            "ranks": group.size if group else None,
            "backend": self._plan.backend,
            "mode": "pipeline" if self._plan.pipeline else "tensor",
            "sharding": getattr(self._inner, "sharded", None),
            "lost": self.lost,
        }
        return stats
