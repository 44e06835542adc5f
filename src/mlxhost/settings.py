"""Server settings: the one place that reads mlxhost's environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping

import attrs


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    return int(value) if value not in (None, "") else None


@attrs.define
class Settings:
    host: str = "127.0.0.1"
    port: int = 1234
    # Model loaded at start-up (id, alias or local folder); None loads on first request.
    model: str | None = None
    # Overrides the context window of every model (tests use a small one).
    context_window: int | None = None
    # Per-model context window overrides, by id.
    context_windows: dict[str, int] = attrs.Factory(dict)
    # Completion tokens assumed when a request does not give max_tokens.
    default_max_tokens: int = 512
    # Summarize older turns when a conversation does not fit (per request:
    # "truncation": "disabled" opts out).
    summarize: bool = True
    # Image inputs: byte cap per image, and networks that may be fetched from
    # although they are not public (loopback/private are refused by default).
    image_max_bytes: int = 20 * 1024 * 1024
    image_allow_networks: list[str] = attrs.Factory(list)
    # Admission: requests waiting for the model beyond this get 503 + Retry-After;
    # a request waiting longer than queue_timeout seconds too.
    max_queue: int = 64
    queue_timeout: float | None = 600.0
    # Every endpoint but /health requires "Authorization: Bearer <api_key>" when set.
    api_key: str | None = None
    # Origins allowed by CORS (off when empty); "*" allows any.
    cors_origins: list[str] = attrs.Factory(list)
    max_body_bytes: int = 64 * 1024 * 1024
    # Seconds in-flight requests get to finish after SIGTERM.
    shutdown_grace: float = 30.0
    # KV prefix cache budget in bytes (None: the engine's default, 2 GiB; 0: off).
    prefix_cache_bytes: int | None = None
    # Run two tokens through a model right after loading it (first request is not slower).
    warmup: bool = True
    # Entry-point plugins not to load, by name (e.g. "gemma").
    disabled_plugins: list[str] = attrs.Factory(list)
    # Folders served as models in addition to registered and cached ones.
    extra_models: list[str] = attrs.Factory(list)
    log_level: str = "info"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> Settings:
        env = os.environ if env is None else env
        values: dict = {}
        if env.get("MLXHOST_MODEL"):
            values["model"] = env["MLXHOST_MODEL"]
        if (window := _env_int(env, "MLXHOST_CONTEXT_WINDOW")) is not None:
            values["context_window"] = window
        if (max_tokens := _env_int(env, "MLXHOST_DEFAULT_MAX_TOKENS")) is not None:
            values["default_max_tokens"] = max_tokens
        if env.get("MLXHOST_SUMMARIZE", "").lower() in ("0", "false", "no", "off"):
            values["summarize"] = False
        if env.get("MLXHOST_ALLOW_IMAGE_NETWORKS"):
            values["image_allow_networks"] = env["MLXHOST_ALLOW_IMAGE_NETWORKS"].split(",")
        if (image_bytes := _env_int(env, "MLXHOST_IMAGE_MAX_BYTES")) is not None:
            values["image_max_bytes"] = image_bytes
        if env.get("MLXHOST_API_KEY"):
            values["api_key"] = env["MLXHOST_API_KEY"]
        if env.get("MLXHOST_CORS_ORIGINS"):
            values["cors_origins"] = env["MLXHOST_CORS_ORIGINS"].split(",")
        if (queue := _env_int(env, "MLXHOST_MAX_QUEUE")) is not None:
            values["max_queue"] = queue
        if (cache_bytes := _env_int(env, "MLXHOST_PREFIX_CACHE_BYTES")) is not None:
            values["prefix_cache_bytes"] = cache_bytes
        if env.get("MLXHOST_WARMUP", "").lower() in ("0", "false", "no", "off"):
            values["warmup"] = False
        if env.get("MLXHOST_DISABLED_PLUGINS"):
            values["disabled_plugins"] = [
                name.strip() for name in env["MLXHOST_DISABLED_PLUGINS"].split(",") if name.strip()
            ]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
