"""The model registry: what plugins registered, plus models found on disk.

It is also the one place that reads a model's ``config.json`` and
``generation_config.json`` and resolves its facts (:class:`ModelInfo`): once
per model version (the config file's mtime), not per request.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import re
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pluggy

from mlxhost.core.encoder_facts import encoder_facts, model_kind
from mlxhost.core.errors import (
    ModelDownloadFailed,
    ModelNotDownloaded,
    ModelNotFound,
    UnsupportedArchitecture,
)
from mlxhost.core.types import (
    DEFAULT_CONTEXT_WINDOW,
    EMBEDDING,
    GENERIC_FAMILY,
    REASONING,
    RERANK,
    TOOLS,
    VISION,
    ModelInfo,
    ModelSpec,
)
from mlxhost.families.chat_facts import read_chat_facts
from mlxhost.families.plugins import make_plugin_manager
from mlxhost.families.reasoning.formats import thinking_kind_on_disk
from mlxhost.models.locate import (
    DownloadFailed,
    HubUnavailable,
    cached_config_path,
    download_model,
    find_cached_repo_ids,
)
from mlxhost.settings.config_file import ConfigError, ModelConfig
from mlxhost.settings.table import Settings

log = logging.getLogger(__name__)


class RegistrationError(Exception):
    pass


def read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def generation_defaults(folder: Path) -> dict[str, float]:
    """Sampling defaults the checkpoint recommends (generation_config.json)."""
    gen_config = folder / "generation_config.json"
    if not gen_config.is_file():
        return {}
    data = read_json(gen_config)
    return {
        k: float(data[k])
        for k in ("temperature", "top_p")
        if isinstance(data.get(k), (int, float)) and not isinstance(data.get(k), bool)
    }


# A hub repo id: "owner/name", no path tricks.
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
# A model under a --models-dir: a plain folder name.
_FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ModelRegistry:
    """Registered models and aliases; resolves a request's ``model`` to its facts.

    A request may name only what the server was told about: a registered id or
    alias, a repo in the Hugging Face cache that a family plugin recognises, a
    folder given at start-up (``--model PATH``, by the path as given, its
    resolved form or its folder's name), or a subfolder of a ``--models-dir`` (by
    its folder name); with ``stand_in_for``, a name matching one of its glob
    patterns resolves to the ``--model`` model.
    Any other string, paths included, is ``ModelNotFound`` without touching the
    filesystem, unless ``allow_model_paths`` restores serving any folder.

    The config file's ``[models.<name>]`` tables (``settings.model_configs``) add
    aliases for hub repos and folders, and per-model defaults
    (``ModelSpec.defaults``) to whichever model they name.
    """

    def __init__(
        self,
        pm: pluggy.PluginManager,
        settings: Settings | None = None,
        *,
        extra_models: Iterable[str] = (),
    ) -> None:
        self._pm = pm
        self._settings = settings or Settings()
        self._specs: dict[str, ModelSpec] = {}
        self._aliases: dict[str, str] = {}
        # (model id, config mtime) -> facts; a new download is a new key.
        self._infos: dict[tuple[str, int | None], ModelInfo] = {}
        self._discovered: dict[tuple[str, int], ModelSpec] = {}
        # Parsed config.json files by (path, mtime): each version is read once.
        self._configs: dict[tuple[Path, int], dict[str, Any]] = {}
        for impl in pm.hook.mlxhost_register_models.get_hookimpls():
            impl.function(register=partial(self._register, source=impl.plugin_name))
        # Folders named at start-up, by the spelling given -> model id.
        self._start_paths: dict[str, str] = {}
        self._models_dirs = [Path(d).expanduser().resolve() for d in self._settings.models_dirs]
        # The config file's [models.X] tables: model id -> its table, alias -> model id,
        # and the hub repos they name (served whether cached yet or not).
        self._configured: dict[str, ModelConfig] = {}
        self._config_aliases: dict[str, str] = {}
        self._config_repos: dict[str, None] = {}
        for model_config in self._settings.model_configs:
            self._add_config(model_config)
        for name in extra_models:
            if name in self._specs or name in self._aliases or name in self._config_aliases:
                continue
            spec = self._discover(name, trusted=True)
            if spec is None:
                log.warning("%s is not a registered model, a model folder or a cached repo", name)
                continue
            self._specs.setdefault(spec.id, spec)
            if spec.path is not None:
                self._start_paths[name] = spec.id
                # Its folder's name is an alias, so that clients need not send a path.
                short = spec.path.name
                if short not in self._start_paths and not self._taken(short):
                    owner = self._specs[spec.id]
                    self._specs[spec.id] = attrs.evolve(owner, aliases=(*owner.aliases, short))
                    self._aliases[short] = spec.id

    # -- registration -------------------------------------------------------
    def _register(
        self,
        model_id: str,
        *,
        source: str,
        aliases: tuple[str, ...] | list[str] = (),
        family: str | None = None,
        capabilities: tuple[str, ...] | list[str] | frozenset[str] = (),
        context_window: int | None = None,
        path: str | Path | None = None,
    ) -> None:
        for name in (model_id, *aliases):
            owner = self._specs.get(name) or self._specs.get(self._aliases.get(name, ""))
            if owner is not None:
                raise RegistrationError(
                    f"{source} registers {name!r}, already registered by {owner.source}"
                )
        self._specs[model_id] = ModelSpec(
            id=model_id,
            family=family,
            aliases=tuple(aliases),
            capabilities=frozenset(capabilities),
            context_window=context_window,
            path=Path(path) if path else None,
            source=source,
        )
        for alias in aliases:
            self._aliases[alias] = model_id

    # -- the config file's [models.X] tables ---------------------------------------
    def _add_config(self, model: ModelConfig) -> None:
        """Register one [models.X] table (a start-up ConfigError names its line
        when it conflicts with what is known)."""
        label = f"{model.where}: models.{model.name}"
        if model.path is not None:
            spec = self._discover(model.path, trusted=True)
            if spec is None:
                raise ConfigError(f"{label}.path: {model.path} is not a model folder (no config.json)")
            self._specs.setdefault(spec.id, spec)
            target = spec.id
        elif model.repo is not None:
            target = model.repo
            if target not in self._specs:
                self._config_repos[target] = None
        else:
            try:
                target = self.resolve_spec(model.name).id
            except ModelNotFound:
                raise ConfigError(
                    f"{label}: no model is known by this name; give it repo = \"org/name\" "
                    "or path = \"/a/model/folder\""
                ) from None
        other = self._configured.get(target)
        if other is not None:
            raise ConfigError(
                f"{label}: {target} already has a table ([models.{other.name}] at {other.where}); "
                "give one table more names with aliases = [...]"
            )
        for alias in ((model.name,) if model.new_alias else ()) + tuple(model.aliases):
            owner = self._config_aliases.get(alias) or (
                alias if alias in self._specs else self._aliases.get(alias)
            )
            if owner is not None and owner != target:
                raise ConfigError(f"{label}: the name {alias!r} already names {owner}")
            self._config_aliases[alias] = target
        self._configured[target] = model

    def _configure(self, spec: ModelSpec) -> ModelSpec:
        """The spec with its config-file aliases and defaults."""
        model = self._configured.get(spec.id)
        if model is None:
            return spec
        extra = tuple(
            alias for alias, target in self._config_aliases.items()
            if target == spec.id and alias not in spec.aliases
        )
        return attrs.evolve(spec, aliases=(*spec.aliases, *extra), defaults=model.defaults)

    def _config_repo_spec(self, repo_id: str) -> ModelSpec:
        """A repo a [models.X] table names: from the cache when there (whatever its
        family), else a spec that downloads on first use."""
        config_path = cached_config_path(repo_id)
        if config_path is not None:
            return self._spec_from_config(repo_id, config_path, "cache", None)
        return ModelSpec(id=repo_id, source="config")

    # -- lookup ---------------------------------------------------------------
    def resolve_spec(self, name: str) -> ModelSpec:
        target = self._config_aliases.get(name, name)
        spec = self._specs.get(target) or self._specs.get(self._aliases.get(target, ""))
        if spec is None and target in self._start_paths:
            spec = self._specs.get(self._start_paths[target])
        if spec is None:
            spec = self._discover(target, trusted=self._settings.allow_model_paths)
        if spec is None and target in self._config_repos:
            spec = self._config_repo_spec(target)
        if spec is None and self._settings.model and any(
            fnmatch.fnmatchcase(name, pattern) for pattern in self._settings.stand_in_for
        ):
            # A client's own model name (Claude Code's claude-*): the --model model answers.
            return self.resolve_spec(self._settings.model)
        if spec is None:
            raise ModelNotFound(name)
        return self._configure(spec)

    def _taken(self, name: str) -> bool:
        return name in self._specs or name in self._aliases or name in self._config_aliases

    def names(self, model_id: str) -> list[str]:
        """Every name a request may use for ``model_id``: the id, then its aliases."""
        return [model_id, *self.resolve_spec(model_id).aliases]

    def resolve(self, name: str) -> ModelInfo:
        """The facts of the model a request names (ModelNotFound otherwise)."""
        return self.info(self.resolve_spec(name))

    def _discover(self, name: str, *, trusted: bool = False) -> ModelSpec | None:
        """A spec for a model no plugin registered: a subfolder of a models dir, a
        repo in the Hugging Face cache, or (``trusted``: named by the operator, or
        ``allow_model_paths``) any model folder."""
        if trusted:
            try:
                folder = Path(name).expanduser()
                is_folder = (folder / "config.json").is_file()
            except (RuntimeError, OSError, ValueError):  # ~unknownuser, NUL bytes, too long
                is_folder = False
            if is_folder:
                folder = folder.resolve()
                return self._spec_from_config(str(folder), folder / "config.json", "path", folder)
        if _FOLDER_NAME.fullmatch(name) and name not in (".", ".."):
            spec = self._in_models_dirs(name)
            if spec is not None:
                return spec
        if _REPO_ID.fullmatch(name) and ".." not in name:
            config_path = cached_config_path(name)
            if config_path is not None:
                spec = self._spec_from_config(name, config_path, "cache", None)
                # Only repos a family plugin or the embedding runtime can serve (or
                # that the operator opened up).
                encoder = spec.capabilities & {EMBEDDING, RERANK}
                if spec.family is None and not encoder and not trusted:
                    raise UnsupportedArchitecture(name, self._read_config(config_path).get("model_type"))
                return spec
        return None

    def _in_models_dirs(self, name: str) -> ModelSpec | None:
        for root in self._models_dirs:
            folder = root / name
            try:
                real = folder.resolve()
                inside = real.is_relative_to(root) and real.parent == root
                has_config = inside and (real / "config.json").is_file()
            except (OSError, RuntimeError, ValueError):
                continue
            if not inside:
                log.warning("Not serving %s: it leads outside the models dir %s", folder, root)
                continue
            if has_config:
                return self._spec_from_config(name, real / "config.json", "models-dir", real)
        return None

    def _models_dir_names(self) -> list[str]:
        names: list[str] = []
        for root in self._models_dirs:
            try:
                entries = sorted(root.iterdir())
            except OSError:
                continue
            names.extend(e.name for e in entries if _FOLDER_NAME.fullmatch(e.name))
        return names

    def _spec_from_config(
        self, model_id: str, config_path: Path, source: str, path: Path | None
    ) -> ModelSpec:
        # Requests name discovered models over and over: parse each config once
        # (again only if the file changes).
        key = (model_id, config_path.stat().st_mtime_ns)
        if key in self._discovered:
            return self._discovered[key]
        config = self._read_config(config_path)
        # An embedding or rerank model (modules.json, an encoder architecture) is
        # served beside the chat model (mlxhost.runtime.embedding), whatever its family.
        kind = model_kind(config_path.parent, config)
        family = None if kind else self._pm.hook.mlxhost_model_family(config=config)
        # A family plugin handles tools itself; the generic family's capabilities
        # come from the model's chat template (ModelInfo.chat).
        capabilities = {TOOLS} if family and family != GENERIC_FAMILY else set()
        if kind:
            capabilities = {kind}
        if "vision_config" in config and family != GENERIC_FAMILY:
            capabilities.add(VISION)
        if thinking_kind_on_disk(config_path.parent) is not None:
            capabilities.add(REASONING)
        spec = ModelSpec(
            id=model_id,
            family=family,
            capabilities=frozenset(capabilities),
            path=path,
            source=source,
        )
        self._discovered[key] = spec
        return spec

    # -- facts ----------------------------------------------------------------
    def _read_config(self, config_path: Path) -> dict[str, Any]:
        key = (config_path, config_path.stat().st_mtime_ns)
        if key not in self._configs:
            self._configs[key] = read_json(config_path)
        return self._configs[key]

    def _config_path(self, spec: ModelSpec) -> Path | None:
        if spec.path is not None:
            found = spec.path / "config.json"
            return found if found.is_file() else None
        return cached_config_path(spec.id)

    def info(self, spec: ModelSpec) -> ModelInfo:
        """The model's facts, computed once per version of its files."""
        config_path = self._config_path(spec)
        mtime = config_path.stat().st_mtime_ns if config_path is not None else None
        key = (spec.id, mtime)
        info = self._infos.get(key)
        if info is None:
            config = self._read_config(config_path) if config_path is not None else {}
            folder = config_path.parent if config_path is not None else None
            info = ModelInfo(
                spec=spec,
                config=config,
                path=folder,
                context_window=self._context_window(spec, config, folder),
                generation_defaults={
                    **(generation_defaults(folder) if folder else {}),
                    **spec.defaults.sampling,
                },
                # The config file's [models.X] keep_alive (absent when --keep-alive
                # or its variable is given: mlxhost.settings.config_file); None: the server's.
                keep_alive=spec.defaults.keep_alive,
                chat=read_chat_facts(folder, config),
            )
            self._infos[key] = info
        return info

    def _context_window(
        self, spec: ModelSpec, config: Mapping[str, Any], folder: Path | None = None
    ) -> int:
        """The config file's [models.X] value (absent when a flag or variable sets one for
        every model: mlxhost.settings.config_file) > settings override > the context-limit hook >
        the plugin's declared value > 4096."""
        settings = self._settings
        if folder is not None and spec.capabilities & {EMBEDDING, RERANK}:
            # An encoder's window: tokens per input (sentence-transformers' max_seq_length).
            return encoder_facts(folder, config).max_tokens
        if spec.defaults.context_window:
            return spec.defaults.context_window
        if settings.context_window:
            return settings.context_window
        if spec.id in settings.context_windows:
            return settings.context_windows[spec.id]
        hooked = self._pm.hook.mlxhost_context_limit(spec=spec, config=config)
        return hooked or spec.context_window or DEFAULT_CONTEXT_WINDOW

    async def ensure_local(self, info: ModelInfo) -> ModelInfo:
        """The model with its files on disk, downloading it when that is allowed.

        Runs before the model slot is touched: a model that cannot be had leaves
        the loaded one loaded, and a download never blocks other requests.
        """
        if info.downloaded:
            return info
        try:
            await asyncio.to_thread(download_model, info.id)
        except HubUnavailable as exc:
            raise ModelNotDownloaded(info.id, str(exc), self.available()) from None
        except DownloadFailed as exc:
            raise ModelDownloadFailed(info.id, str(exc)) from None
        # Resolved again: a repo first seen uncached now has its config (and family).
        fresh = self.info(self.resolve_spec(info.id))
        if not fresh.downloaded:
            raise ModelDownloadFailed(info.id, "the download brought no config.json")
        return fresh

    def all_specs(self) -> list[ModelSpec]:
        """Registered models, the config file's repos, then cached repos that no
        plugin registered."""
        specs = list(self._specs.values())
        known = set(self._specs)
        for name in self._models_dir_names():
            spec = self._in_models_dirs(name) if name not in known else None
            # Listed are the models this server can serve (asked by name, another
            # answers why not: UnsupportedArchitecture).
            if spec is not None and spec.family is not None:
                specs.append(spec)
                known.add(name)
        for repo_id in self._config_repos:
            if repo_id not in known:
                specs.append(self._config_repo_spec(repo_id))
                known.add(repo_id)
        for repo_id in find_cached_repo_ids():
            if repo_id not in known:
                try:
                    spec = self._discover(repo_id)
                except UnsupportedArchitecture:
                    continue  # listed are the repos this server can serve
                if spec is not None:
                    specs.append(spec)
        return [self._configure(spec) for spec in specs]

    def all_models(self) -> list[ModelInfo]:
        return [self.info(spec) for spec in self.all_specs()]

    def available(self) -> list[str]:
        """Models that load without a download (for error messages)."""
        return [info.id for info in self.all_models() if info.downloaded]


def folder_info(path: Path | str, pm: pluggy.PluginManager | None = None) -> ModelInfo:
    """The facts of a local model folder, as the server would resolve them
    (benchmarks and tests that drive an engine directly)."""
    registry = ModelRegistry(pm or make_plugin_manager(), extra_models=[str(path)])
    return registry.resolve(str(Path(path).resolve()))
