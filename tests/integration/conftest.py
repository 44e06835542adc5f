"""Integration fixtures: real MLX models in a temporary Hugging Face cache, and a
real ``mlxhost serve`` subprocess per module where a module needs its own flags,
and two shared servers (default flags): one Qwen for every module that asks for
``qwen_server`` and one SmolLM2 for ``smol_server``. On 2 CPU cores a server
start costs ~8 s, and these modules only need a running model. SmolLM2 (135M,
fp32) is the fast default; Qwen stays where a test needs a coherent answer or a
Qwen feature (tool calls, FIM).

Models are built once (minutes) into the test-model cache (``$MLXHOST_TEST_MODELS``,
default ``~/.cache/mlxhost/test-models``) and reused by later runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlxhost.models.starter.builder import TEST_MODELS, ensure_test_model, install_into_hf_cache
from mlxhost.testing.embed_models import (
    MINILM_REPO,
    TINY_RERANKER_REPO,
    ensure_minilm,
    ensure_tiny_reranker,
)
from mlxhost.testing.server import ServerProcess
from mlxhost.testing.vlm_models import TINY_VLMS, ensure_tiny_vlm

QWEN = TEST_MODELS["qwen"].repo_id
GEMMA = TEST_MODELS["gemma"].repo_id
SMOL = TEST_MODELS["smollm2"].repo_id


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def hf_hub_cache() -> Path:
    """The temporary HF cache (set in tests/conftest.py) holding the test models."""
    cache = Path(os.environ["HF_HUB_CACHE"])
    for name in ("qwen", "gemma", "smollm2"):
        install_into_hf_cache(ensure_test_model(name), TEST_MODELS[name].repo_id, cache)
    for name, repo_id in TINY_VLMS.items():
        install_into_hf_cache(ensure_tiny_vlm(name), repo_id, cache)
    # Embedding and rerank models, served beside the chat model (test_embeddings.py).
    install_into_hf_cache(ensure_minilm(), MINILM_REPO, cache)
    install_into_hf_cache(ensure_tiny_reranker(), TINY_RERANKER_REPO, cache)
    return cache


@pytest.fixture(scope="session")
def start_server(hf_hub_cache, tmp_path_factory):
    """``with start_server("--model", X) as server:`` a real server on a free port."""

    def start(*args: str, env: dict[str, str] | None = None, **kwargs) -> ServerProcess:
        log = tmp_path_factory.mktemp("server") / "serve.log"
        server_env = {"HF_HUB_CACHE": str(hf_hub_cache), "HF_HUB_OFFLINE": "1", **(env or {})}
        return ServerProcess(list(args), env=server_env, log_path=log, **kwargs)

    return start


@pytest.fixture(scope="session")
def qwen_server(start_server):
    # --cpu-split on: the batches these modules run take the split matmuls
    # wherever OpenBLAS runs (auto would measure first; tests/unit/test_cpu_split.py).
    with start_server("--model", QWEN, "--cpu-split", "on") as server:
        yield server


@pytest.fixture(scope="session")
def smol_server(start_server):
    # The generic family serves it (its own template, the default tool format).
    with start_server("--model", SMOL, "--cpu-split", "on") as server:
        yield server


@pytest.fixture
def smol_client(smol_server):
    from openai import OpenAI

    return OpenAI(base_url=f"{smol_server.url}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture
def client(qwen_server):
    from openai import OpenAI

    return OpenAI(base_url=f"{qwen_server.url}/v1", api_key="unused", max_retries=0, timeout=300)
