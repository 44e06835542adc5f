"""LangChain's standard chat-model integration tests (``langchain-tests``) with
``langchain_openai.ChatOpenAI`` pointed at a real ``mlxhost serve`` (issue #12).
Results: docs/compatibility.md.

The suite runs in two classes. The tests of tools (calls, choice, histories,
agent loop) need a model that calls tools coherently: they run on the
Qwen2.5-Coder 0.5B test model. The others (invoke, stream, batch, usage,
stop sequences, JSON mode, structured output through a json_schema grammar)
check what the server answers, not what the model knows: they run on
SmolLM2-135M, ~4x faster on CPU, and the Qwen class skips them."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests

from mlxhost.models.starter.builder import TEST_MODELS

QWEN = TEST_MODELS["qwen"].repo_id
SMOL = TEST_MODELS["smollm2"].repo_id

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

# The standard tests that need no tools: TestChatOpenAIOnSmolLM2 runs them (it
# declares no tool calling, so langchain-tests skips the others there), and the
# Qwen class skips them unless MLXHOST_TEST_FULL=1. JSON mode and the optional
# structured-output parameter stay on Qwen (xfail on SmolLM2, below).
ON_SMOLLM2 = frozenset({
    "test_invoke", "test_ainvoke", "test_stream", "test_astream", "test_stream_events_v3",
    "test_astream_events_v3", "test_batch", "test_abatch", "test_conversation",
    "test_double_messages_conversation", "test_usage_metadata", "test_usage_metadata_streaming",
    "test_stop_sequence", "test_message_with_name", "test_structured_output",
    "test_structured_output_async", "test_structured_output_pydantic_2_v1",
})


class _ChatOpenAIOnMlxhost(ChatModelIntegrationTests):
    """ChatOpenAI against a server of ``model_id``; each subclass points it at one."""

    server_url: str = ""
    model_id: str = ""
    runs_elsewhere: frozenset[str] = frozenset()  # standard tests another class runs

    @pytest.fixture(autouse=True)
    def _skip_client_side_twins(self, request):
        node = request.node
        twin = CLIENT_SIDE_TWINS.get(node.name) or CLIENT_SIDE_TWINS.get(node.originalname)
        if node.originalname in self.runs_elsewhere and not FULL:
            pytest.skip("runs on SmolLM2 (TestChatOpenAIOnSmolLM2; MLXHOST_TEST_FULL=1 runs it here too)")
        if twin and not FULL:
            pytest.skip(f"client-side twin of {twin} (MLXHOST_TEST_FULL=1 runs it)")
        if node.get_closest_marker("xfail") and not FULL:
            # Non-strict xfails pass either way: in the default run they would
            # cost ~25 s and could not fail.
            pytest.skip("fails for the test model's weakness, not the server's (MLXHOST_TEST_FULL=1 runs it)")

    @property
    def chat_model_class(self) -> type[ChatOpenAI]:
        return ChatOpenAI

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "base_url": f"{self.server_url}/v1",
            "api_key": "unused",
            "model": self.model_id,
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

    # Both test models are text models: no images, PDFs or audio.
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


class TestChatOpenAIOnMlxhost(_ChatOpenAIOnMlxhost):
    """The tests of tools, on the Qwen2.5-Coder 0.5B test model."""

    model_id = QWEN
    runs_elsewhere = ON_SMOLLM2

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _point_at_server(cls, qwen_server):
        cls.server_url = qwen_server.url

    # Fail only because the 0.5B model is too weak: the server's answers are
    # right (see docs/compatibility.md for each request and output).
    @pytest.mark.xfail(
        reason="0.5B model: the schema-valid JSON reply repeats one sentence inside "
        "'setup' until max_tokens, so finish_reason is length",
        strict=False,
    )
    def test_structured_output_optional_param(self, model) -> None:
        super().test_structured_output_optional_param(model)


class TestChatOpenAIOnSmolLM2(_ChatOpenAIOnMlxhost):
    """The tests of the server's replies (no tools), on SmolLM2-135M-Instruct."""

    model_id = SMOL

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _point_at_server(cls, smol_server):
        cls.server_url = smol_server.url

    # Tools stay on Qwen: the 135M model's calls (the generic family's default
    # format, test_smollm2_tools.py) are too weak for LangChain's tool tests.
    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    # Fail only because the 135M model is too weak: the grammar allows any run
    # of whitespace between JSON tokens, and SmolLM2 fills max_tokens with it.
    @pytest.mark.xfail(
        reason="135M model: the json_object reply pads with whitespace until max_tokens",
        strict=False,
    )
    def test_json_mode(self, model) -> None:
        super().test_json_mode(model)

    @pytest.mark.xfail(
        reason="135M model: the json_schema reply pads with whitespace until max_tokens",
        strict=False,
    )
    def test_structured_output_optional_param(self, model) -> None:
        super().test_structured_output_optional_param(model)
