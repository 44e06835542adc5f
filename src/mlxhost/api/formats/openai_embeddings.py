"""Embeddings and rerank over HTTP, each in its API's shape and error shape.

* OpenAI ``POST /v1/embeddings``: ``input`` (string, strings, token ids, lists of
  token ids), ``encoding_format`` (float | base64), ``dimensions``; inputs over the
  model's window are a 400 naming the input (OpenAI never truncates).
* Ollama ``POST /api/embed`` (``input``, ``truncate`` default true, ``dimensions``,
  ``keep_alive``) and the legacy ``POST /api/embeddings`` (``prompt``): Ollama's
  ``{"error": "..."}`` shape (registered for ``/api`` by ``api/formats/ollama.py``).
* ``POST /v1/rerank`` and ``POST /rerank`` (Jina / Cohere / llama-server):
  ``query``, ``documents`` (strings or objects with ``text``), ``top_n``,
  ``return_documents`` -> ``results[{index, relevance_score, document?}]``, best
  first.

All of them convert to one call of ``EmbeddingService`` (``service/embeddings.py``).
"""

from __future__ import annotations

import base64
import time
from typing import Any

from litestar import Request, post
from litestar.datastructures import State

from mlxhost.api.body import keep_alive_seconds, read_json
from mlxhost.api.schemas import checked_object
from mlxhost.api.wire_schema import OLLAMA_ERROR, operation

_MODEL = {"type": "string", "minLength": 1, "description": "Model id or alias (GET /v1/models)."}
_TOKENS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
_INPUT = {"anyOf": [
    {"type": "string"},
    {"type": "array", "items": {"type": "string"}, "minItems": 1},
    _TOKENS,
    {"type": "array", "items": _TOKENS, "minItems": 1},
], "description": "a string, a list of strings, a list of token ids or a list of such lists"}
_DIMENSIONS = {"type": "integer", "minimum": 1,
               "description": "shorter vectors: only for models trained for it (Matryoshka)"}
_KEEP_ALIVE = {"type": ["string", "number", "null"],
               "description": 'how long the model stays loaded once idle: "5m", seconds; '
               "negative: forever; 0: unload after this request"}
_UNSUPPORTED = {"not": {}, "description": "this field is not supported"}

OPENAI_EMBEDDINGS_SCHEMA: dict[str, Any] = {"type": "object", "properties": {
    "model": _MODEL,
    "input": _INPUT,
    "encoding_format": {"enum": ["float", "base64"]},
    "dimensions": _DIMENSIONS,
    "user": {"type": "string"},
}, "required": ["model", "input"], "additionalProperties": _UNSUPPORTED}

OLLAMA_EMBED_SCHEMA: dict[str, Any] = {"type": "object", "properties": {
    "model": _MODEL,
    "input": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    "truncate": {"type": "boolean"},
    "dimensions": _DIMENSIONS,
    "keep_alive": _KEEP_ALIVE,
    "options": {"type": ["object", "null"], "properties": {}, "additionalProperties": {
        "not": {}, "description": "options change nothing for an embedding model"}},
}, "required": ["model", "input"], "additionalProperties": _UNSUPPORTED}

OLLAMA_EMBEDDINGS_SCHEMA: dict[str, Any] = {"type": "object", "properties": {
    "model": _MODEL,
    "prompt": {"type": "string"},
    "keep_alive": _KEEP_ALIVE,
    "options": OLLAMA_EMBED_SCHEMA["properties"]["options"],
}, "required": ["model", "prompt"], "additionalProperties": _UNSUPPORTED}

RERANK_SCHEMA: dict[str, Any] = {"type": "object", "properties": {
    "model": _MODEL,
    "query": {"type": "string"},
    "documents": {"type": "array", "minItems": 1, "items": {"anyOf": [
        {"type": "string"},
        {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    ]}},
    "top_n": {"type": "integer", "minimum": 1},
    "return_documents": {"type": "boolean"},
    "keep_alive": _KEEP_ALIVE,
}, "required": ["model", "query", "documents"], "additionalProperties": _UNSUPPORTED}



def _inputs(value: Any) -> list[Any]:
    """``input`` as a list of strings or a list of token-id lists."""
    if isinstance(value, str):
        return [value]
    if value and isinstance(value[0], int):
        return [value]
    return list(value)


# -- OpenAI ---------------------------------------------------------------------
@post("/v1/embeddings", status_code=200, operation_class=operation(OPENAI_EMBEDDINGS_SCHEMA))
async def openai_embeddings(request: Request, state: State) -> dict[str, Any]:
    body = checked_object(await read_json(request), OPENAI_EMBEDDINGS_SCHEMA)
    result = await state.embeddings.embed(
        body["model"], _inputs(body["input"]), dimensions=body.get("dimensions"))
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, vector in enumerate(result.vectors):
        embedding: Any = (base64.b64encode(vector.astype("<f4").tobytes()).decode()
                          if as_base64 else vector.tolist())
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }


