"""SmolLM2-135M-Instruct (llama architecture, no family plugin of its own) over
HTTP, through each API's official client: the built folder keeps SmolLM2's own
template and stop token, every API's greedy reply is the one ``mlx_lm.generate``
gives for the same prompt (whole and streamed), a json_schema reply is held to
its schema by the grammar, and the server swaps to Qwen and back."""

from __future__ import annotations

import json
import subprocess
import sys

import anthropic
import ollama
import pytest

from mlxhost.families.toolcalls import schema_errors
from mlxhost.models.starter.builder import TEST_MODELS, ensure_test_model

SMOL = TEST_MODELS["smollm2"].repo_id
QWEN = TEST_MODELS["qwen"].repo_id
MESSAGES = [{"role": "user", "content": "What color is the sky?"}]
# The greedy reply is ~17 tokens: it must end at <|im_end|>, not at this limit.
MAX_TOKENS = 64

_MLX_LM_GREEDY = """
import json, sys
from mlx_lm import generate, load
model, tokenizer = load(sys.argv[1])
messages = json.loads(sys.argv[2])
prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
print(json.dumps(generate(model, tokenizer, prompt, max_tokens=int(sys.argv[3]))))
"""


@pytest.fixture(scope="module")
def expected() -> str:
    """``mlx_lm.generate``'s greedy reply to MESSAGES (in a child process: this one
    stays free of a second copy of the model)."""
    folder = ensure_test_model("smollm2")
    out = subprocess.run(
        [sys.executable, "-c", _MLX_LM_GREEDY, str(folder), json.dumps(MESSAGES), str(MAX_TOKENS)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    reply = json.loads(out)
    assert "blue" in reply  # a coherent answer, so equality below means something
    return reply


@pytest.fixture
def claude(smol_server):
    return anthropic.Anthropic(base_url=smol_server.url, api_key="unused", max_retries=0, timeout=300)


@pytest.fixture
def olla(smol_server):
    return ollama.Client(host=smol_server.url, timeout=300)


def test_built_folder_keeps_smollm2_template_and_eos():
    from transformers import AutoTokenizer

    folder = ensure_test_model("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert tokenizer.convert_ids_to_tokens(config["eos_token_id"]) == "<|im_end|>"
    assert tokenizer.eos_token == "<|im_end|>"
    prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    # SmolLM2's own ChatML template, with its default system turn.
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\nWhat color is the sky?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_openai_chat_and_stream_match_mlx_lm_generate(smol_client, expected):
    reply = smol_client.chat.completions.create(
        model=SMOL, messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS
    )
    assert reply.model == SMOL
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == "stop"  # <|im_end|> ended it
    stream = smol_client.chat.completions.create(
        model=SMOL, messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS, stream=True,
        stream_options={"include_usage": True},
    )
    deltas, finishes, usage = [], [], None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            deltas.append(choice.delta.content or "")
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert len([d for d in deltas if d]) >= 3
    assert "".join(deltas) == expected and finishes == ["stop"]
    assert usage is not None and usage.completion_tokens == reply.usage.completion_tokens


def test_anthropic_messages_and_stream_match_mlx_lm_generate(claude, expected):
    message = claude.messages.create(
        model=SMOL, max_tokens=MAX_TOKENS, extra_body={"temperature": 0}, messages=MESSAGES
    )
    assert message.content[0].type == "text" and message.content[0].text == expected
    assert message.stop_reason == "end_turn"
    with claude.messages.stream(
        model=SMOL, max_tokens=MAX_TOKENS, extra_body={"temperature": 0}, messages=MESSAGES
    ) as stream:
        events = list(stream)
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == expected


def test_ollama_chat_and_stream_match_mlx_lm_generate(olla, expected):
    assert SMOL in [m.model for m in olla.list().models]
    options = {"temperature": 0, "num_predict": MAX_TOKENS}
    whole = olla.chat(model=SMOL, messages=MESSAGES, options=options)
    assert whole.message.content == expected
    assert whole.done and whole.done_reason == "stop"
    parts = list(olla.chat(model=SMOL, messages=MESSAGES, options=options, stream=True))
    assert parts[-1].done and len(parts) >= 3
    assert "".join(p.message.content or "" for p in parts) == expected


SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue", "grey"]},
        "brightness": {"type": "integer"},
        "cloudy": {"type": "boolean"},
    },
    "required": ["color", "brightness", "cloudy"],
    "additionalProperties": False,
}


def test_json_schema_replies_hold_to_the_schema(smol_client, olla):
    """The 135M model left alone answers in prose (``expected``); the grammar makes
    the same question a JSON object that fits the schema, in both APIs."""
    response_format = {"type": "json_schema", "json_schema": {"name": "sky", "schema": SCHEMA, "strict": True}}
    reply = smol_client.chat.completions.create(
        model=SMOL, messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS, response_format=response_format,
    ).choices[0]
    assert reply.finish_reason == "stop"
    assert schema_errors(json.loads(reply.message.content), SCHEMA) == []
    shaped = olla.chat(model=SMOL, messages=MESSAGES, format=SCHEMA,
                       options={"temperature": 0, "num_predict": MAX_TOKENS})
    assert schema_errors(json.loads(shaped.message.content), SCHEMA) == []


def test_swap_to_qwen_and_back(smol_client, smol_server, expected):
    swaps = smol_server.health()["swaps"]
    qwen = smol_client.chat.completions.create(
        model=QWEN, messages=[{"role": "user", "content": "What is 2+2? Answer with a number."}],
        temperature=0, max_tokens=5,
    )
    assert qwen.model == QWEN and "4" in qwen.choices[0].message.content
    assert smol_server.health()["model"] == QWEN
    back = smol_client.chat.completions.create(
        model=SMOL, messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS
    )
    assert back.choices[0].message.content == expected  # reloaded, the same model
    health = smol_server.health()
    assert health["model"] == SMOL and health["swaps"] == swaps + 2
