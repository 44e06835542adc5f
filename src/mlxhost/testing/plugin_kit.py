"""A test kit for family plugins: the checks every family must pass, written once.

A family plugin (a :class:`mlxhost.families.family.Family` exposed as
``FamilyPlugin(family)``) subclasses the kit's classes in its own tests and
says, in a few class attributes, what is particular to it::

    from mlxhost.testing.plugin_kit import FamilyApiTests, FamilyPluginTests
    from mlxhost_mine.plugin import plugin

    class TestMine(FamilyPluginTests, FamilyApiTests):
        plugin = plugin  # FamilyPlugin(MINE), the entry point's object
        expected_first_prompt = "<user>hi</user><assistant>"
        sample_replies = ("Checking.<call>...</call>",)
        api_replies = (("Checking.<call>...</call>", "Checking."),)

        def generated_call_text(self, name, arguments):
            return f"<call>{json.dumps({'name': name, 'arguments': arguments})}</call>"

        def tool_result_text(self, text):
            return f"<result>{text}</result>"

:class:`FamilyPluginTests` checks the hooks (registration through a real
plugin manager and registry, the installed entry point, family detection,
``None`` for every other family), the prompt (a basic conversation, the tool
call round trip, tool results, images, the ``tool_choice`` instruction) and
the tool-call parser (split invariance, content only without tools).
:class:`FamilyApiTests` drives the HTTP API with the fake engine.

Helpers for the plugin's other tests: :func:`messages_from_openai` (OpenAI-shaped
message dicts as domain messages, images decoded to stand-ins),
:func:`loaded_model`, :func:`sample_image`, :func:`feed` and :func:`normalize`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any, ClassVar

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxhost.core.domain import (
    FunctionTool,
    ImagePart,
    Message,
    NamedToolChoice,
    TextPart,
    ToolChoice,
    text_message,
)
from mlxhost.core.types import (
    ContentDelta,
    ImageInput,
    LoadedModel,
    ModelInfo,
    ModelSpec,
    ParserEvent,
    RenderedPrompt,
    StreamParser,
    ToolCall,
    ToolCallEvent,
)
from mlxhost.families.family import Family, FamilyPlugin
from mlxhost.families.plugins import ENTRY_POINT_GROUP, describe_plugins, make_plugin_manager
from mlxhost.families.toolcalls import ContentOnlyParser, merge_events, tool_choice_instruction
from mlxhost.models.registry import ModelRegistry
from mlxhost.settings.table import Settings

OTHER_FAMILY = "not-this-family"
OTHER_MODEL_TYPE = "not-a-model-type-of-this-family"


def function_tool(
    name: str,
    description: str | None = None,
    properties: Mapping[str, Any] | None = None,
    required: Sequence[str] = (),
    **schema: Any,
) -> FunctionTool:
    """A function tool in one line: its parameters are an object schema of
    ``properties`` (in order) and ``required`` (plus other ``schema`` keys);
    no ``properties``: no parameters declared."""
    parameters = None
    if properties is not None:
        parameters = {"type": "object", "properties": dict(properties)}
        if required:
            parameters["required"] = list(required)
        parameters.update(schema)
    return FunctionTool(name=name, description=description, parameters=parameters)


STRING = {"type": "string"}
UNIT = {"type": "string", "enum": ["celsius", "fahrenheit"]}
# The sample function of the kit's checks.
WEATHER_TOOL = function_tool(
    "get_weather",
    "Get the current weather for a city.",
    {"city": STRING},
    required=["city"],
)
# Functions for parser tests: a strict schema, a free-form object, a parameter
# named like a Python keyword, no parameters at all.
PARSER_TOOLS = (
    function_tool(
        "get_weather",
        "Get the current weather for a city.",
        {"city": STRING, "unit": UNIT},
        required=["city"],
        additionalProperties=False,
    ),
    function_tool("search", None, {"query": STRING, "options": {"type": "object"}}, ["query"]),
    function_tool(
        "convert",
        None,
        {"amount": {"type": "number"}, "from": STRING, "to": STRING},
        ["amount", "from", "to"],
    ),
    function_tool("get_time"),
)


# --- helpers ----------------------------------------------------------------


def sample_image(name: str) -> ImageInput:
    """A stand-in for a decoded image (templates only place it; nothing reads it)."""
    return ImageInput(image=f"<image {name}>", digest=hashlib.sha256(name.encode()).hexdigest())


def messages_from_openai(messages: Sequence[Mapping[str, Any]]) -> tuple[Message, ...]:
    """OpenAI-shaped chat messages as the domain messages a template receives.

    They go through the server's own conversion (``mlxhost.api.schemas``), so
    they are what a request would give; each image is then "decoded" to a
    :func:`sample_image` named by its URL, as the service does before rendering.
    """
    from mlxhost.api.schemas import parse_chat_request

    request = parse_chat_request({"model": "kit", "messages": [dict(m) for m in messages]})
    return tuple(
        attrs.evolve(
            message,
            content=tuple(
                attrs.evolve(part, image=sample_image(part.url))
                if isinstance(part, ImagePart) and part.image is None
                else part
                for part in message.content
            ),
        )
        for message in request.messages
    )


def openai_call(name: str, arguments: str, call_id: str = "call_1") -> dict[str, Any]:
    """An earlier assistant tool call, OpenAI-shaped (for :func:`messages_from_openai`)."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def assistant(content: str | None, *calls: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-shaped assistant message making ``calls`` (:func:`openai_call`)."""
    return {"role": "assistant", "content": content, "tool_calls": list(calls)}


