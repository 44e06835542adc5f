"""OpenAI's legacy text completions (``POST /v1/completions``): a thin adapter.

The prompt goes to the model as is (no chat template: ``ChatRequest.raw_prompt``);
``suffix`` asks for fill-in-the-middle, which the model's family formats (the
core answers 400 naming ``suffix`` for a family without one). Several prompts
become several choices, generated one after another. Errors use OpenAI's shape
(the default).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import attrs
from litestar import Controller, Request
from litestar.datastructures import State

from mlxhost.api import exchange
from mlxhost.api.body import read_json
from mlxhost.api.exchange import Folded, Frames
from mlxhost.api.openai_chat import SSE_KEEPALIVE, sse_line
from mlxhost.api.schemas import (
    STOP,
    TEMPERATURE,
    TOP_P,
    TTL,
    stop_strings,
    structure_request,
    ttl_seconds,
)
from mlxhost.api.wire_schema import constrained, schema_of
from mlxhost.core.domain import ChatRequest
from mlxhost.core.errors import MlxhostError
from mlxhost.core.types import ContentDelta, GenerationEvent
from mlxhost.service.chat import ChatService, Generation, completion_tokens_details

# OpenAI's legacy default completion length.
DEFAULT_MAX_TOKENS = 16


_UNSUPPORTED = "not supported yet: leave it out"


@attrs.define
class CompletionRequest:
    model: str = constrained(attrs.NOTHING, description="Model id or alias (GET /v1/models).")
    prompt: Any = constrained(attrs.NOTHING, anyOf=[
        {"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}],
        description="a string or a non-empty list of strings (token ids are not supported yet)")
    suffix: str | None = None
    max_tokens: int | None = constrained(DEFAULT_MAX_TOKENS, minimum=1)
    temperature: float | None = constrained(**TEMPERATURE)
    top_p: float | None = constrained(**TOP_P)
    stop: str | list[str] | None = constrained(**STOP)
    seed: int | None = None
    stream: bool = False
    echo: bool = False
    n: int | None = constrained(minimum=1, maximum=1, description="only 1 is supported")
    best_of: int | None = constrained(minimum=1, maximum=1, description="only 1 is supported")
    logprobs: int | None = constrained(type="null", description=_UNSUPPORTED)
    user: str | None = None
    # Change the output, not supported: accepted only at their no-op values.
    frequency_penalty: float | None = constrained(
        anyOf=[{"const": 0}, {"type": "null"}], description=_UNSUPPORTED + " or 0")
    presence_penalty: float | None = constrained(
        anyOf=[{"const": 0}, {"type": "null"}], description=_UNSUPPORTED + " or 0")
    logit_bias: dict[str, Any] | None = constrained(
        type=["object", "null"], maxProperties=0, description=_UNSUPPORTED)
    ttl: int | None = constrained(**TTL)


def parse_completion_request(body: Any) -> tuple[CompletionRequest, list[str]]:
    """The wire request and its prompts (InvalidRequest naming the field otherwise)."""
    request = structure_request(body, COMPLETION_REQUEST_SCHEMA, CompletionRequest)
    prompt = request.prompt
    return request, [prompt] if isinstance(prompt, str) else list(prompt)


# The published and enforced schema of a completions body.
COMPLETION_REQUEST_SCHEMA = schema_of(CompletionRequest)


def to_domain(request: CompletionRequest, prompt: str) -> ChatRequest:
    """One prompt of a completions request as the domain request."""
    return ChatRequest(
        model=request.model,
        messages=(),
        raw_prompt=prompt,
        suffix=request.suffix,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        seed=request.seed,
        stop=stop_strings(request.stop),
        summarize=False,
        keep_alive=ttl_seconds(request.ttl),
    )


def _new_id() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"


def _usage(generations: list[Generation]) -> dict[str, Any]:
    prompt = sum(g.prompt_tokens for g in generations)
    completion = sum(g.completion_tokens for g in generations)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "completion_tokens_details": completion_tokens_details(generations)}


def fold_text(prompts: list[str], echo: bool) -> Any:
    """A generation's text as one ``text_completion`` choice."""

    async def fold(generation: Generation, index: int) -> dict[str, Any]:
        text = "".join(
            [event.text async for event in generation.events() if isinstance(event, ContentDelta)]
        )
        if echo:
            text = prompts[index] + text
        return {"index": index, "text": text, "finish_reason": generation.finish_reason,
                "logprobs": None}

    return fold


def completion_body(folded: Folded) -> dict[str, Any]:
    return {
        "id": _new_id(),
        "object": "text_completion",
        "created": int(time.time()),
        "model": folded.generations[0].model_id,
        "choices": folded.results,
        "usage": _usage(folded.generations),
    }


class CompletionFrames(Frames):
    """``text_completion`` SSE chunks: per prompt the echoed prompt (``echo``), the
    text deltas and a finish chunk; then ``[DONE]``."""

    def __init__(self, prompts: list[str], echo: bool) -> None:
        self._prompts = prompts
        self._echo = echo
        self._id, self._created = _new_id(), int(time.time())
        self._model = ""
        self._index = 0

    def _chunk(self, text: str, finish: str | None = None) -> bytes:
        return sse_line({
            "id": self._id,
            "object": "text_completion",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": self._index, "text": text, "finish_reason": finish, "logprobs": None}],
        })

    def started(self, generation: Generation, index: int) -> list[bytes]:
        self._index = index
        self._model = self._model or generation.model_id
        return [self._chunk(self._prompts[index])] if self._echo else []

    def event(self, event: GenerationEvent) -> list[bytes]:
        return [self._chunk(event.text)] if isinstance(event, ContentDelta) and event.text else []

    def ended(self, generation: Generation, index: int) -> list[bytes]:
        return [self._chunk("", generation.finish_reason)]

    def finished(self) -> list[bytes]:
        return [sse_line("[DONE]")]

    def failed(self, error: MlxhostError) -> list[bytes]:
        return [sse_line(error.to_body()), sse_line("[DONE]")]

    def keepalive(self) -> bytes:
        return SSE_KEEPALIVE


class CompletionsController(Controller):
    path = "/v1/completions"

    @exchange.route(COMPLETION_REQUEST_SCHEMA)
    async def create(self, request: Request, state: State) -> Any:
        body = await read_json(request)
        wire, prompts = parse_completion_request(body)
        service: ChatService = state.service
        chats = [to_domain(wire, prompt) for prompt in prompts]
        if wire.stream:
            return await exchange.stream(service, chats, CompletionFrames(prompts, wire.echo))
        folded = await exchange.fold(request, service, chats, fold_text(prompts, wire.echo))
        return folded.response(completion_body(folded))


def routes() -> list[Any]:
    """The route handlers (controllers) of this API."""
    return [CompletionsController]
