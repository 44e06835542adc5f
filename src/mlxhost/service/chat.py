"""The chat service: everything between a domain request and generated events.

No HTTP and no wire shapes here: it fetches images, renders the prompt, checks
the context budget (summarizing when allowed), holds a runtime session and
turns the token stream into content and tool-call events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from typing import Any

import attrs
import pluggy

from mlxhost.core import model_config
from mlxhost.core.domain import (
    SYSTEM_ROLES,
    ChatRequest,
    ImagePart,
    Message,
    NamedToolChoice,
    TextPart,
    text_message,
)
from mlxhost.core.errors import ContextLengthExceeded, InvalidRequest
from mlxhost.core.types import (
    TOOL_PATH_NONE,
    VISION,
    ContentDelta,
    GenerationEvent,
    ImageInput,
    LoadedModel,
    ModelInfo,
    ReasoningDelta,
    RenderedPrompt,
    SamplingParams,
    StreamParser,
    TokenLogprob,
    ToolCall,
    ToolCallEvent,
)
from mlxhost.engine.constrain import json_grammar, lark_grammar
from mlxhost.families.reasoning import ReplySplitter, splitter_for
from mlxhost.families.templating import TemplateError
from mlxhost.families.toolcalls import enforced_call_tools, forced_tools
from mlxhost.models.registry import ModelRegistry
from mlxhost.runtime.engine import PreparedPrompt
from mlxhost.runtime.runtime import ModelSession, Runtime
from mlxhost.service.images import ImagePolicy, load_image
from mlxhost.service.metrics import GenerationObserver, Metrics, note_model
from mlxhost.service.reasoning_controls import (
    prompt_opens_thought,
    template_variables,
    thinking_budget,
    thinking_plan,
)
from mlxhost.service.stop import StopStringMatcher
from mlxhost.service.summarize import Summarizer, split_conversation, with_summary
from mlxhost.settings.table import Settings

log = logging.getLogger(__name__)


@attrs.frozen
class Reply:
    """A whole answer, for the JSON bodies that give text, thinking and tool calls apart."""

    text: str
    thinking: str
    calls: list[ToolCall]


class Generation:
    """One admitted request: holds its runtime session until its events are consumed
    (or ``close()`` is called)."""

    def __init__(
        self,
        *,
        model: LoadedModel,
        prepared: PreparedPrompt,
        params: SamplingParams,
        parser: StreamParser,
        stops: StopStringMatcher,
        session: ModelSession,
        stack: AsyncExitStack,
        headers: dict[str, str],
        one_tool_call: bool = False,
        observer: GenerationObserver | None = None,
        splitter: ReplySplitter | None = None,
    ) -> None:
        self.model = model
        self._observer = observer
        # parallel_tool_calls: false: the reply ends after its first tool call.
        self._one_tool_call = one_tool_call
        self.prompt_tokens = prepared.num_tokens
        self.headers = headers
        self.completion_tokens = 0
        # Completion tokens spent thinking (markers included).
        self.reasoning_tokens = 0
        # Thinking apart from the answer (None: the model does not think).
        self._splitter = splitter
        # Prompt tokens the engine served from its prefix cache (0 when it cannot say).
        self.cached_tokens = 0
        # Speculative decoding: tokens drafted, and drafted tokens the model accepted
        # that reached the reply.
        self.drafted_tokens = 0
        self.accepted_tokens = 0
        self.finish_reason: str | None = None
        # The stop string that ended generation, if one did.
        self.stop_sequence: str | None = None
        # Per generated token, when the request asked for them (take_logprobs()).
        self._logprobs: list[TokenLogprob] = []
        self._prepared = prepared
        self._params = params
        self._parser = parser
        self._stops = stops
        self._session = session
        self._stack = stack

    @property
    def model_id(self) -> str:
        return self.model.id

    @property
    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "completion_tokens_details": completion_tokens_details([self]),
        }

    @property
    def wants_logprobs(self) -> bool:
        return self._params.logprobs is not None

    def take_logprobs(self) -> list[TokenLogprob]:
        """The log probabilities of the tokens generated since the last call."""
        taken, self._logprobs = self._logprobs, []
        return taken

    async def close(self) -> None:
        """Release the session (idempotent); also when events() never ran."""
        await self._stack.aclose()

    async def events(self) -> AsyncIterator[GenerationEvent]:
        try:
            async for event in self._run():
                yield event
        finally:
            await self.close()

    async def reply(self) -> Reply:
        """Run to the end and join the deltas."""
        text: list[str] = []
        thinking: list[str] = []
        calls: list[ToolCall] = []
        async for event in self.events():
            if isinstance(event, ContentDelta):
                text.append(event.text)
            elif isinstance(event, ReasoningDelta):
                thinking.append(event.text)
            elif isinstance(event, ToolCallEvent):
                calls.append(event.call)
        return Reply("".join(text), "".join(thinking), calls)

    def _answer(self, pieces: list[GenerationEvent]) -> list[GenerationEvent]:
        """Thinking passes as it is; the answer's text goes through stop strings
        (which never fire inside a thought) and the tool-call parser."""
        out: list[GenerationEvent] = []
        for piece in pieces:
            if isinstance(piece, ContentDelta):
                out.extend(self._parser.feed(self._stops.feed(piece.text)))
            else:
                out.append(piece)
        return out

    def _split(self, text: str) -> list[GenerationEvent]:
        splitter = self._splitter
        if splitter is None:
            return self._answer([ContentDelta(text)])
        was_thinking = splitter.thinking
        pieces = splitter.feed(text)
        if was_thinking or splitter.thinking or any(isinstance(p, ReasoningDelta) for p in pieces):
            self.reasoning_tokens += 1
        return self._answer(pieces)

    async def _run(self) -> AsyncIterator[GenerationEvent]:
        parser, stops = self._parser, self._stops
        saw_tool_call = False
        finish = "stop"
        steps = self._session.generate(self._prepared, self._params)
        started = time.perf_counter()
        first_token: float | None = None
        observer = self._observer
        try:
            async for step in steps:
                if observer is not None:
                    observer.token(time.perf_counter(), started)
                if first_token is None:
                    first_token = time.perf_counter() - started
                self.completion_tokens += 1
                if step.cached_tokens is not None:
                    self.cached_tokens = step.cached_tokens
                self.drafted_tokens += step.drafted
                self.accepted_tokens += step.speculated
                if step.logprob is not None:
                    self._logprobs.append(step.logprob)
                for event in self._split(step.text):
                    if isinstance(event, ToolCallEvent) and saw_tool_call and self._one_tool_call:
                        continue
                    saw_tool_call |= isinstance(event, ToolCallEvent)
                    yield event
                # A stop string, or a parser that saw a complete call and knows the
                # model would now invent the tool's output (or a second call).
                if stops.stopped or parser.stop_requested or (saw_tool_call and self._one_tool_call):
                    finish = "stop"
                    break
                if step.finish:
                    finish = step.finish
        finally:
            await steps.aclose()  # type: ignore[attr-defined]
            if observer is not None:
                observer.done(self.prompt_tokens, self.completion_tokens)
        held = self._answer(self._splitter.finish()) if self._splitter is not None else []
        for event in [*held, *parser.feed(stops.flush()), *parser.finish()]:
            if isinstance(event, ToolCallEvent) and saw_tool_call and self._one_tool_call:
                continue
            saw_tool_call |= isinstance(event, ToolCallEvent)
            yield event
        self.stop_sequence = stops.matched
        self.finish_reason = "tool_calls" if saw_tool_call and finish != "length" else finish
        elapsed = time.perf_counter() - started
        decode = elapsed - (first_token or 0.0)
        drafts = (f", prompt lookup {self.accepted_tokens} of {self.drafted_tokens} drafted accepted"
                  if self.drafted_tokens else "")
        log.info(
            "%s: %d prompt + %d completion tokens (%d thinking) in %.2fs (TTFT %.2fs, "
            "%.1f tok/s after it), finish=%s%s",
            self.model_id,
            self.prompt_tokens,
            self.completion_tokens,
            self.reasoning_tokens,
            elapsed,
            first_token or 0.0,
            (self.completion_tokens - 1) / decode if decode > 0 and self.completion_tokens > 1 else 0.0,
            self.finish_reason,
            drafts,
        )


def completion_tokens_details(generations: Sequence[Generation]) -> dict[str, int]:
    """OpenAI's ``usage.completion_tokens_details`` for one reply (``n`` choices
    add up): tokens spent thinking, and speculative decoding's drafted tokens
    in OpenAI's fields for predicted outputs (accepted: drafted tokens that
    reached the reply; rejected: the other drafted ones)."""
    accepted = sum(g.accepted_tokens for g in generations)
    return {
        "reasoning_tokens": sum(g.reasoning_tokens for g in generations),
        "accepted_prediction_tokens": accepted,
        "rejected_prediction_tokens": sum(g.drafted_tokens for g in generations) - accepted,
    }


class ChatService:
    def __init__(
        self,
        *,
        registry: ModelRegistry,
        runtime: Runtime,
        pm: pluggy.PluginManager,
        settings: Settings,
        metrics: Metrics | None = None,
    ) -> None:
        self.registry = registry
        self.runtime = runtime
        self.pm = pm
        self.settings = settings
        self.metrics = metrics

    async def start(self, request: ChatRequest) -> Generation:
        """Admit a request: everything that can fail before the first byte happens here."""
        request = self._normalize(request)
        _check_tool_choice(request)
        info = self.registry.resolve(request.model)
        request = _with_system_prompt(request, info)
        note_model(info.id)
        if request.images and VISION not in info.capabilities:
            raise InvalidRequest(
                f"Model '{info.id}' does not accept images (it has no vision tower); "
                "send text only or pick a vision model (see /v1/models capabilities).",
                param=request.images[0].where or "messages",
            )
        # Before the model slot: a model that cannot be had leaves the loaded one alone.
        info = await self.registry.ensure_local(info)
        # Images are fetched and decoded before the slot too: a bad one never holds it.
        messages = await self._decode_images(request.messages)
        headers: dict[str, str] = {}
        stack = AsyncExitStack()
        try:
            session = await stack.enter_async_context(
                self.runtime.session(info, keep_alive=request.keep_alive)
            )
            model = session.model
            prepared = await self._prepare(session, request, messages)
            try:
                params = self._sampling(request, session, prepared.num_tokens)
            except ContextLengthExceeded as too_long:
                # Only a prompt that does not fit is summarized: when it fits but
                # prompt + max_tokens does not, the client chooses (clients such as
                # Claude Code retry at once with a smaller max_tokens).
                summarizable = self.settings.summarize and request.summarize and too_long.prompt_alone
                if not summarizable or request.raw_prompt is not None:
                    raise
                compressed = await self._summarize(session, messages, too_long)
                prepared = await self._prepare(session, request, compressed)
                try:
                    params = self._sampling(request, session, prepared.num_tokens)
                except ContextLengthExceeded:
                    raise too_long from None
                headers["x-mlxhost-context"] = "summarized"
            params, splitter = self._thinking(request, model, prepared, params)
            # The KV memory it needs, held until the generation ends (may wait: 503).
            await stack.enter_async_context(session.reserve(prepared, params))
        except BaseException:
            await stack.aclose()
            raise
        return Generation(
            model=model,
            prepared=prepared,
            params=params,
            parser=model.tool_parser(request.offered_tools),
            stops=StopStringMatcher(request.stop),
            session=session,
            stack=stack,
            headers=headers,
            one_tool_call=not request.parallel_tool_calls,
            observer=GenerationObserver(self.metrics, model.id) if self.metrics else None,
            splitter=splitter,
        )

    def _thinking(
        self, request: ChatRequest, model: LoadedModel, prepared: PreparedPrompt, params: SamplingParams
    ) -> tuple[SamplingParams, ReplySplitter | None]:
        """The splitter for the model's thinking, and the plan the engine follows
        when a budget or a grammar needs it (a legacy completion stays raw text)."""
        fmt = model.reasoning
        if fmt is None or request.raw_prompt is not None:
            return params, None
        inside = prompt_opens_thought(fmt, prepared.tokens)
        budget = thinking_budget(
            request.reasoning, request.max_tokens, answer_needs_room=params.grammar is not None
        )
        if budget is not None or params.grammar is not None:
            params = attrs.evolve(params, thinking=thinking_plan(fmt, inside=inside, budget=budget))
        offered = frozenset(tool.name for tool in request.offered_tools)
        return params, splitter_for(fmt, inside=inside, offered=offered)

    async def count_tokens(self, request: ChatRequest) -> int:
        """Prompt tokens the request would take (rendered and tokenized by the
        loaded model, which is loaded if needed); no generation."""
        request = self._normalize(request)
        info = self.registry.resolve(request.model)
        request = _with_system_prompt(request, info)
        note_model(info.id)
        info = await self.registry.ensure_local(info)
        messages = await self._decode_images(request.messages)
        async with self.runtime.session(info, keep_alive=request.keep_alive) as session:
            return (await self._prepare(session, request, messages)).num_tokens

    # -- steps ----------------------------------------------------------------
    def _normalize(self, request: ChatRequest) -> ChatRequest:
        """Every plugin's ``mlxhost_normalize_request``, in turn (e.g. dropping a
        per-request nonce that would defeat the prefix cache)."""
        for impl in reversed(self.pm.hook.mlxhost_normalize_request.get_hookimpls()):
            changed = impl.function(request=request)
            if isinstance(changed, ChatRequest):
                request = changed
        return request

    async def _decode_images(self, messages: Sequence[Message]) -> tuple[Message, ...]:
        """The messages with every image fetched and decoded, each in its place."""
        todo = [part for message in messages for part in message.images if part.image is None]
        if not todo:
            return tuple(messages)
        policy = ImagePolicy(
            max_bytes=self.settings.image_max_bytes,
            allow_networks=tuple(self.settings.image_allow_networks),
        )
        decoded = await asyncio.gather(
            *(load_image(part.url, policy, part.where or "image") for part in todo)
        )
        by_part = {
            id(part): ImageInput(image=d.image, digest=d.digest) for part, d in zip(todo, decoded)
        }

        def fill(message: Message) -> Message:
            if not message.images:
                return message
            content = tuple(
                attrs.evolve(part, image=by_part[id(part)])
                if isinstance(part, ImagePart) and id(part) in by_part
                else part
                for part in message.content
            )
            return attrs.evolve(message, content=content)

        return tuple(fill(message) for message in messages)

    def _render(
        self, model: LoadedModel, request: ChatRequest, messages: Sequence[Message]
    ) -> RenderedPrompt:
        if request.raw_prompt is not None:
            return self._raw(model, request.raw_prompt, request.suffix)
        try:
            rendered = self.pm.hook.mlxhost_render_prompt(
                model=model,
                messages=tuple(messages),
                tools=request.offered_tools,
                tool_choice=request.tool_choice,
                template_variables=template_variables(request.reasoning),
            )
        except TemplateError as exc:
            raise InvalidRequest(f"The chat template rejected the messages: {exc}") from exc
        sent = sum(len(m.images) for m in messages)
        if len(rendered.images) != sent:
            raise InvalidRequest(
                f"Model '{model.id}': its prompt template placed {len(rendered.images)} of "
                f"the {sent} images sent.",
                param="messages",
            )
        return rendered

    def _raw(self, model: LoadedModel, prompt: str, suffix: str | None) -> RenderedPrompt:
        """A legacy completion prompt: the text as is, or the family's fill-in-the-middle form."""
        if suffix is None:
            return RenderedPrompt(text=prompt)
        text = self.pm.hook.mlxhost_fim_prompt(model=model, prefix=prompt, suffix=suffix)
        if text is None:
            raise InvalidRequest(
                f"Model '{model.id}' has no fill-in-the-middle format; send no 'suffix'.",
                param="suffix",
            )
        return RenderedPrompt(text=text)

    async def _prepare(
        self, session: ModelSession, request: ChatRequest, messages: Sequence[Message]
    ) -> PreparedPrompt:
        return await session.prepare(self._render(session.model, request, messages))

    async def _summarize(
        self, session: ModelSession, messages: Sequence[Message], too_long: ContextLengthExceeded
    ) -> tuple[Message, ...]:
        """Messages with the older turns replaced by a summary (the session is held)."""
        model = session.model
        split = split_conversation(messages)
        if not split.older:
            raise too_long
        started = time.perf_counter()
        plain = ChatRequest(model=model.id, messages=())

        async def count(prompt: Sequence[Message]) -> int:
            return await session.count_tokens(self._render(model, plain, prompt))

        async def generate(prompt: Sequence[Message], max_tokens: int) -> str:
            prepared = await session.prepare(self._render(model, plain, prompt))
            params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
            # A thinking model's thought is no part of the summary.
            splitter = splitter_for(
                model.reasoning, inside=prompt_opens_thought(model.reasoning, prepared.tokens)
            )
            async with session.reserve(prepared, params):
                text = "".join([step.text async for step in session.generate(prepared, params)])
            if splitter is None:
                return text
            events = [*splitter.feed(text), *splitter.finish()]
            return "".join(e.text for e in events if isinstance(e, ContentDelta))

        async def truncate(text: str, max_tokens: int) -> str:
            tokenizer = model.tokenizer
            if tokenizer is None:  # engines without a tokenizer: a rough cut by characters
                return text[: max_tokens * 3]
            ids = tokenizer.encode(text, add_special_tokens=False)[:max_tokens]
            return tokenizer.decode(ids)

        summarizer = Summarizer(
            count_tokens=count,
            generate=generate,
            truncate=truncate,
            context_window=model.context_window,
        )
        summary = await summarizer.summarize(split.older)
        compressed = with_summary(split.system, summary, split.kept)
        after = await count(compressed)
        log.info(
            "Context: summarized %d older messages of %s: %d -> %d prompt tokens in %.1fs",
            len(split.older),
            model.id,
            too_long.prompt_tokens,
            after,
            time.perf_counter() - started,
        )
        return compressed

    def _sampling(
        self, request: ChatRequest, session: ModelSession, prompt_tokens: int
    ) -> SamplingParams:
        info = session.model.info
        window = info.context_window
        requested = request.max_tokens
        if prompt_tokens == 0:
            # An empty raw prompt: the model has nothing to continue from.
            raise InvalidRequest("The prompt is empty: send at least one character.", param="prompt")
        clamp = request.clamp_max_tokens or self.settings.clamp_max_tokens
        if clamp and prompt_tokens < window:
            # Generation capped at the room left (Ollama's convention; --clamp-max-tokens).
            if requested is not None:
                requested = min(requested, window - prompt_tokens)
        else:
            # Without max_tokens, room for a reply of a reasonable size must remain.
            reserve = (
                requested
                if requested is not None
                else min(self.settings.default_max_tokens, max(window // 4, 1))
            )
            if prompt_tokens + reserve > window:
                raise ContextLengthExceeded(
                    window, prompt_tokens, max_tokens=requested,
                    reserved=0 if requested is not None else reserve,
                )
        # Within the window, but the KV cache must also fit in memory (a 400 of its
        # own, memory_exceeded). Without max_tokens the reply may run to the
        # effective window: min(context window, what fits in memory).
        session.check_memory(prompt_tokens, requested or 1, explicit=requested is not None)
        fitting = session.memory_tokens
        effective = window if fitting is None else min(window, fitting)
        vocabulary = model_config.vocab_size(info.config)
        unknown = [t for t in request.logit_bias if vocabulary is not None and t >= vocabulary]
        if unknown:
            raise InvalidRequest(
                f"'logit_bias' names token {unknown[0]}, beyond this model's vocabulary "
                f"of {vocabulary} tokens.",
                param="logit_bias",
            )
        # A field the request leaves out takes the model's default: the config file's
        # [models.X] value, else generation_config.json's (registry.info), else off.
        defaults = info.generation_defaults

        def pick(field: str, off: float) -> float:
            value = getattr(request, field)
            return float(value if value is not None else defaults.get(field, off))

        repetition = request.repetition_penalty
        if repetition is None and "repetition_penalty" in defaults:
            repetition = defaults["repetition_penalty"]
        return SamplingParams(
            # Without max_tokens, generate until the effective window is full.
            max_tokens=requested if requested is not None else effective - prompt_tokens,
            temperature=pick("temperature", 1.0),
            top_p=pick("top_p", 1.0),
            # MLX seeds are unsigned 64-bit; any JSON integer maps onto one.
            seed=None if request.seed is None else request.seed % 2**64,
            top_k=int(pick("top_k", 0)),
            min_p=pick("min_p", 0.0),
            presence_penalty=pick("presence_penalty", 0.0),
            frequency_penalty=pick("frequency_penalty", 0.0),
            repetition_penalty=repetition,
            speculative=request.speculative,
            logit_bias=dict(request.logit_bias),
            logprobs=request.logprobs,
            grammar=self._grammar(request, info),
        )

    def _grammar(self, request: ChatRequest, info: ModelInfo) -> str | None:
        """The grammar the reply must match: the JSON format, a forced tool call,
        or (tool_choice "auto" with a strict tool) calls matching their schemas."""
        if request.json_format is not None:
            return json_grammar(request.json_format.schema, request.json_format.where)
        tools = enforced_call_tools(request.offered_tools, request.tool_choice)
        if not tools:
            return None
        text = self.pm.hook.mlxhost_tool_call_grammar(
            model=info, tools=tools, tool_choice=request.tool_choice
        )
        if text is None:
            if forced_tools(request.offered_tools, request.tool_choice) and (
                info.chat.tool_path != TOOL_PATH_NONE
            ):
                fmt = info.chat.tool_format or "not one mlxhost parses"
                raise InvalidRequest(
                    f"Model '{info.id}' cannot be forced to call a tool: its tool-call format "
                    f"({fmt}) cannot be enforced for these tools; use tool_choice 'auto'.",
                    param="tool_choice",
                )
            return None  # the family cannot constrain calls: the prompt's instruction only
        try:
            return lark_grammar(text)
        except ValueError as exc:
            raise InvalidRequest(
                f"'tools' cannot be enforced for these tools' parameter schemas: {exc}",
                param="tools",
            ) from None


__all__ = ["ChatService", "Generation", "TextPart", "text_message"]


def _check_tool_choice(request: ChatRequest) -> None:
    """A tool_choice naming a function must name an offered one (OpenAI: 400)."""
    choice = request.tool_choice
    if isinstance(choice, NamedToolChoice) and choice.name not in {t.name for t in request.tools}:
        offered = ", ".join(repr(t.name) for t in request.tools) or "none"
        raise InvalidRequest(
            f"tool_choice names the function '{choice.name}', which is not among the "
            f"offered tools ({offered}).",
            param="tool_choice",
        )


def _with_system_prompt(request: ChatRequest, info: ModelInfo) -> ChatRequest:
    """The request with the model's configured system prompt first, when its
    conversation has no system (or developer) message; raw prompts stay as sent."""
    prompt = info.defaults.system_prompt
    if not prompt or request.raw_prompt is not None:
        return request
    if any(message.role in SYSTEM_ROLES for message in request.messages):
        return request
    return attrs.evolve(request, messages=(text_message("system", prompt), *request.messages))