def tool_result(call_id: str, content: Any) -> dict[str, Any]:
    """An OpenAI-shaped tool message answering ``call_id``."""
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def loaded_model(
    family: Family | str | None,
    model_type: str = OTHER_MODEL_TYPE,
    *,
    tokenizer: Any = None,
    model_id: str = "kit/model",
    context_window: int = 4096,
) -> LoadedModel:
    """A loaded model of ``family`` as the hooks receive it (no weights, no files)."""
    name = family.name if isinstance(family, Family) else family
    parser = family.tool_parser if isinstance(family, Family) else None
    info = ModelInfo(
        spec=ModelSpec(id=model_id, family=name),
        config={"model_type": model_type},
        path=None,
        context_window=context_window,
    )
    return LoadedModel(
        info=info,
        tokenizer=tokenizer,
        tool_parser=parser or (lambda tools: ContentOnlyParser()),
        loaded_at=0.0,
    )


def feed(parser: StreamParser, pieces: Iterable[str]) -> list[ParserEvent]:
    """Every event a parser gives for ``pieces`` fed in turn, then finish()."""
    events: list[ParserEvent] = []
    for piece in pieces:
        events.extend(parser.feed(piece))
    return events + parser.finish()


def plain(events: Iterable[ParserEvent]) -> list[tuple[Any, ...]]:
    """Events as they came (not merged), without call ids: ``("content", text)``
    and ``("call", name, arguments as parsed JSON)``."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        if isinstance(event, ToolCallEvent):
            assert event.call.id.startswith("call_"), event.call.id
            out.append(("call", event.call.name, json.loads(event.call.arguments)))
        else:
            out.append(("content", event.text))
    return out


def plain_text(events: Iterable[ParserEvent]) -> list[str]:
    """The text of the content events."""
    return [event.text for event in events if isinstance(event, ContentDelta)]


def normalize(events: Iterable[ParserEvent]) -> list[tuple[Any, ...]]:
    """Merged events (how a non-streaming response sees them), as :func:`plain`."""
    return plain(merge_events(events))


def pieces_at(text: str, cuts: Iterable[int]) -> list[str]:
    """``text`` cut at each offset in ``cuts`` (any order)."""
    points = sorted(cuts)
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)])]


def reply_cases(
    prose: st.SearchStrategy[str],
    calls: st.SearchStrategy[list[tuple[str, dict[str, Any]]]],
    write_calls: Callable[[list[tuple[str, dict[str, Any]]]], str],
    max_parts: int = 5,
) -> st.SearchStrategy[tuple[str, list[tuple[Any, ...]], list[str]]]:
    """Random replies of prose and calls, as ``(text, expected, pieces)``:
    ``expected`` is what :func:`normalize` should give (white space before a
    call, and a reply's white space after its last call, is layout, not
    content), ``pieces`` the text cut at random points. ``calls`` draws calls
    that ``write_calls`` writes in one go, as the model would."""

    @st.composite
    def cases(draw: Any) -> tuple[str, list[tuple[Any, ...]], list[str]]:
        parts = draw(st.lists(st.one_of(prose, calls), min_size=1, max_size=max_parts))
        text = ""
        expected: list[tuple[Any, ...]] = []
        for part in parts:
            if isinstance(part, str):
                text += part
                if expected and expected[-1][0] == "content":
                    expected[-1] = ("content", expected[-1][1] + part)
                else:
                    expected.append(("content", part))
                continue
            if expected and expected[-1][0] == "content":
                stripped = expected[-1][1].rstrip()
                if stripped:
                    expected[-1] = ("content", stripped)
                else:
                    expected.pop()
            text += write_calls(part)
            expected.extend(("call", name, json.loads(json.dumps(args))) for name, args in part)
        if len(expected) > 1 and expected[-1][0] == "content" and not expected[-1][1].strip():
            expected.pop()
        cuts = draw(st.lists(st.integers(0, len(text)), max_size=10))
        return text, expected, pieces_at(text, cuts)

    return cases()


# --- what a family's tests say about it ----------------------------------------


class FamilyFacts:
    """The class attributes the kit's test classes read (shared by both)."""

    plugin: ClassVar[FamilyPlugin]
    # A model_type of the family (the first one, sorted, when left None).
    model_type: ClassVar[str | None] = None
    # The tokenizer the render hook gets (None: the family's defaults).
    tokenizer: ClassVar[Any] = None
    # A function the sample call calls, and the call (name, arguments).
    sample_tool: ClassVar[FunctionTool] = WEATHER_TOOL
    sample_call: ClassVar[tuple[str, Mapping[str, Any]]] = ("get_weather", {"city": "Paris"})

    def generated_call_text(self, name: str, arguments: Mapping[str, Any]) -> str:
        """The text the model writes to make this call (and the prompt shows for
        an earlier call)."""
        raise NotImplementedError

    # -- helpers for the tests ---------------------------------------------
    @property
    def family(self) -> Family:
        return self.plugin.family

    @property
    def the_model_type(self) -> str:
        return self.model_type or sorted(self.family.model_types)[0]

    def model(self) -> LoadedModel:
        return loaded_model(self.family, self.the_model_type, tokenizer=self.tokenizer)

    def call_text(self) -> str:
        name, arguments = self.sample_call
        return self.generated_call_text(name, arguments)


