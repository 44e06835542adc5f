"""OpenAI response bodies built from a generation's events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from mlxhost.api.schemas import ChatCompletionRequest
from mlxhost.errors import MlxhostError
from mlxhost.service import ChatService, Generation
from mlxhost.types import ContentDelta, ToolCall, ToolCallEvent


def _tool_call_json(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }
    if index is not None:
        body = {"index": index, **body}
    return body


async def completion_body(generation: Generation) -> dict[str, Any]:
    """Run a generation to the end and build a ``chat.completion`` object."""
    content: list[str] = []
    calls: list[ToolCall] = []
    async for event in generation.events():
        if isinstance(event, ContentDelta):
            content.append(event.text)
        elif isinstance(event, ToolCallEvent):
            calls.append(event.call)
    text = "".join(content)
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = [_tool_call_json(call) for call in calls]
    return {
        "id": generation.id,
        "object": "chat.completion",
        "created": generation.created,
        "model": generation.model_id,
        "choices": [{"index": 0, "message": message, "finish_reason": generation.finish_reason}],
        "usage": generation.usage,
    }


def _chunk(generation: Generation, delta: dict[str, Any], finish: str | None = None) -> dict:
    return {
        "id": generation.id,
        "object": "chat.completion.chunk",
        "created": generation.created,
        "model": generation.model_id,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _sse_line(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


async def open_sse(
    service: ChatService, request: ChatCompletionRequest, include_usage: bool
) -> tuple[dict[str, str], AsyncIterator[bytes]]:
    """Admit the request (errors raise here, before any byte) and return the
    response headers and the event stream.

    The stream is an async generator already started (suspended inside its
    ``try``): if the client vanishes before it is iterated, asyncio's
    async-generator finalizer still runs its ``finally`` and the lock is released.
    """
    stream = _sse(service, request, include_usage)
    headers = await stream.__anext__()
    return headers, stream  # type: ignore[return-value]


async def _sse(
    service: ChatService, request: ChatCompletionRequest, include_usage: bool
) -> AsyncIterator[Any]:
    generation = await service.start(request)
    try:
        yield generation.headers
        yield _sse_line(_chunk(generation, {"role": "assistant", "content": ""}))
        try:
            async for chunk in _event_chunks(generation):
                yield chunk
        except MlxhostError as exc:
            # Headers are gone: the error travels as an event, as OpenAI's API does.
            yield _sse_line(exc.to_body())
            yield _sse_line("[DONE]")
            return
        yield _sse_line(_chunk(generation, {}, generation.finish_reason))
        if include_usage:
            usage_chunk = _chunk(generation, {})
            usage_chunk["choices"] = []
            usage_chunk["usage"] = generation.usage
            yield _sse_line(usage_chunk)
        yield _sse_line("[DONE]")
    finally:
        await generation.close()


async def _event_chunks(generation: Generation) -> AsyncIterator[bytes]:
    call_index = 0
    async for event in generation.events():
        if isinstance(event, ContentDelta):
            if event.text:
                yield _sse_line(_chunk(generation, {"content": event.text}))
        elif isinstance(event, ToolCallEvent):
            call = event.call
            # Name first, then the arguments, the way OpenAI streams a call.
            head = {"index": call_index, "id": call.id, "type": "function",
                    "function": {"name": call.name, "arguments": ""}}
            yield _sse_line(_chunk(generation, {"tool_calls": [head]}))
            args = {"index": call_index, "function": {"arguments": call.arguments}}
            yield _sse_line(_chunk(generation, {"tool_calls": [args]}))
            call_index += 1
