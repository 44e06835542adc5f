"""The everyday commands (``pull``, ``ls``, ``ps``, ``rm``, ``run``, ``service``), one
module each; each module has ``add_parser(subparsers)`` and a ``run(args)`` that
returns the exit status. Shared here: the config file, the server's address,
one-line errors, and terminal formatting.

Output fits a terminal; ``--json`` prints one JSON document for scripts. Errors
are one line on stderr (``mlxhost pull: error: ...``) and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from mlxhost.settings.table import Settings


class CommandError(Exception):
    """A failure the user can act on: printed as one line, exit status 1."""


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", dest="config_file",
        help="the TOML config file (default: $MLXHOST_CONFIG, else the platform's)",
    )


def add_url_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", help="the server (default: http://HOST:PORT of the configured host and port)",
    )


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def load_settings(args: argparse.Namespace) -> Settings:
    """The settings ``serve`` would use: the config file and the environment."""
    from mlxhost.settings.config_file import load_settings as load

    return load({"config_file": getattr(args, "config_file", None)})


def server_url(settings: Settings, url: str | None = None) -> str:
    """``url``, else the configured address (a wildcard host is reached on loopback)."""
    if url:
        return url.rstrip("/")
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def auth_headers(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}


def get_health(url: str, timeout: float = 3.0) -> dict[str, Any] | None:
    """The server's ``/health``, or None when nothing answers there."""
    import httpx

    try:
        response = httpx.get(f"{url}/health", timeout=timeout)
        body = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    return body if isinstance(body, dict) and "status" in body else None


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def human_bytes(count: float | None) -> str:
    if count is None:
        return "n/a"
    units = ["B", "KB", "MB", "GB", "TB"]
    index = 0
    value = float(count)
    while value >= 1000 and index < len(units) - 1:
        value /= 1000
        index += 1
    return f"{value:.0f} {units[index]}" if index == 0 else f"{value:.1f} {units[index]}"


def human_duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart (as ``ollama list`` prints)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in (headers, *rows)]
    return "\n".join(lines)


def fail(command: str, error: BaseException) -> int:
    print(f"mlxhost {command}: error: {error}", file=sys.stderr)
    return 1
