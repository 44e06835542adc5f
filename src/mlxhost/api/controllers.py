"""Thin HTTP controllers: parse, call the service, shape the response."""

from __future__ import annotations

import time
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.datastructures import State
from litestar.params import FromPath

from mlxhost.api import exchange
from mlxhost.api.body import read_json
from mlxhost.api.openai_chat import ChatFrames, choice_requests, completion_body, merge_choices
from mlxhost.api.schemas import CHAT_REQUEST_SCHEMA, parse_wire_request, to_domain
from mlxhost.api.wire_schema import operation
from mlxhost.core.types import REASONING, ModelInfo
from mlxhost.families.reasoning.formats import levels_of_kind, thinking_kind_on_disk
from mlxhost.runtime.runtime import RuntimeStatus


class ChatController(Controller):
    path = "/v1/chat/completions"

    @exchange.route(CHAT_REQUEST_SCHEMA)
    async def create(self, request: Request, state: State) -> Any:
        body = await read_json(request)
        wire = parse_wire_request(body)
        chats = choice_requests(to_domain(wire), wire.n or 1)
        service = state.service
        if wire.stream:
            include_usage = bool(wire.stream_options and wire.stream_options.include_usage)
            return await exchange.stream(service, chats, ChatFrames(include_usage))
        folded = await exchange.fold(request, service, chats, completion_body)
        return folded.response(merge_choices(folded.results))


def model_entry(state: State, info: ModelInfo, alias: str | None = None) -> dict[str, Any]:
    spec = info.spec
    loaded = state.runtime.current
    entry: dict[str, Any] = {
        "id": alias or spec.id,
        "object": "model",
        "created": 0,
        "owned_by": spec.source or "mlxhost",
        "context_window": info.context_window,
        # min(context window, the tokens one request can hold in the memory budget).
        "effective_context_window": state.runtime.memory_window(info),
        "family": spec.family,
        "capabilities": sorted(info.capabilities),
        # The path tools take (docs/plugins.md, "The generic family and overrides").
        **info.tool_route,
        "downloaded": info.downloaded,
        "loaded": (loaded is not None and loaded.id == spec.id) or spec.id in state.runtime.side.loaded,
    }
    if REASONING in info.capabilities:
        # The effort levels it takes (reasoning_effort, Ollama think, Responses reasoning.effort).
        kind = thinking_kind_on_disk(info.path) or "think"
        entry["reasoning"] = {"levels": list(levels_of_kind(kind))}
    if alias:
        entry["alias_for"] = spec.id
    else:
        entry["aliases"] = list(spec.aliases)
    return entry


class ModelsController(Controller):
    path = "/v1/models"

    @get(operation_class=operation())
    async def list_models(self, state: State) -> dict[str, Any]:
        data = []
        for info in state.registry.all_models():
            data.append(model_entry(state, info))
            data.extend(model_entry(state, info, alias) for alias in info.spec.aliases)
        return {"object": "list", "data": data}

    @get("/{model_id:path}", operation_class=operation())
    async def get_model(self, state: State, model_id: FromPath[str]) -> dict[str, Any]:
        name = model_id.lstrip("/")
        info = state.registry.resolve(name)
        return model_entry(state, info, name if name in info.spec.aliases else None)


def server_state(runtime: RuntimeStatus) -> str:
    """``/health``'s ``status``: ``error`` (the worker is gone, or a distributed
    group lost a rank), ``loading`` (a model's weights are loading), ``warming``
    (they are in; the warm-up compiles kernels and measures batch sizes), else ``ok``."""
    if not runtime.alive:
        return "error"
    if runtime.loading:
        return "loading"
    if runtime.warming:
        return "warming"
    return "ok"


def not_ready_because(state: State, runtime: RuntimeStatus) -> str | None:
    """Why ``/health/ready`` says 503 now; None: ready.

    Ready means a request is answered without waiting for a start-up cost: the
    state is ``ok`` and a model has been loaded and warmed since start (or no
    start-up model was named: then each request loads its own). A swap later
    (``loading``/``warming`` again) is not ready until it ends; an idle unload
    (keep-alive) stays ready."""
    status = server_state(runtime)
    if status == "error":
        return runtime.last_error or "the server cannot serve"
    if status != "ok":
        return f"{status} {runtime.loading or runtime.warming}"
    if runtime.loads == 0 and state.settings.model:
        if runtime.last_error:
            return f"the start-up model failed to load: {runtime.last_error}"
        return f"the start-up model {state.settings.model} is not loaded yet"
    return None


@get("/health/live", operation_class=operation())
async def health_live() -> dict[str, Any]:
    """200 while the process serves HTTP (a liveness probe)."""
    return {"status": "live"}


@get("/health/ready", operation_class=operation())
async def health_ready(state: State) -> Response:
    """200 once a model is loaded and warm, 503 before (a readiness probe)."""
    runtime = state.runtime.status()
    reason = not_ready_because(state, runtime)
    body = {
        "status": "ready" if reason is None else server_state(runtime),
        "model": runtime.model,
        "last_error": runtime.last_error,
    }
    if reason is not None:
        body["reason"] = reason
    return Response(content=body, status_code=200 if reason is None else 503,
                    media_type="application/json")


@get("/health", operation_class=operation())
async def health(state: State) -> dict[str, Any]:
    runtime = state.runtime.status()
    return {
        "status": server_state(runtime),
        "ready": not_ready_because(state, runtime) is None,
        "model": runtime.model,
        "loading": runtime.loading,
        "warming": runtime.warming,
        "last_error": runtime.last_error,
        "swaps": runtime.swaps,
        "loads": runtime.loads,
        "waiting": runtime.waiting,
        "running": runtime.running,
        "uptime_s": round(time.time() - state.started, 1),
        **runtime.engine,
        "memory": runtime.memory,
        "keep_alive": runtime.keep_alive,
        # Embedding and rerank models loaded beside the chat model.
        "side_models": runtime.side_models,
    }
