"""Plain data passed between the core, its hooks and the engine."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs

VISION = "vision"
TOOLS = "tools"
# Reasoning / thinking output (inferred from the template; the reasoning issue splits it out).
REASONING = "reasoning"
# Fill-in-the-middle tokens (legacy completions with ``suffix``).
FIM = "fim"
# The family of models no family plugin claims (mlxhost.families.builtin.generic_family).
GENERIC_FAMILY = "generic"
# Encoder models served beside the chat model (mlxhost.runtime.embedding).
EMBEDDING = "embedding"
RERANK = "rerank"


@attrs.frozen
class ModelDefaults:
    """Per-model defaults an operator set in the config file (``[models.<alias>]``,
    docs/config.md); None or empty: not set there."""

    context_window: int | None = None
    # Sampling defaults for requests that omit the field: temperature, top_p, top_k,
    # min_p, repetition_penalty, presence_penalty, frequency_penalty.
    sampling: Mapping[str, float] = attrs.field(factory=dict)
    # Sent as the system message of a conversation that has none.
    system_prompt: str | None = None
    # Idle seconds before the model is unloaded (inf: never); None: the server's
    # --keep-alive. A request's keep_alive / ttl beats it.
    keep_alive: float | None = None
    # The load-time weights policy (auto, as-is, bf16) instead of ``--weights``.
    weights: str | None = None
    # The KV cache's quantization instead of ``--kv-bits`` / ``--kv-group-size`` (0: off).
    kv_bits: int | None = None
    kv_group_size: int | None = None


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
    # What the config file says about this model (its [models.<alias>] table).
    defaults: ModelDefaults = attrs.field(factory=ModelDefaults)


DEFAULT_CONTEXT_WINDOW = 4096  # when neither config, plugin nor settings say


# How tools reach the model and come back (reported by ``mlxhost show``/``/api/show``):
TOOL_PATH_TEMPLATE = "template"  # the template renders the tool list; calls in its format
TOOL_PATH_DEFAULT = "default"  # no tool syntax: mlxhost's default format (docs/plugins.md)
TOOL_PATH_UNPARSED = "template-unparsed"  # the template renders tools in a format not parsed here
TOOL_PATH_NONE = "none"  # no chat template at all


@attrs.frozen
class ChatFacts:
    """A model's chat facts. Empty (no template) for engines without files."""

    # Template name -> Jinja text; the one used without tools is "default".
    templates: Mapping[str, str] = attrs.field(factory=dict)
    # The file the default template came from.
    template_file: str | None = None
    # Added tokens of the vocabulary (special tokens and the like).
    special_tokens: frozenset[str] = frozenset()
    # A key of mlxhost.families.tool_formats.FORMATS (None: calls are not parsed).
    tool_format: str | None = None
    tool_path: str = TOOL_PATH_NONE
    fim_tokens: tuple[str, str, str] | None = None
    vision: bool = False
    reasoning: bool = False
    # Why the template files could not be read (reported when rendering).
    error: str | None = None

    @property
    def template(self) -> str | None:
        return self.templates.get("default")

    def template_for(self, with_tools: bool) -> str | None:
        """The template a request renders with: ``tool_use`` when tools are
        offered and the model names one (transformers' rule), else the default."""
        if with_tools and "tool_use" in self.templates:
            return self.templates["tool_use"]
        return self.template

    @property
    def capabilities(self) -> frozenset[str]:
        caps = set()
        if self.template and self.tool_path in (TOOL_PATH_TEMPLATE, TOOL_PATH_DEFAULT):
            caps.add(TOOLS)
        if self.vision:
            caps.add(VISION)
        if self.reasoning:
            caps.add(REASONING)
        if self.fim_tokens:
            caps.add(FIM)
        return frozenset(caps)


@attrs.frozen
class ModelInfo:
    """Every fact about one version of a model, resolved once (``ModelRegistry.info``).

    ``/v1/models``, ``mlxhost models``, the context budget and the engine all
    read these; nothing recomputes them. A model that is not downloaded yet has
    an empty ``config`` and no ``path``; after a download it is a new version.
    """

    spec: ModelSpec
    config: Mapping[str, Any]
    # The local folder holding the weights (None: not downloaded).
    path: Path | None
    # Settings override > context-limit hook > the plugin's declared value > default.
    context_window: int
    # Sampling defaults for requests that omit the field: generation_config.json
    # (temperature, top_p), overlaid by the config file's (``defaults.sampling``).
    generation_defaults: Mapping[str, float] = attrs.field(factory=dict)
    # Seconds this model stays loaded once idle (inf: forever), when a request does
    # not say; None: the server's --keep-alive. (A per-model default, e.g. from a
    # configuration file, plugs in here.)
    keep_alive: float | None = None
    # The chat template, tool format and inferred capabilities (mlxhost.families.chat_facts),
    # read from the model's files with the rest of its facts.
    chat: ChatFacts = attrs.field(factory=lambda: ChatFacts())

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def family(self) -> str | None:
        return self.spec.family

    @property
    def capabilities(self) -> frozenset[str]:
        """What the registering plugin declared, plus what the files show."""
        return self.spec.capabilities | self.chat.capabilities

    @property
    def defaults(self) -> ModelDefaults:
        return self.spec.defaults

    @property
    def tool_route(self) -> dict[str, str | None]:
        """How tool calls are written (reported by /v1/models and ``mlxhost ls``): the
        generic family's format and path, or the family plugin that handles them."""
        if self.family in (None, GENERIC_FAMILY):
            return {"tool_format": self.chat.tool_format, "tool_path": self.chat.tool_path}
        return {"tool_format": f"{self.family} plugin", "tool_path": "plugin"}

    @property
    def model_type(self) -> str | None:
        value = self.config.get("model_type")
        return value if isinstance(value, str) else None

    @property
    def downloaded(self) -> bool:
        return self.path is not None


