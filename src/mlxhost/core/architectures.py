"""Which library can load a ``model_type``: mlx-lm, mlx-vlm, or neither.

Answered from the installed packages' files, without importing them: importing
``mlx_lm.utils`` costs seconds (it pulls in MLX and transformers), and
``mlxhost ls`` asks this for every cached repo. The two remapping tables
(``MODEL_REMAPPING``, e.g. ``mistral`` -> ``llama``) are read from the source
text with :mod:`ast` for the same reason.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

Library = Literal["mlx-lm", "mlx-vlm"]


@lru_cache(maxsize=4)
def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=4)
def _remapping(package: str) -> dict[str, str]:
    root = _package_dir(package)
    if root is None:
        return {}
    try:
        tree = ast.parse((root / "utils.py").read_text())
    except (OSError, SyntaxError):
        return {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "MODEL_REMAPPING" for t in node.targets)
        ):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return {}
            return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
    return {}


@lru_cache(maxsize=512)
def _has_model(package: str, model_type: str) -> bool:
    root = _package_dir(package)
    if root is None:
        return False
    name = _remapping(package).get(model_type, model_type).replace("-", "_")
    models = root / "models"
    return (models / f"{name}.py").is_file() or (models / name / "__init__.py").is_file() or (
        # mlx-lm names a few modules with dashes (lfm2-vl.py, nemotron-nas.py)
        (models / f"{model_type}.py").is_file()
    )


def loader_for(config: Mapping[str, Any]) -> Library | None:
    """The library the engine loads this checkpoint with, or None when neither can.

    A config with a ``vision_config`` goes to mlx-vlm (as the engine does), a
    text-only one to mlx-lm; each falls back to the other library when only it
    knows the architecture (mlx-vlm loads many text models too)."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        return None
    order: tuple[Library, ...] = (
        ("mlx-vlm", "mlx-lm") if "vision_config" in config else ("mlx-lm", "mlx-vlm")
    )
    for library in order:
        if _has_model(library.replace("-", "_"), model_type):
            return library
    return None


def is_vision(config: Mapping[str, Any]) -> bool:
    """A checkpoint with a vision tower that mlx-vlm can load."""
    return "vision_config" in config and loader_for(config) == "mlx-vlm"
