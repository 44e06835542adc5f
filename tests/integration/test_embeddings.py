"""Embeddings and rerank over HTTP beside the chat model, on real models.

The shared Qwen server (``qwen_server``) serves all-MiniLM-L6-v2 and a tiny BERT
cross-encoder from the same temporary HF cache, in side slots next to the chat
model. References come from sentence-transformers and transformers in this
(test) process. One more server, with a tiny memory budget and no chat model,
shows the governor refusing an embedder that does not fit.
"""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

from mlxhost.models.starter.builder import TEST_MODELS
from mlxhost.testing.embed_models import (
    MINILM_REPO,
    TINY_RERANKER_REPO,
    ensure_minilm,
    ensure_tiny_reranker,
)
from mlxhost.testing.live import wait_until

QWEN = TEST_MODELS["qwen"].repo_id
TEXTS = [
    "The cat sat quietly on the warm windowsill.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen.",
    "hi",
    "Ein Hund spielt im Park mit einem Ball.",
]


@pytest.fixture(scope="module")
def reference():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(ensure_minilm()), device="cpu")


def _cosines(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_vectors_match_sentence_transformers(client, reference):
    expected = reference.encode(TEXTS)
    as_float = client.embeddings.create(model=MINILM_REPO, input=TEXTS, encoding_format="float")
    assert [d.index for d in as_float.data] == list(range(len(TEXTS)))
    got = np.array([d.embedding for d in as_float.data])
    assert got.shape == (len(TEXTS), 384)
    assert (_cosines(got, expected) >= 0.999).all(), _cosines(got, expected)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)  # the model's Normalize module
    assert as_float.usage.prompt_tokens == sum(len(reference.tokenizer(t)["input_ids"]) for t in TEXTS)
    # The openai client asks for base64 unless told otherwise, and decodes it.
    as_base64 = client.embeddings.create(model=MINILM_REPO, input=TEXTS)
    assert np.allclose(np.array([d.embedding for d in as_base64.data]), got, atol=1e-6)


def test_token_ids_give_the_same_vector_as_the_text(client, reference):
    ids = reference.tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    by_ids = client.embeddings.create(model=MINILM_REPO, input=[ids], encoding_format="float")
    by_text = client.embeddings.create(model=MINILM_REPO, input=TEXTS[0], encoding_format="float")
    assert _cosines([by_ids.data[0].embedding], [by_text.data[0].embedding])[0] > 0.99999


def test_retrieval_ranks_the_right_passage_first(client):
    passages = [
        "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
        "Mitochondria are the powerhouse of the cell, producing ATP.",
        "The Pacific Ocean is the largest and deepest ocean on Earth.",
    ]
    queries = {"Which organelle makes energy for cells?": 1, "largest ocean in the world": 2,
               "famous landmark in Paris": 0}
    docs = np.array([d.embedding for d in client.embeddings.create(
        model=MINILM_REPO, input=passages, encoding_format="float").data])
    for query, right in queries.items():
        q = np.array(client.embeddings.create(model=MINILM_REPO, input=query,
                                              encoding_format="float").data[0].embedding)
        assert int(np.argmax(docs @ q)) == right, query


def test_ollama_embed_and_legacy_embeddings(qwen_server, client):
    import ollama

    ollama_client = ollama.Client(host=qwen_server.url)
    reply = ollama_client.embed(model=MINILM_REPO, input=TEXTS[:2])
    openai_vectors = [d.embedding for d in client.embeddings.create(
        model=MINILM_REPO, input=TEXTS[:2], encoding_format="float").data]
    assert np.allclose(np.array(reply.embeddings), np.array(openai_vectors), atol=1e-5)
    assert reply.prompt_eval_count > 0
    legacy = ollama_client.embeddings(model=MINILM_REPO, prompt=TEXTS[0])
    assert np.allclose(legacy.embedding, openai_vectors[0], atol=1e-5)