@attrs.frozen
class LoadedModel:
    """The model in memory: its facts plus what only loading gives."""

    info: ModelInfo
    # The Hugging Face tokenizer (or a processor's tokenizer); None for engines without one.
    tokenizer: Any
    tool_parser: ToolParserFactory
    loaded_at: float
    # How the model marks thinking (resolved once per load; None: it does not think).
    reasoning: ReasoningFormat | None = None

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def family(self) -> str | None:
        return self.info.family

    @property
    def context_window(self) -> int:
        return self.info.context_window


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


@attrs.frozen
class ReasoningDelta:
    """Generated thinking (never part of the answer): an API's reasoning field."""

    text: str


ParserEvent = ContentDelta | ToolCallEvent
# What a generation yields: the answer's events, and thinking beside them.
GenerationEvent = ContentDelta | ToolCallEvent | ReasoningDelta


@attrs.frozen
class ThinkTags:
    """A model that thinks between two markers (``<think>`` … ``</think>``,
    Gemma 4's ``<|channel>thought`` … ``<channel|>``), as text and as token ids."""

    start: str
    end: str
    start_ids: tuple[int, ...]
    end_ids: tuple[int, ...]


@attrs.frozen
class Harmony:
    """gpt-oss's harmony format: ``analysis`` is thinking, ``final`` the answer,
    ``commentary`` to ``functions.NAME`` a tool call. The ids are what the budget
    watches and inserts (the tokenizer's encoding of each marker string)."""

    # "<|channel|>analysis<|message|>": thinking opens.
    analysis_ids: tuple[int, ...] = ()
    # "<|end|>": a message closes.
    end_ids: tuple[int, ...] = ()
    # "<|channel|>final<|message|>": the answer opens.
    final_ids: tuple[int, ...] = ()
    # "<|end|><|start|>assistant<|channel|>final<|message|>": what closes a thought early.
    close_ids: tuple[int, ...] = ()


# How a model marks its thinking (None: it does not think).
ReasoningFormat = ThinkTags | Harmony


class StreamParser(Protocol):
    """Turns generated text into content and tool calls, fed piece by piece."""

    # Read after each feed(): True ends generation there (finish reason
    # ``tool_calls``), e.g. once a call block closed and the model would go on
    # to invent the tool's output.
    stop_requested: bool

    def feed(self, text: str) -> list[ParserEvent]: ...

    def finish(self) -> list[ParserEvent]: ...


@attrs.frozen
class FunctionTool:
    name: str
    description: str | None = None
    # JSON schema of the arguments (None: none declared).
    parameters: Mapping[str, Any] | None = None
    strict: bool | None = None

    def as_openai(self) -> dict[str, Any]:
        """The OpenAI tool object chat templates are written against."""
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        if self.parameters is not None:
            function["parameters"] = dict(self.parameters)
        return {"type": "function", "function": function}



# A family plugin's tool-call format: given the request's offered tools, a fresh parser.
ToolParserFactory = Callable[[Sequence[FunctionTool]], StreamParser]


@attrs.frozen
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    # 0: off.
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # None or 1.0: off.
    repetition_penalty: float | None = None
    # token id -> added to its logit
    logit_bias: Mapping[int, float] = attrs.field(factory=dict)
    # Report each token's log probability with this many alternatives (None: off).
    logprobs: int | None = None
    # An llguidance grammar the output must match (None: free text). With
    # ``thinking`` it applies to the answer, from the end of the thought on.
    grammar: str | None = None
    # Where thinking starts and ends in token ids, and its budget (None: the
    # model does not think, or nothing watches it).
    thinking: ThinkingPlan | None = None
    # False: never draft tokens by prompt lookup for this request (runtime.speculative).
    speculative: bool = True


@attrs.frozen
class ThinkingPlan:
    """What the engine watches in one generation's token ids
    (``mlxhost.engine.reasoning_budget.ThoughtTracker`` follows it)."""

    # Sequences that open a thought.
    opens: tuple[tuple[int, ...], ...]
    # The sequence that ends a thought.
    closes: tuple[int, ...]
    # The answer (and a grammar) starts after this sequence.
    answer_opens: tuple[int, ...]
    # Inserted when the budget is spent: it closes the thought and opens the answer.
    force: tuple[int, ...]
    # The prompt opened the thought (a template that starts the think block).
    inside: bool = False
    # A reply that does not open a thought with its first tokens is all answer
    # (``<think>`` models); False: the answer waits for ``answer_opens`` (harmony).
    may_skip: bool = True
    # Thinking tokens allowed before the thought is closed (None: no limit).
    budget: int | None = None


@attrs.frozen
class TokenLogprob:
    """One generated token's log probability, and the most likely alternatives."""

    token: str
    logprob: float
    # (token text, log probability), most likely first.
    top: tuple[tuple[str, float], ...] = ()


@attrs.frozen
class TokenStep:
    """One generated token as the engine reports it."""

    token: int
    text: str  # newly decoded text (may be empty while a multi-byte char is pending)
    finish: str | None = None  # "stop" (EOS) or "length" on the last step
    # On the first step: prompt tokens served from the prefix cache (None: unknown).
    cached_tokens: int | None = None
    # When the request asked for log probabilities.
    logprob: TokenLogprob | None = None
    # Speculative decoding (engine.speculative): on the first token of a
    # verification pass, how many tokens it drafted; ``speculated``: this token
    # is a drafted one the model accepted.
    drafted: int = 0
    speculated: bool = False
