"""Plain data passed between the core, its hooks and the engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import attrs

VISION = "vision"
TOOLS = "tools"


@attrs.frozen
class ModelSpec:
    """A model the server can serve: registered by a plugin, found in the cache, or a folder."""

    id: str
    family: str | None = None
    aliases: tuple[str, ...] = ()
    capabilities: frozenset[str] = frozenset()
    # Declared context window, used while the model's config is not on disk.
    context_window: int | None = None
    # A local folder holding the model (None: a hub repo id).
    path: Path | None = None
    # Name of the plugin that registered it ("cache" / "cli" for discovered ones).
    source: str = ""


@attrs.frozen
class ModelInfo:
    """What hooks see of a model: its spec, its config and, once loaded, its tokenizer."""

    spec: ModelSpec
    config: dict[str, Any]
    path: Path | None = None
    # The Hugging Face tokenizer (or processor's tokenizer) when the model is loaded.
    tokenizer: Any = None

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def family(self) -> str | None:
        return self.spec.family

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")


@attrs.frozen
class ImageInput:
    """One decoded image (a PIL image, RGB), in prompt order."""

    image: Any
    # sha256 of the source bytes: identifies the image in prefix-cache keys.
    digest: str


@attrs.frozen
class RenderedPrompt:
    """The prompt text a template produced, plus the images it refers to, in order."""

    text: str
    images: tuple[ImageInput, ...] = ()


@attrs.frozen
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str


@attrs.frozen
class ContentDelta:
    text: str


@attrs.frozen
class ToolCallEvent:
    call: ToolCall


ParserEvent = ContentDelta | ToolCallEvent


class StreamParser(Protocol):
    """Turns generated text into content and tool calls, fed piece by piece.

    A parser may also set ``stop_requested = True`` after a feed: the server
    then ends generation there (finish reason ``tool_calls``).
    """

    def feed(self, text: str) -> list[ParserEvent]: ...

    def finish(self) -> list[ParserEvent]: ...


# A family plugin's tool-call format: given the request's tools, a fresh parser.
ToolParserFactory = Callable[[list[dict[str, Any]]], StreamParser]


@attrs.frozen
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


@attrs.frozen
class TokenStep:
    """One generated token as the engine reports it."""

    token: int
    text: str  # newly decoded text (may be empty while a multi-byte char is pending)
    finish: str | None = None  # "stop" (EOS) or "length" on the last step