def test_over_the_window_is_400_naming_the_input_unless_truncation_is_asked(qwen_server, client):
    import openai

    long_text = "word " * 400  # ~400 tokens; the model takes 256
    with pytest.raises(openai.BadRequestError) as error:
        client.embeddings.create(model=MINILM_REPO, input=["short", long_text])
    assert error.value.body["param"] == "input[1]"
    # Ollama truncates by default, and refuses with truncate: false (in its error shape).
    truncated = httpx.post(f"{qwen_server.url}/api/embed",
                           json={"model": MINILM_REPO, "input": long_text}, timeout=120)
    assert truncated.status_code == 200 and len(truncated.json()["embeddings"][0]) == 384
    assert truncated.json()["prompt_eval_count"] == 256
    refused = httpx.post(f"{qwen_server.url}/api/embed",
                         json={"model": MINILM_REPO, "input": long_text, "truncate": False}, timeout=120)
    assert refused.status_code == 400 and "input[0]" in refused.json()["error"]


def test_langchain_openai_embeddings(qwen_server, reference):
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(model=MINILM_REPO, base_url=f"{qwen_server.url}/v1",
                                  api_key="unused", check_embedding_ctx_length=False)
    vectors = embeddings.embed_documents(TEXTS[:3])
    assert (_cosines(vectors, reference.encode(TEXTS[:3])) >= 0.999).all()
    assert len(embeddings.embed_query("a query")) == 384


def test_rerank_scores_equal_the_transformers_cross_encoder(qwen_server):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    query = "what do cats eat"
    documents = ["Cats are obligate carnivores and eat meat.", {"text": "The stock market rose."},
                 "Paris is the capital of France.", "Kittens drink milk."]
    texts = [d if isinstance(d, str) else d["text"] for d in documents]
    folder = str(ensure_tiny_reranker())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        batch = tokenizer([query] * len(texts), texts, padding=True, return_tensors="pt")
        expected = torch.sigmoid(model(**batch).logits[:, 0]).tolist()
    for path in ("/v1/rerank", "/rerank"):
        reply = httpx.post(f"{qwen_server.url}{path}", timeout=120, json={
            "model": TINY_RERANKER_REPO, "query": query, "documents": documents})
        assert reply.status_code == 200, reply.text
        results = reply.json()["results"]
        assert sorted(r["index"] for r in results) == [0, 1, 2, 3]
        scores = [r["relevance_score"] for r in results]
        assert scores == sorted(scores, reverse=True)
        for r in results:
            assert r["relevance_score"] == pytest.approx(expected[r["index"]], abs=1e-4)
            assert r["document"]["text"] == texts[r["index"]]
    top = httpx.post(f"{qwen_server.url}/v1/rerank", timeout=120, json={
        "model": TINY_RERANKER_REPO, "query": query, "documents": texts, "top_n": 2,
        "return_documents": False}).json()["results"]
    assert [r["index"] for r in top] == sorted(range(4), key=lambda i: -expected[i])[:2]
    assert all("document" not in r for r in top)


@pytest.mark.parametrize("body, status, param", [
    ({"input": []}, 400, "input"),
    ({"input": ["x"] * 10_000}, 400, "input"),
    ({"input": "word " * 100_000}, 400, "input[0]"),
    ({"input": 5}, 400, "input"),
    ({"input": [1, "a"]}, 400, "input"),
    ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"input": "x", "dimensions": 64}, 400, "dimensions"),  # MiniLM was not trained for it
    ({"input": "x", "normalize": False}, 400, "normalize"),
    ({"input": "x", "model": QWEN}, 400, "model"),  # a chat model is no embedding model
])
def test_bad_input_is_a_4xx_and_the_server_stays_up(qwen_server, body, status, param):
    request = {"model": MINILM_REPO, **body}
    reply = httpx.post(f"{qwen_server.url}/v1/embeddings", json=request, timeout=300)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["param"] == param
    assert httpx.get(f"{qwen_server.url}/health", timeout=10).json()["status"] == "ok"


