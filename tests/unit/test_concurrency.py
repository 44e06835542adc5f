"""The generation lock and swaps under concurrent requests (fake engine)."""

from __future__ import annotations

import asyncio

from litestar.testing import AsyncTestClient

from mlxhost.app import create_app
from mlxhost.plugins import make_plugin_manager
from mlxhost.settings import Settings
from mlxhost.testing.fake_engine import FakeEnginePlugin

from .test_chat_api import sse_events


async def test_concurrent_requests_for_two_models_never_overlap(fake_models):
    plugin = FakeEnginePlugin(reply="abcdefghij", token_delay=0.01)
    app = create_app(Settings(extra_models=fake_models), make_plugin_manager(extra=[plugin]))
    async with AsyncTestClient(app) as client:

        async def ask(model: str, stream: bool):
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
            return await client.post("/v1/chat/completions", json=body)

        responses = await asyncio.gather(
            *(ask(fake_models[i % 2], stream=i % 3 == 0) for i in range(6))
        )
    assert [r.status_code for r in responses] == [200] * 6
    assert plugin.max_active == 1  # generation never ran twice at once
    for index, response in enumerate(responses):
        if index % 3 == 0:
            chunks = [e for e in sse_events(response) if e != "[DONE]"]
            text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        else:
            text = response.json()["choices"][0]["message"]["content"]
        assert text == "abcdefghij"
