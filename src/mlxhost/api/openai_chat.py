"""OpenAI chat response bodies built from a generation's events."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import attrs

from mlxhost.api.exchange import Frames
from mlxhost.core.domain import ChatRequest
from mlxhost.core.errors import MlxhostError
from mlxhost.core.types import (
    ContentDelta,
    GenerationEvent,
    ReasoningDelta,
    TokenLogprob,
    ToolCall,
    ToolCallEvent,
)
from mlxhost.service.chat import Generation, completion_tokens_details


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
    reply = await generation.reply()
    text, calls = reply.text, reply.calls
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if reply.thinking:
        # vLLM's and DeepSeek's name, and the one newer clients read (LM Studio, OpenRouter).
        message["reasoning_content"] = message["reasoning"] = reply.thinking
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
    usage["completion_tokens_details"] = {
        key: sum(b["usage"]["completion_tokens_details"][key] for b in bodies)
        for key in first["usage"]["completion_tokens_details"]
    }
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


def sse_line(data: dict[str, Any] | str) -> bytes:
    """One SSE ``data:`` line (OpenAI's chat and completions streams)."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


# An SSE comment: OpenAI's SDKs skip it, proxies and idle watchdogs see bytes.
SSE_KEEPALIVE = b": keep-alive\n\n"


class ChatFrames(Frames):
    """``chat.completion.chunk`` SSE lines: per choice a role chunk, the content and
    tool-call deltas and a finish chunk; then the usage chunk (when asked) and
    ``[DONE]``. An error after the headers is an error object, then ``[DONE]``,
    as OpenAI's API sends it."""

    def __init__(self, include_usage: bool) -> None:
        self._include_usage = include_usage
        self._id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self._created = int(time.time())
        self._completion: Completion | None = None
        self._call_index = 0
        self._generations: list[Generation] = []  # the choices that ended

    def started(self, generation: Generation, index: int) -> list[bytes]:
        self._completion = Completion(self._id, self._created, generation, index)
        self._call_index = 0
        return [sse_line(_chunk(self._completion, {"role": "assistant", "content": ""}))]

    def event(self, event: GenerationEvent) -> list[bytes]:
        completion = self._completion
        assert completion is not None
        if isinstance(event, ContentDelta):
            return [sse_line(_chunk(completion, {"content": event.text}))] if event.text else []
        if isinstance(event, ReasoningDelta):
            delta = {"reasoning_content": event.text, "reasoning": event.text}
            return [sse_line(_chunk(completion, delta))] if event.text else []
        if isinstance(event, ToolCallEvent):
            call = event.call
            index = self._call_index
            self._call_index += 1
            # Name first, then the arguments, the way OpenAI streams a call.
            head = {"index": index, "id": call.id, "type": "function",
                    "function": {"name": call.name, "arguments": ""}}
            args = {"index": index, "function": {"arguments": call.arguments}}
            return [sse_line(_chunk(completion, {"tool_calls": [head]})),
                    sse_line(_chunk(completion, {"tool_calls": [args]}))]
        return []

    def ended(self, generation: Generation, index: int) -> list[bytes]:
        assert self._completion is not None
        self._generations.append(generation)
        return [sse_line(_chunk(self._completion, {}, generation.finish_reason))]

    def finished(self) -> list[bytes]:
        frames = []
        completion = self._completion
        if self._include_usage and completion is not None:
            prompt = completion.generation.prompt_tokens
            generated = sum(g.completion_tokens for g in self._generations)
            usage_chunk = _chunk(completion, {})
            usage_chunk["choices"] = []
            usage_chunk["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": generated,
                "total_tokens": prompt + generated,
                "completion_tokens_details": completion_tokens_details(self._generations),
            }
            frames.append(sse_line(usage_chunk))
        return [*frames, sse_line("[DONE]")]

    def failed(self, error: MlxhostError) -> list[bytes]:
        return [sse_line(error.to_body()), sse_line("[DONE]")]

    def keepalive(self) -> bytes:
        return SSE_KEEPALIVE
