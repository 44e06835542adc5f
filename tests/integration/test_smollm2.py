"""SmolLM2-135M-Instruct (llama architecture, no family plugin) over HTTP: the
built folder keeps SmolLM2's own template and stop token, and the server's greedy
reply is the one ``mlx_lm.generate`` gives for the same prompt."""

from __future__ import annotations

import json
import subprocess
import sys

from mlxhost.starter.builder import TEST_MODELS, ensure_test_model

SMOL = TEST_MODELS["smollm2"].repo_id
MESSAGES = [{"role": "user", "content": "What color is the sky?"}]


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


_MLX_LM_GREEDY = """
import json, sys
from mlx_lm import generate, load
model, tokenizer = load(sys.argv[1])
messages = json.loads(sys.argv[2])
prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
print(json.dumps(generate(model, tokenizer, prompt, max_tokens=int(sys.argv[3]))))
"""


def test_greedy_reply_matches_mlx_lm_generate_and_stops_at_im_end(smol_client):
    max_tokens = 64  # the reply is ~17 tokens: it must end at <|im_end|>, not at the limit
    reply = smol_client.chat.completions.create(
        model=SMOL, messages=MESSAGES, temperature=0, max_tokens=max_tokens
    )
    folder = ensure_test_model("smollm2")
    expected = subprocess.run(
        [sys.executable, "-c", _MLX_LM_GREEDY, str(folder), json.dumps(MESSAGES), str(max_tokens)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert reply.choices[0].message.content == json.loads(expected)
    assert "blue" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
