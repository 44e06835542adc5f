"""``mlxhost ls``: the cached models the plugins can serve (``mlxhost models`` is
``ls --all``: registered models that are not downloaded too)."""

from __future__ import annotations

import argparse
from typing import Any

from mlxhost.cli.common import (
    add_config_argument,
    add_json_argument,
    human_bytes,
    load_settings,
    print_json,
    table,
)
from mlxhost.settings.table import Settings


def add_parser(sub: Any) -> None:
    for name, show_all, text in (
        ("ls", False, "list the downloaded models the plugins can serve"),
        ("models", True, "list registered and downloaded models (ls --all)"),
    ):
        parser = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        parser.add_argument(
            "--all", action="store_true", default=show_all,
            help="also registered models that are not downloaded",
        )
        add_json_argument(parser)
        add_config_argument(parser)
        parser.set_defaults(func=run)


def model_rows(settings: Settings, *, include_all: bool = False) -> list[dict[str, Any]]:
    """One row per model (the facts ``/v1/models`` reports, plus size on disk)."""
    from mlxhost.families.plugins import make_plugin_manager
    from mlxhost.models.locate import folder_size, repo_cache_dir
    from mlxhost.models.registry import ModelRegistry

    registry = ModelRegistry(make_plugin_manager(disabled=settings.disabled_plugins), settings)
    rows = []
    for info in registry.all_models():
        if not (info.downloaded or include_all):
            continue
        spec = info.spec
        size = None
        if info.downloaded:
            folder = spec.path if spec.path is not None else repo_cache_dir(spec.id)
            size = folder_size(folder)
        rows.append({
            "id": spec.id,
            "aliases": list(spec.aliases),
            "family": spec.family,
            "size_bytes": size,
            "context_window": info.context_window,
            "capabilities": sorted(info.capabilities),
            # How tool calls are written: the generic family's format and path
            # (docs/plugins.md), or the family plugin that handles them.
            **info.tool_route,
            "downloaded": info.downloaded,
            "path": str(info.path) if info.path else None,
            "source": spec.source,
        })
    return rows


def run(args: argparse.Namespace) -> int:
    rows = model_rows(load_settings(args), include_all=args.all)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("No downloaded models. Get one with: mlxhost pull MODEL", flush=True)
        return 0
    headers = ["NAME", "ALIASES", "FAMILY", "SIZE", "CONTEXT", "CAPABILITIES"]
    if args.all:
        headers.append("STATE")
    lines = []
    for row in rows:
        line = [
            row["id"],
            ", ".join(row["aliases"]) or "-",
            row["family"] or "-",
            human_bytes(row["size_bytes"]) if row["downloaded"] else "-",
            f"{row['context_window']:,}",
            ", ".join(row["capabilities"]) or "text",
        ]
        if args.all:
            line.append("downloaded" if row["downloaded"] else "not downloaded")
        lines.append(line)
    print(table(headers, lines))
    return 0
