"""Finding model files: the local Hugging Face cache first, the hub only when missing."""

from __future__ import annotations

import logging
import os
from pathlib import Path

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


def repo_cache_dir(repo_id: str) -> Path:
    """The Hugging Face cache folder of a model repo (it may not exist)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))


def folder_size(folder: Path) -> int:
    """Bytes of the files under ``folder``, each counted once (a cache repo's snapshots
    are links to its blobs: the blobs are what the disk holds)."""
    blobs = folder / "blobs"
    root = blobs if blobs.is_dir() else folder
    total = 0
    seen: set[tuple[int, int]] = set()
    for path in root.rglob("*"):
        try:
            stat = path.stat()
        except OSError:
            continue
        if path.is_file() and (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_size
    return total


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


class HubUnavailable(Exception):
    """The model is not cached and the hub cannot be asked (offline, unreachable)."""


class DownloadFailed(Exception):
    """The hub answered but the download did not complete."""


def download_model(repo_id: str) -> Path:
    """Download a hub repo into the Hugging Face cache and return its folder.

    Called only for a model that is not cached (and never while a model is
    being unloaded: the caller locates first, so a failure leaves the loaded
    model alone). Raises :class:`HubUnavailable` or :class:`DownloadFailed`.
    """
    if hub_offline():
        raise HubUnavailable("HF_HUB_OFFLINE is set")
    import httpx
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    log.info("Downloading %s from the Hugging Face hub (progress below)", repo_id)
    # huggingface_hub shows tqdm progress bars on stderr, which is the server log.
    os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=MODEL_FILE_PATTERNS))
    except (httpx.ConnectError, httpx.ConnectTimeout, LocalEntryNotFoundError, OSError) as exc:
        # huggingface_hub reports an unreachable hub as LocalEntryNotFoundError
        # ("cannot find the requested files in the local cache") or a connect error.
        if _is_connection_problem(exc):
            raise HubUnavailable("the Hugging Face hub could not be reached") from exc
        raise DownloadFailed(f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # gated or missing repo, HTTP errors
        raise DownloadFailed(f"{type(exc).__name__}: {exc}") from exc


def _is_connection_problem(exc: BaseException) -> bool:
    import httpx
    from huggingface_hub.errors import LocalEntryNotFoundError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (httpx.ConnectError, httpx.ConnectTimeout, LocalEntryNotFoundError)):
            return True
        if isinstance(seen, OSError) and not isinstance(seen, FileNotFoundError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
