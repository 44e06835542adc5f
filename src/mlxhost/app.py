"""The Litestar application factory."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pluggy
from litestar import Litestar, Request
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.exceptions import NotAuthorizedException

from mlxhost.api.controllers import ChatController, ModelsController, health
from mlxhost.api.errors import EXCEPTION_HANDLERS
from mlxhost.plugins import make_plugin_manager
from mlxhost.registry import ModelRegistry
from mlxhost.runtime.slot import ModelSlot
from mlxhost.runtime.worker import MLXWorker
from mlxhost.service import ChatService
from mlxhost.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, plugin_manager: pluggy.PluginManager | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    pm = plugin_manager or make_plugin_manager(disabled=settings.disabled_plugins)
    extra = [*settings.extra_models]
    if settings.model and settings.model not in extra:
        extra.append(settings.model)
    registry = ModelRegistry(pm, extra_models=extra)
    engine = pm.hook.mlxhost_make_engine(settings=settings)
    worker = MLXWorker()
    slot = ModelSlot(worker=worker, engine=engine, registry=registry, pm=pm, settings=settings)
    service = ChatService(
        registry=registry, slot=slot, worker=worker, engine=engine, pm=pm, settings=settings
    )

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        worker.start()
        preload = None
        if settings.model:
            # Load in the background: the port opens at once, /health says "loading".
            preload = asyncio.create_task(_preload(slot, registry, settings.model))
        try:
            yield
        finally:
            if preload is not None:
                preload.cancel()
            worker.stop()

    return Litestar(
        route_handlers=[ChatController, ModelsController, health],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan],
        before_request=require_api_key(settings.api_key) if settings.api_key else None,
        cors_config=CORSConfig(allow_origins=settings.cors_origins) if settings.cors_origins else None,
        request_max_body_size=settings.max_body_bytes,
        state=State({
            "settings": settings,
            "pm": pm,
            "registry": registry,
            "engine": engine,
            "worker": worker,
            "slot": slot,
            "service": service,
        }),
        debug=False,
        # Logging is the CLI's (one format, no duplicate lines); tests keep pytest's.
        logging_config=None,
    )


def require_api_key(key: str):
    """A before-request hook: every path but /health needs ``Authorization: Bearer key``."""
    expected = f"Bearer {key}".encode()

    async def check(request: Request) -> None:
        if request.url.path == "/health" or request.method == "OPTIONS":
            return None
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise NotAuthorizedException(
                "Incorrect or missing API key. Send 'Authorization: Bearer <key>'."
            )
        return None

    return check


async def _preload(slot: ModelSlot, registry: ModelRegistry, name: str) -> None:
    try:
        await slot.preload(registry.resolve(name))
    except Exception as exc:  # the server stays up; requests will retry the load
        log.error("Could not load %s at start-up: %s", name, getattr(exc, "message", exc))
