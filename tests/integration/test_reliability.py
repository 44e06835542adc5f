"""Faults against a real `mlxhost serve`: corrupt model, SIGTERM with work in flight."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time

import httpx
import openai
import pytest

from mlxhost.testing.models import ensure_test_model

from .conftest import QWEN

ASK = [{"role": "user", "content": "What is 2+2? Answer with a number."}]


@pytest.fixture
def corrupt_model(tmp_path):
    """A folder that looks like the Qwen model but whose weights are garbage."""
    source = ensure_test_model("qwen")
    folder = tmp_path / "corrupt-qwen"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, folder / name)
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 1000)
    return folder


def test_corrupt_model_is_a_clear_error_and_the_server_keeps_serving(client, qwen_server, corrupt_model):
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=str(corrupt_model), messages=ASK, max_tokens=4)
    error = caught.value.body
    assert error["code"] == "model_load_failed"
    assert str(corrupt_model) in error["message"]
    health = qwen_server.health()
    assert health["status"] == "ok" and health["last_error"]
    response = client.chat.completions.create(model=QWEN, messages=ASK, max_tokens=5, temperature=0)
    assert "4" in response.choices[0].message.content


def test_missing_weights_is_a_clear_error(client, tmp_path):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    shutil.copy(ensure_test_model("qwen") / "config.json", folder / "config.json")
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=str(folder), messages=ASK, max_tokens=4)
    assert caught.value.body["code"] == "model_load_failed"


def test_sigterm_finishes_in_flight_stream_and_exits_zero(start_server):
    server = start_server("--model", QWEN)
    server.__enter__()
    lines: list[str] = []

    def stream() -> None:
        body = {"model": QWEN, "messages": ASK, "max_tokens": 12, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as r:
            lines.extend(line for line in r.iter_lines() if line)

    client = threading.Thread(target=stream)
    client.start()
    time.sleep(1.0)  # the stream is under way
    server.process.send_signal(signal.SIGTERM)
    client.join(120)
    code = server.process.wait(60)
    assert code == 0, server.log_tail()
    assert lines and lines[-1] == "data: [DONE]"
    # New connections are refused once it is gone.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{server.url}/health", timeout=2)


def test_disconnect_mid_stream_frees_the_model_for_the_next_request(qwen_server, capsys):
    """A real socket closed mid-stream: the next request is admitted within 1 s."""
    import socket

    body = json.dumps({
        "model": QWEN, "stream": True, "max_tokens": 300, "temperature": 0,
        "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
    }).encode()
    sock = socket.create_connection(("127.0.0.1", qwen_server.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    received = b""
    while received.count(b"data: ") < 4:  # a few tokens are out: generation is under way
        received += sock.recv(65536)
    sock.close()
    closed = time.perf_counter()
    follow = {"model": QWEN, "stream": True, "max_tokens": 2, "messages": ASK}
    with httpx.stream("POST", f"{qwen_server.url}/v1/chat/completions", json=follow, timeout=60) as r:
        admitted = time.perf_counter() - closed  # headers are sent once it holds the model
        assert r.status_code == 200
        assert [line for line in r.iter_lines() if line][-1] == "data: [DONE]"
    with capsys.disabled():
        print(f"\n[cancel] next request admitted {admitted:.2f}s after the client disconnected")
    assert admitted < 1.0
