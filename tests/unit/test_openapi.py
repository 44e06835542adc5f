"""The OpenAPI document: every body-taking operation publishes the very schema
the server checks bodies against."""

from __future__ import annotations

import pytest

from mlxhost.api import schemas
from mlxhost.api.formats import anthropic, ollama, openai_responses
from mlxhost.api.formats import openai_completions as completions
from mlxhost.api.formats import openai_embeddings as embeddings

ENFORCED = {
    ("/v1/chat/completions", "post"): schemas.CHAT_REQUEST_SCHEMA,
    ("/v1/completions", "post"): completions.COMPLETION_REQUEST_SCHEMA,
    ("/v1/messages", "post"): anthropic.MESSAGES_SCHEMA,
    ("/v1/messages/count_tokens", "post"): anthropic.COUNT_TOKENS_SCHEMA,
    ("/v1/responses", "post"): openai_responses.REQUEST_SCHEMA,
    ("/api/chat", "post"): ollama.CHAT_SCHEMA,
    ("/api/generate", "post"): ollama.GENERATE_SCHEMA,
    ("/api/show", "post"): ollama.SHOW_SCHEMA,
    ("/v1/embeddings", "post"): embeddings.OPENAI_EMBEDDINGS_SCHEMA,
    ("/api/embed", "post"): embeddings.OLLAMA_EMBED_SCHEMA,
    ("/api/embeddings", "post"): embeddings.OLLAMA_EMBEDDINGS_SCHEMA,
    ("/v1/rerank", "post"): embeddings.RERANK_SCHEMA,
    ("/rerank", "post"): embeddings.RERANK_SCHEMA,
}


@pytest.fixture
def document(client):
    response = client.get("/schema/openapi.json")
    assert response.status_code == 200
    return response.json()


def test_every_post_operation_publishes_its_enforced_schema(document):
    posts = {(path, method) for path, item in document["paths"].items() for method in item
             if method == "post"}
    assert posts == set(ENFORCED)
    for (path, method), schema in ENFORCED.items():
        published = document["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
        assert published == schema, path


def test_generated_chat_schema_carries_the_field_constraints():
    properties = schemas.CHAT_REQUEST_SCHEMA["properties"]
    assert schemas.CHAT_REQUEST_SCHEMA["required"] == ["model", "messages"]
    assert properties["temperature"]["maximum"] == 2
    assert properties["n"]["maximum"] == schemas.MAX_CHOICES
    assert properties["messages"]["items"]["properties"]["role"]["enum"] == [
        "system", "developer", "user", "assistant", "tool"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}], "top_k": -1}, "top_k"),
        ("/v1/completions", {"model": "m", "prompt": "x", "n": 3}, "n"),
        ("/v1/responses", {"model": "m", "input": "x", "top_p": 0}, "top_p"),
        ("/v1/embeddings", {"model": "m", "input": "x", "dimensions": 0}, "dimensions"),
        ("/v1/rerank", {"model": "m", "query": "q", "documents": [{"title": "x"}]}, "documents[0].text"),
    ],
)
def test_a_schema_violation_is_a_400_naming_the_field(client, path, body, param):
    response = client.post(path, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
