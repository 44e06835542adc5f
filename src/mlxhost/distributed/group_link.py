"""The side channel of a distributed group: heartbeats, wake-ups, loss detection.

MLX's collectives have no timeout: a rank waiting in one for a peer that hangs
waits forever (a peer that dies makes the ring backend fail the call, after a
few retries). And a rank waiting in a ring collective spins a CPU core (measured
on Linux: 14.7 s of CPU in a 15 s wait). So beside the collectives each follower
keeps one TCP connection to rank 0:

- followers send a heartbeat byte every ``HEARTBEAT_S``; rank 0's watchdog
  thread declares the group lost when a connection closes (the follower died),
  stays silent for ``SILENCE_S`` (hung), or a follower process it launched
  exits. Rank 0 then fails its requests with 503 and leaves (``runtime`` and
  ``app``), and the launcher ends the other ranks.
- an idle rank 0 sends ``PARK`` through the collectives and later wakes the
  followers with a byte here: parked followers block in ``recv`` instead of
  spinning in a collective.
- a follower whose connection to rank 0 closes (rank 0 died) leaves at once.

Rank 0 listens on an ephemeral port and tells the followers its number through
the collectives at start-up; followers only connect out (they open no port).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
SILENCE_S = 20.0  # no heartbeat this long: the follower is hung
CONNECT_S = 120.0  # followers connect within this (they may still be importing)
_BEAT = b"H"
_WAKE = b"W"


class LeaderLink:
    """Rank 0's end: accepts the followers, watches them, wakes them."""

    def __init__(self, host: str, followers: int, *, silence: float = SILENCE_S) -> None:
        self._server = socket.create_server((host, 0))
        self.port = int(self._server.getsockname()[1])
        self._expected = followers
        self._silence = silence
        self._peers: dict[int, socket.socket] = {}  # rank -> connection
        self._heard: dict[int, float] = {}
        self._processes: Sequence[tuple[int, Any]] = ()  # (rank, Popen) launched here
        self._on_lost: Callable[[str], None] | None = None
        self._closing = threading.Event()
        self.lost: str | None = None
        self._lock = threading.Lock()

    def accept(self, timeout: float = CONNECT_S) -> None:
        """Wait for every follower to connect (each sends its rank first)."""
        deadline = time.monotonic() + timeout
        while len(self._peers) < self._expected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{len(self._peers)} of {self._expected} followers connected in {timeout:.0f}s"
                )
            self._server.settimeout(remaining)
            conn, _ = self._server.accept()
            conn.settimeout(None)
            (rank,) = struct.unpack("!i", _read_exactly(conn, 4))
            self._peers[rank] = conn
            self._heard[rank] = time.monotonic()
        self._server.close()

    def watch(
        self, on_lost: Callable[[str], None], processes: Sequence[tuple[int, Any]] = ()
    ) -> None:
        """Start the watchdog thread; ``on_lost(reason)`` is called once, from it."""
        self._on_lost = on_lost
        self._processes = processes
        threading.Thread(target=self._watch, name="mlxhost-group-watch", daemon=True).start()

    def _watch(self) -> None:
        by_socket = {conn: rank for rank, conn in self._peers.items()}
        while not self._closing.is_set():
            readable, _, _ = select.select(list(by_socket), [], [], HEARTBEAT_S / 2)
            now = time.monotonic()
            for conn in readable:
                rank = by_socket[conn]
                try:
                    data = conn.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    self._lose(f"rank {rank} closed its connection (the process ended)")
                    return
                self._heard[rank] = now
            for rank, process in self._processes:
                code = process.poll()
                if code is not None:
                    self._lose(f"rank {rank} exited with status {code}")
                    return
            for rank, heard in self._heard.items():
                if now - heard > self._silence:
                    self._lose(f"rank {rank} sent no heartbeat for {now - heard:.0f}s (hung)")
                    return

    def _lose(self, reason: str) -> None:
        with self._lock:
            if self.lost is not None or self._closing.is_set():
                return
            self.lost = reason
        log.error("Distributed group lost: %s", reason)
        if self._on_lost is not None:
            self._on_lost(reason)

    def report(self, reason: str) -> None:
        """A collective failed on rank 0 (e.g. the ring backend lost a peer)."""
        self._lose(reason)

    def wake(self) -> None:
        for rank, conn in self._peers.items():
            try:
                conn.sendall(_WAKE)
            except OSError:
                self._lose(f"rank {rank} cannot be reached")

    def close(self, wait: float = 5.0) -> None:
        """An orderly end (after SHUTDOWN): connections closing are no loss. Waits up
        to ``wait`` seconds for the followers to close theirs first, so none of them
        takes our closing for a crash."""
        self._closing.set()
        deadline = time.monotonic() + wait
        for conn in self._peers.values():
            try:
                while (remaining := deadline - time.monotonic()) > 0:
                    conn.settimeout(remaining)
                    if not conn.recv(4096):
                        break
            except OSError:
                pass
            finally:
                conn.close()


class FollowerLink:
    """A follower's end: heartbeats out, wake-ups in; rank 0 gone ends the process."""

    def __init__(self, host: str, port: int, rank: int, *, timeout: float = CONNECT_S) -> None:
        self._conn = socket.create_connection((host, port), timeout=timeout)
        self._conn.settimeout(None)
        self._conn.sendall(struct.pack("!i", rank))
        self._woken = threading.Event()
        self._send_lock = threading.Lock()
        self._ending = threading.Event()
        threading.Thread(target=self._read, name="mlxhost-leader-link", daemon=True).start()
        threading.Thread(target=self._beat, name="mlxhost-heartbeat", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self._conn.recv(4096)
            except OSError:
                data = b""
            if not data:
                if not self._ending.is_set():
                    # Rank 0 is gone: nothing left to serve, and a collective we
                    # may be waiting in would never return.
                    log.error("Lost the connection to rank 0; leaving")
                    os._exit(1)
                return
            if _WAKE in data:
                self._woken.set()

    def _beat(self) -> None:
        while not self._ending.is_set():
            try:
                with self._send_lock:
                    self._conn.sendall(_BEAT)
            except OSError:
                return
            self._ending.wait(HEARTBEAT_S)

    def wait_for_wake(self) -> None:
        self._woken.wait()
        self._woken.clear()

    def close(self) -> None:
        self._ending.set()
        try:
            # shutdown first: close alone leaves the connection open while the
            # reader thread is blocked in recv on it.
            self._conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._conn.close()


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the peer closed the connection during the handshake")
        data += chunk
    return data
