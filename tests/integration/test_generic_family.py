"""The generic family on tiny random-weight models of 8 architectures, each with the
real chat template of its family (tests/unit/data/chat_templates/SOURCES.md): listed,
rendered as transformers renders, loaded and generating over HTTP, a forced call
in the model's own format; bad models are clear 4xx answers and the server stays up."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from mlxhost.core.domain import FunctionTool
from mlxhost.core.types import GENERIC_FAMILY, TOOL_PATH_DEFAULT, TOOLS, LoadedModel
from mlxhost.families.builtin.generic_family import render
from mlxhost.families.plugins import make_plugin_manager
from mlxhost.families.toolcalls import ContentOnlyParser
from mlxhost.models.registry import ModelRegistry
from mlxhost.settings.table import Settings
from mlxhost.testing.plugin_kit import messages_from_openai
from mlxhost.testing.tiny_archs import (
    ARCHS,
    SMOL_TOKENIZER,
    TEST_MODELS,
    TinyArch,
    build_tiny_arch,
    build_tiny_qwen3_5_vlm,
)

TEMPLATES = Path(__file__).parents[1] / "unit" / "data" / "chat_templates"
NAMES = {arch.name: arch.name.replace(" ", "-").replace("(", "").replace(")", "") for arch in ARCHS}

pytestmark = pytest.mark.skipif(
    not all((TEST_MODELS / m / "tokenizer.json").is_file() for m in {a.tokenizer for a in ARCHS}),
    reason="the test models whose tokenizers the tiny models borrow are not built",
)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
NO_ARGS = {"type": "function", "function": {
    "name": "get_time", "description": "The time now", "parameters": {"type": "object", "properties": {}}}}
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [{
        "id": "call_abc123456", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_abc123456", "content": "sunny"},
    {"role": "assistant", "content": "It is sunny."},
    {"role": "user", "content": "Thanks. And the time?"},
]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("archs")
    for arch in ARCHS:
        build_tiny_arch(arch, root, TEMPLATES)
    build_tiny_qwen3_5_vlm(root)
    smol = root / NAMES["llama (SmolLM2)"]
    # Bad models: a template that raises, no template at all, an architecture nothing loads.
    for name in ("raising-template", "no-template", "unknown-arch"):
        shutil.copytree(smol, root / name)
    (root / "raising-template" / "chat_template.jinja").write_text(
        "{{ raise_exception('this template takes no system messages') }}")
    (root / "no-template" / "chat_template.jinja").unlink()
    config = json.loads((smol / "config.json").read_text())
    (root / "unknown-arch" / "config.json").write_text(json.dumps({**config, "model_type": "no_such_arch"}))
    return root


@pytest.fixture(scope="module")
def registry(models_dir) -> ModelRegistry:
    return ModelRegistry(make_plugin_manager(), Settings(models_dirs=[str(models_dir)]))


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_listed_as_generic_with_its_tool_format(arch: TinyArch, registry):
    info = registry.resolve(NAMES[arch.name])
    assert info.family == GENERIC_FAMILY
    assert info.chat.tool_format == arch.tool_format
    assert TOOLS in info.capabilities
    assert info.chat.template_file == "chat_template.jinja"
    listed = {spec.id for spec in registry.all_specs()}
    assert NAMES[arch.name] in listed
    # Listed are the models that can be served.
    assert "unknown-arch" not in listed and "no-template" in listed


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_prompt_is_what_transformers_renders(arch: TinyArch, registry):
    from transformers import AutoTokenizer

    folder = registry.resolve(NAMES[arch.name]).path
    tokenizer = AutoTokenizer.from_pretrained(folder)
    info = registry.resolve(NAMES[arch.name])
    model = LoadedModel(info=info, tokenizer=tokenizer, tool_parser=lambda t: ContentOnlyParser(), loaded_at=0)
    tools = [FunctionTool(name=t["function"]["name"], description=t["function"]["description"],
                          parameters=t["function"]["parameters"]) for t in (WEATHER, NO_ARGS)]
    ours = render(model, messages_from_openai(CONVERSATION), tools, "auto").text
    # transformers gets arguments as objects, as Hugging Face templates expect them.
    theirs_messages = json.loads(json.dumps(CONVERSATION))
    theirs_messages[2]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
    if info.chat.tool_path == TOOL_PATH_DEFAULT:
        # No tool syntax in the template: mlxhost's default format, documented in
        # docs/plugins.md: the tool list in the system turn, calls and results as text.
        theirs_messages = [
            {"role": "system", "content": "You are terse.\n\n" + _default_tools_prompt([WEATHER, NO_ARGS])},
            theirs_messages[1],
            {"role": "assistant", "content": '<tool_call>\n{"name": "get_weather", "arguments": '
                                             '{"city": "Paris"}}\n</tool_call>'},
            {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"},
            *theirs_messages[4:],
        ]
        theirs = tokenizer.apply_chat_template(theirs_messages, add_generation_prompt=True, tokenize=False)
    else:
        theirs = tokenizer.apply_chat_template(
            theirs_messages, tools=[WEATHER, NO_ARGS], add_generation_prompt=True, tokenize=False)
    assert ours == theirs
    assert "get_time" in ours  # the tools reached the prompt


def _default_tools_prompt(tools: list[dict]) -> str:
    from mlxhost.families.builtin.generic_family import DEFAULT_TOOLS_PROMPT

    return DEFAULT_TOOLS_PROMPT.format(tools="\n".join(json.dumps(t) for t in tools))


# -- over HTTP, the real engine ----------------------------------------------------


@pytest.fixture(scope="module")
def server(models_dir):
    from mlxhost.api.app import create_app
    from mlxhost.testing.live import live_server

    app = create_app(Settings(models_dirs=[str(models_dir)], warmup=False), make_plugin_manager())
    with live_server(app) as url:
        yield url


def test_models_endpoint_lists_each_architecture(server):
    body = httpx.get(f"{server}/v1/models", timeout=60).json()
    entries = {m["id"]: m for m in body["data"]}
    for arch in ARCHS:
        entry = entries[NAMES[arch.name]]
        assert entry["family"] == GENERIC_FAMILY and "tools" in entry["capabilities"]
        # Which path the model's tools take.
        assert entry["tool_format"] == arch.tool_format
        assert entry["tool_path"] == ("default" if arch.tool_format == "default" else "template")


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_loads_generates_and_forces_a_call_in_its_own_format(arch: TinyArch, server):
    name = NAMES[arch.name]
    reply = httpx.post(f"{server}/v1/chat/completions", timeout=300, json={
        "model": name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
        # Tools offered: llama.cpp's Phi-4-mini template iterates `tools` whenever it
        # is defined, and transformers defines it as None without tools (a 400 then).
        "tools": [WEATHER], "temperature": 0})
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] >= 1
    # A forced call: the grammar writes it in the model's own format, the parser reads it back.
    forced = httpx.post(f"{server}/v1/chat/completions", timeout=300, json={
        "model": name, "messages": [{"role": "user", "content": "What time is it?"}],
        "tools": [WEATHER, NO_ARGS], "tool_choice": {"type": "function", "function": {"name": "get_time"}},
        "max_tokens": 60, "temperature": 0})
    assert forced.status_code == 200, forced.text
    choice = forced.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    call = choice["message"]["tool_calls"][0]["function"]
    assert (call["name"], json.loads(call["arguments"])) == ("get_time", {})


def test_named_tool_choice_of_a_tool_not_offered_is_a_400(server):
    reply = httpx.post(f"{server}/v1/chat/completions", timeout=60, json={
        "model": NAMES["llama (SmolLM2)"], "messages": [{"role": "user", "content": "Hi"}],
        "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "launch"}}})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "tool_choice" and "'launch'" in error["message"]


@pytest.mark.parametrize(("model", "status", "words"), [
    ("raising-template", 400, "this template takes no system messages"),
    ("no-template", 400, "has no chat template"),
    ("unknown-arch", 400, "no_such_arch"),
])
def test_bad_models_are_clear_4xx_in_each_apis_shape_and_the_server_stays_up(server, model, status, words):
    messages = [{"role": "user", "content": "Hi"}]
    openai = httpx.post(f"{server}/v1/chat/completions", timeout=120, json={
        "model": model, "messages": [{"role": "system", "content": "S"}, *messages], "max_tokens": 2})
    assert openai.status_code == status, openai.text
    assert words in openai.json()["error"]["message"]
    anthropic = httpx.post(f"{server}/v1/messages", timeout=120, json={
        "model": model, "system": "S", "messages": messages, "max_tokens": 2})
    assert anthropic.status_code == status, anthropic.text
    body = anthropic.json()
    assert body["type"] == "error" and words in body["error"]["message"]
    ollama = httpx.post(f"{server}/api/chat", timeout=120, json={
        "model": model, "messages": [{"role": "system", "content": "S"}, *messages], "stream": False})
    assert ollama.status_code == status, ollama.text
    assert words in ollama.json()["error"]
    # The server is up and serves a good model.
    good = httpx.post(f"{server}/v1/chat/completions", timeout=300, json={
        "model": NAMES["llama (SmolLM2)"], "messages": messages, "max_tokens": 2})
    assert good.status_code == 200, good.text


def test_smol_tokenizer_is_the_stand_in():
    assert (TEST_MODELS / SMOL_TOKENIZER / "tokenizer.json").is_file()


def _png_uri(color: str, size: tuple[int, int] = (64, 64)) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_a_vlm_architecture_no_plugin_claims_takes_images(server, registry):
    """Qwen3.5 (mlx-vlm ``qwen3_5``): the generic family renders the image parts with
    the model's template and mlx-vlm's processor expands them into image tokens."""
    from mlxhost.testing.vlm_models import expected_image_tokens

    info = registry.resolve("qwen3_5-vlm")
    assert info.family == GENERIC_FAMILY and "vision" in info.capabilities

    def ask(*images: str) -> dict:
        content = [{"type": "text", "text": "Describe."},
                   *({"type": "image_url", "image_url": {"url": url}} for url in images)]
        reply = httpx.post(f"{server}/v1/chat/completions", timeout=300, json={
            "model": "qwen3_5-vlm", "messages": [{"role": "user", "content": content}],
            "max_tokens": 4, "temperature": 0})
        assert reply.status_code == 200, reply.text
        return reply.json()

    none = ask()["usage"]["prompt_tokens"]
    red = ask(_png_uri("red"))
    wide = ask(_png_uri("green", (200, 150)))["usage"]["prompt_tokens"]
    # The processor's expansion (same arithmetic as Qwen3-VL's: the same vision tower).
    assert red["usage"]["prompt_tokens"] - none > expected_image_tokens("qwen3_vl", 64, 64)
    assert wide - red["usage"]["prompt_tokens"] == (
        expected_image_tokens("qwen3_vl", 200, 150) - expected_image_tokens("qwen3_vl", 64, 64))
    # The image reaches the model: another image, another reply; the same, the same.
    blue = ask(_png_uri("blue"))["choices"][0]["message"]["content"]
    again = ask(_png_uri("red"))["choices"][0]["message"]["content"]
    assert again == red["choices"][0]["message"]["content"]
    assert blue != again
