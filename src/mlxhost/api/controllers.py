"""Thin HTTP controllers: parse, call the service, shape the response."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

import attrs
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.response import Stream

from mlxhost.api.openapi import ChatCompletionOperation
from mlxhost.api.responses import completion_body, open_sse
from mlxhost.api.schemas import parse_chat_request
from mlxhost.errors import ClientDisconnected, InvalidRequest
from mlxhost.runtime.slot import resolve_context_window
from mlxhost.types import ModelSpec

T = TypeVar("T")


class ChatController(Controller):
    path = "/v1/chat/completions"

    # Litestar gives the handler's media type precedence over a Stream's own, but
    # not over a plain Response's: so the handler says SSE, the JSON reply says JSON.
    @post(status_code=200, media_type="text/event-stream", operation_class=ChatCompletionOperation)
    async def create(self, request: Request, state: State) -> Any:
        try:
            body = await request.json()
        except HTTPException:  # 413 from the body size cap
            raise
        except Exception:
            raise InvalidRequest("The request body is not valid JSON.") from None
        chat = parse_chat_request(body)
        if chat.stream:
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            headers, events = await open_sse(state.service, chat, include_usage)
            return Stream(
                events,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
            )
        generation = await state.service.start(chat)
        try:
            body = await until_disconnect(request, completion_body(generation))
        finally:
            await generation.close()
        return Response(
            content=body,
            headers=generation.headers,
            media_type="application/json",
        )


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; if the client goes away first, cancel it (which stops generation)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled() or not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientDisconnected()
    return task.result()


def _model_entry(state: State, spec: ModelSpec, alias: str | None = None) -> dict[str, Any]:
    info = state.registry.info(spec)
    loaded = state.slot.current
    entry: dict[str, Any] = {
        "id": alias or spec.id,
        "object": "model",
        "created": 0,
        "owned_by": spec.source or "mlxhost",
        "context_window": resolve_context_window(state.pm, state.settings, info),
        "family": spec.family,
        "capabilities": sorted(spec.capabilities),
        "downloaded": spec.path is not None or bool(info.config),
        "loaded": loaded is not None and loaded.spec.id == spec.id,
    }
    if alias:
        entry["alias_for"] = spec.id
    else:
        entry["aliases"] = list(spec.aliases)
    return entry


class ModelsController(Controller):
    path = "/v1/models"

    @get()
    async def list_models(self, state: State) -> dict[str, Any]:
        data = []
        for spec in state.registry.all_specs():
            data.append(_model_entry(state, spec))
            data.extend(_model_entry(state, spec, alias) for alias in spec.aliases)
        return {"object": "list", "data": data}

    @get("/{model_id:path}")
    async def get_model(self, state: State, model_id: FromPath[str]) -> dict[str, Any]:
        name = model_id.lstrip("/")
        spec = state.registry.resolve(name)
        return _model_entry(state, spec, name if name in spec.aliases else None)


@get("/health")
async def health(state: State) -> dict[str, Any]:
    slot = state.slot
    status = "ok"
    if not state.worker.alive:
        status = "error"
    elif slot.loading:
        status = "loading"
    body = {
        "status": status,
        "model": slot.current.spec.id if slot.current else None,
        "loading": slot.loading,
        "last_error": slot.last_error,
        "swaps": slot.swaps,
        "waiting": slot.scheduler.waiting,
    }
    prefix_cache = getattr(state.engine, "prefix_cache", None)
    if prefix_cache is not None:
        body["prefix_cache"] = attrs.asdict(prefix_cache.stats())
    return body
