"""Embeddings and rerank scores for requests: one domain call per wire format.

The adapters (``api/formats/openai_embeddings.py``) convert their bodies to
:meth:`EmbeddingService.embed` / :meth:`EmbeddingService.rerank` and shape the
result; everything that can fail (unknown model, wrong kind, inputs over the
model's window, a ``dimensions`` the model was not trained for, memory) fails
here, before any MLX work, as a 4xx naming the field.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import attrs

from mlxhost.core.errors import InvalidRequest
from mlxhost.core.types import EMBEDDING, RERANK, ModelInfo
from mlxhost.runtime.embedding.slots import SideModel, SideSlots

# Inputs one request may send (OpenAI's limit for /v1/embeddings).
MAX_INPUTS = 2048
# Documents one rerank request may send.
MAX_DOCUMENTS = 1000


@attrs.frozen
class Embeddings:
    model: str
    vectors: Any  # numpy float32, inputs x dimensions
    prompt_tokens: int
    load_seconds: float = 0.0
    seconds: float = 0.0


@attrs.frozen
class Ranking:
    model: str
    scores: tuple[float, ...]  # one per document, in document order
    prompt_tokens: int


class EmbeddingService:
    def __init__(self, registry: Any, slots: SideSlots) -> None:
        self._registry = registry
        self.slots = slots

    async def _info(self, name: str, kind: str) -> ModelInfo:
        info = self._registry.resolve(name)
        if kind not in info.capabilities:
            what = "an embedding" if kind == EMBEDDING else "a rerank (cross-encoder)"
            raise InvalidRequest(
                f"The model '{name}' is not {what} model (its capabilities: "
                f"{', '.join(sorted(info.capabilities)) or 'text generation'}).",
                param="model",
            )
        return await self._registry.ensure_local(info)

    async def embed(
        self,
        name: str,
        inputs: Sequence[str] | Sequence[Sequence[int]],
        *,
        truncate: bool = False,
        dimensions: int | None = None,
        keep_alive: float | None = None,
        field: str = "input",
    ) -> Embeddings:
        """Vectors for ``inputs`` (texts, or token ids of the model's vocabulary)."""
        if not inputs:
            raise InvalidRequest(f"'{field}' must not be empty.", param=field)
        if len(inputs) > MAX_INPUTS:
            raise InvalidRequest(
                f"'{field}' has {len(inputs)} inputs; at most {MAX_INPUTS} per request.", param=field)
        info = await self._info(name, EMBEDDING)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with self.slots.hold(info, keep_alive=keep_alive) as side:
            loaded = loop.time()
            facts = side.facts
            full = facts.dimensions
            if dimensions is not None and dimensions != full:
                if not facts.matryoshka:
                    raise InvalidRequest(
                        f"'dimensions': the model '{name}' makes {full}-dimensional vectors and was "
                        "not trained to be shortened (Matryoshka); omit dimensions or send "
                        f"{full}.", param="dimensions")
                if full is not None and not 1 <= dimensions <= full:
                    raise InvalidRequest(
                        f"'dimensions' must be between 1 and {full}.", param="dimensions")
            if isinstance(inputs[0], str):
                ids = await asyncio.to_thread(_encode, side, list(inputs))  # type: ignore[arg-type]
            else:
                ids = [_with_specials(side, list(x), f"{field}[{i}]")  # type: ignore[arg-type]
                       for i, x in enumerate(inputs)]
            ids = _fit(ids, facts.max_tokens, truncate, field)
            rows = await self.slots.batcher.run(side.model, ids)
        import numpy as np

        vectors = np.stack(rows).astype(np.float32)
        if dimensions is not None and dimensions != vectors.shape[1]:
            vectors = shorten(vectors, dimensions)
        return Embeddings(info.id, vectors, sum(len(x) for x in ids),
                          load_seconds=loaded - started, seconds=loop.time() - started)

    async def rerank(
        self,
        name: str,
        query: str,
        documents: Sequence[str],
        *,
        keep_alive: float | None = None,
    ) -> Ranking:
        """One relevance score in [0, 1] per document (the cross-encoder's logit
        through a sigmoid; softmax's last class for multi-label heads). Documents
        longer than the window are truncated (the query never is)."""
        if not documents:
            raise InvalidRequest("'documents' must not be empty.", param="documents")
        if len(documents) > MAX_DOCUMENTS:
            raise InvalidRequest(
                f"'documents' has {len(documents)} items; at most {MAX_DOCUMENTS} per request.",
                param="documents")
        info = await self._info(name, RERANK)
        async with self.slots.hold(info, keep_alive=keep_alive) as side:
            pairs = await asyncio.to_thread(_encode_pairs, side, query, list(documents))
            rows = await self.slots.batcher.run(side.model, [p[0] for p in pairs], [p[1] for p in pairs])
        scores = tuple(relevance(row) for row in rows)
        return Ranking(info.id, scores, sum(len(p[0]) for p in pairs))


def shorten(vectors: Any, dimensions: int) -> Any:
    """Matryoshka: the first ``dimensions`` values of each vector, renormalized."""
    import numpy as np

    cut = vectors[:, :dimensions]
    norms = np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)
    return (cut / norms).astype(np.float32)


