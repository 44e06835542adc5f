"""The Litestar application factory."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pluggy
from litestar import Litestar, Request, Response, get
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.exceptions import NotAuthorizedException

from mlxhost import ui
from mlxhost.api import anthropic, completions, ollama, openai_responses
from mlxhost.api.controllers import ChatController, ModelsController, health
from mlxhost.api.errors import EXCEPTION_HANDLERS
from mlxhost.api.wire_schema import operation
from mlxhost.metrics import Metrics
from mlxhost.plugins import make_plugin_manager
from mlxhost.registry import ModelRegistry
from mlxhost.runtime.batch import AUTO_BATCH
from mlxhost.runtime.runtime import Runtime
from mlxhost.service import ChatService
from mlxhost.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, plugin_manager: pluggy.PluginManager | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    pm = plugin_manager or make_plugin_manager(disabled=settings.disabled_plugins)
    extra = [*settings.extra_models]
    if settings.model and settings.model not in extra:
        extra.append(settings.model)
    registry = ModelRegistry(pm, settings, extra_models=extra)
    metrics = Metrics()
    runtime = Runtime(
        pm.hook.mlxhost_make_engine(settings=settings),
        tool_parser_for=lambda info: pm.hook.mlxhost_tool_call_parser(model=info),
        max_waiting=settings.max_queue,
        wait_timeout=settings.queue_timeout,
        # auto (0): the engine's provisional limit until a load measures one.
        max_batch=settings.max_batch or AUTO_BATCH,
        prefill_chunk=max(1, settings.prefill_chunk),
        keep_alive=settings.keep_alive,
        memory_wait=settings.memory_wait,
        on_load=metrics.on_load,
    )
    metrics.watch(runtime)
    service = ChatService(
        registry=registry, runtime=runtime, pm=pm, settings=settings, metrics=metrics
    )

    @get("/metrics", operation_class=operation())
    async def metrics_endpoint() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(content=metrics.render(), media_type=CONTENT_TYPE_LATEST)

    started = time.time()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await runtime.open(settings.max_memory)
        preload = None
        if settings.model:
            # Load in the background: the port opens at once, /health says "loading".
            preload = asyncio.create_task(_preload(runtime, registry, settings.model))
        try:
            yield
        finally:
            if preload is not None:
                preload.cancel()
            runtime.stop()

    return Litestar(
        route_handlers=[
            ChatController,
            ModelsController,
            health,
            # Thin adapters over the same service, one module per wire format.
            *anthropic.routes(),
            *openai_responses.routes(),
            *completions.routes(),
            *ollama.routes(),
            metrics_endpoint,
            # The status and playground page (static files; its API calls follow the key rules).
            *(ui.routes() if settings.ui else []),
        ],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan],
        middleware=[metrics.middleware],
        before_request=(
            require_api_key(settings.api_key, public=_public_paths(settings), page=settings.ui)
            if settings.api_key else None
        ),
        cors_config=CORSConfig(allow_origins=settings.cors_origins) if settings.cors_origins else None,
        request_max_body_size=settings.max_body_bytes,
        state=State({
            "settings": settings,
            "pm": pm,
            "registry": registry,
            "runtime": runtime,
            "service": service,
            "started": started,
            "metrics": metrics,
        }),
        debug=False,
        # Logging is the CLI's (one format, no duplicate lines); tests keep pytest's.
        logging_config=None,
    )


def _public_paths(settings: Settings) -> frozenset[str]:
    return frozenset({"/health", "/metrics"} if settings.metrics_public else {"/health"})


def require_api_key(key: str, public: frozenset[str] = frozenset({"/health"}), *, page: bool = False):
    """A before-request hook: every path but the ``public`` ones (/health, and
    /metrics with --metrics-public) needs ``Authorization: Bearer key`` (or
    ``x-api-key: key``, as Anthropic clients send it). With ``page``, the status
    page's static files load without it too: they hold no data, and the page sends
    the key its user types on every API call it makes."""
    expected = f"Bearer {key}".encode()

    async def check(request: Request) -> None:
        path = request.url.path
        if path in public or request.method == "OPTIONS" or (page and ui.is_public(path)):
            return None
        bearer = request.headers.get("authorization", "").encode()
        header = f"Bearer {request.headers.get('x-api-key', '')}".encode()
        if not (hmac.compare_digest(bearer, expected) or hmac.compare_digest(header, expected)):
            raise NotAuthorizedException(
                "Incorrect or missing API key. Send 'Authorization: Bearer <key>'."
            )
        return None

    return check


async def _preload(runtime: Runtime, registry: ModelRegistry, name: str) -> None:
    try:
        await runtime.preload(await registry.ensure_local(registry.resolve(name)))
    except Exception as exc:  # the server stays up; requests will retry the load
        log.error("Could not load %s at start-up: %s", name, getattr(exc, "message", exc))
