"""LangChain's standard chat-model integration tests (``langchain-tests``) with
``langchain_openai.ChatOpenAI`` pointed at a real ``mlxhost serve`` running the
Qwen2.5-Coder 0.5B test model (issue #12). Results: docs/compatibility.md."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests

from mlxhost.starter.builder import TEST_MODELS

QWEN = TEST_MODELS["qwen"].repo_id

# Client-side twins of requests other tests here already make: langchain's async
# client sends the same bodies as the sync one, a pydantic v1 model, a
# TypedDict or a plain JSON schema become the same kind of `json_schema` /
# tool request on the wire as the pydantic v2 model, and `output_version="v1"`
# ([model1]) only changes how langchain builds its message objects from the
# same replies. They cost ~150 s on 2 CPU cores, so the default run skips
# them; MLXHOST_TEST_FULL=1 runs them (docs/compatibility.md reports a full
# run). Keyed by the test's full name.
CLIENT_SIDE_TWINS = {
    "test_structured_output_async": "test_structured_output",
    "test_tool_calling_async": "test_tool_calling",
    "test_structured_output_pydantic_2_v1": "test_structured_output[pydantic]",
    "test_structured_output[typeddict]": "test_structured_output[pydantic]",
    "test_structured_output[json_schema]": "test_structured_output[pydantic]",
    "test_agent_loop[model1]": "test_agent_loop[model0]",
    "test_tool_calling[model1]": "test_tool_calling[model0]",
    "test_stream[model1]": "test_stream[model0]",
    "test_astream[model1]": "test_astream[model0]",
}
FULL = os.environ.get("MLXHOST_TEST_FULL") == "1"


class TestChatOpenAIOnMlxhost(ChatModelIntegrationTests):
    server_url: str = ""

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _point_at_server(cls, qwen_server):
        cls.server_url = qwen_server.url

    @pytest.fixture(autouse=True)
    def _skip_client_side_twins(self, request):
        node = request.node
        twin = CLIENT_SIDE_TWINS.get(node.name) or CLIENT_SIDE_TWINS.get(node.originalname)
        if twin and not FULL:
            pytest.skip(f"client-side twin of {twin} (MLXHOST_TEST_FULL=1 runs it)")
        if node.get_closest_marker("xfail") and not FULL:
            # Non-strict xfails pass either way: in the default run they would
            # cost ~25 s and could not fail.
            pytest.skip("fails for the 0.5B model's weakness, not the server's (MLXHOST_TEST_FULL=1 runs it)")

    @property
    def chat_model_class(self) -> type[ChatOpenAI]:
        return ChatOpenAI

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "base_url": f"{self.server_url}/v1",
            "api_key": "unused",
            "model": QWEN,
            "temperature": 0,
            # Short replies keep the module fast on CPU; long enough for a tool
            # call or a small JSON object.
            "max_tokens": 64,
            "timeout": 120,
            "max_retries": 0,
            # ChatOpenAI asks for usage in streams only on OpenAI's own base URL.
            "stream_usage": True,
            # A client of its own per test: langchain-openai caches one async
            # client per base URL, bound to the first test's event loop, and
            # pytest-asyncio gives every async test a new loop.
            "http_async_client": httpx.AsyncClient(timeout=120),
        }

    # What mlxhost supports for this model (docs/api.md, docs/tools.md).
    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    # Qwen2.5-Coder 0.5B is a text model: no images, PDFs or audio.
    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_image_tool_message(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False

    # Fail only because the 0.5B model is too weak: the server's answers are
    # right (see docs/compatibility.md for each request and output).
    @pytest.mark.xfail(
        reason="0.5B model: the schema-valid JSON reply repeats one sentence inside "
        "'setup' until max_tokens, so finish_reason is length",
        strict=False,
    )
    def test_structured_output_optional_param(self, model) -> None:
        super().test_structured_output_optional_param(model)
