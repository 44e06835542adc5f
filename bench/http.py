"""One HTTP client per benchmark process.

``httpx.post`` builds a new client for every call, and building one (its SSL
context) costs 15-50 ms of CPU under the caller's GIL: N threads sending at
once then reach the server one after another, ~150 ms apart in all for 16
requests on the GPU machine (the batch saw a group of 2-3 prompts, then one of
13-14 some 100-180 ms later), and every timed request paid that cost itself.
Real clients keep a client; so do the benchmarks. httpx clients are thread-safe.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.lru_cache(maxsize=1)
def client() -> Any:
    import httpx

    return httpx.Client(timeout=900, limits=httpx.Limits(max_connections=128, max_keepalive_connections=128))


def streamed(url: str, body: dict[str, Any]) -> tuple[float, float, int]:
    """One streaming chat completion: (seconds to the first chunk with a choice,
    tok/s after it, completion tokens from ``usage``). ``body`` asks for usage."""
    import json
    import time

    began = time.perf_counter()
    first = last = None
    produced = 0
    with client().stream("POST", f"{url}/v1/chat/completions", json=body) as reply:
        for line in reply.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                produced = int(chunk["usage"]["completion_tokens"])
            if chunk.get("choices"):
                now = time.perf_counter()
                first = first or now
                last = now
    assert first is not None and last is not None, "no chunk with a choice"
    return first - began, (produced - 1) / max(last - first, 1e-9), produced
