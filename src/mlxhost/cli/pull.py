"""``mlxhost pull MODEL``: download a model into the Hugging Face cache.

MODEL is a hub repo id or a name the server knows (a plugin's alias, a config
file alias). Before any weights move, the repo's ``config.json`` is read and a
plugin must know its family. Files download with ``huggingface_hub`` (a
download cut short resumes where it stopped, in the same run or the next), the
files the server needs only (``MODEL_FILE_PATTERNS``), under one progress bar
of bytes and speed. A model already in the cache costs one look at the hub
(none when ``HF_HUB_OFFLINE=1``). An offline or unreachable hub is a one-line
error and exit status 1.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mlxhost.cli.common import (
    CommandError,
    add_config_argument,
    add_json_argument,
    human_bytes,
    load_settings,
    print_json,
)

_REPO_HINT = "a hub repo id (org/name) or a model alias"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "pull", help="download a model into the Hugging Face cache",
        description="Download a model (hub repo id or alias) into the Hugging Face cache, "
        "checking first that an installed plugin serves its family.",
    )
    parser.add_argument("model", help=_REPO_HINT)
    parser.add_argument("--revision", help="a branch, tag or commit (default: main)")
    add_json_argument(parser)
    add_config_argument(parser)
    parser.set_defaults(func=run)


def repo_for(name: str, settings: Any, pm: Any) -> str:
    """The hub repo ``name`` stands for."""
    from mlxhost.core.errors import ModelNotFound
    from mlxhost.models.registry import _REPO_ID, ModelRegistry

    try:
        spec = ModelRegistry(pm, settings).resolve_spec(name)
    except ModelNotFound:
        if _REPO_ID.fullmatch(name) and ".." not in name:
            return name
        raise CommandError(f"{name!r} is not {_REPO_HINT}") from None
    if spec.path is not None:
        raise CommandError(f"{name} is the local folder {spec.path}: there is nothing to pull")
    return spec.id


def is_connection_problem(error: BaseException) -> bool:
    """The hub could not be reached (refused, timed out, DNS, offline mode), by any
    of the HTTP stacks huggingface_hub has used (requests, httpx, httpx2)."""
    seen: BaseException | None = error
    names = {"ConnectError", "ConnectTimeout", "TimeoutException", "ReadTimeout",
             "ConnectionError", "ProxyError", "OfflineModeIsEnabled", "NetworkError"}
    while seen is not None:
        if type(seen).__name__ in names:
            return True
        if isinstance(seen, OSError) and not isinstance(seen, FileNotFoundError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _hub_error(repo_id: str, revision: str | None, error: Exception) -> CommandError:
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(error, GatedRepoError):
        return CommandError(f"{repo_id} is gated: accept its terms on the hub and log in (hf auth login)")
    if isinstance(error, RepositoryNotFoundError):
        return CommandError(f"{repo_id}: no such repo on the hub (or it is private: log in with hf auth login)")
    if isinstance(error, RevisionNotFoundError):
        return CommandError(f"{repo_id} has no revision {revision!r}")
    if is_connection_problem(error):
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return CommandError(f"cannot reach the Hugging Face hub at {constants.ENDPOINT}: {reason}")
    return CommandError(f"{repo_id}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")


def cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The cached snapshot of ``repo_id`` at ``revision`` when it holds a whole model
    (config and every weight file), with no network."""
    import json

    from huggingface_hub import snapshot_download

    from mlxhost.models.locate import MODEL_FILE_PATTERNS

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=True,
                                        allow_patterns=MODEL_FILE_PATTERNS))
    except Exception:
        return None
    if not (folder / "config.json").is_file():
        return None
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError):
            return None
        return folder if all((folder / shard).is_file() for shard in shards) else None
    return folder if any(folder.glob("*.safetensors")) else None


class _Progress:
    """One bar of bytes and speed for the files being downloaded, read from the
    cache as they grow (a resumed file starts where it stopped)."""

    def __init__(self, repo_dir: Path, commit: str, todo: dict[str, int], stream: Any) -> None:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]

        self._blobs = repo_dir / "blobs"
        self._snapshot = repo_dir / "snapshots" / commit
        self._todo = todo
        self._done = threading.Event()
        total = sum(todo.values())
        self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000,
                         desc="pulling", file=stream, dynamic_ncols=True, miniters=1)
        self._bar.update(self._measure())
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _measure(self) -> int:
        done = sum(size for name, size in self._todo.items() if (self._snapshot / name).exists())
        partial = 0
        if self._blobs.is_dir():
            for path in self._blobs.glob("*.incomplete"):
                try:
                    partial += path.stat().st_size
                except OSError:
                    pass
        return min(done + partial, self._bar.total or 0)

    def _watch(self) -> None:
        while not self._done.wait(0.2):
            self._bar.update(self._measure() - self._bar.n)

    def __enter__(self) -> _Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join()
        if exc[0] is None:
            self._bar.update((self._bar.total or 0) - self._bar.n)
        self._bar.close()