def relevance(row: Any) -> float:
    values = [float(v) for v in row]
    if len(values) == 1:
        return 1.0 / (1.0 + math.exp(-values[0]))
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return exps[-1] / sum(exps)


def _encode(side: SideModel, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in side.tokenizer.encode_batch(texts)]


def _specials(side: SideModel) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text ([CLS] / [SEP])."""
    plain = side.tokenizer.encode("a", add_special_tokens=False).ids
    full = side.tokenizer.encode("a", add_special_tokens=True).ids
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start], full[start + len(plain):]
    return [], []


def _with_specials(side: SideModel, ids: list[int], where: str) -> list[int]:
    """Token ids as sent (the model's vocabulary), framed by its special tokens."""
    vocab = side.tokenizer.get_vocab_size()
    for i, token in enumerate(ids):
        if not 0 <= token < vocab:
            raise InvalidRequest(
                f"'{where}[{i}]': token id {token} is outside the model's vocabulary (0-{vocab - 1}).",
                param=f"{where}[{i}]")
    before, after = _specials(side)
    return [*before, *ids, *after]


def _fit(ids: list[list[int]], limit: int, truncate: bool, field: str) -> list[list[int]]:
    """Inputs within the model's window: truncated (keeping the closing special
    token) when asked, else a 400 naming the first input over it."""
    out = []
    for index, seq in enumerate(ids):
        if len(seq) > limit:
            if not truncate:
                raise InvalidRequest(
                    f"'{field}[{index}]' has {len(seq)} tokens; this model takes at most {limit} "
                    "tokens per input.", param=f"{field}[{index}]", code="context_length_exceeded")
            seq = [*seq[: limit - 1], seq[-1]]
        out.append(seq)
    return out


def _encode_pairs(side: SideModel, query: str, documents: list[str]) -> list[tuple[list[int], list[int]]]:
    limit = side.facts.max_tokens
    tokenizer = side.tokenizer
    query_len = len(tokenizer.encode(query, documents[0]).ids) - len(
        tokenizer.encode(documents[0], add_special_tokens=False).ids)
    if query_len >= limit:
        raise InvalidRequest(
            f"'query' has {query_len} tokens with the special tokens; this model takes at most "
            f"{limit} tokens for the query and a document together.", param="query",
            code="context_length_exceeded")
    pairs = []
    for encoding in tokenizer.encode_batch([(query, doc) for doc in documents]):
        ids, types = list(encoding.ids), list(encoding.type_ids)
        if len(ids) > limit:  # the document's end goes; keep the closing [SEP]
            ids, types = [*ids[: limit - 1], ids[-1]], [*types[: limit - 1], types[-1]]
        pairs.append((ids, types))
    return pairs
