"""Reasoning models: thinking kept apart from the answer (``split``), the
markers a model uses (``formats``), the request's controls (``controls``) and
the thinking budget the engine enforces (``budget``, ``processor``)."""

from __future__ import annotations

from mlxhost.core.types import Harmony, ReasoningFormat, ThinkTags
from mlxhost.families.reasoning.split import HarmonySplitter, ReplySplitter, TagSplitter


def splitter_for(
    fmt: ReasoningFormat | None, *, inside: bool = False, offered: frozenset[str] = frozenset()
) -> ReplySplitter | None:
    """The splitter for a model's thinking markers (None: it does not think);
    ``offered``: the functions a harmony call may name."""
    if isinstance(fmt, ThinkTags):
        return TagSplitter(fmt.start, fmt.end, inside=inside)
    if isinstance(fmt, Harmony):
        return HarmonySplitter(offered)
    return None


__all__ = ["ReplySplitter", "splitter_for"]
