"""The model registry: what plugins registered, plus models found on disk."""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import pluggy

from mlxhost.errors import ModelNotFound
from mlxhost.runtime.locate import cached_config_path, find_cached_repo_ids
from mlxhost.types import TOOLS, VISION, ModelInfo, ModelSpec

log = logging.getLogger(__name__)


class RegistrationError(Exception):
    pass


class ModelRegistry:
    """Registered models and aliases; resolves a request's ``model`` to a spec.

    A name resolves, in order, as a registered id, an alias, a local folder, or a
    repo already in the Hugging Face cache.
    """

    def __init__(self, pm: pluggy.PluginManager, *, extra_models: list[str] = ()) -> None:
        self._pm = pm
        self._specs: dict[str, ModelSpec] = {}
        self._aliases: dict[str, str] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        self._discovered: dict[tuple[str, int], ModelSpec] = {}
        for impl in pm.hook.mlxhost_register_models.get_hookimpls():
            impl.function(register=partial(self._register, source=impl.plugin_name))
        for name in extra_models:
            if name in self._specs or name in self._aliases:
                continue
            spec = self._discover(name)
            if spec is None:
                log.warning("%s is not a registered model, a model folder or a cached repo", name)
                continue
            self._specs.setdefault(spec.id, spec)

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

    # -- lookup ---------------------------------------------------------------
    def resolve(self, name: str) -> ModelSpec:
        spec = self._specs.get(name) or self._specs.get(self._aliases.get(name, ""))
        if spec is None:
            spec = self._discover(name)
        if spec is None:
            raise ModelNotFound(name)
        return spec

    def _discover(self, name: str) -> ModelSpec | None:
        """A spec for an unregistered local folder or cached hub repo."""
        folder = Path(name).expanduser()
        if (folder / "config.json").is_file():
            folder = folder.resolve()
            return self._spec_from_config(str(folder), folder / "config.json", "path", folder)
        if name.count("/") == 1 and not name.startswith(("/", ".")):
            config_path = cached_config_path(name)
            if config_path is not None:
                return self._spec_from_config(name, config_path, "cache", None)
        return None

    def _spec_from_config(
        self, model_id: str, config_path: Path, source: str, path: Path | None
    ) -> ModelSpec:
        # Requests name discovered models over and over: parse each config once
        # (again only if the file changes).
        key = (model_id, config_path.stat().st_mtime_ns)
        if key in self._discovered:
            return self._discovered[key]
        config = json.loads(config_path.read_text())
        self._configs[model_id] = config
        family = self._pm.hook.mlxhost_model_family(config=config)
        capabilities = {TOOLS} if family else set()
        if "vision_config" in config:
            capabilities.add(VISION)
        spec = ModelSpec(
            id=model_id,
            family=family,
            capabilities=frozenset(capabilities),
            path=path,
            source=source,
        )
        self._discovered[key] = spec
        return spec

    def config_of(self, spec: ModelSpec) -> dict[str, Any]:
        """The model's config.json if it is on disk (empty dict otherwise)."""
        if spec.id not in self._configs:
            config_path = (
                spec.path / "config.json" if spec.path else cached_config_path(spec.id)
            )
            if config_path is None or not config_path.is_file():
                return {}
            self._configs[spec.id] = json.loads(config_path.read_text())
        return self._configs[spec.id]

    def forget_config(self, spec: ModelSpec) -> None:
        self._configs.pop(spec.id, None)

    def info(self, spec: ModelSpec) -> ModelInfo:
        return ModelInfo(spec=spec, config=self.config_of(spec), path=spec.path)

    def all_specs(self) -> list[ModelSpec]:
        """Registered models, then cached repos that no plugin registered."""
        specs = list(self._specs.values())
        known = set(self._specs)
        for repo_id in find_cached_repo_ids():
            if repo_id not in known:
                spec = self._discover(repo_id)
                if spec is not None:
                    specs.append(spec)
        return specs
