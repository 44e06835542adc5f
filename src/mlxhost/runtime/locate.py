"""Finding model files: the local Hugging Face cache first, the hub only when missing."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mlxhost.errors import ModelLoadFailed

log = logging.getLogger(__name__)

# Files a model folder needs; the hub has more (READMEs, other formats) we skip.
MODEL_FILE_PATTERNS = [
    "*.json",
    "*.safetensors",
    "*.jinja",
    "*.model",
    "*.tiktoken",
    "*.txt",
    "*.py",
]


def cached_config_path(repo_id: str) -> Path | None:
    """The cached ``config.json`` of a hub repo, without touching the network."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # malformed repo id
        return None
    return Path(found) if isinstance(found, str) else None


def find_cached_repo_ids() -> list[str]:
    """Model repos present in the Hugging Face cache (no network)."""
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE)
    if not cache.is_dir():
        return []
    repos = []
    for entry in sorted(cache.iterdir()):
        if entry.name.startswith("models--") and (entry / "snapshots").is_dir():
            repos.append(entry.name[len("models--") :].replace("--", "/"))
    return repos


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def locate_model(model_id: str, path: Path | None) -> Path:
    """The local folder of a model, downloading it only if it is not cached.

    A cached model loads with no network request (``local_files_only`` first).
    """
    if path is not None:
        if not (path / "config.json").is_file():
            raise ModelLoadFailed(f"Model folder {path} has no config.json")
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(
            snapshot_download(model_id, local_files_only=True, allow_patterns=MODEL_FILE_PATTERNS)
        )
        if (folder / "config.json").is_file():
            return folder
    except LocalEntryNotFoundError:
        pass
    if hub_offline():
        raise ModelLoadFailed(
            f"Model '{model_id}' is not in the Hugging Face cache and HF_HUB_OFFLINE is set."
        )
    log.info("Downloading %s from the Hugging Face hub (progress below)", model_id)
    # huggingface_hub shows tqdm progress bars on stderr, which is the server log.
    os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    try:
        return Path(snapshot_download(model_id, allow_patterns=MODEL_FILE_PATTERNS))
    except Exception as exc:  # network errors, gated repos, missing repo
        raise ModelLoadFailed(f"Could not download model '{model_id}': {exc}") from exc
