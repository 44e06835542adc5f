"""The shared request lifecycle (api/exchange.py) on the fake engine: keep-alive
frames on every streaming endpoint while a request waits for its first token
(the fake engine's closed gate stands for a long prefill) or in the queue, and
a client that leaves while queued. Event-based: the only time in these tests is
the bound each read must meet."""

from __future__ import annotations

import httpx
import pytest

from mlxhost.testing.http import live, raw_post, read_until

# A small keep-alive interval, and the bound each read must meet: generous, for a
# shared 2-core machine (the frames come every KEEPALIVE seconds when it is idle).
KEEPALIVE = 0.3
BOUND = 10 * KEEPALIVE

USER = [{"role": "user", "content": "hi"}]


# (path, body, the keep-alive frame, frames of that kind the stream sends anyway, the last frame)
ENDPOINTS = {
    "chat": ("/v1/chat/completions", {"messages": USER, "stream": True},
             b": keep-alive\n\n", 0, b"data: [DONE]"),
    "completions": ("/v1/completions", {"prompt": "hi", "stream": True, "max_tokens": 50},
                    b": keep-alive\n\n", 0, b"data: [DONE]"),
    "anthropic": ("/v1/messages", {"messages": USER, "stream": True, "max_tokens": 50},
                  b'"delta":{"type":"text_delta","text":""}', 0, b"event: message_stop"),
    "responses": ("/v1/responses", {"input": "hi", "stream": True},
                  b"event: response.in_progress\n", 1, b"event: response.completed"),
    "ollama": ("/api/chat", {"messages": USER},
               b'"message":{"role":"assistant","content":""}}\n', 0, b'"done":true'),
}


@pytest.mark.parametrize("api", list(ENDPOINTS))
def test_keepalive_while_the_first_token_is_awaited(fake_plugin, fake_models, api):
    path, body, frame, anyway, last = ENDPOINTS[api]
    fake_plugin.reply = "Hello"
    fake_plugin.gate.clear()  # the generation waits before its first token: a long prefill
    with (live(fake_plugin, fake_models, stream_keepalive=KEEPALIVE) as url,
          raw_post(url, path, {"model": fake_models[0], **body}, timeout=BOUND) as sock):
        # Each read must bring bytes within BOUND (socket.timeout otherwise).
        seen = read_until(sock, frame, anyway + 3)
        assert fake_plugin.started.is_set() and not fake_plugin.first_token.is_set()
        fake_plugin.gate.set()
        after = read_until(sock, last)
    assert seen.startswith(b"HTTP/1.1 200")
    assert b'"H"' in after  # the reply's first token, after the keep-alives


def test_keepalive_while_queued_then_the_answer(fake_plugin, fake_models):
    fake_plugin.reply = "Hi"
    fake_plugin.gate.clear()
    with live(fake_plugin, fake_models, stream_keepalive=KEEPALIVE, stream_admission_wait=KEEPALIVE,
              max_batch=1) as url:
        body = {"model": fake_models[0], "messages": USER, "stream": True}
        with raw_post(url, "/v1/chat/completions", body, timeout=BOUND) as holder:
            assert fake_plugin.started.wait(BOUND)  # the first request holds the model
            with raw_post(url, "/v1/chat/completions", body, timeout=BOUND) as queued:
                # Admission outlasts the interval: headers, then keep-alives while queued.
                seen = read_until(queued, b": keep-alive\n\n", 2)
                assert seen.startswith(b"HTTP/1.1 200") and b"data:" not in seen
                fake_plugin.gate.set()
                read_until(holder, b"data: [DONE]")
                seen += read_until(queued, b"data: [DONE]")
    assert b'"content":"H"' in seen and b'"finish_reason":"stop"' in seen


def test_a_client_that_leaves_while_queued_frees_its_place(fake_plugin, fake_models):
    fake_plugin.reply = "ok"
    fake_plugin.gate.clear()
    with live(fake_plugin, fake_models, stream_keepalive=KEEPALIVE, stream_admission_wait=KEEPALIVE,
              max_batch=1) as url:
        body = {"model": fake_models[0], "messages": USER, "stream": True}
        with raw_post(url, "/v1/chat/completions", body, timeout=BOUND) as holder:
            assert fake_plugin.started.wait(BOUND)
            with raw_post(url, "/v1/chat/completions", body, timeout=BOUND) as queued:
                read_until(queued, b": keep-alive\n\n")
            # The queued client is gone; the holder finishes, then a new request runs.
            fake_plugin.gate.set()
            read_until(holder, b"data: [DONE]")
        after = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                           json={"model": fake_models[0], "messages": USER})
        assert after.status_code == 200 and after.json()["choices"][0]["message"]["content"] == "ok"
        health = httpx.get(f"{url}/health", timeout=30).json()
        assert health["waiting"] == 0 and health["running"] == 0


def test_admission_errors_before_the_interval_are_http_errors(fake_plugin, fake_models):
    with live(fake_plugin, fake_models, stream_keepalive=KEEPALIVE) as url:
        body = {"model": "no-such-model", "messages": USER, "stream": True, "max_tokens": 5}
        for path in ("/v1/chat/completions", "/v1/messages", "/v1/responses", "/api/chat"):
            response = httpx.post(f"{url}{path}", json={**body, "input": "hi"}, timeout=30)
            assert response.status_code == 404, (path, response.text)


def test_an_admission_error_after_the_headers_is_the_apis_error_event(fake_plugin, fake_models):
    fake_plugin.gate.clear()
    with live(fake_plugin, fake_models, stream_keepalive=KEEPALIVE, stream_admission_wait=KEEPALIVE,
              max_batch=1) as url:
        hold = {"model": fake_models[1], "messages": USER, "stream": True, "max_tokens": 5}
        with raw_post(url, "/v1/messages", hold, timeout=BOUND) as holder:
            assert fake_plugin.started.wait(BOUND)
            # Queued past the interval, then found too long for the window.
            late = {**hold, "max_tokens": 500}
            with raw_post(url, "/v1/messages", late, timeout=BOUND) as queued:
                seen = read_until(queued, b"event: ping\n", 2)
                assert seen.startswith(b"HTTP/1.1 200")
                fake_plugin.gate.set()
                read_until(holder, b"event: message_stop")
                seen += read_until(queued, b"and try again")  # the end of the error event
    assert b"event: error\n" in seen
    assert b"input length and `max_tokens` exceed context limit" in seen
    assert b"message_start" not in seen


def test_a_slow_admission_within_the_admission_wait_is_still_an_http_error(fake_plugin, fake_models):
    from mlxhost.testing.live import wait_until

    fake_plugin.gate.clear()
    # Admission outlasts the keep-alive interval but not --stream-admission-wait.
    with live(fake_plugin, fake_models, stream_keepalive=KEEPALIVE, max_batch=1) as url:
        hold = {"model": fake_models[1], "messages": USER, "stream": True, "max_tokens": 5}
        with raw_post(url, "/v1/messages", hold, timeout=BOUND) as holder:
            assert fake_plugin.started.wait(BOUND)
            with raw_post(url, "/v1/messages", {**hold, "max_tokens": 500}, timeout=60) as queued:
                wait_until(lambda: httpx.get(f"{url}/health", timeout=30).json()["waiting"] == 1,
                           what="the second request queued")
                fake_plugin.gate.set()
                read_until(holder, b"event: message_stop")
                answer = read_until(queued, b"and try again")
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"event:" not in answer
