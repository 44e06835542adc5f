"""The domain request: what every wire format converts to, once, at the edge.

An API adapter (``mlxhost.api.openai_chat`` today; Anthropic Messages,
Responses, legacy completions and Ollama next) turns its request body into a
:class:`ChatRequest` and builds its response from the service's events. Nothing
below the adapter sees a wire shape: content is a tuple of typed parts, tools
are :class:`FunctionTool`, the tool choice is a small closed set. Family plugins
receive these objects as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs

# FunctionTool lives with the types that name it (a family's tool parser factory).
from mlxhost.core.types import FunctionTool, ImageInput, ToolCall

Role = Literal["system", "developer", "user", "assistant", "tool"]
SYSTEM_ROLES: tuple[Role, ...] = ("system", "developer")


@attrs.frozen
class TextPart:
    text: str


@attrs.frozen
class ImagePart:
    """An image as the client gave it (data URI or http(s) URL).

    ``image`` is filled in by the service once the image is fetched and decoded
    (before the model is touched), so the image travels with its message:
    summarization, templates and the engine all see it where it was sent.
    """

    url: str
    # Where the part sits in the client's request, for error messages.
    where: str = ""
    image: ImageInput | None = None


ContentPart = TextPart | ImagePart


@attrs.frozen
class Message:
    role: Role
    content: tuple[ContentPart, ...] = ()
    # Calls an earlier assistant turn made (arguments as JSON text).
    tool_calls: tuple[ToolCall, ...] = ()
    # A tool result answers this call.
    tool_call_id: str | None = None
    name: str | None = None
    # An earlier assistant turn's thinking, as the client sent it back (templates
    # that replay it, e.g. Qwen3's within a tool-calling turn, render it).
    reasoning: str | None = None

    @property
    def text(self) -> str:
        """The text parts, concatenated (images left out)."""
        return "".join(part.text for part in self.content if isinstance(part, TextPart))

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(part for part in self.content if isinstance(part, ImagePart))


def text_message(role: Role, text: str) -> Message:
    return Message(role=role, content=(TextPart(text),) if text else ())


def function_tools(tools: Sequence[Mapping[str, Any]]) -> tuple[FunctionTool, ...]:
    """FunctionTools from OpenAI-shaped tool objects (tests and templates' fixtures)."""
    out = []
    for tool in tools:
        function = tool["function"]
        out.append(
            FunctionTool(
                name=function["name"],
                description=function.get("description"),
                parameters=function.get("parameters"),
                strict=function.get("strict"),
            )
        )
    return tuple(out)


@attrs.frozen
class NamedToolChoice:
    """The model must call this function."""

    name: str


ToolChoice = Literal["auto", "none", "required"] | NamedToolChoice


@attrs.frozen
class JsonFormat:
    """The reply must be JSON matching ``schema`` (``{"type": "object"}``: any object)."""

    schema: Mapping[str, Any]
    # Where the schema sits in the client's request, for error messages.
    where: str = "response_format"


# Reasoning effort levels, lowest first ("none": do not think).
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


@attrs.frozen
class ReasoningControl:
    """What a request asks of a thinking model, whatever API it came through.

    On a model that does not think every field is accepted and changes nothing
    (agents send ``reasoning_effort`` with every request).
    """

    # None: the model's default.
    effort: Effort | None = None
    # False: do not think; True: think; None: the model's default (or the effort's).
    enabled: bool | None = None
    # Thinking tokens allowed before the server closes the thought (None: no limit).
    budget: int | None = None
    # Extra chat-template variables (``chat_template_kwargs``), passed as given.
    template_kwargs: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def thinks(self) -> bool | None:
        """Whether thinking is wanted (None: the model's default)."""
        if self.enabled is not None:
            return self.enabled
        if self.effort is not None:
            return self.effort != "none"
        return None


@attrs.frozen
class ChatRequest:
    """One chat request, whatever API it came through."""

    model: str
    messages: tuple[Message, ...]
    tools: tuple[FunctionTool, ...] = ()
    tool_choice: ToolChoice = "auto"
    # False: at most one tool call per reply.
    parallel_tool_calls: bool = True
    # Completion tokens allowed (None: until the context window is full).
    max_tokens: int | None = None
    # Sampling; None takes the model's generation_config default.
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    # False: no prompt-lookup speculative decoding for this request (mlxhost's own field).
    speculative: bool = True
    # token id -> bias added to its logit
    logit_bias: Mapping[int, float] = attrs.field(factory=dict)
    # Report log probabilities with this many top alternatives per token (None: off).
    logprobs: int | None = None
    # Structured output (None: free text).
    json_format: JsonFormat | None = None
    stop: tuple[str, ...] = ()
    # False: fail with context_length_exceeded rather than summarize older turns.
    summarize: bool = True
    # True: a max_tokens beyond the room the prompt leaves is lowered to that room
    # instead of failing (Ollama's convention; --clamp-max-tokens for every API).
    clamp_max_tokens: bool = False
    # Legacy completions: the prompt text as is (no chat template; ``messages``
    # empty), and the text after the gap for fill-in-the-middle.
    raw_prompt: str | None = None
    suffix: str | None = None
    # Seconds the model stays loaded once idle after this request (inf: forever,
    # 0: unload at once); None: the model's or the server's default. Ollama's
    # ``keep_alive`` and the OpenAI endpoints' ``ttl`` (LM Studio) convert to it.
    keep_alive: float | None = None
    # Thinking controls (reasoning_effort, think, thinking, chat_template_kwargs).
    reasoning: ReasoningControl = attrs.field(factory=ReasoningControl)

    @property
    def offered_tools(self) -> tuple[FunctionTool, ...]:
        """The tools the model is shown: none when ``tool_choice`` is ``"none"``."""
        return () if self.tool_choice == "none" else self.tools

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(part for message in self.messages for part in message.images)
