"""The request-body cap over real HTTP: a body over it is a 413 in the
endpoint's own error shape, answered while the client is still sending (the
server counts bytes as they arrive; it never buffers the whole body first)."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import pytest

from mlxhost.models.starter.builder import TEST_MODELS

QWEN = TEST_MODELS["qwen"].repo_id
MB = 1024 * 1024
CHUNK = b" " * MB  # JSON whitespace: padding that keeps the body valid JSON

SHAPES = {
    "/v1/chat/completions": lambda body: body["error"]["type"] == "invalid_request_error",
    "/v1/messages": lambda body: body["type"] == "error" and body["error"]["type"] == "request_too_large",
    "/api/chat": lambda body: isinstance(body["error"], str),
}


def _head(url: str, path: str, length: int | None) -> tuple[socket.socket, bytes]:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=120)
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    head = (f"POST {path} HTTP/1.1\r\nHost: {parts.hostname}\r\n"
            f"Content-Type: application/json\r\n{framing}\r\nConnection: close\r\n\r\n")
    return sock, head.encode()


def _read_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        more = sock.recv(65536)
        if not more:
            break
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    return status, json.loads(body[: _length(data) or len(body)])


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def _send_until_answered(sock: socket.socket, chunks: int, chunked: bool) -> int:
    """Send up to ``chunks`` MiB; return how many were sent before the server answered."""
    sock.setblocking(True)
    for sent in range(chunks):
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK) if chunked else CHUNK)
        except (BrokenPipeError, ConnectionResetError):
            return sent
    if chunked:
        sock.sendall(b"0\r\n\r\n")
    return chunks


@pytest.mark.parametrize("path", list(SHAPES))
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_200_mb_body_is_413_in_the_endpoints_shape(qwen_server, path, chunked):
    sock, head = _head(qwen_server.url, path, None if chunked else 200 * MB)
    with sock:
        sock.sendall(head)
        if not chunked:
            # The declared length alone is over the cap: the answer comes before any body.
            status, body = _read_response(sock)
        else:
            sent = _send_until_answered(sock, 200, chunked=True)
            status, body = _read_response(sock)
            assert sent < 200  # the server stopped reading at the cap (64 MiB)
    assert status == 413
    assert SHAPES[path](body), body


def test_20_mb_body_under_the_cap_is_served(qwen_server):
    payload = json.dumps({"model": QWEN, "max_tokens": 1, "temperature": 0,
                          "messages": [{"role": "user", "content": "hi"}]}).encode()
    sock, head = _head(qwen_server.url, "/v1/chat/completions", None)
    with sock:
        sock.sendall(head + b"%x\r\n%s\r\n" % (len(payload), payload))
        assert _send_until_answered(sock, 20, chunked=True) == 20
        status, body = _read_response(sock)
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] is not None
