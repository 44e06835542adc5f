"""HTTP helpers shared by the tests: requests, SSE parsing, a live fake-engine
server, and a raw socket that can be dropped mid-request (a client that goes away).

Tests import these from here rather than from one another."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from urllib.parse import urlsplit


def chat(client: Any, model: str, content: str = "Hi", **extra: Any) -> Any:
    """POST one user message to ``/v1/chat/completions`` (any client with ``.post(url, json=)``)."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return client.post("/v1/chat/completions", json=body)


def sse_events(response: Any) -> list:
    """The ``data:`` payloads of an SSE response body: JSON objects, then ``"[DONE]"``."""
    return parse_sse(response.text)


def parse_sse(text: str) -> list:
    events: list = []
    for line in text.splitlines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def streamed_text(events: Sequence) -> str:
    """The content deltas of parsed SSE chunks, joined."""
    return "".join(
        e["choices"][0]["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict) and e.get("choices")
    )


def live(fake_plugin: Any, fake_models: Sequence[str], **settings: Any) -> AbstractContextManager[str]:
    """``with live(fake_plugin, fake_models, **settings) as url:`` the app with the fake
    engine under a real uvicorn server (real sockets: disconnects, concurrency)."""
    from mlxhost.api.app import create_app
    from mlxhost.families.plugins import make_plugin_manager
    from mlxhost.settings.table import Settings
    from mlxhost.testing.live import live_server

    app = create_app(
        Settings(extra_models=list(fake_models), **settings), make_plugin_manager(extra=[fake_plugin])
    )
    return live_server(app)


@contextmanager
def raw_post(url: str, path: str, body: dict, *, timeout: float = 60.0) -> Iterator[socket.socket]:
    """Send ``POST path`` with a JSON body over a plain socket and yield the socket;
    it is closed on exit, whatever was read: a client that hangs up mid-request."""
    parts = urlsplit(url)
    data = json.dumps(body).encode()
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    try:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        yield sock
    finally:
        sock.close()


def read_until(sock: socket.socket, marker: bytes, count: int = 1) -> bytes:
    """Read from ``sock`` until ``marker`` has been seen ``count`` times (the socket's
    timeout bounds each read); returns what was read."""
    received = b""
    while received.count(marker) < count:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {len(received)} bytes: {received[-200:]!r}")
        received += chunk
    return received
