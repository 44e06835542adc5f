"""OpenAI's legacy text completions (``POST /v1/completions``): a thin adapter.

The prompt goes to the model as is (no chat template: ``ChatRequest.raw_prompt``);
``suffix`` asks for fill-in-the-middle, which the model's family formats (the
core answers 400 naming ``suffix`` for a family without one). Several prompts
become several choices, generated one after another. Errors use OpenAI's shape
(the default).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import attrs
import cattrs
from litestar import Controller, Request, Response, post
from litestar.datastructures import State
from litestar.response import Stream

from mlxhost.api.body import read_json
from mlxhost.api.controllers import until_disconnect
from mlxhost.api.schemas import (
    STOP,
    TEMPERATURE,
    TOP_P,
    TTL,
    _describe,
    check_shape,
    converter,
    ttl_seconds,
)
from mlxhost.api.wire_schema import check_body, constrained, operation, schema_of
from mlxhost.domain import ChatRequest
from mlxhost.errors import InvalidRequest, MlxhostError
from mlxhost.service import ChatService, Generation
from mlxhost.types import ContentDelta

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

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


def parse_completion_request(body: Any) -> tuple[CompletionRequest, list[str]]:
    """The wire request and its prompts (InvalidRequest naming the field otherwise)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    check_shape(body)
    check_body(body, COMPLETION_REQUEST_SCHEMA)
    try:
        request = converter.structure(body, CompletionRequest)
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as exc:
        message, param = _describe(exc)
        raise InvalidRequest(f"Invalid request: {message}", param=param) from None
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
        stop=request.stop_strings,
        summarize=False,
        keep_alive=ttl_seconds(request.ttl),
    )


def _new_id() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"


def _usage(generations: list[Generation]) -> dict[str, int]:
    prompt = sum(g.prompt_tokens for g in generations)
    completion = sum(g.completion_tokens for g in generations)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _text(generation: Generation) -> str:
    return "".join(
        [event.text async for event in generation.events() if isinstance(event, ContentDelta)]
    )


async def completion_body(
    service: ChatService, request: CompletionRequest, prompts: list[str], first: Generation
) -> tuple[dict[str, Any], dict[str, str]]:
    """Run every prompt (the first already admitted) and build a ``text_completion``."""
    choices = []
    generations: list[Generation] = []
    generation: Generation | None = first
    for index, prompt in enumerate(prompts):
        if generation is None:
            generation = await service.start(to_domain(request, prompt))
        try:
            text = await _text(generation)
        finally:
            await generation.close()
        generations.append(generation)
        if request.echo:
            text = prompt + text
        choices.append(
            {"index": index, "text": text, "finish_reason": generation.finish_reason, "logprobs": None}
        )
        generation = None
    body = {
        "id": _new_id(),
        "object": "text_completion",
        "created": int(time.time()),
        "model": first.model_id,
        "choices": choices,
        "usage": _usage(generations),
    }
    return body, first.headers


def _sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


async def _stream(
    service: ChatService, request: CompletionRequest, prompts: list[str]
) -> AsyncIterator[Any]:
    """Headers first (the first prompt admitted before any byte), then SSE chunks."""
    first = await service.start(to_domain(request, prompts[0]))
    completion_id, created = _new_id(), int(time.time())
    generation: Generation | None = first
    generations: list[Generation] = []

    def chunk(index: int, text: str, finish: str | None) -> bytes:
        return _sse({
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": first.model_id,
            "choices": [{"index": index, "text": text, "finish_reason": finish, "logprobs": None}],
        })

    try:
        yield first.headers
        try:
            for index, prompt in enumerate(prompts):
                if generation is None:
                    generation = await service.start(to_domain(request, prompt))
                try:
                    if request.echo:
                        yield chunk(index, prompt, None)
                    async for event in generation.events():
                        if isinstance(event, ContentDelta) and event.text:
                            yield chunk(index, event.text, None)
                finally:
                    await generation.close()
                generations.append(generation)
                yield chunk(index, "", generation.finish_reason)
                generation = None
        except MlxhostError as exc:
            yield _sse(exc.to_body())
            yield _sse("[DONE]")
            return
        yield _sse("[DONE]")
    finally:
        if generation is not None:
            await generation.close()
        await first.close()


class CompletionsController(Controller):
    path = "/v1/completions"

    @post(status_code=200, media_type="text/event-stream",
          operation_class=operation(COMPLETION_REQUEST_SCHEMA))
    async def create(self, request: Request, state: State) -> Any:
        body = await read_json(request)
        wire, prompts = parse_completion_request(body)
        service: ChatService = state.service
        if wire.stream:
            stream = _stream(service, wire, prompts)
            headers = await stream.__anext__()
            return Stream(
                stream,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
            )
        first = await service.start(to_domain(wire, prompts[0]))
        try:
            result, headers = await until_disconnect(
                request, completion_body(service, wire, prompts, first)
            )
        finally:
            await first.close()
        return Response(content=result, headers=headers, media_type="application/json")


def routes() -> list[Any]:
    """The route handlers (controllers) of this API."""
    return [CompletionsController]
