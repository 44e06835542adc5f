"""A fake engine plugin for fast tests of server logic (no MLX, no model files).

It is never the only proof that a feature works: integration tests drive a real
``mlxhost serve`` with a real MLX model.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mlxhost.hookspecs import hookimpl
from mlxhost.runtime.engine import PreparedPrompt
from mlxhost.types import ModelInfo, RenderedPrompt, SamplingParams, TokenStep

FAKE_FAMILY = "fake"


def make_fake_model(folder: Path, *, context_window: int = 256) -> Path:
    """A model folder the fake engine 'loads': just a config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "fake", "max_position_embeddings": context_window}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


class FakeEngine:
    """Byte-level 'tokenizer'; generates the plugin's scripted reply, one character a token."""

    name = "fake"

    def __init__(self, plugin: FakeEnginePlugin) -> None:
        self._plugin = plugin
        self.loaded: str | None = None

    def load(self, model_id: str, path: Path, config: dict[str, Any]) -> Any:
        if self._plugin.fail_load:
            raise RuntimeError(self._plugin.fail_load)
        time.sleep(self._plugin.load_delay)
        self.loaded = model_id
        self._plugin.events.append(("load", model_id))
        return None

    def unload(self) -> None:
        if self.loaded is not None:
            self._plugin.events.append(("unload", self.loaded))
        self.loaded = None

    def prepare(self, prompt: RenderedPrompt) -> PreparedPrompt:
        return PreparedPrompt(tokens=tuple(prompt.text.encode()))

    def generate(
        self, prompt: PreparedPrompt, params: SamplingParams, should_stop: Callable[[], bool]
    ) -> Iterator[TokenStep]:
        reply = self._plugin.reply
        model = self.loaded
        self._plugin.events.append(("generate", model))
        with self._plugin.active_lock:
            self._plugin.active += 1
            self._plugin.max_active = max(self._plugin.max_active, self._plugin.active)
        finished = False
        try:
            for index, char in enumerate(reply):
                if self._plugin.fail_after is not None and index >= self._plugin.fail_after:
                    raise RuntimeError("injected engine failure")
                time.sleep(self._plugin.token_delay)
                if self.loaded != model:  # a swap during generation would show here
                    raise RuntimeError("model swapped during generation")
                count = index + 1
                if count >= params.max_tokens and count < len(reply):
                    finished = True
                    yield TokenStep(ord(char), char, finish="length")
                    return
                finished = count == len(reply)
                yield TokenStep(ord(char), char, finish="stop" if finished else None)
                if should_stop():
                    return
        finally:
            if not finished:  # stopped early: the consumer went away
                self._plugin.events.append(("cancelled", model))
            with self._plugin.active_lock:
                self._plugin.active -= 1


class FakeEnginePlugin:
    """Register with ``make_plugin_manager(extra=[FakeEnginePlugin()])``."""

    def __init__(self, reply: str = "Hello from the fake engine.", token_delay: float = 0.0):
        self.reply = reply
        self.token_delay = token_delay
        self.load_delay = 0.0
        self.fail_load: str | None = None
        # Raise inside generation after this many tokens (an engine crash).
        self.fail_after: int | None = None
        self.events: list[tuple[str, str | None]] = []
        self.active = 0
        self.max_active = 0
        self.active_lock = threading.Lock()

    @hookimpl
    def mlxhost_make_engine(self, settings: Any) -> FakeEngine:
        return FakeEngine(self)

    @hookimpl
    def mlxhost_model_family(self, config: dict[str, Any]) -> str | None:
        return FAKE_FAMILY if config.get("model_type") == "fake" else None

    @hookimpl
    def mlxhost_render_prompt(
        self, model: ModelInfo, messages: list[dict[str, Any]], tools: Any
    ) -> RenderedPrompt | None:
        if model.family != FAKE_FAMILY:
            return None
        lines = [f"{m['role']}: {m.get('content') or ''}" for m in messages]
        return RenderedPrompt(text="\n".join(lines) + "\nassistant: ")
