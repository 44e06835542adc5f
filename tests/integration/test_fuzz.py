"""Schema-driven fuzzing (schemathesis) of a real server with the real Qwen 0.5B model.

Every response must be below 500, and every error must be in OpenAI's shape.
Half the generated chat bodies get the real model id (and a small completion
budget, to keep CPU time bounded) so the generation path is fuzzed too, not
only validation.
"""

from __future__ import annotations

import zlib

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from .conftest import QWEN


@pytest.fixture(scope="module")
def fuzz_server(start_server):
    with start_server("--model", QWEN, "--context-window", "512") as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/schema/openapi.json")


def steer(body):
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return
    if zlib.crc32(repr(body).encode()) % 2 == 0:
        body["model"] = QWEN
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), int) and not isinstance(body.get(key), bool):
            body[key] = min(body[key], 4)
    if "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_tokens"] = 4


MODES = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]


@pytest.mark.parametrize("mode", MODES, ids=["valid", "invalid"])
def test_no_server_errors_and_openai_shaped_errors(api_schema, mode):
    """About 200 cases in all: chat 60 per mode, the 3 other operations 15 each."""
    for result in api_schema.get_all_operations():
        operation = result.ok()
        examples = 60 if operation.path == "/v1/chat/completions" else 15

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            if isinstance(case.body, dict):
                steer(case.body)
            response = case.call(timeout=300)
            assert response.status_code < 500, (response.status_code, response.text[:500], case.body)
            if response.status_code >= 400:
                error = response.json()["error"]
                assert isinstance(error["message"], str) and error["message"]
                assert set(error) >= {"message", "type", "param", "code"}

        try:
            run()
        except Unsatisfiable:
            # GET /health and GET /v1/models take no input to make invalid.
            assert mode is schemathesis.GenerationMode.NEGATIVE and operation.method == "get"
