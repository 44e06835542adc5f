"""A follower rank: run rank 0's commands on this rank's shard, nothing else.

A follower opens no port and has no scheduler or HTTP: its main thread (the
only one that touches MLX here) receives each command (``runtime.distributed``)
and makes the same engine call rank 0 makes, discarding the tokens (rank 0
streams them). ``PARK`` waits for a wake-up on the side channel
(``runtime.group_link``) instead of in a collective, where the ring backend
spins a core.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from mlxhost.core.types import TokenStep
from mlxhost.distributed.protocol import Command, Group, Op, ProtocolError, receive

log = logging.getLogger(__name__)


def _discard(step: TokenStep | None, error: BaseException | None) -> None:
    """A follower's batch sequences emit here: rank 0 streams the tokens."""


class Follower:
    """Runs commands on ``engine`` until SHUTDOWN; ``wait_for_wake`` blocks while parked."""

    def __init__(self, group: Group, engine: Any, wait_for_wake: Any) -> None:
        self._group = group
        self._engine = engine
        self._wait_for_wake = wait_for_wake
        self._generation: Iterator[TokenStep] | None = None
        self._seq = 0
        self.handled = 0

    def run(self) -> None:
        while True:
            command = receive(self._group)
            if command.seq != self._seq + 1:
                raise ProtocolError(f"command {command.seq} after {self._seq}: out of step")
            self._seq = command.seq
            if command.op is Op.SHUTDOWN:
                self._close_generation()
                self._engine.close()  # this rank's prefix-cache disk writes, if any
                return
            self.handle(command)
            self.handled += 1

    def handle(self, command: Command) -> None:
        """One engine call. Its errors are rank 0's too (the same call fails there),
        so they are logged, not fatal."""
        engine, op, args = self._engine, command.op, command.args
        try:
            if op is Op.PARK:
                self._wait_for_wake()
            elif op is Op.STEP:
                engine.step()
            elif op is Op.NEXT:
                if self._generation is not None:
                    next(self._generation, None)
            elif op is Op.JOIN:
                engine.join(args[0], args[1], _discard)
            elif op is Op.LEAVE:
                engine.leave(args[0])
            elif op is Op.GENERATE:
                self._close_generation()
                self._generation = engine.generate(args[0], args[1], lambda: False)
            elif op is Op.CLOSE:
                self._close_generation()
            elif op is Op.LOAD:
                engine.load(args[0])
            elif op is Op.UNLOAD:
                engine.unload()
            elif op is Op.SHRINK:
                engine.shrink_prefix_cache(args[0])
            elif op is Op.MEMORY_LIMIT:
                engine.set_memory_limit(args[0])
        except Exception:
            log.exception("Follower: %s failed (rank 0's call fails alike)", op.name)

    def _close_generation(self) -> None:
        generation, self._generation = self._generation, None
        if generation is not None:
            generation.close()  # type: ignore[attr-defined]
