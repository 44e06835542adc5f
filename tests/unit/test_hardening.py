"""Access control, limits and failures (fake engine)."""

from __future__ import annotations

import json

from .test_chat_api import chat, sse_events


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
    response = chat(client, fake_models[0], frequency_penalty=0.5, metadata={"a": 1}, store=False)
    assert response.status_code == 200


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


def live(fake_plugin, fake_models, **settings):
    from mlxhost.app import create_app
    from mlxhost.plugins import make_plugin_manager
    from mlxhost.settings import Settings
    from mlxhost.testing.live import live_server

    app = create_app(Settings(extra_models=fake_models, **settings), make_plugin_manager(extra=[fake_plugin]))
    return live_server(app)


def test_queue_full_is_503_with_retry_after(fake_models, fake_plugin):
    import concurrent.futures

    import httpx

    fake_plugin.token_delay = 0.02
    body = {"model": fake_models[0], "messages": [{"role": "user", "content": "hi"}]}
    with live(fake_plugin, fake_models, max_queue=1) as url:
        def post(_):
            return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(post, range(4)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 503, 503]
    busy = next(r for r in responses if r.status_code == 503)
    assert int(busy.headers["retry-after"]) >= 1
    assert busy.json()["error"]["code"] == "server_busy"
    assert json.loads(busy.text)["error"]["type"] == "server_error"


def test_client_disconnect_stops_generation_and_frees_the_slot(fake_models, fake_plugin):
    import time

    import httpx

    fake_plugin.reply = "x" * 2000
    fake_plugin.token_delay = 0.01
    with live(fake_plugin, fake_models) as url:
        for stream in (True, False):
            body = {"model": fake_models[0], "messages": [{"role": "user", "content": "hi"}], "stream": stream}
            with httpx.Client(timeout=30) as client:
                try:
                    with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=0.5) as r:
                        for _ in r.iter_lines():
                            break
                        time.sleep(0.3)
                except httpx.ReadTimeout:
                    pass  # non-streaming: we gave up waiting, the socket closes
            started = time.perf_counter()
            fake_plugin.reply = "ok"
            quick = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": False}, timeout=30)
            waited = time.perf_counter() - started
            fake_plugin.reply = "x" * 2000
            assert quick.status_code == 200 and quick.json()["choices"][0]["message"]["content"] == "ok"
            assert waited < 1.0, f"next request waited {waited:.2f}s"
    assert fake_plugin.events.count(("cancelled", fake_models[0])) == 2


async def test_a_stream_never_iterated_still_releases_the_slot(fake_models, fake_plugin):
    import asyncio
    import gc

    from mlxhost.api.responses import open_sse
    from mlxhost.api.schemas import parse_chat_request
    from mlxhost.app import create_app
    from mlxhost.plugins import make_plugin_manager
    from mlxhost.settings import Settings

    app = create_app(Settings(extra_models=fake_models), make_plugin_manager(extra=[fake_plugin]))
    state = app.state
    state.worker.start()
    try:
        chat = parse_chat_request({"model": fake_models[0], "stream": True,
                                   "messages": [{"role": "user", "content": "hi"}]})
        _headers, stream = await open_sse(state.service, chat, include_usage=False)
        assert state.slot.scheduler.busy  # admitted: holds the lock
        del stream  # the client vanished before the first byte was sent
        gc.collect()
        for _ in range(50):
            await asyncio.sleep(0.01)
            if not state.slot.scheduler.busy:
                break
        assert not state.slot.scheduler.busy
    finally:
        state.worker.stop()
