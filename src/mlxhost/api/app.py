"""The Litestar application factory."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pluggy
from litestar import Litestar, Request, Response, get
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.exceptions import NotAuthorizedException

from mlxhost.api import ui
from mlxhost.api.controllers import (
    ChatController,
    ModelsController,
    health,
    health_live,
    health_ready,
)
from mlxhost.api.errors import EXCEPTION_HANDLERS, ErrorShapes
from mlxhost.api.formats import anthropic, ollama, openai_responses
from mlxhost.api.formats import openai_completions as completions
from mlxhost.api.formats import openai_embeddings as embeddings
from mlxhost.api.wire_schema import operation
from mlxhost.engine.batch import AUTO_BATCH
from mlxhost.families.plugins import make_plugin_manager
from mlxhost.models.registry import ModelRegistry
from mlxhost.runtime.runtime import Runtime
from mlxhost.service.chat import ChatService
from mlxhost.service.embeddings import EmbeddingService
from mlxhost.service.metrics import Metrics
from mlxhost.settings.table import Settings

if TYPE_CHECKING:
    from mlxhost.distributed.leader import GroupPlan, LeaderEngine

log = logging.getLogger(__name__)

# Seconds shutdown waits for the model's unload (and the prefix cache's writes to
# --prefix-cache-dir) before it stops the worker anyway.
UNLOAD_AT_SHUTDOWN_TIMEOUT = 60.0


def create_app(
    settings: Settings | None = None,
    plugin_manager: pluggy.PluginManager | None = None,
    *,
    group: GroupPlan | None = None,
) -> Litestar:
    """``group``: this process is rank 0 of a distributed group (``mlxhost.distributed.launch``);
    its engine sends every model call to the followers (``runtime.leader``)."""
    settings = settings or Settings.from_env()
    if group is None and (settings.ranks > 1 or settings.hostfile is not None):
        raise ValueError(
            "settings name a distributed group (ranks/hostfile), which `mlxhost serve` "
            "starts (mlxhost.distributed.launch); pass the group it made"
        )
    pm = plugin_manager or make_plugin_manager(disabled=settings.disabled_plugins)
    extra = [*settings.extra_models]
    if settings.model and settings.model not in extra:
        extra.append(settings.model)
    registry = ModelRegistry(pm, settings, extra_models=extra)
    metrics = Metrics()
    leader = _leader_engine(settings, pm, group) if group is not None else None
    runtime = Runtime(
        leader or pm.hook.mlxhost_make_engine(settings=settings),
        tool_parser_for=lambda info: pm.hook.mlxhost_tool_call_parser(model=info),
        reasoning_for=lambda info, tokenizer: pm.hook.mlxhost_reasoning_format(
            model=info, tokenizer=tokenizer
        ),
        max_waiting=settings.max_queue,
        wait_timeout=settings.queue_timeout,
        # auto (0): the engine's provisional limit until a load measures one.
        max_batch=settings.max_batch or AUTO_BATCH,
        prefill_chunk=max(1, settings.prefill_chunk),
        kv_quant=(settings.kv_bits, settings.kv_group_size),
        keep_alive=settings.keep_alive,
        memory_wait=settings.memory_wait,
        on_load=metrics.on_load,
        on_idle=leader.park if leader else None,
        on_stop=leader.shutdown if leader else None,
        side_models={
            "max_models": settings.embed_max_models,
            "max_tokens": settings.embed_batch_tokens,
            **({"keep_alive": settings.embed_keep_alive}
               if settings.embed_keep_alive is not None else {}),
        },
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
        setup = None
        if leader is not None and group is not None:
            setup = leader.start
            _watch_group(runtime, leader, group)
        await runtime.open(settings.max_memory, setup=setup)
        preload = None
        if settings.model:
            # Load in the background: the port opens at once, /health says "loading",
            # then "warming"; /health/ready answers 200 once it is done.
            preload = asyncio.create_task(
                _preload(runtime, registry, settings.model, fatal=group is not None)
            )
        try:
            yield
        finally:
            if preload is not None:
                preload.cancel()
            await _unload_at_shutdown(runtime)
            runtime.stop()

    return Litestar(
        route_handlers=[
            ChatController,
            ModelsController,
            health,
            health_live,
            health_ready,
            # Thin adapters over the same service, one module per wire format.
            *anthropic.routes(),
            *openai_responses.routes(),
            *completions.routes(),
            *ollama.routes(),
            *embeddings.routes(),
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
            "embeddings": EmbeddingService(registry, runtime.side),
            # Each API's error shape by path prefix (api/errors.py answers with it).
            "error_shapes": ErrorShapes((anthropic.ERROR_SHAPE, ollama.ERROR_SHAPE)),
            "started": started,
            "metrics": metrics,
        }),
        debug=False,
        # Logging is the CLI's (one format, no duplicate lines); tests keep pytest's.
        logging_config=None,
    )


# Probes and status: no API key (a load balancer or service manager has none).
HEALTH_PATHS = frozenset({"/health", "/health/live", "/health/ready"})


def _public_paths(settings: Settings) -> frozenset[str]:
    return HEALTH_PATHS | {"/metrics"} if settings.metrics_public else HEALTH_PATHS


def require_api_key(key: str, public: frozenset[str] = HEALTH_PATHS, *, page: bool = False):
    """A before-request hook: every path but the ``public`` ones (the health probes, and
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


async def _preload(runtime: Runtime, registry: ModelRegistry, name: str, *, fatal: bool = False) -> None:
    """``fatal``: a model the group cannot shard ends the server (exit status 2)."""
    try:
        await runtime.preload(await registry.ensure_local(registry.resolve(name)))
    except Exception as exc:  # the server stays up; requests will retry the load
        log.error("Could not load %s at start-up: %s", name, getattr(exc, "message", exc))
        from mlxhost.distributed.sharding import NotShardable

        if fatal and isinstance(exc, NotShardable):
            import os
            import signal

            from mlxhost.distributed.launch import NOT_SHARDABLE_EXIT

            runtime.exit_status = NOT_SHARDABLE_EXIT
            os.kill(os.getpid(), signal.SIGTERM)  # a graceful stop of the whole group


def _leader_engine(settings: Settings, pm: pluggy.PluginManager, group: GroupPlan) -> LeaderEngine:
    from mlxhost.distributed.leader import LeaderEngine
    from mlxhost.distributed.sharding import Sharder
    from mlxhost.families.builtin.mlx_engine import make_mlx_engine

    sharder = Sharder(pm, group.pipeline)
    return LeaderEngine(make_mlx_engine(settings, sharder), group, sharder)


# Seconds between a lost rank and rank 0 leaving: the 503s in flight are written.
GROUP_LOST_EXIT_S = 1.0


def _watch_group(runtime: Runtime, leader: LeaderEngine, group: GroupPlan) -> None:
    """A lost rank: 503 for every request, /health "error", then rank 0 exits
    non-zero (its worker may be stuck in a collective that never returns)."""
    loop = asyncio.get_running_loop()
    runtime.watch_group()

    def leave() -> None:
        import os

        from mlxhost.distributed.launch import GROUP_LOST_EXIT, kill_children

        log.error("Leaving: the distributed group lost a rank (%s)", runtime.lost)
        kill_children(group)
        logging.shutdown()
        os._exit(GROUP_LOST_EXIT)

    def lost(reason: str) -> None:
        runtime.fail_group(reason)
        loop.call_later(GROUP_LOST_EXIT_S, leave)

    def from_watchdog(reason: str) -> None:
        loop.call_soon_threadsafe(lost, reason)

    leader.on_lost(from_watchdog)


async def _unload_at_shutdown(runtime: Runtime) -> None:
    """Unload the model and close the engine (requests in flight have finished):
    the prefix cache's entries go to its disk tier, if on, and are written before
    the process exits, so a restart finds them. A lost distributed group skips
    this (the worker may be stuck in a collective), as does a worker that takes
    longer than ``UNLOAD_AT_SHUTDOWN_TIMEOUT``."""
    if runtime.lost is not None:
        return
    try:
        await asyncio.wait_for(runtime.close(), UNLOAD_AT_SHUTDOWN_TIMEOUT)
    except TimeoutError:
        log.warning("Shutdown: the model did not unload within %.0f s", UNLOAD_AT_SHUTDOWN_TIMEOUT)
    except Exception:
        log.exception("Shutdown: unloading the model failed")