def test_side_models_are_reported_and_keep_their_own_keep_alive(qwen_server, client):
    client.embeddings.create(model=MINILM_REPO, input="load me")
    health = qwen_server.health()
    assert health["model"]  # the chat model is still in its slot
    listed = {m["model"]: m for m in health["side_models"]["models"]}
    assert listed[MINILM_REPO]["kind"] == "embedding"
    assert health["memory"]["side_models"] > 0
    ps = httpx.get(f"{qwen_server.url}/api/ps", timeout=10).json()["models"]
    assert MINILM_REPO in [m["name"] for m in ps] and len(ps) >= 2
    models = {m.id: m for m in client.models.list().data}
    assert models[MINILM_REPO].capabilities == ["embedding"]  # type: ignore[attr-defined]
    assert models[TINY_RERANKER_REPO].capabilities == ["rerank"]  # type: ignore[attr-defined]
    metrics = httpx.get(f"{qwen_server.url}/metrics", timeout=10).text
    assert f'mlxhost_side_model_loaded{{kind="embedding",model="{MINILM_REPO}"}} 1.0' in metrics
    # Ollama's keep_alive 0: unloaded after the request, the chat model stays.
    reply = httpx.post(f"{qwen_server.url}/api/embed", timeout=120,
                       json={"model": MINILM_REPO, "input": "bye", "keep_alive": 0})
    assert reply.status_code == 200
    wait_until(lambda: MINILM_REPO not in [
        m["model"] for m in qwen_server.health()["side_models"]["models"]], 30,
        "the embedder unloaded after keep_alive 0")
    assert qwen_server.health()["model"]


def test_a_chat_stream_keeps_streaming_while_embeddings_run(client):
    client.embeddings.create(model=MINILM_REPO, input="warm")  # loaded before the race
    token_times: list[float] = []
    first_token = threading.Event()
    spans: list[tuple[float, float]] = []
    errors: list[BaseException] = []

    def chat() -> None:
        try:
            stream = client.chat.completions.create(
                model=QWEN, stream=True, max_tokens=24, temperature=0,
                messages=[{"role": "user", "content": "Count from 1 to 50, one number per line."}])
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    token_times.append(time.monotonic())
                    first_token.set()
        except BaseException as exc:  # reported below
            errors.append(exc)
            first_token.set()

    def embed(n: int) -> None:
        first_token.wait(300)
        started = time.monotonic()
        texts = [f"sentence number {n}-{i} about a topic of its own" for i in range(256)]
        reply = client.embeddings.create(model=MINILM_REPO, input=texts, encoding_format="float")
        assert len(reply.data) == 256
        spans.append((started, time.monotonic()))

    threads = [threading.Thread(target=chat)] + [threading.Thread(target=embed, args=(n,))
                                                 for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert not errors, errors
    assert len(spans) == 3 and len(token_times) >= 10
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    during = [t for t in token_times if start < t < end]
    # The chat got decode steps between the embedding passes (the requests ran
    # as several bounded passes, one per worker turn).
    assert during, (start, end, token_times)


def test_an_embedder_that_does_not_fit_the_memory_budget_is_refused(start_server):
    with start_server("--max-memory", "64MiB", wait_for_model=False) as server:
        too_big = httpx.post(f"{server.url}/v1/embeddings", timeout=120,
                             json={"model": MINILM_REPO, "input": "x"})
        assert too_big.status_code == 400, too_big.text
        assert too_big.json()["error"]["code"] == "memory_exceeded"
        small = httpx.post(f"{server.url}/v1/rerank", timeout=120, json={
            "model": TINY_RERANKER_REPO, "query": "q", "documents": ["a", "b"]})
        assert small.status_code == 200, small.text
        assert server.health()["status"] == "ok"
