"""Moved to :mod:`mlxhost.families.hookspecs`; this import path stays for plugins written against it
(re-export kept for plugins; new code imports mlxhost.families.hookspecs)."""

from typing import Any

from mlxhost.families import hookspecs as _moved
from mlxhost.families.hookspecs import *  # noqa: F403


def __getattr__(name: str) -> Any:
    # Names outside the module's __all__ (helpers plugins use) resolve too.
    return getattr(_moved, name)