class FamilyPluginTests(FamilyFacts):
    """The hooks, templates and parser of one family. Subclass it (``Test...``) and set:

    - ``plugin``: the family's ``FamilyPlugin`` (the object its entry point names);
    - ``expected_first_prompt``: the exact prompt for one user message,
      ``first_user_text`` (``"hi"``), with no tools;
    - ``generated_call_text(name, arguments)``: how the model writes a call, and
      ``tool_result_text(text)``: how a tool result appears in the prompt;
    - ``sample_replies``: replies (prose, calls, both) for the streaming checks;
      the sample call's text is always checked too;
    - ``image_marker``: the text the prompt shows per image (None: not counted);
    - ``stream_tokens``: pieces of the family's call syntax, joined at random
      for the split-anywhere check, and ``stream_tools``, the functions offered
      (default :data:`PARSER_TOOLS`); ``stream_steps``, what each piece of a
      reply fed piece by piece gives (what is held back, what is released);
    - optionally ``model_type``, ``tokenizer``, ``sample_tool``, ``sample_call``.
    """

    expected_first_prompt: ClassVar[str]
    first_user_text: ClassVar[str] = "hi"
    sample_replies: ClassVar[tuple[str, ...]] = ()
    image_marker: ClassVar[str | None] = None
    # The functions offered in the streaming checks.
    stream_tools: ClassVar[tuple[FunctionTool, ...]] = PARSER_TOOLS
    # Replies fed piece by piece: each a sequence of (piece, the events that piece
    # gives, as :func:`plain`); the piece None is finish().
    stream_steps: ClassVar[tuple[tuple[tuple[str | None, list[tuple[Any, ...]]], ...], ...]] = ()
    # Pieces random replies are made of (markers, names, brackets, quotes) for
    # the check that any split of any text gives the same events.
    stream_tokens: ClassVar[tuple[str, ...]] = ()
    # False for a family that ships no models (detection by model_type only).
    ships_models: ClassVar[bool] = True

    def tool_result_text(self, text: str) -> str:
        """How a tool message's text appears in the prompt."""
        raise NotImplementedError

    # -- helpers --------------------------------------------------------------
    def plugin_manager(self):
        """Built-in fallbacks plus this plugin only (no installed entry points)."""
        return make_plugin_manager(load_entrypoints=False, extra=[self.plugin])

    def render(
        self,
        messages: Sequence[Message],
        tools: Sequence[FunctionTool] = (),
        tool_choice: ToolChoice = "auto",
        template_variables: dict[str, Any] | None = None,
    ) -> RenderedPrompt:
        rendered = self.plugin_manager().hook.mlxhost_render_prompt(
            model=self.model(), messages=list(messages), tools=list(tools), tool_choice=tool_choice,
            template_variables=dict(template_variables or {}),
        )
        assert isinstance(rendered, RenderedPrompt), rendered
        return rendered

    def parser(self, tools: Sequence[FunctionTool]) -> StreamParser:
        assert self.family.tool_parser is not None, "the family declares no tool parser"
        return self.family.tool_parser(tools)

    def call_conversation(self, result: str | None = None) -> list[Message]:
        """A user asks, the assistant calls the sample tool (and ``result`` comes back)."""
        name, arguments = self.sample_call
        messages = [
            text_message("user", "What's the weather in Paris?"),
            Message(
                role="assistant",
                tool_calls=(ToolCall(name=name, arguments=json.dumps(arguments), id="call_1"),),
            ),
        ]
        if result is not None:
            messages.append(
                Message(role="tool", content=(TextPart(result),), tool_call_id="call_1")
            )
            messages.append(text_message("user", "Thanks!"))
        return messages

    # -- registration -----------------------------------------------------------
    def test_registers_its_models_with_family_aliases_and_capabilities(self):
        if self.ships_models:
            assert self.family.models, "the family ships no models (set ships_models = False)"
        registry = ModelRegistry(self.plugin_manager())
        for model in self.family.models:
            spec = registry.resolve_spec(model.id)
            assert spec.family == self.family.name
            assert spec.capabilities == model.capabilities
            assert spec.aliases == model.aliases
            assert spec.context_window == model.context_window
            for alias in model.aliases:
                assert registry.resolve_spec(alias).id == model.id
            info = registry.resolve(model.id)
            assert info.spec == spec
            if model.context_window and info.config == {}:  # not downloaded
                assert info.context_window == model.context_window

    def test_the_installed_entry_point_loads_this_plugin(self):
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.load() is self.plugin]
        assert len(found) == 1, f"entry points naming this plugin: {found}"
        (entry_point,) = found
        pm = make_plugin_manager()
        assert pm.get_plugin(entry_point.name) is self.plugin
        dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
        distribution = dists[id(self.plugin)].project_name
        assert entry_point.dist is not None and entry_point.dist.name == distribution
        rows = {row["name"]: row for row in describe_plugins(pm)}
        assert rows[distribution]["module"] == entry_point.name
        hooks = set(rows[distribution]["hooks"])
        assert {
            "mlxhost_render_prompt",
            "mlxhost_tool_call_parser",
            "mlxhost_model_family",
        } <= hooks

    # -- the hooks --------------------------------------------------------------
    def test_model_family_for_each_model_type(self):
        assert self.family.model_types
        hook = self.plugin_manager().hook.mlxhost_model_family
        for model_type in sorted(self.family.model_types):
            assert hook(config={"model_type": model_type}) == self.family.name, model_type
        assert hook(config={"model_type": OTHER_MODEL_TYPE}) is None
        assert hook(config={}) is None

    def _hook_calls(self, model: LoadedModel) -> dict[str, dict[str, Any]]:
        """Arguments for every per-model hook, for ``model``."""
        return {
            "mlxhost_model_family": {"config": dict(model.info.config)},
            "mlxhost_render_prompt": {
                "model": model,
                "messages": [text_message("user", self.first_user_text)],
                "tools": [self.sample_tool],
                "tool_choice": "auto",
                "template_variables": {},
            },
            "mlxhost_tool_call_parser": {"model": model.info},
            "mlxhost_context_limit": {"spec": model.info.spec, "config": model.info.config},
            "mlxhost_fim_prompt": {"model": model, "prefix": "def f(", "suffix": "):"},
            "mlxhost_tool_call_grammar": {
                "model": model.info, "tools": [self.sample_tool], "tool_choice": "required"},
            "mlxhost_make_engine": {"settings": Settings()},
            # Another family's model is never touched: no model object or group needed.
            "mlxhost_shard_model": {
                "model": None, "config": dict(model.info.config), "group": None, "pipeline": False},
        }

    def test_every_hook_returns_none_for_another_family(self):
        pm = self.plugin_manager()
        implemented = {hook.name for hook in pm.get_hookcallers(self.plugin) or ()}
        implemented.discard("mlxhost_register_models")  # not per model
        calls = self._hook_calls(loaded_model(OTHER_FAMILY, OTHER_MODEL_TYPE))
        assert implemented, "the plugin implements no hook"
        for name in sorted(implemented):
            assert name in calls, f"{name}: the kit does not know this hook yet"
            assert getattr(self.plugin, name)(**calls[name]) is None, name

    def test_hooks_answer_for_its_own_family(self):
        calls = self._hook_calls(self.model())
        plugin = self.plugin
        assert plugin.mlxhost_model_family(**calls["mlxhost_model_family"]) == self.family.name
        rendered = plugin.mlxhost_render_prompt(**calls["mlxhost_render_prompt"])
        assert isinstance(rendered, RenderedPrompt) and rendered.text
        parser = plugin.mlxhost_tool_call_parser(**calls["mlxhost_tool_call_parser"])
        assert parser is self.family.tool_parser and parser is not None
        assert (
            self.plugin_manager().hook.mlxhost_tool_call_parser(model=self.model().info) is parser
        )

    def test_tool_call_grammar_compiles_when_declared(self):
        """A family's forced-call grammar (``mlxhost_tool_call_grammar``) is valid llguidance Lark."""
        from mlxhost.engine.constrain import lark_grammar

        calls = self._hook_calls(self.model())
        text = self.plugin.mlxhost_tool_call_grammar(**calls["mlxhost_tool_call_grammar"])
        if self.family.tool_grammar is None:
            assert text is None
        else:
            assert text is not None and self.sample_tool.name in text and lark_grammar(text)

    # -- the prompt -------------------------------------------------------------
    def test_renders_a_basic_conversation(self):
        rendered = self.render([text_message("user", self.first_user_text)])
        assert rendered == RenderedPrompt(text=self.expected_first_prompt, images=())

    def test_the_prompt_shows_an_earlier_call_as_the_parser_reads_it(self):
        name, arguments = self.sample_call
        prompt = self.render(self.call_conversation(), [self.sample_tool]).text
        assert self.call_text() in prompt, prompt
        events = normalize(feed(self.parser([self.sample_tool]), [self.call_text()]))
        assert events == [("call", name, dict(arguments))]

    def test_tool_results_are_rendered_after_their_call(self):
        result = '{"temperature": 21}'
        prompt = self.render(self.call_conversation(result), [self.sample_tool]).text
        shown = self.tool_result_text(result)
        assert shown in prompt, prompt
        assert prompt.index(self.call_text()) < prompt.index(shown) < prompt.index("Thanks!")

    def test_images_of_user_and_system_messages_are_placed_in_order(self):
        def image_part(name: str) -> ImagePart:
            return ImagePart(url=f"data:{name}", where=name, image=sample_image(name))

        messages = [
            Message(role="system", content=(TextPart("Look closely."), image_part("system"))),
            Message(
                role="user",
                content=(TextPart("Compare"), image_part("first"), image_part("second")),
            ),
            text_message("assistant", "They differ."),
            Message(role="user", content=(image_part("third"), TextPart("And this?"))),
        ]
        rendered = self.render(messages)
        expected = tuple(sample_image(n) for n in ("system", "first", "second", "third"))
        assert rendered.images == expected
        if self.image_marker is not None:
            assert rendered.text.count(self.image_marker) == len(expected), rendered.text

    @pytest.mark.parametrize("kind", ["required", "named"])
    def test_tool_choice_adds_its_instruction(self, kind):
        choice: ToolChoice = (
            "required" if kind == "required" else NamedToolChoice(self.sample_tool.name)
        )
        line = tool_choice_instruction(choice)
        assert line
        messages = [text_message("user", self.first_user_text)]
        assert line in self.render(messages, [self.sample_tool], choice).text
        auto = self.render(messages, [self.sample_tool], "auto").text
        assert line not in auto and "You must call" not in auto
        assert line not in self.render(messages, (), choice).text

    # -- the parser -------------------------------------------------------------
    def _replies(self) -> tuple[str, ...]:
        return (self.call_text(), *self.sample_replies)

    def _stream_tools(self) -> list[FunctionTool]:
        return list(self.stream_tools)

    def test_pieces_give_their_events_as_they_come(self):
        assert self.stream_steps, "set stream_steps"
        for steps in self.stream_steps:
            parser = self.parser(self._stream_tools())
            for piece, expected in steps:
                events = parser.finish() if piece is None else parser.feed(piece)
                assert plain(events) == expected, (steps, piece)

    def test_every_split_point_gives_the_same_events(self):
        tools = self._stream_tools()
        calls = 0
        for reply in self._replies():
            whole = normalize(feed(self.parser(tools), [reply]))
            calls += sum(event[0] == "call" for event in whole)
            for index in range(len(reply) + 1):
                split = normalize(feed(self.parser(tools), [reply[:index], reply[index:]]))
                assert split == whole, (reply, index)
            assert normalize(feed(self.parser(tools), reply)) == whole, reply  # a char a time
        assert calls, "no sample reply holds a tool call"

    def test_arbitrary_text_split_anywhere_loses_nothing(self):
        assert self.stream_tokens, "set stream_tokens"
        tools = self._stream_tools()

        # Hypothesis runs a function given here (not the inherited method: each
        # subclass is a different executor to it).
        @settings(max_examples=300, deadline=None)
        @given(st.lists(st.sampled_from(self.stream_tokens), max_size=30).map("".join), st.data())
        def check(text: str, data: Any) -> None:
            pieces = pieces_at(text, data.draw(st.lists(st.integers(0, len(text)), max_size=10)))
            whole = feed(self.parser(tools), [text])
            assert normalize(feed(self.parser(tools), pieces)) == normalize(whole)
            if not any(isinstance(event, ToolCallEvent) for event in whole):
                assert "".join(plain_text(whole)) == text

        check()

    def test_without_tools_the_parser_returns_all_text_as_content(self):
        for reply in self._replies():
            parser = self.parser(())
            assert normalize(feed(parser, reply)) == [("content", reply)]
            assert not parser.stop_requested


