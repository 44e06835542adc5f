"""``mlxhost rm MODEL``: delete a model from the Hugging Face cache.

Asks first (``-y`` does not); refuses while the server at ``--url`` has the model
loaded or loading. Folders (``path =`` models, ``--models-dir``) are never
deleted: they are the operator's own files.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from typing import Any

from mlxhost.cli.common import (
    CommandError,
    add_config_argument,
    add_json_argument,
    add_url_argument,
    get_health,
    human_bytes,
    load_settings,
    print_json,
    server_url,
)


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "rm", help="delete a downloaded model from the Hugging Face cache",
        description="Delete a downloaded model (id or alias) from the Hugging Face cache. "
        "Refuses while the server has it loaded.",
    )
    parser.add_argument("model", help="model id or alias")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    add_url_argument(parser)
    add_json_argument(parser)
    add_config_argument(parser)
    parser.set_defaults(func=run)


def cached_repo(name: str, settings: Any) -> str:
    """The repo id ``name`` stands for, if it is in the Hugging Face cache."""
    from mlxhost.core.errors import ModelNotFound
    from mlxhost.families.plugins import make_plugin_manager
    from mlxhost.models.locate import repo_cache_dir
    from mlxhost.models.registry import ModelRegistry

    registry = ModelRegistry(make_plugin_manager(disabled=settings.disabled_plugins), settings)
    try:
        spec = registry.resolve_spec(name)
    except ModelNotFound:
        # A cached repo no plugin serves may still be deleted by its exact id.
        if "/" in name and repo_cache_dir(name).is_dir():
            return name
        raise CommandError(f"{name}: no such model in the Hugging Face cache") from None
    if spec.path is not None:
        raise CommandError(
            f"{name} is the folder {spec.path}, not a Hugging Face cache entry; "
            "delete it yourself if you mean to"
        )
    if not repo_cache_dir(spec.id).is_dir():
        raise CommandError(f"{spec.id} is not downloaded")
    return spec.id


def run(args: argparse.Namespace) -> int:
    from mlxhost.models.locate import folder_size, repo_cache_dir

    settings = load_settings(args)
    repo_id = cached_repo(args.model, settings)
    url = server_url(settings, args.url)
    health = get_health(url)
    side = health.get("side_models") if health is not None else None
    side_ids = {m.get("model") for m in side.get("models") or []} if isinstance(side, dict) else set()
    if health is not None and (repo_id in (health.get("model"), health.get("loading"))
                               or repo_id in side_ids):
        raise CommandError(
            f"{repo_id} is loaded by the server at {url}; have it load another model "
            "(or stop it) first"
        )
    folder = repo_cache_dir(repo_id)
    size = folder_size(folder)
    if not args.yes:
        print(f"Delete {repo_id} ({human_bytes(size)}, {folder})? [y/N] ", end="", file=sys.stderr, flush=True)
        answer = sys.stdin.readline().strip().lower()
        if not sys.stdin.isatty():  # the answer was not echoed: end the question's line
            print(file=sys.stderr)
        if answer not in ("y", "yes"):
            raise CommandError("not deleted")
    shutil.rmtree(folder)
    # The download locks huggingface_hub keeps beside the cache entry.
    shutil.rmtree(folder.parent / ".locks" / folder.name, ignore_errors=True)
    if args.json:
        print_json({"deleted": repo_id, "bytes": size, "path": str(folder)})
    else:
        print(f"deleted {repo_id} ({human_bytes(size)})")
    return 0
