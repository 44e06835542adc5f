"""A fake engine plugin for fast tests of server logic (no MLX, no model files).

It is never the only proof that a feature works: integration tests drive a real
``mlxhost serve`` with a real MLX model.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mlxhost.core.domain import ImagePart, Message
from mlxhost.core.types import (
    Harmony,
    LoadedModel,
    ModelInfo,
    ReasoningFormat,
    RenderedPrompt,
    SamplingParams,
    ThinkTags,
    TokenStep,
)
from mlxhost.engine.reasoning_budget import ThoughtTracker
from mlxhost.families.hookspecs import hookimpl
from mlxhost.runtime.engine import EngineMemory, PreparedPrompt
from mlxhost.runtime.memory import DeviceMemory

FAKE_FAMILY = "fake"


def make_fake_model(
    folder: Path, *, context_window: int = 256, vision: bool = False, kv: bool = False
) -> Path:
    """A model folder the fake engine 'loads': just a config.json (``vision``: it
    declares a vision tower, so it takes images; ``kv``: it declares the sizes the
    memory governor reads, 1 KiB of fp32 KV per token: 4 layers x 2 KV heads x
    head dim 16 x keys and values x 4 bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {"model_type": "fake", "max_position_embeddings": context_window}
    if kv:
        config.update(num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=2,
                      head_dim=16, torch_dtype="float32")
    if vision:
        config["vision_config"] = {}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _ids(text: str) -> tuple[int, ...]:
    return tuple(ord(char) for char in text)


# The fake model's thinking markers: one character a token, as its tokenizer reads them.
FAKE_THINK = ThinkTags(start="<think>", end="</think>", start_ids=_ids("<think>"),
                       end_ids=_ids("</think>"))
FAKE_HARMONY = Harmony(
    analysis_ids=_ids("<|channel|>analysis<|message|>"),
    end_ids=_ids("<|end|>"),
    final_ids=_ids("<|channel|>final<|message|>"),
    close_ids=_ids("<|end|><|start|>assistant<|channel|>final<|message|>"),
)


def follow_script(reply: str, params: SamplingParams) -> str:
    """The reply the fake model gives under ``params.thinking``: where the budget
    closes the thought, the closing tokens are inserted and the script goes on
    after its own close (the model answers), as a logits processor forces them
    in the MLX engine."""
    plan = params.thinking
    if plan is None:
        return reply
    tracker = ThoughtTracker(plan)
    out: list[str] = []
    i = 0
    while i < len(reply):
        forced = tracker.forced()
        if forced is not None:
            tracker.advance(forced)
            out.append(chr(forced))
            if tracker.forced() is None:
                # The model answers: its script goes on after its own close (which it
                # may have begun writing when the budget struck).
                close = "".join(map(chr, plan.force))
                j = reply.find(close, max(0, i - len(close) + 1))
                i = j + len(close) if j >= 0 else i
            continue
        tracker.advance(ord(reply[i]))
        out.append(reply[i])
        i += 1
    return "".join(out)


class FakeEngine:
    """Byte-level 'tokenizer'; generates the plugin's scripted reply, one character a token."""

    name = "fake"

    def __init__(self, plugin: FakeEnginePlugin) -> None:
        self._plugin = plugin
        self.loaded: str | None = None
        self._sequences: dict[int, list[Any]] = {}  # uid -> [emit, params, next index]
        self._uids = 0
        self._drafts = {"drafted": 0, "accepted": 0}  # what _token reported (stats())

    # -- batching (``FakeEnginePlugin(batch=True)``): every step hands each
    # sequence its next character; a closed gate holds the whole batch.
    def batchable(self, prompt: PreparedPrompt) -> bool:
        return self._plugin.batch

    def join(self, prompt: PreparedPrompt, params: SamplingParams, emit: Any) -> int:
        self._plugin.params.append(params)
        self._uids += 1
        self._sequences[self._uids] = [emit, params, 0, follow_script(self._plugin.reply, params)]
        self._plugin.events.append(("join", self.loaded))
        with self._plugin.active_lock:
            self._plugin.active += 1
            self._plugin.max_active = max(self._plugin.max_active, self._plugin.active)
        self._plugin.started.set()
        return self._uids

    def leave(self, uid: int) -> None:
        if self._sequences.pop(uid, None) is not None:
            self._plugin.events.append(("cancelled", self.loaded))
            self._end()

    def batch_limit(self) -> int | None:
        return self._plugin.batch_limit

    def step(self) -> bool:
        if not self._plugin.gate.wait(0.005):
            return bool(self._sequences)
        permits = self._plugin.step_permits
        if permits is not None and not permits.acquire(timeout=0.005):
            return bool(self._sequences)
        for uid, (emit, params, index, reply) in list(self._sequences.items()):
            count = index + 1
            finish = "length" if count >= params.max_tokens and count < len(reply) else None
            if count == len(reply):
                finish = "stop"
            char = reply[index]
            if finish is not None:
                del self._sequences[uid]
                self._end()
            else:
                self._sequences[uid][2] = count
            emit(self._token(char, finish, index), None)
            self._plugin.first_token.set()
        time.sleep(self._plugin.token_delay)
        return bool(self._sequences)

    def _token(self, char: str, finish: str | None, index: int) -> TokenStep:
        if not self._plugin.drafting:
            return TokenStep(ord(char), char, finish=finish)
        # Every even token opens a 3-token draft; the odd one after it was drafted.
        self._drafts["drafted"] += 3 if index % 2 == 0 else 0
        self._drafts["accepted"] += index % 2
        return TokenStep(ord(char), char, finish=finish, drafted=3 if index % 2 == 0 else 0,
                         speculated=index % 2 == 1)

    def _end(self) -> None:
        with self._plugin.active_lock:
            self._plugin.active -= 1

    def load(self, info: ModelInfo, on_warm_up: Callable[[], None] | None = None) -> Any:
        model_id = info.id
        self.unload()
        if self._plugin.fail_load:
            raise RuntimeError(self._plugin.fail_load)
        plugin = self._plugin
        plugin.loading.set()
        plugin.load_gate.wait()  # a test holds the load here to look at it
        time.sleep(plugin.load_delay)
        if on_warm_up is not None:
            on_warm_up()
        plugin.warming.set()
        plugin.warm_gate.wait()  # a test holds the warm-up here to look at it
        self.loaded = model_id
        self._plugin.events.append(("load", model_id))
        return None

    def unload(self) -> None:
        if self.loaded is not None:
            self._plugin.events.append(("unload", self.loaded))
        self.loaded = None

    def close(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {"batch": dict(self._drafts)} if self._plugin.drafting else {}

    # -- memory: the figures the plugin is told to report --------------------------
    def device_memory(self) -> DeviceMemory | None:
        total = self._plugin.device_bytes
        return DeviceMemory(total, "cpu", "fake") if total else None

    def set_memory_limit(self, budget: int) -> None:
        self._plugin.memory_limit = budget

    def memory(self) -> EngineMemory:
        return EngineMemory(
            weights=self._plugin.weights_bytes if self.loaded else 0,
            prefix_cache=self._plugin.prefix_bytes,
            limit=self._plugin.memory_limit,
        )

    def shrink_prefix_cache(self, max_bytes: int) -> int:
        self._plugin.prefix_bytes = min(self._plugin.prefix_bytes, max(0, max_bytes))
        self._plugin.events.append(("shrink", str(max_bytes)))
        return self._plugin.prefix_bytes

    def prepare(self, prompt: RenderedPrompt) -> PreparedPrompt:
        self._plugin.prompts.append(prompt)
        return PreparedPrompt(tokens=tuple(prompt.text.encode()))

    def generate(
        self, prompt: PreparedPrompt, params: SamplingParams, should_stop: Callable[[], bool]
    ) -> Iterator[TokenStep]:
        reply = follow_script(self._plugin.reply, params)
        model = self.loaded
        self._plugin.params.append(params)
        self._plugin.events.append(("generate", model))
        with self._plugin.active_lock:
            self._plugin.active += 1
            self._plugin.max_active = max(self._plugin.max_active, self._plugin.active)
        finished = False
        try:
            self._plugin.started.set()
            # A closed gate holds the generation here (the slot stays taken) until
            # the test opens it; a consumer that goes away meanwhile still stops it.
            while not self._plugin.gate.wait(0.005):
                if should_stop():
                    return
            for index, char in enumerate(reply):
                if self._plugin.fail_after is not None and index >= self._plugin.fail_after:
                    raise RuntimeError("injected engine failure")
                time.sleep(self._plugin.token_delay)
                if self.loaded != model:  # a swap during generation would show here
                    raise RuntimeError("model swapped during generation")
                count = index + 1
                if count >= params.max_tokens and count < len(reply):
                    finished = True
                    yield self._token(char, "length", index)
                    return
                finished = count == len(reply)
                yield self._token(char, "stop" if finished else None, index)
                if index == 0:
                    self._plugin.first_token.set()
                if should_stop():
                    return
        finally:
            if not finished:  # stopped early: the consumer went away
                self._plugin.events.append(("cancelled", model))
            with self._plugin.active_lock:
                self._plugin.active -= 1


class FakeEnginePlugin:
    """Register with ``make_plugin_manager(extra=[FakeEnginePlugin()])``."""

    def __init__(
        self,
        reply: str = "Hello from the fake engine.",
        token_delay: float = 0.0,
        batch: bool = False,
        reasoning: ReasoningFormat | None = None,
        opens_thought: bool = False,
    ):
        self.reply = reply
        # The fake model's thinking markers (FAKE_THINK, FAKE_HARMONY; None: it does not think).
        self.reasoning = reasoning
        # Its template opens the thought in the generation prompt (as Qwen3's thinking ones do).
        self.opens_thought = opens_thought
        # The template variables of every render, in order.
        self.template_variables: list[dict[str, Any]] = []
        # Steps report speculative drafts (FakeEngine._token): 3 drafted per two
        # tokens, one of them accepted.
        self.drafting = False
        self.batch = batch  # batchable prompts: generations run as one batch (see FakeEngine.step)
        self.token_delay = token_delay
        self.load_delay = 0.0
        # What the engine says it chose at load (--max-batch auto); None: configured.
        self.batch_limit: int | None = None
        self.fail_load: str | None = None
        # Raise inside generation after this many tokens (an engine crash).
        self.fail_after: int | None = None
        self.events: list[tuple[str, str | None]] = []
        # Every prompt the engine prepared, in order (its text and images).
        self.prompts: list[RenderedPrompt] = []
        # The sampling parameters of every generation, in order.
        self.params: list[SamplingParams] = []
        self.active = 0
        self.max_active = 0
        self.active_lock = threading.Lock()
        # Synchronisation for tests that act while a generation runs (instead of sleeping):
        # ``started`` is set when a generation begins (before the gate), ``first_token``
        # once it has handed out its first token; the engine never clears them, tests
        # may. Generation waits while ``gate`` is clear (it starts open).
        self.started = threading.Event()
        self.first_token = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        # Batch mode: when set, each batch step takes one permit (lock-step tests).
        self.step_permits: threading.Semaphore | None = None
        # Loading: ``loading`` is set when a load starts, ``warming`` when its
        # warm-up starts; each waits while its gate is clear (they start open).
        self.loading = threading.Event()
        self.load_gate = threading.Event()
        self.load_gate.set()
        self.warming = threading.Event()
        self.warm_gate = threading.Event()
        self.warm_gate.set()
        # Memory the engine reports (runtime.memory): the device's, the loaded
        # model's weights, the prefix cache's; and the limit it was given.
        self.device_bytes = 0
        self.weights_bytes = 0
        self.prefix_bytes = 0
        self.memory_limit: int | None = None

    def cancelled(self, model: str | None) -> int:
        """How many generations of ``model`` stopped early (their consumer went away)."""
        return self.events.count(("cancelled", model))

    @hookimpl
    def mlxhost_make_engine(self, settings: Any) -> FakeEngine:
        return FakeEngine(self)

    @hookimpl
    def mlxhost_model_family(self, config: dict[str, Any]) -> str | None:
        return FAKE_FAMILY if config.get("model_type") == "fake" else None

    @hookimpl
    def mlxhost_reasoning_format(self, model: ModelInfo) -> ReasoningFormat | None:
        return self.reasoning if model.family == FAKE_FAMILY else None

    @hookimpl
    def mlxhost_render_prompt(
        self, model: LoadedModel, messages: Sequence[Message], tools: Any,
        template_variables: Any,
    ) -> RenderedPrompt | None:
        """``role: text`` lines; each image as ``[image]``, placed in message order."""
        if model.family != FAKE_FAMILY:
            return None
        lines, images = [], []
        for message in messages:
            pieces = []
            for part in message.content:
                if isinstance(part, ImagePart):
                    pieces.append("[image]")
                    if part.image is not None:
                        images.append(part.image)
                else:
                    pieces.append(part.text)
            lines.append(f"{message.role}: {''.join(pieces)}")
        self.template_variables.append(dict(template_variables or {}))
        opened = "<think>\n" if self.opens_thought and template_variables.get("enable_thinking") is not False else ""
        return RenderedPrompt(
            text="\n".join(lines) + "\nassistant: " + opened, images=tuple(images)
        )
