"""Moved to :mod:`mlxhost.families.templating`; this import path stays for plugins written against it
(re-export kept for plugins; new code imports mlxhost.families.templating)."""

from typing import Any

from mlxhost.families import templating as _moved
from mlxhost.families.templating import *  # noqa: F403


def __getattr__(name: str) -> Any:
    # Names outside the module's __all__ (helpers plugins use) resolve too.
    return getattr(_moved, name)