def pull(name: str, revision: str | None = None, *, settings: Any = None, stream: Any = None) -> dict[str, Any]:
    """Pull one model; returns what happened (``status``: downloaded, up-to-date or
    cached). CommandError when it cannot be had."""
    from mlxhost.families.plugins import make_plugin_manager
    from mlxhost.models.locate import MODEL_FILE_PATTERNS, folder_size, hub_offline, repo_cache_dir
    from mlxhost.models.registry import read_json

    stream = stream or sys.stderr
    pm = make_plugin_manager(disabled=settings.disabled_plugins if settings else ())
    repo_id = repo_for(name, settings, pm)
    started = time.perf_counter()
    cached = cached_snapshot(repo_id, revision)
    result: dict[str, Any] = {"model": repo_id, "revision": revision or "main"}

    def done(status: str, folder: Path, **extra: Any) -> dict[str, Any]:
        return {**result, "status": status, "path": str(folder),
                "bytes": folder_size(repo_cache_dir(repo_id)),
                "seconds": round(time.perf_counter() - started, 3), **extra}

    if hub_offline():
        if cached is not None:
            return done("cached", cached, note="HF_HUB_OFFLINE is set: not checked for updates")
        raise CommandError(f"cannot download {repo_id}: the Hugging Face hub is off (HF_HUB_OFFLINE=1)")

    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as error:
        if cached is not None and is_connection_problem(error):
            return done("cached", cached, note="the hub could not be reached: not checked for updates")
        raise _hub_error(repo_id, revision, error) from None
    commit = info.sha or ""
    files = {
        s.rfilename: int(s.size or 0)
        for s in (info.siblings or [])
        if any(fnmatch.fnmatch(s.rfilename, pattern) for pattern in MODEL_FILE_PATTERNS)
    }
    if "config.json" not in files:
        raise CommandError(f"{repo_id} has no config.json: not a model mlxhost can serve")
    repo_dir = repo_cache_dir(repo_id)
    existed = repo_dir.exists()
    # The family first: a model no plugin serves is refused before its weights move.
    try:
        config_path = Path(hf_hub_download(repo_id, "config.json", revision=commit))
    except Exception as error:
        raise _hub_error(repo_id, revision, error) from None
    config = read_json(config_path)
    from mlxhost.core.encoder_facts import kind_from_config

    family = pm.hook.mlxhost_model_family(config=config)
    kind = kind_from_config(config)
    patterns = list(MODEL_FILE_PATTERNS)
    if kind is not None:  # an embedding / rerank model, served beside the chat model
        family = None
        result["kind"] = kind
        # Its model card says whether it was trained for shortened (Matryoshka) vectors.
        patterns.append("README.md")
        files.update({s.rfilename: int(s.size or 0) for s in (info.siblings or [])
                      if s.rfilename == "README.md"})
    elif family is None:
        if not existed:
            import shutil

            shutil.rmtree(repo_dir, ignore_errors=True)
        known = sorted({f for f in _families(pm) if f})
        raise CommandError(
            f"{repo_id}: model_type {config.get('model_type')!r} is an architecture neither "
            f"mlx-lm nor mlx-vlm can load, nor an installed plugin (families: "
            f"{', '.join(known) or 'none'}); nothing downloaded"
        )
    result["family"] = family
    snapshot = repo_dir / "snapshots" / commit
    todo = {name: size for name, size in files.items() if not (snapshot / name).is_file()}
    if not todo:
        _point_main(repo_dir, commit, revision, result)
        return done("up-to-date", snapshot, commit=commit)
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # ours is one bar for all files
    try:
        with _Progress(repo_dir, commit, todo, stream):
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except KeyboardInterrupt:
        raise CommandError("interrupted; run the same command again to resume") from None
    except Exception as error:
        raise _hub_error(repo_id, revision, error) from None
    _point_main(repo_dir, commit, revision, result)
    return done("downloaded", folder, commit=commit, files=len(todo), downloaded_bytes=sum(todo.values()))


def _point_main(repo_dir: Path, commit: str, revision: str | None, result: dict[str, Any]) -> None:
    """The server serves the cache's ``main`` ref: a revision pulled while no ``main``
    is cached becomes it; otherwise it is stored beside it (and said so)."""
    if revision in (None, "main"):
        return
    main = repo_dir / "refs" / "main"
    if not main.exists():
        main.parent.mkdir(parents=True, exist_ok=True)
        main.write_text(commit)
        result["note"] = f"no main revision was cached: the server will serve {revision}"
    elif main.read_text().strip() != commit:
        result["note"] = (f"the server serves the cached main revision ({main.read_text().strip()[:12]}); "
                          f"{revision} is stored beside it")


def _families(pm: Any) -> list[str]:
    """Family names the installed family plugins declare (for the error message)."""
    from mlxhost.families.family import FamilyPlugin

    return [p.family.name for p in pm.get_plugins() if isinstance(p, FamilyPlugin)]


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    result = pull(args.model, args.revision, settings=settings)
    if args.json:
        print_json(result)
        return 0
    status = result["status"]
    if status == "downloaded":
        print(f"pulled {result['model']} ({human_bytes(result['downloaded_bytes'])} in "
              f"{result['seconds']:.1f}s; {human_bytes(result['bytes'])} on disk)")
    elif status == "up-to-date":
        print(f"{result['model']} is up to date ({human_bytes(result['bytes'])} on disk)")
    else:
        print(f"{result['model']} is already downloaded ({human_bytes(result['bytes'])} on disk)")
    if result.get("note"):
        print(f"note: {result['note']}", file=sys.stderr)
    return 0

