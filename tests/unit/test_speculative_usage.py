"""Speculative decoding's counts reach the client: OpenAI's predicted-output
fields in chat and legacy completions usage (streamed, not, and n choices
added up), and the per-request log line (fake engine that reports drafts)."""

from __future__ import annotations

import json
import logging

import pytest
from litestar.testing import TestClient

from mlxhost.api.app import create_app
from mlxhost.families.plugins import make_plugin_manager
from mlxhost.settings.table import Settings
from mlxhost.testing.fake_engine import FakeEnginePlugin, make_fake_model

REPLY = "abcde"  # 5 tokens: drafts of 3 at tokens 0, 2, 4; tokens 1 and 3 were drafted
DRAFTED, ACCEPTED = 9, 2
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def model(tmp_path):
    return str(make_fake_model(tmp_path / "drafter", context_window=4096))


@pytest.fixture
def plugin():
    plugin = FakeEnginePlugin(reply=REPLY)
    plugin.drafting = True
    return plugin


@pytest.fixture
def client(plugin, model):
    app = create_app(Settings(extra_models=[model]), make_plugin_manager(extra=[plugin]))
    with TestClient(app) as test_client:
        yield test_client


def details(accepted, drafted):
    return {"reasoning_tokens": 0, "accepted_prediction_tokens": accepted,
            "rejected_prediction_tokens": drafted - accepted}


def test_chat_usage_reports_accepted_and_rejected_drafts(client, model, caplog):
    with caplog.at_level(logging.INFO, logger="mlxhost.service.chat"):
        body = client.post("/v1/chat/completions", json={"model": model, "messages": MSG}).json()
    assert body["choices"][0]["message"]["content"] == REPLY
    assert body["usage"]["completion_tokens_details"] == details(ACCEPTED, DRAFTED)
    assert f"prompt lookup {ACCEPTED} of {DRAFTED} drafted accepted" in caplog.text


def test_chat_choices_and_the_stream_add_up(client, model):
    body = client.post("/v1/chat/completions", json={"model": model, "messages": MSG, "n": 2}).json()
    assert body["usage"]["completion_tokens_details"] == details(2 * ACCEPTED, 2 * DRAFTED)
    response = client.post("/v1/chat/completions", json={
        "model": model, "messages": MSG, "n": 2, "stream": True,
        "stream_options": {"include_usage": True}})
    chunks = [json.loads(line[6:]) for line in response.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    assert chunks[-1]["usage"]["completion_tokens_details"] == details(2 * ACCEPTED, 2 * DRAFTED)


def test_a_stop_string_counts_only_the_drafted_tokens_that_reached_the_reply(client, model):
    # The reply stops at "c" (token 2): token 1 was the only accepted draft token seen.
    body = client.post("/v1/chat/completions", json={"model": model, "messages": MSG, "stop": ["c"]}).json()
    assert body["choices"][0]["message"]["content"] == "ab"
    assert body["usage"]["completion_tokens_details"] == details(1, 6)


def test_legacy_completions_usage_has_the_fields(client, model):
    body = client.post("/v1/completions", json={"model": model, "prompt": "hi"}).json()
    assert body["usage"]["completion_tokens_details"] == details(ACCEPTED, DRAFTED)


def test_without_drafts_the_fields_are_zero(client, model, plugin):
    plugin.drafting = False
    body = client.post("/v1/chat/completions", json={"model": model, "messages": MSG}).json()
    assert body["usage"]["completion_tokens_details"] == details(0, 0)


def test_metrics_count_drafted_and_accepted_tokens(client, model):
    for _ in range(2):
        client.post("/v1/chat/completions", json={"model": model, "messages": MSG})
    text = client.get("/metrics").text
    assert f"mlxhost_speculative_drafted_tokens_total {2 * DRAFTED}.0" in text
    assert f"mlxhost_speculative_accepted_tokens_total {2 * ACCEPTED}.0" in text
