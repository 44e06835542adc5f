"""A bounded load test on loopback: 200 requests, 8 clients, two models alternating."""

from __future__ import annotations

import concurrent.futures
import json

import httpx

from mlxhost.testing.http import live


def test_two_hundred_requests_eight_clients_alternating_models(fake_models, fake_plugin, capsys):
    fake_plugin.reply = "load test reply"
    fake_plugin.token_delay = 0.001
    fake_plugin.load_delay = 0.02

    with live(fake_plugin, fake_models) as url:
        def one(index: int) -> tuple[int, str, bool]:
            model = fake_models[index % 2]
            stream = index % 3 == 0
            body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": f"#{index}"}]}
            with httpx.Client(timeout=60) as client:
                response = client.post(f"{url}/v1/chat/completions", json=body)
            if not stream:
                text = response.json()["choices"][0]["message"]["content"] if response.status_code == 200 else ""
                return response.status_code, text, True
            lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
            chunks = [json.loads(line[6:]) for line in lines[:-1]]
            text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
            return response.status_code, text, lines[-1] == "data: [DONE]"

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(200)))
        health = httpx.get(f"{url}/health").json()

    statuses = [status for status, _, _ in results]
    assert statuses == [200] * 200  # none lost, none 5xx
    assert all(text == "load test reply" for _, text, _ in results)
    assert all(done for _, _, done in results)  # every stream ended with [DONE]
    assert fake_plugin.max_active == 1
    swaps = health["swaps"]
    assert swaps < 100  # grouping: far fewer than one swap per request
    with capsys.disabled():
        print(f"\n[load] 200 requests, 8 clients, 2 models alternating: {swaps} swaps")
