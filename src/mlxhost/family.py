"""Moved to :mod:`mlxhost.families.family`; this import path stays for plugins written against it
(re-export kept for plugins; new code imports mlxhost.families.family)."""

from typing import Any

from mlxhost.families import family as _moved
from mlxhost.families.family import *  # noqa: F403


def __getattr__(name: str) -> Any:
    # Names outside the module's __all__ (helpers plugins use) resolve too.
    return getattr(_moved, name)
