"""Run an app under a real uvicorn server in a background thread, and wait for
conditions by bounded polling (tests: no fixed sleeps)."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn

from mlxhost.testing.server import free_port

POLL_INTERVAL = 0.005


def wait_until(
    condition: Callable[[], object],
    timeout: float = 30.0,
    what: str = "condition",
    interval: float = POLL_INTERVAL,
) -> None:
    """Return as soon as ``condition()`` is true; ``TimeoutError`` after ``timeout`` seconds.

    The timeout is a generous bound for a broken build, not a measurement;
    ``interval``: seconds between polls (longer for conditions that take minutes)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g}s")
        time.sleep(interval)


async def async_wait_until(
    condition: Callable[[], object], timeout: float = 30.0, what: str = "condition"
) -> None:
    """``wait_until`` for coroutines: polls without blocking the event loop.
    ``condition`` may be a coroutine function (its result is awaited)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g}s")
        await asyncio.sleep(POLL_INTERVAL)


@contextmanager
def live_server(app) -> Iterator[str]:
    """Yield the base URL of ``app`` served on a free loopback port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), timeout=20, what="uvicorn startup")
    if not server.started:
        raise RuntimeError("uvicorn did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
