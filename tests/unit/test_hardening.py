"""Access control, limits and failures (fake engine)."""

from __future__ import annotations

import json

import pytest

from mlxhost.testing.http import chat, live, raw_post, read_until, sse_events
from mlxhost.testing.live import async_wait_until, wait_until


def test_api_key_required_except_health(make_client, fake_models):
    with make_client(api_key="s3cret") as client:
        assert client.get("/health").status_code == 200
        for response in (client.get("/v1/models"), chat(client, fake_models[0])):
            assert response.status_code == 401
            error = response.json()["error"]
            assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
        wrong = client.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = client.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200


def test_cors_off_by_default_and_configurable(make_client):
    headers = {"Origin": "http://app.local", "Access-Control-Request-Method": "POST"}
    with make_client() as client:
        response = client.get("/v1/models", headers={"Origin": "http://app.local"})
        assert "access-control-allow-origin" not in response.headers
    with make_client(cors_origins=["http://app.local"]) as client:
        response = client.options("/v1/chat/completions", headers=headers)
        assert response.headers["access-control-allow-origin"] == "http://app.local"


def test_body_size_cap_is_413(make_client, fake_models):
    with make_client(max_body_bytes=1000) as client:
        response = chat(client, fake_models[0], content="x" * 5000)
    assert response.status_code == 413
    assert "error" in response.json()


def test_deep_nesting_and_huge_arrays_are_400(client, fake_models):
    deep: object = "x"
    for _ in range(100):
        deep = [deep]
    response = client.post(
        "/v1/chat/completions", json={"model": fake_models[0], "messages": [], "x": deep}
    )
    assert response.status_code == 400 and "nested" in response.json()["error"]["message"]
    many = [{"role": "user", "content": "x"}] * 10_001
    response = client.post("/v1/chat/completions", json={"model": fake_models[0], "messages": many})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"


def test_unknown_fields_are_ignored(client, fake_models):
    response = chat(client, fake_models[0], metadata={"a": 1}, store=False, frequency_penalty=0)
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("response_format", {"type": "xml"}, "response_format"),
        ("top_logprobs", 2, "logprobs"),  # needs logprobs: true
    ],
)
def test_fields_that_change_the_output_are_rejected_not_ignored(client, fake_models, field, value, param):
    response = chat(client, fake_models[0], **{field: value})
    assert response.status_code == 400
    assert response.json()["error"]["param"].startswith(param)


def test_engine_failure_is_500_then_reload_and_recovery(client, fake_models, fake_plugin):
    fake_plugin.fail_after = 3
    response = chat(client, fake_models[0])
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "engine_error" and "injected" in error["message"]
    health = client.get("/health").json()
    assert "injected" in health["last_error"] and health["model"] is None
    fake_plugin.fail_after = None
    assert chat(client, fake_models[0]).status_code == 200
    loads = [e for e in fake_plugin.events if e[0] == "load"]
    assert len(loads) == 2  # reloaded after the failure


def test_engine_failure_mid_stream_ends_with_an_error_event(client, fake_models, fake_plugin):
    fake_plugin.fail_after = 3
    response = chat(client, fake_models[0], stream=True)
    assert response.status_code == 200
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "engine_error"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2]) == "Hel"
    fake_plugin.fail_after = None
    assert chat(client, fake_models[0]).status_code == 200


def test_queue_full_is_503_with_retry_after(fake_models, fake_plugin):
    import concurrent.futures

    import httpx

    body = {"model": fake_models[0], "messages": [{"role": "user", "content": "hi"}]}
    fake_plugin.gate.clear()  # the first generation holds the model until we open the gate
    # One at a time: the second request waits (with batching it would join).
    with live(fake_plugin, fake_models, max_queue=1, max_batch=1) as url:

        def post():
            return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)

        def health():
            return httpx.get(f"{url}/health", timeout=30).json()

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            running = pool.submit(post)
            assert fake_plugin.started.wait(30)  # it holds the model
            queued = pool.submit(post)
            wait_until(lambda: health()["waiting"] == 1, what="a queued request")
            rejected = [post() for _ in range(2)]  # the queue (1) is full
            fake_plugin.gate.set()
            responses = [running.result(30), queued.result(30), *rejected]
    statuses = [r.status_code for r in responses]
    assert statuses == [200, 200, 503, 503]
    busy = rejected[0]
    assert int(busy.headers["retry-after"]) >= 1
    assert busy.json()["error"]["code"] == "server_busy"
    assert json.loads(busy.text)["error"]["type"] == "server_error"


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_stops_generation_and_frees_the_slot(fake_models, fake_plugin, stream):
    import httpx

    model = fake_models[0]
    # Paced so that the generation is still running when the client hangs up; the
    # test waits on the engine's events, never on the clock.
    fake_plugin.reply = "x" * 100_000
    fake_plugin.token_delay = 0.001
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    with live(fake_plugin, fake_models) as url:
        with raw_post(url, "/v1/chat/completions", body) as sock:
            assert fake_plugin.first_token.wait(30)  # generation is under way
            if stream:
                read_until(sock, b"data: ")  # and the client has seen a chunk
        # Closing the socket must stop the generation (finishing 100k tokens would
        # not end with "cancelled") and free the model for the next request.
        wait_until(lambda: fake_plugin.cancelled(model) == 1, what="the generation stopping")
        fake_plugin.reply = "ok"
        quick = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": False}, timeout=30)
    assert quick.status_code == 200 and quick.json()["choices"][0]["message"]["content"] == "ok"
    assert fake_plugin.cancelled(model) == 1


async def test_a_stream_never_iterated_still_releases_the_slot(fake_models, fake_plugin):
    import gc

    from mlxhost.api import exchange
    from mlxhost.api.app import create_app
    from mlxhost.api.openai_chat import ChatFrames
    from mlxhost.api.schemas import parse_chat_request
    from mlxhost.families.plugins import make_plugin_manager
    from mlxhost.settings.table import Settings

    app = create_app(Settings(extra_models=fake_models), make_plugin_manager(extra=[fake_plugin]))
    state = app.state
    state.runtime.start()
    try:
        chat = parse_chat_request({"model": fake_models[0], "stream": True,
                                   "messages": [{"role": "user", "content": "hi"}]})
        response = await exchange.stream(state.service, [chat], ChatFrames(include_usage=False))
        assert state.runtime.scheduler.busy  # admitted: holds the lock
        del response  # the client vanished before the first byte was sent
        gc.collect()
        await async_wait_until(lambda: not state.runtime.scheduler.busy, what="the slot released")
    finally:
        state.runtime.stop()
