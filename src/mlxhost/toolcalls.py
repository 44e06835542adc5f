"""Moved to :mod:`mlxhost.families.toolcalls`; this import path stays for plugins written against it
(re-export kept for plugins; new code imports mlxhost.families.toolcalls)."""

from typing import Any

from mlxhost.families import toolcalls as _moved
from mlxhost.families.toolcalls import *  # noqa: F403


def __getattr__(name: str) -> Any:
    # Names outside the module's __all__ (helpers plugins use) resolve too.
    return getattr(_moved, name)
