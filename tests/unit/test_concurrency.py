"""The generation lock and swaps under concurrent requests (fake engine)."""

from __future__ import annotations

import concurrent.futures

import httpx

from mlxhost.testing.fake_engine import FakeEnginePlugin
from mlxhost.testing.http import live, sse_events
from mlxhost.testing.live import wait_until


def test_concurrent_requests_for_two_models_never_overlap(fake_models):
    plugin = FakeEnginePlugin(reply="abcdefghij")
    plugin.gate.clear()  # the first generation holds the model until all six have arrived
    with live(plugin, fake_models) as url:

        def ask(index: int) -> httpx.Response:
            body = {
                "model": fake_models[index % 2],
                "messages": [{"role": "user", "content": "hi"}],
                "stream": index % 3 == 0,
            }
            return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)

        def all_arrived() -> bool:  # one generating, the rest holding a slot or queued
            # (a same-model request arriving before the first swap waiter joins the holders)
            health = httpx.get(f"{url}/health", timeout=30).json()
            return health["running"] + health["waiting"] == 6

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            asks = [pool.submit(ask, i) for i in range(6)]
            assert plugin.started.wait(30)
            wait_until(all_arrived, what="all six requests")
            plugin.gate.set()
            responses = [f.result(30) for f in asks]
    assert [r.status_code for r in responses] == [200] * 6
    assert plugin.max_active == 1  # generation never ran twice at once
    assert [e[0] for e in plugin.events].count("generate") == 6
    for index, response in enumerate(responses):
        if index % 3 == 0:
            chunks = [e for e in sse_events(response) if e != "[DONE]"]
            text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        else:
            text = response.json()["choices"][0]["message"]["content"]
        assert text == "abcdefghij"
