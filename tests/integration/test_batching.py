"""Continuous batching against a real `mlxhost serve` and a real model (SmolLM2
135M; Qwen 0.5B where a tool call is parsed): concurrent requests decode in one
batch and each gets what it would get alone."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from mlxhost.cli.blas import find_openblas
from mlxhost.families.toolcalls import schema_errors
from mlxhost.models.starter.builder import TEST_MODELS
from mlxhost.testing.live import wait_until
from mlxhost.testing.smollm2 import NEVER_STOP
from mlxhost.testing.tools import QUESTION, WEATHER_TOOL

QWEN = TEST_MODELS["qwen"].repo_id
SMOL = TEST_MODELS["smollm2"].repo_id
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}, "unit": {"enum": ["apples", "pears"]}},
    "required": ["answer", "unit"],
    "additionalProperties": False,
}
PROMPTS = ["What is 2+2?", "Write a haiku about the sea.", "List three colors.", "Say hello in French."]


def ask(client, prompt: str, model: str = SMOL, **extra):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], **extra
    ).choices[0]


def test_concurrent_requests_each_get_what_they_get_alone(smol_client, smol_server):
    settings = [
        {"temperature": 0, "max_tokens": 24},
        {"temperature": 0, "max_tokens": 12, "stop": ["\n"]},
        {"temperature": 0.8, "seed": 7, "max_tokens": 16},
        {"temperature": 0, "max_tokens": 20},
    ]
    alone = [ask(smol_client, p, **s) for p, s in zip(PROMPTS, settings)]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda ps: ask(smol_client, ps[0], **ps[1]), zip(PROMPTS, settings)))
    # Greedy and seeded sequences: token-identical to their solo runs (fp32 on CPU
    # rounds the same batched; docs/benchmarks.md notes where a GPU may not).
    assert [c.message.content for c in together] == [c.message.content for c in alone]
    assert [c.finish_reason for c in together] == [c.finish_reason for c in alone]
    assert "\n" not in together[1].message.content
    assert smol_server.health()["batch"]["peak"] >= 2  # they did decode together
    if find_openblas() is not None:
        # The shared server runs --cpu-split on: these batch steps ran the split layers.
        assert smol_server.health()["kernels"]["cpu_split"] is True


def test_a_tool_call_and_a_json_schema_reply_parse_inside_a_batch(client):
    def tool_call():
        return client.chat.completions.create(
            model=QWEN, messages=QUESTION, tools=[WEATHER_TOOL], temperature=0, max_tokens=60
        ).choices[0]

    def structured():
        return ask(
            client, "How many apples are 2 apples plus 2 apples?", model=QWEN, max_tokens=60, temperature=0,
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}},
        )

    with ThreadPoolExecutor(3) as pool:
        calls = pool.submit(tool_call)
        shaped = pool.submit(structured)
        prose = pool.submit(ask, client, PROMPTS[1], model=QWEN, max_tokens=30, temperature=0)
        call, value, text = calls.result(), shaped.result(), prose.result()
    assert call.finish_reason == "tool_calls"
    assert json.loads(call.message.tool_calls[0].function.arguments)["city"].lower() == "paris"
    assert schema_errors(json.loads(value.message.content), SCHEMA) == []
    assert text.message.content


def test_a_client_leaving_mid_batch_does_not_disturb_the_others(smol_client, smol_server):
    expected = ask(smol_client, PROMPTS[1], temperature=0, max_tokens=30).message.content
    first_token = threading.Event()
    both_running = threading.Event()

    def leaver() -> None:
        body = {"model": SMOL, "stream": True, "max_tokens": 400, "temperature": 0, "logit_bias": NEVER_STOP,
                "messages": [{"role": "user", "content": "Count from 1 to 500."}]}
        with httpx.stream("POST", f"{smol_server.url}/v1/chat/completions", json=body, timeout=120) as r:
            for line in r.iter_lines():
                if '"content"' in line:
                    first_token.set()
                    both_running.wait(120)
                    return  # the client goes away mid-stream, beside the other

    with ThreadPoolExecutor(2) as pool:
        gone = pool.submit(leaver)
        assert first_token.wait(120)
        staying = pool.submit(ask, smol_client, PROMPTS[1], temperature=0, max_tokens=30)
        wait_until(lambda: smol_server.health()["running"] == 2, timeout=120, what="two in the batch")
        both_running.set()
        gone.result()
        assert staying.result().message.content == expected
    assert smol_server.health()["running"] == 0


def test_a_request_running_alone_moves_into_the_batch_unchanged(smol_client, smol_server):
    """A request decodes alone (mlx-lm's single-sequence loop) until a second one
    arrives; then it continues inside the batch. Its reply, with a grammar and
    penalties carried across the move, is what it is when it runs alone
    throughout, and so is the newcomer's."""
    first = {"model": SMOL, "temperature": 0, "max_tokens": 48, "frequency_penalty": 0.5,
             "messages": [{"role": "user", "content": "Describe 3 fruits as JSON."}],
             "response_format": {"type": "json_object"}}
    alone = httpx.post(f"{smol_server.url}/v1/chat/completions", json=first, timeout=300).json()
    expected_second = ask(smol_client, PROMPTS[2], temperature=0, max_tokens=16).message.content
    pieces: list[str] = []
    started = threading.Event()

    def stream_first() -> str:
        with httpx.stream("POST", f"{smol_server.url}/v1/chat/completions",
                          json={**first, "stream": True}, timeout=300) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                    pieces.append(delta)
                    if len("".join(pieces)) >= 8:
                        started.set()  # several tokens in: it has been decoding alone
        return "".join(pieces)

    moved = smol_server.health()["batch"]["moved"]
    with ThreadPoolExecutor(2) as pool:
        streamed = pool.submit(stream_first)
        assert started.wait(300)
        second = pool.submit(ask, smol_client, PROMPTS[2], temperature=0, max_tokens=16)
        assert second.result().message.content == expected_second
        assert streamed.result() == alone["choices"][0]["message"]["content"]
    assert smol_server.health()["batch"]["moved"] == moved + 1  # it did move into the batch
