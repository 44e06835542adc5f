"""``mlxhost ps``: what a running server is doing (its ``/health``): whether it is
ready, the loaded model, memory, running and waiting sequences, uptime, and when
the model unloads. ``--wait`` first waits until the server is ready (its start-up
model loaded and warm), for scripts that must not send into a cold server."""

from __future__ import annotations

import argparse
import time
from typing import Any

from mlxhost.cli.common import (
    CommandError,
    add_config_argument,
    add_json_argument,
    add_url_argument,
    auth_headers,
    get_health,
    human_bytes,
    human_duration,
    load_settings,
    print_json,
    server_url,
)


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "ps", help="show what a running server is doing",
        description="Show a running server's loaded model, memory, queue and uptime.",
    )
    add_url_argument(parser)
    parser.add_argument(
        "--wait", nargs="?", type=float, const=600.0, metavar="SECONDS",
        help="first wait until the server is ready (default at most 600 s; "
        "exit status 1 if it is not by then)",
    )
    add_json_argument(parser)
    add_config_argument(parser)
    parser.set_defaults(func=run)


def wait_until_ready(url: str, seconds: float, poll: float = 0.5) -> dict[str, Any]:
    """Poll ``/health`` until it says ``ready``; CommandError after ``seconds``, or
    at once when the server is in ``error`` or its start-up model failed to load."""
    deadline = time.monotonic() + seconds
    while True:
        health = get_health(url)
        if health is not None:
            if health.get("ready"):
                return health
            failed = health.get("status") == "ok" and health.get("last_error")
            if health.get("status") == "error" or failed:
                raise CommandError(f"the server at {url} is not ready: {health.get('last_error')}")
        if time.monotonic() >= deadline:
            state = health.get("status") if health else "not answering"
            raise CommandError(f"the server at {url} was not ready after {seconds:g} s ({state})")
        time.sleep(poll)


def _context_window(url: str, model: str, headers: dict[str, str]) -> int | None:
    import httpx

    try:
        response = httpx.get(f"{url}/v1/models/{model}", headers=headers, timeout=3)
        value = response.json().get("context_window") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    return value if isinstance(value, int) else None


def describe(url: str, health: dict[str, Any], context_window: int | None) -> list[tuple[str, str]]:
    """The ``ps`` lines as (label, text)."""
    uptime = health.get("uptime_s")
    status = health.get("status", "?")
    if status == "ok" and health.get("ready") is False:
        status = "ok, not ready"  # the start-up model is not loaded (yet, or it failed)
    state = status + (f", up {human_duration(uptime)}" if uptime is not None else "")
    lines = [("server", f"{url} ({state})")]
    model = health.get("model")
    if model:
        window = f" (context window {context_window:,})" if context_window else ""
        lines.append(("model", model + window))
    else:
        lines.append(("model", "none loaded (the next request loads its model)"))
    if health.get("loading"):
        lines.append(("loading", health["loading"]))
    if health.get("warming"):
        lines.append(("warming up", f"{health['warming']} (compiling kernels, measuring batch sizes)"))
    queue = f"{health.get('running', 0)} running, {health.get('waiting', 0)} waiting"
    batch = health.get("batch")
    if isinstance(batch, dict):
        queue += f" (batch max {batch.get('max')}, peak {batch.get('peak')})"
    lines.append(("sequences", queue))
    memory = health.get("memory")
    if isinstance(memory, dict) and memory:
        lines.append(("memory", _memory_line(memory)))
    keep_alive = health.get("keep_alive")
    unloads_in = keep_alive.get("unloads_in") if isinstance(keep_alive, dict) else None
    if isinstance(unloads_in, (int, float)):
        when = time.strftime("%H:%M:%S", time.localtime(time.time() + unloads_in))
        lines.append(("keep-alive", f"unloads at {when} (in {human_duration(unloads_in)})"))
    elif model and isinstance(keep_alive, dict) and keep_alive.get("seconds") is None:
        lines.append(("keep-alive", "stays loaded until a request asks for another model"))
    elif model and isinstance(keep_alive, dict):
        lines.append(("keep-alive", f"unloads after {keep_alive.get('duration')} idle"))
    lines.extend(_side_lines(health.get("side_models")))
    if health.get("last_error"):
        lines.append(("last error", str(health["last_error"])))
    return lines


def _side_lines(side: Any) -> list[tuple[str, str]]:
    """One line per embedding / rerank model loaded beside the chat model."""
    if not isinstance(side, dict):
        return []
    lines = []
    for entry in side.get("models") or []:
        unloads_in = entry.get("unloads_in")
        when = (f"unloads in {human_duration(unloads_in)}" if isinstance(unloads_in, (int, float))
                else f"keep-alive {entry.get('keep_alive')}")
        lines.append((str(entry.get("kind", "side")),
                      f"{entry.get('model')} ({human_bytes(entry.get('bytes') or 0)}, "
                      f"{entry.get('running', 0)} running, {when})"))
    return lines


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    url = server_url(settings, args.url)
    health = get_health(url) if args.wait is None else wait_until_ready(url, args.wait)
    if health is None:
        raise CommandError(f"no mlxhost server answers at {url} (start one with: mlxhost serve)")
    model = health.get("model")
    context_window = _context_window(url, model, auth_headers(settings)) if model else None
    if args.json:
        print_json({"url": url, **health, "context_window": context_window})
        return 0
    lines = describe(url, health, context_window)
    width = max(len(label) for label, _ in lines)
    for label, text in lines:
        print(f"{label.ljust(width)}  {text}")
    return 0


def _memory_line(memory: dict[str, Any]) -> str:
    """The process's resident memory, MLX's active bytes and the budget, where known."""
    parts = []
    process = memory.get("process")
    if isinstance(process, dict) and isinstance(process.get("rss"), int):
        parts.append(f"rss {human_bytes(process['rss'])}")
    mlx = memory.get("mlx")
    if isinstance(mlx, dict) and isinstance(mlx.get("active"), int):
        parts.append(f"MLX active {human_bytes(mlx['active'])}")
    if isinstance(memory.get("budget"), int):
        parts.append(f"budget {human_bytes(memory['budget'])}")
    if isinstance(memory.get("free"), int):
        parts.append(f"free {human_bytes(memory['free'])}")
    return ", ".join(parts) or "unknown"
