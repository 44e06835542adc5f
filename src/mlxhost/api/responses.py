"""OpenAI chat response bodies built from a generation's events."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import attrs

from mlxhost.domain import ChatRequest
from mlxhost.errors import MlxhostError
from mlxhost.service import ChatService, Generation
from mlxhost.types import ContentDelta, ReasoningDelta, TokenLogprob, ToolCall, ToolCallEvent


@attrs.frozen
class Completion:
    """What every chunk and body of one response repeats."""

    id: str
    created: int
    generation: Generation
    # The choice this generation answers (n > 1: one generation per choice).
    index: int = 0

    @classmethod
    def of(cls, generation: Generation) -> Completion:
        return cls(f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), generation)



def choice_requests(request: ChatRequest, n: int) -> list[ChatRequest]:
    """One request per choice; seeded requests get seed, seed + 1, ... so the
    choices differ yet repeat."""
    return [
        attrs.evolve(request, seed=None if request.seed is None else request.seed + i)
        for i in range(n)
    ]


def _logprob_json(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def logprobs_json(logprobs: list[TokenLogprob]) -> dict[str, Any]:
    """OpenAI's ``choices[].logprobs``: one entry per generated token."""
    return {
        "content": [
            {
                **_logprob_json(item.token, item.logprob),
                "top_logprobs": [_logprob_json(token, value) for token, value in item.top],
            }
            for item in logprobs
        ],
        "refusal": None,
    }


def _tool_call_json(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }
    if index is not None:
        body = {"index": index, **body}
    return body


async def completion_body(generation: Generation, index: int = 0) -> dict[str, Any]:
    """Run a generation to the end and build a ``chat.completion`` object."""
    completion = Completion.of(generation)
    content: list[str] = []
    thinking: list[str] = []
    calls: list[ToolCall] = []
    async for event in generation.events():
        if isinstance(event, ContentDelta):
            content.append(event.text)
        elif isinstance(event, ReasoningDelta):
            thinking.append(event.text)
        elif isinstance(event, ToolCallEvent):
            calls.append(event.call)
    text = "".join(content)
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if thinking:
        # vLLM's and DeepSeek's name, and the one newer clients read (LM Studio, OpenRouter).
        message["reasoning_content"] = message["reasoning"] = "".join(thinking)
    if calls:
        message["tool_calls"] = [_tool_call_json(call) for call in calls]
    choice: dict[str, Any] = {
        "index": index,
        "message": message,
        "finish_reason": generation.finish_reason,
        "logprobs": logprobs_json(generation.take_logprobs()) if generation.wants_logprobs else None,
    }
    return {
        "id": completion.id,
        "object": "chat.completion",
        "created": completion.created,
        "model": generation.model_id,
        "choices": [choice],
        "usage": generation.usage,
    }


def merge_choices(bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """n completion bodies as one: every choice, completion tokens added up."""
    first = bodies[0]
    usage = dict(first["usage"])
    usage["completion_tokens"] = sum(b["usage"]["completion_tokens"] for b in bodies)
    usage["completion_tokens_details"] = {"reasoning_tokens": sum(
        b["usage"]["completion_tokens_details"]["reasoning_tokens"] for b in bodies)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {**first, "choices": [c for b in bodies for c in b["choices"]], "usage": usage}


def _chunk(completion: Completion, delta: dict[str, Any], finish: str | None = None) -> dict:
    choice: dict[str, Any] = {"index": completion.index, "delta": delta, "finish_reason": finish}
    generation = completion.generation
    if generation.wants_logprobs:
        # The tokens generated since the previous chunk (held-back text included).
        taken = generation.take_logprobs()
        choice["logprobs"] = logprobs_json(taken) if taken else None
    return {
        "id": completion.id,
        "object": "chat.completion.chunk",
        "created": completion.created,
        "model": generation.model_id,
        "choices": [choice],
    }


def _sse_line(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


async def open_sse(
    service: ChatService, request: ChatRequest, include_usage: bool, n: int = 1
) -> tuple[dict[str, str], AsyncIterator[bytes]]:
    """Admit the request (errors raise here, before any byte) and return the
    response headers and the event stream.

    The stream is an async generator already started (suspended inside its
    ``try``): if the client vanishes before it is iterated, asyncio's
    async-generator finalizer still runs its ``finally`` and the lock is released.
    """
    stream = _sse(service, choice_requests(request, n), include_usage)
    headers = await stream.__anext__()
    return headers, stream


async def _sse(
    service: ChatService, requests: list[ChatRequest], include_usage: bool
) -> AsyncIterator[Any]:
    # The first choice is admitted before any byte (its errors are HTTP errors);
    # later choices run after it, and their errors travel as events.
    generation = await service.start(requests[0])
    completion = Completion.of(generation)
    completion_tokens = 0
    reasoning_tokens = 0
    try:
        yield generation.headers
        for index in range(len(requests)):
            if index:
                await generation.close()
                try:
                    generation = await service.start(requests[index])
                except MlxhostError as exc:
                    yield _sse_line(exc.to_body())
                    yield _sse_line("[DONE]")
                    return
                completion = attrs.evolve(completion, generation=generation, index=index)
            yield _sse_line(_chunk(completion, {"role": "assistant", "content": ""}))
            try:
                async for chunk in _event_chunks(completion):
                    yield chunk
            except MlxhostError as exc:
                # Headers are gone: the error travels as an event, as OpenAI's API does.
                yield _sse_line(exc.to_body())
                yield _sse_line("[DONE]")
                return
            yield _sse_line(_chunk(completion, {}, generation.finish_reason))
            completion_tokens += generation.completion_tokens
            reasoning_tokens += generation.reasoning_tokens
        if include_usage:
            usage_chunk = _chunk(completion, {})
            usage_chunk["choices"] = []
            usage_chunk["usage"] = {
                "prompt_tokens": generation.prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": generation.prompt_tokens + completion_tokens,
                "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
            }
            yield _sse_line(usage_chunk)
        yield _sse_line("[DONE]")
    finally:
        await generation.close()


async def _event_chunks(completion: Completion) -> AsyncIterator[bytes]:
    call_index = 0
    async for event in completion.generation.events():
        if isinstance(event, ContentDelta):
            if event.text:
                yield _sse_line(_chunk(completion, {"content": event.text}))
        elif isinstance(event, ReasoningDelta):
            if event.text:
                yield _sse_line(_chunk(
                    completion, {"reasoning_content": event.text, "reasoning": event.text}))
        elif isinstance(event, ToolCallEvent):
            call = event.call
            # Name first, then the arguments, the way OpenAI streams a call.
            head = {"index": call_index, "id": call.id, "type": "function",
                    "function": {"name": call.name, "arguments": ""}}
            yield _sse_line(_chunk(completion, {"tool_calls": [head]}))
            args = {"index": call_index, "function": {"arguments": call.arguments}}
            yield _sse_line(_chunk(completion, {"tool_calls": [args]}))
            call_index += 1