# -- Ollama -----------------------------------------------------------------------
@post("/api/embed", status_code=200, operation_class=operation(OLLAMA_EMBED_SCHEMA, OLLAMA_ERROR))
async def ollama_embed(request: Request, state: State) -> dict[str, Any]:
    body = checked_object(await read_json(request), OLLAMA_EMBED_SCHEMA)
    started = time.perf_counter()
    keep_alive = keep_alive_seconds(body)
    if body["input"] == []:  # Ollama's load form: load (or with keep_alive 0, unload)
        return await _load_only(state, body, keep_alive, started)
    result = await state.embeddings.embed(
        body["model"], _inputs(body["input"]), truncate=body.get("truncate", True),
        dimensions=body.get("dimensions"), keep_alive=keep_alive)
    return {
        "model": body["model"],
        "embeddings": result.vectors.tolist(),
        "total_duration": int((time.perf_counter() - started) * 1e9),
        "load_duration": int(result.load_seconds * 1e9),
        "prompt_eval_count": result.prompt_tokens,
    }


async def _load_only(state: State, body: dict[str, Any], keep_alive: float | None,
                     started: float) -> dict[str, Any]:
    info = state.registry.resolve(body["model"])
    slots = state.runtime.side
    if keep_alive == 0:
        await slots.unload(info.id)
    else:
        info = await state.registry.ensure_local(info)
        async with slots.hold(info, keep_alive=keep_alive):
            pass
    return {"model": body["model"], "embeddings": [],
            "total_duration": int((time.perf_counter() - started) * 1e9)}


@post("/api/embeddings", status_code=200,
      operation_class=operation(OLLAMA_EMBEDDINGS_SCHEMA, OLLAMA_ERROR))
async def ollama_embeddings(request: Request, state: State) -> dict[str, Any]:
    """The legacy endpoint: one ``prompt``, one vector, truncated to the window as
    Ollama does."""
    body = checked_object(await read_json(request), OLLAMA_EMBEDDINGS_SCHEMA)
    result = await state.embeddings.embed(
        body["model"], [body["prompt"]], truncate=True, keep_alive=keep_alive_seconds(body),
        field="prompt")
    return {"embedding": result.vectors[0].tolist()}


# -- rerank (Jina / Cohere / llama-server) -------------------------------------------
async def _rerank(request: Request, state: State) -> dict[str, Any]:
    body = checked_object(await read_json(request), RERANK_SCHEMA)
    documents = body["documents"]
    texts = [d if isinstance(d, str) else d["text"] for d in documents]
    ranking = await state.embeddings.rerank(
        body["model"], body["query"], texts, keep_alive=keep_alive_seconds(body))
    order = sorted(range(len(texts)), key=lambda i: -ranking.scores[i])
    top_n = body.get("top_n")
    if top_n is not None:
        order = order[:top_n]
    results = []
    for index in order:
        entry: dict[str, Any] = {"index": index, "relevance_score": ranking.scores[index]}
        if body.get("return_documents", True):
            entry["document"] = {"text": texts[index]}
        results.append(entry)
    return {
        "id": f"rerank-{int(time.time() * 1000)}",
        "object": "list",
        "model": body["model"],
        "results": results,
        "usage": {"prompt_tokens": ranking.prompt_tokens, "total_tokens": ranking.prompt_tokens},
    }


@post("/v1/rerank", status_code=200, operation_class=operation(RERANK_SCHEMA))
async def rerank_v1(request: Request, state: State) -> dict[str, Any]:
    return await _rerank(request, state)


@post("/rerank", status_code=200, operation_class=operation(RERANK_SCHEMA))
async def rerank(request: Request, state: State) -> dict[str, Any]:
    return await _rerank(request, state)


def routes() -> list[Any]:
    """The route handlers of the embedding and rerank endpoints."""
    return [openai_embeddings, ollama_embed, ollama_embeddings, rerank_v1, rerank]
