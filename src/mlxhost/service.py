"""The chat service: everything between a parsed request and generated events.

No HTTP here: it renders the prompt, checks the context budget, holds the
generation lock, drives the engine and reports usage.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import attrs
import pluggy

from mlxhost.api.schemas import ChatCompletionRequest, message_dicts, tool_dicts
from mlxhost.conversation.summarize import (
    Summarizer,
    count_images,
    split_conversation,
    with_summary,
)
from mlxhost.errors import ContextLengthExceeded, EngineError, InvalidRequest, MlxhostError
from mlxhost.registry import ModelRegistry
from mlxhost.runtime.engine import Engine, PreparedPrompt
from mlxhost.runtime.images import ImagePolicy, load_image
from mlxhost.runtime.slot import LoadedModel, ModelSlot
from mlxhost.runtime.stop import StopStringMatcher
from mlxhost.runtime.worker import MLXWorker
from mlxhost.settings import Settings
from mlxhost.templating import TemplateError
from mlxhost.types import (
    VISION,
    ImageInput,
    ModelSpec,
    ParserEvent,
    SamplingParams,
    ToolCallEvent,
)

log = logging.getLogger(__name__)


@attrs.define
class Generation:
    """One admitted request: holds the generation lock until its events are consumed."""

    id: str
    model_id: str
    created: int
    prompt_tokens: int
    _events: AsyncIterator[ParserEvent]
    _stack: AsyncExitStack
    completion_tokens: int = 0
    finish_reason: str | None = None
    headers: dict[str, str] = attrs.Factory(dict)

    async def events(self) -> AsyncIterator[ParserEvent]:
        try:
            async for event in self._events:
                yield event
        finally:
            await self._stack.aclose()

    async def close(self) -> None:
        """Release the generation lock (idempotent); also when events() never ran."""
        await self._stack.aclose()

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


class ChatService:
    def __init__(
        self,
        *,
        registry: ModelRegistry,
        slot: ModelSlot,
        worker: MLXWorker,
        engine: Engine,
        pm: pluggy.PluginManager,
        settings: Settings,
    ) -> None:
        self.registry = registry
        self.slot = slot
        self.worker = worker
        self.engine = engine
        self.pm = pm
        self.settings = settings

    async def start(self, request: ChatCompletionRequest) -> Generation:
        """Admit a request: everything that can fail before the first byte happens here."""
        spec = self.registry.resolve(request.model)
        messages = message_dicts(request)
        # Images are fetched and decoded before the lock: a bad one never holds it.
        images = await self._load_images(spec, messages)
        tools = tool_dicts(request)
        tool_choice = request.tool_choice if tools else None
        headers: dict[str, str] = {}
        stack = AsyncExitStack()
        try:
            loaded = await stack.enter_async_context(self.slot.use(spec))
            prepared = await self._prepare(loaded, messages, tools, tool_choice, images)
            try:
                params = self._sampling(request, loaded, prepared.num_tokens)
            except ContextLengthExceeded as too_long:
                if not (self.settings.summarize and request.truncation != "disabled"):
                    raise
                compressed = await self._summarize(loaded, messages, too_long)
                kept_images = images[len(images) - count_images(compressed) :] if images else ()
                prepared = await self._prepare(loaded, compressed, tools, tool_choice, kept_images)
                try:
                    params = self._sampling(request, loaded, prepared.num_tokens)
                except ContextLengthExceeded:
                    raise too_long from None
                headers["x-mlxhost-context"] = "summarized"
        except BaseException:
            await stack.aclose()
            raise
        generation = Generation(
            id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            model_id=spec.id,
            created=int(time.time()),
            prompt_tokens=prepared.num_tokens,
            events=None,  # type: ignore[arg-type]
            stack=stack,
            headers=headers,
        )
        generation._events = self._run(generation, loaded, prepared, params, request, tools)
        return generation

    async def _guarded(self, steps: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Engine failures become a 500 for this request and a reload for the next."""
        try:
            async for step in steps:
                yield step
        except (MlxhostError, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.exception("Generation failed; the model will be reloaded")
            self.slot.mark_suspect(f"generation failed: {type(exc).__name__}: {exc}")
            raise EngineError(f"Generation failed: {type(exc).__name__}: {exc}") from exc

    async def _prepare(
        self,
        loaded: LoadedModel,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        images: tuple[ImageInput, ...] = (),
    ) -> PreparedPrompt:
        try:
            rendered = self.pm.hook.mlxhost_render_prompt(
                model=loaded.info, messages=messages, tools=tools, tool_choice=tool_choice
            )
        except TemplateError as exc:
            raise InvalidRequest(f"The chat template rejected the messages: {exc}") from exc
        if images:
            rendered = attrs.evolve(rendered, images=tuple(images))
        return await self.worker.run(self.engine.prepare, rendered)

    async def _load_images(
        self, spec: ModelSpec, messages: list[dict[str, Any]]
    ) -> tuple[ImageInput, ...]:
        parts = [
            (f"messages[{i}].content[{j}]", part["image_url"]["url"])
            for i, message in enumerate(messages)
            if isinstance(message.get("content"), list)
            for j, part in enumerate(message["content"])
            if part.get("type") == "image_url"
        ]
        if not parts:
            return ()
        if VISION not in spec.capabilities:
            raise InvalidRequest(
                f"Model '{spec.id}' does not accept images (it has no vision tower); "
                "send text only or pick a vision model (see /v1/models capabilities).",
                param=parts[0][0],
            )
        policy = ImagePolicy(
            max_bytes=self.settings.image_max_bytes,
            allow_networks=tuple(self.settings.image_allow_networks),
        )
        decoded = await asyncio.gather(*(load_image(url, policy, where) for where, url in parts))
        return tuple(ImageInput(image=d.image, digest=d.digest) for d in decoded)

    async def _summarize(
        self, loaded: LoadedModel, messages: list[dict[str, Any]], too_long: ContextLengthExceeded
    ) -> list[dict[str, Any]]:
        """Messages with the older turns replaced by a summary (the lock is held)."""
        split = split_conversation(messages)
        if not split.older:
            raise too_long
        started = time.perf_counter()

        async def count(prompt: list[dict[str, Any]]) -> int:
            return (await self._prepare(loaded, prompt)).num_tokens

        async def generate(prompt: list[dict[str, Any]], max_tokens: int) -> str:
            prepared = await self._prepare(loaded, prompt)
            params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
            steps = self.worker.stream(
                lambda should_stop: self.engine.generate(prepared, params, should_stop)
            )
            return "".join([step.text async for step in steps])

        async def truncate(text: str, max_tokens: int) -> str:
            tokenizer = loaded.info.tokenizer
            if tokenizer is None:  # engines without a tokenizer: a rough cut by characters
                return text[: max_tokens * 3]
            ids = tokenizer.encode(text, add_special_tokens=False)[:max_tokens]
            return tokenizer.decode(ids)

        summarizer = Summarizer(
            count_tokens=count,
            generate=generate,
            truncate=truncate,
            context_window=loaded.context_window,
        )
        summary = await summarizer.summarize(split.older)
        compressed = with_summary(split.system, summary, split.kept)
        after = await count(compressed)
        log.info(
            "Context: summarized %d older messages of %s: %d -> %d prompt tokens in %.1fs",
            len(split.older),
            loaded.spec.id,
            too_long.prompt_tokens,
            after,
            time.perf_counter() - started,
        )
        return compressed

    def _sampling(
        self, request: ChatCompletionRequest, loaded: LoadedModel, prompt_tokens: int
    ) -> SamplingParams:
        window = loaded.context_window
        requested = request.completion_limit
        # Without max_tokens, room for a reply of a reasonable size must remain.
        reserve = requested if requested is not None else min(
            self.settings.default_max_tokens, max(window // 4, 1)
        )
        if prompt_tokens + reserve > window:
            raise ContextLengthExceeded(
                window, prompt_tokens + (requested or 0), prompt_tokens=prompt_tokens
            )
        defaults = getattr(self.engine, "defaults", {})
        temperature = request.temperature
        if temperature is None:
            temperature = defaults.get("temperature", 1.0)
        top_p = request.top_p if request.top_p is not None else defaults.get("top_p", 1.0)
        return SamplingParams(
            # Without max_tokens, generate until the context window is full.
            max_tokens=requested if requested is not None else window - prompt_tokens,
            temperature=float(temperature),
            top_p=float(top_p),
            # MLX seeds are unsigned 64-bit; any JSON integer maps onto one.
            seed=None if request.seed is None else request.seed % 2**64,
        )

    async def _run(
        self,
        generation: Generation,
        loaded: LoadedModel,
        prepared: PreparedPrompt,
        params: SamplingParams,
        request: ChatCompletionRequest,
        tools: list[dict[str, Any]] | None,
    ) -> AsyncIterator[ParserEvent]:
        parser = loaded.tool_parser(tools or [])
        stops = StopStringMatcher(request.stop_strings)
        saw_tool_call = False
        finish = "stop"
        steps = self.worker.stream(
            lambda should_stop: self.engine.generate(prepared, params, should_stop)
        )
        started = time.perf_counter()
        try:
            async for step in self._guarded(steps):
                generation.completion_tokens += 1
                for event in parser.feed(stops.feed(step.text)):
                    saw_tool_call |= isinstance(event, ToolCallEvent)
                    yield event
                # A stop string, or a parser that saw a complete call and knows the
                # model would now invent the tool's output.
                if stops.stopped or getattr(parser, "stop_requested", False):
                    finish = "stop"
                    break
                if step.finish:
                    finish = step.finish
        finally:
            await steps.aclose()
        for event in [*parser.feed(stops.flush()), *parser.finish()]:
            saw_tool_call |= isinstance(event, ToolCallEvent)
            yield event
        generation.finish_reason = "tool_calls" if saw_tool_call and finish != "length" else finish
        elapsed = time.perf_counter() - started
        log.info(
            "%s: %d prompt + %d completion tokens in %.2fs (%.1f tok/s), finish=%s",
            generation.model_id,
            generation.prompt_tokens,
            generation.completion_tokens,
            elapsed,
            generation.completion_tokens / elapsed if elapsed else 0.0,
            generation.finish_reason,
        )

