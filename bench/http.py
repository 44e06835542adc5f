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