class FamilyApiTests(FamilyFacts):
    """Tool calls end to end through the HTTP API, with the fake engine (no model):
    it replies one character a token, so streaming splits the reply at every
    character. The model is a local folder whose config names the family's
    ``model_type``. Subclass it and set (besides ``FamilyFacts``):

    - ``api_replies``: ``(reply, content)`` pairs: a reply that makes the sample
      call, and the content the response gives next to it (None when the whole
      reply is the call).
    """

    api_replies: ClassVar[tuple[tuple[str, str | None], ...]]
    model_id: str  # set by the make_client fixture

    @pytest.fixture
    def make_client(self, tmp_path):
        from litestar.testing import TestClient

        from mlxhost.api.app import create_app
        from mlxhost.testing.fake_engine import FakeEnginePlugin

        folder = tmp_path / f"tiny-{self.family.name}"
        folder.mkdir()
        config = {"model_type": self.the_model_type, "max_position_embeddings": 32768}
        (folder / "config.json").write_text(json.dumps(config))

        def make(reply: str) -> TestClient:
            pm = make_plugin_manager(
                load_entrypoints=False, extra=[FakeEnginePlugin(reply=reply), self.plugin]
            )
            return TestClient(create_app(Settings(extra_models=[str(folder)]), pm))

        self.model_id = str(folder.resolve())  # a local folder's id is its path

        return make

    def body(self, **extra: Any) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "messages": [{"role": "user", "content": "What's the weather in Paris right now?"}],
            "tools": [self.sample_tool.as_openai()],
            **extra,
        }

    def assert_sample_call(self, name: str, arguments: str) -> None:
        assert (name, json.loads(arguments)) == (self.sample_call[0], dict(self.sample_call[1]))

    def test_the_model_is_listed_with_the_family(self, make_client):
        with make_client("") as client:
            models = client.get("/v1/models").json()["data"]
        assert self.model_id in [m["id"] for m in models]

    def test_non_streaming_tool_call(self, make_client):
        assert self.api_replies
        for reply, content in self.api_replies:
            with make_client(reply) as client:
                response = client.post("/v1/chat/completions", json=self.body())
            assert response.status_code == 200, response.text
            choice = response.json()["choices"][0]
            assert choice["finish_reason"] == "tool_calls", reply
            assert choice["message"]["content"] == content
            (call,) = choice["message"]["tool_calls"]
            self.assert_sample_call(call["function"]["name"], call["function"]["arguments"])
            assert call["id"].startswith("call_")

    def test_streaming_tool_call(self, make_client):
        for reply, content in self.api_replies:
            with make_client(reply) as client:
                response = client.post("/v1/chat/completions", json=self.body(stream=True))
            assert response.status_code == 200, response.text
            chunks = [
                json.loads(line[6:])
                for line in response.text.splitlines()
                if line.startswith("data: ") and line != "data: [DONE]"
            ]
            deltas = [c["choices"][0]["delta"] for c in chunks]
            # Joined content equal to the expected text: no marker leaked into any delta.
            assert "".join(d.get("content") or "" for d in deltas) == (content or "")
            calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
            assert calls and all(tc["index"] == 0 for tc in calls)
            arguments = "".join(tc["function"]["arguments"] for tc in calls)
            self.assert_sample_call(calls[0]["function"]["name"], arguments)
            assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    def test_tool_choice_none_leaves_the_text_alone(self, make_client):
        for reply, _ in self.api_replies:
            with make_client(reply) as client:
                body = self.body(tool_choice="none")
                response = client.post("/v1/chat/completions", json=body)
            choice = response.json()["choices"][0]
            assert choice["finish_reason"] == "stop"
            assert choice["message"]["content"] == reply
