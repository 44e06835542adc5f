"""Building the plugin manager: built-in fallbacks plus entry-point plugins."""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterable

import pluggy

from mlxhost.families import hookspecs

ENTRY_POINT_GROUP = "mlxhost"

# Built-in plugins use the same hooks as external ones; each is marked trylast
# so an installed family plugin answers first.
DEFAULT_PLUGINS = (
    "mlxhost.families.builtin.generic_family",
    "mlxhost.families.builtin.config_context",
    "mlxhost.families.builtin.mlx_engine",
    "mlxhost.families.builtin.claude_code",
    "mlxhost.families.builtin.reasoning_markers",
)


def make_plugin_manager(
    *, load_entrypoints: bool = True, disabled: Iterable[str] = (), extra: Iterable[object] = ()
) -> pluggy.PluginManager:
    """A fresh plugin manager (never a module-level singleton).

    ``disabled`` names entry-point plugins to skip (``MLXHOST_DISABLED_PLUGINS``);
    ``extra`` are plugin objects or module names registered after the defaults
    (tests use it for the fake engine).
    """
    pm = pluggy.PluginManager("mlxhost")
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    if load_entrypoints:
        for name in disabled:
            pm.set_blocked(name)
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in extra:
        module = importlib.import_module(plugin) if isinstance(plugin, str) else plugin
        pm.register(module)
    # A misspelled hook implementation fails here instead of being ignored.
    pm.check_pending()
    return pm


def describe_plugins(pm: pluggy.PluginManager) -> list[dict]:
    """Installed plugins with version and the hooks each implements (`mlxhost plugins`)."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    rows = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        if plugin is None:  # blocked
            continue
        dist = dists.get(id(plugin))
        hooks = sorted(hook.name for hook in pm.get_hookcallers(plugin) or ())
        rows.append(
            {
                "name": dist.project_name if dist else name,
                "module": getattr(plugin, "__name__", name),
                "version": dist.version if dist else _core_version(),
                "builtin": name in DEFAULT_PLUGINS,
                "hooks": hooks,
            }
        )
    return rows


def _core_version() -> str:
    try:
        return importlib.metadata.version("mlxhost")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        from mlxhost import __version__

        return __version__
